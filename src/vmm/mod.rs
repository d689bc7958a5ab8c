//! One running machine: built from a [`Spec`] step by step (KVM, memory,
//! ACPI, kernel, devices, vCPUs), then run until it has a reason to stop.

pub mod boot;
pub mod event_loop;
pub mod exit;
pub mod memory;
pub mod terminal;
pub mod vcpu;
pub mod virtio;

use crate::arch::x86_64::acpi::{self, DsdtDevice, RESET_PORT, SLEEP_CONTROL_PORT};
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::arch::x86_64::regs;
use crate::devices::bus::{Bus, BusError};
use crate::devices::cmos::{Cmos, CMOS_LEN, CMOS_PORT};
use crate::devices::i8042::{I8042, I8042_DATA_PORT};
use crate::devices::pci_root::{PciRoot, PCI_CONFIG_LEN, PCI_CONFIG_PORT};
use crate::devices::serial::{SerialDevice, SharedOutput, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::devices::system_ports::{
    AcpiPm, BootMarker, DebugExit, PvPanic, BOOT_MARKER_PORT, DEBUG_EXIT_PORT, PVPANIC_PORT,
};
use crate::devices::virtio::MMIO_WINDOW;
use crate::spec::{SerialOutput, Spec};
use crate::timeline;
use event_loop::{EventLoop, EventLoopError, Input, InputTarget};
use exit::{ExitReason, ExitSender};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vcpu::{Vcpu, VcpuContext, VcpuError};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("cannot create {what} {path}: {source}")]
    OutputFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// How to run (the command line's part; the spec says what to run).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub timeout: Option<Duration>,
    pub serial_log: Option<PathBuf>,
}

/// A built VM, not yet running.
pub struct Vm {
    _kvm: Kvm,
    _vm: VmFd,
    _memory: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    ctx: VcpuContext,
    exits: Receiver<ExitReason>,
    output: SharedOutput,
    input: Input,
    target: InputTarget,
    notifiers: Vec<virtio::QueueNotifier>,
    backends: Vec<(
        std::os::fd::RawFd,
        Arc<Mutex<crate::devices::virtio::mmio::MmioTransport>>,
    )>,
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
    attached: &virtio::Attached,
    kernel: boot::KernelImage,
    initrd: Option<boot::Initrd>,
) -> Result<boot::BootInfo, VmError> {
    let (in_acpi, in_cmdline) = virtio::discovery(spec);
    let mut dsdt = dsdt_devices();
    if in_acpi {
        dsdt.extend(
            attached
                .windows
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
    let devices = if in_cmdline {
        attached.windows.as_slice()
    } else {
        &[]
    };
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
        let kernel = boot::KernelImage::open(&spec.kernel)?;
        let initrd = spec.initrd.as_deref().map(boot::Initrd::open).transpose()?;
        let (output, input) = Self::console_output(spec, opts)?;
        let (backends, console_input) = virtio::open_backends(spec, &output)?;
        let kvm = open_kvm()?;
        check_kvm(&kvm)?;
        let memory = memory::create_guest_memory(spec.memory)?;
        timeline::mark("memory mapped");
        let vm = create_vm(&kvm, spec, &memory)?;
        timeline::mark("KVM VM created");

        let mut mmio = Bus::new();
        let attached = virtio::attach(&vm, &memory, backends, &mut mmio)?;
        let boot = load_guest(spec, &memory, &attached, kernel, initrd)?;
        timeline::mark("kernel loaded");

        let (exit, exits) = ExitSender::channel();
        let serial = Self::serial(&vm, output.clone())?;
        let pio = Self::port_devices(&serial, &exit)?;
        let target = match (console_input, attached.console) {
            (Some(pending), Some(transport)) => InputTarget::Virtio { pending, transport },
            _ => InputTarget::Serial(serial),
        };
        let ctx = VcpuContext {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            exit,
        };

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let vcpus = (0..spec.vcpus)
            .map(|id| Vcpu::new(&vm, &supported, id, spec.vcpus, boot.entry))
            .collect::<Result<Vec<_>, _>>()?;
        timeline::mark("vCPUs configured");

        Ok(Vm {
            _kvm: kvm,
            _vm: vm,
            _memory: memory,
            vcpus,
            ctx,
            exits,
            output,
            input,
            target,
            notifiers: attached.notifiers,
            backends: attached.backends,
        })
    }

    /// Where guest console output goes, and whether stdin feeds the guest.
    fn console_output(spec: &Spec, opts: &RunOptions) -> Result<(SharedOutput, Input), VmError> {
        let create = |what, path: &PathBuf| {
            File::create(path).map_err(|source| VmError::OutputFile {
                what,
                path: path.clone(),
                source,
            })
        };
        let (out, input) = match &spec.serial {
            SerialOutput::Stdio => {
                let input = if terminal::stdin_is_tty() {
                    Input::Terminal
                } else {
                    Input::Stream
                };
                (SharedOutput::new(true), input)
            }
            SerialOutput::File(path) => {
                let out = SharedOutput::new(false);
                out.add_file(create("serial output file", path)?);
                (out, Input::None)
            }
            SerialOutput::Off => (SharedOutput::new(false), Input::None),
        };
        if let Some(path) = &opts.serial_log {
            out.add_file(create("serial log", path)?);
        }
        Ok((out, input))
    }

    /// COM1, printing to the console sinks, its interrupt an irqfd.
    fn serial(vm: &VmFd, output: SharedOutput) -> Result<Arc<Mutex<SerialDevice>>, VmError> {
        let irq =
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm_err("register the serial irqfd"))?;
        Ok(Arc::new(Mutex::new(SerialDevice::new(irq, output))))
    }

    /// The port-I/O bus: COM1, i8042, CMOS, PCI config and hvm's system ports.
    fn port_devices(serial: &Arc<Mutex<SerialDevice>>, exit: &ExitSender) -> Result<Bus, VmError> {
        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_PORT.into(), COM1_LEN)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            I8042_DATA_PORT.into(),
            5,
        )?;
        pio.insert(
            Arc::new(Mutex::new(Cmos::default())),
            CMOS_PORT.into(),
            CMOS_LEN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(PciRoot::default())),
            PCI_CONFIG_PORT.into(),
            PCI_CONFIG_LEN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(DebugExit(exit.clone()))),
            DEBUG_EXIT_PORT.into(),
            1,
        )?;
        pio.insert(
            Arc::new(Mutex::new(BootMarker::default())),
            BOOT_MARKER_PORT.into(),
            1,
        )?;
        pio.insert(
            Arc::new(Mutex::new(PvPanic(exit.clone()))),
            PVPANIC_PORT.into(),
            1,
        )?;
        let pm_len = u64::from(RESET_PORT - SLEEP_CONTROL_PORT) + 1;
        pio.insert(
            Arc::new(Mutex::new(AcpiPm(exit.clone()))),
            SLEEP_CONTROL_PORT.into(),
            pm_len,
        )?;
        Ok(pio)
    }

    /// Runs the VM until it stops, and says why. Restores the terminal and
    /// flushes the console files before returning.
    pub fn run(self, opts: &RunOptions) -> Result<ExitReason, VmError> {
        let signals = event_loop::take_stop_signals()?;
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
        EventLoop {
            target: self.target,
            exit: self.ctx.exit.clone(),
            signals,
            input: self.input,
            notifiers: self.notifiers,
            backends: self.backends,
        }
        .spawn()?;
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        for vcpu in self.vcpus {
            vcpu.spawn(self.ctx.clone())?;
        }
        let reason = match deadline {
            None => self.exits.recv().unwrap_or(ExitReason::VcpuFailed {
                vcpu: 0,
                message: "all vCPUs vanished".into(),
            }),
            Some(d) => match self
                .exits
                .recv_timeout(d.saturating_duration_since(Instant::now()))
            {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => ExitReason::Timeout,
                Err(RecvTimeoutError::Disconnected) => ExitReason::VcpuFailed {
                    vcpu: 0,
                    message: "all vCPUs vanished".into(),
                },
            },
        };
        timeline::mark("VM stopped");
        self.output.sync();
        terminal::restore();
        Ok(reason)
    }
}

/// Devices the DSDT describes (distro kernels find them there).
fn dsdt_devices() -> Vec<DsdtDevice> {
    vec![
        DsdtDevice::Ports {
            name: "COM1",
            hid: "PNP0501",
            port: COM1_PORT,
            len: COM1_LEN as u8,
            irq: Some(COM1_IRQ),
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
