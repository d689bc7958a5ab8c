//! Puts the spec's virtio devices on the MMIO bus: one 4 KiB window and one
//! interrupt line each, queue notifications through ioeventfds, interrupts
//! through irqfds, and the two ways the guest finds them (the kernel command
//! line and the DSDT).

use crate::arch::x86_64::layout::VIRTIO_MMIO_START;
use crate::devices::bus::{Bus, BusError};
use crate::devices::console_output::SharedOutput;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::console::{Console, PendingInput};
use crate::devices::virtio::fs::{FsError, StartingFs, VhostUserFs};
use crate::devices::virtio::mmio::{MmioTransport, TransportWindow, QUEUE_NOTIFY};
use crate::devices::virtio::net::{FrameStream, Link, Net, Tap, TapError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevice, MMIO_WINDOW};
use crate::host_file::FileId;
use crate::mac::{default_mac, format_mac};
use crate::spec::{ConsoleDevice, NetBackend, Spec, VirtioDiscovery};
use crate::vmm::helper::{Companions, Helper};
use crate::vmm::passt::{self, PasstError};
use crate::vmm::virtiofsd::{self, Launcher, VirtiofsdError};
use kvm_ioctls::{IoEventAddress, VmFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// ISA/IOAPIC lines free for virtio devices (0-2 timer/keyboard/cascade,
/// 4 COM1, 8 RTC, 23 the ACPI GED).
const IRQS: [u32; 17] = [
    5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
];

/// Errors while attaching virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Passt(#[from] PasstError),
    #[error(transparent)]
    Virtiofsd(#[from] VirtiofsdError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("{source} ({why})")]
    Share { source: FsError, why: String },
    #[error("drives \"{first}\" and \"{second}\" are the same file ({path}): one disk written through two devices gets corrupted")]
    SameDisk {
        first: String,
        second: String,
        path: PathBuf,
    },
    #[error("too many virtio devices: {count}; hvm has interrupt lines for {max}")]
    TooMany { count: usize, max: usize },
    #[error("internal: {devices} virtio devices for {windows} windows")]
    Placement { devices: usize, windows: usize },
    #[error("cannot create an eventfd for a virtio device: {0}")]
    EventFd(std::io::Error),
    #[error("KVM refused the {what} of virtio device {index}: {source}")]
    Kvm {
        what: &'static str,
        index: usize,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// One queue's notification: the event loop waits on `evt` and serves `queue`.
pub struct QueueNotifier {
    pub evt: EventFd,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub queue: usize,
}

/// Where one device sits: its 4 KiB MMIO window and its interrupt line.
/// The DSDT and the kernel command line both describe devices from this.
#[derive(Debug, Clone)]
pub struct MmioWindow {
    pub base: u64,
    pub irq: u32,
    /// The device's label (logs, `hvm info`).
    pub label: String,
}

/// The attached devices, as the rest of the build needs them.
#[derive(Default)]
pub struct Attached {
    pub windows: Vec<MmioWindow>,
    pub notifiers: Vec<QueueNotifier>,
    /// The virtio-consoles' transports, hvc0 first (input kicks them).
    pub consoles: Vec<Arc<Mutex<MmioTransport>>>,
    /// Host fds (taps) the event loop watches, with the device they feed.
    pub backends: Vec<(std::os::fd::RawFd, Arc<Mutex<MmioTransport>>)>,
}

/// A virtio-fs device's file server, starting: the vhost-user handshake
/// (which waits for the server to be up) runs in a thread while the rest
/// of the VM is built and while the guest boots, and hands the device
/// its connection when done (see [`StartingFs`]). A virtiofsd takes
/// about as long to start as the rest of the build; under emulation,
/// longer.
pub struct StartingShare {
    tag: String,
    server: Helper,
    handshake: std::thread::JoinHandle<Result<VhostUserFs, FsError>>,
    handover: mpsc::Sender<VhostUserFs>,
}

impl StartingShare {
    /// Waits for the handshake and hands the device over; returns the
    /// server, one of the VM's companions from now on. The error quotes
    /// what the server said.
    pub fn complete(self) -> Result<Helper, VirtioError> {
        let StartingShare {
            tag,
            mut server,
            handshake,
            handover,
        } = self;
        let fs = match handshake.join() {
            Ok(done) => done,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(FsError::Handshake { tag, why })
            }
        };
        let fs = fs.map_err(|source| VirtioError::Share {
            source,
            why: server.explain(),
        })?;
        // (No receiver: the VM is gone already, and the device with it.)
        let _ = handover.send(fs);
        Ok(server)
    }
}

/// The opened devices and what comes with them.
pub struct Backends {
    /// In the order they are attached, followed by `shares`.
    pub devices: Vec<Box<dyn VirtioDevice>>,
    /// The virtio-fs devices, their servers starting.
    pub shares: Vec<(StartingFs, StartingShare)>,
    /// The virtio-consoles' input queues, hvc0 first.
    pub console_inputs: Vec<PendingInput>,
    /// The processes and files behind devices (the control loop owns them).
    pub companions: Companions,
    /// Whether another process must map guest RAM (vhost-user servers).
    pub shared_memory: bool,
}

/// Where the guest is told about the devices: (in the DSDT, on the command line).
/// `auto` uses ACPI, which every ACPI kernel's virtio-mmio driver reads;
/// a kernel that understands both would otherwise probe each device twice
/// and log an error for the second. With `acpi=off` only the command line works.
pub fn discovery(spec: &Spec) -> (bool, bool) {
    match spec.virtio_discovery {
        VirtioDiscovery::Auto => (!spec.acpi_off(), spec.acpi_off()),
        VirtioDiscovery::Acpi => (true, false),
        VirtioDiscovery::Cmdline => (false, true),
        VirtioDiscovery::Both => (true, true),
    }
}

/// Opens every backend the spec names (disk images are opened and locked
/// here, before any VM exists, so a wrong path fails fast; file servers
/// start here, so they start while the VM is built).
pub fn open_backends(
    spec: &Spec,
    outputs: &[SharedOutput],
    virtiofsd_override: Option<&std::path::Path>,
) -> Result<Backends, VirtioError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut console_inputs = Vec::new();
    let consoles = match spec.console {
        ConsoleDevice::Serial => 0,
        ConsoleDevice::Virtio => 1,
        ConsoleDevice::Command => 2,
    };
    for (i, output) in outputs.iter().take(consoles).enumerate() {
        let pending = PendingInput::default();
        let name = format!("hvc{i}");
        devices.push(Box::new(Console::named(
            output.clone(),
            pending.clone(),
            &name,
        )));
        console_inputs.push(pending);
    }
    let mut disks: Vec<(FileId, &str)> = Vec::new();
    for d in &spec.drives {
        if let Some(file) = FileId::of_path(&d.path) {
            if let Some((_, first)) = disks.iter().find(|(f, _)| *f == file) {
                return Err(VirtioError::SameDisk {
                    first: first.to_string(),
                    second: d.id.clone(),
                    path: d.path.clone(),
                });
            }
            disks.push((file, &d.id));
        }
        devices.push(Box::new(Block::open(&d.path, d.read_only, &d.id)?));
    }
    if spec.rng {
        devices.push(Box::new(Rng::default()));
    }
    let mut companions = Companions::default();
    if let Some(v) = &spec.vsock {
        devices.push(Box::new(Vsock::new(v.cid, &v.socket)?));
        companions.socket_files.push(v.socket.clone());
        log::info!(
            "vsock: guest CID {}, host socket {}",
            v.cid,
            v.socket.display()
        );
    }
    for (i, net) in spec.nets.iter().enumerate() {
        // `seed` makes the default MAC stable from run to run.
        let (link, what, seed) = match &net.backend {
            NetBackend::Tap { name } => {
                let tap = Tap::open(name.as_deref().unwrap_or("hvm%d"))?;
                let what = format!("tap {}", tap.name());
                let seed = tap.name().to_string();
                (Link::Tap(tap), what, seed)
            }
            NetBackend::User {
                forwards,
                passt,
                ipv4,
            } => {
                let (helper, socket) = passt::start(i, forwards, passt.as_deref(), ipv4.as_ref())?;
                let what = format!("user-mode, passt pid {}", helper.pid());
                companions.helpers.push(helper);
                let stream = FrameStream::new(socket).map_err(PasstError::Socket)?;
                (Link::Stream(stream), what, "user".to_string())
            }
        };
        let mac = net
            .mac
            .unwrap_or_else(|| default_mac(&format!("{seed}#{i}")));
        log::info!("net {i}: {what}, mac {}", format_mac(&mac));
        devices.push(Box::new(Net::new(link, mac)));
    }
    if devices.len() + spec.shares.len() > IRQS.len() {
        return Err(VirtioError::TooMany {
            count: devices.len() + spec.shares.len(),
            max: IRQS.len(),
        });
    }
    // Each program is probed once, however many shares it serves.
    let mut launchers: Vec<Launcher> = Vec::new();
    let mut shares = Vec::new();
    for share in &spec.shares {
        let named = virtiofsd_override.or(share.virtiofsd.as_deref());
        let program = virtiofsd::find(named, &share.tag)?;
        let how = match launchers.iter().position(|l| l.program == program) {
            Some(i) => &launchers[i],
            None => {
                launchers.push(Launcher::new(&program, &share.tag)?);
                &launchers[launchers.len() - 1]
            }
        };
        let (server, stream) = virtiofsd::start(share, how)?;
        let socket = stream.try_clone().map_err(|e| VirtioError::Share {
            source: FsError::Handshake {
                tag: share.tag.clone(),
                why: format!("cannot duplicate its connection: {e}"),
            },
            why: "virtiofsd was started".into(),
        })?;
        let tag = share.tag.clone();
        let handshake = std::thread::Builder::new()
            .name("hvm-vhost-user".into())
            .spawn(move || VhostUserFs::connect(stream, &tag))
            .map_err(|e| VirtioError::Share {
                source: FsError::Handshake {
                    tag: share.tag.clone(),
                    why: format!("cannot start its thread: {e}"),
                },
                why: "virtiofsd was started".into(),
            })?;
        let (handover, receiver) = mpsc::channel();
        shares.push((
            StartingFs::new(&share.tag, socket, receiver),
            StartingShare {
                tag: share.tag.clone(),
                server,
                handshake,
                handover,
            },
        ));
    }
    Ok(Backends {
        devices,
        shares,
        console_inputs,
        companions,
        shared_memory: !spec.shares.is_empty(),
    })
}

impl Backends {
    /// Where each device will sit, in attach order (the kernel command
    /// line and the DSDT are written from this before the devices are
    /// attached).
    pub fn windows(&self) -> Vec<MmioWindow> {
        let labels = self
            .devices
            .iter()
            .map(|d| d.label())
            .chain(self.shares.iter().map(|(fs, _)| fs.label()));
        // (open_backends refused more devices than there are lines; past
        // them, attach refuses what has no window.)
        labels
            .zip(IRQS)
            .enumerate()
            .map(|(index, (label, irq))| MmioWindow {
                base: VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW,
                irq,
                label,
            })
            .collect()
    }

    /// Every device, the file servers' among them in the state they are
    /// in (see [`StartingFs`]), and the shares whose handshakes go on.
    pub fn finish(self) -> (Vec<Box<dyn VirtioDevice>>, Vec<StartingShare>) {
        let mut devices = self.devices;
        let (fs, starting): (Vec<StartingFs>, Vec<StartingShare>) = self.shares.into_iter().unzip();
        devices.extend(fs.into_iter().map(|f| Box::new(f) as Box<dyn VirtioDevice>));
        (devices, starting)
    }
}

/// Gives each device its window (from [`Backends::windows`]), its
/// interrupt and its queue notifications.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
    windows: &[MmioWindow],
    mmio: &mut Bus,
) -> Result<Attached, VirtioError> {
    if devices.len() != windows.len() {
        return Err(VirtioError::Placement {
            devices: devices.len(),
            windows: windows.len(),
        });
    }
    let mut out = Attached::default();
    for (index, (device, window)) in devices.into_iter().zip(windows).enumerate() {
        let (base, irq_line) = (window.base, window.irq);
        let kvm = |what| {
            move |source| VirtioError::Kvm {
                what,
                index,
                source,
            }
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        vm.register_irqfd(&irq, irq_line).map_err(kvm("irqfd"))?;
        let transport = Arc::new(Mutex::new(MmioTransport::new(device, mem.clone(), irq)));
        let queues = crate::devices::bus::lock(&transport).queue_count();
        let mut kicks = Vec::new();
        for queue in 0..queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
            vm.register_ioevent(
                &evt,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY),
                queue as u32,
            )
            .map_err(kvm("ioeventfd"))?;
            kicks.push(evt.try_clone().map_err(VirtioError::EventFd)?);
            out.notifiers.push(QueueNotifier {
                evt,
                transport: transport.clone(),
                queue,
            });
        }
        // A backend process takes the kicks of external queues; the event
        // loop watches those only if that process goes away.
        crate::devices::bus::lock(&transport)
            .connect_kicks(kicks)
            .map_err(VirtioError::EventFd)?;
        log::debug!(
            "virtio device {} (type {}) at {base:#x}, IRQ {irq_line}, {queues} queue(s)",
            index,
            crate::devices::bus::lock(&transport).device_id()
        );
        if crate::devices::bus::lock(&transport).device_id()
            == virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE
        {
            out.consoles.push(transport.clone());
        }
        if let Some(fd) = crate::devices::bus::lock(&transport).backend_fd() {
            out.backends.push((fd, transport.clone()));
        }
        // The vCPU reaches the transport through its window, which answers
        // interrupt status and acknowledgement without the transport's lock.
        let bus_window = Arc::new(Mutex::new(TransportWindow::new(transport)));
        mmio.insert(bus_window, base, MMIO_WINDOW)?;
        out.windows.push(window.clone());
    }
    Ok(out)
}
