//! `hvm run` without a spec file, or with flags over one: `--kernel`,
//! `--initrd`, `--append`, `--cpus`, `--memory`, `--share`, `--net`,
//! `--forward`, `--rootfs` and `-- CMD ARGS...` turned into the same
//! validated [`Spec`] a file gives.
//! Errors name the flag, as spec errors name the key.

use crate::forward::{find_clash, parse_forward, FORWARD_SYNTAX};
use crate::guest_init::{InitConfig, Mount, RunAs};
use crate::spec::{self, ConsoleDevice, NetBackend, NetLink, SerialOutput, Share, Spec};
use std::path::{Path, PathBuf};

/// The tag the root file system is shared by.
pub const ROOTFS_TAG: &str = "rootfs";

/// A flag's value that cannot be used. The message is what the user sees.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value}: {allowed}")]
pub struct FlagError {
    pub flag: &'static str,
    pub value: String,
    pub allowed: String,
}

fn bad(flag: &'static str, value: impl Into<String>, allowed: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        value: value.into(),
        allowed: allowed.into(),
    }
}

/// The flags of `hvm run` that describe the machine.
#[derive(Debug, Default, Clone)]
pub struct MachineFlags {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    /// `DIR[:TAG][:ro]`, any number.
    pub shares: Vec<String>,
    /// `user`, `tap`, `tap:NAME` or `none`: these replace the spec's links.
    pub nets: Vec<String>,
    /// Port forwards for the (first) user-mode link.
    pub forwards: Vec<String>,
    pub rootfs: Option<PathBuf>,
    /// What runs in the guest (`-- CMD ARGS...`); needs `rootfs`.
    pub command: Vec<String>,
}

impl MachineFlags {
    /// Whether any flag was given (a spec file alone needs none).
    pub fn any(&self) -> bool {
        self.kernel.is_some()
            || self.initrd.is_some()
            || self.append.is_some()
            || self.cpus.is_some()
            || self.memory.is_some()
            || !self.shares.is_empty()
            || !self.nets.is_empty()
            || !self.forwards.is_empty()
            || self.rootfs.is_some()
            || !self.command.is_empty()
    }
}

/// Who runs the command, and where: taken from hvm's own process.
#[derive(Debug, Clone)]
pub struct Caller {
    /// hvm's own binary, which becomes the guest's init with `--rootfs`.
    pub exe: PathBuf,
    pub cwd: PathBuf,
    pub run_as: RunAs,
    pub interactive: bool,
}

impl Caller {
    /// This process: its binary, directory, user and environment.
    pub fn current(interactive: bool) -> Caller {
        let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Caller {
            exe: std::env::current_exe()
                .and_then(|p| p.canonicalize())
                .unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            run_as: RunAs {
                uid,
                gid,
                user: env("USER", if uid == 0 { "root" } else { "user" }),
                home: env("HOME", "/"),
                term: env("TERM", "linux"),
                path: env(
                    "PATH",
                    "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
                ),
            },
            interactive,
        }
    }
}

/// Parses `DIR[:TAG][:ro|:rw]` into a share.
pub fn parse_share(text: &str, cwd: &Path) -> Result<Share, FlagError> {
    let mut rest = text;
    let mut read_only = false;
    if let Some((head, mode)) = rest.rsplit_once(':') {
        match mode {
            "ro" => (rest, read_only) = (head, true),
            "rw" => rest = head,
            _ => {}
        }
    }
    let (dir, tag) = match rest.rsplit_once(':') {
        Some((dir, tag)) if !dir.is_empty() => (dir, tag.to_string()),
        _ => (rest, spec::default_tag(rest)),
    };
    if dir.is_empty() {
        return Err(bad("--share", text, "needs a directory: DIR[:TAG][:ro]"));
    }
    if let Some(why) = spec::bad_tag(&tag) {
        return Err(bad("--share", text, format!("the tag {why}")));
    }
    Ok(Share {
        path: cwd.join(dir),
        tag,
        read_only,
        virtiofsd: None,
    })
}

/// The spec the flags describe: `base` (from a file) with the flags over
/// its keys, or, without a file, the flags alone (`--kernel` required).
pub fn apply(base: Option<Spec>, flags: &MachineFlags, caller: &Caller) -> Result<Spec, FlagError> {
    let cwd = &caller.cwd;
    let mut spec = match (base, &flags.kernel) {
        (Some(s), _) => s,
        (None, Some(kernel)) => Spec::with_kernel(cwd.join(kernel), cwd.join("(command line)")),
        (None, None) => {
            return Err(bad(
                "--kernel",
                "(missing)",
                "give a spec file or --kernel PATH (a bzImage or ELF vmlinux)",
            ))
        }
    };
    if let Some(kernel) = &flags.kernel {
        spec.kernel = cwd.join(kernel);
    }
    if let Some(initrd) = &flags.initrd {
        spec.initrd = Some(cwd.join(initrd));
    }
    if let Some(n) = flags.cpus {
        if !(1..=spec::MAX_VCPUS).contains(&n) {
            return Err(bad(
                "--cpus",
                n.to_string(),
                format!("must be 1..={}", spec::MAX_VCPUS),
            ));
        }
        spec.vcpus = n;
    }
    if let Some(m) = &flags.memory {
        spec.memory = spec::parse_memory(m)
            .ok_or_else(|| bad("--memory", m.as_str(), spec::MEMORY_ALLOWED))?;
    }
    if let Some(a) = &flags.append {
        if a.bytes().any(|b| b == 0 || b == b'\n') {
            return Err(bad(
                "--append",
                format!("{a:?}"),
                "must be one line without NUL bytes",
            ));
        }
        spec.cmdline = format!("{} {a}", spec.cmdline).trim().to_string();
    }
    for s in &flags.shares {
        let share = parse_share(s, cwd)?;
        if spec.shares.iter().any(|o| o.tag == share.tag) {
            return Err(bad(
                "--share",
                s.as_str(),
                format!(
                    "the tag {:?} is taken by another share; name one with DIR:TAG",
                    share.tag
                ),
            ));
        }
        spec.shares.push(share);
    }
    networks(&mut spec, flags)?;
    match &flags.rootfs {
        Some(root) => rootfs(&mut spec, &cwd.join(root), flags, caller)?,
        None if !flags.command.is_empty() => {
            return Err(bad(
                "--",
                flags.command.join(" "),
                "a command needs --rootfs DIR (typically /): the guest runs it from that root file system",
            ))
        }
        None => {}
    }
    Ok(spec)
}

/// `--net` (replacing the spec's links) and `--forward` (onto the first
/// user-mode link, made if there is none).
fn networks(spec: &mut Spec, flags: &MachineFlags) -> Result<(), FlagError> {
    if !flags.nets.is_empty() {
        spec.nets.clear();
        for n in &flags.nets {
            let backend = match n.split_once(':') {
                _ if n == "none" => continue,
                _ if n == "user" => NetBackend::user(),
                _ if n == "tap" => NetBackend::Tap { name: None },
                Some(("tap", name)) if spec::is_interface_name(name) => NetBackend::Tap {
                    name: Some(name.to_string()),
                },
                _ => return Err(bad(
                    "--net",
                    n.as_str(),
                    "must be user, tap, tap:NAME (an interface name of 1 to 15 characters) or none",
                )),
            };
            spec.nets.push(NetLink { backend, mac: None });
        }
    }
    for rule in &flags.forwards {
        let forward =
            parse_forward(rule).ok_or_else(|| bad("--forward", rule.as_str(), FORWARD_SYNTAX))?;
        if !spec
            .nets
            .iter()
            .any(|n| matches!(n.backend, NetBackend::User { .. }))
        {
            if !flags.nets.is_empty() {
                return Err(bad(
                    "--forward",
                    rule.as_str(),
                    "needs a user-mode link (--net user); a tap is reached directly",
                ));
            }
            spec.nets.push(NetLink {
                backend: NetBackend::user(),
                mac: None,
            });
        }
        let Some(NetBackend::User { forwards, .. }) = spec
            .nets
            .iter_mut()
            .map(|n| &mut n.backend)
            .find(|b| matches!(b, NetBackend::User { .. }))
        else {
            continue;
        };
        forwards.push(forward);
        if find_clash(forwards).is_some() {
            return Err(bad(
                "--forward",
                rule.as_str(),
                "listens on a host port another rule already forwards",
            ));
        }
    }
    Ok(())
}

/// Where host `path` appears in a guest whose root is host `root`, if it does.
fn in_guest(root: &Path, path: &Path) -> Option<PathBuf> {
    path.strip_prefix(root).ok().map(|p| Path::new("/").join(p))
}

/// `--rootfs DIR`: DIR is the guest's root over virtio-fs, read-only; hvm
/// is its init and runs the command (or a shell).
fn rootfs(
    spec: &mut Spec,
    root: &Path,
    flags: &MachineFlags,
    caller: &Caller,
) -> Result<(), FlagError> {
    let shown = root.display().to_string();
    let root = root
        .canonicalize()
        .map_err(|e| bad("--rootfs", shown.as_str(), e.to_string()))?;
    if !root.is_dir() {
        return Err(bad("--rootfs", shown, "not a directory"));
    }
    // The guest sees hvm's binary where the host has it, below the root.
    let init = in_guest(&root, &caller.exe).ok_or_else(|| {
        bad(
            "--rootfs",
            shown.as_str(),
            format!(
                "hvm ({}) must be inside it: the guest's init is hvm itself",
                caller.exe.display()
            ),
        )
    })?;
    if spec.shares.iter().any(|s| s.tag == ROOTFS_TAG) {
        return Err(bad(
            "--rootfs",
            shown,
            format!("a share already has the tag {ROOTFS_TAG:?}"),
        ));
    }
    // The other shares appear in the guest at their host paths (below the root).
    let mounts = spec
        .shares
        .iter()
        .filter_map(|s| {
            let path = s.path.canonicalize().unwrap_or_else(|_| s.path.clone());
            Some(Mount {
                tag: s.tag.clone(),
                path: in_guest(&root, &path)?.display().to_string(),
            })
        })
        .collect();
    // The first user-mode link: hvm's init configures eth0 with what passt
    // gives (the command runs as the caller, who may not configure it).
    let network = spec.nets.first_mut().and_then(|n| match &mut n.backend {
        NetBackend::User { ipv4, .. } => {
            *ipv4 = crate::host_net::guest_ipv4();
            ipv4.clone()
        }
        NetBackend::Tap { .. } => None,
    });
    let config = InitConfig {
        command: flags.command.clone(),
        cwd: in_guest(&root, &caller.cwd).map_or_else(|| "/".into(), |p| p.display().to_string()),
        run_as: caller.run_as.clone(),
        interactive: caller.interactive,
        mounts,
        network,
        trace: log::log_enabled!(log::Level::Debug),
    };
    spec.shares.insert(
        0,
        Share {
            path: root,
            tag: ROOTFS_TAG.into(),
            read_only: true,
            virtiofsd: None,
        },
    );
    spec.console = ConsoleDevice::Command;
    spec.serial = SerialOutput::Off;
    let boot = format!(
        "quiet rootfstype=virtiofs root={ROOTFS_TAG} ro init={} {}={}",
        init.display(),
        crate::guest_init::CMDLINE_KEY,
        config.encode()
    );
    spec.cmdline = format!("{boot} {}", spec.cmdline).trim().to_string();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            exe: PathBuf::from("/usr/bin/hvm"),
            cwd: PathBuf::from("/home/me/src"),
            run_as: RunAs {
                uid: 1000,
                gid: 1000,
                user: "me".into(),
                home: "/home/me".into(),
                term: "xterm".into(),
                path: "/usr/bin:/bin".into(),
            },
            interactive: false,
        }
    }

    fn flags() -> MachineFlags {
        MachineFlags {
            kernel: Some("bzImage".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_alone_make_a_spec_with_the_usual_defaults() {
        let s = apply(None, &flags(), &caller()).unwrap();
        assert_eq!(s.kernel, PathBuf::from("/home/me/src/bzImage"));
        assert_eq!((s.vcpus, s.memory), (1, 512 << 20));
        assert_eq!(s.console, ConsoleDevice::Serial);
        let e = apply(None, &MachineFlags::default(), &caller()).unwrap_err();
        assert!(e.to_string().starts_with("--kernel"), "{e}");
    }

    #[test]
    fn flags_override_the_spec_and_name_themselves_when_wrong() {
        let base = Spec::from_str(
            "[machine]\nvcpus = 4\nmemory = \"1G\"\n[kernel]\npath = \"k\"\ncmdline = \"a=1\"\n",
            Path::new("/vms/vm.toml"),
        )
        .unwrap();
        let f = MachineFlags {
            cpus: Some(2),
            memory: Some("256M".into()),
            append: Some("b=2".into()),
            initrd: Some("/boot/initrd".into()),
            ..Default::default()
        };
        let s = apply(Some(base.clone()), &f, &caller()).unwrap();
        assert_eq!((s.vcpus, s.memory), (2, 256 << 20));
        assert_eq!(s.cmdline, "a=1 b=2");
        assert_eq!(s.kernel, PathBuf::from("/vms/k"), "the spec's kernel stays");
        assert_eq!(s.initrd, Some(PathBuf::from("/boot/initrd")));
        let wrong = |f: MachineFlags| {
            apply(Some(base.clone()), &f, &caller())
                .unwrap_err()
                .to_string()
        };
        let e = wrong(MachineFlags {
            cpus: Some(0),
            ..Default::default()
        });
        assert_eq!(e, "--cpus 0: must be 1..=254");
        let e = wrong(MachineFlags {
            memory: Some("lots".into()),
            ..Default::default()
        });
        assert!(e.starts_with("--memory lots: must be a size"), "{e}");
        let e = wrong(MachineFlags {
            command: vec!["true".into()],
            ..Default::default()
        });
        assert!(e.contains("needs --rootfs"), "{e}");
    }

    #[test]
    fn shares_parse_dir_tag_and_mode() {
        let cwd = Path::new("/w");
        let s = parse_share("data", cwd).unwrap();
        assert_eq!(
            (s.path, s.tag.as_str(), s.read_only),
            (PathBuf::from("/w/data"), "data", false)
        );
        let s = parse_share("/srv/x:files:ro", cwd).unwrap();
        assert_eq!(
            (s.path, s.tag.as_str(), s.read_only),
            (PathBuf::from("/srv/x"), "files", true)
        );
        let s = parse_share("/srv/x:ro", cwd).unwrap();
        assert_eq!((s.tag.as_str(), s.read_only), ("x", true));
        let s = parse_share("/srv/x:out:rw", cwd).unwrap();
        assert_eq!((s.tag.as_str(), s.read_only), ("out", false));
        assert!(parse_share(":ro", cwd).is_err());
        let e = parse_share("/srv/x:has space", cwd)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--share /srv/x:has space: the tag must be"),
            "{e}"
        );
        let mut f = flags();
        f.shares = vec!["/a/x".into(), "/b/x".into()];
        let e = apply(None, &f, &caller()).unwrap_err().to_string();
        assert!(e.contains("taken by another share"), "{e}");
    }

    #[test]
    fn rootfs_makes_hvm_the_init_of_a_read_only_root_and_runs_the_command() {
        let mut c = caller();
        c.exe = std::env::current_exe().unwrap().canonicalize().unwrap();
        c.cwd = PathBuf::from("/tmp");
        let mut f = flags();
        f.rootfs = Some("/".into());
        f.command = vec!["sh".into(), "-c".into(), "echo hi; exit 7".into()];
        f.shares = vec!["/tmp:out".into()];
        let s = apply(None, &f, &c).unwrap();
        assert_eq!(s.console, ConsoleDevice::Command);
        assert_eq!(s.shares[0].tag, ROOTFS_TAG);
        assert!(s.shares[0].read_only);
        assert!(s.cmdline.contains("rootfstype=virtiofs root=rootfs ro"));
        assert!(s.cmdline.contains(&format!("init={}", c.exe.display())));
        let encoded = s
            .cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{}=", crate::guest_init::CMDLINE_KEY)))
            .unwrap();
        let config = InitConfig::decode(encoded).unwrap();
        assert_eq!(config.command, f.command);
        assert_eq!(config.network, None, "no network, nothing to configure");
        assert_eq!(config.cwd, "/tmp");
        assert_eq!(config.run_as.uid, 1000);
        assert_eq!(config.mounts.len(), 1);
        assert_eq!(
            (
                config.mounts[0].tag.as_str(),
                config.mounts[0].path.as_str()
            ),
            ("out", "/tmp")
        );
        // hvm must be below the root it boots.
        let mut f2 = flags();
        f2.rootfs = Some("/proc".into());
        let e = apply(None, &f2, &c).unwrap_err().to_string();
        assert!(e.contains("must be inside it"), "{e}");
    }

    #[test]
    fn net_flags_replace_the_links_and_forwards_join_the_user_link() {
        let base = Spec::from_str(
            "[kernel]\npath = \"k\"\n[[net]]\ntap = \"tap0\"\n",
            Path::new("/vms/vm.toml"),
        )
        .unwrap();
        let f = MachineFlags {
            nets: vec!["user".into(), "tap:t1".into()],
            forwards: vec!["tcp:8080:80".into(), "udp:[::1]:53:53".into()],
            ..flags()
        };
        let s = apply(Some(base.clone()), &f, &caller()).unwrap();
        assert_eq!(s.nets.len(), 2);
        let NetBackend::User { forwards, .. } = &s.nets[0].backend else {
            panic!("{:?}", s.nets[0]);
        };
        assert_eq!(forwards.len(), 2);
        assert_eq!(
            s.nets[1].backend,
            NetBackend::Tap {
                name: Some("t1".into())
            }
        );
        // --forward alone adds a user-mode link; --net none removes them all.
        let f = MachineFlags {
            forwards: vec!["tcp:2222:22".into()],
            ..flags()
        };
        let s = apply(None, &f, &caller()).unwrap();
        assert!(
            matches!(&s.nets[0].backend, NetBackend::User { forwards, .. } if forwards.len() == 1)
        );
        let f = MachineFlags {
            nets: vec!["none".into()],
            ..flags()
        };
        assert!(apply(Some(base), &f, &caller()).unwrap().nets.is_empty());
        for (nets, forwards, starts) in [
            (vec!["slirp"], vec![], "--net slirp: must be user"),
            (vec!["tap:"], vec![], "--net tap:: must be"),
            (vec![], vec!["tcp:80"], "--forward tcp:80: must be \"PROTO:"),
            (
                vec!["tap"],
                vec!["tcp:80:80"],
                "--forward tcp:80:80: needs a user-mode link",
            ),
            (
                vec![],
                vec!["tcp:80:80", "tcp:80:81"],
                "--forward tcp:80:81: listens on a host port",
            ),
        ] {
            let f = MachineFlags {
                nets: nets.into_iter().map(String::from).collect(),
                forwards: forwards.into_iter().map(String::from).collect(),
                ..flags()
            };
            let e = apply(None, &f, &caller()).unwrap_err().to_string();
            assert!(e.starts_with(starts), "{e}");
        }
    }
}
