//! x86_64: the address map, boot CPU state, CPUID, MSRs and ACPI tables.
pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod regs;
