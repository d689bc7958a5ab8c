//! eth0 on a user-mode network, set up by hvm's init before the command
//! runs (as the caller, who may not configure interfaces): the address
//! and gateway passt gives, loopback up, and resolv.conf. Plain ioctls, as
//! a DHCP client's script would do with `ip`.

use crate::host_net::GuestIpv4;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// passt's MTU (what its DHCP offers): large frames, no offloads needed.
const MTU: libc::c_int = 65_520;

/// glibc's `struct rtentry` (the libc crate has it only for other libcs).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the bytes are plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    r
}

fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: `arg` is the structure this request reads or writes.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) } < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn up(fd: &OwnedFd, name: &str) -> Result<(), String> {
    let mut r = ifreq(name);
    ioctl(fd, libc::SIOCGIFFLAGS, &mut r, &format!("{name} flags"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(fd, libc::SIOCSIFFLAGS, &mut r, &format!("{name} up"))
}

/// Configures lo and eth0 and writes /etc/resolv.conf (an overlay).
pub fn configure(ip: &GuestIpv4) -> Result<(), String> {
    // SAFETY: a new socket, owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: raw is a socket this function just created.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    up(&fd, "lo")?;
    let mut r = ifreq("eth0");
    r.ifr_ifru.ifru_addr = sockaddr(ip.address);
    ioctl(&fd, libc::SIOCSIFADDR, &mut r, "eth0 address")?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(ip.prefix.min(32)))
        .unwrap_or(0);
    r.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(&fd, libc::SIOCSIFNETMASK, &mut r, "eth0 netmask")?;
    r.ifr_ifru.ifru_mtu = MTU;
    ioctl(&fd, libc::SIOCSIFMTU, &mut r, "eth0 MTU")?;
    up(&fd, "eth0")?;
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(ip.gateway),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(&fd, libc::SIOCADDRT, &mut route, "default route")?;
    let resolv: String = ip.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    // Often a link into /run (systemd-resolved): replaced, in the overlay.
    let _ = std::fs::remove_file("/etc/resolv.conf");
    std::fs::write("/etc/resolv.conf", resolv).map_err(|e| format!("/etc/resolv.conf: {e}"))
}
