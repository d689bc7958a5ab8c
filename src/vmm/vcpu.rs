//! vCPUs: creation and per-vCPU CPU state, then one thread each running
//! KVM_RUN and turning exits into bus accesses or a reason to stop.

use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::devices::events::GuestEvents;
use crate::timeline;
use crate::vmm::crash_report::{self, CaptureRequest, VcpuSnapshot};
use crate::vmm::exit::ExitReason;
use crate::vmm::exit_stats::{self, ExitKind, ExitStats, StatsSink};
use crate::vmm::seccomp::{self, ThreadKind};
use crate::vmm::write_batches::WriteBatches;
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM could not create vCPU {id}: {source}")]
    Create { id: u32, source: kvm_ioctls::Error },
    #[error("KVM refused the CPUID of vCPU {id}: {source}")]
    Cpuid { id: u32, source: kvm_ioctls::Error },
    #[error("vCPU {id}: {source}")]
    Regs { id: u32, source: regs::RegsError },
    #[error("cannot start the thread of vCPU {id}: {source}")]
    Spawn { id: u32, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(std::io::Error),
    #[error("vCPU {id} cannot map KVM's ring of batched writes: {source}")]
    WriteBatches { id: u32, source: kvm_ioctls::Error },
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// Port writes KVM batched, replayed before each port access is served.
    pub batches: Option<WriteBatches>,
    /// Raised once the guest asked to stop: run no more guest code.
    pub guest: GuestEvents,
    /// Where vCPU threads report to the control loop.
    pub events: VcpuEvents,
    /// With `--stats`: where each thread's exit counts go when it ends.
    pub stats: Option<StatsSink>,
    /// Raised when the VM ends for a crash report: each thread records
    /// its state as it leaves.
    pub capture: CaptureRequest,
}

/// Holds vCPU threads back until it opens: the control thread installs its
/// system call filter first, so no guest instruction runs before every
/// thread that could see its effects is filtered.
#[derive(Clone, Default)]
pub struct StartGate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl StartGate {
    /// Lets every waiting (and later) vCPU thread go.
    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *crate::devices::bus::lock(open) = true;
        changed.notify_all();
    }

    fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut is_open = crate::devices::bus::lock(open);
        while !*is_open {
            is_open = changed.wait(is_open).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One configured vCPU, ready to run.
pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
    /// Batched port writes this vCPU replayed (for `--stats`).
    replayed: u64,
}

/// What the control loop asks of a vCPU thread.
pub enum VcpuCommand {
    /// Leave KVM_RUN and wait for the next command.
    Pause,
    /// Run the guest again.
    Resume,
    /// Leave for good.
    Stop,
    /// Run `f` on the vCPU's own thread (registers, debug state): vCPU
    /// ioctls belong to the thread that runs the vCPU.
    Call(Box<dyn FnOnce(&mut VcpuFd) + Send>),
}

/// What a vCPU thread tells the control loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// Out of KVM_RUN and waiting (after a Pause, or a debug exit).
    Paused { id: u32 },
    /// Running the guest again.
    Resumed { id: u32 },
    /// The guest stopped on a breakpoint, watchpoint or single step; the
    /// vCPU waits paused. `dr6` says which debug register fired.
    Debug { id: u32, exception: u32, dr6: u64 },
    /// The guest did something that ends the VM.
    Exit { id: u32, reason: ExitReason },
    /// The vCPU's state as it left, for a crash report.
    State(Box<VcpuSnapshot>),
    /// The thread has left.
    Stopped { id: u32 },
}

/// The sending side of vCPU events; wakes the control loop's epoll.
#[derive(Clone)]
pub struct VcpuEvents {
    tx: mpsc::Sender<VcpuEvent>,
    wake: Arc<EventFd>,
}

impl VcpuEvents {
    pub fn channel(wake: Arc<EventFd>) -> (VcpuEvents, mpsc::Receiver<VcpuEvent>) {
        let (tx, rx) = mpsc::channel();
        (VcpuEvents { tx, wake }, rx)
    }

    fn send(&self, event: VcpuEvent) {
        let _ = self.tx.send(event);
        let _ = self.wake.write(1);
    }
}

/// Runs `f` on a paused vCPU's own thread (it waits on its commands) and
/// waits up to `limit` for the answer; None when it did not come.
pub fn call_paused<R: Send + 'static>(
    commands: &mpsc::Sender<VcpuCommand>,
    limit: std::time::Duration,
    f: impl FnOnce(&mut VcpuFd) -> Result<R, String> + Send + 'static,
) -> Option<Result<R, String>> {
    let (tx, rx) = mpsc::sync_channel(1);
    let call = VcpuCommand::Call(Box::new(move |fd| {
        let _ = tx.send(f(fd));
    }));
    commands.send(call).ok()?;
    rx.recv_timeout(limit).ok()
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal's delivery makes KVM_RUN return EINTR, and
    // immediate_exit (set before the signal) covers a thread not yet inside it.
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
                .map_err(|e| e.errno())
        })
        .map_err(|errno| VcpuError::KickHandler(std::io::Error::from_raw_os_error(errno)))
}

/// The control loop's side of one vCPU thread.
pub struct VcpuHandle {
    pub id: u32,
    pub state: VcpuState,
    commands: mpsc::Sender<VcpuCommand>,
    attention: Arc<AtomicBool>,
    /// `kvm_run.immediate_exit` of this vCPU. Its mapping lives as long as
    /// the vCPU's fd, which the thread hands back as its result: the join
    /// handle keeps it (and so the mapping) alive for as long as this handle.
    immediate_exit: *const AtomicU8,
    thread: JoinHandle<Vcpu>,
}

// SAFETY: `immediate_exit` points into the vCPU's kvm_run mapping, which is
// shared with the kernel and written atomically; it is only a flag.
unsafe impl Send for VcpuHandle {}

/// The vCPU's state as the control loop knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    Running,
    Paused,
    Stopped,
}

impl VcpuState {
    pub fn name(self) -> &'static str {
        match self {
            VcpuState::Running => "running",
            VcpuState::Paused => "paused",
            VcpuState::Stopped => "stopped",
        }
    }
}

impl VcpuHandle {
    /// Sends `command` and kicks the thread out of KVM_RUN to read it.
    pub fn send(&self, command: VcpuCommand) {
        if self.state == VcpuState::Stopped {
            return;
        }
        if self.commands.send(command).is_err() {
            return;
        }
        self.attention.store(true, Ordering::SeqCst);
        self.kick();
    }

    /// Forces the thread out of KVM_RUN now (or makes its next KVM_RUN return at once).
    fn kick(&self) {
        if !self.thread.is_finished() {
            // SAFETY: the kvm_run mapping outlives this handle (see the
            // field); the flag is a byte KVM reads at its next KVM_RUN.
            unsafe { (*self.immediate_exit).store(1, Ordering::SeqCst) };
            if let Err(e) = self.thread.kill(kick_signal()) {
                log::debug!("vCPU {}: kick failed: {e}", self.id);
            }
        }
    }

    /// A sender for commands to a paused vCPU (it waits on them; no kick needed).
    pub fn commander(&self) -> mpsc::Sender<VcpuCommand> {
        self.commands.clone()
    }

    /// Whether the thread has left.
    pub fn finished(&self) -> bool {
        self.thread.is_finished()
    }
}

impl Vcpu {
    /// Creates vCPU `id` of `count` and sets its CPUID, MSRs, FPU and LAPIC;
    /// the boot vCPU (id 0) also gets the 64-bit entry state at `entry`.
    /// With `batching`, it maps the ring of batched port writes.
    pub fn new(
        vm: &VmFd,
        supported: &CpuId,
        id: u32,
        count: u32,
        entry: u64,
        batching: bool,
    ) -> Result<Vcpu, VcpuError> {
        let mut fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        if batching {
            WriteBatches::attach(&mut fd)
                .map_err(|source| VcpuError::WriteBatches { id, source })?;
        }
        fd.set_cpuid2(&cpuid::for_vcpu(supported, id, count))
            .map_err(|source| VcpuError::Cpuid { id, source })?;
        let regs_err = |source| VcpuError::Regs { id, source };
        // Every CPU's MSRs alike (Linux checks that MTRRs agree).
        regs::setup_msrs(&fd).map_err(regs_err)?;
        if id == 0 {
            regs::setup_fpu(&fd).map_err(regs_err)?;
            regs::setup_lapic(&fd).map_err(regs_err)?;
            regs::setup_boot_cpu(&fd, entry).map_err(regs_err)?;
        }
        // Application processors keep KVM's power-on state (x87/SSE
        // defaults, LAPIC LVTs masked, as on a PC) and wait for INIT/SIPI
        // from the boot CPU: nothing more to set, ~3 ioctls fewer each.
        Ok(Vcpu {
            id,
            fd,
            replayed: 0,
        })
    }

    /// Starts the vCPU's thread; with `paused`, it waits for a Resume
    /// before its first instruction (a debugger attaches first).
    pub fn spawn(
        mut self,
        ctx: VcpuContext,
        paused: bool,
        gate: StartGate,
    ) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let (commands, rx) = mpsc::channel();
        let attention = Arc::new(AtomicBool::new(false));
        let run = self.fd.get_kvm_run();
        let immediate_exit = (&mut run.immediate_exit as *mut u8).cast::<AtomicU8>();
        let flag = attention.clone();
        let thread = std::thread::Builder::new()
            .name(format!("hvm-vcpu{id}"))
            .spawn(move || self.run(ctx, rx, flag, paused, gate))
            .map_err(|source| VcpuError::Spawn { id, source })?;
        Ok(VcpuHandle {
            id,
            state: if paused {
                VcpuState::Paused
            } else {
                VcpuState::Running
            },
            commands,
            attention,
            immediate_exit,
            thread,
        })
    }

    fn run(
        mut self,
        ctx: VcpuContext,
        commands: mpsc::Receiver<VcpuCommand>,
        attention: Arc<AtomicBool>,
        mut paused: bool,
        gate: StartGate,
    ) -> Vcpu {
        let id = self.id;
        if let Err(e) = seccomp::apply(ThreadKind::Vcpu(id)) {
            let reason = ExitReason::VcpuFailed {
                vcpu: id,
                message: e.to_string(),
            };
            ctx.events.send(VcpuEvent::Exit { id, reason });
            ctx.events.send(VcpuEvent::Stopped { id });
            return self;
        }
        gate.wait();
        let mut stats = ctx.stats.as_ref().map(|_| ExitStats::default());
        let mut captured = false;
        if id == 0 && !paused {
            timeline::mark("first KVM_RUN");
        }
        loop {
            if paused || attention.swap(false, Ordering::SeqCst) {
                match self.obey(&ctx, &commands, &mut paused) {
                    Obey::Go => {}
                    Obey::Leave => {
                        log::debug!("vCPU {id}: told to leave");
                        break;
                    }
                }
                if paused {
                    continue;
                }
            }
            if ctx.guest.stopping() {
                // The guest ended the VM: run no more guest code.
                log::debug!("vCPU {id}: the VM is stopping");
                break;
            }
            match self.step(&ctx, stats.as_mut()) {
                Step::Continue => {}
                Step::Exit(reason) => {
                    log::debug!("vCPU {id} stops: {reason:?}");
                    if crash_report::wanted(&reason) {
                        // This vCPU's state first, exactly as it failed.
                        ctx.capture.request();
                        let internal = matches!(reason, ExitReason::InternalError { .. });
                        let state = VcpuSnapshot::capture(id, &mut self.fd, internal);
                        ctx.events.send(VcpuEvent::State(Box::new(state)));
                        captured = true;
                    }
                    ctx.events.send(VcpuEvent::Exit { id, reason });
                    break;
                }
                Step::Debug { exception, dr6 } => {
                    paused = true;
                    ctx.events.send(VcpuEvent::Debug { id, exception, dr6 });
                }
            }
        }
        if let (Some(sink), Some(stats)) = (&ctx.stats, &mut stats) {
            stats.batched_writes = self.replayed;
            stats.vcpu_cpu = exit_stats::thread_cpu();
            sink.add(stats);
        }
        // A panic reported through a device stops the vCPUs before the
        // control loop hears of it: that counts as a request too.
        if (ctx.capture.requested() || ctx.guest.panicked()) && !captured {
            let state = VcpuSnapshot::capture(id, &mut self.fd, false);
            ctx.events.send(VcpuEvent::State(Box::new(state)));
        }
        ctx.events.send(VcpuEvent::Stopped { id });
        self
    }

    /// Follows the control loop's commands: all that are queued, and while
    /// paused, blocks for the next.
    fn obey(
        &mut self,
        ctx: &VcpuContext,
        commands: &mpsc::Receiver<VcpuCommand>,
        paused: &mut bool,
    ) -> Obey {
        let id = self.id;
        loop {
            let command = if *paused {
                match commands.recv() {
                    Ok(c) => c,
                    Err(_) => return Obey::Leave,
                }
            } else {
                match commands.try_recv() {
                    Ok(c) => c,
                    Err(mpsc::TryRecvError::Empty) => return Obey::Go,
                    Err(mpsc::TryRecvError::Disconnected) => return Obey::Leave,
                }
            };
            let was_paused = *paused;
            let next = next_state(*paused, &command);
            *paused = next.paused;
            if next.paused && !was_paused {
                // Tell a kvmclock guest it was stopped, so its watchdogs do
                // not take the pause for a lockup.
                if let Err(e) = self.fd.kvmclock_ctrl() {
                    log::trace!("vCPU {id}: KVM_KVMCLOCK_CTRL: {e}");
                }
            }
            if let Some(report) = next.report {
                ctx.events.send(report.event(id));
            }
            match (next.then, command) {
                (Then::Go, _) => return Obey::Go,
                (Then::Leave, _) => return Obey::Leave,
                (Then::Obey, VcpuCommand::Call(f)) => f(&mut self.fd),
                (Then::Obey, _) => {}
            }
        }
    }

    /// Serves a port I/O exit. String instructions (`rep insb`, `rep outsw`)
    /// arrive as `count` accesses of `size` bytes side by side, which
    /// kvm-ioctls hands over as one slice: each is a bus access of its own.
    fn port_io(&mut self, ctx: &VcpuContext) {
        let vcpu = self.id;
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the io member of the exit union for this KVM_EXIT_IO.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let len = size * io.count as usize;
        if size == 0 {
            return;
        }
        let base = (run as *mut kvm_bindings::kvm_run).cast::<u8>();
        // SAFETY: KVM put the `count * size` bytes of this exit at
        // `data_offset` inside the vCPU's kvm_run mapping (the PIO page);
        // nothing else refers to them until the next KVM_RUN.
        let data =
            unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
        let port = u64::from(io.port);
        for access in data.chunks_exact_mut(size) {
            if u32::from(io.direction) == kvm_bindings::KVM_EXIT_IO_OUT {
                if !ctx.pio.write(port, access) {
                    log::trace!("vCPU {vcpu}: write to unused port {port:#x}");
                }
            } else if !ctx.pio.read(port, access) {
                // Nothing there: the bus floats high.
                access.fill(0xff);
            }
        }
    }

    /// Runs the guest until one exit, and says what follows; counts the
    /// exit in `stats` when there are any.
    fn step(&mut self, ctx: &VcpuContext, stats: Option<&mut ExitStats>) -> Step {
        let Some(stats) = stats else {
            return self.serve_one(ctx).1;
        };
        let entered = Instant::now();
        let (kind, step, returned) = self.serve_one(ctx);
        let returned = returned.unwrap_or(entered);
        stats.record(kind, returned - entered, returned.elapsed());
        step
    }

    /// One KVM_RUN and the exit it returned for: its kind, what follows,
    /// and, with `--stats`, when KVM_RUN returned.
    fn serve_one(&mut self, ctx: &VcpuContext) -> (ExitKind, Step, Option<Instant>) {
        let vcpu = self.id;
        let result = self.fd.run();
        let returned = ctx.stats.is_some().then(Instant::now);

        let exit = |kind, reason| (kind, Step::Exit(reason), returned);
        let go_on = |kind| (kind, Step::Continue, returned);
        match result {
            Ok(VcpuExit::IoOut(port, _)) | Ok(VcpuExit::IoIn(port, _)) => {
                if let Some(batches) = &ctx.batches {
                    // The latches' devices are reached by port I/O only:
                    // every port access is served after every write the
                    // guest made before it.
                    self.replayed += batches.replay(&mut self.fd, &ctx.pio);
                }
                self.port_io(ctx);
                go_on(ExitKind::Port(port))
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio.write(addr, data) {
                    log::trace!("vCPU {vcpu}: write to unused MMIO {addr:#x}");
                }
                go_on(ExitKind::Mmio(addr))
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                go_on(ExitKind::Mmio(addr))
            }
            Ok(VcpuExit::Shutdown) => exit(
                ExitKind::Other("shutdown (triple fault)"),
                ExitReason::TripleFault { vcpu },
            ),
            Ok(VcpuExit::Hlt) => {
                // The in-kernel LAPIC handles HLT; an exit here is spurious. Yield, go on.
                std::thread::yield_now();
                go_on(ExitKind::Other("HLT"))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => exit(
                ExitKind::Other("system event"),
                match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestPanic,
                    _ => ExitReason::PowerOff,
                },
            ),
            Ok(VcpuExit::FailEntry(reason, _cpu)) => exit(
                ExitKind::Other("failed entry"),
                ExitReason::FailEntry { vcpu, reason },
            ),
            Ok(VcpuExit::InternalError) => {
                let suberror = self.fd.get_kvm_run().exit_reason;
                // SAFETY: KVM filled the internal-error member of the exit union for this exit.
                let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                log::debug!("vCPU {vcpu}: internal error, exit reason {suberror}, suberror {sub}");
                exit(
                    ExitKind::Other("internal error"),
                    ExitReason::InternalError {
                        vcpu,
                        suberror: sub,
                    },
                )
            }
            Ok(VcpuExit::Debug(arch)) => (
                ExitKind::Other("debug (gdb)"),
                Step::Debug {
                    exception: arch.exception,
                    dr6: arch.dr6,
                },
                returned,
            ),
            Ok(VcpuExit::Intr) => {
                self.fd.set_kvm_immediate_exit(0);
                go_on(ExitKind::Other("interrupted (signal)"))
            }
            Ok(other) => {
                let message = format!("unexpected KVM exit {other:?}");
                exit(
                    ExitKind::Other("unexpected"),
                    ExitReason::VcpuFailed { vcpu, message },
                )
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked by the control loop: clear the flag, then obey.
                self.fd.set_kvm_immediate_exit(0);
                go_on(ExitKind::Other("kicked by hvm (pause, stop, gdb)"))
            }
            Err(e) => exit(
                ExitKind::Other("KVM_RUN failed"),
                ExitReason::VcpuFailed {
                    vcpu,
                    message: format!("KVM_RUN failed: {e}"),
                },
            ),
        }
    }
}

/// What one KVM_RUN led to.
enum Step {
    Continue,
    Exit(ExitReason),
    Debug { exception: u32, dr6: u64 },
}

/// Whether a vCPU thread goes on after its commands.
enum Obey {
    Go,
    Leave,
}

/// What a vCPU thread does after one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Carry the command out (a call) and read the next one.
    Obey,
    /// Run the guest.
    Go,
    /// Leave the thread.
    Leave,
}

/// The vCPU state machine: where a command takes a thread that is paused
/// or not, and what it tells the control loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Next {
    paused: bool,
    report: Option<Report>,
    then: Then,
}

/// A state change the control loop hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Paused,
    Resumed,
}

impl Report {
    fn event(self, id: u32) -> VcpuEvent {
        match self {
            Report::Paused => VcpuEvent::Paused { id },
            Report::Resumed => VcpuEvent::Resumed { id },
        }
    }
}

fn next_state(paused: bool, command: &VcpuCommand) -> Next {
    match command {
        // Always acknowledged, so a pause request never waits in vain.
        VcpuCommand::Pause => Next {
            paused: true,
            report: Some(Report::Paused),
            then: Then::Obey,
        },
        VcpuCommand::Resume => Next {
            paused: false,
            report: paused.then_some(Report::Resumed),
            then: Then::Go,
        },
        VcpuCommand::Stop => Next {
            paused,
            report: None,
            then: Then::Leave,
        },
        VcpuCommand::Call(_) => Next {
            paused,
            report: None,
            then: Then::Obey,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: &Next) -> Option<VcpuEvent> {
        n.report.map(|r| r.event(7))
    }

    #[test]
    fn pause_stops_a_running_vcpu_and_is_acknowledged_even_when_paused() {
        for was in [false, true] {
            let n = next_state(was, &VcpuCommand::Pause);
            assert!(n.paused);
            assert_eq!(report(&n), Some(VcpuEvent::Paused { id: 7 }));
            assert_eq!(n.then, Then::Obey);
        }
    }

    #[test]
    fn resume_runs_the_guest_and_reports_only_a_real_change() {
        let n = next_state(true, &VcpuCommand::Resume);
        assert!(!n.paused);
        assert_eq!(report(&n), Some(VcpuEvent::Resumed { id: 7 }));
        assert_eq!(n.then, Then::Go);
        let n = next_state(false, &VcpuCommand::Resume);
        assert_eq!(report(&n), None);
        assert_eq!(n.then, Then::Go);
    }

    #[test]
    fn stop_leaves_and_calls_keep_the_state() {
        for was in [false, true] {
            assert_eq!(next_state(was, &VcpuCommand::Stop).then, Then::Leave);
            let call = VcpuCommand::Call(Box::new(|_| {}));
            let n = next_state(was, &call);
            assert_eq!((n.paused, n.then), (was, Then::Obey));
            assert_eq!(report(&n), None);
        }
    }

    #[test]
    fn states_have_the_names_hvm_info_shows() {
        assert_eq!(VcpuState::Running.name(), "running");
        assert_eq!(VcpuState::Paused.name(), "paused");
        assert_eq!(VcpuState::Stopped.name(), "stopped");
    }
}
