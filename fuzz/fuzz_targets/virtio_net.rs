//! virtio-net over a passt-style stream link: guest frames out, and
//! arbitrary bytes (length-prefixed frames or garbage) in from the peer.
#![no_main]
use hvm::devices::virtio::net::{FrameStream, Link, Net};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    let Ok((ours, mut peer)) = UnixStream::pair() else {
        return;
    };
    let Ok(stream) = FrameStream::new(ours) else {
        return;
    };
    let _ = peer.set_nonblocking(true);
    let net = Net::new(Link::Stream(stream), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let mut sink = vec![0u8; 1 << 16];
    hvm_fuzz::drive(Box::new(net), data, |op, input, t| {
        if op % 2 == 0 {
            let len = usize::from(input.u16() % 2048);
            let _ = peer.write_all(input.bytes(len));
            t.backend_event();
        } else {
            // Take what the guest sent, so the socket never fills.
            while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
});
