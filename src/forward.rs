//! Port forwards of user-mode networking: `tcp:8080:80` sends connections
//! to the host's port 8080 on to the guest's port 80. Parsed for the spec
//! (`[[net]] forward`) and the command line (`--forward`) alike.

use std::fmt;
use std::net::IpAddr;

/// What a rule must look like, for error messages.
pub const FORWARD_SYNTAX: &str = "must be \"PROTO:[HOST_ADDRESS:]HOST_PORT:GUEST_PORT\" with PROTO tcp or udp and ports 1 to 65535, like \"tcp:8080:80\", \"udp:5353:53\" or \"tcp:127.0.0.1:2222:22\" (IPv6 in brackets: \"tcp:[::1]:2222:22\")";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One forwarded host port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub protocol: Protocol,
    /// The host address to listen on (`None`: every address).
    pub host_address: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        match self.host_address {
            Some(IpAddr::V6(a)) => write!(f, "{proto}:[{a}]:")?,
            Some(IpAddr::V4(a)) => write!(f, "{proto}:{a}:")?,
            None => write!(f, "{proto}:")?,
        }
        write!(f, "{}:{}", self.host_port, self.guest_port)
    }
}

fn port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

/// Parses one rule; `None` if it does not follow [`FORWARD_SYNTAX`].
pub fn parse_forward(rule: &str) -> Option<Forward> {
    let (proto, rest) = rule.split_once(':')?;
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    // The two ports are the last two fields; what precedes them is the address.
    let (rest, guest) = rest.rsplit_once(':')?;
    let (address, host) = match rest.rsplit_once(':') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let host_address = match address {
        None => None,
        Some(a) => {
            let a = match (a.strip_prefix('['), a.strip_suffix(']')) {
                (Some(_), Some(_)) => &a[1..a.len() - 1],
                _ if a.contains(':') => return None,
                _ => a,
            };
            Some(a.parse::<IpAddr>().ok()?)
        }
    };
    Some(Forward {
        protocol,
        host_address,
        host_port: port(host)?,
        guest_port: port(guest)?,
    })
}

/// passt's option and value for `f`: `-t 127.0.0.1/2222:22`.
pub fn passt_option(f: &Forward) -> [String; 2] {
    let flag = match f.protocol {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
    };
    let address = f.host_address.map(|a| format!("{a}/")).unwrap_or_default();
    [
        flag.to_string(),
        format!("{address}{}:{}", f.host_port, f.guest_port),
    ]
}

/// The first rule that listens where an earlier one does (same protocol
/// and host port, and the same or any address).
pub fn find_clash(rules: &[Forward]) -> Option<&Forward> {
    rules.iter().enumerate().find_map(|(i, r)| {
        rules[..i]
            .iter()
            .any(|e| {
                e.protocol == r.protocol
                    && e.host_port == r.host_port
                    && (e.host_address.is_none()
                        || r.host_address.is_none()
                        || e.host_address == r.host_address)
            })
            .then_some(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_and_without_an_address() {
        let f = parse_forward("tcp:8080:80").unwrap();
        assert_eq!(
            f,
            Forward {
                protocol: Protocol::Tcp,
                host_address: None,
                host_port: 8080,
                guest_port: 80
            }
        );
        assert_eq!(passt_option(&f), ["-t", "8080:80"]);
        let f = parse_forward("udp:127.0.0.1:5353:53").unwrap();
        assert_eq!(passt_option(&f), ["-u", "127.0.0.1/5353:53"]);
        assert_eq!(f.to_string(), "udp:127.0.0.1:5353:53");
        let f = parse_forward("tcp:[::1]:2222:22").unwrap();
        assert_eq!(passt_option(&f), ["-t", "::1/2222:22"]);
        assert_eq!(f.to_string(), "tcp:[::1]:2222:22");
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "",
            "tcp",
            "tcp:80",
            "sctp:80:80",
            "tcp:0:80",
            "tcp:80:0",
            "tcp:65536:80",
            "tcp:host:80:80",
            "tcp:::1:22:22",
            "tcp:1.2.3.4:x:80",
            "TCP:80:80",
            "tcp:80:80:",
        ] {
            assert_eq!(parse_forward(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_same_host_port_twice_is_a_clash() {
        let rules =
            |r: &[&str]| -> Vec<Forward> { r.iter().map(|s| parse_forward(s).unwrap()).collect() };
        assert_eq!(find_clash(&rules(&["tcp:80:80", "udp:80:80"])), None);
        assert_eq!(
            find_clash(&rules(&["tcp:127.0.0.1:80:80", "tcp:127.0.0.2:80:81"])),
            None
        );
        let r = rules(&["tcp:8080:80", "tcp:127.0.0.1:8080:81"]);
        assert_eq!(find_clash(&r), Some(&r[1]));
    }
}
