//! Loading a Linux kernel the way the x86 boot protocol describes it
//! (Documentation/arch/x86/boot.rst): the kernel image (bzImage or ELF
//! vmlinux, told apart by content), the initrd, the command line and the
//! boot_params "zero page" with its e820 map.

use crate::arch::x86_64::layout::{CMDLINE, CMDLINE_MAX, HIMEM_START, ZERO_PAGE};
use crate::devices::virtio::MMIO_WINDOW;
use crate::vmm::memory::{e820_map, low_ram_end};
use crate::vmm::virtio::MmioWindow;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, load_cmdline, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// hvm's default kernel command line; the spec's `cmdline` is appended.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd";

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;

/// Errors while loading what the guest boots.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path} is neither a bzImage nor an ELF vmlinux (it starts with {magic})")]
    UnknownKernelFormat { path: PathBuf, magic: String },
    #[error("cannot load kernel {path} ({format}): {source}")]
    LoadKernel {
        path: PathBuf,
        format: KernelFormat,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path} is not a 64-bit kernel (boot protocol {version:#x}, no 64-bit entry)")]
    NotLongMode { path: PathBuf, version: u16 },
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest RAM below {limit:#x} after the kernel"
    )]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot read initrd {path} into guest memory: {source}")]
    ReadInitrd {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line to guest memory: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    #[error("cannot write boot parameters to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Which kind of kernel image a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFormat::BzImage => "bzImage",
            KernelFormat::Elf => "ELF vmlinux",
        })
    }
}

/// Tells a bzImage from an ELF by content: ELF magic at 0, "HdrS" at 0x202.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && head[..4] == *b"\x7fELF" {
        Some(KernelFormat::Elf)
    } else if head.len() >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// What the vCPU needs to start the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    pub format: KernelFormat,
    /// 64-bit entry point.
    pub entry: u64,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
}

/// A kernel file, opened and recognised before any VM exists, so a wrong
/// path or a garbage file is reported without touching KVM.
pub struct KernelImage {
    path: PathBuf,
    file: File,
    format: KernelFormat,
}

impl KernelImage {
    pub fn open(path: &Path) -> Result<KernelImage, BootError> {
        let open_err = |source| BootError::OpenKernel {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        let mut head = Vec::with_capacity(0x400);
        file.by_ref()
            .take(0x400)
            .read_to_end(&mut head)
            .map_err(open_err)?;
        let format = detect_format(&head).ok_or_else(|| BootError::UnknownKernelFormat {
            path: path.to_path_buf(),
            magic: hex_head(&head),
        })?;
        Ok(KernelImage {
            path: path.to_path_buf(),
            file,
            format,
        })
    }

    pub fn format(&self) -> KernelFormat {
        self.format
    }
}

/// An initrd file, opened up front for the same reason.
pub struct Initrd {
    path: PathBuf,
    file: File,
    size: u64,
}

impl Initrd {
    pub fn open(path: &Path) -> Result<Initrd, BootError> {
        let open_err = |source| BootError::OpenInitrd {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        Ok(Initrd {
            path: path.to_path_buf(),
            file,
            size,
        })
    }
}

/// Everything [`load`] needs.
pub struct BootRequest<'a> {
    pub cmdline: &'a Cmdline,
    pub memory: u64,
    pub rsdp: u64,
}

/// Builds the full command line: hvm's defaults, the virtio devices the
/// guest should find there, then the user's text.
pub fn compose_cmdline(
    user: &str,
    replace: bool,
    devices: &[MmioWindow],
) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(BootError::Cmdline)?;
    if !replace {
        cmdline
            .insert_str(DEFAULT_CMDLINE)
            .map_err(BootError::Cmdline)?;
    }
    for d in devices {
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(d.base), d.irq, None)
            .map_err(BootError::Cmdline)?;
    }
    if !user.trim().is_empty() {
        cmdline.insert_str(user).map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

fn hex_head(head: &[u8]) -> String {
    if head.is_empty() {
        return "nothing: the file is empty".into();
    }
    head.iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Loads kernel, initrd and command line into `mem` and writes boot_params.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: KernelImage,
    initrd: Option<Initrd>,
    req: &BootRequest,
) -> Result<BootInfo, BootError> {
    let KernelImage {
        path,
        mut file,
        format,
    } = kernel;
    file.seek(SeekFrom::Start(0))
        .map_err(|source| BootError::OpenKernel {
            path: path.clone(),
            source,
        })?;
    let load_err = |source| BootError::LoadKernel {
        path: path.clone(),
        format,
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, himem).map_err(load_err)?,
        KernelFormat::BzImage => BzImage::load(mem, himem, &mut file, himem).map_err(load_err)?,
    };

    let mut params = boot_params::default();
    let entry = match loaded.setup_header {
        Some(hdr) => {
            // The 64-bit entry (startup_64) sits 0x200 into the protected-mode code.
            if hdr.version < 0x0206 {
                return Err(BootError::NotLongMode {
                    path,
                    version: hdr.version,
                });
            }
            params.hdr = hdr;
            loaded.kernel_load.raw_value() + 0x200
        }
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
            loaded.kernel_load.raw_value()
        }
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;

    // Command line, within what this kernel's header says it takes.
    let max = match params.hdr.cmdline_size {
        0 => CMDLINE_MAX,
        n => (n as usize).min(CMDLINE_MAX),
    };
    let text = req.cmdline.as_cstring().map_err(BootError::Cmdline)?;
    log::debug!("kernel command line: {}", text.to_string_lossy());
    let len = text.as_bytes().len();
    if len >= max {
        return Err(BootError::CmdlineTooLong { len, max: max - 1 });
    }
    load_cmdline(mem, GuestAddress(CMDLINE), req.cmdline).map_err(BootError::WriteCmdline)?;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = len as u32;

    // Initrd: as high as allowed in low RAM, page aligned.
    let initrd = match initrd {
        Some(initrd) => {
            let limit = match params.hdr.initrd_addr_max {
                0 => 0x37ff_ffff,
                n => u64::from(n),
            };
            let top = low_ram_end(req.memory).min(limit + 1);
            let (addr, size) = load_initrd(mem, initrd, top, loaded.kernel_end)?;
            params.hdr.ramdisk_image = addr as u32;
            params.hdr.ramdisk_size = size as u32;
            Some((addr, size))
        }
        None => None,
    };

    let map = e820_map(req.memory);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind as u32;
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = req.rsdp;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))?;

    Ok(BootInfo {
        format,
        entry,
        kernel_end: loaded.kernel_end,
        initrd,
    })
}

/// Places the initrd at the highest page-aligned address below `top`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: Initrd,
    top: u64,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let Initrd {
        path,
        mut file,
        size,
    } = initrd;
    let too_large = |path: PathBuf| BootError::InitrdTooLarge {
        path,
        size,
        limit: top,
    };
    let Some(addr) = top.checked_sub(size).map(|a| a & !0xfff) else {
        return Err(too_large(path));
    };
    if addr < kernel_end {
        return Err(too_large(path));
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::ReadInitrd { path, source })?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_content() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(&[]), None);
    }

    fn composed(user: &str, replace: bool, devices: &[MmioWindow]) -> String {
        let c = compose_cmdline(user, replace, devices).unwrap();
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn cmdline_extends_or_replaces_the_default() {
        assert_eq!(composed("", false, &[]), DEFAULT_CMDLINE);
        assert_eq!(
            composed(" quiet ", false, &[]),
            format!("{DEFAULT_CMDLINE} quiet")
        );
        assert_eq!(composed("console=hvc0", true, &[]), "console=hvc0");
        assert_eq!(
            composed(
                "init=/bin/sh",
                true,
                &[MmioWindow {
                    base: 0xd000_0000,
                    irq: 5,
                    label: "virtio-blk".into(),
                }]
            ),
            "virtio_mmio.device=4K@0xd0000000:5 init=/bin/sh"
        );
    }

    #[test]
    fn cmdline_with_control_characters_is_refused() {
        assert!(matches!(
            compose_cmdline("quiet\tinit=/x", false, &[]),
            Err(BootError::Cmdline(_))
        ));
    }

    #[test]
    fn hex_head_shows_first_bytes() {
        assert_eq!(hex_head(b"MZ\x90\x00"), "4d 5a 90 00");
        assert!(hex_head(b"").contains("empty"));
    }
}
