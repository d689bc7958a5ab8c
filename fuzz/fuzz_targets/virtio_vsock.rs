//! virtio-vsock: guest packets over arbitrary descriptors, and host
//! programs connecting to its socket and sending anything.
#![no_main]
use hvm::devices::virtio::vsock::Vsock;
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    let path = hvm_fuzz::scratch("vsock.sock");
    let _ = std::fs::remove_file(&path);
    let Ok(vsock) = Vsock::new(3, &path) else {
        return;
    };
    let mut clients: Vec<UnixStream> = Vec::new();
    hvm_fuzz::drive(Box::new(vsock), data, |op, input, t| {
        match op % 3 {
            0 if clients.len() < 8 => {
                if let Ok(c) = UnixStream::connect(&path) {
                    clients.push(c);
                }
            }
            1 => {
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                if let Some(c) = clients.last_mut() {
                    let _ = c.write_all(bytes);
                }
            }
            _ => {
                clients.pop();
            }
        }
        t.backend_event();
    });
    let _ = std::fs::remove_file(&path);
});
