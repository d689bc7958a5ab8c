//! The device loop: one thread that waits (epoll) on the virtio queue
//! notifications, the backends (taps) and stdin, serves the queues within a
//! work budget, feeds keyboard input to the console and turns the console
//! escape into a reason to stop. The control loop pauses, resumes and stops
//! it; signals and the timeout are not its business, so a busy device can
//! never keep hvm from stopping.

use crate::devices::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::console::{Console, PendingInput, RECEIVE_QUEUE};
use crate::devices::virtio::mmio::MmioTransport;
use crate::vmm::exit::{ExitReason, ExitRequests};
use crate::vmm::exit_stats::{self, StatsSink};
use crate::vmm::seccomp::{self, ThreadKind};
use crate::vmm::terminal::{EscapeFilter, HELP};
use crate::vmm::virtio::QueueNotifier;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const TOKEN_STDIN: u64 = 1;
const TOKEN_CONTROL: u64 = 2;
/// The input gate (see [`EventLoop::input_gate`]).
const TOKEN_GATE: u64 = 3;
/// Virtio queue notifier `i` has token `TOKEN_QUEUE_BASE + i`.
const TOKEN_QUEUE_BASE: u64 = 16;
/// Backend fd `i` (a tap) has token `TOKEN_BACKEND_BASE + i`.
const TOKEN_BACKEND_BASE: u64 = 1 << 32;

/// Errors while starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot create the event loop's epoll: {0}")]
    Epoll(std::io::Error),
    #[error("cannot start the event loop thread: {0}")]
    Spawn(std::io::Error),
}

/// How stdin feeds the guest console.
pub enum Input {
    /// Not read at all (console output to a file or off).
    None,
    /// A terminal in raw mode: escapes are interpreted.
    Terminal,
    /// A pipe, socket or file: bytes go to the guest as they are.
    Stream,
}

/// The device keyboard input goes to.
pub enum InputTarget {
    Serial(Arc<Mutex<SerialDevice>>),
    /// virtio-console: input waits in `pending` until the guest's receive queue takes it.
    Virtio {
        pending: PendingInput,
        transport: Arc<Mutex<MmioTransport>>,
        /// A second console that hears of the end of input (a command's
        /// stdin closing): one byte arrives on it.
        end_of_input: Option<(PendingInput, Arc<Mutex<MmioTransport>>)>,
    },
}

impl InputTarget {
    /// Hands keyboard input to the console device; a virtio console takes
    /// it from guest buffers, which only happens while the VM runs.
    fn queue_input(&self, bytes: &[u8], running: bool) {
        match self {
            InputTarget::Serial(serial) => lock(serial).queue_input(bytes),
            InputTarget::Virtio {
                pending, transport, ..
            } => {
                Console::queue_input(pending, bytes);
                if running {
                    lock(transport).notify(RECEIVE_QUEUE);
                }
            }
        }
    }

    /// Stdin is at its end after `total` bytes: tell the console that
    /// listens for it ("hvm-eof N", so the guest knows when it has all).
    fn end_input(&self, total: u64, running: bool) {
        if let InputTarget::Virtio {
            end_of_input: Some((pending, transport)),
            ..
        } = self
        {
            Console::queue_input(pending, format!("hvm-eof {total}\n").as_bytes());
            if running {
                lock(transport).notify(RECEIVE_QUEUE);
            }
        }
    }

    /// Input waiting for the guest to take it (0 for the UART, which
    /// keeps its own small buffer).
    fn pending_len(&self) -> usize {
        match self {
            InputTarget::Serial(_) => 0,
            InputTarget::Virtio { pending, .. } => lock(pending).len(),
        }
    }

    /// After a pause: deliver what was typed meanwhile.
    fn resume(&self) {
        if let InputTarget::Virtio {
            transport,
            end_of_input,
            ..
        } = self
        {
            lock(transport).notify(RECEIVE_QUEUE);
            if let Some((_, t)) = end_of_input {
                lock(t).notify(RECEIVE_QUEUE);
            }
        }
    }
}

/// What the control loop asks of the device loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopCommand {
    /// Stop serving queues and backends (stdin stays: Ctrl-A x still works).
    Pause,
    Resume,
    /// Leave the thread.
    Stop,
}

/// The control loop's side of the device loop.
pub struct DeviceLoopHandle {
    commands: mpsc::Sender<LoopCommand>,
    wake: EventFd,
    acks: mpsc::Receiver<LoopCommand>,
    thread: JoinHandle<()>,
}

impl DeviceLoopHandle {
    /// Asks the loop to obey `command` and waits up to `limit` for it to
    /// have done so (it finishes the request in hand first, which the
    /// device limits keep short). Returns whether it did in time.
    pub fn command(&self, command: LoopCommand, limit: Duration) -> bool {
        if self.thread.is_finished() || self.commands.send(command).is_err() {
            return true;
        }
        let _ = self.wake.write(1);
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(done) if done == command => return true,
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

pub struct EventLoop {
    pub target: InputTarget,
    pub exit: ExitRequests,
    pub input: Input,
    /// When set, stdin is read only after this eventfd fires: a command's
    /// input must not reach the guest before its init has the consoles
    /// open and raw (the guest's boot marker fires it).
    pub input_gate: Option<EventFd>,
    pub notifiers: Vec<QueueNotifier>,
    pub backends: Vec<(RawFd, Arc<Mutex<MmioTransport>>)>,
    /// With `--stats`: where the loop leaves its CPU time when it stops.
    pub stats: Option<StatsSink>,
}

/// Input held for the guest above which hvm stops reading stdin until the
/// guest has taken half of it (a command's stdin may be any size).
const INPUT_HIGH: usize = 256 << 10;

/// Where reading stdin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stdin {
    /// Not read (no input wanted, or not yet: the gate is closed).
    Off,
    /// In epoll.
    Watched,
    /// Out of epoll while the guest catches up.
    Throttled,
    /// A regular file (not pollable): read in pieces as the guest takes them.
    File,
    /// At its end.
    Done,
}

fn add_or_delete(add: bool) -> ControlOperation {
    if add {
        ControlOperation::Add
    } else {
        ControlOperation::Delete
    }
}

/// Adds stdin to epoll, or takes it out.
fn watch_stdin(epoll: &Epoll, on: bool) -> std::io::Result<()> {
    epoll.ctl(
        add_or_delete(on),
        libc::STDIN_FILENO,
        EpollEvent::new(EventSet::IN, TOKEN_STDIN),
    )
}

/// The loop's own state while it runs.
struct Running {
    epoll: Epoll,
    commands: mpsc::Receiver<LoopCommand>,
    wake: EventFd,
    acks: mpsc::Sender<LoopCommand>,
    stdin: Stdin,
    /// Bytes of stdin handed to the guest's console so far.
    stdin_sent: u64,
    paused: bool,
    /// Which queue notifiers epoll watches now.
    watched: Vec<bool>,
    /// Which backends epoll also watches for room to write (their device
    /// has output waiting for it).
    writable: Vec<bool>,
    /// The backend (index) of each queue notifier's device, if it has one.
    notifier_backend: Vec<Option<usize>>,
}

/// What epoll waits for on a backend fd. Edge-triggered: the device reads
/// until the backend is empty or the guest has no buffers; a later queue
/// notification resumes it. Writability only while output waits.
fn backend_events(writable: bool) -> EventSet {
    let mut events = EventSet::IN | EventSet::EDGE_TRIGGERED;
    if writable {
        events |= EventSet::OUT;
    }
    events
}

impl EventLoop {
    /// Watches (or stops watching) the queue notifiers and backends: all of
    /// them go while the VM is paused, so no device touches guest memory.
    /// Queues a backend process serves are left to it.
    fn watch_devices(
        &self,
        epoll: &Epoll,
        watched: &mut [bool],
        writable: &[bool],
        on: bool,
    ) -> Result<(), std::io::Error> {
        self.watch_queues(epoll, watched, on)?;
        for (i, (fd, _)) in self.backends.iter().enumerate() {
            epoll.ctl(
                add_or_delete(on),
                *fd,
                EpollEvent::new(backend_events(writable[i]), TOKEN_BACKEND_BASE + i as u64),
            )?;
        }
        Ok(())
    }

    /// Watches backend `index` for room to write exactly while its device
    /// has output waiting (so a socket that drains wakes the device, and
    /// one that has room does not wake the loop for nothing).
    fn follow_backend(&self, st: &mut Running, index: usize) {
        let Some((fd, transport)) = self.backends.get(index) else {
            return;
        };
        let want = lock(transport).backend_blocked();
        if want == st.writable[index] || st.paused {
            return;
        }
        st.writable[index] = want;
        let ev = EpollEvent::new(backend_events(want), TOKEN_BACKEND_BASE + index as u64);
        if let Err(e) = st.epoll.ctl(ControlOperation::Modify, *fd, ev) {
            log::warn!("device loop: cannot watch backend {index}: {e}");
        }
    }

    /// Brings the watched queue notifiers in line with `on` and with which
    /// queues hvm serves itself.
    fn watch_queues(
        &self,
        epoll: &Epoll,
        watched: &mut [bool],
        on: bool,
    ) -> Result<(), std::io::Error> {
        for (i, n) in self.notifiers.iter().enumerate() {
            let want = on && !lock(&n.transport).queues_external();
            if want == watched[i] {
                continue;
            }
            epoll.ctl(
                add_or_delete(want),
                n.evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_QUEUE_BASE + i as u64),
            )?;
            watched[i] = want;
        }
        Ok(())
    }

    /// Starts the loop on its own thread, serving devices at once unless
    /// `paused` (the control loop resumes it).
    pub fn spawn(self, paused: bool) -> Result<DeviceLoopHandle, EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(EventLoopError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_CONTROL),
            )
            .map_err(EventLoopError::Epoll)?;
        let mut watched = vec![false; self.notifiers.len()];
        let writable = vec![false; self.backends.len()];
        if !paused {
            self.watch_devices(&epoll, &mut watched, &writable, true)
                .map_err(EventLoopError::Epoll)?;
        }
        let notifier_backend = self
            .notifiers
            .iter()
            .map(|n| {
                self.backends
                    .iter()
                    .position(|(_, t)| Arc::ptr_eq(t, &n.transport))
            })
            .collect();
        let mut stdin_sent = 0;
        let stdin = match &self.input_gate {
            Some(gate) => {
                epoll
                    .ctl(
                        ControlOperation::Add,
                        gate.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, TOKEN_GATE),
                    )
                    .map_err(EventLoopError::Epoll)?;
                Stdin::Off
            }
            None => self.start_stdin(&epoll, !paused, &mut stdin_sent),
        };
        let (commands_tx, commands) = mpsc::channel();
        let (acks, acks_rx) = mpsc::channel();
        let state = Running {
            epoll,
            commands,
            wake: wake.try_clone().map_err(EventLoopError::Epoll)?,
            acks,
            stdin,
            stdin_sent,
            paused,
            watched,
            writable,
            notifier_backend,
        };
        let thread = std::thread::Builder::new()
            .name("hvm-devices".into())
            .spawn(move || self.run(state))
            .map_err(EventLoopError::Spawn)?;
        Ok(DeviceLoopHandle {
            commands: commands_tx,
            wake,
            acks: acks_rx,
            thread,
        })
    }

    /// Starts reading stdin: into epoll, or (a regular file) a first piece.
    fn start_stdin(&self, epoll: &Epoll, running: bool, sent: &mut u64) -> Stdin {
        if matches!(self.input, Input::None) {
            return Stdin::Off;
        }
        match watch_stdin(epoll, true) {
            Ok(()) => Stdin::Watched,
            // A regular file cannot be polled: it is always readable.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.pump_file(running, sent),
            Err(e) => {
                log::warn!("not reading stdin: {e}");
                Stdin::Off
            }
        }
    }

    /// Reads a regular file on stdin while the guest has room for it.
    fn pump_file(&self, running: bool, sent: &mut u64) -> Stdin {
        let mut buf = vec![0u8; 64 << 10];
        while self.target.pending_len() < INPUT_HIGH {
            // SAFETY: reads into a live buffer of the given length.
            let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                if got < 0 {
                    log::warn!("cannot read stdin: {}", std::io::Error::last_os_error());
                }
                self.target.end_input(*sent, running);
                return Stdin::Done;
            }
            self.target.queue_input(&buf[..got as usize], running);
            *sent += got as u64;
        }
        Stdin::File
    }

    /// Reads stdin again once the guest has taken enough of what it has.
    fn refill(&self, st: &mut Running) {
        match st.stdin {
            Stdin::Throttled if self.target.pending_len() < INPUT_HIGH / 2 => {
                st.stdin = match watch_stdin(&st.epoll, true) {
                    Ok(()) => Stdin::Watched,
                    Err(_) => Stdin::Done,
                };
            }
            Stdin::File => st.stdin = self.pump_file(!st.paused, &mut st.stdin_sent),
            _ => {}
        }
    }

    /// Follows the control loop's commands; false when the loop must end.
    fn obey(&self, st: &mut Running) -> bool {
        let _ = st.wake.read();
        while let Ok(command) = st.commands.try_recv() {
            let ok = match command {
                LoopCommand::Pause if !st.paused => {
                    st.paused = true;
                    self.watch_devices(&st.epoll, &mut st.watched, &st.writable, false)
                }
                LoopCommand::Resume if st.paused => {
                    st.paused = false;
                    let r = self.watch_devices(&st.epoll, &mut st.watched, &st.writable, true);
                    self.target.resume();
                    self.refill(st);
                    r
                }
                LoopCommand::Stop => {
                    if let Some(sink) = &self.stats {
                        sink.add_device_loop_cpu(exit_stats::thread_cpu());
                    }
                    let _ = st.acks.send(command);
                    return false;
                }
                _ => Ok(()),
            };
            if let Err(e) = ok {
                log::warn!("device loop: cannot {command:?} the devices: {e}");
            }
            let _ = st.acks.send(command);
        }
        true
    }

    fn run(self, mut st: Running) {
        if let Err(e) = seccomp::apply(ThreadKind::Devices) {
            self.exit.send(ExitReason::HostFailed(e.to_string()));
            return;
        }
        let mut events =
            vec![EpollEvent::default(); 8 + self.notifiers.len() + self.backends.len()];
        let mut filter = EscapeFilter::default();
        let mut buf = [0u8; 4096];
        loop {
            let n = match st.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("event loop: epoll failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_CONTROL if !self.obey(&mut st) => return,
                    TOKEN_CONTROL => {}
                    TOKEN_GATE => {
                        if let Some(gate) = &self.input_gate {
                            let _ = gate.read();
                            let _ = st.epoll.ctl(
                                ControlOperation::Delete,
                                gate.as_raw_fd(),
                                EpollEvent::default(),
                            );
                            log::debug!("the guest's consoles are ready: reading stdin");
                            st.stdin = self.start_stdin(&st.epoll, !st.paused, &mut st.stdin_sent);
                        }
                    }
                    TOKEN_STDIN if st.stdin == Stdin::Watched => {
                        // SAFETY: reads into a live buffer of the given length.
                        let got = unsafe {
                            libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len())
                        };
                        if got <= 0 {
                            let err = std::io::Error::last_os_error();
                            if got < 0 && err.kind() == std::io::ErrorKind::WouldBlock {
                                continue;
                            }
                            // End of input (or a hung-up terminal): the guest keeps running.
                            log::debug!("stdin closed ({got}, {err}); no more console input");
                            let _ = watch_stdin(&st.epoll, false);
                            st.stdin = Stdin::Done;
                            self.target.end_input(st.stdin_sent, !st.paused);
                            continue;
                        }
                        let bytes = &buf[..got as usize];
                        match self.input {
                            Input::Terminal => {
                                let f = filter.feed(bytes);
                                if f.help {
                                    let _ = std::io::stderr().write_all(HELP.as_bytes());
                                }
                                self.target.queue_input(&f.to_guest, !st.paused);
                                st.stdin_sent += f.to_guest.len() as u64;
                                if f.quit {
                                    self.exit.send(ExitReason::UserQuit);
                                }
                            }
                            _ => {
                                self.target.queue_input(bytes, !st.paused);
                                st.stdin_sent += bytes.len() as u64;
                            }
                        }
                        // The guest is behind: wait for it (refill). Not a
                        // terminal's: Ctrl-A x must always get through.
                        if !matches!(self.input, Input::Terminal)
                            && self.target.pending_len() >= INPUT_HIGH
                        {
                            let _ = watch_stdin(&st.epoll, false);
                            st.stdin = Stdin::Throttled;
                        }
                    }
                    _ if st.paused => {}
                    token if token >= TOKEN_BACKEND_BASE => {
                        let index = (token - TOKEN_BACKEND_BASE) as usize;
                        if let Some((_, transport)) = self.backends.get(index) {
                            if lock(transport).backend_event() {
                                // Its backend is gone: hvm serves those queues now.
                                if let Err(e) = self.watch_queues(&st.epoll, &mut st.watched, true)
                                {
                                    log::warn!("device loop: cannot watch the queues: {e}");
                                }
                            }
                            self.follow_backend(&mut st, index);
                        }
                    }
                    token if token >= TOKEN_QUEUE_BASE => {
                        if let Some(n) = self.notifiers.get((token - TOKEN_QUEUE_BASE) as usize) {
                            // Reading resets the counter; several kicks are served by one pass.
                            let _ = n.evt.read();
                            if lock(&n.transport).notify(n.queue) {
                                // Budget spent with work left: come back after
                                // whatever else is ready (other queues, stdin).
                                let _ = n.evt.write(1);
                            }
                            let i = (token - TOKEN_QUEUE_BASE) as usize;
                            if let Some(Some(b)) = st.notifier_backend.get(i).copied() {
                                self.follow_backend(&mut st, b);
                            }
                            // The guest may have taken input: read more.
                            self.refill(&mut st);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
