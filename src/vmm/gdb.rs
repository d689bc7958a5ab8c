//! The GDB stub (gdbstub's state machine, x86-64 registers from
//! gdbstub_arch): `hvm run --gdb 127.0.0.1:1234` or `--gdb PATH` (a Unix
//! socket). The control loop feeds it what gdb sends and the vCPUs' debug
//! exits; every vCPU is a gdb thread (tid = vCPU id + 1). Guest state is
//! read and written on the vCPUs' own threads while they are paused;
//! memory goes through vm-memory after KVM_TRANSLATE turns a guest-virtual
//! address into a guest-physical one.

use super::control::Control;
use super::vcpu::{call_paused, VcpuCommand, VcpuHandle};
use gdbstub::common::{Signal, Tid};
use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStubBuilder, MultiThreadStopReason};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};
use kvm_ioctls::VcpuFd;
use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// x86 `int3`.
const INT3: u8 = 0xcc;
/// Debug registers available for breakpoints and watchpoints.
const DEBUG_REGISTERS: usize = 4;
/// How long gdb waits for a paused vCPU to answer.
const CALL_LIMIT: Duration = Duration::from_secs(2);
const PAGE: u64 = 4096;
/// How long a reply to gdb may wait for gdb to read.
const WRITE_LIMIT: Duration = Duration::from_secs(5);

/// Errors while setting up the stub.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    #[error("--gdb {address}: cannot listen: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// What serving gdb means for the VM.
pub enum GdbEvent {
    None,
    /// gdb went away or detached: the VM runs on.
    Detached,
    /// gdb asked to kill the VM.
    Kill,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

type Conn = Box<dyn Connection<Error = std::io::Error>>;

/// One breakpoint or watchpoint in a debug register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DebugSlot {
    addr: u64,
    /// None for an instruction breakpoint.
    watch: Option<(WatchKind, u64)>,
}

/// What gdb asked each vCPU to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Continue,
    Step,
}

/// The VM as gdb sees it.
pub struct GdbTarget {
    memory: GuestMemoryMmap,
    vcpus: Vec<mpsc::Sender<VcpuCommand>>,
    /// Software breakpoints: guest-physical address -> the byte int3 replaced.
    sw: HashMap<u64, (u64, u8)>,
    slots: [Option<DebugSlot>; DEBUG_REGISTERS],
    /// Explicit actions; a vCPU without one continues (gdbstub's contract).
    actions: Vec<Option<Action>>,
    /// gdb resumed the target; the control loop has yet to run it.
    resume_pending: bool,
    /// Scheduler locking: vCPUs without an action stay stopped.
    locked: bool,
    /// The vCPU whose state `monitor` commands show.
    current: u32,
}

/// The stub: a listening socket, and the session with gdb when attached.
pub struct GdbServer {
    listener: Listener,
    address: String,
    conn_fd: Option<RawFd>,
    machine: Option<GdbStubStateMachine<'static, GdbTarget, Conn>>,
    target: GdbTarget,
}

impl GdbServer {
    /// Listens on `address`: `HOST:PORT`, `:PORT` (loopback) or a Unix socket path.
    pub fn listen(
        address: &str,
        memory: GuestMemoryMmap,
        vcpus: u32,
    ) -> Result<GdbServer, GdbError> {
        let err = |source| GdbError::Listen {
            address: address.into(),
            source,
        };
        let listener = if address.contains('/') {
            let _ = std::fs::remove_file(address);
            Listener::Unix(UnixListener::bind(address).map_err(err)?, address.into())
        } else {
            let addr = if address.starts_with(':') {
                format!("127.0.0.1{address}")
            } else {
                address.to_string()
            };
            Listener::Tcp(TcpListener::bind(addr).map_err(err)?)
        };
        Ok(GdbServer {
            listener,
            address: address.into(),
            conn_fd: None,
            machine: None,
            target: GdbTarget {
                memory,
                vcpus: Vec::new(),
                sw: HashMap::new(),
                slots: [None; DEBUG_REGISTERS],
                actions: vec![None; vcpus as usize],
                resume_pending: false,
                locked: false,
                current: 0,
            },
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The Unix socket it listens on, if that is what it listens on.
    pub fn socket_path(&self) -> Option<&std::path::Path> {
        match &self.listener {
            Listener::Unix(_, path) => Some(path),
            Listener::Tcp(_) => None,
        }
    }

    /// The descriptor to watch: the session's while gdb is attached, else the listener's.
    pub fn fd(&self) -> RawFd {
        match (self.conn_fd, &self.listener) {
            (Some(fd), _) => fd,
            (None, Listener::Tcp(l)) => l.as_raw_fd(),
            (None, Listener::Unix(l, _)) => l.as_raw_fd(),
        }
    }

    pub fn attached(&self) -> bool {
        self.machine.is_some()
    }

    /// The watched descriptor is readable: a new gdb, or bytes from it.
    pub fn on_readable(&mut self, control: &mut Control) -> GdbEvent {
        if self.machine.is_none() {
            self.accept(control);
            return GdbEvent::None;
        }
        let Some(fd) = self.conn_fd else {
            return GdbEvent::None;
        };
        let mut buf = [0u8; 4096];
        // SAFETY: a read into a live buffer from the session's descriptor.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n == 0
            || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
        {
            return self.end_session(control);
        }
        for &byte in &buf[..n.max(0) as usize] {
            match self.feed(control, byte) {
                GdbEvent::None => {}
                other => return other,
            }
        }
        GdbEvent::None
    }

    fn accept(&mut self, control: &mut Control) {
        let stream: Result<(Conn, RawFd), std::io::Error> = match &self.listener {
            // Blocking writes (bounded: a gdb that stops reading loses its
            // session), reads without waiting (recv with MSG_DONTWAIT).
            Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(WRITE_LIMIT))?;
                let fd = s.as_raw_fd();
                Ok((Box::new(s) as Conn, fd))
            }),
            Listener::Unix(l, _) => l.accept().and_then(|(s, _): (UnixStream, _)| {
                s.set_write_timeout(Some(WRITE_LIMIT))?;
                let fd = s.as_raw_fd();
                Ok((Box::new(s) as Conn, fd))
            }),
        };
        let (conn, fd) = match stream {
            Ok(c) => c,
            Err(e) => {
                log::warn!("gdb: accept failed: {e}");
                return;
            }
        };
        // The debugger sees a stopped machine.
        control.pause_vcpus();
        self.target.vcpus = control.vcpus.iter().map(VcpuHandle::commander).collect();
        let machine = GdbStubBuilder::new(conn)
            .build()
            .map_err(|e| e.to_string())
            .and_then(|stub| {
                stub.run_state_machine(&mut self.target)
                    .map_err(|e| e.to_string())
            });
        match machine {
            Ok(m) => {
                log::info!("gdb attached on {}", self.address);
                self.machine = Some(m);
                self.conn_fd = Some(fd);
            }
            Err(e) => log::warn!("gdb: cannot start a session: {e}"),
        }
    }

    /// One byte from gdb through the state machine.
    fn feed(&mut self, control: &mut Control, byte: u8) -> GdbEvent {
        let Some(machine) = self.machine.take() else {
            return GdbEvent::None;
        };
        let next = match machine {
            GdbStubStateMachine::Idle(m) => m.incoming_data(&mut self.target, byte),
            GdbStubStateMachine::Running(m) => m.incoming_data(&mut self.target, byte),
            other => Ok(other),
        };
        let mut next = match next {
            Ok(n) => n,
            Err(e) => {
                log::warn!("gdb: session ended: {e}");
                return self.end_session(control);
            }
        };
        loop {
            next = match next {
                GdbStubStateMachine::CtrlCInterrupt(m) => {
                    control.pause_vcpus();
                    let tid = tid_of(self.target.current);
                    let reason = MultiThreadStopReason::SignalWithThread {
                        tid,
                        signal: Signal::SIGINT,
                    };
                    match m.interrupt_handled(&mut self.target, Some(reason)) {
                        Ok(n) => n,
                        Err(e) => {
                            log::warn!("gdb: {e}");
                            return self.end_session(control);
                        }
                    }
                }
                GdbStubStateMachine::Disconnected(m) => {
                    let reason = m.get_reason();
                    self.machine = None;
                    let event = self.end_session(control);
                    return match reason {
                        DisconnectReason::Kill => GdbEvent::Kill,
                        _ => event,
                    };
                }
                GdbStubStateMachine::Running(m) => {
                    // gdb resumed the target: carry out the actions it set.
                    self.machine = Some(GdbStubStateMachine::Running(m));
                    self.start(control);
                    return GdbEvent::None;
                }
                idle @ GdbStubStateMachine::Idle(_) => {
                    self.machine = Some(idle);
                    return GdbEvent::None;
                }
            }
        }
    }

    /// Applies the resume actions: debug state on every vCPU, then run.
    fn start(&mut self, control: &mut Control) {
        if !std::mem::take(&mut self.target.resume_pending) {
            return;
        }
        // A step runs the stepping vCPU alone (the others stay put), so
        // what gdb shows next is what that one instruction did.
        let alone = self.target.locked || self.target.actions.contains(&Some(Action::Step));
        for id in 0..self.target.vcpus.len() {
            let action = self.target.actions.get(id).copied().flatten();
            let debug = self.target.guest_debug(action == Some(Action::Step));
            self.target.call(id as u32, move |fd| {
                fd.set_guest_debug(&debug).map_err(|e| e.to_string())
            });
        }
        for v in control.vcpus.iter() {
            let action = self.target.actions.get(v.id as usize).copied().flatten();
            let run = match action {
                Some(_) => true,
                None => !alone,
            };
            if run {
                v.send(VcpuCommand::Resume);
            }
        }
        if !alone {
            control.continue_all();
        } else {
            control.resume_devices();
        }
    }

    /// A vCPU stopped on a debug exit (the control loop paused the others).
    pub fn report_stop(&mut self, id: u32, exception: u32, dr6: u64, vcpus: &mut [VcpuHandle]) {
        self.target.current = id;
        let tid = tid_of(id);
        let reason = match exception {
            3 => {
                // #BP: ours, or the guest's own int3, which goes back to it.
                let rip = self.target.call(id, |fd| {
                    fd.get_regs().map(|r| r.rip).map_err(|e| e.to_string())
                });
                let ours = rip
                    .and_then(|rip| self.target.translate(id, rip))
                    .is_some_and(|gpa| self.target.sw.contains_key(&gpa));
                if !ours {
                    let mut debug = self.target.guest_debug(false);
                    debug.control |= KVM_GUESTDBG_INJECT_BP;
                    self.target.call(id, move |fd| {
                        fd.set_guest_debug(&debug).map_err(|e| e.to_string())
                    });
                    if let Some(v) = vcpus.get(id as usize) {
                        v.send(VcpuCommand::Resume);
                    }
                    return;
                }
                MultiThreadStopReason::SwBreak(tid)
            }
            _ => {
                let hit = (0..DEBUG_REGISTERS).find(|i| dr6 & (1 << i) != 0);
                match hit.and_then(|i| self.target.slots[i]) {
                    Some(DebugSlot {
                        addr,
                        watch: Some((kind, _)),
                    }) => MultiThreadStopReason::Watch { tid, kind, addr },
                    Some(DebugSlot { watch: None, .. }) => MultiThreadStopReason::HwBreak(tid),
                    // A single step: say which thread stepped.
                    None => MultiThreadStopReason::SignalWithThread {
                        tid,
                        signal: Signal::SIGTRAP,
                    },
                }
            }
        };
        for a in &mut self.target.actions {
            *a = None;
        }
        let Some(machine) = self.machine.take() else {
            return;
        };
        self.machine = match machine {
            GdbStubStateMachine::Running(m) => match m.report_stop(&mut self.target, reason) {
                Ok(next) => Some(next),
                Err(e) => {
                    log::warn!("gdb: {e}");
                    None
                }
            },
            other => Some(other),
        };
    }

    /// The VM ended while gdb watched it run: tell gdb the exit code.
    pub fn report_exit(&mut self, code: i32) {
        if let Some(GdbStubStateMachine::Running(m)) = self.machine.take() {
            let reason = MultiThreadStopReason::Exited(code as u8);
            if let Err(e) = m.report_stop(&mut self.target, reason) {
                log::debug!("gdb: {e}");
            }
        }
    }

    /// gdb left: breakpoints out of guest memory, debugging off, VM runs on.
    fn end_session(&mut self, control: &mut Control) -> GdbEvent {
        self.machine = None;
        self.conn_fd = None;
        for (_, (gpa, byte)) in self.target.sw.drain() {
            let _ = self.target.memory.write_obj(byte, GuestAddress(gpa));
        }
        self.target.slots = [None; DEBUG_REGISTERS];
        for id in 0..self.target.vcpus.len() as u32 {
            let off = kvm_guest_debug::default();
            self.target.call(id, move |fd| {
                fd.set_guest_debug(&off).map_err(|e| e.to_string())
            });
        }
        control.continue_all();
        GdbEvent::Detached
    }
}

fn tid_of(id: u32) -> Tid {
    Tid::new(id as usize + 1).unwrap_or(Tid::MIN)
}

fn vcpu_of(tid: Tid) -> u32 {
    (tid.get() - 1) as u32
}

impl GdbTarget {
    /// Runs `f` on paused vCPU `id`'s thread and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        id: u32,
        f: impl FnOnce(&mut VcpuFd) -> Result<R, String> + Send + 'static,
    ) -> Option<R> {
        match call_paused(self.vcpus.get(id as usize)?, CALL_LIMIT, f) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                log::debug!("gdb: vCPU {id}: {e}");
                None
            }
            None => None,
        }
    }

    /// Guest-virtual to guest-physical through vCPU `id`'s page tables.
    fn translate(&self, id: u32, gva: u64) -> Option<u64> {
        self.call(id, move |fd| {
            fd.translate_gva(gva).map_err(|e| e.to_string())
        })
        .filter(|t| t.valid != 0)
        .map(|t| t.physical_address)
    }

    /// The KVM_SET_GUEST_DEBUG state for the current breakpoints.
    fn guest_debug(&self, step: bool) -> kvm_guest_debug {
        let mut d = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP,
            ..Default::default()
        };
        if step {
            d.control |= KVM_GUESTDBG_SINGLESTEP;
        }
        let mut dr7 = 0u64;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(s) = slot else { continue };
            d.arch.debugreg[i] = s.addr;
            // Local enable, then R/W and LEN for this register.
            dr7 |= 1 << (i * 2);
            let (rw, len) = match s.watch {
                None => (0u64, 0u64),
                Some((kind, len)) => (
                    match kind {
                        WatchKind::Write => 1,
                        WatchKind::Read | WatchKind::ReadWrite => 3,
                    },
                    match len {
                        1 => 0,
                        2 => 1,
                        8 => 2,
                        _ => 3,
                    },
                ),
            };
            dr7 |= (rw | (len << 2)) << (16 + i * 4);
        }
        if dr7 != 0 {
            d.control |= KVM_GUESTDBG_USE_HW_BP;
            d.arch.debugreg[7] = dr7;
        }
        d
    }

    /// Copies between guest-virtual memory and `buf`, page by page.
    fn access(
        &mut self,
        tid: Tid,
        addr: u64,
        len: usize,
        mut f: impl FnMut(&GuestMemoryMmap, u64, usize, usize) -> bool,
    ) -> usize {
        let id = vcpu_of(tid);
        let mut done = 0usize;
        while done < len {
            let gva = addr.wrapping_add(done as u64);
            let in_page = (PAGE - gva % PAGE) as usize;
            let n = in_page.min(len - done);
            let Some(gpa) = self.translate(id, gva) else {
                break;
            };
            if !f(&self.memory, gpa, done, n) {
                break;
            }
            done += n;
        }
        done
    }

    fn add_slot(&mut self, slot: DebugSlot) -> bool {
        if self.slots.contains(&Some(slot)) {
            return true;
        }
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            None => false,
        }
    }

    fn remove_slot(&mut self, slot: DebugSlot) -> bool {
        match self.slots.iter_mut().find(|s| **s == Some(slot)) {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }
}

impl Target for GdbTarget {
    type Arch = X86_64_SSE;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    // Guest code may contain int3 of its own: hvm tells them apart.
    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl MultiThreadBase for GdbTarget {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let id = vcpu_of(tid);
        let got = self.call(id, |fd| {
            let r = fd.get_regs().map_err(|e| e.to_string())?;
            let s = fd.get_sregs().map_err(|e| e.to_string())?;
            let f = fd.get_fpu().map_err(|e| e.to_string())?;
            Ok((r, s, f))
        });
        let Some((r, s, f)) = got else {
            return Err(TargetError::NonFatal);
        };
        regs.regs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        regs.rip = r.rip;
        regs.eflags = r.rflags as u32;
        regs.segments.cs = s.cs.selector.into();
        regs.segments.ss = s.ss.selector.into();
        regs.segments.ds = s.ds.selector.into();
        regs.segments.es = s.es.selector.into();
        regs.segments.fs = s.fs.selector.into();
        regs.segments.gs = s.gs.selector.into();
        for (st, fpr) in regs.st.iter_mut().zip(f.fpr.iter()) {
            st.copy_from_slice(&fpr[..10]);
        }
        for (x, xmm) in regs.xmm.iter_mut().zip(f.xmm.iter()) {
            *x = u128::from_le_bytes(*xmm);
        }
        regs.fpu.fctrl = f.fcw.into();
        regs.fpu.fstat = f.fsw.into();
        regs.fpu.ftag = f.ftwx.into();
        regs.fpu.fop = f.last_opcode.into();
        regs.fpu.fioff = f.last_ip as u32;
        regs.fpu.fooff = f.last_dp as u32;
        regs.mxcsr = f.mxcsr;
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let id = vcpu_of(tid);
        let g = regs.regs;
        let (rip, rflags) = (regs.rip, u64::from(regs.eflags));
        // General registers, RIP and RFLAGS; segment selectors without their
        // descriptors would be meaningless, so they are left as they are.
        self.call(id, move |fd| {
            let mut r = fd.get_regs().map_err(|e| e.to_string())?;
            [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp] =
                [g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]];
            [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15] =
                [g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]];
            r.rip = rip;
            r.rflags = rflags;
            fd.set_regs(&r).map_err(|e| e.to_string())
        })
        .ok_or(TargetError::NonFatal)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let len = data.len();
        let n = self.access(tid, start, len, |mem, gpa, at, n| {
            mem.read_slice(&mut data[at..at + n], GuestAddress(gpa))
                .is_ok()
        });
        // Breakpoints are hvm's business: gdb sees the original bytes.
        let sw: Vec<(u64, u8)> = self
            .sw
            .iter()
            .map(|(gva, (_, byte))| (*gva, *byte))
            .collect();
        for (gva, byte) in sw {
            if let Some(off) = gva.checked_sub(start).filter(|o| (*o as usize) < n) {
                data[off as usize] = byte;
            }
        }
        if n == 0 && len > 0 {
            return Err(TargetError::NonFatal);
        }
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let n = self.access(tid, start, data.len(), |mem, gpa, at, n| {
            mem.write_slice(&data[at..at + n], GuestAddress(gpa))
                .is_ok()
        });
        if n < data.len() {
            return Err(TargetError::NonFatal);
        }
        Ok(())
    }

    fn list_active_threads(&mut self, register: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for id in 0..self.vcpus.len() as u32 {
            register(tid_of(id));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for GdbTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        // The control loop carries the actions out once the stub says Running.
        self.resume_pending = true;
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        for a in &mut self.actions {
            *a = None;
        }
        self.locked = false;
        Ok(())
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("hvm cannot deliver signals to a guest CPU".into());
        }
        if let Some(a) = self.actions.get_mut(vcpu_of(tid) as usize) {
            *a = Some(Action::Continue);
        }
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for GdbTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("hvm cannot deliver signals to a guest CPU".into());
        }
        if let Some(a) = self.actions.get_mut(vcpu_of(tid) as usize) {
            *a = Some(Action::Step);
        }
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for GdbTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.locked = true;
        Ok(())
    }
}

impl Breakpoints for GdbTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for GdbTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.sw.contains_key(&addr) {
            return Ok(true);
        }
        let Some(gpa) = self.translate(self.current, addr) else {
            return Ok(false);
        };
        let Ok(byte) = self.memory.read_obj::<u8>(GuestAddress(gpa)) else {
            return Ok(false);
        };
        if self.memory.write_obj(INT3, GuestAddress(gpa)).is_err() {
            return Ok(false);
        }
        self.sw.insert(addr, (gpa, byte));
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some((gpa, byte)) = self.sw.remove(&addr) else {
            return Ok(false);
        };
        Ok(self.memory.write_obj(byte, GuestAddress(gpa)).is_ok())
    }
}

impl HwBreakpoint for GdbTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_slot(DebugSlot { addr, watch: None }))
    }
    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(DebugSlot { addr, watch: None }))
    }
}

impl HwWatchpoint for GdbTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        // x86 debug registers watch 1, 2, 4 or 8 aligned bytes.
        if ![1, 2, 4, 8].contains(&len) || addr % len != 0 {
            return Ok(false);
        }
        Ok(self.add_slot(DebugSlot {
            addr,
            watch: Some((kind, len)),
        }))
    }
    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(DebugSlot {
            addr,
            watch: Some((kind, len)),
        }))
    }
}

impl MonitorCmd for GdbTarget {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(cmd);
        match cmd.trim() {
            "regs" | "sregs" => {
                for id in 0..self.vcpus.len() as u32 {
                    let got = self.call(id, |fd| fd.get_sregs().map_err(|e| e.to_string()));
                    match got {
                        Some(s) => gdbstub::outputln!(
                            out,
                            "vCPU {id}: cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} fs_base={:#x} gs_base={:#x} cs={:#x} cpl={}",
                            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.fs.base, s.gs.base, s.cs.selector, s.cs.dpl
                        ),
                        None => gdbstub::outputln!(out, "vCPU {id}: not available"),
                    }
                }
            }
            _ => gdbstub::outputln!(
                out,
                "hvm monitor commands: regs (control registers, EFER, FS/GS base of every vCPU)"
            ),
        }
        Ok(())
    }
}

impl std::fmt::Debug for GdbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GdbServer({})", self.address)
    }
}
