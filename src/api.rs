//! The control socket's protocol and its client side: where running VMs
//! keep their sockets, how a name is claimed, and the requests `hvm ps`,
//! `pause`, `resume`, `stop` and `info` send. One JSON object per line,
//! request then reply (docs/control.md), so any program can drive hvm.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest request line the VM reads; anything longer is refused.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client waits for a reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the control directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid VM name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    BadName { name: String },
    #[error("a VM named {name:?} is already running{holder}; pick another with --name")]
    NameTaken { name: String, holder: String },
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no running VM named {name:?} (hvm ps lists them)")]
    NoSuchVm { name: String },
    #[error("cannot talk to VM {name:?}: {source}")]
    Talk {
        name: String,
        source: std::io::Error,
    },
    #[error("VM {name:?} sent a reply hvm does not understand: {detail}")]
    BadReply { name: String, detail: String },
    #[error("VM {name:?}: {message}")]
    Refused { name: String, message: String },
}

/// What a client asks of a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// State, resources and devices.
    Info,
    /// Every vCPU out of KVM_RUN, devices idle.
    Pause,
    Resume,
    /// Press the ACPI power button and give the guest `timeout_ms` (default
    /// 30 s) to power off; `force` ends the VM at once instead.
    Stop {
        #[serde(default)]
        force: bool,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// A reply: `{"ok": true, ...}` with the request's data, or
/// `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<VmInfo>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            error: None,
            info: None,
        }
    }
    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(message.into()),
            info: None,
        }
    }
    pub fn with_info(info: VmInfo) -> Reply {
        Reply {
            info: Some(info),
            ..Reply::ok()
        }
    }
}

/// A running VM as `hvm ps` and `hvm info` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub pid: u32,
    /// "running", "paused" or "stopping".
    pub state: String,
    pub uptime_ms: u64,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub spec: String,
    #[serde(default)]
    pub vcpu_states: Vec<String>,
    #[serde(default)]
    pub devices: Vec<DeviceInfo>,
}

/// One device of the VM's registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: u32,
    pub label: String,
    /// "pio" or "mmio".
    pub bus: String,
    pub base: u64,
    pub len: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irq: Option<u32>,
}

/// The folder of control sockets: `$XDG_RUNTIME_DIR/hvm`, `/run/hvm` for
/// root, otherwise `/tmp/hvm-UID`. `HVM_RUNTIME_DIR` overrides (tests).
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HVM_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("hvm");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        PathBuf::from("/run/hvm")
    } else {
        PathBuf::from(format!("/tmp/hvm-{uid}"))
    }
}

/// Checks a VM name (it becomes a file name).
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadName { name: name.into() })
    }
}

/// A name made from a spec file's name: its stem, with anything a name
/// cannot hold replaced by '-'.
pub fn name_from_spec(spec: &Path) -> String {
    let stem = spec
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    name = name.trim_start_matches(['.', '-']).to_string();
    if name.is_empty() {
        name = "vm".into();
    }
    name
}

fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Where [`bind_private`] binds before the rename.
fn temporary_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.new"))
}

/// Binds a socket that appears at `socket` already private (0600): bound
/// under a temporary name (`.NAME.new`, which `list` ignores and the
/// holder of NAME's lock alone uses), where it gets the process's umask,
/// then made private and renamed, so no one ever finds it open to others.
fn bind_private(dir: &Path, name: &str, socket: &Path) -> std::io::Result<UnixListener> {
    let temporary = temporary_path(dir, name);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    let ready = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, socket));
    if let Err(e) = ready {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(listener)
}

fn lock_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

/// Makes the runtime directory (0700) if it is not there.
pub fn ensure_dir(dir: &Path) -> Result<(), ApiError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ApiError::RuntimeDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Takes `file`'s lock without waiting; false when another process has it.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A claimed name: the lock (held for the VM's life; the kernel drops it
/// if hvm dies) and the listening socket. Dropping it removes both files.
pub struct ControlSocket {
    pub name: String,
    pub listener: UnixListener,
    socket: PathBuf,
    lock: PathBuf,
    _lock_file: File,
}

impl ControlSocket {
    /// Claims `name`, or with `unique`, the first free of `name`, `name-2`, ...
    pub fn claim(name: &str, unique: bool) -> Result<ControlSocket, ApiError> {
        check_name(name)?;
        let dir = runtime_dir();
        ensure_dir(&dir)?;
        for n in 1..=1000u32 {
            let candidate = if n == 1 {
                name.to_string()
            } else {
                format!("{name}-{n}")
            };
            match Self::claim_one(&dir, &candidate)? {
                Some(socket) => return Ok(socket),
                None if unique => continue,
                None => {
                    let holder = std::fs::read_to_string(lock_path(&dir, &candidate))
                        .ok()
                        .and_then(|pid| pid.trim().parse::<u32>().ok())
                        .map(|pid| format!(" (pid {pid})"))
                        .unwrap_or_default();
                    return Err(ApiError::NameTaken {
                        name: candidate,
                        holder,
                    });
                }
            }
        }
        Err(ApiError::NameTaken {
            name: name.into(),
            holder: " (and so are the next 999 variants)".into(),
        })
    }

    fn claim_one(dir: &Path, name: &str) -> Result<Option<ControlSocket>, ApiError> {
        let lock = lock_path(dir, name);
        let bind_err = |source| ApiError::Bind {
            path: lock.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags_cloexec()
            .open(&lock)
            .map_err(bind_err)?;
        if !try_lock(&file) {
            return Ok(None);
        }
        // The holder's pid, for the message a second VM of this name gets.
        file.set_len(0)
            .and_then(|_| write!(file, "{}", std::process::id()))
            .map_err(bind_err)?;
        let socket = socket_path(dir, name);
        // (Whatever is there was left by a VM that died, and the rename
        // in bind_private replaces it: we hold the lock.)
        let listener = bind_private(dir, name, &socket).map_err(|source| ApiError::Bind {
            path: socket.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ApiError::Bind {
                path: socket.clone(),
                source,
            })?;
        Ok(Some(ControlSocket {
            name: name.into(),
            listener,
            socket,
            lock,
            _lock_file: file,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// O_CLOEXEC for the lock file (child processes must not inherit the lock).
trait CloexecExt {
    fn custom_flags_cloexec(&mut self) -> &mut Self;
}

impl CloexecExt for std::fs::OpenOptions {
    fn custom_flags_cloexec(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_CLOEXEC)
    }
}

/// Sends one request to VM `name` and reads its reply.
pub fn call(name: &str, request: &Request) -> Result<Reply, ApiError> {
    check_name(name)?;
    let path = socket_path(&runtime_dir(), name);
    let talk = |source| ApiError::Talk {
        name: name.into(),
        source,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ApiError::NoSuchVm { name: name.into() })
        }
        Err(e) => return Err(talk(e)),
    };
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(talk)?;
    let mut line = serde_json::to_string(request).map_err(|e| ApiError::BadReply {
        name: name.into(),
        detail: e.to_string(),
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(talk)?;
    let mut reply = String::new();
    BufReader::new(stream.take_limited())
        .read_line(&mut reply)
        .map_err(talk)?;
    let reply: Reply = serde_json::from_str(&reply).map_err(|e| ApiError::BadReply {
        name: name.into(),
        detail: e.to_string(),
    })?;
    if !reply.ok {
        return Err(ApiError::Refused {
            name: name.into(),
            message: reply.error.unwrap_or_else(|| "request refused".into()),
        });
    }
    Ok(reply)
}

/// A reply bounded like a request.
trait TakeLimited {
    fn take_limited(self) -> std::io::Take<UnixStream>;
}

impl TakeLimited for UnixStream {
    fn take_limited(self) -> std::io::Take<UnixStream> {
        std::io::Read::take(self, MAX_REQUEST as u64 * 16)
    }
}

/// The state of VM `name`.
pub fn info(name: &str) -> Result<VmInfo, ApiError> {
    call(name, &Request::Info)?
        .info
        .ok_or_else(|| ApiError::BadReply {
            name: name.into(),
            detail: "no info in the reply".into(),
        })
}

/// Whether VM `name` is still running (its lock is held).
pub fn is_running(name: &str) -> bool {
    let Ok(file) = File::open(lock_path(&runtime_dir(), name)) else {
        return false;
    };
    !try_lock(&file)
}

/// Every running VM, in name order. Files left by VMs that died are removed.
pub fn list() -> Vec<VmInfo> {
    let dir = runtime_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".sock")
                .or_else(|| name.strip_suffix(".lock"))
                // (A socket still under its temporary name: hvm died
                // between bind and rename.)
                .or_else(|| name.strip_prefix('.')?.strip_suffix(".new"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        if check_name(&name).is_err() {
            continue;
        }
        if !is_running(&name) {
            log::debug!("removing the stale control files of {name}");
            let _ = std::fs::remove_file(socket_path(&dir, &name));
            let _ = std::fs::remove_file(temporary_path(&dir, &name));
            let _ = std::fs::remove_file(lock_path(&dir, &name));
            continue;
        }
        match info(&name) {
            Ok(i) => out.push(i),
            Err(e) => log::warn!("{e}"),
        }
    }
    out
}

/// Parses one request line; the error is the reply's message.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let parsed = serde_json::from_str::<serde_json::Value>(line.trim())
        .map_err(|e| e.to_string())
        .and_then(|value| {
            // serde cannot refuse unknown fields of a tagged enum's variants.
            let keys = value
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>());
            let allowed: &[&str] = match value.get("cmd").and_then(|c| c.as_str()) {
                Some("stop") => &["cmd", "force", "timeout_ms"],
                _ => &["cmd"],
            };
            if let Some(unknown) = keys
                .unwrap_or_default()
                .into_iter()
                .find(|k| !allowed.contains(&k.as_str()))
            {
                return Err(format!("unknown field `{unknown}`"));
            }
            serde_json::from_value::<Request>(value).map_err(|e| e.to_string())
        });
    parsed.map_err(|e| {
        format!(
            "bad request ({e}); expected one JSON object per line such as {{\"cmd\":\"info\"}} \
             (commands: info, pause, resume, stop)"
        )
    })
}

/// One reply line.
pub fn reply_line(reply: &Reply) -> String {
    let mut s = serde_json::to_string(reply)
        .unwrap_or_else(|_| r#"{"ok":false,"error":"unencodable reply"}"#.into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_parses_from_its_documented_form() {
        assert_eq!(parse_request(r#"{"cmd":"info"}"#), Ok(Request::Info));
        assert_eq!(parse_request(r#"{"cmd":"pause"}"#), Ok(Request::Pause));
        assert_eq!(parse_request(r#" {"cmd":"resume"} "#), Ok(Request::Resume));
        assert_eq!(
            parse_request(r#"{"cmd":"stop"}"#),
            Ok(Request::Stop {
                force: false,
                timeout_ms: None
            })
        );
        assert_eq!(
            parse_request(r#"{"cmd":"stop","force":true,"timeout_ms":500}"#),
            Ok(Request::Stop {
                force: true,
                timeout_ms: Some(500)
            })
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_a_hint() {
        for bad in [
            "",
            "info",
            "{}",
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"pause","extra":1}"#,
            r#"{"cmd":"stop","force":"yes"}"#,
            "[1,2]",
            "\u{0}\u{1}",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.contains("commands: info, pause"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn requests_and_replies_round_trip() {
        for r in [
            Request::Info,
            Request::Pause,
            Request::Resume,
            Request::Stop {
                force: true,
                timeout_ms: Some(1),
            },
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&line), Ok(r));
        }
        let line = reply_line(&Reply::error("nope"));
        assert_eq!(line, "{\"ok\":false,\"error\":\"nope\"}\n");
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(back, Reply::error("nope"));
    }

    #[test]
    fn names_are_checked_and_derived_from_spec_files() {
        for good in ["vm", "hello-2", "a.b_c", "X9"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(name_from_spec(Path::new("examples/hello.toml")), "hello");
        assert_eq!(name_from_spec(Path::new("/x/my vm!.toml")), "my-vm-");
        assert_eq!(name_from_spec(Path::new("/x/.toml")), "toml");
        assert_eq!(name_from_spec(Path::new("/")), "vm");
    }

    #[test]
    fn a_claimed_name_is_refused_then_free_again_after_drop() {
        let dir = std::env::temp_dir().join(format!("hvm-api-test-{}", std::process::id()));
        // The runtime dir comes from the environment; this test owns its own.
        std::env::set_var("HVM_RUNTIME_DIR", &dir);
        let first = ControlSocket::claim("claimtest", false).unwrap();
        let mode = std::fs::metadata(first.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(is_running("claimtest"));
        let second = ControlSocket::claim("claimtest", true).unwrap();
        assert_eq!(second.name, "claimtest-2");
        // A name given explicitly is refused while taken (the holder does not
        // answer here: no control loop serves this socket).
        assert!(matches!(
            ControlSocket::claim("claimtest", false),
            Err(ApiError::NameTaken { .. })
        ));
        let path = first.path().to_path_buf();
        drop(first);
        drop(second);
        assert!(!path.exists());
        assert!(!is_running("claimtest"));
        // A socket left under its temporary name by a VM that died between
        // bind and rename is swept like any stale file.
        let orphan = temporary_path(&dir, "ghost");
        std::fs::write(&orphan, b"").unwrap();
        assert!(list().iter().all(|vm| vm.name != "ghost"));
        assert!(!orphan.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
