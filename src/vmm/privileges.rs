//! Least privilege once the VM is built: everything that needed root
//! (/dev/kvm, a tap, helpers started as root, files) is open by then. A
//! root hvm started through sudo, or told `--user`, becomes that user; a
//! root hvm with nobody to become keeps uid 0 but no capabilities.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors while choosing or becoming the user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("--user {0}: no such user in /etc/passwd (give a user name, UID or UID:GID)")]
    UnknownUser(String),
    #[error("--user {0}: hvm runs as uid {1}; only root can become another user")]
    NotRoot(String, u32),
    #[error("cannot hand {path} to uid {uid}: {source}")]
    HandOver {
        path: PathBuf,
        uid: u32,
        source: std::io::Error,
    },
    #[error("cannot become uid {uid}, gid {gid}: {source}")]
    Switch {
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
    #[error("cannot drop capabilities: {0}")]
    Capabilities(std::io::Error),
}

/// The user hvm becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Who to become: `--user` (a name, UID or UID:GID), else the user sudo
/// ran hvm for (SUDO_UID, SUDO_GID); nobody when hvm is not root.
pub fn target(user: Option<&str>) -> Result<Option<User>, PrivilegeError> {
    if let Some(text) = user {
        if euid() != 0 {
            return Err(PrivilegeError::NotRoot(text.into(), euid()));
        }
        return parse_user(text)
            .map(Some)
            .ok_or_else(|| PrivilegeError::UnknownUser(text.into()));
    }
    if euid() != 0 {
        return Ok(None);
    }
    let id = |name| std::env::var(name).ok()?.parse::<u32>().ok();
    Ok(match (id("SUDO_UID"), id("SUDO_GID")) {
        (Some(uid), Some(gid)) if uid != 0 => Some(User { uid, gid }),
        _ => None,
    })
}

/// `UID`, `UID:GID` or a user name from the password file.
fn parse_user(text: &str) -> Option<User> {
    if let Some((u, g)) = text.split_once(':') {
        return Some(User {
            uid: u.parse().ok()?,
            gid: g.parse().ok()?,
        });
    }
    let passwd = std::fs::read_to_string(PASSWD).unwrap_or_default();
    if let Ok(uid) = text.parse::<u32>() {
        // A bare UID: its primary group if it has an entry, else the same number.
        let gid = passwd_entry(&passwd, |_, id| id == uid).map_or(uid, |u| u.gid);
        return Some(User { uid, gid });
    }
    passwd_entry(&passwd, |name, _| name == text)
}

/// Where users are looked up. hvm is a static binary, and glibc cannot load
/// its NSS modules into one, so it reads the local users itself (a user
/// known only to a directory service is given as UID:GID).
const PASSWD: &str = "/etc/passwd";

/// The first entry of a passwd(5) text that `matches` (name, uid).
fn passwd_entry(passwd: &str, matches: impl Fn(&str, u32) -> bool) -> Option<User> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        matches(name, uid).then_some(User { uid, gid })
    })
}

/// Becomes `user` (glibc applies set*id to every thread of the process),
/// after handing it `paths`: files hvm made as root and must remove as
/// that user. Without a user, a root hvm drops the calling thread's
/// capabilities instead (threads started afterwards inherit that).
pub fn drop_privileges(user: Option<User>, paths: &[PathBuf]) -> Result<(), PrivilegeError> {
    if euid() != 0 {
        return Ok(());
    }
    let Some(User { uid, gid }) = user else {
        return drop_own_capabilities().map_err(PrivilegeError::Capabilities);
    };
    for path in paths {
        hand_over(path, uid, gid).map_err(|source| PrivilegeError::HandOver {
            path: path.clone(),
            uid,
            source,
        })?;
    }
    let switch = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(PrivilegeError::Switch {
                uid,
                gid,
                source: std::io::Error::last_os_error(),
            })
        }
    };
    // SAFETY: plain system calls on this process's credentials; the group
    // list goes first, while hvm may still change it.
    unsafe {
        switch(libc::setgroups(0, std::ptr::null()))?;
        switch(libc::setresgid(gid, gid, gid))?;
        switch(libc::setresuid(uid, uid, uid))?;
        // A process that changed its uid is not dumpable, which makes its
        // own /proc files root's; it now is an ordinary process of `uid`.
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
    }
    // The control socket goes where `uid` finds it (hvm ps run as that
    // user), not into root's runtime directory.
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        if std::fs::metadata(&dir).map_or(true, |m| m.uid() != uid) {
            std::env::remove_var("XDG_RUNTIME_DIR");
        }
    }
    log::info!("running as uid {uid}, gid {gid} from here on");
    Ok(())
}

fn hand_over(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Empties the calling thread's capability sets (threads it starts later
/// inherit the empty sets). Harmless for a thread that has none.
pub fn drop_own_capabilities() -> std::io::Result<()> {
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: capset reads a version-3 header and two data structs, which
    // live for the call; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_as_numbers_or_names() {
        assert_eq!(
            parse_user("1000:100"),
            Some(User {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(parse_user("root").map(|u| u.uid), Some(0));
        assert_eq!(parse_user("0").map(|u| u.gid), Some(0));
        assert_eq!(parse_user("no-such-user-anywhere"), None);
        assert_eq!(parse_user("1:x"), None);
    }

    #[test]
    fn passwd_entries_are_found_by_name_or_uid() {
        let text = "# a comment\nroot:x:0:0:root:/root:/bin/sh\nbroken:x:nan\n\
                    alice:x:1000:100:Alice:/home/alice:/bin/bash\n";
        let alice = Some(User {
            uid: 1000,
            gid: 100,
        });
        assert_eq!(passwd_entry(text, |name, _| name == "alice"), alice);
        assert_eq!(passwd_entry(text, |_, uid| uid == 1000), alice);
        assert_eq!(passwd_entry(text, |name, _| name == "broken"), None);
        assert_eq!(passwd_entry(text, |name, _| name == "bob"), None);
    }

    #[test]
    fn a_thread_can_drop_its_capabilities() {
        // In a thread of its own: the test process keeps its capabilities.
        std::thread::spawn(|| {
            drop_own_capabilities().unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
            assert!(eff.ends_with("0000000000000000"), "{eff}");
        })
        .join()
        .unwrap();
    }
}
