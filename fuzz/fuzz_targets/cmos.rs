//! The CMOS index/data ports.
#![no_main]
use hvm::devices::cmos::Cmos;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hvm_fuzz::ports(&mut Cmos::default(), data, 2);
});
