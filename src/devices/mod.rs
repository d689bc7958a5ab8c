//! Emulated devices and the buses that route guest accesses to them.
pub mod bus;
pub mod cmos;
pub mod complaint;
pub mod console_output;
pub mod events;
pub mod ged;
pub mod i8042;
pub mod pci_root;
pub mod serial;
pub mod system_ports;
pub mod virtio;
