//! The `hvm` binary: parse the command line, run one verb, turn the
//! outcome into a one-line message and a documented exit code.

mod cli;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, Shell};
use hvm::api::{self, ApiError, Request, VmInfo};
use hvm::devices::virtio::vsock::VsockError;
use hvm::flags::{self, Caller, MachineFlags};
use hvm::spec::Spec;
use hvm::vmm::exit::code;
use hvm::vmm::privileges::PrivilegeError;
use hvm::vmm::{
    control::ControlError, gdb::GdbError, passt::PasstError, virtio::VirtioError,
    virtiofsd::VirtiofsdError,
};
use hvm::vmm::{Outcome, RunOptions, Vm, VmError};
use hvm::{timeline, vmm};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn init_logging(cli: &Cli) {
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    // gdbstub logs every packet it does not know at info: keep it quieter.
    // virtio-queue logs what a guest got wrong at error level, once per
    // request: a guest could flood stderr with it, and hvm's devices say
    // the same once (devices::complaint); show it only from -vv on.
    let queue_level = if cli.verbose >= 2 { level } else { "off" };
    let filter = format!("{level},gdbstub=warn,virtio_queue={queue_level}");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_target(false)
        .format_timestamp(None)
        .init();
}

/// The exit code for a failure to build or start the VM. Exhaustive on
/// purpose: a new error must be given its code here, never fall to "internal".
fn error_code(e: &VmError) -> i32 {
    match e {
        VmError::Boot(_) | VmError::OutputFile { .. } | VmError::Gdb(GdbError::Listen { .. }) => {
            code::BAD_INPUT
        }
        VmError::Virtio(v) => match v {
            VirtioError::Block(_)
            | VirtioError::Tap(_)
            | VirtioError::Share { .. }
            | VirtioError::SameDisk { .. } => code::BAD_INPUT,
            VirtioError::Vsock(v) => match v {
                VsockError::Exists(_) | VsockError::Listen { .. } => code::BAD_INPUT,
                VsockError::Epoll(_) => code::INTERNAL,
            },
            VirtioError::Passt(p) => match p {
                PasstError::NotFound { .. }
                | PasstError::NotExecutable { .. }
                | PasstError::NoRoute { .. }
                | PasstError::Spawn { .. } => code::BAD_INPUT,
                PasstError::Socket(_) => code::INTERNAL,
            },
            VirtioError::Virtiofsd(f) => match f {
                VirtiofsdError::NotFound { .. }
                | VirtiofsdError::BadDirectory { .. }
                | VirtiofsdError::NeedsRoot { .. }
                | VirtiofsdError::Spawn { .. } => code::BAD_INPUT,
                VirtiofsdError::Socket { .. } => code::INTERNAL,
            },
            VirtioError::TooMany { .. } => code::BAD_SPEC,
            VirtioError::Kvm { .. } => code::KVM,
            VirtioError::EventFd(_) | VirtioError::Bus(_) | VirtioError::Placement { .. } => {
                code::INTERNAL
            }
        },
        VmError::Api(a) => api_code(a),
        VmError::Privileges(PrivilegeError::UnknownUser(_) | PrivilegeError::NotRoot(..)) => {
            code::USAGE
        }
        VmError::KvmUnavailable(_)
        | VmError::Kvm { .. }
        | VmError::MissingCapability(_)
        | VmError::TooManyVcpus { .. }
        | VmError::Vcpu(_)
        | VmError::Regs(_) => code::KVM,
        VmError::Memory(_)
        | VmError::Acpi(_)
        | VmError::MpTable(_)
        | VmError::Bus(_)
        | VmError::EventLoop(_)
        | VmError::EventFd(_)
        | VmError::Seccomp(_)
        | VmError::Landlock(_)
        | VmError::Privileges(
            PrivilegeError::HandOver { .. }
            | PrivilegeError::Switch { .. }
            | PrivilegeError::Capabilities(_),
        )
        | VmError::Control(ControlError::Signals(_) | ControlError::Setup { .. }) => code::INTERNAL,
    }
}

/// The exit code for a control-socket error.
fn api_code(e: &ApiError) -> i32 {
    match e {
        ApiError::BadName { .. } => code::USAGE,
        ApiError::NameTaken { .. } | ApiError::RuntimeDir { .. } | ApiError::Bind { .. } => {
            code::BAD_INPUT
        }
        ApiError::NoSuchVm { .. }
        | ApiError::Talk { .. }
        | ApiError::BadReply { .. }
        | ApiError::Refused { .. } => code::CONTROL,
    }
}

fn main() {
    if hvm::guest_init::is_guest_init() {
        // Inside a guest booted with --rootfs: hvm is its init.
        hvm::guest_init::main();
    }
    timeline::start();
    let cli = Cli::parse();
    init_logging(&cli);
    timeline::mark("command line parsed");
    let status = match cli.command {
        Command::Validate { spec } => validate(&spec),
        Command::Run {
            spec,
            kernel,
            initrd,
            append,
            cpus,
            memory,
            share,
            net,
            forward,
            rootfs,
            command,
            timeout,
            serial_log,
            name,
            gdb,
            no_control_socket,
            virtiofsd,
            seccomp,
            landlock,
            user,
            stats,
            crash_report,
            symbols,
        } => {
            let flags = MachineFlags {
                kernel,
                initrd,
                append,
                cpus,
                memory,
                shares: share,
                nets: net,
                forwards: forward,
                rootfs,
                command,
            };
            let spec_path = spec
                .clone()
                .or_else(|| flags.kernel.clone())
                .unwrap_or_default();
            run(
                spec,
                &flags,
                Reports { symbols },
                RunOptions {
                    timeout,
                    serial_log,
                    spec_path: std::fs::canonicalize(&spec_path).unwrap_or(spec_path),
                    name,
                    no_control: no_control_socket,
                    gdb,
                    virtiofsd,
                    seccomp,
                    user,
                    stats,
                    landlock,
                    crash_report,
                },
            )
        }
        Command::Ps { json } => ps(json),
        Command::Pause { name } => control(&name, Request::Pause, "paused"),
        Command::Resume { name } => control(&name, Request::Resume, "resumed"),
        Command::Stop {
            name,
            force,
            timeout,
        } => stop(&name, force, timeout),
        Command::Info { name, json } => info(&name, json),
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "hvm", &mut std::io::stdout());
            code::OK
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => code::OK,
                Err(e) => {
                    eprintln!("hvm: cannot write the man page: {e}");
                    code::INTERNAL
                }
            }
        }
    };
    std::process::exit(status);
}

fn validate(spec: &Path) -> i32 {
    match Spec::from_file(spec) {
        Ok(s) => {
            println!(
                "{}: ok ({} vCPU{}, {} MiB, kernel {})",
                spec.display(),
                s.vcpus,
                if s.vcpus == 1 { "" } else { "s" },
                s.memory >> 20,
                s.kernel.display()
            );
            code::OK
        }
        Err(e) => {
            eprintln!("hvm: {e}");
            code::BAD_SPEC
        }
    }
}

/// What hvm tells about a run besides its exit code (the crash report's
/// file is one of the run options: Landlock must let hvm write it).
struct Reports {
    /// `--symbols PATH`: overrides `[kernel] symbols`.
    symbols: Option<PathBuf>,
}

fn run(
    spec_file: Option<PathBuf>,
    flags: &MachineFlags,
    reports: Reports,
    opts: RunOptions,
) -> i32 {
    let base = match spec_file.as_deref().map(Spec::from_file).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hvm: {e}");
            return code::BAD_SPEC;
        }
    };
    let caller = Caller::current(vmm::terminal::stdin_is_tty());
    let mut spec = match flags::apply(base, flags, &caller) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hvm: {e}");
            return code::USAGE;
        }
    };
    if reports.symbols.is_some() {
        spec.symbols = reports.symbols;
    }
    let wants_symbols = opts.gdb.is_some() || spec.symbols.is_some();
    if wants_symbols && !spec.cmdline.split_whitespace().any(|w| w == "nokaslr") {
        // Symbols match only where the kernel was linked.
        spec.cmdline.push_str(" nokaslr");
    }
    if let Some(name) = &opts.name {
        if let Err(e) = api::check_name(name) {
            eprintln!("hvm: {e}");
            return code::USAGE;
        }
    }
    timeline::mark("spec parsed");
    let outcome = Vm::build(&spec, &opts).and_then(|vm| vm.run(&opts));
    timeline::mark("VM released");
    vmm::terminal::restore();
    match outcome {
        Ok(Outcome { reason, crash }) => {
            if let Some(msg) = reason.message() {
                eprintln!("hvm: {msg}");
            }
            if let Some(report) = crash {
                eprint!("{}", report.render());
                if let Some(path) = &opts.crash_report {
                    write_crash_report(path, &report, &spec);
                }
            }
            log::info!("VM stopped: {reason:?}, exit code {}", reason.exit_code());
            log_leftovers();
            reason.exit_code()
        }
        Err(e) => {
            eprintln!("hvm: {e}");
            error_code(&e)
        }
    }
}

/// Writes the JSON report with the care of any guest output file (no
/// symlinks, none of the VM's inputs, 0600).
fn write_crash_report(path: &Path, report: &vmm::crash_report::CrashReport, spec: &Spec) {
    use std::io::Write;
    let inputs = spec.inputs();
    let written = hvm::host_file::create_output(path, &inputs)
        .map_err(|e| e.to_string())
        .and_then(|mut f| {
            f.write_all(report.json().as_bytes())
                .map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => eprintln!("hvm: crash report written to {}", path.display()),
        Err(e) => eprintln!(
            "hvm: cannot write the crash report to {}: {e}",
            path.display()
        ),
    }
}

/// What hvm still holds once the VM is gone (tests/soak.py checks that it
/// does not grow from one run to the next): open descriptors and RSS.
fn log_leftovers() {
    // Reading /proc costs the exit path; only when someone will see it.
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    // The directory being read is one of the descriptors: not counted.
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1));
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    log::info!("at exit: {fds} descriptors open, RSS {} KiB", pages * 4);
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn ps(json: bool) -> i32 {
    let vms = api::list();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&vms).unwrap_or_else(|_| "[]".into())
        );
        return code::OK;
    }
    println!(
        "{:<20} {:>8} {:<9} {:>8} {:>5} {:>8}  SPEC",
        "NAME", "PID", "STATE", "UPTIME", "VCPUS", "MEMORY"
    );
    for vm in vms {
        println!(
            "{:<20} {:>8} {:<9} {:>8} {:>5} {:>7}M  {}",
            vm.name,
            vm.pid,
            vm.state,
            uptime(vm.uptime_ms),
            vm.vcpus,
            vm.memory_bytes >> 20,
            vm.spec
        );
    }
    code::OK
}

fn fail(e: ApiError) -> i32 {
    eprintln!("hvm: {e}");
    api_code(&e)
}

fn control(name: &str, request: Request, done: &str) -> i32 {
    match api::call(name, &request) {
        Ok(_) => {
            println!("{name}: {done}");
            code::OK
        }
        Err(e) => fail(e),
    }
}

fn stop(name: &str, force: bool, timeout: Duration) -> i32 {
    let request = Request::Stop {
        force,
        timeout_ms: Some(timeout.as_millis() as u64),
    };
    if let Err(e) = api::call(name, &request) {
        return fail(e);
    }
    // The VM enforces the deadline itself; wait a little longer for it to go.
    let limit = if force { Duration::ZERO } else { timeout } + Duration::from_secs(5);
    let start = Instant::now();
    while api::is_running(name) {
        if start.elapsed() > limit {
            eprintln!(
                "hvm: {name} is still running {:.0} s after the stop request",
                limit.as_secs_f64()
            );
            return code::CONTROL;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("{name}: stopped");
    code::OK
}

fn print_info(i: &VmInfo) {
    println!("name:    {}", i.name);
    println!("pid:     {}", i.pid);
    println!("state:   {}", i.state);
    println!("uptime:  {}", uptime(i.uptime_ms));
    println!("vcpus:   {} ({})", i.vcpus, i.vcpu_states.join(", "));
    println!("memory:  {} MiB", i.memory_bytes >> 20);
    println!("spec:    {}", i.spec);
    println!("devices:");
    for d in &i.devices {
        let irq = d.irq.map(|n| format!(" irq {n}")).unwrap_or_default();
        println!(
            "  {:>2} {:<4} {:#010x}+{:#x}{irq}  {}",
            d.id, d.bus, d.base, d.len, d.label
        );
    }
}

fn info(name: &str, json: bool) -> i32 {
    match api::info(name) {
        Ok(i) if json => {
            println!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
            code::OK
        }
        Ok(i) => {
            print_info(&i);
            code::OK
        }
        Err(e) => fail(e),
    }
}
