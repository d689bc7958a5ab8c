//! The control loop: the main thread, and the one owner of a running VM.
//! It starts the vCPU threads and the device loop, then waits (one epoll)
//! on the wake eventfd that devices, vCPUs and the device loop write when
//! they have something to report, on the stop signals (signalfd), on the
//! `--timeout` timer (timerfd), on the control socket and its clients, and
//! on the GDB connection. Whatever ends the VM, it stops the threads and
//! returns the reason; its owned sockets and files go with it.

use super::event_loop::{DeviceLoopHandle, LoopCommand};
use super::exit::ExitReason;
use super::gdb::{GdbEvent, GdbServer};
use super::helper::Companions;
use super::vcpu::{VcpuCommand, VcpuEvent, VcpuHandle, VcpuState};
use crate::api::{self, ControlSocket, DeviceInfo, Reply, Request, VmInfo};
use crate::devices::console_output::SharedOutput;
use crate::devices::events::{GuestEvent, GuestEvents};
use crate::devices::ged::GedTrigger;
use crate::timeline;
use crate::vmm::crash_report::{self, CaptureRequest, VcpuSnapshot};
use crate::vmm::seccomp;
use kvm_ioctls::VmFd;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// Signals that end the VM cleanly (exit code 128 + n).
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// How long a graceful `hvm stop` waits for the guest by default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long pause, resume and teardown wait for a thread to obey.
const OBEY_LIMIT: Duration = Duration::from_secs(2);
/// Kernel lines a failed command's run shows.
const KERNEL_LOG_LINES: usize = 30;
/// How long a file server has to exit after SIGTERM before SIGKILL.
const SERVER_GRACE: Duration = Duration::from_secs(1);

const TOKEN_WAKE: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_TIMER: u64 = 3;
const TOKEN_LISTENER: u64 = 4;
const TOKEN_GDB: u64 = 5;
/// Control-socket client `n` has token `TOKEN_CLIENT_BASE + n`.
const TOKEN_CLIENT_BASE: u64 = 1 << 32;

/// Errors while setting up the control loop.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot set up the control loop ({what}): {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Blocks the stop signals in this thread (and every thread started after)
/// and returns a signalfd that receives them instead.
pub fn take_stop_signals() -> Result<OwnedFd, ControlError> {
    // SAFETY: sigset_t is plain data; the libc calls only fill and read it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(ControlError::Signals(std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(ControlError::Signals(std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
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

/// What the control loop shows about the VM it runs.
pub struct Identity {
    pub spec: PathBuf,
    pub vcpus: u32,
    pub memory: u64,
    pub devices: Vec<DeviceInfo>,
}

/// Where the loop's reports come from.
pub struct Inbox {
    pub wake: Arc<EventFd>,
    pub guest: mpsc::Receiver<GuestEvent>,
    pub vcpus: mpsc::Receiver<VcpuEvent>,
    pub requests: mpsc::Receiver<ExitReason>,
}

/// A control-socket client: its stream and what it sent so far.
struct Client {
    stream: UnixStream,
    pending: Vec<u8>,
}

/// The running VM, as the control loop owns it.
pub struct Control {
    /// The VM itself: it lives as long as its owner.
    _vm: VmFd,
    epoll: Epoll,
    inbox: Inbox,
    signals: OwnedFd,
    /// Kept open for as long as the VM runs (its expiry is an epoll event).
    _timer: Option<TimerFd>,
    pub(super) vcpus: Vec<VcpuHandle>,
    /// vCPU events that arrived while the loop waited for others.
    deferred: VecDeque<VcpuEvent>,
    guest: GuestEvents,
    devices: DeviceLoopHandle,
    socket: Option<ControlSocket>,
    clients: HashMap<u64, Client>,
    next_client: u64,
    gdb: Option<GdbServer>,
    paused: bool,
    /// Set by a graceful stop: the guest must be gone by then.
    stop_deadline: Option<Instant>,
    ged: GedTrigger,
    outputs: Vec<SharedOutput>,
    kernel_log: Option<SharedOutput>,
    identity: Identity,
    /// Processes and files serving devices; stopped after the devices are.
    companions: Companions,
    started: Instant,
    /// Raised before vCPUs are stopped when the VM ends for a crash report.
    capture: CaptureRequest,
    /// What the vCPU threads recorded as they left (crash reports only).
    states: Vec<VcpuSnapshot>,
}

/// How the VM ended: the reason, and for a crash report every vCPU's
/// last state.
pub struct Ended {
    pub reason: ExitReason,
    pub states: Vec<VcpuSnapshot>,
}

/// Everything the control loop takes over.
pub struct Parts {
    pub vm: VmFd,
    pub inbox: Inbox,
    pub signals: OwnedFd,
    pub timeout: Option<Duration>,
    pub vcpus: Vec<VcpuHandle>,
    pub guest: GuestEvents,
    pub devices: DeviceLoopHandle,
    pub gdb: Option<GdbServer>,
    pub ged: GedTrigger,
    /// Every console output, drained at exit.
    pub outputs: Vec<SharedOutput>,
    /// The kernel's messages when nobody sees them (a command's console):
    /// their last lines go to stderr when the guest fails.
    pub kernel_log: Option<SharedOutput>,
    pub identity: Identity,
    pub companions: Companions,
    pub capture: CaptureRequest,
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> ControlError {
    move |source| ControlError::Setup { what, source }
}

impl Control {
    pub fn new(p: Parts) -> Result<Control, ControlError> {
        let epoll = Epoll::new().map_err(setup("epoll"))?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(p.inbox.wake.as_raw_fd(), TOKEN_WAKE).map_err(setup("epoll"))?;
        add(p.signals.as_raw_fd(), TOKEN_SIGNAL).map_err(setup("epoll"))?;
        let timer = match p.timeout {
            Some(t) => {
                let timer_err = |e: vmm_sys_util::errno::Error| ControlError::Setup {
                    what: "timerfd",
                    source: e.into(),
                };
                let mut timer = TimerFd::new().map_err(timer_err)?;
                timer.reset(t, None).map_err(timer_err)?;
                add(timer.as_raw_fd(), TOKEN_TIMER).map_err(setup("epoll"))?;
                Some(timer)
            }
            None => None,
        };
        if let Some(g) = &p.gdb {
            add(g.fd(), TOKEN_GDB).map_err(setup("epoll"))?;
        }
        let paused = p.vcpus.iter().all(|v| v.state == VcpuState::Paused);
        Ok(Control {
            _vm: p.vm,
            epoll,
            inbox: p.inbox,
            signals: p.signals,
            _timer: timer,
            vcpus: p.vcpus,
            deferred: VecDeque::new(),
            guest: p.guest,
            devices: p.devices,
            socket: None,
            clients: HashMap::new(),
            next_client: 0,
            gdb: p.gdb,
            paused,
            stop_deadline: None,
            ged: p.ged,
            outputs: p.outputs,
            kernel_log: p.kernel_log,
            identity: p.identity,
            companions: p.companions,
            started: Instant::now(),
            capture: p.capture,
            states: Vec::new(),
        })
    }

    /// Serves the control socket from now on.
    pub fn serve(&mut self, socket: ControlSocket) -> Result<(), ControlError> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                socket.listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )
            .map_err(setup("epoll"))?;
        self.socket = Some(socket);
        Ok(())
    }

    /// Makes `helper` one of the VM's companions (a file server whose
    /// handshake finished after the guest started).
    pub fn adopt(&mut self, helper: super::helper::Helper) {
        self.companions.helpers.push(helper);
    }

    /// Stops the VM before it was ever served (set-up failed after start).
    pub fn abandon(mut self) {
        self.teardown();
    }

    /// Runs until the VM has a reason to stop, then stops its threads.
    pub fn run(mut self) -> Ended {
        let mut reason = self.wait_for_reason();
        timeline::mark("VM stopped");
        let report = crash_report::wanted(&reason);
        if report {
            // Each vCPU records where it was as it leaves.
            self.capture.request();
        }
        if self.kernel_log.is_some() && matches!(reason, ExitReason::PowerOff | ExitReason::Reset) {
            // A command's verdict comes through the debug-exit port only.
            reason = ExitReason::NoVerdict;
        }
        if let Some(gdb) = self.gdb.as_mut() {
            gdb.report_exit(reason.exit_code());
        }
        self.teardown();
        if report {
            // States sent after the last wait, or kept for later.
            while let Some(event) = self
                .deferred
                .pop_front()
                .or_else(|| self.inbox.vcpus.try_recv().ok())
            {
                self.on_vcpu_event(event);
            }
        } else {
            // (A crash report shows the console's last lines itself.)
            self.report_kernel_log(&reason);
        }
        Ended {
            reason,
            states: std::mem::take(&mut self.states),
        }
    }

    /// When a command's guest fails, the kernel's last words (nobody saw
    /// its console) go to stderr.
    fn report_kernel_log(&self, reason: &ExitReason) {
        let Some(log) = &self.kernel_log else {
            return;
        };
        if matches!(
            reason,
            ExitReason::DebugExit(_) | ExitReason::UserQuit | ExitReason::Signal(_)
        ) {
            return;
        }
        let lines = log.last_lines(KERNEL_LOG_LINES);
        if lines.is_empty() {
            eprintln!("hvm: the kernel printed nothing on its console (ttyS0)");
            return;
        }
        eprintln!("hvm: the kernel's last messages:");
        for line in lines {
            eprintln!("  | {line}");
        }
    }

    fn wait_for_reason(&mut self) -> ExitReason {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            if let Some(reason) = self.take_reports() {
                return reason;
            }
            let timeout = match self.stop_deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        log::warn!("the guest did not power off in time; stopping it");
                        return ExitReason::ForcedStop;
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
                None => -1,
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return ExitReason::VcpuFailed {
                        vcpu: 0,
                        message: format!("control loop: epoll failed: {e}"),
                    }
                }
            };
            for ev in &events[..n] {
                let reason = match ev.data() {
                    TOKEN_WAKE => {
                        let _ = self.inbox.wake.read();
                        None
                    }
                    TOKEN_SIGNAL => read_signal(&self.signals).map(ExitReason::Signal),
                    TOKEN_TIMER => Some(ExitReason::Timeout),
                    TOKEN_LISTENER => {
                        self.accept_clients();
                        None
                    }
                    TOKEN_GDB => self.serve_gdb(),
                    token if token >= TOKEN_CLIENT_BASE => self.serve_client(token),
                    _ => None,
                };
                if reason.is_some() {
                    return reason.unwrap_or(ExitReason::UserQuit);
                }
            }
        }
    }

    /// Drains what devices, vCPUs and the device loop reported.
    fn take_reports(&mut self) -> Option<ExitReason> {
        // First: whatever the guest did next must not hide it.
        if seccomp::denied() {
            return Some(ExitReason::HostFailed(
                "a thread made a system call its filter does not allow (named above)".into(),
            ));
        }
        if let Ok(event) = self.inbox.guest.try_recv() {
            return Some(event.into());
        }
        if let Ok(reason) = self.inbox.requests.try_recv() {
            return Some(reason);
        }

        while let Some(event) = self
            .deferred
            .pop_front()
            .or_else(|| self.inbox.vcpus.try_recv().ok())
        {
            if let Some(reason) = self.on_vcpu_event(event) {
                return Some(reason);
            }
        }
        None
    }

    fn on_vcpu_event(&mut self, event: VcpuEvent) -> Option<ExitReason> {
        match event {
            VcpuEvent::Exit { reason, .. } => return Some(reason),
            VcpuEvent::Debug { id, exception, dr6 } => {
                self.set_state(id, VcpuState::Paused);
                match self.gdb.as_mut() {
                    Some(gdb) if gdb.attached() => {
                        // Every vCPU stops with the one that hit the breakpoint.
                        self.pause_vcpus();
                        self.paused = true;
                        if let Some(gdb) = self.gdb.as_mut() {
                            gdb.report_stop(id, exception, dr6, &mut self.vcpus);
                        }
                    }
                    _ => {
                        log::debug!("vCPU {id}: debug exit without a debugger; resuming");
                        self.send(id, VcpuCommand::Resume);
                    }
                }
            }
            VcpuEvent::Paused { id } => self.set_state(id, VcpuState::Paused),
            VcpuEvent::Resumed { id } => self.set_state(id, VcpuState::Running),
            VcpuEvent::Stopped { id } => self.set_state(id, VcpuState::Stopped),
            VcpuEvent::State(state) => self.states.push(*state),
        }
        None
    }

    fn set_state(&mut self, id: u32, state: VcpuState) {
        if let Some(v) = self.vcpus.get_mut(id as usize) {
            v.state = state;
        }
    }

    fn send(&mut self, id: u32, command: VcpuCommand) {
        if let Some(v) = self.vcpus.get(id as usize) {
            v.send(command);
        }
    }

    /// Waits until `done` holds for every vCPU (or a vCPU has stopped),
    /// keeping other events for later. False after [`OBEY_LIMIT`].
    fn wait_vcpus(&mut self, done: impl Fn(VcpuState) -> bool) -> bool {
        let deadline = Instant::now() + OBEY_LIMIT;
        while !self
            .vcpus
            .iter()
            .all(|v| done(v.state) || v.state == VcpuState::Stopped || v.finished())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.vcpus.recv_timeout(left) {
                Ok(
                    e @ (VcpuEvent::Paused { .. }
                    | VcpuEvent::Resumed { .. }
                    | VcpuEvent::Stopped { .. }
                    | VcpuEvent::State(_)),
                ) => {
                    self.on_vcpu_event(e);
                }
                Ok(other) => {
                    self.deferred.push_back(other);
                }
                Err(_) => return false,
            }
        }
        if !self.deferred.is_empty() {
            let _ = self.inbox.wake.write(1);
        }
        true
    }

    /// Every vCPU out of KVM_RUN, waiting.
    pub(super) fn pause_vcpus(&mut self) -> bool {
        for v in &self.vcpus {
            if v.state == VcpuState::Running {
                v.send(VcpuCommand::Pause);
            }
        }
        self.wait_vcpus(|s| s == VcpuState::Paused)
    }

    pub(super) fn resume_vcpus(&mut self) -> bool {
        for v in &self.vcpus {
            if v.state == VcpuState::Paused {
                v.send(VcpuCommand::Resume);
            }
        }
        self.wait_vcpus(|s| s == VcpuState::Running)
    }

    /// Pauses the whole VM: vCPUs, then devices. Returns how long the
    /// vCPUs took to leave KVM_RUN.
    fn pause(&mut self) -> Result<Duration, String> {
        if self.paused {
            return Ok(Duration::ZERO);
        }
        let start = Instant::now();
        if !self.pause_vcpus() {
            return Err("a vCPU did not stop in time".into());
        }
        let vcpus_out = start.elapsed();
        if !self.devices.command(LoopCommand::Pause, OBEY_LIMIT) {
            return Err("the device loop did not stop in time".into());
        }
        self.paused = true;
        log::info!(
            "VM paused: vCPUs out of KVM_RUN in {} µs, devices idle after {} µs",
            vcpus_out.as_micros(),
            start.elapsed().as_micros()
        );
        Ok(vcpus_out)
    }

    fn resume(&mut self) -> Result<(), String> {
        if !self.paused {
            return Ok(());
        }
        if !self.devices.command(LoopCommand::Resume, OBEY_LIMIT) {
            return Err("the device loop did not resume in time".into());
        }
        if !self.resume_vcpus() {
            return Err("a vCPU did not resume in time".into());
        }
        self.paused = false;
        log::info!("VM resumed");
        Ok(())
    }

    /// Presses the power button and lets the guest shut itself down.
    fn graceful_stop(&mut self, timeout: Duration) -> Result<(), String> {
        if self.gdb.as_ref().is_some_and(|g| g.attached()) && self.paused {
            return Err(
                "the VM is stopped in the debugger; continue it first, or use --force".into(),
            );
        }
        self.resume()?;
        self.ged
            .power_button()
            .map_err(|e| format!("cannot raise the power button's interrupt: {e}"))?;
        let deadline = Instant::now() + timeout;
        self.stop_deadline = Some(self.stop_deadline.map_or(deadline, |d| d.min(deadline)));
        log::info!(
            "power button pressed; the guest has {:.1} s to power off",
            timeout.as_secs_f64()
        );
        Ok(())
    }

    fn state_name(&self) -> &'static str {
        if self.stop_deadline.is_some() {
            "stopping"
        } else if self.paused {
            "paused"
        } else {
            "running"
        }
    }

    fn info(&self) -> VmInfo {
        VmInfo {
            name: self
                .socket
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            pid: std::process::id(),
            state: self.state_name().into(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            vcpus: self.identity.vcpus,
            memory_bytes: self.identity.memory,
            spec: self.identity.spec.display().to_string(),
            vcpu_states: self.vcpus.iter().map(|v| v.state.name().into()).collect(),
            devices: self.identity.devices.clone(),
        }
    }

    /// Carries out one control request. A reason means the VM ends now.
    fn handle(&mut self, request: Request) -> (Reply, Option<ExitReason>) {
        match request {
            Request::Info => (Reply::with_info(self.info()), None),
            Request::Pause => match self.pause() {
                Ok(_) => (Reply::with_info(self.info()), None),
                Err(e) => (Reply::error(e), None),
            },
            Request::Resume => match self.resume() {
                Ok(()) => (Reply::with_info(self.info()), None),
                Err(e) => (Reply::error(e), None),
            },
            Request::Stop { force: true, .. } => (Reply::ok(), Some(ExitReason::ForcedStop)),
            Request::Stop { timeout_ms, .. } => {
                let timeout = timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(DEFAULT_STOP_TIMEOUT);
                match self.graceful_stop(timeout) {
                    Ok(()) => (Reply::with_info(self.info()), None),
                    Err(e) => (Reply::error(e), None),
                }
            }
        }
    }

    fn accept_clients(&mut self) {
        let Some(socket) = &self.socket else { return };
        while let Ok((stream, _)) = socket.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = TOKEN_CLIENT_BASE + self.next_client;
            self.next_client += 1;
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token),
                )
                .is_ok()
            {
                self.clients.insert(
                    token,
                    Client {
                        stream,
                        pending: Vec::new(),
                    },
                );
            }
        }
    }

    /// Reads what a client sent and answers each complete line.
    fn serve_client(&mut self, token: u64) -> Option<ExitReason> {
        let client = self.clients.get_mut(&token)?;
        let mut buf = [0u8; 4096];
        let mut open = true;
        loop {
            match client.stream.read(&mut buf) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => client.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    open = false;
                    break;
                }
            }
            if client.pending.len() > api::MAX_REQUEST {
                break;
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = client.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = client.pending.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        let too_long = client.pending.len() > api::MAX_REQUEST;
        let mut outcome = None;
        for line in lines.into_iter().filter(|l| !l.trim().is_empty()) {
            let (reply, reason) = match api::parse_request(&line) {
                Ok(request) => self.handle(request),
                Err(message) => (Reply::error(message), None),
            };
            self.write_reply(token, &reply);
            if reason.is_some() {
                outcome = reason;
                break;
            }
        }
        if too_long {
            self.write_reply(
                token,
                &Reply::error(format!("request longer than {} bytes", api::MAX_REQUEST)),
            );
            open = false;
        }
        if !open || outcome.is_some() {
            self.drop_client(token);
        }
        outcome
    }

    /// Writes one reply; a client that does not read it within a second
    /// loses its connection rather than stalling the VM's owner.
    fn write_reply(&mut self, token: u64, reply: &Reply) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let line = api::reply_line(reply);
        let sent = client
            .stream
            .set_nonblocking(false)
            .and_then(|_| {
                client
                    .stream
                    .set_write_timeout(Some(Duration::from_secs(1)))
            })
            .and_then(|_| client.stream.write_all(line.as_bytes()))
            .and_then(|_| client.stream.set_nonblocking(true));
        if sent.is_err() {
            self.drop_client(token);
        }
    }

    fn drop_client(&mut self, token: u64) {
        if let Some(client) = self.clients.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                client.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    /// Lets the GDB server read its connection and act on the VM.
    fn serve_gdb(&mut self) -> Option<ExitReason> {
        let mut gdb = self.gdb.take()?;
        let before = gdb.fd();
        let event = gdb.on_readable(self);
        if gdb.fd() != before {
            // Listening socket <-> session: watch only the current one.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, before, EpollEvent::default());
            let _ = self.epoll.ctl(
                ControlOperation::Add,
                gdb.fd(),
                EpollEvent::new(EventSet::IN, TOKEN_GDB),
            );
        }
        self.gdb = Some(gdb);
        match event {
            GdbEvent::None => None,
            GdbEvent::Detached => {
                log::info!("gdb detached; the VM runs on");
                self.paused = false;
                None
            }
            GdbEvent::Kill => Some(ExitReason::ForcedStop),
        }
    }

    /// Devices run again (some vCPUs may stay paused: a debugger's step).
    pub(super) fn resume_devices(&mut self) {
        let _ = self.devices.command(LoopCommand::Resume, OBEY_LIMIT);
        self.paused = false;
    }

    /// Resumes the whole VM after the debugger let it go.
    pub(super) fn continue_all(&mut self) -> bool {
        let _ = self.devices.command(LoopCommand::Resume, OBEY_LIMIT);
        let ok = self.resume_vcpus();
        self.paused = false;
        ok
    }

    /// Stops every thread (they are out of KVM_RUN when this returns, or
    /// after [`OBEY_LIMIT`]) and reports what became of the console output.
    fn teardown(&mut self) {
        self.guest.mark_stopping();
        for v in &self.vcpus {
            v.send(VcpuCommand::Stop);
        }
        // The request in hand finishes first, so writes the guest was told
        // are done are on the disk.
        if !self.devices.command(LoopCommand::Stop, OBEY_LIMIT) {
            log::warn!("the device loop did not stop in time");
        }
        if !self.wait_vcpus(|s| s == VcpuState::Stopped) {
            log::warn!("a vCPU did not stop in time");
        }
        timeline::mark("threads stopped");
        // No guest can reach them now: stop the file servers and passt.
        self.companions.stop(SERVER_GRACE);
        timeline::mark("helpers stopped");
        let (mut dropped, mut undelivered) = (0, 0);
        for output in &self.outputs {
            let report = output.drain();
            dropped += report.dropped;
            undelivered += report.undelivered;
        }
        if dropped > 0 || undelivered > 0 {
            eprintln!(
                "hvm: console: {dropped} bytes of guest output were dropped and {undelivered} not delivered \
                 (the output did not keep up)"
            );
        }
    }
}
