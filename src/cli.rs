//! The command line (clap derive): one subcommand per verb.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "hvm",
    version,
    about = "A small hosted hypervisor: boots a Linux kernel described by a TOML spec on KVM",
    after_help = "Examples:\n  hvm run examples/hello.toml\n  hvm run --timeout 30s --serial-log boot.log vm.toml\n  hvm run --kernel bzImage --rootfs / -- uname -a\n  hvm run --name web --gdb :1234 vm.toml\n  hvm ps\n  hvm pause web; hvm resume web; hvm stop web\n\n\
                  In the console, Ctrl-A x quits. Exit codes: see README.md (0 = guest powered off)."
)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of `Run` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot the VM a spec describes (or the flags do), in the foreground,
    /// with the guest console on stdio; or run one command in a guest.
    Run {
        /// The VM spec (TOML); see docs/spec.md. Optional with --kernel.
        spec: Option<PathBuf>,
        /// The kernel (bzImage or ELF vmlinux); overrides the spec's.
        #[arg(long, value_name = "PATH")]
        kernel: Option<PathBuf>,
        /// The initrd; overrides the spec's.
        #[arg(long, value_name = "PATH")]
        initrd: Option<PathBuf>,
        /// Words added to the kernel command line.
        #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
        append: Option<String>,
        /// vCPUs (default 1); overrides machine.vcpus.
        #[arg(long, value_name = "N")]
        cpus: Option<u32>,
        /// Guest RAM, e.g. 512M or 2G (default 512M); overrides machine.memory.
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        /// Share a host directory over virtio-fs (any number): DIR[:TAG][:ro].
        /// With --rootfs it appears in the guest at the same path.
        #[arg(long, value_name = "DIR[:TAG][:ro]")]
        share: Vec<String>,
        /// A network link (any number; replaces the spec's [[net]]): user
        /// (passt: no privileges, NAT, DHCP), tap, tap:NAME, or none.
        #[arg(long, value_name = "user|tap[:NAME]|none")]
        net: Vec<String>,
        /// Forward a host port to the guest (any number; user-mode network,
        /// added if there is none): tcp:8080:80, udp:127.0.0.1:5353:53.
        #[arg(long, value_name = "PROTO:[ADDR:]HOST:GUEST")]
        forward: Vec<String>,
        /// Boot with this host directory (typically /) as the guest's root,
        /// read-only over virtio-fs with tmpfs overlays; hvm is the guest's
        /// init and runs CMD (or a shell) as you, in your directory.
        #[arg(long, value_name = "DIR")]
        rootfs: Option<PathBuf>,
        /// The command to run in the guest (needs --rootfs); its exit status
        /// is hvm's, its stdout and stderr are hvm's.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
        /// Stop the VM after this long and exit with code 124 (e.g. 30s, 500ms, 2m).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Also write everything the guest prints on its console to FILE.
        #[arg(long, value_name = "FILE")]
        serial_log: Option<PathBuf>,
        /// The VM's name for ps, pause, resume, stop and info (default: the
        /// spec file's name, made unique with -2, -3, ...). A name already
        /// in use is refused.
        #[arg(long)]
        name: Option<String>,
        /// Wait for gdb on HOST:PORT, :PORT (loopback) or a Unix socket PATH
        /// before the first instruction (adds nokaslr to the command line).
        #[arg(long, value_name = "ADDRESS")]
        gdb: Option<String>,
        /// Create no control socket (the VM cannot be listed or controlled).
        #[arg(long)]
        no_control_socket: bool,
        /// The virtiofsd program that serves every [[share]] (default: the
        /// spec's share.virtiofsd, else PATH, /usr/libexec, /usr/lib/qemu).
        #[arg(long, value_name = "PATH")]
        virtiofsd: Option<PathBuf>,
        /// System call filters on hvm's threads: on (a call outside a
        /// thread's allow-list ends hvm, naming it), log (allowed, logged
        /// by the kernel), off.
        #[arg(long, value_name = "on|log|off", default_value = "on")]
        seccomp: crate::vmm::seccomp::Mode,
        /// Landlock on hvm's own file access once the VM runs: on (only
        /// the control socket's directory, removing its sockets, the crash
        /// report and /proc/self; where the kernel supports Landlock), off.
        #[arg(long, value_name = "on|off", default_value = "on")]
        landlock: crate::vmm::landlock::Mode,
        /// When started as root: the user hvm becomes once the VM is built
        /// (a name, UID or UID:GID; default: the one sudo ran hvm for). A
        /// root hvm with nobody to become keeps no capabilities.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// At exit, print where the time went: hvm's phases, and the
        /// guest's exits to hvm by kind and device, with hvm's time serving
        /// them (a clock read per exit: leave it off for benchmarks).
        #[arg(long)]
        stats: bool,
        /// When the guest crashes or --timeout expires, also write the
        /// crash report (every vCPU's registers, symbols, the console's
        /// last lines) to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        crash_report: Option<PathBuf>,
        /// The kernel's System.map (or its ELF vmlinux) for function names
        /// in crash reports, when the kernel booted is a bzImage (adds
        /// nokaslr to the command line, so the addresses match).
        #[arg(long, value_name = "PATH")]
        symbols: Option<PathBuf>,
    },
    /// Check a spec without booting it: exit 0, or a message naming the key and line.
    Validate {
        /// The VM spec (TOML).
        spec: PathBuf,
    },
    /// List the running VMs.
    Ps {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Pause a VM: every vCPU leaves the guest, devices stop; it uses no CPU.
    Pause {
        /// The VM's name (see hvm ps).
        name: String,
    },
    /// Resume a paused VM.
    Resume {
        /// The VM's name (see hvm ps).
        name: String,
    },
    /// Stop a VM: press its ACPI power button and wait for it to power off.
    Stop {
        /// The VM's name (see hvm ps).
        name: String,
        /// End it at once, without asking the guest.
        #[arg(long)]
        force: bool,
        /// How long the guest has to power off before hvm ends it anyway.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        timeout: Duration,
    },
    /// Show a VM's state, resources and devices.
    Info {
        /// The VM's name (see hvm ps).
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. hvm completions bash > /etc/bash_completion.d/hvm).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print hvm's man page (roff; e.g. hvm man | man -l -).
    Man,
}

/// Shells hvm writes completions for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 30s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{unit}' (use ms, s, m or h)"
            ))
        }
    };
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(format!("'{text}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
