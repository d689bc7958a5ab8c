//! Why a VM stopped, and the exit code hvm reports for it. The codes are
//! part of hvm's interface (README.md lists them): scripts depend on them.

use crate::devices::events::GuestEvent;
use std::sync::{mpsc, Arc};
use vmm_sys_util::eventfd::EventFd;

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
    /// `hvm pause|resume|stop|info NAME`: no such VM, or it refused.
    pub const CONTROL: i32 = 6;
    /// `--timeout` expired.
    pub const TIMEOUT: i32 = 124;
    /// The guest crashed: triple fault, panic, KVM internal error, failed entry.
    pub const GUEST_CRASH: i32 = 125;
    /// Killed by signal N: 128 + N.
    pub const SIGNAL_BASE: i32 = 128;
    /// Ended at once by `hvm stop --force` (as if killed: 128 + SIGKILL).
    pub const FORCED_STOP: i32 = 137;
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
    /// `hvm stop --force`, or a graceful stop the guest did not honour in time.
    ForcedStop,
    GuestPanic,
    TripleFault {
        vcpu: u32,
    },
    InternalError {
        vcpu: u32,
        suberror: u32,
    },
    FailEntry {
        vcpu: u32,
        reason: u64,
    },
    VcpuFailed {
        vcpu: u32,
        message: String,
    },
    /// One of hvm's own threads (the device loop) cannot go on.
    HostFailed(String),
    /// A command's run: the guest powered off or reset without hvm's init
    /// reporting the command's exit status (init failed, or no init ran).
    NoVerdict,
}

impl ExitReason {
    /// hvm's process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::UserQuit => code::OK,
            ExitReason::DebugExit(n) => i32::from(*n),
            ExitReason::Timeout => code::TIMEOUT,
            ExitReason::Signal(n) => code::SIGNAL_BASE + n,
            ExitReason::ForcedStop => code::FORCED_STOP,
            ExitReason::GuestPanic
            | ExitReason::TripleFault { .. }
            | ExitReason::InternalError { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::NoVerdict => code::GUEST_CRASH,
            ExitReason::VcpuFailed { .. } | ExitReason::HostFailed(_) => code::INTERNAL,
        }
    }

    /// A one-line message for stderr when the exit is not a plain success.
    pub fn message(&self) -> Option<String> {
        Some(match self {
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::DebugExit(_) => return None,
            ExitReason::UserQuit => "console: quit (Ctrl-A x)".into(),
            ExitReason::Timeout => "timeout: the guest was still running; stopped it".into(),
            ExitReason::Signal(n) => format!("stopped by signal {n}"),
            ExitReason::ForcedStop => "stopped by `hvm stop` without the guest's consent".into(),
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
            ExitReason::HostFailed(message) => message.clone(),
            ExitReason::NoVerdict => "the guest stopped without reporting the command's exit \
                 status (its init failed or never ran: see the kernel's messages)"
                .into(),
        })
    }
}

/// How hvm's own threads (the device loop: Ctrl-A x) ask the control loop
/// to end the VM: a reason, and a wake-up of its epoll.
#[derive(Clone)]
pub struct ExitRequests {
    tx: mpsc::Sender<ExitReason>,
    wake: Arc<EventFd>,
}

impl ExitRequests {
    pub fn channel(wake: Arc<EventFd>) -> (ExitRequests, mpsc::Receiver<ExitReason>) {
        let (tx, rx) = mpsc::channel();
        (ExitRequests { tx, wake }, rx)
    }

    pub fn send(&self, reason: ExitReason) {
        let _ = self.tx.send(reason);
        let _ = self.wake.write(1);
    }
}

impl From<GuestEvent> for ExitReason {
    fn from(event: GuestEvent) -> ExitReason {
        match event {
            GuestEvent::PowerOff => ExitReason::PowerOff,
            GuestEvent::Reset => ExitReason::Reset,
            GuestEvent::DebugExit(code) => ExitReason::DebugExit(code),
            GuestEvent::Panic => ExitReason::GuestPanic,
        }
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
    fn guest_events_become_their_exit_reasons() {
        assert_eq!(ExitReason::from(GuestEvent::Panic).exit_code(), 125);
        assert_eq!(ExitReason::from(GuestEvent::DebugExit(9)).exit_code(), 9);
        assert_eq!(ExitReason::from(GuestEvent::PowerOff).exit_code(), 0);
        assert_eq!(ExitReason::ForcedStop.exit_code(), 137);
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
