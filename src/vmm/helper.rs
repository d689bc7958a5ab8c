//! What serves devices from beside the VM and must go with it: helper
//! programs (virtiofsd for a share, passt for a user-mode network), started
//! with their stderr turned into hvm's log, killed if hvm dies however it
//! dies, stopped and reaped when the VM ends; and socket files hvm made
//! (vsock), removed then.

use crate::vmm::seccomp::{self, ThreadKind};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many of a helper's last stderr lines an error quotes.
const KEPT_LINES: usize = 8;

/// A running helper process, stopped and reaped when dropped.
pub struct Helper {
    /// What it is, for messages: "virtiofsd data", "passt net0".
    name: String,
    child: Child,
    /// hvm's end of its connection: shutting it down is the polite way to
    /// end it (both virtiofsd and passt then exit by themselves).
    connection: Option<UnixStream>,
    /// Set once hvm ends it: what it says while exiting is only debug.
    stopping: Arc<AtomicBool>,
    reaped: bool,
    /// How it ended, once reaped (when the exit status could be read).
    exit_status: Option<ExitStatus>,
    /// Its last stderr lines, for error messages.
    last_lines: Arc<Mutex<VecDeque<String>>>,
}

/// Finds `program` on PATH, then in `also` (full paths).
pub fn find_program(program: &str, also: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(also.iter().map(PathBuf::from))
        .find(|p| is_executable(p))
}

/// Whether `p` is a file someone may execute.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Helper {
    /// Spawns `cmd` (stdin and stdout closed, stderr logged line by line;
    /// lines `benign` accepts are debug, the rest warnings). `connection`
    /// is hvm's end of the socket the helper serves.
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        connection: Option<UnixStream>,
        benign: fn(&str) -> bool,
    ) -> std::io::Result<Helper> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: runs in the child between fork and exec; one system call.
        unsafe {
            cmd.pre_exec(|| {
                // If hvm dies, however it dies, the helper goes too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        // Its stderr closing is not proof it ended (a wrapper script may
        // send it elsewhere): the log reader waits for this to say so.
        let exited = crate::pidfd::open(child.id() as libc::pid_t);
        let last_lines = Arc::new(Mutex::new(VecDeque::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        if let Some(stderr) = child.stderr.take() {
            let kept = last_lines.clone();
            let quiet = stopping.clone();
            let label = name.to_string();
            let spawned = std::thread::Builder::new()
                .name("hvm-helper-log".into())
                .spawn(move || {
                    // A log reader needs no privileges, whoever hvm is.
                    let _ = crate::vmm::privileges::drop_own_capabilities();
                    if let Err(e) = seccomp::apply(ThreadKind::Writer) {
                        log::error!("{label}: {e}; its messages are not shown");
                        return;
                    }
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        if quiet.load(Ordering::Relaxed) || benign(&line) {
                            log::debug!("{label}: {line}");
                        } else {
                            log::warn!("{label}: {line}");
                        }
                        let mut kept = crate::devices::bus::lock(&kept);
                        if kept.len() == KEPT_LINES {
                            kept.pop_front();
                        }
                        kept.push_back(line);
                    }
                    note_end(exited.as_ref(), &quiet, &label);
                });
            if let Err(e) = spawned {
                log::warn!("{name}: its messages are lost: {e}");
            }
        }
        Ok(Helper {
            name: name.to_string(),
            child,
            connection,
            stopping,
            reaped: false,
            exit_status: None,
            last_lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What went wrong on the helper's side, for an error message: its exit
    /// status if it has ended (waiting a moment for it), and its last lines.
    pub fn explain(&mut self) -> String {
        self.wait_exit(Duration::from_millis(500));
        // Give the log thread a moment to catch the last lines.
        std::thread::sleep(Duration::from_millis(20));
        let lines: Vec<String> = crate::devices::bus::lock(&self.last_lines)
            .iter()
            .cloned()
            .collect();
        let mut text = match self.exit_status {
            Some(s) => format!("{} {s}", self.name),
            None => format!("{} still runs", self.name),
        };
        if !lines.is_empty() {
            text.push_str(": ");
            text.push_str(&lines.join(" / "));
        }
        text
    }

    /// Stops the helper and reaps it: the connection is shut down (it exits
    /// by itself), then SIGTERM, then SIGKILL, `grace` apart.
    pub fn stop(&mut self, grace: Duration) {
        if self.reaped {
            return;
        }
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(c) = self.connection.take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if self.wait_exit(grace) {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if self.wait_exit(grace) {
            return;
        }
        log::warn!("{} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Waits up to `limit` for the helper to end; true if it has.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    log::debug!("{} ended ({status})", self.name);
                    self.reaped = true;
                    self.exit_status = Some(status);
                    return true;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => return false,
                Err(_) => {
                    self.reaped = true;
                    return true;
                }
            }
        }
    }
}

/// After a helper's stderr closed: waits until it has really ended (its
/// stderr may have been sent elsewhere, by a wrapper script, while it runs
/// on), then says so, unless hvm was stopping it: what it serves is gone.
/// True if it said so.
fn note_end(exited: Option<&OwnedFd>, stopping: &AtomicBool, label: &str) -> bool {
    if let Some(fd) = exited {
        crate::pidfd::wait(fd);
    }
    if stopping.load(Ordering::Relaxed) {
        return false;
    }
    log::error!("{label} has ended on its own");
    true
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// Everything beside the VM: the control loop stops it once no guest can
/// reach it, and dropping it does the same on every other way out.
#[derive(Default)]
pub struct Companions {
    pub helpers: Vec<Helper>,
    /// Socket files hvm created, removed at the end.
    pub socket_files: Vec<PathBuf>,
}

impl Companions {
    pub fn stop(&mut self, grace: Duration) {
        for h in &mut self.helpers {
            h.stop(grace);
        }
        for f in self.socket_files.drain(..) {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for Companions {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_is_stopped_and_its_last_words_are_kept() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo first >&2; echo second >&2; exit 3"]);
        let mut h = Helper::spawn("test helper", &mut cmd, None, |_| true).unwrap();
        let text = h.explain();
        assert!(text.starts_with("test helper exit status: 3"), "{text}");
        assert!(text.contains("first / second"), "{text}");
    }

    #[test]
    fn a_helper_is_said_to_have_ended_only_once_it_has() {
        // Its stderr is long closed (as a wrapper sending it elsewhere
        // would), it runs on, then exits while hvm still needs it.
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let exited = crate::pidfd::open(child.id() as libc::pid_t);
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        let noted = std::thread::spawn(move || note_end(exited.as_ref(), &flag, "test helper"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!noted.is_finished(), "said to have ended while it runs");
        child.kill().unwrap();
        assert!(noted.join().unwrap(), "its end went unsaid");
        let _ = child.wait();
        // Ended by hvm: nothing to say.
        stopping.store(true, Ordering::Relaxed);
        assert!(!note_end(None, &stopping, "test helper"));
    }

    #[test]
    fn a_helper_that_ignores_sigterm_is_killed() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; while :; do sleep 1; done"]);
        let mut h = Helper::spawn("stubborn", &mut cmd, None, |_| true).unwrap();
        let pid = h.pid() as libc::pid_t;
        let t = Instant::now();
        h.stop(Duration::from_millis(50));
        assert!(t.elapsed() < Duration::from_secs(2));
        // SAFETY: signal 0 only asks whether the process exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "reaped");
    }

    #[test]
    fn programs_are_found_on_path_or_where_told() {
        assert!(find_program("sh", &[]).is_some());
        assert!(find_program("no-such-helper-anywhere", &[]).is_none());
        assert_eq!(
            find_program("no-such-helper-anywhere", &["/bin/sh"]),
            Some(PathBuf::from("/bin/sh"))
        );
    }
}
