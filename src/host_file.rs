//! Host files a VM writes: which file a path really is (device and inode),
//! open-file-description locks (per open file, not per process, so closing
//! another descriptor of the same file never drops them: QEMU's choice too),
//! who holds a lock, and log files opened so they cannot be turned on files
//! they were not meant for.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file as the kernel knows it: the same pair means the same file,
/// whatever path, hard link or symlink led there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The file at `path` (symlinks followed); None when it does not exist.
    pub fn of_path(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId::of(&m))
    }
}

/// How a lock was refused.
#[derive(Debug)]
pub enum LockRefused {
    /// Another open file holds a conflicting lock: who, as "pid N: command".
    Held(String),
    Failed(std::io::Error),
}

/// Takes a whole-file open-file-description lock without waiting: shared
/// for readers, exclusive for a writer. It lasts as long as `file`'s open
/// file description.
pub fn lock(file: &File, exclusive: bool) -> Result<(), LockRefused> {
    let kind = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as libc::c_short;
    let fl = whole_file(kind);
    // SAFETY: valid descriptor and a live flock struct; F_OFD_SETLK does not block.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(LockRefused::Held(holder(file))),
        _ => Err(LockRefused::Failed(err)),
    }
}

fn whole_file(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain data; all zero is "from offset 0 to the end, pid 0"
    // (OFD locks require l_pid 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// Who holds a lock on `file`, as "pid N: command line". An OFD lock does
/// not name its owner (F_OFD_GETLK says pid -1), so look for processes
/// with the file open and a lock listed in their fdinfo; a POSIX lock names
/// its pid. Processes of other users cannot be seen: "another process".
fn holder(file: &File) -> String {
    let me = std::process::id();
    let pid = file
        .metadata()
        .ok()
        .and_then(|m| find_locker(FileId::of(&m), me))
        .or_else(|| posix_holder(file));
    match pid {
        Some(pid) => {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            let cmdline = if cmdline.is_empty() { "?" } else { &cmdline };
            if pid == me {
                format!("pid {pid} (this hvm): {cmdline}")
            } else {
                format!("pid {pid}: {cmdline}")
            }
        }
        None => "another process".into(),
    }
}

fn posix_holder(file: &File) -> Option<u32> {
    let mut fl = whole_file(libc::F_WRLCK as libc::c_short);
    // SAFETY: valid descriptor and a live flock struct.
    let ok = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) } == 0;
    (ok && fl.l_type != libc::F_UNLCK as libc::c_short && fl.l_pid > 0).then_some(fl.l_pid as u32)
}

/// A process (others before this one) with `id` open on a descriptor
/// whose fdinfo lists a lock.
fn find_locker(id: FileId, me: u32) -> Option<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // Ourselves last: another process is the likelier holder.
    pids.sort_by_key(|&p| p == me);
    pids.into_iter().find(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::metadata(fd.path()).is_ok_and(|m| FileId::of(&m) == id)
                && std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .is_ok_and(|info| info.lines().any(|l| l.starts_with("lock:")))
        })
    })
}

/// Errors while opening a file for hvm to write guest output into.
#[derive(Debug, thiserror::Error)]
pub enum OutputFileError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is a symbolic link: give the file itself (hvm does not follow links for files it writes)")]
    Symlink { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is this VM's {what}: it would be overwritten")]
    OwnInput { path: PathBuf, what: String },
    #[error("{path} is in use ({holder}): it may be another VM's disk")]
    Locked { path: PathBuf, holder: String },
}

/// Opens `path` for guest output: a new file is created 0600; an existing
/// one must be a regular file (not a symlink, device or FIFO), none of
/// `inputs` (what the VM reads: kernel, initrd, drives), and not locked
/// by anyone, and is only then truncated. The file keeps an exclusive
/// lock while open, so a VM cannot later take it as a disk.
pub fn create_output(path: &Path, inputs: &[(String, PathBuf)]) -> Result<File, OutputFileError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => OutputFileError::Symlink {
                path: path.to_path_buf(),
            },
            _ => OutputFileError::Open {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let open_error = |source| OutputFileError::Open {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(open_error)?;
    if !meta.file_type().is_file() {
        return Err(OutputFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let id = FileId::of(&meta);
    if let Some((what, _)) = inputs.iter().find(|(_, p)| FileId::of_path(p) == Some(id)) {
        return Err(OutputFileError::OwnInput {
            path: path.to_path_buf(),
            what: what.clone(),
        });
    }
    lock(&file, true).map_err(|e| match e {
        LockRefused::Held(holder) => OutputFileError::Locked {
            path: path.to_path_buf(),
            holder,
        },
        LockRefused::Failed(source) => open_error(source),
    })?;
    file.set_len(0).map_err(open_error)?;
    // Writes block as usual (O_NONBLOCK only kept the open from waiting).
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) };
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hvm-host-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn new_output_file_is_private() {
        let d = dir("mode");
        let p = d.join("log");
        create_output(&p, &[]).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn symlink_is_refused_and_its_target_untouched() {
        let d = dir("symlink");
        let target = d.join("secret");
        std::fs::write(&target, b"keep me").unwrap();
        let link = d.join("log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_output(&link, &[]).unwrap_err();
        assert!(matches!(e, OutputFileError::Symlink { .. }), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }

    #[test]
    fn device_is_refused() {
        let e = create_output(Path::new("/dev/null"), &[]).unwrap_err();
        assert!(matches!(e, OutputFileError::NotRegular { .. }), "{e}");
    }

    #[test]
    fn own_input_is_refused_even_through_another_path() {
        let d = dir("input");
        let disk = d.join("disk.img");
        std::fs::write(&disk, vec![1u8; 4096]).unwrap();
        let alias = d.join("alias.img");
        std::fs::hard_link(&disk, &alias).unwrap();
        let inputs = [("drive 0".to_string(), disk.clone())];
        let e = create_output(&alias, &inputs).unwrap_err();
        assert!(e.to_string().contains("this VM's drive 0"), "{e}");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4096);
    }

    #[test]
    fn locked_file_is_refused_and_kept() {
        let d = dir("locked");
        let disk = d.join("disk.img");
        std::fs::write(&disk, vec![1u8; 4096]).unwrap();
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        lock(&holder, true).unwrap();
        let e = create_output(&disk, &[]).unwrap_err();
        assert!(e.to_string().contains("(this hvm)"), "{e}");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4096);
    }

    #[test]
    fn ofd_locks_conflict_within_one_process_and_survive_other_closes() {
        let d = dir("ofd");
        let p = d.join("img");
        std::fs::write(&p, b"x").unwrap();
        let a = File::open(&p).unwrap();
        lock(&a, false).unwrap();
        // A second descriptor opened and closed must not drop a's lock
        // (a POSIX record lock would be gone now).
        drop(File::open(&p).unwrap());
        let w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        assert!(matches!(lock(&w, true), Err(LockRefused::Held(_))));
        // Shared locks agree with each other.
        lock(&File::open(&p).unwrap(), false).unwrap();
    }
}
