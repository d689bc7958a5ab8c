//! One running machine: built from a [`Spec`] step by step (KVM, memory,
//! ACPI, kernel, devices, vCPUs), then run until it has a reason to stop.

pub mod boot;
pub mod control;
pub mod crash_report;
pub mod event_loop;
pub mod exit;
pub mod exit_stats;
pub mod gdb;
pub mod helper;
pub mod landlock;
pub mod memory;
pub mod passt;
pub mod privileges;
pub mod seccomp;
pub mod symbols;
pub mod terminal;
pub mod vcpu;
pub mod virtio;
pub mod virtiofsd;
pub mod write_batches;

use crate::api::{ApiError, ControlSocket, DeviceInfo};
use crate::arch::x86_64::acpi::{self, DsdtDevice, RESET_PORT, SLEEP_CONTROL_PORT};
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::arch::x86_64::mptable;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::BusDevice;
use crate::devices::bus::{Bus, BusError};
use crate::devices::cmos::{self, Cmos, CMOS_LEN, CMOS_PORT};
use crate::devices::console_output::SharedOutput;
use crate::devices::events::GuestEvents;
use crate::devices::ged::{self, GedTrigger, GED_IRQ, GED_PORT};
use crate::devices::i8042::{I8042, I8042_DATA_PORT};
use crate::devices::pci_root::{self, PciRoot, PCI_CONFIG_LEN, PCI_CONFIG_PORT};
use crate::devices::serial::{SerialDevice, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::devices::system_ports::{
    AcpiPm, BootMarker, DebugExit, PvPanic, BOOT_MARKER_PORT, DEBUG_EXIT_PORT, PVPANIC_PORT,
};
use crate::devices::virtio::MMIO_WINDOW;
use crate::host_file::{self, OutputFileError};
use crate::spec::{ConsoleDevice, SerialOutput, Spec};
use crate::timeline;
use control::{Control, ControlError, Identity, Inbox, Parts};
use event_loop::{EventLoop, EventLoopError, Input, InputTarget};
use exit::{ExitReason, ExitRequests};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use seccomp::ThreadKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vcpu::{Vcpu, VcpuContext, VcpuError, VcpuEvents};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use write_batches::WriteBatches;

/// Errors while building or starting a VM. `main` maps each to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    KvmUnavailable(String),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("this KVM lacks {0}, which hvm needs")]
    MissingCapability(&'static str),
    #[error("machine.vcpus = {asked} but this host's KVM allows at most {max}")]
    TooManyVcpus { asked: u32, max: u32 },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("{what}: {source}")]
    OutputFile {
        what: &'static str,
        source: OutputFileError,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Gdb(#[from] gdb::GdbError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Landlock(#[from] landlock::LandlockError),
}

/// Parses a command-line mode (`--seccomp`, `--landlock`): one of `choices`,
/// or a message listing them.
fn parse_mode<T: Copy>(text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    match choices.iter().find(|(name, _)| *name == text) {
        Some(&(_, mode)) => Ok(mode),
        None => {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            Err(format!("\"{text}\" is not one of {}", names.join(", ")))
        }
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// How to run (the command line's part; the spec says what to run).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub timeout: Option<Duration>,
    pub serial_log: Option<PathBuf>,
    /// The spec file (shown by `hvm ps`).
    pub spec_path: PathBuf,
    /// The VM's name for the control socket; None derives one from the spec.
    pub name: Option<String>,
    /// No control socket at all.
    pub no_control: bool,
    /// Where the GDB stub listens (`HOST:PORT` or a Unix socket path).
    pub gdb: Option<String>,
    /// The virtiofsd for every share (overrides the spec and the search).
    pub virtiofsd: Option<PathBuf>,
    /// System call filters on hvm's threads.
    pub seccomp: seccomp::Mode,
    /// Who a root hvm becomes once the VM is built (`--user`; default:
    /// sudo's caller).
    pub user: Option<String>,
    /// Count exits and print them, with the phases' times, at exit.
    pub stats: bool,
    /// Landlock on hvm's own file access once the VM runs.
    pub landlock: landlock::Mode,
    /// Where the crash report goes (`--crash-report`): hvm creates it at
    /// exit, so Landlock leaves its directory writable.
    pub crash_report: Option<PathBuf>,
}

/// A built VM, not yet running.
pub struct Vm {
    /// Who hvm becomes once the VM is built (a root hvm only).
    user: Option<privileges::User>,
    _kvm: Kvm,
    vm: VmFd,
    memory: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    ctx: VcpuContext,
    inbox: Inbox,
    exit_requests: ExitRequests,
    /// Every console output (COM1's first), drained at exit.
    outputs: Vec<SharedOutput>,
    /// With a command's console: the kernel's messages, for a failure report.
    kernel_log: Option<SharedOutput>,
    input: Input,
    /// Stdin is read only once this fires (the guest's boot marker).
    input_gate: Option<EventFd>,
    target: InputTarget,
    notifiers: Vec<virtio::QueueNotifier>,
    backends: Vec<(
        std::os::fd::RawFd,
        Arc<Mutex<crate::devices::virtio::mmio::MmioTransport>>,
    )>,
    ged: GedTrigger,
    identity: Identity,
    /// Processes and files serving devices (virtiofsd, passt, vsock sockets).
    companions: helper::Companions,
    /// File servers whose handshakes finish while the guest boots.
    starting_shares: Vec<virtio::StartingShare>,
    /// Where a crash report reads the kernel's symbols.
    symbols: symbols::SymbolsFile,
}

/// How a run ended: the reason, and what hvm saw when the guest failed.
pub struct Outcome {
    pub reason: ExitReason,
    pub crash: Option<crash_report::CrashReport>,
}

/// The device registry as it is being built: each device gets an id, a
/// label for logs and `hvm info`, and its place on a bus.
#[derive(Default)]
struct Registry(Vec<DeviceInfo>);

impl Registry {
    fn add(&mut self, label: impl Into<String>, bus: &str, base: u64, len: u64, irq: Option<u32>) {
        let id = self.0.len() as u32;
        self.0.push(DeviceInfo {
            id,
            label: label.into(),
            bus: bus.into(),
            base,
            len,
            irq,
        });
    }

    /// Puts `device` on the port bus and in the registry.
    fn port(
        &mut self,
        pio: &mut Bus,
        label: &str,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u16,
        len: u64,
        irq: Option<u32>,
    ) -> Result<(), VmError> {
        pio.insert(device, base.into(), len)?;
        self.add(label, "pio", base.into(), len, irq);
        Ok(())
    }
}

/// Opens /dev/kvm, saying what to do when that fails.
fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| {
        let hint = match e.errno() {
            libc::ENOENT => "/dev/kvm does not exist: load the KVM module (modprobe kvm_intel or kvm_amd) \
                             and enable virtualization in the firmware; in a VM, enable nested virtualization",
            libc::EACCES | libc::EPERM => "permission denied on /dev/kvm: add your user to the kvm group \
                             (sudo usermod -aG kvm $USER, then log in again) or run as root",
            _ => "cannot open /dev/kvm",
        };
        VmError::KvmUnavailable(format!("{hint} ({e})"))
    })
}

fn check_kvm(kvm: &Kvm) -> Result<(), VmError> {
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmError::KvmUnavailable(format!(
            "KVM API version {version}; hvm needs 12"
        )));
    }
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
        (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCapability(name));
        }
    }
    Ok(())
}

/// Makes every RAM region guest-physical memory.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the mapping lives in `Vm::_memory` for as long as the VM does
        // (the process exits before it is unmapped), and regions never overlap.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}

/// The KVM VM with guest RAM and what x86 needs before any vCPU: TSS,
/// identity map, in-kernel irqchip (PIC, IOAPIC, LAPICs) and, if asked, PIT.
///
/// RAM is registered first: a memory slot added after the irqchip and PIT
/// have registered their I/O devices waits for a KVM SRCU grace period
/// (5–9 ms measured on kvm_pvm, most of hvm's start-up); the first slot of a
/// fresh VM takes ~0.3 ms.
fn create_vm(kvm: &Kvm, spec: &Spec, memory: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let max = kvm.get_max_vcpus() as u32;
    if spec.vcpus > max {
        return Err(VmError::TooManyVcpus {
            asked: spec.vcpus,
            max,
        });
    }
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    register_memory(&vm, memory)?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("set TSS address"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("set identity map address"))?;
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    if spec.wants_pit() {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("create PIT"))?;
    }
    Ok(vm)
}

/// Everything the guest reads at boot: ACPI tables, command line, kernel,
/// initrd, boot_params and the 64-bit entry's page tables.
fn load_guest(
    spec: &Spec,
    memory: &GuestMemoryMmap,
    windows: &[virtio::MmioWindow],
    kernel: boot::KernelImage,
    initrd: Option<boot::Initrd>,
) -> Result<boot::BootInfo, VmError> {
    let (in_acpi, in_cmdline) = virtio::discovery(spec);
    let mut dsdt = dsdt_devices();
    if in_acpi {
        dsdt.extend(
            windows
                .iter()
                .enumerate()
                .map(|(index, w)| DsdtDevice::VirtioMmio {
                    index: index as u32,
                    base: w.base,
                    size: MMIO_WINDOW,
                    irq: w.irq,
                }),
        );
    }
    let tables = acpi::build(spec.vcpus, &dsdt)?;
    acpi::write(memory, &tables)?;
    mptable::write(memory, spec.vcpus)?;
    let devices = if in_cmdline { windows } else { &[] };
    let cmdline = boot::compose_cmdline(&spec.cmdline, spec.replace_cmdline, devices)?;
    let request = boot::BootRequest {
        cmdline: &cmdline,
        memory: spec.memory,
        rsdp: tables.rsdp_addr,
    };
    let boot = boot::load(memory, kernel, initrd, &request)?;
    regs::write_boot_tables(memory)?;
    log::debug!(
        "{} loaded: entry {:#x}, end {:#x}, initrd {:x?}",
        boot.format,
        boot.entry,
        boot.kernel_end,
        boot.initrd
    );
    Ok(boot)
}

impl Vm {
    /// Builds the machine the spec describes. Nothing runs yet.
    pub fn build(spec: &Spec, opts: &RunOptions) -> Result<Vm, VmError> {
        // Nothing hvm starts may gain privileges (setuid programs), and
        // the filters are ready before the first thread that needs one.
        // SAFETY: a prctl with plain integer arguments.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        seccomp::prepare(opts.seccomp)?;
        timeline::mark("seccomp filters compiled");
        let user = privileges::target(opts.user.as_deref())?;
        let kernel = boot::KernelImage::open(&spec.kernel)?;
        let initrd = spec.initrd.as_deref().map(boot::Initrd::open).transpose()?;
        let (output, input, virtio_outputs) = Self::console_output(spec, opts)?;
        let mut backends = virtio::open_backends(spec, &virtio_outputs, opts.virtiofsd.as_deref())?;
        let kvm = open_kvm()?;
        check_kvm(&kvm)?;
        let memory = memory::create_guest_memory(spec.memory, backends.shared_memory)?;
        let console_inputs = std::mem::take(&mut backends.console_inputs);
        let companions = std::mem::take(&mut backends.companions);
        timeline::mark("memory mapped");
        let vm = create_vm(&kvm, spec, &memory)?;
        timeline::mark("KVM VM created");

        // The kernel goes in while file servers start (their handshakes
        // run meanwhile, and on while the guest boots): it needs only
        // where the devices will sit.
        let windows = backends.windows();
        let boot = load_guest(spec, &memory, &windows, kernel, initrd)?;
        timeline::mark("kernel loaded");
        let (devices, starting_shares) = backends.finish();
        let mut mmio = Bus::new();
        let attached = virtio::attach(&vm, &memory, devices, &windows, &mut mmio)?;
        timeline::mark("virtio devices attached");

        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?);
        let (guest, guest_events) = GuestEvents::channel(wake.clone());
        let (vcpu_events, vcpu_rx) = VcpuEvents::channel(wake.clone());
        let (exit_requests, requests) = ExitRequests::channel(wake.clone());
        let mut registry = Registry::default();
        let serial = Self::serial(&vm, output.clone())?;
        // A command's stdin waits for its init's consoles (boot marker).
        let input_gate = (spec.console == ConsoleDevice::Command)
            .then(|| EventFd::new(libc::EFD_NONBLOCK))
            .transpose()
            .map_err(VmError::EventFd)?;
        let (pio, ged) = Self::port_devices(&vm, &serial, &guest, &mut registry, &input_gate)?;
        let batches =
            WriteBatches::enable(&kvm, &vm, &[cmos::INDEX_LATCH, pci_root::ADDRESS_LATCH]);
        for w in &attached.windows {
            registry.add(&w.label, "mmio", w.base, MMIO_WINDOW, Some(w.irq));
        }
        let mut consoles = console_inputs.into_iter().zip(attached.consoles);
        let target = match consoles.next() {
            Some((pending, transport)) => InputTarget::Virtio {
                pending,
                transport,
                // A command's end of input goes to hvc1 (see guest_init).
                end_of_input: consoles.next(),
            },
            None => InputTarget::Serial(serial),
        };
        let mut outputs = vec![output.clone()];
        outputs.extend(virtio_outputs);
        let ctx = VcpuContext {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            batches: batches.clone(),
            guest,
            events: vcpu_events,
            stats: opts.stats.then(exit_stats::StatsSink::default),
            capture: crash_report::CaptureRequest::default(),
        };

        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            cpuid::offer_tsc_deadline(&mut supported);
        }
        cpuid::add_core_levels(&mut supported);
        let vcpus = (0..spec.vcpus)
            .map(|id| {
                Vcpu::new(
                    &vm,
                    &supported,
                    id,
                    spec.vcpus,
                    boot.entry,
                    batches.is_some(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        timeline::mark("vCPUs configured");

        Ok(Vm {
            _kvm: kvm,
            vm,
            memory,
            vcpus,
            ctx,
            inbox: Inbox {
                wake,
                guest: guest_events,
                vcpus: vcpu_rx,
                requests,
            },
            exit_requests,
            kernel_log: (spec.console == ConsoleDevice::Command).then(|| output.clone()),
            outputs,
            input,
            input_gate,
            target,
            notifiers: attached.notifiers,
            backends: attached.backends,
            ged,
            companions,
            starting_shares,
            user,
            symbols: symbols::SymbolsFile::open(
                spec.symbols.clone().unwrap_or_else(|| spec.kernel.clone()),
            ),
            identity: Identity {
                spec: opts.spec_path.clone(),
                vcpus: spec.vcpus,
                memory: spec.memory,
                devices: registry.0,
            },
        })
    }

    /// Where guest console output goes (COM1's, then each virtio-console's),
    /// and whether stdin feeds the guest.
    fn console_output(
        spec: &Spec,
        opts: &RunOptions,
    ) -> Result<(SharedOutput, Input, Vec<SharedOutput>), VmError> {
        // What the VM reads: an output file must be none of them.
        let inputs = spec.inputs();
        let add = |out: &SharedOutput, what, path: &PathBuf| {
            let file = host_file::create_output(path, &inputs)
                .map_err(|source| VmError::OutputFile { what, source })?;
            out.add_file(file, spec.serial_max_size);
            Ok::<_, VmError>(())
        };
        let stdin_input = || {
            if terminal::stdin_is_tty() {
                Input::Terminal
            } else {
                Input::Stream
            }
        };
        if spec.console == ConsoleDevice::Command {
            // The kernel's messages are kept (for a failure report) and
            // logged if asked; stdout and stderr are the command's.
            let kernel = SharedOutput::new(false);
            if let Some(path) = &opts.serial_log {
                add(&kernel, "serial log", path)?;
            }
            let command = vec![SharedOutput::new(true), SharedOutput::to_stderr()];
            return Ok((kernel, stdin_input(), command));
        }
        let (out, input) = match &spec.serial {
            SerialOutput::Stdio => (SharedOutput::new(true), stdin_input()),
            SerialOutput::File(path) => {
                let out = SharedOutput::new(false);
                add(&out, "serial output file", path)?;
                (out, Input::None)
            }
            SerialOutput::Off => (SharedOutput::new(false), Input::None),
        };
        if let Some(path) = &opts.serial_log {
            add(&out, "serial log", path)?;
        }
        // A virtio console prints where COM1 does.
        Ok((out.clone(), input, vec![out]))
    }

    /// COM1, printing to the console sinks, its interrupt an irqfd.
    fn serial(vm: &VmFd, output: SharedOutput) -> Result<Arc<Mutex<SerialDevice>>, VmError> {
        let irq =
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm_err("register the serial irqfd"))?;
        Ok(Arc::new(Mutex::new(SerialDevice::new(irq, output))))
    }

    /// The port-I/O bus: COM1, i8042, CMOS, PCI config, hvm's system
    /// ports and the ACPI GED (whose trigger is returned: it presses the
    /// power button).
    fn port_devices(
        vm: &VmFd,
        serial: &Arc<Mutex<SerialDevice>>,
        guest: &GuestEvents,
        registry: &mut Registry,
        input_gate: &Option<EventFd>,
    ) -> Result<(Bus, GedTrigger), VmError> {
        let mut pio = Bus::new();
        let r = registry;
        r.port(
            &mut pio,
            "serial COM1 (16550)",
            serial.clone(),
            COM1_PORT,
            COM1_LEN,
            Some(COM1_IRQ),
        )?;
        let i8042 = Arc::new(Mutex::new(I8042::new(guest.clone())));
        r.port(
            &mut pio,
            "i8042 (reset only)",
            i8042,
            I8042_DATA_PORT,
            5,
            None,
        )?;
        let cmos = Arc::new(Mutex::new(Cmos::default()));
        r.port(&mut pio, "cmos rtc", cmos, CMOS_PORT, CMOS_LEN, None)?;
        let pci = Arc::new(Mutex::new(PciRoot::default()));
        r.port(
            &mut pio,
            "pci host bridge",
            pci,
            PCI_CONFIG_PORT,
            PCI_CONFIG_LEN,
            None,
        )?;
        let debug_exit = Arc::new(Mutex::new(DebugExit(guest.clone())));
        r.port(&mut pio, "debug-exit", debug_exit, DEBUG_EXIT_PORT, 1, None)?;
        let marker = match input_gate {
            Some(gate) => BootMarker::notifying(gate.try_clone().map_err(VmError::EventFd)?),
            None => BootMarker::default(),
        };
        let marker = Arc::new(Mutex::new(marker));
        r.port(&mut pio, "boot marker", marker, BOOT_MARKER_PORT, 1, None)?;
        #[cfg(debug_assertions)]
        {
            use crate::devices::system_ports::{SandboxProbe, SANDBOX_PROBE_PORT};
            let probe = Arc::new(Mutex::new(SandboxProbe));
            r.port(
                &mut pio,
                "sandbox probe (debug build)",
                probe,
                SANDBOX_PROBE_PORT,
                1,
                None,
            )?;
        }
        let pvpanic = Arc::new(Mutex::new(PvPanic(guest.clone())));
        r.port(&mut pio, "pvpanic", pvpanic, PVPANIC_PORT, 1, None)?;
        let pm_len = u64::from(RESET_PORT - SLEEP_CONTROL_PORT) + 1;
        let pm = Arc::new(Mutex::new(AcpiPm(guest.clone())));
        r.port(
            &mut pio,
            "acpi sleep/reset",
            pm,
            SLEEP_CONTROL_PORT,
            pm_len,
            None,
        )?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm.register_irqfd(&irq, GED_IRQ)
            .map_err(kvm_err("register the GED irqfd"))?;
        let (ged, trigger) = ged::ged(irq);
        let ged = Arc::new(Mutex::new(ged));
        r.port(
            &mut pio,
            "acpi ged (power button)",
            ged,
            GED_PORT,
            1,
            Some(GED_IRQ),
        )?;
        Ok((pio, trigger))
    }

    /// What hvm's files need once the VM runs: the control socket's
    /// directory (made now, as the user hvm has become), the directories
    /// of the sockets it removes at the end, the crash report (or its
    /// directory, if it does not exist yet), and /proc/self (what it holds
    /// at exit, in its log).
    fn file_rules(
        &self,
        opts: &RunOptions,
        sockets: &[PathBuf],
    ) -> Result<landlock::Rules, VmError> {
        let mut rules = landlock::Rules::default();
        if opts.landlock == landlock::Mode::Off {
            return Ok(rules);
        }
        if !opts.no_control {
            let dir = crate::api::runtime_dir();
            crate::api::ensure_dir(&dir)?;
            rules.allow(&dir, landlock::Allowed::Own);
        }
        for socket in sockets {
            rules.allow_beside(socket, landlock::Allowed::Remove);
        }
        if let Some(report) = &opts.crash_report {
            // An existing file is rewritten in place: a rule for it alone.
            match std::fs::symlink_metadata(report) {
                Ok(m) if m.is_file() => rules.allow(report, landlock::Allowed::Rewrite),
                _ => rules.allow_beside(report, landlock::Allowed::Create),
            }
        }
        rules.allow(std::path::Path::new("/proc/self"), landlock::Allowed::Read);
        Ok(rules)
    }

    /// Waits for the file servers' handshakes; their servers join the
    /// VM's companions. On a failure the other shares are dropped before
    /// the caller stops the VM, which frees a vCPU waiting for one.
    fn finish_shares(
        starting: Vec<virtio::StartingShare>,
        control: &mut Control,
    ) -> Result<(), virtio::VirtioError> {
        if starting.is_empty() {
            return Ok(());
        }
        let servers = starting
            .into_iter()
            .map(virtio::StartingShare::complete)
            .collect::<Result<Vec<_>, _>>()?;
        servers.into_iter().for_each(|s| control.adopt(s));
        timeline::mark("file servers ready");
        Ok(())
    }

    /// Runs the VM until it stops, and says why: starts the device loop
    /// and the vCPU threads, then hands everything to the control loop.
    /// Restores the terminal and flushes the console before returning.
    pub fn run(self, opts: &RunOptions) -> Result<Outcome, VmError> {
        let signals = control::take_stop_signals()?;
        vcpu::install_kick_handler()?;
        let gdb = opts
            .gdb
            .as_deref()
            .map(|addr| gdb::GdbServer::listen(addr, self.memory.clone(), self.vcpus.len() as u32))
            .transpose()?;
        let start_paused = gdb.is_some();
        let _raw = match self.input {
            Input::Terminal => match terminal::RawMode::enter() {
                Ok(guard) => {
                    log::info!("console: Ctrl-A x quits, Ctrl-A h for help");
                    Some(guard)
                }
                Err(e) => {
                    log::warn!("cannot put the terminal in raw mode: {e}");
                    None
                }
            },
            _ => None,
        };
        // Everything that needed root is open: become the user (or, as
        // root, keep no capabilities). The files hvm made as root and
        // removes at the end become theirs.
        let mut handed_over = self.companions.socket_files.clone();
        handed_over.extend(gdb.as_ref().and_then(|g| g.socket_path()).map(Into::into));
        privileges::drop_privileges(self.user, &handed_over)?;
        // Then file access shrinks to what the way out needs, before any
        // other thread starts (each inherits it).
        landlock::restrict(opts.landlock, &self.file_rules(opts, &handed_over)?)?;
        timeline::mark("file access limited");
        // A refused system call wakes the control loop, which ends the VM.
        seccomp::set_wake(Some(std::os::fd::AsRawFd::as_raw_fd(&*self.inbox.wake)));
        // Console writers start here, not from the vCPU that prints first.
        for out in self.outputs.iter().chain(&self.kernel_log) {
            out.start_writer(|| seccomp::apply(ThreadKind::Writer).map_err(|e| e.to_string()));
        }
        let devices = EventLoop {
            target: self.target,
            exit: self.exit_requests,
            input: self.input,
            input_gate: self.input_gate,
            notifiers: self.notifiers,
            backends: self.backends,
            stats: self.ctx.stats.clone(),
        }
        .spawn(start_paused)?;
        let gate = vcpu::StartGate::default();
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus {
            vcpus.push(vcpu.spawn(self.ctx.clone(), start_paused, gate.clone())?);
        }
        if let Some(g) = &gdb {
            eprintln!(
                "hvm: waiting for gdb on {} before the first instruction (target remote {})",
                g.address(),
                g.address()
            );
        }
        // The device map names the exits `--stats` counts.
        let device_map = match &self.ctx.stats {
            Some(_) => self.identity.devices.clone(),
            None => Vec::new(),
        };
        // The guest's last words, for a crash report (COM1's, where the
        // kernel's console is).
        let console = self.outputs.first().cloned().unwrap_or_default();
        let mut control = Control::new(Parts {
            vm: self.vm,
            inbox: self.inbox,
            signals,
            timeout: opts.timeout,
            vcpus,
            guest: self.ctx.guest.clone(),
            devices,
            gdb,
            ged: self.ged,
            outputs: self.outputs,
            kernel_log: self.kernel_log,
            identity: self.identity,
            companions: self.companions,
            capture: self.ctx.capture.clone(),
        })?;
        // The control thread is filtered before the guest's first
        // instruction: the vCPUs wait for it at the gate.
        if let Err(e) = seccomp::apply(ThreadKind::Control) {
            gate.open();
            control.abandon();
            terminal::restore();
            return Err(e.into());
        }
        gate.open();
        // The file servers finish their handshakes while the guest boots
        // (a driver that reaches one first waits for it).
        if let Err(e) = Self::finish_shares(self.starting_shares, &mut control) {
            control.abandon();
            terminal::restore();
            return Err(e.into());
        }
        // The name is claimed once the guest runs, off its start-up path
        // (the socket's files cost more than the rest of hvm's set-up).
        if !opts.no_control {
            let claimed = match &opts.name {
                Some(name) => ControlSocket::claim(name, false),
                None => ControlSocket::claim(&crate::api::name_from_spec(&opts.spec_path), true),
            };
            match claimed {
                Ok(s) => {
                    log::info!("control socket {} (name {})", s.path().display(), s.name);
                    control.serve(s)?;
                }
                Err(e) => {
                    control.abandon();
                    terminal::restore();
                    return Err(e.into());
                }
            }
        }
        let ended = control.run();
        seccomp::set_wake(None);
        terminal::restore();
        if let Some(sink) = &self.ctx.stats {
            eprint!("{}", sink.report(&device_map, &timeline::marks()));
        }
        let crash = crash_report::wanted(&ended.reason).then(|| {
            crash_report::CrashReport::build(
                &ended.reason,
                ended.states,
                &self.symbols,
                &self.memory,
                console.last_lines(crash_report::CONSOLE_LINES),
            )
        });
        Ok(Outcome {
            reason: ended.reason,
            crash,
        })
    }
}

/// Devices the DSDT describes (distro kernels find them there).
fn dsdt_devices() -> Vec<DsdtDevice> {
    vec![
        DsdtDevice::PowerButton {
            port: GED_PORT,
            irq: GED_IRQ,
        },
        DsdtDevice::Ports {
            name: "COM1",
            hid: "PNP0501",
            port: COM1_PORT,
            len: COM1_LEN as u8,
            irq: Some(COM1_IRQ),
        },
        DsdtDevice::Ports {
            name: "RTC_",
            hid: "PNP0B00",
            port: CMOS_PORT,
            len: CMOS_LEN as u8,
            irq: None,
        },
        DsdtDevice::Ports {
            name: "PEVT",
            hid: "QEMU0001",
            port: PVPANIC_PORT,
            len: 1,
            irq: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;

    struct Nothing;
    impl BusDevice for Nothing {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    #[test]
    fn registry_numbers_devices_in_order_and_keeps_their_places() {
        let mut pio = Bus::new();
        let mut r = Registry::default();
        let dev = || Arc::new(Mutex::new(Nothing));
        r.port(&mut pio, "serial COM1", dev(), 0x3f8, 8, Some(4))
            .unwrap();
        r.port(&mut pio, "debug-exit", dev(), 0xf4, 1, None)
            .unwrap();
        r.add("virtio-rng", "mmio", 0xd000_0000, 0x1000, Some(5));
        let ids: Vec<u32> = r.0.iter().map(|d| d.id).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(r.0[0].label, "serial COM1");
        assert_eq!((r.0[0].base, r.0[0].len, r.0[0].irq), (0x3f8, 8, Some(4)));
        assert_eq!(r.0[2].bus, "mmio");
        // A device that cannot be placed is not registered either.
        assert!(r.port(&mut pio, "clash", dev(), 0x3fa, 1, None).is_err());
        assert_eq!(r.0.len(), 3);
        let mut b = [0xffu8];
        assert!(pio.read(0xf4, &mut b));
    }
}
