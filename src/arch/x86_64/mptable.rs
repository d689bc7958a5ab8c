//! The MultiProcessor Specification 1.4 table: a floating pointer in the
//! last KiB of base memory and a configuration table that lists the vCPUs,
//! one ISA bus, the IOAPIC and how the bus's interrupts reach it.
//!
//! Linux takes its CPUs from ACPI's MADT when it has one, but it searches
//! for this table first, early in boot. Where there is none it scans the
//! whole 64 KiB BIOS area 16 bytes at a time, mapping and unmapping the rest
//! of the area at every step: ~50 ms of a nested guest's boot, a few ms on
//! hardware. Firecracker and Cloud Hypervisor provide one for the same
//! reason. A kernel booted with `acpi=off` uses the table itself, so it
//! describes the machine exactly as the MADT does.

use super::layout::{
    IOAPIC_ADDR, IOAPIC_ID, LAPIC_ADDR, MP_FLOATING_POINTER, MP_TABLE_END, MP_TABLE_START,
    PIT_IOAPIC_PIN,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Pins of KVM's in-kernel IOAPIC.
const IOAPIC_PINS: u8 = 24;
/// Local APIC and IOAPIC versions of the integrated APICs KVM emulates.
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// The only bus: ISA, ID 0.
const ISA_BUS: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Interrupt types of the interrupt-assignment entries.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

/// Errors while placing the table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("the MP table for {vcpus} vCPUs ({size} bytes) does not fit its area")]
    TooLarge { vcpus: u32, size: usize },
    #[error("cannot write the MP table to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// The configuration table for `vcpus` vCPUs (APIC ID = vCPU index, vCPU 0
/// boots).
pub fn config_table(vcpus: u32) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = 0x01 | if id == 0 { 0x02 } else { 0 }; // enabled, bootstrap
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id as u8, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&0x0600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x0201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 0x01]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    // Each pin is the bus IRQ of its number (the devices' GSIs), except that
    // the PIT's IRQ 0 arrives on pin 2, as the MADT's override says, and pin
    // 0 is left out: no firmware programmed it for the 8259s' ExtINT (the
    // local APICs' LINT0 carries that), and Linux warns when a table says so.
    for pin in 1..IOAPIC_PINS {
        let irq = if pin == PIT_IOAPIC_PIN { 0 } else { pin };
        // Flags 0: polarity and trigger conform to the bus.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            0,
            0,
            ISA_BUS,
            irq,
            IOAPIC_ID,
            pin,
        ]);
        count += 1;
    }
    // Every local APIC: LINT0 is ExtINT (virtual wire), LINT1 is NMI.
    for (kind, lint) in [(INT_EXTINT, 0), (INT_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS, 0, 0xff, lint]);
        count += 1;
    }

    let mut t = Vec::with_capacity(44 + entries.len());
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    t.push(4); // specification revision 1.4
    t.push(0); // checksum, below
    t.extend_from_slice(b"HVM     "); // OEM ID
    t.extend_from_slice(b"HVM MPTABLE "); // product ID
    t.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&[0; 4]); // no extended entries
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

/// The 16-byte floating pointer to a configuration table at `table`.
pub fn floating_pointer(table: u32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..4].copy_from_slice(b"_MP_");
    p[4..8].copy_from_slice(&table.to_le_bytes());
    // Length in 16-byte units, specification revision 1.4. Feature bytes
    // stay 0: a configuration table is present (no default configuration)
    // and the system is in virtual-wire mode (no IMCR).
    p[8] = 1;
    p[9] = 4;
    p[10] = checksum(&p);
    p
}

/// The byte that makes `bytes` sum to zero (it must be zero in `bytes`).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Writes the floating pointer and the table for `vcpus` vCPUs.
pub fn write(mem: &GuestMemoryMmap, vcpus: u32) -> Result<(), MpTableError> {
    let table = config_table(vcpus);
    if MP_TABLE_START + table.len() as u64 > MP_TABLE_END {
        return Err(MpTableError::TooLarge {
            vcpus,
            size: table.len(),
        });
    }
    mem.write_slice(&table, GuestAddress(MP_TABLE_START))?;
    let pointer = floating_pointer(MP_TABLE_START as u32);
    mem.write_slice(&pointer, GuestAddress(MP_FLOATING_POINTER))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::MAX_VCPUS;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn the_floating_pointer_is_what_linux_looks_for() {
        let p = floating_pointer(0xf0000);
        assert_eq!(&p[..4], b"_MP_");
        assert_eq!(u32::from_le_bytes(p[4..8].try_into().unwrap()), 0xf0000);
        assert_eq!((p[8], p[9], p[11]), (1, 4, 0));
        assert!(sums_to_zero(&p));
    }

    #[test]
    fn the_table_lists_every_vcpu_the_bus_the_ioapic_and_its_pins() {
        for vcpus in [1, 2, 7, MAX_VCPUS] {
            let t = config_table(vcpus);
            assert_eq!(&t[..4], b"PCMP");
            assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
            assert!(sums_to_zero(&t), "checksum for {vcpus}");
            let count = u16::from_le_bytes([t[34], t[35]]) as u32;
            assert_eq!(count, vcpus + 2 + 23 + 2);
            assert_eq!(
                u32::from_le_bytes(t[36..40].try_into().unwrap()),
                LAPIC_ADDR
            );
            // Walk the entries by their types' sizes.
            let (mut at, mut cpus, mut boot) = (44, 0, 0);
            let mut pins = Vec::new();
            while at < t.len() {
                match t[at] {
                    ENTRY_PROCESSOR => {
                        assert_eq!(t[at + 1] as u32, cpus, "APIC IDs in order");
                        assert_ne!(t[at + 3] & 1, 0, "enabled");
                        boot += u32::from(t[at + 3] >> 1 & 1);
                        cpus += 1;
                        at += 20;
                    }
                    ENTRY_IO_INTERRUPT => {
                        pins.push((t[at + 1], t[at + 5], t[at + 7]));
                        at += 8;
                    }
                    _ => at += 8,
                }
            }
            assert_eq!(at, t.len());
            assert_eq!((cpus, boot), (vcpus, 1));
            assert_eq!(pins.len(), 23);
            assert!(!pins.iter().any(|p| p.2 == 0), "nothing on pin 0");
            assert!(pins.contains(&(INT_VECTORED, 0, 2)), "PIT on pin 2");
            assert!(pins.contains(&(INT_VECTORED, 5, 5)));
            assert!(pins.contains(&(INT_VECTORED, 23, 23)));
            assert!(MP_TABLE_START + t.len() as u64 <= MP_TABLE_END);
        }
    }
}
