//! virtio-console (hvc0): one port, no multiport. Output from the guest's
//! transmit queue goes to the console sinks; keyboard input queued by the
//! event loop fills the guest's receive buffers.

use super::{drain_queue, read_config_bytes, QueueError, Served, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::console_output::SharedOutput;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub const RECEIVE_QUEUE: usize = 0;
pub const TRANSMIT_QUEUE: usize = 1;
/// Output taken from one transmit chain (Linux sends at most a page);
/// the rest of a larger chain is ignored.
const MAX_CHAIN_OUTPUT: usize = 64 * 1024;
/// Input hvm holds while the guest has no receive buffers.
const MAX_PENDING: usize = 1 << 20;

/// Input waiting for the guest, shared with the event loop.
pub type PendingInput = Arc<Mutex<VecDeque<u8>>>;

pub struct Console {
    output: SharedOutput,
    pending: PendingInput,
    buf: Vec<u8>,
    /// The guest's name for it (hvc0, hvc1, ...: consoles are numbered in order).
    name: String,
}

impl Console {
    pub fn new(output: SharedOutput, pending: PendingInput) -> Self {
        Console::named(output, pending, "hvc0")
    }

    pub fn named(output: SharedOutput, pending: PendingInput, name: &str) -> Self {
        Console {
            output,
            pending,
            buf: Vec::new(),
            name: name.to_string(),
        }
    }

    /// Adds input for the guest (bounded: a guest that never reads loses the excess).
    pub fn queue_input(pending: &PendingInput, bytes: &[u8]) {
        let mut p = crate::devices::bus::lock(pending);
        let room = MAX_PENDING.saturating_sub(p.len());
        p.extend(&bytes[..bytes.len().min(room)]);
    }
}

impl VirtioDevice for Console {
    fn label(&self) -> String {
        format!("virtio-console {}", self.name)
    }

    fn device_id(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_sizes(&self) -> &[u16] {
        &[64, 64]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: unused without their feature bits.
        read_config_bytes(&[0u8; 12], offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, QueueError> {
        match index {
            TRANSMIT_QUEUE => {
                let (output, buf) = (&self.output, &mut self.buf);
                drain_queue(queue, mem, |chain| {
                    let Ok(mut reader) = chain.reader(mem) else {
                        return 0;
                    };
                    // In pieces, and no more than a sane chain's worth: a
                    // chain may span all of guest RAM.
                    buf.resize(4096, 0);
                    let mut left = MAX_CHAIN_OUTPUT;
                    while let Ok(n @ 1..) = reader.read(&mut buf[..left.min(4096)]) {
                        output.write_bytes(&buf[..n]);
                        left -= n;
                    }
                    0
                })
            }
            RECEIVE_QUEUE => {
                let mut pending = crate::devices::bus::lock(&self.pending);
                if pending.is_empty() {
                    return Ok(Served::default());
                }
                let mut used = false;
                // Only take buffers while there is input for them.
                while !pending.is_empty() {
                    let Some(chain) = virtio_queue::QueueOwnedT::iter(queue, mem)?.next() else {
                        break;
                    };
                    let head = chain.head_index();
                    let written = match chain.writer(mem) {
                        Ok(mut w) => {
                            let n = w.available_bytes().min(pending.len());
                            let bytes: Vec<u8> = pending.drain(..n).collect();
                            if w.write_all(&bytes).is_ok() {
                                n as u32
                            } else {
                                0
                            }
                        }
                        Err(_) => 0,
                    };
                    virtio_queue::QueueT::add_used(queue, mem, head, written)?;
                    used = true;
                }
                Ok(Served::done(used))
            }
            _ => Ok(Served::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let path = std::env::temp_dir().join(format!("hvm-hvc-{}", std::process::id()));
        let out = SharedOutput::new(false);
        out.add_file(std::fs::File::create(&path).unwrap(), None);
        let mut c = Console::new(out.clone(), PendingInput::default());
        let m = mem();
        m.write_slice(b"login: ", GuestAddress(0x20000)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        q.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(0x20000, 7, 0, 0))])
            .unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        c.process_queue(TRANSMIT_QUEUE, &mut queue, &m).unwrap();
        out.drain();
        assert_eq!(std::fs::read(&path).unwrap(), b"login: ");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn pending_input_fills_receive_buffers() {
        let pending = PendingInput::default();
        let mut c = Console::new(SharedOutput::new(false), pending.clone());
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        q.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(0x20000, 64, 2, 0))])
            .unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        // No input yet: the buffer stays with the device.
        assert!(!c.process_queue(RECEIVE_QUEUE, &mut queue, &m).unwrap().used);
        Console::queue_input(&pending, b"root\n");
        assert!(c.process_queue(RECEIVE_QUEUE, &mut queue, &m).unwrap().used);
        let mut got = [0u8; 5];
        m.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(&got, b"root\n");
        assert!(pending.lock().unwrap().is_empty());
    }
}
