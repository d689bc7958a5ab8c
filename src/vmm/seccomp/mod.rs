//! System call filters (seccomp-bpf, compiled by seccompiler): one
//! allow-list per kind of thread, each installed by the thread itself
//! before it handles anything a guest controls. A call outside the list
//! raises SIGSYS, whose handler names the call and the thread, makes the
//! call fail with EPERM and wakes the control loop, which ends the VM the
//! usual way (output flushed, helpers stopped, sockets removed; exit code
//! 1); in the control thread itself it ends hvm at once. `--seccomp=log`
//! lets such calls through and has the kernel log them (audit log or
//! dmesg); `--seccomp=off` installs nothing.

mod names;
mod rules;

pub use rules::ThreadKind;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

/// Errors while compiling or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the {kind} thread's system call filter: {source}")]
    Compile {
        kind: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind} thread's system call filter: {source} (run with --seccomp=off on a kernel without seccomp)")]
    Install {
        kind: &'static str,
        source: seccompiler::Error,
    },
    #[error("cannot install the handler that reports filtered system calls: {0}")]
    Handler(std::io::Error),
}

/// What the filters do (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A call outside the allow-list ends hvm with a message.
    #[default]
    On,
    /// Allowed, but logged by the kernel.
    Log,
    /// No filters.
    Off,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        super::parse_mode(
            s,
            &[("on", Mode::On), ("log", Mode::Log), ("off", Mode::Off)],
        )
    }
}

/// The compiled programs, per kind: the allow-list, and (when the kind has
/// calls it refuses quietly) a second filter answering those with EACCES.
/// The kernel runs both and the stricter answer wins. Set once per process.
static PROGRAMS: OnceLock<HashMap<&'static str, Vec<BpfProgram>>> = OnceLock::new();

/// Set once a call was refused: the control loop ends the VM.
static DENIED: AtomicBool = AtomicBool::new(false);
/// The control loop's wake-up eventfd (-1: none; the handler then exits).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// Where the SIGSYS handler wakes the control loop; None once it is gone.
pub fn set_wake(fd: Option<RawFd>) {
    WAKE_FD.store(fd.unwrap_or(-1), Ordering::SeqCst);
}

/// Whether a thread made a call its filter refused.
pub fn denied() -> bool {
    DENIED.load(Ordering::SeqCst)
}

thread_local! {
    /// This thread's kind and number (vCPU id), for the SIGSYS message.
    static THREAD: Cell<(&'static str, Option<u32>)> = const { Cell::new(("main", None)) };
}

/// Compiles every kind's filter for `mode` and installs the SIGSYS
/// handler. Threads then call [`apply`]. Off: nothing to do.
pub fn prepare(mode: Mode) -> Result<(), SeccompError> {
    if mode == Mode::Off || PROGRAMS.get().is_some() {
        return Ok(());
    }
    let mismatch = match mode {
        Mode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let mut programs = HashMap::new();
    for kind in ThreadKind::ALL {
        programs.insert(kind.name(), compile(kind, mismatch.clone(), mode)?);
    }
    install_sigsys_handler()?;
    let _ = PROGRAMS.set(programs);
    Ok(())
}

/// `kind`'s programs: its allow-list (calls outside it get `mismatch`)
/// and, except in log mode, the filter refusing its quiet calls.
fn compile(
    kind: ThreadKind,
    mismatch: SeccompAction,
    mode: Mode,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let name = kind.name();
    let build = |rules, mismatch, matched| {
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .and_then(BpfProgram::try_from)
            .map_err(|source| SeccompError::Compile { kind: name, source })
    };
    // The quiet filter first: installing the allow-list last means no
    // filter stands in the way of installing the other (prctl, seccomp).
    let mut programs = Vec::new();
    let quiet: std::collections::BTreeMap<i64, Vec<seccompiler::SeccompRule>> = kind
        .refused_quietly()
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect();
    if mode != Mode::Log && !quiet.is_empty() {
        let eacces = SeccompAction::Errno(libc::EACCES as u32);
        programs.push(build(quiet, SeccompAction::Allow, eacces)?);
    }
    programs.push(build(kind.rules(), mismatch, SeccompAction::Allow)?);
    Ok(programs)
}

/// Filters the calling thread as `kind` (for good: a filter cannot be
/// removed). Nothing happens when filters are off.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    THREAD.with(|t| t.set((kind.name(), kind.number())));
    let Some(programs) = PROGRAMS.get().and_then(|p| p.get(kind.name())) else {
        return Ok(());
    };
    for program in programs {
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })?;
    }
    Ok(())
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C"
    // function that only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// A fixed buffer to format the message in without allocating (a signal
/// handler may not).
struct Message {
    buf: [u8; 512],
    len: usize,
}

impl Message {
    fn push(&mut self, s: &str) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // The digits are ASCII.
        self.push(std::str::from_utf8(&digits[i..]).unwrap_or("?"));
    }
}

/// The system call a SIGSYS from seccomp is about: siginfo's `_sigsys`
/// member (`_call_addr` at offset 16, `_syscall` at 24 on x86_64).
fn denied_syscall(info: &libc::siginfo_t) -> i64 {
    // SAFETY: `info` is a whole siginfo_t (128 bytes); offset 24 holds an
    // int inside it.
    let nr = unsafe {
        (info as *const libc::siginfo_t)
            .cast::<u8>()
            .add(24)
            .cast::<i32>()
            .read_unaligned()
    };
    i64::from(nr)
}

/// The path an open or openat was refused for (the first 200 bytes), to
/// say what the thread wanted.
fn opened_path(nr: i64, ctx: *mut libc::c_void) -> Option<&'static str> {
    let reg = match nr {
        libc::SYS_open => libc::REG_RDI,
        libc::SYS_openat => libc::REG_RSI,
        _ => return None,
    };
    if ctx.is_null() {
        return None;
    }
    // SAFETY: the kernel passes the interrupted thread's ucontext; the
    // register holds the pointer the thread passed to the call, a C string
    // in its memory (read up to its NUL or 200 bytes, whichever is first).
    unsafe {
        let uc = &*ctx.cast::<libc::ucontext_t>();
        let p = uc.uc_mcontext.gregs[reg as usize] as *const u8;
        if p.is_null() {
            return None;
        }
        let mut len = 0;
        while len < 200 && *p.add(len) != 0 {
            len += 1;
        }
        std::str::from_utf8(std::slice::from_raw_parts(p, len)).ok()
    }
}

/// Says which call in which thread was refused; then makes the call fail
/// and wakes the control loop, or (in the control thread, or with no loop
/// to wake) restores the terminal and ends hvm. Only async-signal-safe
/// calls, all in every allow-list.
extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let mut m = Message {
        buf: [0; 512],
        len: 0,
    };
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let nr = unsafe { info.as_ref() }.map_or(-1, denied_syscall);
    let (kind, number) = THREAD.with(Cell::get);
    m.push("\r\nhvm: the ");
    m.push(kind);
    if let Some(n) = number {
        m.push(" ");
        m.push_number(u64::from(n));
    }
    m.push(" thread made a system call its seccomp filter does not allow: ");
    m.push(names::name(nr));
    m.push(" (");
    m.push_number(nr as u64);
    m.push(")");
    if let Some(path) = opened_path(nr, ctx) {
        m.push(" of ");
        m.push(path);
    }
    m.push("; hvm stops. This is a bug in hvm (please report it); --seccomp=log lets the VM run on and has the kernel log such calls.\n");
    // SAFETY: write is async-signal-safe; the buffer is live.
    unsafe { libc::write(libc::STDERR_FILENO, m.buf.as_ptr().cast(), m.len) };
    let wake = WAKE_FD.load(Ordering::SeqCst);
    if kind != ThreadKind::Control.name() && wake >= 0 && !ctx.is_null() {
        DENIED.store(true, Ordering::SeqCst);
        let one = 1u64.to_ne_bytes();
        // SAFETY: the kernel passes the interrupted thread's ucontext to an
        // SA_SIGINFO handler; RAX is the refused call's return value, set
        // to -EPERM so the thread sees a failed call. write is
        // async-signal-safe and `wake` an eventfd the control loop owns.
        unsafe {
            let uc = &mut *ctx.cast::<libc::ucontext_t>();
            uc.uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
            libc::write(wake, one.as_ptr().cast(), one.len());
        }
        return;
    }
    crate::vmm::terminal::restore_from_signal();
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(crate::vmm::exit::code::INTERNAL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for (mismatch, mode) in [
            (SeccompAction::Trap, Mode::On),
            (SeccompAction::Log, Mode::Log),
        ] {
            for kind in ThreadKind::ALL {
                let programs = compile(kind, mismatch.clone(), mode).unwrap();
                let quiet = mode == Mode::On && kind != ThreadKind::Control;
                assert_eq!(programs.len(), if quiet { 2 } else { 1 }, "{}", kind.name());
                assert!(programs.iter().all(|p| !p.is_empty()));
            }
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("on".parse::<Mode>(), Ok(Mode::On));
        assert_eq!("log".parse::<Mode>(), Ok(Mode::Log));
        assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
        assert!("yes".parse::<Mode>().is_err());
    }

    #[test]
    fn message_formats_numbers_without_allocating() {
        let mut m = Message {
            buf: [0; 512],
            len: 0,
        };
        m.push("nr ");
        m.push_number(0);
        m.push(" ");
        m.push_number(u64::MAX);
        assert_eq!(&m.buf[..m.len], b"nr 0 18446744073709551615");
    }

    /// A filter really stops a thread: in a child process (filters cannot
    /// be removed), a thread filtered as a writer calls getppid and the
    /// handler ends the child with code 1 and the message.
    #[test]
    fn a_denied_call_ends_the_process_with_its_name() {
        let mut pipe = [0; 2];
        // SAFETY: pipe fills two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only calls into code that does not take locks
        // another thread could hold (the test harness's threads are gone in
        // the child), then exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: replaces the child's stderr with the pipe.
            unsafe { libc::dup2(pipe[1], libc::STDERR_FILENO) };
            prepare(Mode::On).unwrap();
            apply(ThreadKind::Writer).unwrap();
            // Opening a file fails quietly...
            if std::fs::File::open("/proc/sys/vm/overcommit_memory").is_ok() {
                // SAFETY: only reached if the filter failed.
                unsafe { libc::_exit(98) };
            }
            // ...any other call outside the list ends the process.
            // SAFETY: a plain system call, refused by the filter.
            unsafe { libc::getppid() };
            // SAFETY: only reached if the filter failed.
            unsafe { libc::_exit(99) };
        }
        // SAFETY: our end of the pipe is no longer needed for writing.
        unsafe { libc::close(pipe[1]) };
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let mut out = vec![0u8; 4096];
        // SAFETY: reads into a live buffer.
        let n = unsafe { libc::read(pipe[0], out.as_mut_ptr().cast(), out.len()) };
        let text = String::from_utf8_lossy(&out[..n.max(0) as usize]).to_string();
        assert!(libc::WIFEXITED(status), "{status:#x} {text}");
        assert_eq!(libc::WEXITSTATUS(status), 1, "{text}");
        assert!(text.contains("the writer thread"), "{text}");
        assert!(text.contains("getppid (110)"), "{text}");
    }
}
