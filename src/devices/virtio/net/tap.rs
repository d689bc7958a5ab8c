//! A Linux tap device: frames with their virtio-net header (IFF_VNET_HDR),
//! so checksum and TSO offloads pass through where the tap allows them.

use super::VNET_HDR_LEN;
use libc::{TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Errors while opening a tap device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0} (load the tun module: modprobe tun)")]
    OpenTun(std::io::Error),
    #[error("tap name {0:?} is too long (15 characters at most)")]
    NameTooLong(String),
    #[error(
        "cannot attach tap device {name}: {source}; creating or attaching a tap needs CAP_NET_ADMIN \
         (run as root, or create it first: ip tuntap add dev {name} mode tap user $USER)"
    )]
    Attach {
        name: String,
        source: std::io::Error,
    },
    #[error("tap device {name}: {what} failed: {source}")]
    Configure {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// An open tap device.
pub struct Tap {
    pub(super) file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Attaches to tap `name`, or creates it (non-persistent) when it does not exist.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.len() > 15 {
            return Err(TapError::NameTooLong(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq lays out.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let actual = String::from_utf8_lossy(&req.name)
            .trim_end_matches('\0')
            .to_string();
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
            return Err(TapError::Configure {
                name: actual,
                what: "TUNSETVNETHDRSZ",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap { file, name: actual })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the tap which offloads the guest can receive; false if it cannot.
    /// Writes one frame (virtio-net header first) gathered from `iovs`:
    /// the tap takes a frame per write, whole or not at all.
    pub(super) fn write_frame(&self, iovs: &[libc::iovec]) -> std::io::Result<()> {
        let count = libc::c_int::try_from(iovs.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the iovecs point into guest RAM, checked and mapped for
        // the VM's life (guest_iovecs); writev only reads them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iovs.as_ptr(), count) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn set_offload(&self, flags: libc::c_uint) -> bool {
        // SAFETY: TUNSETOFFLOAD takes the flags as the argument value.
        unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            ) >= 0
        }
    }
}
