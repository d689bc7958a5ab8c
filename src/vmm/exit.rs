//! Why a VM stopped, and the exit code hvm reports for it. The codes are
//! part of hvm's interface (README.md lists them): scripts depend on them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// Exit codes hvm itself uses. A guest's debug-exit byte is passed through as is.
pub mod code {
    /// Guest powered off or reset, or the user quit the console.
    pub const OK: i32 = 0;
    /// Anything unexpected inside hvm.
    pub const INTERNAL: i32 = 1;
    /// Bad command-line usage (clap's convention).
    pub const USAGE: i32 = 2;
    /// The VM spec is invalid.
    pub const BAD_SPEC: i32 = 3;
    /// The kernel, initrd or another input file is missing or unusable.
    pub const BAD_INPUT: i32 = 4;
    /// KVM is unavailable, or refused to build the VM.
    pub const KVM: i32 = 5;
    /// `--timeout` expired.
    pub const TIMEOUT: i32 = 124;
    /// The guest crashed: triple fault, panic, KVM internal error, failed entry.
    pub const GUEST_CRASH: i32 = 125;
    /// Killed by signal N: 128 + N.
    pub const SIGNAL_BASE: i32 = 128;
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    PowerOff,
    Reset,
    DebugExit(u8),
    Timeout,
    Signal(i32),
    UserQuit,
    GuestPanic,
    TripleFault { vcpu: u32 },
    InternalError { vcpu: u32, suberror: u32 },
    FailEntry { vcpu: u32, reason: u64 },
    VcpuFailed { vcpu: u32, message: String },
}

impl ExitReason {
    /// hvm's process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::UserQuit => code::OK,
            ExitReason::DebugExit(n) => i32::from(*n),
            ExitReason::Timeout => code::TIMEOUT,
            ExitReason::Signal(n) => code::SIGNAL_BASE + n,
            ExitReason::GuestPanic
            | ExitReason::TripleFault { .. }
            | ExitReason::InternalError { .. }
            | ExitReason::FailEntry { .. } => code::GUEST_CRASH,
            ExitReason::VcpuFailed { .. } => code::INTERNAL,
        }
    }

    /// A one-line message for stderr when the exit is not a plain success.
    pub fn message(&self) -> Option<String> {
        Some(match self {
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::DebugExit(_) => return None,
            ExitReason::UserQuit => "console: quit (Ctrl-A x)".into(),
            ExitReason::Timeout => "timeout: the guest was still running; stopped it".into(),
            ExitReason::Signal(n) => format!("stopped by signal {n}"),
            ExitReason::GuestPanic => "guest kernel panicked (pvpanic)".into(),
            ExitReason::TripleFault { vcpu } => {
                format!("guest crashed: triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::InternalError { vcpu, suberror } => format!(
                "guest crashed: KVM internal error on vCPU {vcpu} (suberror {suberror}); \
                 the host KVM could not emulate an instruction"
            ),
            ExitReason::FailEntry { vcpu, reason } => format!(
                "guest crashed: KVM could not enter vCPU {vcpu} (hardware entry failure reason {reason:#x})"
            ),
            ExitReason::VcpuFailed { vcpu, message } => format!("vCPU {vcpu} failed: {message}"),
        })
    }
}

/// How devices and vCPU threads ask the VM to stop. The first reason wins;
/// once one is sent, vCPUs stop running guest code at their next exit.
#[derive(Clone)]
pub struct ExitSender {
    tx: mpsc::Sender<ExitReason>,
    stopping: Arc<AtomicBool>,
}

impl ExitSender {
    pub fn channel() -> (ExitSender, mpsc::Receiver<ExitReason>) {
        let (tx, rx) = mpsc::channel();
        (
            ExitSender {
                tx,
                stopping: Arc::new(AtomicBool::new(false)),
            },
            rx,
        )
    }

    pub fn send(&self, reason: ExitReason) {
        self.stopping.store(true, Ordering::SeqCst);
        // The receiver is gone only while the process is exiting anyway.
        let _ = self.tx.send(reason);
    }

    /// Whether the VM has been asked to stop.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::DebugExit(0).exit_code(), 0);
        assert_eq!(ExitReason::DebugExit(77).exit_code(), 77);
        assert_eq!(ExitReason::Timeout.exit_code(), 124);
        assert_eq!(ExitReason::TripleFault { vcpu: 0 }.exit_code(), 125);
        assert_eq!(ExitReason::GuestPanic.exit_code(), 125);
        assert_eq!(
            ExitReason::InternalError {
                vcpu: 1,
                suberror: 1
            }
            .exit_code(),
            125
        );
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
        assert_eq!(ExitReason::Signal(2).exit_code(), 130);
    }

    #[test]
    fn sending_a_reason_marks_the_vm_stopping() {
        let (tx, rx) = ExitSender::channel();
        let other = tx.clone();
        assert!(!other.stopping());
        tx.send(ExitReason::Reset);
        assert!(other.stopping());
        assert_eq!(rx.try_recv().unwrap(), ExitReason::Reset);
    }

    #[test]
    fn only_unusual_exits_print_a_message() {
        assert!(ExitReason::PowerOff.message().is_none());
        assert!(ExitReason::DebugExit(3).message().is_none());
        assert!(ExitReason::Timeout.message().unwrap().contains("timeout"));
        assert!(ExitReason::TripleFault { vcpu: 2 }
            .message()
            .unwrap()
            .contains("vCPU 2"));
    }
}
