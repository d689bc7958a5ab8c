//! The VM spec: a TOML file turned into plain, validated data.
//!
//! Parsing keeps the source spans of the values that need checking, so every
//! error names the key, the line and what is allowed. Paths are resolved
//! relative to the spec file's folder.

use crate::forward::{find_clash, parse_forward, Forward, FORWARD_SYNTAX};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Fewest and most vCPUs a spec may ask for (xAPIC IDs 0..=254; 255 is broadcast).
pub const MAX_VCPUS: u32 = 254;
/// Smallest guest RAM: room for the boot structures, a tiny kernel and its stack.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest RAM: 1 TiB keeps every address inside 40 physical bits.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Guest RAM when the spec does not say.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// What a memory size may be (for messages).
pub const MEMORY_ALLOWED: &str =
    "must be a size from 16M to 1T in whole MiB, such as \"512M\", \"2G\" or 1024 (MiB)";

/// Whether `bytes` is a usable guest RAM size.
fn memory_ok(bytes: u64) -> bool {
    (MIN_MEMORY..=MAX_MEMORY).contains(&bytes) && bytes % (1 << 20) == 0
}

/// A guest RAM size written as text (`512M`, `2G`, `1024`), if usable.
pub fn parse_memory(text: &str) -> Option<u64> {
    parse_size(text).filter(|&b| memory_ok(b))
}

/// Longest share tag: virtio-fs config space has 36 bytes for it.
pub const MAX_TAG_LEN: usize = 36;

/// What went wrong with a spec. The message is what the user sees.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read VM spec {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {key} = {value} at line {line}: {allowed}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        line: usize,
        allowed: String,
    },
    #[error("{path}: {message}")]
    Missing { path: PathBuf, message: String },
}

/// Where the 16550 console's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// The terminal: guest output on stdout, keyboard (or piped stdin) as input.
    Stdio,
    /// A file (truncated at start); stdin is not read.
    File(PathBuf),
    /// Nowhere: the UART still exists, its output is dropped.
    Off,
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub read_only: bool,
    /// What the guest reads as the disk's serial (at most 20 bytes).
    pub id: String,
}

/// A host directory the guest mounts over virtio-fs (`mount -t virtiofs TAG DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub path: PathBuf,
    /// The name the guest mounts it by (1 to 36 bytes).
    pub tag: String,
    pub read_only: bool,
    /// The virtiofsd to run for it; `None`: hvm looks for one.
    pub virtiofsd: Option<PathBuf>,
}

/// How the guest learns where the virtio-mmio devices are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioDiscovery {
    /// ACPI (DSDT devices, _HID LNRO0005), or the command line when it says `acpi=off`.
    Auto,
    /// Only the DSDT.
    Acpi,
    /// Only `virtio_mmio.device=` on the kernel command line.
    Cmdline,
    /// Both: for kernels that understand only one of them, whichever it is.
    /// A kernel that understands both then logs a failed probe per device.
    Both,
}

/// What a virtio-net link is connected to on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// User-mode networking through passt: no privileges, NAT, port forwards.
    User {
        forwards: Vec<Forward>,
        /// The passt program (`None`: searched on PATH and in /usr/bin).
        passt: Option<PathBuf>,
        /// The guest's address, told to passt (`None`: passt's own choice,
        /// which DHCP hands out). Set for `--rootfs` runs, whose init
        /// configures eth0 itself.
        ipv4: Option<crate::host_net::GuestIpv4>,
    },
    /// A host tap device (created when missing; `None`: hvm creates one named hvmN).
    Tap { name: Option<String> },
}

impl NetBackend {
    /// User mode with passt's defaults and no forwards.
    pub fn user() -> NetBackend {
        NetBackend::User {
            forwards: Vec::new(),
            passt: None,
            ipv4: None,
        }
    }
}

/// Whether `name` can name a network interface (1 to 15 bytes, no slash,
/// space or NUL).
pub fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len()) && !name.contains(['/', ' ', '\0'])
}

/// A virtio-net link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLink {
    pub backend: NetBackend,
    pub mac: Option<crate::mac::Mac>,
}

/// `[vsock]`: the guest's CID and the host's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    pub cid: u64,
    /// Host programs connect here; guest connections to host port P go to `<socket>_P`.
    pub socket: PathBuf,
}

/// The largest spec file hvm reads.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Longest vsock socket path: a Unix socket path is at most 107 bytes, and
/// `_PORT` (up to 11) is added for guest-initiated connections.
const VSOCK_PATH_MAX: usize = 96;

/// A validated VM spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The spec file itself (for messages).
    pub source: PathBuf,
    pub vcpus: u32,
    /// Guest RAM in bytes, a multiple of 1 MiB.
    pub memory: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Extra command-line text, appended after hvm's defaults (or replacing them).
    pub cmdline: String,
    pub replace_cmdline: bool,
    /// Where a crash report finds the kernel's symbols (System.map or an
    /// ELF vmlinux) when the kernel booted is a bzImage.
    pub symbols: Option<PathBuf>,
    pub serial: SerialOutput,
    /// The most bytes any console output file (`[serial] file`,
    /// `--serial-log`) may take; None: no limit.
    pub serial_max_size: Option<u64>,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub drives: Vec<Drive>,
    /// A virtio-rng entropy device.
    pub rng: bool,
    /// virtio-net links (eth0, eth1, ...).
    pub nets: Vec<NetLink>,
    /// Host directories over virtio-fs.
    pub shares: Vec<Share>,
    /// A virtio-vsock device.
    pub vsock: Option<VsockSpec>,
    pub virtio_discovery: VirtioDiscovery,
    /// An in-kernel i8254 PIT; `None`: only when the guest boots without ACPI.
    pub pit: Option<bool>,
    /// Which device owns the console (stdin/stdout): the UART or virtio-console.
    pub console: ConsoleDevice,
}

/// The device the console's keyboard input goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleDevice {
    /// COM1 (ttyS0) only.
    Serial,
    /// A virtio-console (hvc0) gets the input; COM1 still prints (kernel messages).
    Virtio,
    /// A command that hvm's guest init runs (`hvm run --rootfs DIR -- CMD`):
    /// hvc0 carries its stdin and stdout, hvc1 its stderr (and, from hvm,
    /// the end of stdin); COM1's kernel messages go only to `--serial-log`
    /// and to the report when the guest fails. Set by flags, not by a key.
    Command,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    machine: RawMachine,
    kernel: Option<RawKernel>,
    #[serde(default)]
    serial: RawSerial,
    #[serde(default)]
    drive: Vec<RawDrive>,
    rng: Option<RawRng>,
    console: Option<RawConsole>,
    #[serde(default)]
    net: Vec<RawNet>,
    #[serde(default)]
    share: Vec<RawShare>,
    vsock: Option<RawVsock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVsock {
    cid: Spanned<i64>,
    socket: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShare {
    path: Spanned<String>,
    tag: Option<Spanned<String>>,
    #[serde(default)]
    read_only: bool,
    virtiofsd: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNet {
    mode: Option<Spanned<String>>,
    passt: Option<Spanned<String>>,
    tap: Option<Spanned<String>>,
    #[serde(default)]
    forward: Vec<Spanned<String>>,
    mac: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    device: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrive {
    path: Spanned<String>,
    #[serde(default)]
    read_only: bool,
    id: Option<Spanned<String>>,
}

/// `[rng]`: present means "give the guest an entropy device".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRng {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    vcpus: Option<Spanned<i64>>,
    memory: Option<Spanned<RawSize>>,
    virtio_discovery: Option<Spanned<String>>,
    pit: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Mib(i64),
    Text(String),
}

impl RawSize {
    /// In bytes (a bare integer is MiB); None when not a positive size.
    fn bytes(&self) -> Option<u64> {
        match self {
            RawSize::Mib(n) if *n > 0 => (*n as u64).checked_mul(1 << 20),
            RawSize::Mib(_) => None,
            RawSize::Text(s) => parse_size(s).filter(|&b| b > 0),
        }
    }
}

impl fmt::Display for RawSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawSize::Mib(n) => write!(f, "{n}"),
            RawSize::Text(s) => write!(f, "\"{s}\""),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    path: Spanned<String>,
    initrd: Option<Spanned<String>>,
    #[serde(default)]
    cmdline: Option<Spanned<String>>,
    #[serde(default)]
    replace_cmdline: bool,
    symbols: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    output: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    max_size: Option<Spanned<RawSize>>,
}

/// Line number (1-based) of a byte offset in `text`.
/// The dotted key ("drive.read_only") assigned on the line holding `offset`,
/// so that a type error from the TOML parser names the key it is about.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The tag a share gets when none is given: its directory's name (`root`
/// for `/`), cut to the 36 bytes a tag may have.
pub fn default_tag(path: &str) -> String {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let mut end = name.len().min(MAX_TAG_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// How a spec error is made: key, value, where, what is allowed.
type Invalid<'a> = dyn Fn(&'static str, String, std::ops::Range<usize>, String) -> SpecError + 'a;

/// `[[net]]`'s backend: `mode`, else tap when a `tap` is named, else user.
fn net_backend(
    n: &RawNet,
    invalid: &Invalid,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<NetBackend, SpecError> {
    let tap_mode = match n.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None => n.tap.is_some(),
        Some(("user", _)) => false,
        Some(("tap", _)) => true,
        Some((other, span)) => {
            return Err(invalid(
                "net.mode",
                format!("\"{other}\""),
                span,
                "must be \"user\" (passt, no privileges needed) or \"tap\" (a host tap device)"
                    .into(),
            ))
        }
    };
    if tap_mode {
        if let Some(p) = &n.passt {
            return Err(invalid(
                "net.passt",
                format!("\"{}\"", p.get_ref()),
                p.span(),
                "works only with mode = \"user\"".into(),
            ));
        }
        if let Some(f) = n.forward.first() {
            return Err(invalid(
                "net.forward",
                format!("\"{}\"", f.get_ref()),
                f.span(),
                "works only with mode = \"user\" (a tap is reached directly)".into(),
            ));
        }
        if let Some(t) = &n.tap {
            let name = t.get_ref();
            if !is_interface_name(name) {
                return Err(invalid(
                    "net.tap",
                    format!("\"{name}\""),
                    t.span(),
                    "must be a network interface name of 1 to 15 characters".into(),
                ));
            }
        }
        return Ok(NetBackend::Tap {
            name: n.tap.as_ref().map(|t| t.get_ref().clone()),
        });
    }
    if let Some(t) = &n.tap {
        return Err(invalid(
            "net.tap",
            format!("\"{}\"", t.get_ref()),
            t.span(),
            "works only with mode = \"tap\"".into(),
        ));
    }
    let mut forwards = Vec::new();
    for f in &n.forward {
        let Some(rule) = parse_forward(f.get_ref()) else {
            return Err(invalid(
                "net.forward",
                format!("\"{}\"", f.get_ref()),
                f.span(),
                FORWARD_SYNTAX.into(),
            ));
        };
        forwards.push(rule);
        if find_clash(&forwards).is_some() {
            return Err(invalid(
                "net.forward",
                format!("\"{}\"", f.get_ref()),
                f.span(),
                "listens on a host port an earlier rule already forwards".into(),
            ));
        }
    }
    Ok(NetBackend::User {
        forwards,
        passt: n.passt.as_ref().map(|p| resolve(p.get_ref())),
        ipv4: None,
    })
}

/// Why `tag` cannot name a share, if it cannot.
pub fn bad_tag(tag: &str) -> Option<String> {
    let max = MAX_TAG_LEN;
    if tag.is_empty() || tag.len() > max || tag.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Some(format!(
            "must be 1 to {max} bytes without spaces or control characters (the guest mounts it with mount -t virtiofs TAG DIR)"
        ))
    } else {
        None
    }
}

/// Parses a size such as `512M`, `1536MiB`, `2G` or `4096` (MiB) into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim() {
        "" | "M" | "MiB" | "MB" | "m" => 20,
        "K" | "KiB" | "KB" | "k" => 10,
        "G" | "GiB" | "GB" | "g" => 30,
        "T" | "TiB" | "TB" | "t" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

impl Spec {
    /// Reads and validates the spec at `path` (at most [`MAX_SPEC_BYTES`]:
    /// `/dev/zero` or a wrong huge file is refused, not read into memory).
    pub fn from_file(path: &Path) -> Result<Spec, SpecError> {
        use std::io::Read;
        let read_error = |source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SPEC_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_SPEC_BYTES {
            return Err(SpecError::Missing {
                path: path.to_path_buf(),
                message: format!(
                    "longer than {} KiB: not a VM spec (a spec is a small TOML file)",
                    MAX_SPEC_BYTES >> 10
                ),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| SpecError::Missing {
            path: path.to_path_buf(),
            message: "not UTF-8 text: not a VM spec (a spec is a small TOML file)".into(),
        })?;
        Spec::from_str(&text, path)
    }

    /// Parses spec text; `path` names the file in messages and anchors relative paths.
    pub fn from_str(text: &str, path: &Path) -> Result<Spec, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            let message = e.message().trim();
            SpecError::Syntax {
                path: path.to_path_buf(),
                line: at.map(|a| line_of(text, a)).unwrap_or(1),
                message: match at.and_then(|a| key_at(text, a)) {
                    Some(key) if !message.contains(&key) => format!("{key}: {message}"),
                    _ => message.to_string(),
                },
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid =
            |key: &'static str, value: String, span: std::ops::Range<usize>, allowed: String| {
                SpecError::Invalid {
                    path: path.to_path_buf(),
                    key,
                    value,
                    line: line_of(text, span.start),
                    allowed,
                }
            };

        let vcpus = match &raw.machine.vcpus {
            None => 1,
            Some(v) => {
                let n = *v.get_ref();
                if !(1..=i64::from(MAX_VCPUS)).contains(&n) {
                    return Err(invalid(
                        "machine.vcpus",
                        n.to_string(),
                        v.span(),
                        format!("must be 1..={MAX_VCPUS}"),
                    ));
                }
                n as u32
            }
        };

        let memory = match &raw.machine.memory {
            None => DEFAULT_MEMORY,
            Some(m) => match m.get_ref().bytes().filter(|&b| memory_ok(b)) {
                Some(b) => b,
                None => {
                    return Err(invalid(
                        "machine.memory",
                        m.get_ref().to_string(),
                        m.span(),
                        MEMORY_ALLOWED.to_string(),
                    ))
                }
            },
        };

        let Some(kernel) = raw.kernel else {
            return Err(SpecError::Missing {
                path: path.to_path_buf(),
                message: "no [kernel] section: add one with path = \"bzImage or vmlinux\"".into(),
            });
        };
        let resolve = |p: &str| base.join(p);
        if kernel.path.get_ref().trim().is_empty() {
            return Err(invalid(
                "kernel.path",
                "\"\"".into(),
                kernel.path.span(),
                "must name a bzImage or ELF vmlinux file".into(),
            ));
        }
        let cmdline = kernel
            .cmdline
            .as_ref()
            .map(|c| c.get_ref().clone())
            .unwrap_or_default();
        if let Some(c) = &kernel.cmdline {
            if c.get_ref().bytes().any(|b| b == 0 || b == b'\n') {
                return Err(invalid(
                    "kernel.cmdline",
                    format!("{:?}", c.get_ref()),
                    c.span(),
                    "must be one line without NUL bytes".into(),
                ));
            }
        }

        let serial = match raw
            .serial
            .output
            .as_ref()
            .map(|o| (o.get_ref().as_str(), o.span()))
        {
            None | Some(("stdio", _)) => SerialOutput::Stdio,
            Some(("off", _)) => SerialOutput::Off,
            Some(("file", span)) => match &raw.serial.file {
                Some(f) => SerialOutput::File(resolve(f.get_ref())),
                None => {
                    return Err(invalid(
                        "serial.output",
                        "\"file\"".into(),
                        span,
                        "needs serial.file = \"path\" beside it".into(),
                    ))
                }
            },
            Some((other, span)) => {
                return Err(invalid(
                    "serial.output",
                    format!("\"{other}\""),
                    span,
                    "must be \"stdio\", \"file\" or \"off\"".into(),
                ))
            }
        };
        if let (Some(f), false) = (&raw.serial.file, matches!(serial, SerialOutput::File(_))) {
            return Err(invalid(
                "serial.file",
                format!("\"{}\"", f.get_ref()),
                f.span(),
                "only goes with serial.output = \"file\"".into(),
            ));
        }

        let serial_max_size = match &raw.serial.max_size {
            None => None,
            Some(m) => Some(m.get_ref().bytes().ok_or_else(|| {
                invalid(
                    "serial.max_size",
                    m.get_ref().to_string(),
                    m.span(),
                    "must be a size above 0, such as \"64M\" or \"512K\" (a bare integer is MiB)"
                        .into(),
                )
            })?),
        };

        let virtio_discovery = match raw
            .machine
            .virtio_discovery
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("auto", _)) => VirtioDiscovery::Auto,
            Some(("acpi", _)) => VirtioDiscovery::Acpi,
            Some(("cmdline", _)) => VirtioDiscovery::Cmdline,
            Some(("both", _)) => VirtioDiscovery::Both,
            Some((other, span)) => {
                return Err(invalid(
                    "machine.virtio_discovery",
                    format!("\"{other}\""),
                    span,
                    "must be \"auto\", \"acpi\", \"cmdline\" or \"both\"".into(),
                ))
            }
        };

        let console = match raw
            .console
            .as_ref()
            .map(|c| (c.device.get_ref().as_str(), c.device.span()))
        {
            None | Some(("serial", _)) => ConsoleDevice::Serial,
            Some(("virtio", _)) => ConsoleDevice::Virtio,
            Some((other, span)) => {
                return Err(invalid(
                    "console.device",
                    format!("\"{other}\""),
                    span,
                    "must be \"serial\" or \"virtio\"".into(),
                ))
            }
        };

        let mut drives = Vec::new();
        for d in &raw.drive {
            if d.path.get_ref().trim().is_empty() {
                return Err(invalid(
                    "drive.path",
                    "\"\"".into(),
                    d.path.span(),
                    "must name a raw disk image file".into(),
                ));
            }
            let id = match &d.id {
                Some(id) if id.get_ref().len() > 20 || !id.get_ref().is_ascii() => {
                    return Err(invalid(
                        "drive.id",
                        format!("\"{}\"", id.get_ref()),
                        id.span(),
                        "must be at most 20 ASCII characters".into(),
                    ))
                }
                Some(id) => id.get_ref().clone(),
                None => Path::new(d.path.get_ref())
                    .file_name()
                    .map(|n| {
                        n.to_string_lossy()
                            .chars()
                            .filter(char::is_ascii)
                            .take(20)
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            drives.push(Drive {
                path: resolve(d.path.get_ref()),
                read_only: d.read_only,
                id,
            });
        }

        let mut nets = Vec::new();
        for n in &raw.net {
            let mac = match &n.mac {
                None => None,
                Some(m) => match crate::mac::parse_mac(m.get_ref()) {
                    Some(mac) if mac[0] & 1 == 0 => Some(mac),
                    _ => {
                        return Err(invalid(
                            "net.mac",
                            format!("\"{}\"", m.get_ref()),
                            m.span(),
                            "must be a unicast MAC address like \"52:54:00:12:34:56\"".into(),
                        ))
                    }
                },
            };
            nets.push(NetLink {
                backend: net_backend(n, &invalid, &resolve)?,
                mac,
            });
        }

        let mut shares: Vec<Share> = Vec::new();
        for sh in &raw.share {
            if sh.path.get_ref().trim().is_empty() {
                return Err(invalid(
                    "share.path",
                    "\"\"".into(),
                    sh.path.span(),
                    "must name a host directory".into(),
                ));
            }
            let (tag, span) = match &sh.tag {
                Some(t) => (t.get_ref().clone(), t.span()),
                None => (default_tag(sh.path.get_ref()), sh.path.span()),
            };
            if let Some(why) = bad_tag(&tag) {
                return Err(invalid("share.tag", format!("\"{tag}\""), span, why));
            }
            if shares.iter().any(|other| other.tag == tag) {
                return Err(invalid(
                    "share.tag",
                    format!("\"{tag}\""),
                    span,
                    "is already the tag of another share; tags must be unique".into(),
                ));
            }
            if let Some(v) = &sh.virtiofsd {
                if v.get_ref().trim().is_empty() {
                    return Err(invalid(
                        "share.virtiofsd",
                        "\"\"".into(),
                        v.span(),
                        "must name a virtiofsd program".into(),
                    ));
                }
            }
            shares.push(Share {
                path: resolve(sh.path.get_ref()),
                tag,
                read_only: sh.read_only,
                virtiofsd: sh.virtiofsd.as_ref().map(|v| resolve(v.get_ref())),
            });
        }

        let vsock = match &raw.vsock {
            None => None,
            Some(v) => {
                let cid = *v.cid.get_ref();
                if !(3..i64::from(u32::MAX)).contains(&cid) {
                    return Err(invalid(
                        "vsock.cid",
                        cid.to_string(),
                        v.cid.span(),
                        "must be 3 to 4294967294 (0 to 2 are the hypervisor's, the local and the host's)"
                            .into(),
                    ));
                }
                let socket = v.socket.get_ref();
                let resolved = resolve(socket);
                if socket.is_empty() || resolved.as_os_str().len() > VSOCK_PATH_MAX {
                    return Err(invalid(
                        "vsock.socket",
                        format!("\"{socket}\""),
                        v.socket.span(),
                        format!("must be a path of 1 to {VSOCK_PATH_MAX} bytes (Unix socket paths are short)"),
                    ));
                }
                Some(VsockSpec {
                    cid: cid as u64,
                    socket: resolved,
                })
            }
        };

        Ok(Spec {
            source: path.to_path_buf(),
            vcpus,
            memory,
            kernel: resolve(kernel.path.get_ref()),
            initrd: kernel.initrd.map(|i| resolve(i.get_ref())),
            cmdline,
            replace_cmdline: kernel.replace_cmdline,
            symbols: kernel.symbols.map(|i| resolve(i.get_ref())),
            serial,
            serial_max_size,
            drives,
            rng: raw.rng.is_some(),
            nets,
            shares,
            vsock,
            virtio_discovery,
            pit: raw.machine.pit,
            console,
        })
    }

    /// The files the VM reads (kernel, initrd, drives), named for
    /// messages: an output file must be none of them.
    pub fn inputs(&self) -> Vec<(String, PathBuf)> {
        let mut inputs = vec![("kernel".to_string(), self.kernel.clone())];
        inputs.extend(
            self.initrd
                .iter()
                .map(|p| ("initrd".to_string(), p.clone())),
        );
        inputs.extend(
            self.drives
                .iter()
                .map(|d| (format!("drive \"{}\"", d.id), d.path.clone())),
        );
        inputs
    }

    /// A spec with nothing but a kernel: every other key at its default.
    /// `source` names it in messages.
    pub fn with_kernel(kernel: PathBuf, source: PathBuf) -> Spec {
        Spec {
            source,
            vcpus: 1,
            memory: DEFAULT_MEMORY,
            kernel,
            initrd: None,
            cmdline: String::new(),
            replace_cmdline: false,
            symbols: None,
            serial: SerialOutput::Stdio,
            serial_max_size: None,
            drives: Vec::new(),
            rng: false,
            nets: Vec::new(),
            shares: Vec::new(),
            vsock: None,
            virtio_discovery: VirtioDiscovery::Auto,
            pit: None,
            console: ConsoleDevice::Serial,
        }
    }

    /// Whether the guest is told to ignore ACPI (`acpi=off` on its command line).
    pub fn acpi_off(&self) -> bool {
        self.cmdline.split_whitespace().any(|w| w == "acpi=off")
    }

    /// Whether the machine gets an i8254 PIT. hvm's ACPI tables describe a
    /// hardware-reduced machine, and Linux uses no PIT (nor PIC) on one; only
    /// an ACPI-less guest needs it. Leaving it out spares the guest a device
    /// it never uses and KVM's PIT teardown (~9 ms of SRCU waits at exit).
    pub fn wants_pit(&self) -> bool {
        self.pit.unwrap_or_else(|| self.acpi_off())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Spec, SpecError> {
        Spec::from_str(text, Path::new("/vms/test.toml"))
    }

    fn err(text: &str) -> String {
        parse(text)
            .expect_err("spec should be rejected")
            .to_string()
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = parse("[kernel]\npath = \"bzImage\"\n").unwrap();
        assert_eq!(s.vcpus, 1);
        assert_eq!(s.memory, 512 << 20);
        assert_eq!(s.kernel, PathBuf::from("/vms/bzImage"));
        assert_eq!(s.initrd, None);
        assert_eq!(s.serial, SerialOutput::Stdio);
        assert!(!s.replace_cmdline);
    }

    #[test]
    fn full_spec_parses() {
        let s = parse(
            "[machine]\nvcpus = 4\nmemory = \"1536M\"\n[kernel]\npath = \"/k/vmlinux\"\ninitrd = \"i.cpio\"\ncmdline = \"quiet\"\nreplace_cmdline = true\n[serial]\noutput = \"file\"\nfile = \"out.log\"\n",
        )
        .unwrap();
        assert_eq!(s.vcpus, 4);
        assert_eq!(s.memory, 1536 << 20);
        assert_eq!(s.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!(s.initrd, Some(PathBuf::from("/vms/i.cpio")));
        assert_eq!(s.cmdline, "quiet");
        assert!(s.replace_cmdline);
        assert_eq!(s.serial, SerialOutput::File(PathBuf::from("/vms/out.log")));
    }

    #[test]
    fn serial_max_size_is_a_positive_size() {
        let s = parse("[kernel]\npath = \"k\"\n[serial]\nmax_size = \"64K\"\n").unwrap();
        assert_eq!(s.serial_max_size, Some(64 << 10));
        let s = parse("[kernel]\npath = \"k\"\n[serial]\nmax_size = 2\n").unwrap();
        assert_eq!(s.serial_max_size, Some(2 << 20));
        let e = parse("[kernel]\npath = \"k\"\n[serial]\nmax_size = \"0K\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("serial.max_size") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("3584MiB"), Some(3584 << 20));
        assert_eq!(parse_size("64GiB"), Some(64 << 30));
        assert_eq!(parse_size("1024"), Some(1 << 30));
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn integer_memory_is_mib() {
        let s = parse("[machine]\nmemory = 256\n[kernel]\npath = \"k\"\n").unwrap();
        assert_eq!(s.memory, 256 << 20);
    }

    #[test]
    fn zero_vcpus_names_key_line_and_range() {
        let e = err("[kernel]\npath = \"k\"\n[machine]\nvcpus = 0\n");
        assert!(
            e.contains("machine.vcpus = 0 at line 4: must be 1..=254"),
            "{e}"
        );
    }

    #[test]
    fn too_many_vcpus_is_rejected() {
        let e = err("[machine]\nvcpus = 1000\n[kernel]\npath = \"k\"\n");
        assert!(e.contains("machine.vcpus = 1000 at line 2"), "{e}");
    }

    #[test]
    fn bad_memory_is_rejected_with_allowed_forms() {
        for (value, shown) in [
            ("\"lots\"", "\"lots\""),
            ("\"8M\"", "\"8M\""),
            ("\"2T\"", "\"2T\""),
            ("\"1536K\"", "\"1536K\""),
            ("-5", "-5"),
        ] {
            let e = err(&format!(
                "[machine]\nmemory = {value}\n[kernel]\npath = \"k\"\n"
            ));
            assert!(
                e.contains(&format!(
                    "machine.memory = {shown} at line 2: must be a size"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let e = err("[machine]\nvcpus = 1\ncpus = 2\n[kernel]\npath = \"k\"\n");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("unknown field `cpus`"), "{e}");
        assert!(e.contains("expected one of `vcpus`, `memory`"), "{e}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let e = err("[kernel]\npath = \"k\"\n[gpu]\nx = 1\n");
        assert!(e.contains("unknown field `gpu`"), "{e}");
    }

    #[test]
    fn wrong_type_is_rejected_with_line() {
        let e = err("[machine]\nvcpus = \"two\"\n[kernel]\npath = \"k\"\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn syntax_error_names_line() {
        let e = err("[machine]\nvcpus = = 2\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn missing_kernel_section_is_explained() {
        let e = err("[machine]\nvcpus = 2\n");
        assert!(e.contains("no [kernel] section"), "{e}");
    }

    #[test]
    fn missing_kernel_path_is_explained() {
        let e = err("[kernel]\ninitrd = \"i\"\n");
        assert!(e.contains("missing field `path`"), "{e}");
    }

    #[test]
    fn empty_kernel_path_is_rejected() {
        let e = err("[kernel]\npath = \"\"\n");
        assert!(e.contains("kernel.path = \"\" at line 2"), "{e}");
    }

    #[test]
    fn multiline_cmdline_is_rejected() {
        let e = err("[kernel]\npath = \"k\"\ncmdline = \"a\\nb\"\n");
        assert!(e.contains("kernel.cmdline"), "{e}");
    }

    #[test]
    fn drives_and_rng_parse_with_defaults() {
        let s = parse(
            "[kernel]\npath = \"k\"\n[[drive]]\npath = \"disks/root.img\"\n[[drive]]\npath = \"/abs/data.img\"\nread_only = true\nid = \"data\"\n[rng]\n",
        )
        .unwrap();
        assert_eq!(
            s.drives,
            vec![
                Drive {
                    path: PathBuf::from("/vms/disks/root.img"),
                    read_only: false,
                    id: "root.img".into()
                },
                Drive {
                    path: PathBuf::from("/abs/data.img"),
                    read_only: true,
                    id: "data".into()
                },
            ]
        );
        assert!(s.rng);
        assert!(!parse("[kernel]\npath = \"k\"\n").unwrap().rng);
    }

    #[test]
    fn vsock_parses_and_bad_cids_and_paths_are_rejected() {
        let s = parse("[kernel]\npath = \"k\"\n[vsock]\ncid = 3\nsocket = \"vm.vsock\"\n").unwrap();
        let v = s.vsock.unwrap();
        assert_eq!(v.cid, 3);
        assert!(v.socket.ends_with("vm.vsock"));
        for (cid, socket, key) in [
            ("2", "vm.vsock", "vsock.cid = 2 at line 4: must be 3 to"),
            ("4294967295", "vm.vsock", "vsock.cid = 4294967295"),
            ("3", "", "vsock.socket = \"\" at line 5"),
        ] {
            let e = err(&format!(
                "[kernel]\npath = \"k\"\n[vsock]\ncid = {cid}\nsocket = \"{socket}\"\n"
            ));
            assert!(e.contains(key), "{e}");
        }
        let long = "x".repeat(120);
        let e = err(&format!(
            "[kernel]\npath = \"k\"\n[vsock]\ncid = 3\nsocket = \"{long}\"\n"
        ));
        assert!(e.contains("Unix socket paths are short"), "{e}");
        let e = err("[kernel]\npath = \"k\"\n[vsock]\ncid = 3\n");
        assert!(e.contains("socket"), "{e}");
    }

    #[test]
    fn nets_parse_and_bad_ones_are_rejected() {
        let s = parse("[kernel]\npath = \"k\"\n[[net]]\ntap = \"tap0\"\nmac = \"52:54:00:00:00:01\"\n[[net]]\n[[net]]\nmode = \"tap\"\n[[net]]\nforward = [\"tcp:8080:80\", \"udp:127.0.0.1:5353:53\"]\n").unwrap();
        let user = |forwards: &[&str]| NetBackend::User {
            forwards: forwards
                .iter()
                .map(|f| crate::forward::parse_forward(f).unwrap())
                .collect(),
            passt: None,
            ipv4: None,
        };
        assert_eq!(
            s.nets,
            vec![
                NetLink {
                    backend: NetBackend::Tap {
                        name: Some("tap0".into())
                    },
                    mac: Some([0x52, 0x54, 0, 0, 0, 1])
                },
                NetLink {
                    backend: user(&[]),
                    mac: None
                },
                NetLink {
                    backend: NetBackend::Tap { name: None },
                    mac: None
                },
                NetLink {
                    backend: user(&["tcp:8080:80", "udp:127.0.0.1:5353:53"]),
                    mac: None
                },
            ]
        );
        let e = err("[kernel]\npath = \"k\"\n[[net]]\nmac = \"01:00:5e:00:00:01\"\n");
        assert!(
            e.contains("net.mac = \"01:00:5e:00:00:01\" at line 4: must be a unicast MAC"),
            "{e}"
        );
        let e = err("[kernel]\npath = \"k\"\n[[net]]\ntap = \"this-name-is-too-long\"\n");
        assert!(e.contains("net.tap"), "{e}");
        let e = err("[kernel]\npath = \"k\"\n[[net]]\nmode = \"slirp\"\n");
        assert!(
            e.contains("net.mode = \"slirp\" at line 4: must be \"user\""),
            "{e}"
        );
        let e = err("[kernel]\npath = \"k\"\n[[net]]\nmode = \"user\"\ntap = \"t0\"\n");
        assert!(
            e.contains("net.tap = \"t0\" at line 5: works only with mode = \"tap\""),
            "{e}"
        );
        let e = err("[kernel]\npath = \"k\"\n[[net]]\ntap = \"t0\"\nforward = [\"tcp:80:80\"]\n");
        assert!(
            e.contains("net.forward = \"tcp:80:80\" at line 5: works only with mode = \"user\""),
            "{e}"
        );
        let e =
            err("[kernel]\npath = \"k\"\n[[net]]\nforward = [\"tcp:80:80\",\n  \"tcp:8o:80\"]\n");
        assert!(e.contains("net.forward = \"tcp:8o:80\" at line 5: must be \"PROTO:[HOST_ADDRESS:]HOST_PORT:GUEST_PORT\""), "{e}");
        let e = err("[kernel]\npath = \"k\"\n[[net]]\nforward = [\"tcp:80:80\", \"tcp:80:81\"]\n");
        assert!(e.contains("already forwards"), "{e}");
    }

    #[test]
    fn console_device_values() {
        let c = |v: &str| {
            parse(&format!(
                "[kernel]\npath = \"k\"\n[console]\ndevice = \"{v}\"\n"
            ))
        };
        assert_eq!(
            parse("[kernel]\npath = \"k\"\n").unwrap().console,
            ConsoleDevice::Serial
        );
        assert_eq!(c("virtio").unwrap().console, ConsoleDevice::Virtio);
        let e = c("vga").unwrap_err().to_string();
        assert!(
            e.contains("console.device = \"vga\" at line 4: must be \"serial\" or \"virtio\""),
            "{e}"
        );
    }

    #[test]
    fn pit_follows_acpi_off_unless_set() {
        let spec = |machine: &str, cmdline: &str| {
            parse(&format!(
                "[machine]\n{machine}\n[kernel]\npath = \"k\"\ncmdline = \"{cmdline}\"\n"
            ))
            .unwrap()
            .wants_pit()
        };
        assert!(!spec("", "quiet"));
        assert!(spec("", "quiet acpi=off"));
        assert!(!spec("", "acpi=offx"));
        assert!(spec("pit = true", ""));
        assert!(!spec("pit = false", "acpi=off"));
        let err = parse("[machine]\npit = \"yes\"\n[kernel]\npath = \"k\"\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("line 2: machine.pit: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn virtio_discovery_values() {
        let d = |v: &str| {
            parse(&format!(
                "[machine]\nvirtio_discovery = \"{v}\"\n[kernel]\npath = \"k\"\n"
            ))
        };
        assert_eq!(
            parse("[kernel]\npath = \"k\"\n").unwrap().virtio_discovery,
            VirtioDiscovery::Auto
        );
        assert_eq!(d("both").unwrap().virtio_discovery, VirtioDiscovery::Both);
        assert_eq!(
            d("cmdline").unwrap().virtio_discovery,
            VirtioDiscovery::Cmdline
        );
        let e = d("pci").unwrap_err().to_string();
        assert!(
            e.contains("machine.virtio_discovery = \"pci\" at line 2: must be \"auto\""),
            "{e}"
        );
    }

    #[test]
    fn bad_drives_are_rejected() {
        let e = err("[kernel]\npath = \"k\"\n[[drive]]\npath = \"d\"\nid = \"this-id-is-far-too-long-for-virtio\"\n");
        assert!(
            e.contains(
                "drive.id = \"this-id-is-far-too-long-for-virtio\" at line 5: must be at most 20"
            ),
            "{e}"
        );
        let e = err("[kernel]\npath = \"k\"\n[[drive]]\nread_only = true\n");
        assert!(e.contains("missing field `path`"), "{e}");
        let e = err("[kernel]\npath = \"k\"\n[[drive]]\npath = \"d\"\nreadonly = true\n");
        assert!(e.contains("unknown field `readonly`"), "{e}");
        let e = err("[kernel]\npath = \"k\"\n[rng]\nsource = \"/dev/random\"\n");
        assert!(e.contains("unknown field `source`"), "{e}");
    }

    #[test]
    fn serial_output_values() {
        assert_eq!(
            parse("[kernel]\npath = \"k\"\n[serial]\noutput = \"off\"\n")
                .unwrap()
                .serial,
            SerialOutput::Off
        );
        let e = err("[kernel]\npath = \"k\"\n[serial]\noutput = \"tcp\"\n");
        assert!(
            e.contains("serial.output = \"tcp\" at line 4: must be \"stdio\", \"file\" or \"off\""),
            "{e}"
        );
        let e = err("[kernel]\npath = \"k\"\n[serial]\noutput = \"file\"\n");
        assert!(e.contains("needs serial.file"), "{e}");
        let e = err("[kernel]\npath = \"k\"\n[serial]\nfile = \"x\"\n");
        assert!(e.contains("serial.file = \"x\" at line 4"), "{e}");
    }
}
