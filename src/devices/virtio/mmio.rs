//! The virtio-mmio transport, version 2 (virtio 1.x spec, section 4.2.2):
//! registers, feature negotiation, the device status state machine, queue
//! setup, and the interrupt the guest sees.

use super::{BackendEvent, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::devices::complaint::Complaint;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x0048_564d; // "HVM"

// Register offsets.
const MAGIC_VALUE: u64 = 0x000;
const VERSION_REG: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// Where the driver writes a queue index to notify; KVM turns these writes into an ioeventfd.
pub const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

// Device status bits.
#[cfg(test)]
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const NEEDS_RESET: u32 = 64;
const FAILED: u32 = 128;

// Interrupt status bits.
const INT_USED_BUFFER: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;

/// One virtio device as the guest sees it through its MMIO window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: InterruptStatus,
    irq: EventFd,
    /// Clones of the queue notification eventfds (KVM's ioeventfds): a
    /// write makes the device loop serve that queue as if kicked.
    kicks: Vec<EventFd>,
    /// A driver that keeps getting it wrong is told once in the log, then counted.
    features_refused: Complaint,
    resets_needed: Complaint,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: EventFd) -> Self {
        let queues = device
            .queue_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max)
                    .unwrap_or_else(|_| Queue::new(256).expect("256 is a valid queue size"))
            })
            .collect();
        MmioTransport {
            device,
            mem,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: InterruptStatus::default(),
            irq,
            kicks: Vec::new(),
            features_refused: Complaint::new(),
            resets_needed: Complaint::new(),
        }
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn device_id(&self) -> u32 {
        self.device.device_id()
    }

    pub fn label(&self) -> String {
        self.device.label()
    }

    /// The backend fd to watch, if the device has one.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    /// The backend fd is ready: serve the device's input queue, or learn
    /// that hvm serves the queues from now on (returns true then; every
    /// queue is re-kicked, so requests in flight get their answer through
    /// the device loop's budgeted passes).
    pub fn backend_event(&mut self) -> bool {
        match self.device.backend_ready() {
            BackendEvent::Input(index) => {
                self.notify(index);
                false
            }
            BackendEvent::InputOutput { input, output } => {
                self.notify(input);
                if self.notify(output) {
                    self.rekick_queue(output);
                }
                false
            }
            BackendEvent::QueuesToHvm => {
                self.rekick();
                true
            }
            BackendEvent::Nothing => false,
        }
    }

    /// Marks every queue as kicked: the device loop serves it on its next turn.
    fn rekick(&self) {
        for k in &self.kicks {
            let _ = k.write(1);
        }
    }

    /// Marks one queue as kicked (its pass left work for the next turn).
    fn rekick_queue(&self, index: usize) {
        if let Some(k) = self.kicks.get(index) {
            let _ = k.write(1);
        }
    }

    /// True while the device's backend cannot take more output.
    pub fn backend_blocked(&self) -> bool {
        self.device.backend_blocked()
    }

    /// True while a backend process serves the queues (the event loop
    /// leaves their notifications alone).
    pub fn queues_external(&self) -> bool {
        self.device.queues_external()
    }

    /// Takes clones of the queue notification eventfds (one per queue);
    /// a device whose backend serves its queues gets them too, with the
    /// interrupt, for that backend to use directly.
    pub fn connect_kicks(&mut self, kicks: Vec<EventFd>) -> std::io::Result<()> {
        if self.device.queues_external() {
            let theirs = kicks
                .iter()
                .map(EventFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            self.device.set_queue_events(theirs, self.irq.try_clone()?);
        }
        self.kicks = kicks;
        Ok(())
    }

    /// The queue host input goes to, if the device has one.
    pub fn input_queue(&self) -> Option<usize> {
        self.device.input_queue()
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status.0.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::warn!("virtio: cannot raise the interrupt: {e}");
        }
    }

    /// The driver did something the spec forbids: tell it to reset the device.
    fn needs_reset(&mut self, why: &str) {
        if self.status & NEEDS_RESET == 0 {
            self.resets_needed
                .log(&self.label(), format_args!("{why}; device needs reset"));
            self.status |= NEEDS_RESET;
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    /// Serves queue `index` after the guest notified it (event loop
    /// thread). Returns true when work is left for another pass.
    pub fn notify(&mut self, index: usize) -> bool {
        if self.status & DRIVER_OK == 0 || self.status & NEEDS_RESET != 0 {
            return false;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return false;
        };
        if !queue.ready() {
            return false;
        }
        match self.device.process_queue(index, queue, &self.mem) {
            Ok(served) => {
                if served.used {
                    match queue.needs_notification(&self.mem) {
                        Ok(true) => self.raise(INT_USED_BUFFER),
                        Ok(false) if served.notify => self.raise(INT_USED_BUFFER),
                        Ok(false) => {}
                        Err(e) => self.needs_reset(&e.to_string()),
                    }
                }
                served.more && self.status & NEEDS_RESET == 0
            }
            Err(e) => {
                self.needs_reset(&e.to_string());
                false
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status.0.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET is the device's bit: it stays until the driver resets.
        let new = value | (self.status & NEEDS_RESET);
        let added = new & !self.status;
        if added & FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                // Refuse: the driver sees FEATURES_OK unset and gives up, and
                // a DRIVER_OK in the same write does not count either.
                let wanted = self.driver_features;
                self.features_refused.log(
                    &self.label(),
                    format_args!(
                        "driver features {wanted:#x} not acceptable (offered {offered:#x})"
                    ),
                );
                self.status = new & !(FEATURES_OK | DRIVER_OK);
                return;
            }
            // Accepted: the queues follow the negotiated EVENT_IDX.
            let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
        }
        if added & DRIVER_OK != 0 {
            if new & FEATURES_OK == 0 {
                self.needs_reset("DRIVER_OK without FEATURES_OK");
                return;
            }
            for (i, q) in self.queues.iter().enumerate() {
                if q.ready() && !q.is_valid(&self.mem) {
                    self.status = new;
                    self.needs_reset(&format!(
                        "queue {i} lies outside guest memory or is malformed"
                    ));
                    return;
                }
            }
            if let Err(e) = self
                .device
                .activate(self.driver_features, &self.queues, &self.mem)
            {
                self.status = new;
                self.needs_reset(&e.to_string());
                return;
            }
            // A driver may kick before DRIVER_OK, when hvm ignores kicks:
            // re-kick, so buffers already made available meet host input
            // that is waiting (the device loop serves them, not this vCPU).
            self.rekick();
        }
        self.status = new;
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues are configured only between FEATURES_OK and DRIVER_OK.
        if self.status & DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device.device_id(),
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => queue.map(|q| u32::from(q.max_size())).unwrap_or(0),
            QUEUE_READY => queue.map(|q| u32::from(q.ready())).unwrap_or(0),
            // A backend process raises the interrupt through the irqfd
            // without telling hvm: the used-buffer bit is always set then,
            // and the driver checks its queues (cheap) on each interrupt.
            INTERRUPT_STATUS if self.device.queues_external() => {
                self.interrupt_status.get() | INT_USED_BUFFER
            }
            INTERRUPT_STATUS => self.interrupt_status.get(),
            STATUS => self.status,
            CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => {
                if self.status & (FEATURES_OK | DRIVER_OK | FAILED) != 0
                    || self.status & DRIVER == 0
                {
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM => self.with_queue(|q| {
                // virtio-queue's set_size logs each bad value at error level;
                // a driver must not be able to flood hvm's log, so check here.
                if u16::try_from(value).map(|n| q.try_set_size(n)).is_err()
                    || q.size() != value as u16
                {
                    log::debug!("virtio-mmio: queue size {value} refused");
                }
            }),
            QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                self.with_queue(|q| set_ring_address(q, offset, value))
            }
            // Queue notifications reach the event loop through ioeventfds.
            QUEUE_NOTIFY => {}
            INTERRUPT_ACK => self.interrupt_status.ack(value),
            STATUS => self.set_status(value),
            _ => log::debug!(
                "virtio-mmio: write {value:#x} to read-only or unknown register {offset:#x}"
            ),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            if !q.ready() {
                f(q);
            }
        }
    }
}

/// Sets half of a ring address. Misaligned or otherwise invalid addresses
/// are refused quietly (debug log): the ring is then checked again at DRIVER_OK.
fn set_ring_address(q: &mut Queue, offset: u64, value: u32) {
    let high = offset % 8 == 4;
    let merge = |current: u64| {
        if high {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (current & !0xffff_ffff) | u64::from(value)
        }
    };
    let result = match offset & !4 {
        QUEUE_DESC_LOW => q.try_set_desc_table_address(GuestAddress(merge(q.desc_table()))),
        QUEUE_DRIVER_LOW => q.try_set_avail_ring_address(GuestAddress(merge(q.avail_ring()))),
        _ => q.try_set_used_ring_address(GuestAddress(merge(q.used_ring()))),
    };
    if result.is_err() {
        log::debug!("virtio-mmio: ring address register {offset:#x} = {value:#x} refused");
    }
}

/// The interrupt status register, shared between the transport (which
/// raises bits) and the vCPU's view of the window (which reads and
/// acknowledges them), so that reading it never waits for the transport's
/// lock: the device loop holds that lock for a whole pass over a queue,
/// and a pass that writes frames to a tap runs the host's network stack.
/// Every interrupt costs the driver a read and an acknowledgement.
#[derive(Clone, Default)]
pub struct InterruptStatus(Arc<AtomicU32>);

impl InterruptStatus {
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.0.fetch_and(!bits, Ordering::SeqCst);
    }
}

impl MmioTransport {
    /// The shared interrupt status register, for devices whose interrupt
    /// status hvm alone keeps (not one a vhost-user backend may raise).
    pub fn interrupt_status(&self) -> Option<InterruptStatus> {
        (!self.device.may_have_external_queues()).then(|| self.interrupt_status.clone())
    }
}

/// A virtio-mmio window as a vCPU sees it: interrupt status and
/// acknowledgement are served from [`InterruptStatus`] without the
/// transport's lock; every other register goes through the transport.
pub struct TransportWindow {
    transport: Arc<Mutex<MmioTransport>>,
    interrupt: Option<InterruptStatus>,
}

impl TransportWindow {
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Self {
        let interrupt = crate::devices::bus::lock(&transport).interrupt_status();
        TransportWindow {
            transport,
            interrupt,
        }
    }
}

impl BusDevice for TransportWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(status), INTERRUPT_STATUS, Ok(word)) = (
            &self.interrupt,
            offset,
            <&mut [u8; 4]>::try_from(&mut *data),
        ) {
            *word = status.get().to_le_bytes();
            return;
        }
        crate::devices::bus::lock(&self.transport).read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(status), INTERRUPT_ACK, Ok(word)) =
            (&self.interrupt, offset, <[u8; 4]>::try_from(data))
        {
            status.ack(u32::from_le_bytes(word));
            return;
        }
        crate::devices::bus::lock(&self.transport).write(offset, data);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device.prepare();
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset % 4 == 0 => *word = self.read_register(offset).to_le_bytes(),
            // Registers are 32-bit, aligned; anything else reads as zero.
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device.prepare();
        if offset >= CONFIG {
            // No hvm device has writable config.
            return;
        }
        if let (Ok(word), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_register(offset, u32::from_le_bytes(word));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{QueueError, Served};
    use vm_memory::GuestAddress;

    struct Dummy {
        processed: usize,
    }

    impl VirtioDevice for Dummy {
        fn device_id(&self) -> u32 {
            4
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn queue_sizes(&self) -> &[u16] {
            &[16]
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0x5a);
        }
        fn process_queue(
            &mut self,
            _i: usize,
            _q: &mut Queue,
            _m: &GuestMemoryMmap,
        ) -> Result<Served, QueueError> {
            self.processed += 1;
            Ok(Served::default())
        }
    }

    fn transport() -> (MmioTransport, EventFd) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(
            Box::new(Dummy { processed: 0 }),
            mem,
            irq.try_clone().unwrap(),
        );
        (t, irq)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    /// The vCPU reads and acknowledges the interrupt status while the
    /// device loop holds the transport (a long pass over a queue) without
    /// waiting; every other register still goes through the transport.
    #[test]
    fn interrupt_status_is_served_without_the_transports_lock() {
        let (t, _irq) = transport();
        let t = Arc::new(Mutex::new(t));
        let mut window = TransportWindow::new(t.clone());
        crate::devices::bus::lock(&t).raise(INT_USED_BUFFER | INT_CONFIG_CHANGE);
        let held = crate::devices::bus::lock(&t);
        // On another thread, so a window that took the lock fails the test
        // (by timing out) instead of deadlocking it.
        let (done, result) = std::sync::mpsc::channel();
        let vcpu = std::thread::spawn(move || {
            let mut d = [0u8; 4];
            window.read(INTERRUPT_STATUS, &mut d);
            let before = u32::from_le_bytes(d);
            window.write(INTERRUPT_ACK, &INT_USED_BUFFER.to_le_bytes());
            window.read(INTERRUPT_STATUS, &mut d);
            let _ = done.send((before, u32::from_le_bytes(d)));
            window
        });
        let got = result.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        assert_eq!(
            got.expect("the window waited for the transport's lock"),
            (INT_USED_BUFFER | INT_CONFIG_CHANGE, INT_CONFIG_CHANGE)
        );
        let mut window = vcpu.join().unwrap();
        let mut d = [0u8; 4];
        window.read(MAGIC_VALUE, &mut d);
        assert_eq!(&d, b"virt");
        // Odd widths are not the register: they go through the transport.
        let mut b = [0xffu8; 2];
        window.read(INTERRUPT_STATUS, &mut b);
        assert_eq!(b, [0, 0]);
        crate::devices::bus::lock(&t).reset();
        window.read(INTERRUPT_STATUS, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0, "a reset clears it");
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        w(t, STATUS, ACKNOWLEDGE);
        w(t, STATUS, ACKNOWLEDGE | DRIVER);
        w(t, DRIVER_FEATURES_SEL, 1);
        w(t, DRIVER_FEATURES, features_hi);
        w(t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    fn setup_queue(t: &mut MmioTransport, desc: u32, avail: u32, used: u32) {
        w(t, QUEUE_SEL, 0);
        w(t, QUEUE_NUM, 16);
        w(t, QUEUE_DESC_LOW, desc);
        w(t, QUEUE_DRIVER_LOW, avail);
        w(t, QUEUE_DEVICE_LOW, used);
        w(t, QUEUE_READY, 1);
    }

    /// The whole driver start-up: features, queue 0 at `desc`, DRIVER_OK.
    fn start_driver(t: &mut MmioTransport, desc: u32) {
        negotiate(t, 1);
        setup_queue(t, desc, 0x2000, 0x3000);
        w(t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, MAGIC_VALUE), MAGIC);
        assert_eq!(r(&mut t, VERSION_REG), 2);
        assert_eq!(r(&mut t, DEVICE_ID), 4);
        assert_eq!(r(&mut t, QUEUE_NUM_MAX), 16);
        w(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, DEVICE_FEATURES), 1); // VERSION_1 is bit 32
    }

    #[test]
    fn features_ok_is_refused_without_version_1() {
        let (mut t, _) = transport();
        negotiate(&mut t, 0);
        assert_eq!(r(&mut t, STATUS) & FEATURES_OK, 0);
    }

    #[test]
    fn features_ok_is_refused_for_unoffered_features() {
        let (mut t, _) = transport();
        w(&mut t, STATUS, ACKNOWLEDGE | DRIVER);
        w(&mut t, DRIVER_FEATURES_SEL, 0);
        w(&mut t, DRIVER_FEATURES, 1 << 5);
        w(&mut t, DRIVER_FEATURES_SEL, 1);
        w(&mut t, DRIVER_FEATURES, 1);
        w(&mut t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(r(&mut t, STATUS) & FEATURES_OK, 0);
    }

    #[test]
    fn full_negotiation_reaches_driver_ok() {
        let (mut t, _) = transport();
        start_driver(&mut t, 0x1000);
        assert_eq!(
            r(&mut t, STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
        t.notify(0);
        t.notify(7);
    }

    #[test]
    fn driver_ok_rekicks_the_queues_instead_of_serving_them_here() {
        let (mut t, _) = transport();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        t.connect_kicks(vec![kick.try_clone().unwrap()]).unwrap();
        start_driver(&mut t, 0x1000);
        // The device loop serves the queue on its next turn.
        assert_eq!(kick.read().unwrap(), 1);
    }

    #[test]
    fn queue_outside_guest_memory_needs_reset_and_interrupts() {
        let (mut t, irq) = transport();
        start_driver(&mut t, 0xfff0_0000);
        assert_ne!(r(&mut t, STATUS) & NEEDS_RESET, 0);
        assert_eq!(
            r(&mut t, INTERRUPT_STATUS) & INT_CONFIG_CHANGE,
            INT_CONFIG_CHANGE
        );
        assert!(irq.read().is_ok());
        // A reset clears it all.
        w(&mut t, STATUS, 0);
        assert_eq!(r(&mut t, STATUS), 0);
        assert_eq!(r(&mut t, INTERRUPT_STATUS), 0);
    }

    #[test]
    fn refused_features_keep_driver_ok_out_and_needs_reset_stays() {
        let (mut t, _) = transport();
        w(&mut t, STATUS, ACKNOWLEDGE | DRIVER);
        w(&mut t, DRIVER_FEATURES_SEL, 1);
        w(&mut t, DRIVER_FEATURES, 1);
        w(&mut t, DRIVER_FEATURES_SEL, 0);
        w(&mut t, DRIVER_FEATURES, 1 << 5);
        // Unoffered feature, FEATURES_OK and DRIVER_OK in one write.
        w(
            &mut t,
            STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(r(&mut t, STATUS), ACKNOWLEDGE | DRIVER);
        // A device-set NEEDS_RESET survives the driver's later status writes.
        w(&mut t, STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_ne!(r(&mut t, STATUS) & NEEDS_RESET, 0);
        w(&mut t, STATUS, ACKNOWLEDGE | DRIVER);
        assert_ne!(r(&mut t, STATUS) & NEEDS_RESET, 0);
        w(&mut t, STATUS, 0);
        assert_eq!(r(&mut t, STATUS), 0);
    }

    #[test]
    fn driver_ok_without_features_ok_needs_reset() {
        let (mut t, _) = transport();
        w(&mut t, STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_ne!(r(&mut t, STATUS) & NEEDS_RESET, 0);
    }

    #[test]
    fn queue_cannot_be_changed_after_driver_ok() {
        let (mut t, _) = transport();
        start_driver(&mut t, 0x1000);
        w(&mut t, QUEUE_DESC_LOW, 0x9000);
        assert_eq!(t.queues[0].desc_table(), 0x1000);
    }

    #[test]
    fn bad_queue_sizes_and_ring_addresses_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1);
        w(&mut t, QUEUE_SEL, 0);
        w(&mut t, QUEUE_NUM, 8);
        for bad in [0, 3, 32, 0x1_0008] {
            w(&mut t, QUEUE_NUM, bad);
            assert_eq!(t.queues[0].size(), 8, "size {bad:#x}");
        }
        w(&mut t, QUEUE_DESC_LOW, 0x1000);
        w(&mut t, QUEUE_DESC_HIGH, 0x1);
        assert_eq!(t.queues[0].desc_table(), 0x1_0000_1000);
        w(&mut t, QUEUE_DESC_LOW, 0x1003); // not 16-byte aligned
        assert_eq!(t.queues[0].desc_table(), 0x1_0000_1000);
        w(&mut t, QUEUE_DEVICE_LOW, 0x3000);
        w(&mut t, QUEUE_DRIVER_LOW, 0x2000);
        assert_eq!(
            (t.queues[0].avail_ring(), t.queues[0].used_ring()),
            (0x2000, 0x3000)
        );
    }

    #[test]
    fn odd_widths_and_offsets_are_harmless() {
        let (mut t, _) = transport();
        let mut b = [0xffu8; 2];
        t.read(MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(STATUS + 1, &[1, 2, 3, 4]);
        t.write(STATUS, &[1]);
        assert_eq!(r(&mut t, STATUS), 0);
        let mut c = [0u8; 8];
        t.read(CONFIG + 4, &mut c);
        assert_eq!(c, [0x5a; 8]);
        w(&mut t, QUEUE_SEL, 99);
        assert_eq!(r(&mut t, QUEUE_NUM_MAX), 0);
        w(&mut t, QUEUE_NUM, 8);
        w(&mut t, QUEUE_NOTIFY, 99);
        w(&mut t, 0xf00, 1);
    }
}
