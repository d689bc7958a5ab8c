//! The allow-lists: what each kind of hvm thread may ask of the kernel
//! once it runs. Found by tracing every test (tier 1 and the lab's Linux
//! guests) and by reading the code each thread runs; see docs/security.md.

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::BTreeMap;

/// The kinds of thread hvm runs while a guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the control loop, the control socket, gdb, signals,
    /// the helpers' lives, and every way out.
    Control,
    /// One per vCPU: KVM_RUN and the devices on its exits.
    Vcpu(u32),
    /// The device loop: virtio queues, host I/O, stdin.
    Devices,
    /// Console writers and helper-log readers: move bytes, nothing more.
    Writer,
}

/// Calls every thread makes: memory, threads' own housekeeping, time,
/// logging to stderr, and what the SIGSYS handler needs (write, ioctl
/// for the terminal, exit_group).
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_lseek,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_statx,
    libc::SYS_write,
    libc::SYS_writev,
];

/// Socket and file I/O on descriptors hvm already holds.
const STREAM_IO: &[i64] = &[
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
];

/// The vCPU thread beyond KVM_RUN: virtio activation and reset run on
/// it (vhost-user messages to virtiofsd, eventfds for queues).
const VCPU: &[i64] = &[
    libc::SYS_read,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_eventfd2,
    libc::SYS_epoll_ctl,
];

/// The device loop: block I/O, accepting and opening vsock streams.
const DEVICES: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_fallocate,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_eventfd2,
];

/// The control loop and the way out: claim the control socket (its
/// directory, lock file and listener: the filter is on before the guest's
/// first instruction, the claim comes after), stop helpers (kill, wait),
/// remove sockets and their directory, answer the control socket and gdb,
/// kick vCPUs (tgkill), restore the terminal, report.
const CONTROL: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_chmod,
    libc::SYS_connect,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_ftruncate,
    libc::SYS_listen,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_access,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_flock,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    // `--stats`: hvm's and its helpers' CPU time.
    libc::SYS_getrusage,
    libc::SYS_getuid,
    libc::SYS_kill,
    libc::SYS_openat,
    libc::SYS_pread64,
    libc::SYS_prctl,
    libc::SYS_readlink,
    // The control socket appears private: bound under a temporary name,
    // made 0600, renamed (api.rs).
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_rmdir,
    libc::SYS_rt_sigaction,
    libc::SYS_setsockopt,
    libc::SYS_tgkill,
    libc::SYS_timerfd_settime,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_wait4,
    libc::SYS_waitid,
];

/// Calls that fail with EACCES instead of ending hvm, for threads that
/// have no business opening files but run library code that tries: glibc's
/// malloc opens /proc/sys/vm/overcommit_memory the first time it shrinks a
/// thread's heap, and copes with a refusal (it then frees with madvise).
const REFUSED_QUIETLY: &[i64] = &[libc::SYS_open, libc::SYS_openat];

/// ioctl request types hvm uses after start: KVM's (0xAE) and the
/// terminal/socket/tap group 'T' (0x54: TCGETS, TCSETS, TIOCGWINSZ,
/// FIONBIO, FIOCLEX, TUNSETOFFLOAD). Anything else (block devices,
/// network configuration) is refused.
const IOCTL_TYPES: &[u64] = &[0xae00, 0x5400];

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Control,
        ThreadKind::Vcpu(0),
        ThreadKind::Devices,
        ThreadKind::Writer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Control => "control",
            ThreadKind::Vcpu(_) => "vCPU",
            ThreadKind::Devices => "device",
            ThreadKind::Writer => "writer",
        }
    }

    pub fn number(self) -> Option<u32> {
        match self {
            ThreadKind::Vcpu(id) => Some(id),
            _ => None,
        }
    }

    /// Calls this kind's second filter answers with EACCES (they pass the
    /// first, which would otherwise end hvm).
    pub fn refused_quietly(self) -> &'static [i64] {
        match self {
            ThreadKind::Control => &[],
            _ => REFUSED_QUIETLY,
        }
    }

    /// The allow-list as seccompiler rules: an empty rule list allows the
    /// call whatever its arguments.
    pub fn rules(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        let lists: &[&[i64]] = match self {
            ThreadKind::Control => &[COMMON, STREAM_IO, CONTROL],
            ThreadKind::Vcpu(_) => &[COMMON, VCPU],
            ThreadKind::Devices => &[COMMON, STREAM_IO, DEVICES],
            // poll: a helper's log reader waits on its pidfd once its
            // stderr closed. set*id: glibc makes every thread of the
            // process change its ids when the main thread drops root
            // (privileges.rs), and the helpers' log readers exist by then.
            ThreadKind::Writer => &[
                COMMON,
                &[
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    libc::SYS_read,
                    libc::SYS_setgroups,
                    libc::SYS_setresgid,
                    libc::SYS_setresuid,
                ],
            ],
        };
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = lists
            .iter()
            .flat_map(|l| l.iter())
            .chain(self.refused_quietly())
            .map(|&nr| (nr, Vec::new()))
            .collect();
        rules.insert(libc::SYS_ioctl, ioctl_rules());
        if matches!(self, ThreadKind::Devices | ThreadKind::Control) {
            // vsock connects to host programs, and the control socket
            // listens, over Unix sockets only.
            rules.insert(libc::SYS_socket, vec![arg_is(0, libc::AF_UNIX as u64)]);
        }
        rules
    }
}

fn ioctl_rules() -> Vec<SeccompRule> {
    IOCTL_TYPES
        .iter()
        .map(|&t| {
            rule(SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(0xff00),
                t,
            ))
        })
        .collect()
}

fn arg_is(index: u8, value: u64) -> SeccompRule {
    rule(SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    ))
}

fn rule(condition: Result<SeccompCondition, seccompiler::BackendError>) -> SeccompRule {
    // The conditions above are constant and valid (argument index below 6).
    let condition = condition.expect("a valid seccomp condition");
    SeccompRule::new(vec![condition]).expect("a rule with one condition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_differ_where_it_matters() {
        let vcpu = ThreadKind::Vcpu(0).rules();
        assert!(vcpu.contains_key(&libc::SYS_ioctl));
        assert!(
            !vcpu.contains_key(&libc::SYS_clone3),
            "a vCPU never starts threads"
        );
        assert_eq!(
            ThreadKind::Vcpu(0).refused_quietly(),
            [libc::SYS_open, libc::SYS_openat],
            "a vCPU opens no files"
        );
        assert!(!vcpu.contains_key(&libc::SYS_execve));
        let writer = ThreadKind::Writer.rules();
        assert!(!writer.contains_key(&libc::SYS_socket));
        for kind in ThreadKind::ALL {
            let r = kind.rules();
            for nr in [
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_clone3,
                libc::SYS_mount,
            ] {
                assert!(!r.contains_key(&nr), "{} allows {nr}", kind.name());
            }
        }
    }
}
