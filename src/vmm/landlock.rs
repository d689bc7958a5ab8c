//! File access once the VM runs (Landlock): everything hvm reads and
//! writes for the guest is open by then, so the process keeps only what
//! its way out needs — its control socket's directory, removing the
//! sockets it made, creating the crash report, reading /proc/self — and
//! any other path is refused by the kernel, whatever a thread is tricked
//! into doing. Best effort: a kernel without Landlock runs hvm as before
//! (said at debug level). Installed by the main thread before it starts
//! the vCPUs, the device loop and the console writers, which inherit it;
//! the helpers (virtiofsd, passt) and their log readers are started
//! earlier and are not limited by it (the readers' system call filter
//! lets them open nothing).

use ::landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, RulesetStatus, ABI,
};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The Landlock ABI whose file-system rights hvm handles (Linux 6.10:
/// up to device ioctls). Later ABIs add rights (connecting to Unix
/// sockets by path) that vsock needs, so they are not asked for blindly.
const HANDLED: ABI = ABI::V5;

/// Errors while installing the rules.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error(
        "cannot limit hvm's file access with Landlock: {0} (run with --landlock=off to go without)"
    )]
    Ruleset(#[from] RulesetError),
}

/// Whether hvm limits its own file access (`--landlock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Limited, where the kernel supports Landlock.
    #[default]
    On,
    /// Not limited.
    Off,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        super::parse_mode(s, &[("on", Mode::On), ("off", Mode::Off)])
    }
}

/// What hvm may still do beneath a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Its own files there: create, lock, write and remove lock files and
    /// sockets, read the others' (the control sockets' directory).
    Own,
    /// Remove the files it made there (sockets, at exit). Landlock grants
    /// removal per directory tree, not per file.
    Remove,
    /// Create and write a new file (the crash report, at exit, when it
    /// does not exist yet: again per directory tree).
    Create,
    /// Rewrite this one existing file (the crash report, when it exists).
    Rewrite,
    /// Read (/proc/self).
    Read,
}

impl Allowed {
    fn rights(self) -> BitFlags<AccessFs> {
        use AccessFs::*;
        match self {
            Allowed::Own => {
                ReadFile | ReadDir | WriteFile | Truncate | MakeReg | MakeSock | RemoveFile
            }
            Allowed::Remove => RemoveFile.into(),
            Allowed::Create => WriteFile | Truncate | MakeReg,
            Allowed::Rewrite => WriteFile | Truncate,
            Allowed::Read => ReadFile | ReadDir,
        }
    }
}

/// The directories hvm keeps rights beneath, and which.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rules(Vec<(PathBuf, Allowed)>);

impl Rules {
    pub fn allow(&mut self, dir: &Path, what: Allowed) {
        self.0.push((dir.to_path_buf(), what));
    }

    /// `what` in the directory that holds `file`.
    pub fn allow_beside(&mut self, file: &Path, what: Allowed) {
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        self.allow(parent, what);
    }

    pub fn iter(&self) -> impl Iterator<Item = &(PathBuf, Allowed)> {
        self.0.iter()
    }
}

/// What came of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every right hvm asked the kernel to handle is limited.
    Enforced,
    /// An older kernel limits some of them.
    Partly,
    /// Landlock is missing or disabled: nothing is limited.
    Unsupported,
    /// `--landlock=off`.
    Off,
}

/// Limits the calling thread, and every thread and process it starts
/// from now on, to `rules`. Directories that do not exist are left out
/// (what hvm would do there fails either way).
pub fn restrict(mode: Mode, rules: &Rules) -> Result<Outcome, LandlockError> {
    if mode == Mode::Off {
        return Ok(Outcome::Off);
    }
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(HANDLED))?
        .create()?;
    for (dir, what) in rules.iter() {
        match PathFd::new(dir) {
            Ok(fd) => ruleset = ruleset.add_rule(PathBeneath::new(fd, what.rights()))?,
            Err(e) => log::debug!("landlock: no rule for {}: {e}", dir.display()),
        }
    }
    let outcome = match ruleset.restrict_self()?.ruleset {
        RulesetStatus::FullyEnforced => Outcome::Enforced,
        RulesetStatus::PartiallyEnforced => Outcome::Partly,
        RulesetStatus::NotEnforced => Outcome::Unsupported,
    };
    match outcome {
        Outcome::Unsupported => {
            log::debug!(
                "landlock: not supported or not enabled by this kernel; file access not limited"
            )
        }
        _ => log::debug!("landlock: file access limited ({outcome:?}): {rules:?}"),
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::ErrorKind;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hvm-landlock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Landlock applies to the calling thread: each test restricts a
    /// thread of its own, never the test harness.
    fn in_restricted_thread<T: Send + 'static>(
        rules: Rules,
        body: impl FnOnce(Outcome) -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            let outcome = restrict(Mode::On, &rules).unwrap();
            body(outcome)
        })
        .join()
        .unwrap()
    }

    #[test]
    fn modes_parse_and_name_what_is_allowed() {
        assert_eq!("on".parse::<Mode>(), Ok(Mode::On));
        assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
        assert_eq!(
            "log".parse::<Mode>(),
            Err("\"log\" is not one of on, off".into())
        );
    }

    #[test]
    fn off_restricts_nothing() {
        let outcome = std::thread::spawn(|| {
            let o = restrict(Mode::Off, &Rules::default()).unwrap();
            (o, File::open("/").is_ok())
        })
        .join()
        .unwrap();
        assert_eq!(outcome, (Outcome::Off, true));
    }

    #[test]
    fn beside_means_the_parent_directory() {
        let mut r = Rules::default();
        r.allow_beside(Path::new("/run/hvm/vm.sock"), Allowed::Remove);
        r.allow_beside(Path::new("vm.vsock"), Allowed::Remove);
        let dirs: Vec<_> = r.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(dirs, [PathBuf::from("/run/hvm"), PathBuf::from(".")]);
    }

    #[test]
    fn a_restricted_thread_keeps_only_its_rules() {
        let own = scratch("own");
        let sockets = scratch("sockets");
        let report = scratch("report");
        let elsewhere = scratch("elsewhere");
        std::fs::write(sockets.join("vm.vsock"), b"").unwrap();
        std::fs::write(elsewhere.join("secret"), b"keep").unwrap();
        std::fs::write(elsewhere.join("old-report"), b"old").unwrap();
        std::fs::create_dir(sockets.join("sub")).unwrap();
        let mut rules = Rules::default();
        rules.allow(&own, Allowed::Own);
        rules.allow(&sockets, Allowed::Remove);
        rules.allow(&report, Allowed::Create);
        rules.allow(&elsewhere.join("old-report"), Allowed::Rewrite);
        rules.allow(Path::new("/proc/self"), Allowed::Read);
        let (o, s, r, e) = (
            own.clone(),
            sockets.clone(),
            report.clone(),
            elsewhere.clone(),
        );
        let results = in_restricted_thread(rules, move |outcome| {
            let denied = |res: std::io::Result<()>| {
                res.err().map(|e| e.kind()) == Some(ErrorKind::PermissionDenied)
            };
            (
                outcome,
                // The control socket's directory: lock file written, read, removed.
                std::fs::write(o.join("vm.lock"), b"1").is_ok()
                    && std::fs::read(o.join("vm.lock")).is_ok()
                    && std::fs::remove_file(o.join("vm.lock")).is_ok(),
                // Sockets hvm made: removed; nothing new made there, no
                // directory removed.
                std::fs::remove_file(s.join("vm.vsock")).is_ok(),
                denied(std::fs::write(s.join("new"), b"x"))
                    && denied(std::fs::remove_dir(s.join("sub"))),
                // The crash report: created, written.
                std::fs::write(r.join("crash.json"), b"{}").is_ok(),
                // An existing report: rewritten in place, its neighbours not.
                std::fs::write(e.join("old-report"), b"new").is_ok(),
                // Anywhere else: nothing.
                denied(std::fs::read(e.join("secret")).map(drop)),
                denied(std::fs::remove_file(e.join("secret"))),
                denied(std::fs::write(e.join("secret"), b"gone")),
                denied(File::open("/etc/passwd").map(drop)),
                // /proc/self: readable (descriptor counts at exit).
                std::fs::read_to_string("/proc/self/statm").is_ok(),
            )
        });
        if results.0 == Outcome::Unsupported {
            eprintln!("skipped: this kernel has no Landlock");
            return;
        }
        assert_eq!(
            results,
            (
                Outcome::Enforced,
                true,
                true,
                true,
                true,
                true,
                true,
                true,
                true,
                true,
                true
            )
        );
        assert_eq!(std::fs::read(elsewhere.join("secret")).unwrap(), b"keep");
        assert_eq!(std::fs::read(report.join("crash.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read(elsewhere.join("old-report")).unwrap(), b"new");
        for d in [own, sockets, report, elsewhere] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
