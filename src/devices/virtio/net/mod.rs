//! virtio-net: frames from the guest's transmit queue go to a link, frames
//! from the link fill the receive queue. The link is a Linux tap device
//! (the virtio-net header passes through, so checksum and TSO offloads work
//! end to end where the tap allows them) or a stream to passt, user-mode
//! networking without privileges (plain frames: hvm completes checksums
//! the guest left to it, and offers no segmentation offloads).

mod checksum;
mod stream;
mod tap;

pub use stream::FrameStream;
pub use tap::{Tap, TapError};

use super::guest_io::{chain_spans, guest_iovecs};
use super::used_batch;
use super::{
    drain_queue_until, read_config_bytes, BackendEvent, QueueError, Served, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use stream::Received;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// virtio_net_hdr_v1: what precedes every frame with VIRTIO_F_VERSION_1.
const VNET_HDR_LEN: usize = 12;
/// Largest frame plus header a tap hands over (64 KiB TSO segment).
const MAX_FRAME: usize = 65_562;

/// What became of a frame offered to the receive queue.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Delivered {
        buffers: u16,
    },
    /// The guest has not posted room for it yet; it stays pending.
    NoBuffers,
    /// The guest's buffer was too small or bad: the frame is lost.
    Dropped,
}

/// Writes a frame (`header`, then `body`) into the receive queue: into one
/// chain, or into as many as it takes when `mergeable`. The chains are
/// published together (see used_batch.rs); the flag says whether the driver
/// asked to be notified of them.
fn deliver(
    mut header: [u8; VNET_HDR_LEN],
    body: &[u8],
    mergeable: bool,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<(Delivery, bool), QueueError> {
    let len = VNET_HDR_LEN + body.len();
    let mut chains = Vec::new();
    let mut room = 0usize;
    while room < len && (chains.is_empty() || mergeable) {
        let Some(chain) = queue.iter(mem)?.next() else {
            // Not enough room yet: give back what was taken.
            for _ in 0..chains.len() {
                queue.go_to_previous_position();
            }
            return Ok((Delivery::NoBuffers, false));
        };
        room += chain.clone().writer(mem).map_or(0, |w| w.available_bytes());
        chains.push(chain);
    }
    if room < len {
        let used: Vec<(u16, u32)> = chains.iter().map(|c| (c.head_index(), 0)).collect();
        let notify = used_batch::publish(queue, mem, &used)?;
        return Ok((Delivery::Dropped, notify));
    }
    // num_buffers: the tap leaves these two bytes of the header alone.
    let buffers = chains.len() as u16;
    header[VNET_HDR_LEN - 2..].copy_from_slice(&buffers.to_le_bytes());
    let mut offset = 0;
    let mut used = Vec::with_capacity(chains.len());
    for chain in chains {
        let head = chain.head_index();
        let written = match chain.writer(mem) {
            Ok(mut w) => {
                let n = w.available_bytes().min(len - offset);
                write_span(&mut w, &header, body, offset, n).map_or(0, |()| n)
            }
            Err(_) => 0,
        };
        offset += written;
        used.push((head, written as u32));
    }
    let notify = used_batch::publish(queue, mem, &used)?;
    Ok((
        if offset == len {
            Delivery::Delivered { buffers }
        } else {
            Delivery::Dropped
        },
        notify,
    ))
}

/// Writes bytes `from..from + n` of `header` followed by `body`.
fn write_span(
    w: &mut impl Write,
    header: &[u8],
    body: &[u8],
    from: usize,
    n: usize,
) -> std::io::Result<()> {
    let end = from + n;
    if from < header.len() {
        w.write_all(&header[from..end.min(header.len())])?;
    }
    if end > header.len() {
        w.write_all(&body[from.max(header.len()) - header.len()..end - header.len()])?;
    }
    Ok(())
}

/// Where the frames go.
pub enum Link {
    Tap(Tap),
    /// passt (or anything speaking its framing) on a connected socket.
    Stream(FrameStream),
}

impl Link {
    fn describe(&self) -> String {
        match self {
            Link::Tap(t) => format!("tap {}", t.name()),
            Link::Stream(_) => "user-mode (passt)".to_string(),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Link::Tap(t) => t.file.as_raw_fd(),
            Link::Stream(s) => s.socket().as_raw_fd(),
        }
    }
}

pub struct Net {
    link: Link,
    /// What the link is, for messages ("tap hvm0", "user-mode (passt)").
    name: String,
    config: [u8; 8],
    offloads: bool,
    /// VIRTIO_NET_F_MRG_RXBUF negotiated: a frame may span several receive
    /// chains, so the guest can post small buffers instead of 64 KiB ones.
    mergeable: bool,
    /// Frames from passt go to the guest marked checksum-verified (see
    /// [`Net::features`]).
    rx_checksums_valid: bool,
    /// A frame read from the link that waits for a receive buffer.
    pending: Option<usize>,
    /// The link's far end is gone: frames from the guest are dropped.
    down: bool,
    /// A frame read from a tap, header first.
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    dropped: u64,
}

impl Net {
    pub fn new(link: Link, mac: crate::mac::Mac) -> Net {
        let offloads = match &link {
            Link::Tap(tap) => {
                let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
                tap.set_offload(all) && tap.set_offload(0)
            }
            Link::Stream(_) => false,
        };
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        // (A stream's frames go to the guest from the stream's own buffer.)
        let rx_buf = match &link {
            Link::Tap(_) => vec![0; MAX_FRAME],
            Link::Stream(_) => Vec::new(),
        };
        Net {
            name: link.describe(),
            link,
            config,
            offloads,
            mergeable: false,
            rx_checksums_valid: false,
            pending: None,
            down: false,
            rx_buf,
            tx_buf: Vec::new(),
            dropped: 0,
        }
    }

    /// Finds the next frame from the link: a tap's is read into `rx_buf`,
    /// virtio-net header first; a stream's stays in the stream's buffer
    /// (see [`Net::stream_header`]). Its length with the header; None when
    /// there is none now.
    fn next_frame(&mut self) -> Option<usize> {
        match &mut self.link {
            Link::Tap(tap) => loop {
                match tap.file.read(&mut self.rx_buf) {
                    Ok(0) => return None,
                    Ok(n) if n > VNET_HDR_LEN => return Some(n),
                    // (A tap always gives a header; a frame without a body
                    // is nothing to pass on.)
                    Ok(_) => self.dropped += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                    Err(e) => {
                        log::warn!("{}: read failed: {e}", self.name);
                        return None;
                    }
                }
            },
            Link::Stream(stream) => match stream.peek() {
                Ok(Received::Frame(n)) => Some(VNET_HDR_LEN + n),
                Ok(Received::Nothing) => None,
                Ok(Received::Closed) => {
                    self.link_lost("closed the connection".into());
                    None
                }
                Err(e) => {
                    self.link_lost(e.to_string());
                    None
                }
            },
        }
    }

    /// The header of a frame from passt: no offloads but the one,
    /// DATA_VALID.
    fn stream_header(&self) -> [u8; VNET_HDR_LEN] {
        let mut header = [0u8; VNET_HDR_LEN];
        if self.rx_checksums_valid {
            header[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
        }
        header
    }

    /// The far end of a stream link went away: say so once; the guest's
    /// frames are dropped from now on, so its network stops but nothing hangs.
    fn link_lost(&mut self, why: String) {
        if !self.down {
            self.down = true;
            log::error!(
                "net: passt {why}: the guest has no network from now on (passt's own messages, if any, are above)"
            );
        }
    }

    /// Moves frames from the link into receive buffers until either runs out.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Served, QueueError> {
        let mut served = Served::default();
        loop {
            let Some(len) = self.pending.take().or_else(|| self.next_frame()) else {
                return Ok(served);
            };
            let (delivery, notify) = match &self.link {
                Link::Tap(_) => {
                    let mut header = [0u8; VNET_HDR_LEN];
                    header.copy_from_slice(&self.rx_buf[..VNET_HDR_LEN]);
                    let body = &self.rx_buf[VNET_HDR_LEN..len];
                    deliver(header, body, self.mergeable, queue, mem)?
                }
                Link::Stream(stream) => deliver(
                    self.stream_header(),
                    stream.frame(),
                    self.mergeable,
                    queue,
                    mem,
                )?,
            };
            if delivery != Delivery::NoBuffers {
                if let Link::Stream(stream) = &mut self.link {
                    stream.consume();
                }
            }
            served.notify |= notify;
            match delivery {
                Delivery::NoBuffers => {
                    // Kept until the guest posts buffers (it notifies the
                    // queue); what passt sends meanwhile waits in hvm.
                    self.pending = Some(len);
                    if let Link::Stream(stream) = &mut self.link {
                        if let Err(e) = stream.fill() {
                            self.link_lost(e.to_string());
                        }
                    }
                    if Self::rearm_receive(queue, mem)? {
                        continue;
                    }
                    return Ok(served);
                }
                Delivery::Dropped => {
                    self.dropped += 1;
                    log::debug!(
                        "net: dropped a {len}-byte frame: receive buffers too small or bad"
                    );
                }
                Delivery::Delivered { buffers } => {
                    log::trace!("net: rx frame of {len} bytes in {buffers} buffer(s)");
                }
            }
            served.used = true;
        }
    }

    /// Whether the link can take no more frames now (a stream whose socket
    /// is full; taps never push back: what they cannot take is dropped).
    fn link_blocked(&mut self) -> bool {
        let Link::Stream(stream) = &mut self.link else {
            return false;
        };
        match stream.flush() {
            Ok(done) => !done,
            Err(e) => {
                self.link_lost(e.to_string());
                false
            }
        }
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Served, QueueError> {
        if self.link_blocked() {
            return Ok(Served::default());
        }
        let (link, buf, dropped, down) = (
            &mut self.link,
            &mut self.tx_buf,
            &mut self.dropped,
            &mut self.down,
        );
        let blocked = std::cell::Cell::new(false);
        let name = &self.name;
        drain_queue_until(
            queue,
            mem,
            |chain| {
                let (readable, _) = chain_spans(chain);
                // A chain longer than any frame (it may span all of guest RAM)
                // is dropped unread.
                let len = readable.iter().fold(0usize, |n, s| n.saturating_add(s.1));
                log::trace!("net: tx chain of {len} bytes");
                if len <= VNET_HDR_LEN || len > MAX_FRAME || *down {
                    *dropped += 1;
                    return 0;
                }
                let sent = match link {
                    // The tap takes header and frame as they lie in guest
                    // memory: one writev, no copy in hvm.
                    Link::Tap(tap) => match guest_iovecs(mem, &readable, 0, len) {
                        Some(iovs) => tap.write_frame(&iovs),
                        None => Err(std::io::ErrorKind::InvalidInput.into()),
                    },
                    // passt wants the frame without the header, behind a
                    // length, checksums complete: gathered into one buffer
                    // for the stream.
                    Link::Stream(stream) => {
                        buf.resize(len, 0);
                        let r = if read_spans(mem, &readable, buf) {
                            let (header, packet) = buf.split_at_mut(VNET_HDR_LEN);
                            match checksum::complete(header, packet) {
                                Ok(()) => stream.send(packet),
                                Err(why) => Err(std::io::Error::new(
                                    std::io::ErrorKind::InvalidInput,
                                    format!("{why:?}"),
                                )),
                            }
                        } else {
                            Err(std::io::ErrorKind::InvalidInput.into())
                        };
                        blocked.set(stream.blocked());
                        r
                    }
                };
                if let Err(e) = sent {
                    *dropped += 1;
                    log::debug!("{name}: frame not sent: {e}");
                }
                0
            },
            // A full socket: the rest waits in the ring until it drains.
            || blocked.get(),
        )
    }

    /// Out of receive buffers: ask the guest to notify the queue when it
    /// posts the next one. With EVENT_IDX that means an avail_event at the
    /// ring's current index (not where hvm stopped: a mergeable frame may
    /// wait for more buffers than are posted). True when buffers arrived
    /// meanwhile, so the caller tries again.
    fn rearm_receive(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let stopped_at = queue.next_avail();
        let posted = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire)?;
        queue.set_next_avail(posted.0);
        let more = queue.enable_notification(mem);
        queue.set_next_avail(stopped_at);
        Ok(more?)
    }
}

/// Copies `spans` of guest memory into `buf` (as long as their total).
fn read_spans(mem: &GuestMemoryMmap, spans: &[(GuestAddress, usize)], buf: &mut [u8]) -> bool {
    let mut at = 0;
    for &(addr, n) in spans {
        if mem.read_slice(&mut buf[at..at + n], addr).is_err() {
            return false;
        }
        at += n;
    }
    true
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET
    }

    fn label(&self) -> String {
        format!("virtio-net ({})", self.name)
    }

    /// On a passt link, the checksum offloads both ways, and no more.
    /// GUEST_CSUM is used only to mark received frames DATA_VALID (never
    /// with partial checksums): passt writes every checksum of what it
    /// sends the guest itself, from data the host's sockets delivered, and
    /// the frames cross a local socket that cannot corrupt them; so the
    /// guest need not compute each one again, which is most of its receive
    /// cost without TSO. CSUM lets the guest leave its frames' checksums
    /// to hvm, which completes them before passt sees them (see
    /// checksum.rs): the guest then also builds its segments from pages
    /// (scatter-gather) instead of copying each into one buffer.
    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_MRG_RXBUF);
        if matches!(self.link, Link::Stream(_)) {
            f |= (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_CSUM);
        }
        if self.offloads {
            f |= (1 << VIRTIO_NET_F_CSUM)
                | (1 << VIRTIO_NET_F_GUEST_CSUM)
                | (1 << VIRTIO_NET_F_GUEST_TSO4)
                | (1 << VIRTIO_NET_F_GUEST_TSO6)
                | (1 << VIRTIO_NET_F_HOST_TSO4)
                | (1 << VIRTIO_NET_F_HOST_TSO6);
        }
        f
    }

    fn queue_sizes(&self) -> &[u16] {
        &[256, 256]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        features: u64,
        _queues: &[Queue],
        _mem: &GuestMemoryMmap,
    ) -> Result<(), QueueError> {
        self.mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        self.rx_checksums_valid =
            matches!(self.link, Link::Stream(_)) && features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0;
        log::info!(
            "net {}: driver ready (mergeable rx buffers: {}, guest offloads: {})",
            self.name,
            self.mergeable,
            features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0
        );
        let Link::Tap(tap) = &self.link else {
            return Ok(());
        };
        if !self.offloads {
            return Ok(());
        }
        let mut flags = 0;
        if features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0 {
            flags |= libc::TUN_F_CSUM;
            if features & (1 << VIRTIO_NET_F_GUEST_TSO4) != 0 {
                flags |= libc::TUN_F_TSO4;
            }
            if features & (1 << VIRTIO_NET_F_GUEST_TSO6) != 0 {
                flags |= libc::TUN_F_TSO6;
            }
        }
        if !tap.set_offload(flags) {
            log::warn!("{}: cannot set offloads {flags:#x}", self.name);
        }
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, QueueError> {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => Ok(Served::default()),
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.link.fd())
    }

    fn input_queue(&self) -> Option<usize> {
        Some(RX_QUEUE)
    }

    fn backend_ready(&mut self) -> BackendEvent {
        // Writable again: the transmit queue waits for that.
        if self.backend_blocked() && !self.link_blocked() {
            BackendEvent::InputOutput {
                input: RX_QUEUE,
                output: TX_QUEUE,
            }
        } else {
            BackendEvent::Input(RX_QUEUE)
        }
    }

    fn backend_blocked(&self) -> bool {
        matches!(&self.link, Link::Stream(s) if s.blocked())
    }

    fn reset(&mut self) {
        self.pending = None;
        self.mergeable = false;
        self.rx_checksums_valid = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn sh(cmd: &str) -> bool {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// An ARP request "who has 169.254.77.1? tell 169.254.77.2" from `mac`.
    fn arp_request(mac: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend(mac);
        f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend(mac);
        f.extend([169, 254, 77, 2]);
        f.extend([0; 6]);
        f.extend([169, 254, 77, 1]);
        f
    }

    /// Sends an ARP request through a real tap and expects the host's reply
    /// back in a receive buffer. Needs root and /dev/net/tun (CI has both).
    #[test]
    fn frames_cross_a_real_tap_in_both_directions() {
        let tap = match Tap::open("hvmut0") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: no tap device here ({e})");
                return;
            }
        };
        // No IPv6 on the link: the host would greet it with multicast
        // (MLD, neighbour and router solicitations) that can arrive before
        // the ARP reply this test waits for.
        sh("echo 1 >/proc/sys/net/ipv6/conf/hvmut0/disable_ipv6 2>/dev/null");
        assert!(sh(
            "ip addr add 169.254.77.1/24 dev hvmut0 && ip link set hvmut0 up"
        ));
        let mac = [0x52, 0x54, 0, 0x77, 0, 2];
        let mut net = Net::new(Link::Tap(tap), mac);
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        net.activate(net.features(), &[], &m).unwrap();

        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend(arp_request(mac));
        m.write_slice(&frame, GuestAddress(0x20000)).unwrap();
        let txq = MockSplitQueue::new(&m, 16);
        txq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
            0x20000,
            frame.len() as u32,
            0,
            0,
        ))])
        .unwrap();
        let mut tx: Queue = txq.create_queue().unwrap();
        assert!(net.transmit(&mut tx, &m).unwrap().used);

        let rxq = MockSplitQueue::new(&m, 16);
        rxq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
            0x40000, 2048, 2, 0,
        ))])
        .unwrap();
        let mut rx: Queue = rxq.create_queue().unwrap();
        let mut got = false;
        for _ in 0..200 {
            if net.receive(&mut rx, &m).unwrap().used {
                got = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        sh("ip link del hvmut0 2>/dev/null");
        assert!(got, "no frame came back from the host");
        let mut reply = [0u8; 64];
        m.read_slice(&mut reply, GuestAddress(0x40000)).unwrap();
        let eth = &reply[VNET_HDR_LEN..];
        assert_eq!(&eth[0..6], &mac, "addressed to the guest");
        assert_eq!(&eth[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(&eth[20..22], &[0, 2], "a reply");
    }

    /// A link to a passt-like peer over a socket pair.
    fn stream_net() -> (Net, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let net = Net::new(
            Link::Stream(FrameStream::new(ours).unwrap()),
            [0x52, 0x54, 0, 1, 2, 3],
        );
        (net, theirs)
    }

    #[test]
    fn frames_cross_a_passt_stream_without_their_virtio_header() {
        use std::io::{Read, Write};
        let (mut net, mut peer) = stream_net();
        let tso = (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_GUEST_TSO4);
        assert_eq!(net.features() & tso, 0, "checksums only");
        let m = rx_mem();
        // Guest to passt: the header goes, a length prefix comes.
        let f = frame(100);
        m.write_slice(&f, GuestAddress(0x20000)).unwrap();
        let txq = MockSplitQueue::new(&m, 16);
        post(&txq, 0, &[(0x20000, f.len() as u32, 0)]);
        let mut tx: Queue = txq.create_queue().unwrap();
        assert!(net.transmit(&mut tx, &m).unwrap().used);
        let mut got = [0u8; 104];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], &100u32.to_be_bytes());
        assert_eq!(&got[4..], &f[VNET_HDR_LEN..]);
        // passt to guest: a header (num_buffers 1; checksums marked
        // verified where the driver took GUEST_CSUM, else all zeroes)
        // before the frame.
        let eth: Vec<u8> = (0..60u8).collect();
        for (features, flags) in [
            (net.features(), VIRTIO_NET_HDR_F_DATA_VALID as u8),
            (net.features() & !(1 << VIRTIO_NET_F_GUEST_CSUM), 0),
        ] {
            peer.write_all(&60u32.to_be_bytes()).unwrap();
            peer.write_all(&eth).unwrap();
            let rxq = MockSplitQueue::new(&m, 16);
            post(&rxq, 0, &[(0x40000, 2048, W)]);
            let mut rx: Queue = rxq.create_queue().unwrap();
            net.reset();
            net.activate(features, &[], &m).unwrap();
            assert!(net.receive(&mut rx, &m).unwrap().used);
            assert_eq!(used(&rxq, 1), vec![(0, 72)]);
            let mut back = [0u8; 72];
            m.read_slice(&mut back, GuestAddress(0x40000)).unwrap();
            assert_eq!(back[0], flags);
            assert_eq!(&back[1..10], &[0; 9]);
            assert_eq!(&back[10..12], &[1, 0]);
            assert_eq!(&back[12..], &eth[..]);
        }
    }

    #[test]
    fn a_checksum_left_to_hvm_is_complete_when_passt_gets_the_frame() {
        use std::io::Read;
        let (mut net, mut peer) = stream_net();
        assert_ne!(net.features() & (1 << VIRTIO_NET_F_CSUM), 0);
        let m = rx_mem();
        // Sum from byte 14 on, into bytes 30..32 (as for a TCP segment).
        let mut f = frame(100);
        f[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        f[6..8].copy_from_slice(&14u16.to_le_bytes());
        f[8..10].copy_from_slice(&16u16.to_le_bytes());
        // (The field holds the pseudo-header's sum, here none.)
        f[VNET_HDR_LEN + 30..VNET_HDR_LEN + 32].fill(0);
        // A GSO frame (never offered) is dropped, not sent.
        let mut gso = frame(100);
        gso[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        m.write_slice(&gso, GuestAddress(0x10000)).unwrap();
        m.write_slice(&f, GuestAddress(0x20000)).unwrap();
        let txq = MockSplitQueue::new(&m, 16);
        post(
            &txq,
            0,
            &[(0x10000, gso.len() as u32, 0), (0x20000, f.len() as u32, 0)],
        );
        let mut tx: Queue = txq.create_queue().unwrap();
        assert!(net.transmit(&mut tx, &m).unwrap().used);
        let mut got = [0u8; 104];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], &100u32.to_be_bytes(), "only the second frame");
        let eth = &got[4..];
        assert_eq!(checksum::ones_complement_sum(&eth[14..]), 0xffff);
        assert_eq!(&eth[..30], &f[VNET_HDR_LEN..VNET_HDR_LEN + 30]);
        assert_eq!(&eth[32..], &f[VNET_HDR_LEN + 32..]);
        assert_eq!(net.dropped, 1);
    }

    #[test]
    fn a_full_passt_socket_holds_the_transmit_queue_until_it_drains() {
        use std::io::Read;
        let (mut net, mut peer) = stream_net();
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let f = frame(65_000);
        let txq = MockSplitQueue::new(&m, 256);
        let chains: Vec<(u64, u32, u16)> = (0..200u64)
            .map(|i| (0x10000 + i * 0x10000, f.len() as u32, 0))
            .collect();
        for c in &chains {
            m.write_slice(&f, GuestAddress(c.0)).unwrap();
        }
        post(&txq, 0, &chains);
        let mut tx: Queue = txq.create_queue().unwrap();
        net.transmit(&mut tx, &m).unwrap();
        let taken = txq.used().idx().load();
        assert!(taken < 200, "a socket holds less than 13 MB");
        assert!(net.backend_blocked());
        // Still blocked: nothing more is taken.
        net.transmit(&mut tx, &m).unwrap();
        assert_eq!(txq.used().idx().load(), taken);
        // passt reads: the link says so, and the rest goes out.
        let reader = std::thread::spawn(move || {
            let mut n = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            while n < 200 * 65_004 {
                n += peer.read(&mut buf).unwrap();
            }
            n
        });
        let mut rounds = 0;
        while txq.used().idx().load() < 200 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            if net.backend_ready() != BackendEvent::Input(RX_QUEUE) || !net.backend_blocked() {
                net.transmit(&mut tx, &m).unwrap();
            }
            rounds += 1;
            assert!(rounds < 5000, "the queue never drained");
        }
        while net.backend_blocked() {
            let _ = net.backend_ready();
        }
        assert_eq!(reader.join().unwrap(), 200 * 65_004);
    }

    #[test]
    fn while_the_guest_has_no_buffers_passts_frames_wait_in_hvm_not_in_its_socket() {
        use std::io::{ErrorKind, Write};
        let (mut net, mut peer) = stream_net();
        peer.set_nonblocking(true).unwrap();
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let rxq = MockSplitQueue::new(&m, 256);
        let mut rx: Queue = rxq.create_queue().unwrap();
        // 64 frames of 60,000 bytes, framed as passt sends them.
        let eth = |i: usize| -> Vec<u8> { (0..60_000).map(|k| (k * 7 + i) as u8).collect() };
        let bytes: Vec<u8> = (0..64)
            .flat_map(|i| {
                let mut f = 60_000u32.to_be_bytes().to_vec();
                f.extend(eth(i));
                f
            })
            .collect();
        // passt sends what its socket takes; the guest posts nothing.
        let mut at = 0;
        let mut rounds = 0;
        while at < bytes.len() {
            match peer.write(&bytes[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    net.receive(&mut rx, &m).unwrap();
                    rounds += 1;
                    assert!(rounds < 1000, "stuck after {at} bytes");
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(rounds > 1, "the socket alone held 3.8 MB");
        assert_eq!(used_idx(&rxq), 0);
        // The guest posts room: every frame arrives, in order.
        let bufs: Vec<(u64, u32, u16)> = (0..64u64)
            .map(|i| (0x10000 + i * 0x10000, 0x10000, W))
            .collect();
        post(&rxq, 0, &bufs);
        assert!(net.receive(&mut rx, &m).unwrap().used);
        assert_eq!(used_idx(&rxq), 64);
        for i in [0usize, 31, 63] {
            let mut got = vec![0u8; 60_000];
            m.read_slice(
                &mut got,
                GuestAddress(0x10000 + i as u64 * 0x10000 + VNET_HDR_LEN as u64),
            )
            .unwrap();
            assert!(got == eth(i), "frame {i}");
        }
    }

    /// The used ring's index.
    fn used_idx(q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        q.used().idx().load()
    }

    const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    /// A frame: a zeroed virtio-net header, then `data` bytes of a pattern.
    fn frame(data: usize) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend((0..data).map(|i| (i % 251) as u8));
        f
    }

    /// [`deliver`] for a frame given whole, header first.
    fn deliver_frame(
        f: &[u8],
        mergeable: bool,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(Delivery, bool), QueueError> {
        let mut header = [0u8; VNET_HDR_LEN];
        header.copy_from_slice(&f[..VNET_HDR_LEN]);
        deliver(header, &f[VNET_HDR_LEN..], mergeable, queue, mem)
    }

    /// Receive chains of one descriptor each, (address, length, flags), posted
    /// after the `posted` the queue already has.
    fn post(q: &MockSplitQueue<GuestMemoryMmap>, posted: u16, bufs: &[(u64, u32, u16)]) {
        let raw: Vec<RawDescriptor> = bufs
            .iter()
            .map(|&(a, l, f)| RawDescriptor::from(SplitDescriptor::new(a, l, f, 0)))
            .collect();
        q.add_desc_chains(&raw, posted).unwrap();
    }

    /// The used ring's (id, len) entries.
    fn used(q: &MockSplitQueue<GuestMemoryMmap>, n: usize) -> Vec<(u32, u32)> {
        (0..n)
            .map(|i| {
                let e = q.used().ring().ref_at(i).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn rx_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn a_frame_is_written_whole_however_the_buffers_split_it() {
        let (header, body) = ([7u8; VNET_HDR_LEN], frame(50));
        let whole: Vec<u8> = header.iter().chain(&body).copied().collect();
        for cut in 0..whole.len() {
            let mut out = Vec::new();
            write_span(&mut out, &header, &body, 0, cut).unwrap();
            write_span(&mut out, &header, &body, cut, whole.len() - cut).unwrap();
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn mergeable_frames_span_as_many_buffers_as_they_need() {
        let m = rx_mem();
        let q = MockSplitQueue::new(&m, 16);
        post(
            &q,
            0,
            &[(0x10000, 1000, W), (0x20000, 1000, W), (0x30000, 1000, W)],
        );
        let mut queue: Queue = q.create_queue().unwrap();
        let f = frame(2488);
        let d = deliver_frame(&f, true, &mut queue, &m).unwrap().0;
        assert_eq!(d, Delivery::Delivered { buffers: 3 });
        assert_eq!(used(&q, 3), vec![(0, 1000), (1, 1000), (2, 500)]);
        let mut got = vec![0u8; 2500];
        m.read_slice(&mut got[..1000], GuestAddress(0x10000))
            .unwrap();
        m.read_slice(&mut got[1000..2000], GuestAddress(0x20000))
            .unwrap();
        m.read_slice(&mut got[2000..], GuestAddress(0x30000))
            .unwrap();
        assert_eq!(&got[10..12], &[3, 0], "num_buffers");
        assert_eq!(&got[VNET_HDR_LEN..], &frame(2488)[VNET_HDR_LEN..]);
    }

    #[test]
    fn mergeable_frame_waits_whole_until_the_guest_posts_enough_room() {
        let m = rx_mem();
        let q = MockSplitQueue::new(&m, 16);
        post(&q, 0, &[(0x10000, 1000, W), (0x20000, 1000, W)]);
        let mut queue: Queue = q.create_queue().unwrap();
        let f = frame(2488);
        assert_eq!(
            deliver_frame(&f, true, &mut queue, &m).unwrap().0,
            Delivery::NoBuffers
        );
        assert_eq!(q.used().idx().load(), 0, "nothing used");
        post(&q, 2, &[(0x30000, 1000, W)]);
        let d = deliver_frame(&f, true, &mut queue, &m).unwrap().0;
        assert_eq!(d, Delivery::Delivered { buffers: 3 });
        assert_eq!(used(&q, 3), vec![(0, 1000), (1, 1000), (2, 500)]);
    }

    /// With EVENT_IDX, a frame that waits for receive buffers asks for a
    /// notification at the ring's current index (where the guest posts
    /// next), not where hvm stopped, and hvm's own position is untouched.
    #[test]
    fn a_waiting_frame_rearms_the_receive_queue_at_the_posted_index() {
        let m = rx_mem();
        let q = MockSplitQueue::new(&m, 16);
        post(&q, 0, &[(0x10000, 1000, W), (0x20000, 1000, W)]);
        let mut queue: Queue = q.create_queue().unwrap();
        queue.set_event_idx(true);
        let f = frame(2488);
        assert_eq!(
            deliver_frame(&f, true, &mut queue, &m).unwrap().0,
            Delivery::NoBuffers
        );
        assert!(!Net::rearm_receive(&mut queue, &m).unwrap(), "nothing new");
        let avail_event = GuestAddress(q.used_addr().0 + 4 + 8 * 16);
        assert_eq!(m.read_obj::<u16>(avail_event).unwrap(), 2);
        assert_eq!(
            queue.next_avail(),
            0,
            "the two buffers are still hvm's to take"
        );
        post(&q, 2, &[(0x30000, 1000, W)]);
        let d = deliver_frame(&f, true, &mut queue, &m).unwrap().0;
        assert_eq!(d, Delivery::Delivered { buffers: 3 });
    }

    #[test]
    fn without_mergeable_buffers_a_frame_needs_one_big_enough_buffer() {
        let m = rx_mem();
        let q = MockSplitQueue::new(&m, 16);
        post(&q, 0, &[(0x10000, 1000, W), (0x20000, 4096, W)]);
        let mut queue: Queue = q.create_queue().unwrap();
        let big = frame(2488);
        assert_eq!(
            deliver_frame(&big, false, &mut queue, &m).unwrap().0,
            Delivery::Dropped
        );
        let small = frame(500);
        let d = deliver_frame(&small, false, &mut queue, &m).unwrap().0;
        assert_eq!(d, Delivery::Delivered { buffers: 1 });
        assert_eq!(used(&q, 2), vec![(0, 0), (1, 512)]);
        let mut hdr = [0u8; VNET_HDR_LEN];
        m.read_slice(&mut hdr, GuestAddress(0x20000)).unwrap();
        assert_eq!(&hdr[10..12], &[1, 0], "num_buffers is 1");
    }

    #[test]
    fn bad_receive_buffers_lose_the_frame_not_hvm() {
        let m = rx_mem();
        let q = MockSplitQueue::new(&m, 16);
        // Read-only (wrong direction), outside guest RAM, then a good one.
        post(
            &q,
            0,
            &[
                (0x10000, 4096, 0),
                (0xfff_0000, 4096, W),
                (0x20000, 4096, W),
            ],
        );
        let mut queue: Queue = q.create_queue().unwrap();
        let f = frame(100);
        assert_eq!(
            deliver_frame(&f, false, &mut queue, &m).unwrap().0,
            Delivery::Dropped
        );
        assert_eq!(
            deliver_frame(&f, false, &mut queue, &m).unwrap().0,
            Delivery::Dropped
        );
        let d = deliver_frame(&f, false, &mut queue, &m).unwrap().0;
        assert_eq!(d, Delivery::Delivered { buffers: 1 });
        assert_eq!(used(&q, 3), vec![(0, 0), (1, 0), (2, 112)]);
        // Mergeable: the bad buffers add no room; nothing is written outside RAM.
        let q = MockSplitQueue::new(&m, 16);
        post(&q, 0, &[(0x10000, 4096, 0), (0xfff_0000, 4096, W)]);
        let mut queue: Queue = q.create_queue().unwrap();
        assert_eq!(
            deliver_frame(&f, true, &mut queue, &m).unwrap().0,
            Delivery::NoBuffers
        );
    }

    #[test]
    fn long_tap_names_are_refused() {
        assert!(matches!(
            Tap::open("a-very-long-tap-name"),
            Err(TapError::NameTooLong(_))
        ));
    }
}
