//! Completing a checksum the guest left to the device. With
//! VIRTIO_NET_F_CSUM a driver may send a frame whose TCP or UDP checksum
//! holds only the pseudo-header's sum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the
//! device sums from `csum_start` to the end and stores the result at
//! `csum_start + csum_offset`. On a passt link hvm does that before the
//! frame leaves, so the guest spends nothing on checksums either way and
//! passt still gets frames as a wire would carry them.

/// The 16-bit ones' complement sum of `data` (big-endian words, an odd
/// last byte padded with zero), not yet complemented.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum += u64::from(u32::from_be_bytes(tail));
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Why a frame cannot leave.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsendable {
    /// A segmentation offload hvm never offered.
    Gso(u8),
    /// The checksum's place lies outside the frame.
    Offsets { start: usize, offset: usize },
}

/// Completes `packet`'s checksum as the virtio-net header (flags, gso
/// type, csum_start, csum_offset, as they lie in its first 10 bytes)
/// asks: nothing to do without NEEDS_CSUM.
pub fn complete(header: &[u8], packet: &mut [u8]) -> Result<(), Unsendable> {
    const NEEDS_CSUM: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    const GSO_NONE: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_NONE as u8;
    if header[1] != GSO_NONE {
        return Err(Unsendable::Gso(header[1]));
    }
    if header[0] & NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(u16::from_le_bytes([header[6], header[7]]));
    let offset = usize::from(u16::from_le_bytes([header[8], header[9]]));
    let at = start + offset;
    if start >= packet.len() || at + 2 > packet.len() {
        return Err(Unsendable::Offsets { start, offset });
    }
    // 0 and 0xffff are the same number; a zero UDP checksum would mean "none".
    let sum = match !ones_complement_sum(&packet[start..]) {
        0 => 0xffff,
        s => s,
    };
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame carrying `payload`, its TCP checksum
    /// holding the pseudo-header's sum (what Linux leaves for the device).
    fn partial_tcp(payload: &[u8]) -> (Vec<u8>, [u8; 12]) {
        let (src, dst) = ([10, 0, 2, 15], [192, 0, 2, 1]);
        let tcp_len = 20 + payload.len();
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        f.extend_from_slice(&tcp);
        f.extend_from_slice(payload);
        let pseudo = pseudo_header(src, dst, tcp_len);
        let partial = ones_complement_sum(&pseudo);
        f[34 + 16..34 + 18].copy_from_slice(&partial.to_be_bytes());
        let mut header = [0u8; 12];
        header[0] = virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        header[6..8].copy_from_slice(&34u16.to_le_bytes());
        header[8..10].copy_from_slice(&16u16.to_le_bytes());
        (f, header)
    }

    fn pseudo_header(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = src.to_vec();
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0, 6]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        p
    }

    #[test]
    fn a_completed_tcp_checksum_verifies_as_a_receiver_checks_it() {
        for len in [0, 1, 2, 3, 1000, 1461, 65_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let (mut f, header) = partial_tcp(&payload);
            complete(&header, &mut f).unwrap();
            // A receiver sums pseudo-header and segment, checksum included:
            // all ones when it is right.
            let mut whole = pseudo_header([10, 0, 2, 15], [192, 0, 2, 1], 20 + len);
            whole.extend_from_slice(&f[34..]);
            assert_eq!(ones_complement_sum(&whole), 0xffff, "payload of {len}");
        }
    }

    #[test]
    fn the_sum_is_the_rfc_1071_example() {
        // RFC 1071, 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&data), 0xddf2);
        assert_eq!(ones_complement_sum(&data[..7]), 0xddf2 - 0xf7);
    }

    #[test]
    fn frames_without_the_flag_go_untouched_and_bad_ones_not_at_all() {
        let (mut f, mut header) = partial_tcp(b"abc");
        let before = f.clone();
        header[0] = 0;
        complete(&header, &mut f).unwrap();
        assert_eq!(f, before);
        header[1] = 1; // GSO_TCPV4
        assert_eq!(complete(&header, &mut f), Err(Unsendable::Gso(1)));
        let (mut f, mut header) = partial_tcp(b"abc");
        header[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            complete(&header, &mut f),
            Err(Unsendable::Offsets { .. })
        ));
        header[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        header[8..10].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(
            complete(&header, &mut f),
            Err(Unsendable::Offsets { .. })
        ));
    }
}
