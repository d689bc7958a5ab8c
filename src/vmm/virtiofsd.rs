//! virtiofsd, the file server behind each `[[share]]`: found, and started
//! (as a [`Helper`]) on a listening socket hvm has already connected to, so
//! there is no waiting for it to appear and no socket file outlives the start.
//!
//! Two implementations are in use: the Rust virtiofsd (crates.io, distros'
//! `virtiofsd` package; runs without root) and QEMU's older C one
//! (`/usr/lib/qemu/virtiofsd` in Debian 12's qemu-system-common; root only).

use super::helper::{find_program, Helper};
use crate::spec::Share;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where hvm looks when neither the spec nor the command line names one.
const SEARCH: [&str; 3] = [
    "/usr/libexec/virtiofsd",
    "/usr/lib/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
];
/// How long a vhost-user reply may take before the step fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors while starting a share's virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error("share {tag}: no virtiofsd found (looked on PATH and in {}); install one (Debian: apt-get install virtiofsd, or qemu-system-common for QEMU's, which needs root; or cargo install virtiofsd) or name it with [[share]] virtiofsd = \"PATH\" or --virtiofsd PATH", SEARCH.join(", "))]
    NotFound { tag: String },
    #[error("share {tag}: {}: {why}", path.display())]
    BadDirectory {
        tag: String,
        path: PathBuf,
        why: String,
    },
    #[error("share {tag}: {} is QEMU's virtiofsd, which needs root; run hvm as root or install the Rust virtiofsd (apt-get install virtiofsd, or cargo install virtiofsd)", program.display())]
    NeedsRoot { tag: String, program: PathBuf },
    #[error("share {tag}: cannot start {}: {source}", program.display())]
    Spawn {
        tag: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("share {tag}: cannot set up virtiofsd's socket: {source}")]
    Socket { tag: String, source: std::io::Error },
}

/// Which virtiofsd a program is: their options differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The Rust virtiofsd (`--shared-dir DIR`, `--readonly`).
    Rust,
    /// QEMU's C virtiofsd (`-o source=DIR`; no read-only option).
    Qemu,
}

/// How to run one virtiofsd program: what it is and how it may confine
/// itself, learned once however many shares it serves.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub program: PathBuf,
    pub flavor: Flavor,
    pub sandbox: Sandbox,
}

impl Launcher {
    /// Probes `program` (for `tag`'s messages) and this process's privileges.
    pub fn new(program: &Path, tag: &str) -> Result<Launcher, VirtiofsdError> {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let flavor = flavor(program, tag)?;
        if flavor == Flavor::Qemu && !root {
            return Err(VirtiofsdError::NeedsRoot {
                tag: tag.to_string(),
                program: program.to_path_buf(),
            });
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Ok(Launcher {
            program: program.to_path_buf(),
            flavor,
            sandbox: sandbox(root, &mountinfo),
        })
    }
}

/// Finds the virtiofsd to run: the one named, else PATH, else the usual places.
pub fn find(named: Option<&Path>, tag: &str) -> Result<PathBuf, VirtiofsdError> {
    if let Some(p) = named {
        return Ok(p.to_path_buf());
    }
    find_program("virtiofsd", &SEARCH).ok_or_else(|| VirtiofsdError::NotFound {
        tag: tag.to_string(),
    })
}

/// libfuse's start-up message, in QEMU's C virtiofsd (frozen since QEMU
/// 8.0 removed it); a C format, so never in the Rust one.
const QEMU_MARK: &[u8] = b"using FUSE kernel interface version %i.%i";
/// The Rust virtiofsd's option for the directory (the C one has none).
const RUST_MARK: &[u8] = b"shared-dir";
/// Larger files are not read to look for it.
const MAX_PROGRAM_READ: u64 = 64 << 20;

/// Tells the two virtiofsds apart: by the program's own bytes (reading
/// it costs far less than starting it, which under emulation takes as
/// long as a small VM's boot), else (a wrapper, a script) by what
/// `--version` prints.
pub fn flavor(program: &Path, tag: &str) -> Result<Flavor, VirtiofsdError> {
    let mut data = Vec::new();
    let read =
        std::fs::File::open(program).and_then(|f| f.take(MAX_PROGRAM_READ).read_to_end(&mut data));
    if read.is_ok() && data.starts_with(b"\x7fELF") {
        if let Some(flavor) = classify_program(&data) {
            return Ok(flavor);
        }
    }
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| VirtiofsdError::Spawn {
            tag: tag.to_string(),
            program: program.to_path_buf(),
            source,
        })?;
    Ok(classify_version(&String::from_utf8_lossy(&out.stdout)))
}

/// An ELF program: QEMU's if it carries libfuse's message, the Rust one's
/// if it has a `shared-dir` option; neither: unknown.
pub fn classify_program(data: &[u8]) -> Option<Flavor> {
    if memchr::memmem::find(data, QEMU_MARK).is_some() {
        Some(Flavor::Qemu)
    } else if memchr::memmem::find(data, RUST_MARK).is_some() {
        Some(Flavor::Rust)
    } else {
        None
    }
}

/// QEMU's prints "virtiofsd version 7.2.x" and its FUSE version; the Rust
/// one "virtiofsd 1.x.y".
pub fn classify_version(text: &str) -> Flavor {
    if text.contains("virtiofsd version") || text.contains("FUSE kernel interface") {
        Flavor::Qemu
    } else {
        Flavor::Rust
    }
}

/// How virtiofsd confines itself to the shared directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Its default: new mount, PID and network namespaces, pivot_root into the directory.
    Namespace,
    /// chroot into the directory: where pivot_root cannot work (the root
    /// file system is an initramfs).
    Chroot,
    /// None: an ordinary user, who may not create those namespaces.
    None,
}

/// The sandbox for this process: namespaces as root, chroot when the root
/// is an initramfs (pivot_root refuses to move rootfs), none otherwise.
pub fn sandbox(root: bool, mountinfo: &str) -> Sandbox {
    let root_fs = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .and_then(|f| {
            let dash = f.iter().position(|&x| x == "-")?;
            f.get(dash + 1).map(|t| t.to_string())
        });
    match (root, root_fs.as_deref()) {
        (false, _) => Sandbox::None,
        (true, Some("rootfs")) => Sandbox::Chroot,
        (true, _) => Sandbox::Namespace,
    }
}

/// The arguments for serving `dir` on the listening socket `fd`.
pub fn arguments(
    flavor: Flavor,
    dir: &Path,
    fd: RawFd,
    read_only: bool,
    sandbox: Sandbox,
) -> Vec<String> {
    let dir = dir.display();
    match flavor {
        Flavor::Rust => {
            let mut args = vec![
                format!("--fd={fd}"),
                format!("--shared-dir={dir}"),
                "--cache=auto".into(),
                "--announce-submounts".into(),
                "--log-level=warn".into(),
            ];
            match sandbox {
                Sandbox::Namespace => {}
                Sandbox::Chroot => args.push("--sandbox=chroot".into()),
                Sandbox::None => args.push("--sandbox=none".into()),
            }
            if read_only {
                args.push("--readonly".into());
            }
            args
        }
        // Read-only comes from a read-only bind mount in its own mount
        // namespace (see `start`).
        Flavor::Qemu => {
            let mut args = vec![
                format!("--fd={fd}"),
                "-o".into(),
                format!("source={dir}"),
                "-o".into(),
                "cache=auto".into(),
                "-o".into(),
                "announce_submounts".into(),
                "-o".into(),
                "log_level=warn".into(),
            ];
            if sandbox == Sandbox::Chroot {
                args.extend(["-o".into(), "sandbox=chroot".into()]);
            }
            args
        }
    }
}

fn socket_error(tag: &str) -> impl Fn(std::io::Error) -> VirtiofsdError + '_ {
    move |source| VirtiofsdError::Socket {
        tag: tag.to_string(),
        source,
    }
}

/// A private directory for the one moment the socket needs a name.
fn private_dir() -> std::io::Result<PathBuf> {
    let template = std::env::temp_dir().join("hvm-virtiofsd-XXXXXX");
    let mut bytes = CString::new(template.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?
        .into_bytes_with_nul();
    // SAFETY: mkdtemp rewrites the NUL-terminated template in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

/// Starts virtiofsd for `share` and returns it with hvm's end of the
/// vhost-user connection (replies time out after [`REPLY_TIMEOUT`]).
pub fn start(share: &Share, how: &Launcher) -> Result<(Helper, UnixStream), VirtiofsdError> {
    let (program, flavor) = (how.program.as_path(), how.flavor);
    let tag = share.tag.as_str();
    let bad = |why: String| VirtiofsdError::BadDirectory {
        tag: tag.to_string(),
        path: share.path.clone(),
        why,
    };
    match std::fs::metadata(&share.path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a directory".into())),
        Err(e) => return Err(bad(e.to_string())),
    }
    let dir = share.path.canonicalize().map_err(|e| bad(e.to_string()))?;

    // Bind, connect, unlink: the connection waits in the backlog until
    // virtiofsd accepts it, and no file is left behind.
    let private = private_dir().map_err(socket_error(tag))?;
    let path = private.join("vhost-user.sock");
    let bound = UnixListener::bind(&path).and_then(|l| {
        let s = UnixStream::connect(&path)?;
        Ok((l, s))
    });
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&private);
    let (listener, stream) = bound.map_err(socket_error(tag))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(socket_error(tag))?;

    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(arguments(flavor, &dir, fd, share.read_only, how.sandbox));
    let read_only_dir = (flavor == Flavor::Qemu && share.read_only)
        .then(|| CString::new(dir.as_os_str().as_bytes()))
        .transpose()
        .map_err(|_| bad("path contains a NUL byte".into()))?;
    // SAFETY: the closure runs in the child between fork and exec and
    // only makes system calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // The listener is virtiofsd's to inherit.
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(dir) = &read_only_dir {
                read_only_bind(dir)?;
            }
            Ok(())
        });
    }
    let spawn_error = |source| VirtiofsdError::Spawn {
        tag: tag.to_string(),
        program: program.to_path_buf(),
        source,
    };
    let connection = stream.try_clone().map_err(spawn_error)?;
    let helper = Helper::spawn(
        &format!("virtiofsd {tag}"),
        &mut cmd,
        Some(connection),
        benign,
    )
    .map_err(spawn_error)?;
    drop(listener);
    log::info!(
        "share {tag}: {} serves {}{} (pid {})",
        program.display(),
        dir.display(),
        if share.read_only { " read-only" } else { "" },
        helper.pid()
    );
    Ok((helper, stream))
}

/// Lines virtiofsd prints in normal operation (QEMU's when a device reset
/// stops its rings; the Rust one when the hard limit on open files is
/// below what it asks for): debug, not warnings.
fn benign(line: &str) -> bool {
    line.contains("fv_remove_watch: TODO!")
        || line.contains("Unexpected poll revents")
        || line.contains("Failure when trying to set the limit")
}

/// In the child before exec: a mount namespace of its own in which `dir`
/// is a read-only bind mount, so QEMU's virtiofsd, which has no read-only
/// option, cannot write to it. Root only (so is that virtiofsd).
fn read_only_bind(dir: &CString) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            std::ptr::null(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_virtiofsds_are_told_apart() {
        let qemu = "virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7)\nusing FUSE kernel interface version 7.36\n";
        assert_eq!(classify_version(qemu), Flavor::Qemu);
        assert_eq!(classify_version("virtiofsd 1.14.0\n"), Flavor::Rust);
        let mut elf = b"\x7fELF...".to_vec();
        assert_eq!(classify_program(&elf), None, "a wrapper: ask it");
        let mut rust = elf.clone();
        rust.extend_from_slice(b"shared-dirShared directory path");
        assert_eq!(classify_program(&rust), Some(Flavor::Rust));
        elf.extend_from_slice(b"\0using FUSE kernel interface version %i.%i\n\0");
        assert_eq!(classify_program(&elf), Some(Flavor::Qemu));
        // Where Debian puts QEMU's, when it is installed: told apart
        // without running it, and as running it would.
        let installed = Path::new("/usr/lib/qemu/virtiofsd");
        if installed.exists() {
            assert_eq!(flavor(installed, "t").unwrap(), Flavor::Qemu);
        }
        // Neither mark (an ELF wrapper, a script): asked for its version.
        assert_eq!(flavor(Path::new("/bin/true"), "t").unwrap(), Flavor::Rust);
    }

    #[test]
    fn arguments_follow_the_flavor() {
        let dir = Path::new("/srv/share");
        let rust = arguments(Flavor::Rust, dir, 7, true, Sandbox::None);
        assert!(rust.contains(&"--fd=7".to_string()));
        assert!(rust.contains(&"--shared-dir=/srv/share".to_string()));
        assert!(rust.contains(&"--readonly".to_string()));
        assert!(rust.contains(&"--sandbox=none".to_string()));
        let as_root = arguments(Flavor::Rust, dir, 7, false, Sandbox::Namespace);
        assert!(!as_root
            .iter()
            .any(|a| a.starts_with("--sandbox") || a == "--readonly"));
        let qemu = arguments(Flavor::Qemu, dir, 9, true, Sandbox::Chroot);
        assert!(qemu.contains(&"--fd=9".to_string()));
        assert!(qemu.contains(&"source=/srv/share".to_string()));
        assert!(qemu.contains(&"sandbox=chroot".to_string()));
        assert!(!qemu.iter().any(|a| a.contains("readonly")));
    }

    #[test]
    fn the_sandbox_follows_privilege_and_the_root_file_system() {
        let disk = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n";
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw\n22 1 0:5 / /dev rw - devtmpfs dev rw\n";
        assert_eq!(sandbox(true, disk), Sandbox::Namespace);
        assert_eq!(sandbox(true, initramfs), Sandbox::Chroot);
        assert_eq!(sandbox(false, disk), Sandbox::None);
        assert_eq!(sandbox(true, ""), Sandbox::Namespace);
    }

    #[test]
    fn a_named_virtiofsd_wins_and_a_missing_one_says_how_to_get_one() {
        let named = Path::new("/opt/fs/virtiofsd");
        assert_eq!(find(Some(named), "t").unwrap(), named);
        let text = VirtiofsdError::NotFound { tag: "data".into() }.to_string();
        assert!(text.contains("share data") && text.contains("cargo install virtiofsd"));
        assert!(text.contains("--virtiofsd PATH"));
    }
}
