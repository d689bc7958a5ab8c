//! MAC addresses: the spec parses them and the network devices use them,
//! so they live here, beside both rather than inside either.

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// A MAC address from its text form ("52:54:00:12:34:56").
pub fn parse_mac(text: &str) -> Option<Mac> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// A stable, locally administered MAC derived from `seed` (the tap name).
pub fn default_mac(seed: &str) -> Mac {
    let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let b = h.to_le_bytes();
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}

/// The text form, "52:54:00:12:34:56".
pub fn format_mac(mac: &Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_defaults_are_stable_and_local() {
        assert_eq!(
            parse_mac("52:54:00:ab:cd:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:xz"), None);
        assert_eq!(parse_mac("525:4:00:ab:cd:ef"), None);
        assert_eq!(default_mac("tap0"), default_mac("tap0"));
        assert_ne!(default_mac("tap0"), default_mac("tap1"));
        assert_eq!(
            default_mac("tap0")[0] & 0x03,
            0x02,
            "locally administered unicast"
        );
    }

    #[test]
    fn macs_print_as_they_parse() {
        let mac = [0x52, 0x54, 0, 0xab, 0xcd, 0xef];
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
    }
}
