//! The guest-physical address map hvm builds for an x86_64 guest.
//!
//! Low memory holds the boot structures; the kernel goes at 1 MiB; the
//! top 1 GiB below 4 GiB is a hole for device MMIO (virtio-mmio, IOAPIC,
//! LAPIC); RAM that does not fit below the hole continues at 4 GiB.

/// GDT for the 64-bit entry.
pub const BOOT_GDT: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT: u64 = 0x520;
/// Linux "zero page" (struct boot_params).
pub const ZERO_PAGE: u64 = 0x7000;
/// Top of the boot stack (grows down, below the page tables).
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 of the identity page tables; PDPT and four PDs follow.
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// How many 1 GiB page directories the boot identity map has (all of 0..4 GiB).
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Largest command line hvm accepts (Linux x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area: low RAM ends here in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer, in the last KiB of base memory (where Linux
/// looks second, after the first KiB).
pub const MP_FLOATING_POINTER: u64 = EBDA_START;
/// ACPI tables, in the BIOS read-only area Linux also scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0xf0000;
/// The MP configuration table (room for 254 vCPUs' entries).
pub const MP_TABLE_START: u64 = 0xf0000;
pub const MP_TABLE_END: u64 = 0x100000;
/// The kernel's load address (1 MiB), also the start of "high memory".
pub const HIMEM_START: u64 = 0x100000;
/// The 32-bit MMIO hole: 3 GiB .. 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where virtio-mmio device windows are placed, inside the hole.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The IOAPIC's ID, as KVM's in-kernel IOAPIC reports it (MADT and MP table).
pub const IOAPIC_ID: u8 = 0;
/// The IOAPIC pin the PIT's ISA IRQ 0 arrives on (MADT override, MP table).
pub const PIT_IOAPIC_PIN: u8 = 2;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map on Intel; in the hole.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
