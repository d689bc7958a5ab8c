//! PCI configuration mechanism #1 (0xcf8 address, 0xcfc data) of the host bridge.
#![no_main]
use hvm::devices::pci_root::PciRoot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hvm_fuzz::ports(&mut PciRoot::default(), data, 8);
});
