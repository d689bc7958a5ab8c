//! What the host's network looks like, as far as user-mode networking
//! cares: passt gives the guest the address and gateway of the host
//! interface with the default route. hvm reads the same facts when it must
//! configure the guest itself (`--rootfs` runs, where its own init, not a
//! DHCP client, brings eth0 up), and hands them to passt too, so both agree.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The guest's IPv4 configuration on a user-mode link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestIpv4 {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Name servers (the host's, loopback ones left out: the guest cannot reach them).
    pub dns: Vec<Ipv4Addr>,
}

/// The host's IPv4 default route: (interface, gateway).
pub fn default_route(route: &str) -> Option<(String, Ipv4Addr)> {
    const RTF_UP: u32 = 0x1;
    route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        if f.get(1)? != &"00000000" || flags & RTF_UP == 0 {
            return None;
        }
        // The kernel prints the address as a host-order (little-endian) word.
        let gw = u32::from_str_radix(f.get(2)?, 16).ok()?;
        Some((f[0].to_string(), Ipv4Addr::from(gw.swap_bytes())))
    })
}

/// Whether the host has a usable default route, IPv4 or IPv6 (passt
/// refuses to start without one: "No external routable interface").
pub fn has_default_route(route: &str, ipv6_route: &str) -> bool {
    const RTF_UP: u32 = 0x1;
    const RTF_REJECT: u32 = 0x200;
    let v6 = ipv6_route.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 10
            && f[0].bytes().all(|b| b == b'0')
            && f[1] == "00"
            && f[9] != "lo"
            && u32::from_str_radix(f[8], 16)
                .is_ok_and(|flags| flags & RTF_UP != 0 && flags & RTF_REJECT == 0)
    });
    default_route(route).is_some() || v6
}

/// The first IPv4 address of interface `name`, with its prefix length.
fn interface_ipv4(name: &str) -> Option<(Ipv4Addr, u8)> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` walks the list getifaddrs returned, which is alive.
        let ifa = unsafe { &*at };
        at = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string; the sockaddrs are
        // sockaddr_in when their family says AF_INET.
        unsafe {
            if std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() != name.as_bytes()
                || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET
            {
                continue;
            }
            let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
            found = Some((
                Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                u32::from_be(mask.sin_addr.s_addr).count_ones() as u8,
            ));
        }
        break;
    }
    // SAFETY: frees what getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// Name servers from resolv.conf text, loopback ones left out.
pub fn name_servers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// What passt will give the guest on this host, if it has an IPv4 default route.
pub fn guest_ipv4() -> Option<GuestIpv4> {
    let route = std::fs::read_to_string("/proc/net/route").ok()?;
    let (interface, gateway) = default_route(&route)?;
    let (address, prefix) = interface_ipv4(&interface)?;
    let dns = name_servers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    Some(GuestIpv4 {
        address,
        prefix,
        gateway,
        dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_is_read_from_proc_net_route() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_route(route),
            Some(("eth0".to_string(), Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(default_route("Iface\n"), None);
    }

    #[test]
    fn default_routes_are_recognised() {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let v4 = format!("{header}eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
        let no_v4 = format!("{header}eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
        let v6_lo_reject = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n";
        assert!(has_default_route(&v4, ""));
        assert!(!has_default_route(&no_v4, v6_lo_reject));
        assert!(has_default_route(&no_v4, v6));
        assert!(!has_default_route("", ""));
    }

    #[test]
    fn loopback_name_servers_are_left_out() {
        let conf =
            "# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\nsearch lan\n";
        assert_eq!(name_servers(conf), vec![Ipv4Addr::new(10, 255, 255, 53)]);
    }

    #[test]
    fn loopback_has_an_address_and_a_prefix() {
        assert_eq!(interface_ipv4("lo"), Some((Ipv4Addr::LOCALHOST, 8)));
        assert_eq!(interface_ipv4("no-such-interface"), None);
    }
}
