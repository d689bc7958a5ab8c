//! virtio-rng (entropy device): fills the guest's buffers from the host's
//! getrandom(2).

use super::{
    drain_queue, QueueError, Served, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use std::io::Write;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// At most this much entropy per request, so one request cannot stall the loop.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    buf: Vec<u8>,
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into a live buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn label(&self) -> String {
        "virtio-rng".into()
    }

    fn device_id(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_RNG
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }
    fn queue_sizes(&self) -> &[u16] {
        &[256]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, QueueError> {
        let buf = &mut self.buf;
        drain_queue(queue, mem, |chain| {
            let Ok(mut writer) = chain.writer(mem) else {
                return 0;
            };
            let len = writer.available_bytes().min(MAX_REQUEST);
            buf.resize(len, 0);
            if getrandom(buf).is_err() || writer.write_all(buf).is_err() {
                return 0;
            }
            len as u32
        })
    }
}
