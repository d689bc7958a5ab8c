//! virtio devices on the virtio-mmio transport (virtio 1.x, "modern").
//!
//! The transport ([`mmio::MmioTransport`]) owns the queues and the status
//! state machine; a device ([`VirtioDevice`]) only turns available buffers
//! into used ones. Guest memory is reached only through vm-memory's checked
//! accessors (virtio-queue's descriptor chains, readers and writers), so a
//! driver's bad address or length fails that request, never hvm.

pub mod block;
pub mod console;
pub mod fs;
pub mod guest_io;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod used_batch;
pub mod vsock;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Size of each device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Feature bits every hvm device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// A guest-visible problem with a queue: the device is marked as needing reset.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// The device's backend (a vhost-user server) refused or failed.
    #[error("backend: {0}")]
    Backend(String),
}

/// What a device makes of its backend fd becoming ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendEvent {
    /// Host input arrived: serve this queue.
    Input(usize),
    /// Host input arrived, and the backend takes output again: serve both.
    InputOutput {
        input: usize,
        output: usize,
    },
    /// The backend that served the queues is gone: hvm serves them from now
    /// on (the device answers with errors so the guest does not hang).
    QueuesToHvm,
    Nothing,
}

/// What a virtio device adds to the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block, 4 = entropy, ...).
    fn device_id(&self) -> u32;
    /// A label for logs and `hvm info`, such as `virtio-blk rootfs (disk.img)`.
    fn label(&self) -> String {
        format!("virtio device type {}", self.device_id())
    }
    /// Called before each of the driver's accesses to the device's window:
    /// a device still being set up (its file server starting) finishes
    /// here, as late as it can.
    fn prepare(&mut self) {}
    /// Feature bits offered (VERSION_1 included).
    fn features(&self) -> u64;
    /// Maximum size of each queue.
    fn queue_sizes(&self) -> &[u16];
    /// Reads device config space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver finished feature negotiation and set DRIVER_OK; the
    /// queues are configured. An error marks the device as needing reset.
    fn activate(
        &mut self,
        _features: u64,
        _queues: &[Queue],
        _mem: &GuestMemoryMmap,
    ) -> Result<(), QueueError> {
        Ok(())
    }
    /// Turns the available buffers of queue `index` into used ones, within
    /// a work budget; says whether any were used and whether work is left.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, QueueError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// A host file descriptor (a tap) whose input the event loop should
    /// watch; when it is readable, [`VirtioDevice::process_queue`] runs for
    /// [`VirtioDevice::input_queue`].
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The queue that host input goes to.
    fn input_queue(&self) -> Option<usize> {
        None
    }
    /// The backend fd is ready (input, or a hang-up).
    fn backend_ready(&mut self) -> BackendEvent {
        self.input_queue()
            .map_or(BackendEvent::Nothing, BackendEvent::Input)
    }
    /// True while the backend cannot take more output (a full socket): the
    /// event loop then also wakes the device when the fd becomes writable.
    fn backend_blocked(&self) -> bool {
        false
    }
    /// True while another process (a vhost-user backend) serves the queues
    /// straight from the guest's kicks, and raises interrupts itself.
    fn queues_external(&self) -> bool {
        false
    }
    /// Whether the device may ever have external queues (then its
    /// interrupt status is read under the transport's lock).
    fn may_have_external_queues(&self) -> bool {
        false
    }
    /// For a device whose queues are external: the queue notification
    /// eventfds (KVM's ioeventfds, one per queue) and the interrupt eventfd
    /// (KVM's irqfd), for the backend to use directly.
    fn set_queue_events(&mut self, _kicks: Vec<EventFd>, _call: EventFd) {}
}

/// Copies config bytes at `offset` into `data`, zero past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// What one pass over a queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Buffers went to the used ring (the guest may need an interrupt).
    pub used: bool,
    /// The budget ran out with requests still waiting: serve the queue again
    /// after other work (other devices, stdin, the guest's next kick).
    pub more: bool,
    /// The device published buffers in batches (used_batch.rs) and found
    /// that the driver asked to be notified of one: the transport's own
    /// check covers only buffers added after the last batch.
    pub notify: bool,
}

impl Served {
    /// A pass that finished everything there was.
    pub fn done(used: bool) -> Served {
        Served {
            used,
            ..Served::default()
        }
    }
}

/// Time one pass over a queue may take before it yields to other work,
/// so that a guest keeping a queue full cannot starve the rest of hvm.
pub const PASS_BUDGET: std::time::Duration = std::time::Duration::from_millis(10);

/// Pops available chains of `queue`, lets `handle` serve each and return
/// the number of bytes it wrote, and puts it on the used ring. Stops after
/// a queue's worth of chains or [`PASS_BUDGET`], whichever comes first.
/// With EVENT_IDX, notifications are re-enabled and the ring re-checked so
/// no buffer is missed.
pub fn drain_queue<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handle: F,
) -> Result<Served, QueueError>
where
    F: FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    drain_queue_until(queue, mem, handle, || false)
}

/// [`drain_queue`] that also stops as soon as `stop` says so after a chain
/// (the backend is full): notifications stay off, and the device comes
/// back to the queue when its backend can take more.
pub fn drain_queue_until<F, S>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: F,
    mut stop: S,
) -> Result<Served, QueueError>
where
    F: FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
    S: FnMut() -> bool,
{
    let start = std::time::Instant::now();
    let mut left = queue.size();
    let mut used = false;
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len)?;
            used = true;
            left = left.saturating_sub(1);
            if stop() {
                return Ok(Served::done(used));
            }
            if left == 0 || start.elapsed() >= PASS_BUDGET {
                // Notifications stay off: hvm comes back to this queue itself.
                return Ok(Served {
                    used,
                    more: true,
                    ..Served::default()
                });
            }
        }
        if !queue.enable_notification(mem)? {
            return Ok(Served::done(used));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounds_checked() {
        let config = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
