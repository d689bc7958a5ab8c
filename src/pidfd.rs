//! Processes as descriptors: a pidfd polls readable once its process has
//! exited, so a poll loop can wait for an exit beside its other inputs
//! instead of checking on a timer.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A pidfd for `pid`, or None where the kernel has none (before Linux
/// 5.3) or the process is gone; callers then fall back to looking now and
/// then.
pub fn open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; a descriptor comes back or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Blocks until the process behind `pidfd` has exited (signals that
/// interrupt the wait do not end it).
pub fn wait(pidfd: &OwnedFd) {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    while unsafe { libc::poll(&mut p, 1, -1) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn a_pidfd_says_its_process_exited_before_it_is_reaped() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "exit 5"])
            .spawn()
            .unwrap();
        let fd = super::open(child.id() as libc::pid_t).expect("pidfd_open (Linux 5.3+)");
        super::wait(&fd);
        // Waited for, not reaped: the exit status is still there.
        assert_eq!(child.wait().unwrap().code(), Some(5));
    }
}
