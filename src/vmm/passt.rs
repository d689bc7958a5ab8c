//! passt, the user-mode network behind `[[net]] mode = "user"`: an
//! unprivileged program that turns the guest's Ethernet frames into
//! ordinary host sockets (NAT, DHCP, DNS, port forwards). hvm starts it on
//! one end of a socket pair (`passt --fd`), so no socket file exists at
//! all; passt exits by itself when hvm's end closes.

use super::helper::{find_program, is_executable, Helper};
use crate::forward::{passt_option, Forward};
use crate::host_net::{has_default_route, GuestIpv4};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where passt is looked for after PATH.
const SEARCH: [&str; 2] = ["/usr/bin/passt", "/usr/local/bin/passt"];

/// Errors while starting passt.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error("net {index}: user-mode networking needs passt, which was not found (on PATH, {}); install it (Debian, Ubuntu: apt-get install passt; Fedora: dnf install passt) or use a tap: [[net]] mode = \"tap\"", SEARCH.join(", "))]
    NotFound { index: usize },
    #[error("net {index}: passt {} is not an executable file; install passt (Debian, Ubuntu: apt-get install passt) or fix [[net]] passt", path.display())]
    NotExecutable { index: usize, path: PathBuf },
    #[error("net {index}: user-mode networking needs a host interface with a default route (passt gives the guest that interface's addresses and gateway), and this host has none; add one (ip route add default via ... dev ...) or use a tap: [[net]] mode = \"tap\"")]
    NoRoute { index: usize },
    #[error("net {index}: cannot start passt: {source}")]
    Spawn {
        index: usize,
        source: std::io::Error,
    },
    #[error("cannot set up the socket to passt: {0}")]
    Socket(std::io::Error),
}

/// How many bytes passt may have on its way to hvm at once.
const PASST_SEND_BUFFER: libc::c_int = 4 << 20;

/// Lets passt send bigger bursts: it writes all the frames it has for the
/// guest in one non-blocking sendmsg and drops those the socket does not
/// take (Debian 12's passt resends them only when the guest's TCP notices
/// the gap, which stalls a download for a round trip or a timeout), and a
/// Unix socket takes no more than its sender's buffer. Without
/// CAP_NET_ADMIN the kernel caps the size at net.core.wmem_max (twice it).
fn widen_send_buffer(fd: std::os::fd::RawFd) {
    let size = PASST_SEND_BUFFER;
    let set = |option| {
        // SAFETY: a plain setsockopt on a socket hvm owns, with an int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    if !set(libc::SO_SNDBUFFORCE) && !set(libc::SO_SNDBUF) {
        log::debug!(
            "passt: cannot widen its socket's send buffer: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    // (The kernel reports twice the size it was given.)
    match send_buffer(fd) {
        Some(got) if got < 2 * size => log::debug!(
            "passt: its socket's send buffer is {got} bytes (net.core.wmem_max caps it without CAP_NET_ADMIN; a bigger one speeds up downloads)"
        ),
        _ => {}
    }
}

/// A socket's SO_SNDBUF as the kernel reports it (twice what was set).
fn send_buffer(fd: std::os::fd::RawFd) -> Option<libc::c_int> {
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads an int option into `got`, whose size `len` gives.
    let read = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::addr_of_mut!(got).cast(),
            &mut len,
        )
    };
    (read == 0).then_some(got)
}

/// Starts passt (`named`, else the one found) for link `index` with
/// `forwards`; returns it with hvm's end of the connection.
pub fn start(
    index: usize,
    forwards: &[Forward],
    named: Option<&Path>,
    ipv4: Option<&GuestIpv4>,
) -> Result<(Helper, UnixStream), PasstError> {
    let program = match named {
        Some(p) if is_executable(p) => p.to_path_buf(),
        Some(p) => {
            return Err(PasstError::NotExecutable {
                index,
                path: p.to_path_buf(),
            })
        }
        None => find_program("passt", &SEARCH).ok_or(PasstError::NotFound { index })?,
    };
    let routes = (
        std::fs::read_to_string("/proc/net/route").unwrap_or_default(),
        std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default(),
    );
    if !has_default_route(&routes.0, &routes.1) {
        return Err(PasstError::NoRoute { index });
    }
    let (ours, theirs) = UnixStream::pair().map_err(PasstError::Socket)?;
    let fd = theirs.as_raw_fd();
    widen_send_buffer(fd);
    let mut cmd = Command::new(&program);
    cmd.args(arguments(fd, forwards, ipv4));
    // SAFETY: the closure runs in the child between fork and exec and
    // makes one system call.
    unsafe {
        cmd.pre_exec(move || {
            // passt's end of the pair is its to inherit.
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let connection = ours.try_clone().map_err(PasstError::Socket)?;
    let helper = Helper::spawn(
        &format!("passt (net {index})"),
        &mut cmd,
        Some(connection),
        benign,
    )
    .map_err(|source| PasstError::Spawn { index, source })?;
    drop(theirs);
    log::info!(
        "net {index}: {} (pid {}) forwards {}",
        program.display(),
        helper.pid(),
        if forwards.is_empty() {
            "no host ports".to_string()
        } else {
            forwards
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    Ok((helper, ours))
}

/// passt's command line: in the foreground, quiet, on socket `fd`; the
/// guest's address when hvm chose it.
pub fn arguments(fd: i32, forwards: &[Forward], ipv4: Option<&GuestIpv4>) -> Vec<String> {
    let mut args = vec![
        "--foreground".to_string(),
        "--quiet".to_string(),
        "--fd".to_string(),
        fd.to_string(),
    ];
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // passt drops root for "nobody", looked up by name, and exits where
        // there is no passwd entry (containers, initramfs): say it by number.
        args.extend(["--runas".to_string(), "65534:65534".to_string()]);
    }
    if let Some(ip) = ipv4 {
        args.extend([
            "--address".to_string(),
            ip.address.to_string(),
            "--netmask".to_string(),
            ip.prefix.to_string(),
            "--gateway".to_string(),
            ip.gateway.to_string(),
        ]);
        for d in &ip.dns {
            args.extend(["--dns".to_string(), d.to_string()]);
        }
    }
    for f in forwards {
        args.extend(passt_option(f));
    }
    args
}

/// What passt says in normal operation: debug, not warnings.
fn benign(line: &str) -> bool {
    line.contains("to syslog")
        || line.contains("Don't run as root")
        || line.contains("Can't run AVX2 build")
        || line.contains("No external routable interface for IPv6")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::parse_forward;

    #[test]
    fn passts_end_gets_as_big_a_send_buffer_as_the_host_allows() {
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let before = send_buffer(theirs.as_raw_fd()).unwrap();
        widen_send_buffer(theirs.as_raw_fd());
        let after = send_buffer(theirs.as_raw_fd()).unwrap();
        // Without CAP_NET_ADMIN the kernel allows twice wmem_max at most.
        let wmem_max: libc::c_int = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let least = (2 * PASST_SEND_BUFFER).min(2 * wmem_max).max(before);
        assert!(after >= least, "{after} bytes, not even {least}");
    }

    #[test]
    fn arguments_carry_the_socket_and_the_forwards() {
        let f = [
            parse_forward("tcp:8080:80").unwrap(),
            parse_forward("udp:127.0.0.1:5353:53").unwrap(),
        ];
        let args = arguments(5, &f, None);
        assert_eq!(args[..4], ["--foreground", "--quiet", "--fd", "5"]);
        assert_eq!(
            args[args.len() - 4..],
            ["-t", "8080:80", "-u", "127.0.0.1/5353:53"]
        );
    }

    #[test]
    fn an_address_hvm_chose_is_passed_on() {
        let ip = GuestIpv4 {
            address: "192.0.2.2".parse().unwrap(),
            prefix: 24,
            gateway: "192.0.2.1".parse().unwrap(),
            dns: vec!["192.0.2.53".parse().unwrap()],
        };
        let args = arguments(3, &[], Some(&ip)).join(" ");
        assert!(
            args.ends_with("--address 192.0.2.2 --netmask 24 --gateway 192.0.2.1 --dns 192.0.2.53"),
            "{args}"
        );
    }

    #[test]
    fn a_missing_passt_says_which_package_brings_it() {
        let text = PasstError::NotFound { index: 0 }.to_string();
        assert!(text.contains("apt-get install passt"), "{text}");
        assert!(text.contains("mode = \"tap\""), "{text}");
    }
}
