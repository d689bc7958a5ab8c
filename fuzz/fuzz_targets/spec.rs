//! The spec parser: any text either becomes a valid spec or an error that
//! names a key or line; it never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hvm::spec::Spec::from_str(text, std::path::Path::new("/fuzz/vm.toml"));
    }
});
