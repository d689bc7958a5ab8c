//! The `hvm` binary: parse the command line, run the library, turn the
//! outcome into a one-line message and a documented exit code.

mod cli;

use clap::Parser;
use cli::{Cli, Command};
use hvm::spec::Spec;
use hvm::vmm::exit::code;
use hvm::vmm::{RunOptions, Vm, VmError};
use hvm::{timeline, vmm};

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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .format_timestamp(None)
        .init();
}

/// The exit code for a failure to build or start the VM.
fn error_code(e: &VmError) -> i32 {
    match e {
        VmError::Boot(_) | VmError::OutputFile { .. } => code::BAD_INPUT,
        VmError::Virtio(vmm::virtio::VirtioError::Block(_) | vmm::virtio::VirtioError::Net(_)) => {
            code::BAD_INPUT
        }
        VmError::KvmUnavailable(_)
        | VmError::Kvm { .. }
        | VmError::MissingCapability(_)
        | VmError::TooManyVcpus { .. }
        | VmError::Vcpu(_)
        | VmError::Regs(_) => code::KVM,
        _ => code::INTERNAL,
    }
}

fn main() {
    timeline::start();
    let cli = Cli::parse();
    init_logging(&cli);
    let status = match cli.command {
        Command::Validate { spec } => match Spec::from_file(&spec) {
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
        },
        Command::Run {
            spec,
            timeout,
            serial_log,
        } => run(
            &spec,
            RunOptions {
                timeout,
                serial_log,
            },
        ),
    };
    std::process::exit(status);
}

fn run(path: &std::path::Path, opts: RunOptions) -> i32 {
    let spec = match Spec::from_file(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hvm: {e}");
            return code::BAD_SPEC;
        }
    };
    timeline::mark("spec parsed");
    let outcome = Vm::build(&spec, &opts).and_then(|vm| vm.run(&opts));
    vmm::terminal::restore();
    match outcome {
        Ok(reason) => {
            if let Some(msg) = reason.message() {
                eprintln!("hvm: {msg}");
            }
            log::info!("VM stopped: {reason:?}, exit code {}", reason.exit_code());
            reason.exit_code()
        }
        Err(e) => {
            eprintln!("hvm: {e}");
            error_code(&e)
        }
    }
}
