//! The device event loop: one thread that waits (epoll) on stdin and on
//! the termination signals, feeds keyboard input to the UART and turns a
//! signal or the console escape into a reason to stop.

use crate::devices::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::console::{Console, PendingInput, RECEIVE_QUEUE};
use crate::devices::virtio::mmio::MmioTransport;
use crate::vmm::exit::{ExitReason, ExitSender};
use crate::vmm::terminal::{EscapeFilter, HELP};
use crate::vmm::virtio::QueueNotifier;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Signals that end the VM cleanly (exit code 128 + n).
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

const TOKEN_STDIN: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
/// Virtio queue notifier `i` has token `TOKEN_QUEUE_BASE + i`.
const TOKEN_QUEUE_BASE: u64 = 16;
/// Backend fd `i` (a tap) has token `TOKEN_BACKEND_BASE + i`.
const TOKEN_BACKEND_BASE: u64 = 1 << 32;

/// Errors while starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot create the event loop's epoll: {0}")]
    Epoll(std::io::Error),
    #[error("cannot start the event loop thread: {0}")]
    Spawn(std::io::Error),
}

/// Blocks the stop signals in this thread (and every thread started after)
/// and returns a signalfd that receives them instead.
pub fn take_stop_signals() -> Result<OwnedFd, EventLoopError> {
    // SAFETY: sigset_t is plain data; the libc calls only fill and read it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(EventLoopError::Signals(std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(EventLoopError::Signals(std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
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
    },
}

impl InputTarget {
    fn queue_input(&self, bytes: &[u8]) {
        match self {
            InputTarget::Serial(serial) => lock(serial).queue_input(bytes),
            InputTarget::Virtio { pending, transport } => {
                Console::queue_input(pending, bytes);
                lock(transport).notify(RECEIVE_QUEUE);
            }
        }
    }
}

pub struct EventLoop {
    pub target: InputTarget,
    pub exit: ExitSender,
    pub signals: OwnedFd,
    pub input: Input,
    pub notifiers: Vec<QueueNotifier>,
    pub backends: Vec<(std::os::fd::RawFd, Arc<Mutex<MmioTransport>>)>,
}

impl EventLoop {
    /// Starts the loop on its own thread; it lives until the process exits.
    pub fn spawn(self) -> Result<(), EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                self.signals.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_SIGNAL),
            )
            .map_err(EventLoopError::Epoll)?;
        for (i, n) in self.notifiers.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    n.evt.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_QUEUE_BASE + i as u64),
                )
                .map_err(EventLoopError::Epoll)?;
        }
        for (i, (fd, _)) in self.backends.iter().enumerate() {
            // Edge-triggered: the device reads until the tap is empty or the
            // guest has no buffers; a later queue notification resumes it.
            epoll
                .ctl(
                    ControlOperation::Add,
                    *fd,
                    EpollEvent::new(
                        EventSet::IN | EventSet::EDGE_TRIGGERED,
                        TOKEN_BACKEND_BASE + i as u64,
                    ),
                )
                .map_err(EventLoopError::Epoll)?;
        }
        let mut reading_stdin = false;
        if !matches!(self.input, Input::None) {
            let add = epoll.ctl(
                ControlOperation::Add,
                libc::STDIN_FILENO,
                EpollEvent::new(EventSet::IN, TOKEN_STDIN),
            );
            match add {
                Ok(()) => reading_stdin = true,
                // A regular file cannot be polled: it is always readable, so read it all now.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.read_stdin_file(),
                Err(e) => log::warn!("not reading stdin: {e}"),
            }
        }
        std::thread::Builder::new()
            .name("hvm-events".into())
            .spawn(move || self.run(epoll, reading_stdin))
            .map(|_| ())
            .map_err(EventLoopError::Spawn)
    }

    fn read_stdin_file(&self) {
        let mut buf = Vec::new();
        let mut stdin = std::io::stdin().lock();
        if let Err(e) = std::io::Read::read_to_end(&mut stdin, &mut buf) {
            log::warn!("cannot read stdin: {e}");
        }
        self.target.queue_input(&buf);
    }

    fn run(self, epoll: Epoll, mut reading_stdin: bool) {
        let mut events = vec![EpollEvent::default(); 8 + self.notifiers.len()];
        let mut filter = EscapeFilter::default();
        let mut buf = [0u8; 4096];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("event loop: epoll failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_SIGNAL => {
                        if let Some(signo) = read_signal(&self.signals) {
                            self.exit.send(ExitReason::Signal(signo));
                        }
                    }
                    TOKEN_STDIN if reading_stdin => {
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
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                libc::STDIN_FILENO,
                                EpollEvent::default(),
                            );
                            reading_stdin = false;
                            continue;
                        }
                        let bytes = &buf[..got as usize];
                        match self.input {
                            Input::Terminal => {
                                let f = filter.feed(bytes);
                                if f.help {
                                    let _ = std::io::stderr().write_all(HELP.as_bytes());
                                }
                                self.target.queue_input(&f.to_guest);
                                if f.quit {
                                    self.exit.send(ExitReason::UserQuit);
                                }
                            }
                            _ => self.target.queue_input(bytes),
                        }
                    }
                    token if token >= TOKEN_BACKEND_BASE => {
                        if let Some((_, transport)) =
                            self.backends.get((token - TOKEN_BACKEND_BASE) as usize)
                        {
                            lock(transport).backend_event();
                        }
                    }
                    token if token >= TOKEN_QUEUE_BASE => {
                        if let Some(n) = self.notifiers.get((token - TOKEN_QUEUE_BASE) as usize) {
                            // Reading resets the counter; several kicks are served by one pass.
                            let _ = n.evt.read();
                            lock(&n.transport).notify(n.queue);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
    unsafe {
        let mut info: libc::signalfd_siginfo = std::mem::zeroed();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let n = libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        );
        (n as usize == size).then_some(info.ssi_signo as i32)
    }
}
