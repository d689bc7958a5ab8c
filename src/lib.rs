//! hvm: a small hosted hypervisor that boots Linux guests on KVM.
//!
//! The data path: [`spec`] (TOML → validated data) → [`vmm::Vm::build`]
//! (KVM VM, guest memory, ACPI, kernel, devices, vCPUs) → [`vmm::Vm::run`]
//! (vCPU threads, a device loop, and the control loop that owns them all:
//! [`vmm::control`]) → [`vmm::exit::ExitReason`] → exit code. [`api`] is the
//! control socket's protocol, spoken by `hvm ps|pause|resume|stop|info`.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod arch;
pub mod devices;
pub mod flags;
pub mod forward;
pub mod guest_init;
pub mod host_file;
pub mod host_net;
pub mod mac;
pub mod pidfd;
pub mod spec;
pub mod timeline;
pub mod vmm;
