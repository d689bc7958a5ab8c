//! What hvm's fuzz targets share: a small guest memory, a reader that
//! turns fuzzer bytes into numbers, and [`drive`], which replays them as
//! a guest driving a virtio-mmio device: memory writes, register accesses,
//! a well-formed set-up (so the fuzzer gets past negotiation quickly),
//! queue notifications and backend events.

use hvm::devices::bus::BusDevice;
use hvm::devices::virtio::mmio::MmioTransport;
use hvm::devices::virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory size: room for the queues (4 KiB each from 4 KiB up) and
/// the buffers their descriptors point at.
pub const MEM_SIZE: usize = 1 << 16;

/// 64 KiB of guest memory at guest address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("64 KiB of guest memory")
}

/// Fuzzer bytes read as numbers; zeros once they run out.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
}

// virtio-mmio registers (virtio 1.x, 4.2.2).
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// A driver's correct start: features the device offers (a subset the
/// fuzzer picks), each queue at its own 4 KiB with 1 to 16 entries, then
/// FEATURES_OK and DRIVER_OK.
fn set_up(t: &mut MmioTransport, input: &mut Input, queues: usize) {
    write32(t, STATUS, 0);
    write32(t, STATUS, 1);
    write32(t, STATUS, 3);
    for sel in 0..2u32 {
        write32(t, DEVICE_FEATURES_SEL, sel);
        let offered = read32(t, DEVICE_FEATURES);
        write32(t, DRIVER_FEATURES_SEL, sel);
        // VERSION_1 (bit 32) always; the rest as the fuzzer likes.
        let wanted = if sel == 1 { 1 } else { 0 } | (offered & input.u32());
        write32(t, DRIVER_FEATURES, wanted);
    }
    write32(t, STATUS, 0xb);
    for q in 0..queues {
        let base = 0x1000 * (q as u32 + 1);
        write32(t, QUEUE_SEL, q as u32);
        write32(t, QUEUE_NUM, 1 << (input.u8() % 5));
        write32(t, QUEUE_DESC, base);
        write32(t, QUEUE_DESC + 4, 0);
        write32(t, QUEUE_DRIVER, base + 0x400);
        write32(t, QUEUE_DRIVER + 4, 0);
        write32(t, QUEUE_DEVICE, base + 0x800);
        write32(t, QUEUE_DEVICE + 4, 0);
        write32(t, QUEUE_READY, 1);
    }
    write32(t, STATUS, 0xf);
}

/// Replays `data` against `device` behind the virtio-mmio transport, as
/// the vCPU (register accesses) and the device loop (notifications,
/// backend events) would. Op codes 8 and up go to `extra`, for what only
/// one device has (host input, a peer's frames).
pub fn drive(
    device: Box<dyn VirtioDevice>,
    data: &[u8],
    mut extra: impl FnMut(u8, &mut Input, &mut MmioTransport),
) {
    let mem = guest_memory();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd");
    let mut t = MmioTransport::new(device, mem.clone(), irq);
    let queues = t.queue_count();
    let mut input = Input::new(data);
    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 10 {
            0 => {
                let at = u64::from(input.u16());
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                // Past the end of memory is the guest's problem, not ours.
                let _ = mem.write_slice(bytes, GuestAddress(at));
            }
            1 => {
                let offset = u64::from(input.u16() & 0x1ff);
                let value = input.u32();
                write32(&mut t, offset, value);
            }
            2 => {
                let offset = u64::from(input.u16() & 0x1ff);
                read32(&mut t, offset);
            }
            3 => {
                // Odd widths: a byte, a word, eight bytes.
                let offset = u64::from(input.u16() & 0x1ff);
                let width = [1usize, 2, 8][usize::from(input.u8() % 3)];
                let bytes = input.bytes(width).to_vec();
                t.write(offset, &bytes);
                let mut back = vec![0u8; width];
                t.read(offset, &mut back);
            }
            4 | 5 => set_up(&mut t, &mut input, queues),
            6 | 7 => {
                let q = usize::from(input.u8()) % queues.max(1);
                // The device loop's budget: a few passes, then others' turn.
                for _ in 0..8 {
                    if !t.notify(q) {
                        break;
                    }
                }
            }
            8 => {
                t.backend_event();
            }
            _ => {
                let op = input.u8();
                extra(op, &mut input, &mut t);
            }
        }
    }
}

/// A scratch path unique to this process, for files and sockets a target needs.
pub fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("hvm-fuzz-{}-{name}", std::process::id()))
}

/// Replays `data` as port accesses of any width to a device with `span`
/// ports: each step an offset, a width (1, 2 or 4) and, for a write, bytes.
pub fn ports(dev: &mut dyn BusDevice, data: &[u8], span: u64) {
    let mut input = Input::new(data);
    while !input.is_empty() {
        let op = input.u8();
        let offset = u64::from(op >> 3) % span;
        let width = [1usize, 2, 4, 1][usize::from(op >> 1 & 3)];
        if op & 1 == 0 {
            let bytes = input.bytes(width).to_vec();
            dev.write(offset, &bytes);
        } else {
            let mut back = vec![0u8; width];
            dev.read(offset, &mut back);
        }
    }
}
