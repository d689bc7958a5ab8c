//! virtio-fs once its file server is gone: hvm answers every request with
//! EIO itself, taking each queue over at the position the used ring says
//! (guest memory, so anything), over arbitrary descriptors.
#![no_main]
use hvm::devices::virtio::fs::VhostUserFs;
use libfuzzer_sys::fuzz_target;
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    let Ok((ours, _server)) = UnixStream::pair() else {
        return;
    };
    let fs = VhostUserFs::orphaned(ours, "fuzz");
    hvm_fuzz::drive(Box::new(fs), data, |_, _, t| {
        t.backend_event();
    });
});
