//! The virtio-mmio transport (registers, feature negotiation, status
//! machine, queue set-up) with the entropy device behind it.
#![no_main]
use hvm::devices::virtio::rng::Rng;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hvm_fuzz::drive(Box::new(Rng::default()), data, |_, _, _| {});
});
