//! COM1: a 16550 UART (vm-superio) whose output goes to the console output
//! and whose input comes from the event loop. Interrupts reach the guest
//! through an eventfd registered as an irqfd.

use super::bus::BusDevice;
use super::complaint::Complaint;
pub use super::console_output::SharedOutput;
use std::collections::VecDeque;
use std::io;
use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's ports and ISA interrupt line.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;
/// Input bytes hvm holds for the guest beyond the UART's 64-byte FIFO.
const MAX_PENDING_INPUT: usize = 1 << 20;

/// Raises the UART's interrupt line.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART plus input that did not fit in its FIFO yet.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, SharedOutput>,
    pending: VecDeque<u8>,
    dropped_input: Complaint,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: SharedOutput) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
            pending: VecDeque::new(),
            dropped_input: Complaint::new(),
        }
    }

    /// Queues bytes for the guest; they enter the FIFO as it drains.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        if room < bytes.len() {
            self.dropped_input.log(
                "serial console",
                format_args!(
                    "the guest is not reading its console: dropped {} input bytes",
                    bytes.len() - room
                ),
            );
        }
        self.pending.extend(&bytes[..bytes.len().min(room)]);
        self.refill();
    }

    fn refill(&mut self) {
        while !self.pending.is_empty() && self.uart.fifo_capacity() > 0 {
            let (front, _) = self.pending.as_slices();
            match self.uart.enqueue_raw_bytes(front) {
                // In loopback mode the UART takes nothing (and says Ok(0)):
                // the input waits, or this loop would spin for ever.
                Ok(0) => break,
                Ok(n) => drop(self.pending.drain(..n)),
                Err(e) => {
                    log::debug!("serial input: {e:?}");
                    break;
                }
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
        // Input that waited (a full FIFO, loopback) moves on as soon as it can.
        self.refill();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, value) {
                log::debug!("serial write: {e:?}");
            }
        }
        self.refill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;

    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;
    const LSR_THR_EMPTY: u8 = 0x20;

    fn device() -> (SerialDevice, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let d = SerialDevice::new(irq.try_clone().unwrap(), SharedOutput::new(false));
        (d, irq)
    }

    fn read(d: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8];
        d.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn transmitter_is_always_ready_so_the_console_never_stalls() {
        let (mut d, _irq) = device();
        for _ in 0..10_000 {
            d.write(0, b"x");
            assert_ne!(read(&mut d, LSR) & LSR_THR_EMPTY, 0);
        }
    }

    #[test]
    fn output_reaches_the_log_file() {
        let path = std::env::temp_dir().join(format!("hvm-serial-test-{}", std::process::id()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedOutput::new(false);
        out.add_file(File::create(&path).unwrap(), None);
        let mut d = SerialDevice::new(irq, out.clone());
        for b in b"hello\nno newline" {
            d.write(0, &[*b]);
        }
        out.drain();
        let mut s = String::new();
        File::open(&path).unwrap().read_to_string(&mut s).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s, "hello\nno newline");
    }

    #[test]
    fn input_larger_than_the_fifo_arrives_in_order() {
        let (mut d, irq) = device();
        d.write(1, &[1]); // IER: received-data interrupt on.
        let input: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        d.queue_input(&input);
        assert!(irq.read().is_ok(), "interrupt raised");
        let mut got = Vec::new();
        while read(&mut d, LSR) & LSR_DATA_READY != 0 {
            got.push(read(&mut d, 0));
        }
        assert_eq!(got, input);
    }

    /// Found by the serial fuzz target: host input while the guest has the
    /// UART in loopback mode (MCR bit 4) made the device loop spin for ever.
    #[test]
    fn input_during_loopback_waits_instead_of_spinning() {
        let (mut d, _irq) = device();
        d.write(4, &[0x10]); // MCR: loopback.
        d.queue_input(b"typed while in loopback");
        d.write(4, &[0]); // Loopback off: the input flows again.
        let mut got = Vec::new();
        while read(&mut d, LSR) & LSR_DATA_READY != 0 {
            got.push(read(&mut d, 0));
        }
        assert_eq!(got, b"typed while in loopback");
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut d, _irq) = device();
        d.write(0, &[]);
        d.write(200, &[1, 2, 3, 4]);
        let mut wide = [0xffu8; 4];
        d.read(1, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
        d.read(9999, &mut []);
    }
}
