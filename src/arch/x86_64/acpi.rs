//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) built with the acpi_tables
//! crate. They tell the guest how many CPUs it has (MADT), how to power off
//! and reset (a hardware-reduced FADT with sleep and reset registers on
//! hvm's I/O ports) and which devices sit where (DSDT).

use super::layout::{ACPI_END, ACPI_START, IOAPIC_ADDR, IOAPIC_ID, LAPIC_ADDR, PIT_IOAPIC_PIN};
use crate::devices::cmos::CENTURY as CMOS_CENTURY;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const OEM_ID: [u8; 6] = *b"HVM   ";
const OEM_REVISION: u32 = 1;

/// I/O port the guest writes SLP_TYP|SLP_EN to (ACPI sleep control register).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (reads 0: the VM is gone before it matters).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register; writing [`RESET_VALUE`] resets (ends) the VM.
pub const RESET_PORT: u16 = 0x602;
pub const RESET_VALUE: u8 = 1;
/// SLP_TYP the DSDT's \_S5 package names for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Errors while placing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables ({size} bytes) do not fit below 1 MiB")]
    TooLarge { size: u64 },
    #[error("cannot write the ACPI tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// A device the DSDT describes: a legacy port device or a virtio-mmio window.
#[derive(Debug, Clone)]
pub enum DsdtDevice {
    /// `_HID` (an EISA ID such as "PNP0501" or a string ID), ports, optional IRQ.
    Ports {
        name: &'static str,
        hid: &'static str,
        port: u16,
        len: u8,
        irq: Option<u32>,
    },
    /// The power button (`PNP0C0C`) and the Generic Event Device (`ACPI0013`)
    /// that notifies it: `_EVT` reads the event register at `port`, and
    /// bit 0 means "power button pressed".
    PowerButton { port: u16, irq: u32 },
    /// A virtio-mmio device (`_HID` LNRO0005) with its window and interrupt.
    VirtioMmio {
        index: u32,
        base: u64,
        size: u64,
        irq: u32,
    },
}

impl DsdtDevice {
    fn aml(&self, sink: &mut Vec<u8>) {
        match self {
            DsdtDevice::Ports {
                name,
                hid,
                port,
                len,
                irq,
            } => {
                let io = aml::IO::new(*port, *port, 1, *len);
                let int = irq.map(|n| aml::Interrupt::new(true, true, false, false, n));
                let mut resources: Vec<&dyn Aml> = vec![&io];
                if let Some(i) = &int {
                    resources.push(i);
                }
                let crs = aml::ResourceTemplate::new(resources);
                let eisa;
                let hid_name: aml::Name = if is_eisa_id(hid) {
                    eisa = aml::EISAName::new(hid);
                    aml::Name::new("_HID".into(), &eisa)
                } else {
                    aml::Name::new("_HID".into(), hid)
                };
                aml::Device::new(
                    (*name).into(),
                    vec![
                        &hid_name,
                        &aml::Name::new("_UID".into(), &aml::ZERO),
                        &aml::Name::new("_CRS".into(), &crs),
                    ],
                )
                .to_aml_bytes(sink);
            }
            DsdtDevice::PowerButton { port, irq } => power_button_aml(*port, *irq, sink),
            DsdtDevice::VirtioMmio {
                index,
                base,
                size,
                irq,
            } => {
                let name = format!("V{:03X}", index);
                let mem = aml::Memory32Fixed::new(true, *base as u32, *size as u32);
                let int = aml::Interrupt::new(true, true, false, false, *irq);
                let crs = aml::ResourceTemplate::new(vec![&mem, &int]);
                aml::Device::new(
                    name.as_str().into(),
                    vec![
                        &aml::Name::new("_HID".into(), &"LNRO0005"),
                        &aml::Name::new("_UID".into(), index),
                        &aml::Name::new("_CRS".into(), &crs),
                    ],
                )
                .to_aml_bytes(sink);
            }
        }
    }
}

/// `PWRB` (the button) and `GED0`, whose `_EVT` method is, in ASL:
/// `Local0 = GDAT; If (Local0 & 1) { Notify (PWRB, 0x80) }`.
fn power_button_aml(port: u16, irq: u32, sink: &mut dyn acpi_tables::AmlSink) {
    let button_hid = aml::EISAName::new("PNP0C0C");
    aml::Device::new(
        "PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &button_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(sink);
    let int = aml::Interrupt::new(true, true, false, false, irq);
    let crs = aml::ResourceTemplate::new(vec![&int]);
    let port = u64::from(port);
    let region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemIO,
        &port,
        &aml::ONE,
    );
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 8)],
    );
    let (gdat, pwrb) = (aml::Path::new("GDAT"), aml::Path::new("PWRB"));
    let read = aml::Store::new(&aml::Local(0), &gdat);
    let masked = aml::And::new(&aml::Local(1), &aml::Local(0), &aml::ONE);
    let pressed = aml::Equal::new(&masked, &aml::ONE);
    let notify = aml::Notify::new(&pwrb, &0x80u8);
    let when = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &when]);
    aml::Device::new(
        "GED0".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    )
    .to_aml_bytes(sink);
}

/// "PNP0501"-style IDs are compressed EISA IDs; anything else is a string.
fn is_eisa_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 7
        && b[..3].iter().all(|c| c.is_ascii_uppercase())
        && b[3..].iter().all(|c| c.is_ascii_hexdigit())
}

/// The tables, each with the guest address it goes to.
pub struct AcpiTables {
    pub rsdp_addr: u64,
    pub tables: Vec<(u64, Vec<u8>)>,
}

fn sdt_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn dsdt(devices: &[DsdtDevice]) -> Vec<u8> {
    let mut body = Vec::new();
    // \_S5: soft-off, SLP_TYP 5.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);
    let mut sb = Vec::new();
    for d in devices {
        d.aml(&mut sb);
    }
    let raw = RawAml(sb);
    aml::Scope::new("\\_SB_".into(), vec![&raw]).to_aml_bytes(&mut body);
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"HVMDSDT ", OEM_REVISION);
    table.append_slice(&body);
    table.update_checksum();
    table.as_slice().to_vec()
}

/// Already-encoded AML, to nest under a Scope.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io_reg = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut b = FADTBuilder::new(OEM_ID, *b"HVMFACP ", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.sleep_control_reg = io_reg(SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_reg(SLEEP_STATUS_PORT);
    b.reset_reg = io_reg(RESET_PORT);
    b.reset_value = RESET_VALUE;
    // IA-PC boot architecture: no VGA (bit 2). The CMOS RTC is there (bit
    // 5 clear; the DSDT names it PNP0B00, and Linux's rtc_cmos makes it
    // /dev/rtc0). The 8042 bit (1) stays clear: hvm's i8042 only resets the
    // machine, and Linux would otherwise stall probing a keyboard
    // controller that is not there.
    b.iapc_boot_arch = (1u16 << 2).into();
    // Where the clock keeps its century (Linux reads it from here).
    b.century = CMOS_CENTURY;
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"HVM\0\0\0\0\0").into();
    sdt_bytes(&b.finalize())
}

/// MADT: one local APIC per vCPU (APIC ID = vCPU index), the IOAPIC, and
/// the ISA IRQ 0 -> GSI 2 override where KVM's PIT lands on the IOAPIC.
pub fn madt(vcpus: u32) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 36, 5, OEM_ID, *b"HVMMADT ", OEM_REVISION);
    t.append(LAPIC_ADDR);
    t.append(1u32); // PCAT_COMPAT: dual 8259s are present too.
    for id in 0..vcpus {
        // Processor local APIC: type 0, length 8, UID, APIC ID, flags (enabled).
        t.append_slice(&[0, 8, id as u8, id as u8]);
        t.append(1u32);
    }
    // I/O APIC: type 1, length 12, ID, reserved, address, GSI base.
    t.append_slice(&[1, 12, IOAPIC_ID, 0]);
    t.append(IOAPIC_ADDR);
    t.append(0u32);
    // Interrupt source override: type 2, length 10, bus ISA, IRQ 0 -> GSI 2, flags.
    t.append_slice(&[2, 10, 0, 0]);
    t.append(u32::from(PIT_IOAPIC_PIN));
    t.append(0u16);
    // Local APIC NMI: type 4, length 6, all processors, flags, LINT1.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t.as_slice().to_vec()
}

const fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// Lays out all tables from [`ACPI_START`].
pub fn build(vcpus: u32, devices: &[DsdtDevice]) -> Result<AcpiTables, AcpiError> {
    let rsdp_addr = ACPI_START;
    let mut next = align16(rsdp_addr + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>, out: &mut Vec<(u64, Vec<u8>)>| {
        let at = next;
        next = align16(at + bytes.len() as u64);
        out.push((at, bytes));
        at
    };
    let mut tables = Vec::new();
    let dsdt_addr = place(dsdt(devices), &mut tables);
    let fadt_addr = place(fadt(dsdt_addr), &mut tables);
    let madt_addr = place(madt(vcpus), &mut tables);
    let mut xsdt = XSDT::new(OEM_ID, *b"HVMXSDT ", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(sdt_bytes(&xsdt), &mut tables);
    tables.push((rsdp_addr, sdt_bytes(&Rsdp::new(OEM_ID, xsdt_addr))));
    if next > ACPI_END {
        return Err(AcpiError::TooLarge {
            size: next - ACPI_START,
        });
    }
    Ok(AcpiTables { rsdp_addr, tables })
}

/// Writes the tables into guest memory.
pub fn write(mem: &GuestMemoryMmap, tables: &AcpiTables) -> Result<(), AcpiError> {
    for (addr, bytes) in &tables.tables {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table<'a>(t: &'a AcpiTables, sig: &[u8]) -> &'a [u8] {
        &t.tables.iter().find(|(_, b)| b.starts_with(sig)).unwrap().1
    }

    #[test]
    fn every_table_has_a_valid_checksum_and_length() {
        let t = build(4, &[]).unwrap();
        for (_, bytes) in &t.tables {
            if bytes.starts_with(b"RSD PTR ") {
                assert!(checksum_ok(&bytes[..20]));
                assert!(checksum_ok(bytes));
                continue;
            }
            let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len(), "{:?}", &bytes[..4]);
            assert!(checksum_ok(bytes), "{:?}", &bytes[..4]);
        }
    }

    #[test]
    fn madt_lists_every_vcpu() {
        for n in [1u32, 2, 16, 254] {
            let m = madt(n);
            let mut apics = Vec::new();
            let mut off = 44;
            while off < m.len() {
                let (kind, len) = (m[off], m[off + 1] as usize);
                if kind == 0 {
                    apics.push(m[off + 3]);
                }
                off += len;
            }
            assert_eq!(apics, (0..n).map(|i| i as u8).collect::<Vec<_>>());
        }
    }

    #[test]
    fn rsdp_points_at_xsdt_which_points_at_fadt_and_madt() {
        let t = build(2, &[]).unwrap();
        let rsdp = table(&t, b"RSD PTR ");
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let (_, xsdt) = t.tables.iter().find(|(a, _)| *a == xsdt_addr).unwrap();
        assert!(xsdt.starts_with(b"XSDT"));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<&[u8]> = entries
            .iter()
            .map(|e| &t.tables.iter().find(|(a, _)| a == e).unwrap().1[..4])
            .collect();
        assert_eq!(sigs, vec![&b"FACP"[..], &b"APIC"[..]]);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let t = build(1, &[]).unwrap();
        let f = table(&t, b"FACP");
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG GAS at 116: system I/O, address at +4.
        assert_eq!(f[116], 1);
        assert_eq!(
            u64::from_le_bytes(f[120..128].try_into().unwrap()),
            RESET_PORT as u64
        );
        assert_eq!(f[128], RESET_VALUE);
        // SLEEP_CONTROL_REG GAS at 244.
        assert_eq!(
            u64::from_le_bytes(f[248..256].try_into().unwrap()),
            SLEEP_CONTROL_PORT as u64
        );
    }

    #[test]
    fn dsdt_has_s5_and_the_devices() {
        let t = build(
            1,
            &[
                DsdtDevice::Ports {
                    name: "COM1",
                    hid: "PNP0501",
                    port: 0x3f8,
                    len: 8,
                    irq: Some(4),
                },
                DsdtDevice::VirtioMmio {
                    index: 0,
                    base: 0xd000_0000,
                    size: 0x1000,
                    irq: 5,
                },
            ],
        )
        .unwrap();
        let d = table(&t, b"DSDT");
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_"));
        assert!(has(b"COM1"));
        assert!(has(b"LNRO0005"));
        assert!(has(b"V000"));
    }

    #[test]
    fn eisa_ids_are_recognised() {
        assert!(is_eisa_id("PNP0501"));
        assert!(!is_eisa_id("QEMU0001"));
        assert!(!is_eisa_id("LNRO0005"));
    }
}
