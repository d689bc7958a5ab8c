//! hvm as the guest's init (PID 1) for `hvm run --rootfs DIR -- CMD`: the
//! host's directory is the guest's root over virtio-fs, so the very binary
//! that started the VM is there, at the same path, to be the kernel's
//! `init=`. It reads what to run from the kernel command line, mounts the
//! pseudo file systems and writable overlays, runs the command as the
//! caller, relays its stdin, stdout and stderr over the virtio consoles, and
//! reports its exit status through hvm's debug-exit port.
//!
//! Console protocol (the host side is the ordinary virtio-console device):
//! hvc0 carries the command's stdin (host to guest) and stdout (guest to
//! host) byte for byte; hvc1 its stderr; "hvm-eof N" arriving on hvc1
//! means "stdin has ended after N bytes" (the two consoles are separate
//! devices, so the count, not timing, says when all of it is in). An
//! interactive run (hvm's stdin is a terminal) makes
//! hvc0 the command's terminal instead, for all three.

mod network;

use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The kernel command-line key that carries the [`InitConfig`].
pub const CMDLINE_KEY: &str = "hvm.init";
/// hvm's debug-exit port: the byte written is hvm's exit code.
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// hvm's boot-marker port: "the consoles are ready, send stdin".
const BOOT_MARKER_PORT: u16 = 0xf5;
/// Directories a running system writes to: an overlay (the host's files
/// below, a tmpfs above) each, so the host is never changed through the root.
const OVERLAYS: [&str; 4] = ["/etc", "/var", "/home", "/root"];

/// A share to mount at a path in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub tag: String,
    pub path: String,
}

/// Who the command runs as, and the environment it gets: the caller's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub home: String,
    pub term: String,
    pub path: String,
}

/// What hvm's init is asked to do, from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    /// The command and its arguments; empty: a shell.
    pub command: Vec<String>,
    pub cwd: String,
    pub run_as: RunAs,
    /// hvm's stdin is a terminal: hvc0 is the command's terminal.
    pub interactive: bool,
    pub mounts: Vec<Mount>,
    /// eth0's configuration on a user-mode network (what passt gives).
    #[serde(default)]
    pub network: Option<crate::host_net::GuestIpv4>,
    /// Note each step in the kernel log (`hvm -vv`): where a boot's time
    /// goes after the kernel (timestamped with `printk.time=1`).
    #[serde(default)]
    pub trace: bool,
}

impl InitConfig {
    /// One command-line word: JSON, hex-encoded (no quoting can break it).
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(word: &str) -> Option<InitConfig> {
        if word.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..word.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(word.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Whether this process is a guest's init (PID 1) started by hvm.
pub fn is_guest_init() -> bool {
    std::process::id() == 1
}

/// Says what went wrong in the kernel log, at error level: a `quiet`
/// kernel prints that much on its console, whose last lines hvm shows
/// when a run fails.
fn say(message: &str) {
    kernel_log(3, message);
}

fn kernel_log(level: u8, message: &str) {
    if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = k.write_all(format!("<{level}>hvm-init: {message}\n").as_bytes());
    }
}

/// Notes a step in the kernel log (`dmesg`; notice level, which a `quiet`
/// console leaves out) when the host asked for a trace.
fn step(config: &InitConfig, what: &str) {
    if config.trace {
        kernel_log(5, what);
    }
}

/// A failure before the command could run: said in the kernel log and on
/// the command's stderr, then the VM powers off without a verdict (hvm
/// reports that, with the kernel's last lines).
fn give_up(message: &str) -> ! {
    say(message);
    if let Ok(mut e) = std::fs::OpenOptions::new().write(true).open("/dev/hvc1") {
        let _ = e.write_all(format!("hvm-init: {message}\n").as_bytes());
    }
    power_off()
}

fn power_off() -> ! {
    // SAFETY: syncs and powers off; PID 1 may.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Writes `value` to one of hvm's ports: through /dev/port
/// (CONFIG_DEVPORT), else with ioperm and `out` (CONFIG_X86_IOPL_IOPERM);
/// kernels have one or the other.
fn out_port(port: u16, value: u8) {
    use std::os::unix::fs::FileExt;
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/port") {
        if f.write_at(&[value], u64::from(port)).is_ok() {
            return;
        }
    }
    // SAFETY: port access granted by ioperm (we are root, PID 1).
    unsafe {
        if libc::ioperm(u64::from(port), 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") port, in("al") value);
        }
    }
}

/// Leaves through hvm's debug-exit port with `code` as hvm's exit code.
fn report(code: u8) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    out_port(DEBUG_EXIT_PORT, code);
    give_up("neither /dev/port nor ioperm reached hvm's debug-exit port (the kernel needs CONFIG_DEVPORT or CONFIG_X86_IOPL_IOPERM)")
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} has a NUL byte"));
    let (src, tgt, fs, dat) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                dat.as_ptr().cast()
            },
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// /sys, /dev and friends (`main` mounted /proc), then tmpfs and overlays
/// where a running system writes, then the shares at their paths.
fn mount_file_systems(config: &InitConfig) {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let base = [
        ("sysfs", "/sys", "sysfs", nodev | libc::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        ("tmpfs", "/run", "tmpfs", nodev, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", nodev, "mode=1777"),
    ];
    for (src, target, fs, flags, data) in base {
        if let Err(e) = mount(src, target, fs, flags, data) {
            // devtmpfs may be mounted by the kernel already.
            if !e.contains("busy") {
                say(&e);
            }
        }
    }
    for dir in ["/dev/pts", "/dev/shm", "/run/hvm"] {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    );
    let _ = mount("tmpfs", "/dev/shm", "tmpfs", nodev, "mode=1777");
    step(config, "pseudo file systems mounted");
    for dir in OVERLAYS {
        if !std::path::Path::new(dir).is_dir() {
            continue;
        }
        let name = dir.trim_start_matches('/');
        let (upper, work) = (
            format!("/run/hvm/{name}.up"),
            format!("/run/hvm/{name}.work"),
        );
        let _ = std::fs::create_dir_all(&upper);
        let _ = std::fs::create_dir_all(&work);
        let data = format!("lowerdir={dir},upperdir={upper},workdir={work}");
        if let Err(e) = mount("overlay", dir, "overlay", 0, &data) {
            say(&format!("{e}; {dir} stays read-only"));
        }
    }
    step(config, "overlays mounted");
    for m in &config.mounts {
        let _ = std::fs::create_dir_all(&m.path);
        if let Err(e) = mount(&m.tag, &m.path, "virtiofs", 0, "") {
            say(&e);
        }
    }
}

/// The config from /proc/cmdline.
fn read_config() -> Result<InitConfig, String> {
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let word = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(CMDLINE_KEY)?.strip_prefix('='))
        .ok_or_else(|| format!("no {CMDLINE_KEY}= on the kernel command line; hvm as init runs only under `hvm run --rootfs`"))?;
    InitConfig::decode(word).ok_or_else(|| format!("{CMDLINE_KEY}= is not a valid configuration"))
}

/// Raw mode: bytes pass unchanged in both directions.
fn make_raw(fd: RawFd) {
    // SAFETY: termios calls on an open terminal fd with a zeroed struct
    // that tcgetattr fills.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
    }
}

fn open_console(name: &str) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name)
        .map_err(|e| format!("{name}: {e}"))
}

/// The command, as the caller, in the caller's directory and environment.
fn command(config: &InitConfig) -> Command {
    let (program, args) = match config.command.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => ("/bin/sh".to_string(), Vec::new()),
    };
    let who = &config.run_as;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", &who.path)
        .env("HOME", &who.home)
        .env("USER", &who.user)
        .env("LOGNAME", &who.user)
        .env(
            "TERM",
            if config.interactive {
                &who.term
            } else {
                "dumb"
            },
        )
        .env("HVM_GUEST", "1");
    if std::path::Path::new(&config.cwd).is_dir() {
        cmd.current_dir(&config.cwd);
    } else {
        cmd.current_dir("/");
    }
    if who.uid != 0 {
        // std drops supplementary groups (setgroups) when root sets a uid.
        cmd.uid(who.uid).gid(who.gid);
    }
    cmd
}

/// The exit code a shell would give.
fn code_of(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// Entry point when hvm runs as the guest's PID 1. Never returns.
pub fn main() -> ! {
    // /proc first: the config is on the kernel command line.
    let _ = mount(
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    );
    let config = match read_config() {
        Ok(c) => c,
        Err(e) => give_up(&e),
    };
    step(&config, "config read");
    mount_file_systems(&config);
    step(&config, "file systems mounted");
    if let Some(ip) = &config.network {
        // Without it the command runs offline; it is told why on its stderr.
        if let Err(e) = network::configure(ip) {
            say(&format!("network: {e}"));
            if let Ok(mut err) = std::fs::OpenOptions::new().write(true).open("/dev/hvc1") {
                let _ = err.write_all(format!("hvm-init: network: {e}\n").as_bytes());
            }
        }
    }
    step(&config, "network configured");
    // SAFETY: a short NUL-free name.
    unsafe { libc::sethostname(c"hvm".as_ptr(), 3) };
    let code = if config.interactive {
        run_interactive(&config)
    } else {
        run_relayed(&config)
    };
    report(code)
}

/// hvc0 is the command's terminal (a shell with job control and editing).
fn run_interactive(config: &InitConfig) -> u8 {
    let tty = match open_console("/dev/hvc0") {
        Ok(t) => t,
        Err(e) => give_up(&e),
    };
    // Open: hvm may send what is typed.
    out_port(BOOT_MARKER_PORT, 1);
    let fd = tty.as_raw_fd();
    let mut cmd = command(config);
    let dup = |f: &File| f.try_clone().map(Stdio::from);
    let (Ok(i), Ok(o), Ok(e)) = (dup(&tty), dup(&tty), dup(&tty)) else {
        give_up("cannot duplicate /dev/hvc0");
    };
    cmd.stdin(i).stdout(o).stderr(e);
    // SAFETY: session and controlling terminal set up between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::ioctl(fd, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => wait_reaping(child.id() as libc::pid_t),
        Err(e) => {
            say(&format!("{}: {e}", program_name(config)));
            127
        }
    }
}

fn program_name(config: &InitConfig) -> String {
    config
        .command
        .first()
        .cloned()
        .unwrap_or_else(|| "/bin/sh".into())
}

/// Waits for `pid`, reaping every orphan meanwhile (PID 1's duty).
fn wait_reaping(pid: libc::pid_t) -> u8 {
    loop {
        let mut status = 0;
        // SAFETY: waits for any child; status is a live local.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid {
            return code_of(std::process::ExitStatus::from_raw(status));
        }
        if got < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
    }
}

/// Pipes to and from the command, relayed to the raw consoles.
fn run_relayed(config: &InitConfig) -> u8 {
    let (out_tty, err_tty) = match (open_console("/dev/hvc0"), open_console("/dev/hvc1")) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => give_up(&e),
    };
    make_raw(out_tty.as_raw_fd());
    make_raw(err_tty.as_raw_fd());
    // Raw from now on: hvm may send stdin.
    out_port(BOOT_MARKER_PORT, 1);
    step(config, "consoles ready");
    let mut cmd = command(config);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = (&err_tty)
                .write_all(format!("hvm-init: {}: {e}\n", program_name(config)).as_bytes());
            // SAFETY: waits for the consoles to pass everything on.
            unsafe { libc::tcdrain(err_tty.as_raw_fd()) };
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    step(config, "command started");
    let pid = child.id() as libc::pid_t;
    let stdin = child.stdin.take().map(OwnedFd::from);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let status = Relay {
        tty_out: &out_tty,
        tty_err: &err_tty,
        stdin,
        stdout,
        stderr,
        pending: Vec::new(),
        stdin_received: 0,
        control: Vec::new(),
        stdin_total: None,
        reap_all: true,
    }
    .run(pid);
    step(config, "command ended");
    // SAFETY: waits until the host has taken every byte written.
    unsafe {
        libc::tcdrain(out_tty.as_raw_fd());
        libc::tcdrain(err_tty.as_raw_fd());
    }
    status
}

/// The relay between the consoles and the command's pipes.
struct Relay<'a> {
    tty_out: &'a File,
    tty_err: &'a File,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// Input read from hvc0, not yet taken by the command.
    pending: Vec<u8>,
    /// Bytes of stdin read from hvc0 so far.
    stdin_received: u64,
    /// What hvc1 said so far (the host's "hvm-eof N" line).
    control: Vec<u8>,
    /// How many bytes stdin has in all, once the host said it ended.
    stdin_total: Option<u64>,
    /// PID 1 reaps every orphan; elsewhere (tests) only the command.
    reap_all: bool,
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an open fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: reads into a live buffer of the given length.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

impl Relay<'_> {
    fn run(mut self, pid: libc::pid_t) -> u8 {
        if let Some(fd) = &self.stdin {
            set_nonblocking(fd.as_raw_fd());
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut exit: Option<(u8, Instant)> = None;
        // Readable once the command has exited, so the poll below wakes for
        // that at once; without it (kernels before 5.3), the poll's tick.
        let exited = crate::pidfd::open(pid);
        loop {
            // Reap: the command, and any orphan.
            loop {
                let mut status = 0;
                let which = if self.reap_all { -1 } else { pid };
                // SAFETY: non-blocking wait; status is a live local.
                let got = unsafe { libc::waitpid(which, &mut status, libc::WNOHANG) };
                if got <= 0 {
                    break;
                }
                if got == pid {
                    exit = Some((
                        code_of(std::process::ExitStatus::from_raw(status)),
                        Instant::now(),
                    ));
                }
            }
            let outputs_done = self.stdout.is_none() && self.stderr.is_none();
            match exit {
                // Its output is all out (or a leftover background process
                // holds the pipes: do not wait for it forever).
                Some((code, at)) if outputs_done || at.elapsed() > Duration::from_secs(2) => {
                    return code;
                }
                _ => {}
            }
            self.settle_stdin();
            let mut fds = Vec::new();
            let want_input = self.pending.len() < 1 << 20 && self.stdin.is_some();
            fds.push(libc::pollfd {
                fd: if want_input {
                    self.tty_out.as_raw_fd()
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: if self.stdin_total.is_none() {
                    self.tty_err.as_raw_fd()
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            });
            let fd_of = |f: &Option<OwnedFd>| f.as_ref().map_or(-1, |f| f.as_raw_fd());
            fds.push(libc::pollfd {
                fd: if self.pending.is_empty() {
                    -1
                } else {
                    fd_of(&self.stdin)
                },
                events: libc::POLLOUT,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: fd_of(&self.stdout),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: fd_of(&self.stderr),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: if exit.is_none() { fd_of(&exited) } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: polls a live array of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, REAP_TICK) };
            if n <= 0 {
                continue;
            }
            let ready = |i: usize| fds[i].revents != 0;
            if ready(0) {
                let got = read_some(self.tty_out.as_raw_fd(), &mut buf);
                if got > 0 {
                    self.pending.extend_from_slice(&buf[..got as usize]);
                    self.stdin_received += got as u64;
                }
            }
            if ready(1) {
                let got = read_some(self.tty_err.as_raw_fd(), &mut buf);
                if got > 0 {
                    self.control.extend_from_slice(&buf[..got as usize]);
                    self.stdin_total = parse_eof(&self.control);
                }
            }
            if ready(2) {
                self.feed_stdin();
            }
            if ready(3) {
                self.stdout = copy_out(self.stdout.take(), self.tty_out, &mut buf);
            }
            if ready(4) {
                self.stderr = copy_out(self.stderr.take(), self.tty_err, &mut buf);
            }
        }
    }

    fn feed_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.pending.clear();
            return;
        };
        // SAFETY: writes from a live buffer.
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                self.pending.as_ptr().cast(),
                self.pending.len(),
            )
        };
        if n > 0 {
            self.pending.drain(..n as usize);
        } else if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
        {
            // The command closed its stdin: the rest has nowhere to go.
            self.stdin = None;
            self.pending.clear();
        }
    }

    /// Once every byte of stdin arrived and went in, the command's stdin
    /// is closed (it sees EOF).
    fn settle_stdin(&mut self) {
        if let Some(total) = self.stdin_total {
            if self.pending.is_empty() && self.stdin_received >= total {
                self.stdin = None;
            }
        }
    }
}

/// How often (ms) the relay looks for exited processes when nothing else
/// wakes it: orphans, and the command itself where there is no pidfd (its
/// pipes close before it can be reaped: without a pidfd, every run would
/// end up to this much late).
const REAP_TICK: libc::c_int = 50;

/// The byte count in the host's "hvm-eof N\n", once a whole line is in.
fn parse_eof(control: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(control).ok()?;
    let (line, _) = text.split_once('\n')?;
    line.strip_prefix("hvm-eof ")?.trim().parse().ok()
}

/// Copies what `from` has to `to`; None once `from` reached its end.
fn copy_out(from: Option<OwnedFd>, to: &File, buf: &mut [u8]) -> Option<OwnedFd> {
    let fd = from?;
    let got = read_some(fd.as_raw_fd(), buf);
    if got <= 0 {
        return None;
    }
    let _ = (&*to).write_all(&buf[..got as usize]);
    Some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_config_survives_the_kernel_command_line() {
        let c = InitConfig {
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo \"a b\"; exit 7 # ünïcode".into(),
            ],
            cwd: "/home/me".into(),
            run_as: RunAs {
                uid: 1000,
                gid: 100,
                user: "me".into(),
                home: "/home/me".into(),
                term: "xterm".into(),
                path: "/usr/bin:/bin".into(),
            },
            interactive: false,
            mounts: vec![Mount {
                tag: "out".into(),
                path: "/home/me/out".into(),
            }],
            network: Some(crate::host_net::GuestIpv4 {
                address: "192.0.2.2".parse().unwrap(),
                prefix: 24,
                gateway: "192.0.2.1".parse().unwrap(),
                dns: vec![],
            }),
            trace: true,
        };
        let word = c.encode();
        assert!(
            word.bytes().all(|b| b.is_ascii_hexdigit()),
            "one plain word"
        );
        assert_eq!(InitConfig::decode(&word), Some(c));
        assert_eq!(InitConfig::decode("abc"), None);
        assert_eq!(InitConfig::decode("zz"), None);
    }

    #[test]
    fn the_end_of_stdin_says_how_much_there_was() {
        assert_eq!(parse_eof(b"hvm-eof 300000\n"), Some(300_000));
        assert_eq!(parse_eof(b"hvm-eof 30"), None, "not a whole line yet");
        assert_eq!(parse_eof(b"garbage\n"), None);
    }

    #[test]
    fn exit_codes_are_a_shells() {
        use std::process::ExitStatus;
        assert_eq!(code_of(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(code_of(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(code_of(ExitStatus::from_raw(libc::SIGSEGV)), 139);
    }

    #[test]
    #[allow(clippy::zombie_processes)] // The relay reaps it (waitpid).
    fn the_relay_passes_stdin_and_splits_stdout_from_stderr() {
        // Sockets stand in for the consoles; the command is a real shell.
        use std::os::unix::net::UnixStream;
        let (out_host, out_guest) = UnixStream::pair().unwrap();
        let (err_host, err_guest) = UnixStream::pair().unwrap();
        let out_tty = File::from(OwnedFd::from(out_guest));
        let err_tty = File::from(OwnedFd::from(err_guest));
        let mut child = Command::new("/bin/sh")
            .args(["-c", "tr a-z A-Z; echo oops >&2; exit 3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        // The end of stdin may come first: the count makes the relay wait.
        (&err_host).write_all(b"hvm-eof 7\n").unwrap();
        (&out_host).write_all(b"hello\x00\xff").unwrap();
        let code = Relay {
            tty_out: &out_tty,
            tty_err: &err_tty,
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
            pending: Vec::new(),
            stdin_received: 0,
            control: Vec::new(),
            stdin_total: None,
            reap_all: false,
        }
        .run(pid);
        assert_eq!(code, 3);
        drop((out_tty, err_tty));
        let mut out = Vec::new();
        (&out_host).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"HELLO\x00\xff");
        let mut err = String::new();
        (&err_host).read_to_string(&mut err).unwrap();
        assert_eq!(err, "oops\n");
    }
}
