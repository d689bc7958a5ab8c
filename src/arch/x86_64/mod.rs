//! x86_64: the address map, boot CPU state, CPUID, MSRs, ACPI and MP tables.
pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
