//! hvm: a small hosted hypervisor that boots Linux guests on KVM.
//!
//! The data path: [`spec`] (TOML → validated data) → [`vmm::Vm::build`]
//! (KVM VM, guest memory, ACPI, kernel, devices, vCPUs) → [`vmm::Vm::run`]
//! (vCPU threads + one event loop) → [`vmm::exit::ExitReason`] → exit code.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod devices;
pub mod spec;
pub mod timeline;
pub mod vmm;
