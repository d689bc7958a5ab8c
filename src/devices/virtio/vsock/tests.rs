//! The multiplexer against a simulated guest driver (mock virtqueues) and
//! real host programs (Unix sockets in a private directory).

use super::*;
use std::io::{Read, Write};
use std::time::Duration;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

const CID: u64 = 3;
const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
/// virtio-queue's mock puts the used ring 256 bytes after the available
/// ring's start: fewer than 128 buffers per queue per test keep them apart.
const QSIZE: u16 = 256;
/// Where the receive buffers and transmit packets live in guest memory.
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x80_0000;
const RX_BUF_LEN: u32 = 4096 + PKT_HEADER_SIZE as u32;

/// A packet as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pkt {
    src_port: u32,
    dst_port: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

fn header(src: (u64, u32), dst: (u64, u32), op: u16, len: u32, type_: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(PKT_HEADER_SIZE);
    h.extend(src.0.to_le_bytes());
    h.extend(dst.0.to_le_bytes());
    h.extend(src.1.to_le_bytes());
    h.extend(dst.1.to_le_bytes());
    h.extend(len.to_le_bytes());
    h.extend(type_.to_le_bytes());
    h.extend(op.to_le_bytes());
    h.extend(0u32.to_le_bytes()); // flags
    h.extend((256u32 << 10).to_le_bytes()); // buf_alloc
    h.extend(0u32.to_le_bytes()); // fwd_cnt
    h
}

/// A guest driver: it posts receive buffers and sends packets.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    rx: Queue,
    tx: Queue,
    rx_posted: u16,
    rx_seen: u16,
    tx_posted: u16,
    dev: Vsock,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Guest<'a> {
        let dir = std::env::temp_dir().join(format!(
            "hvm-vsock-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dev = Vsock::new(CID, &dir.join("vm.vsock")).unwrap();
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x4_0000), QSIZE);
        let rx = rxq.create_queue().unwrap();
        let tx = txq.create_queue().unwrap();
        Guest {
            mem,
            rxq,
            txq,
            rx,
            tx,
            rx_posted: 0,
            rx_seen: 0,
            tx_posted: 0,
            dev,
            _dir: TempDir(dir),
        }
    }

    fn path(&self) -> PathBuf {
        self.dev.path.clone()
    }

    /// Posts `n` receive buffers (reusing ring slots round the ring).
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let slot = self.rx_posted % QSIZE;
            let addr = RX_BUFS + u64::from(slot) * u64::from(RX_BUF_LEN);
            let d = RawDescriptor::from(SplitDescriptor::new(addr, RX_BUF_LEN, W, 0));
            self.rxq.add_desc_chains(&[d], slot).unwrap();
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
    }

    /// Serves the receive queue and returns what arrived since last time.
    fn receive(&mut self) -> Vec<Pkt> {
        self.dev.fill_rx(&mut self.rx, self.mem).unwrap();
        let mut out = Vec::new();
        while self.rx_seen != self.rxq.used().idx().load() {
            let e = self
                .rxq
                .used()
                .ring()
                .ref_at(usize::from(self.rx_seen % QSIZE))
                .unwrap()
                .load();
            let addr = RX_BUFS + u64::from(e.id()) * u64::from(RX_BUF_LEN);
            let mut h = [0u8; PKT_HEADER_SIZE];
            self.mem.read_slice(&mut h, GuestAddress(addr)).unwrap();
            let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
            let len = u32_at(24) as usize;
            assert_eq!(u64::from_le_bytes(h[8..16].try_into().unwrap()), CID);
            assert_eq!(e.len() as usize, PKT_HEADER_SIZE + len);
            let mut data = vec![0u8; len];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + PKT_HEADER_SIZE as u64))
                .unwrap();
            out.push(Pkt {
                src_port: u32_at(16),
                dst_port: u32_at(20),
                op: u16::from_le_bytes(h[30..32].try_into().unwrap()),
                flags: u32_at(32),
                buf_alloc: u32_at(36),
                fwd_cnt: u32_at(40),
                data,
            });
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    /// Sends raw bytes as one transmit packet (header and data in one buffer).
    fn send_raw(&mut self, bytes: &[u8]) {
        let slot = self.tx_posted % QSIZE;
        let addr = TX_BUFS + u64::from(slot) * 0x1_1000;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        let d = RawDescriptor::from(SplitDescriptor::new(addr, bytes.len() as u32, 0, 0));
        self.txq.add_desc_chains(&[d], slot).unwrap();
        self.tx_posted = self.tx_posted.wrapping_add(1);
        self.dev.transmit(&mut self.tx, self.mem).unwrap();
    }

    /// Sends a packet from guest port `from` to host port `to`.
    fn send(&mut self, from: u32, to: u32, op: u16, data: &[u8]) {
        let mut p = header(
            (CID, from),
            (HOST_CID, to),
            op,
            data.len() as u32,
            TYPE_STREAM,
        );
        p.extend_from_slice(data);
        self.send_raw(&p);
    }

    /// Receives until `want` packets came (host sockets take a moment).
    fn receive_n(&mut self, want: usize) -> Vec<Pkt> {
        let mut got = Vec::new();
        for _ in 0..500 {
            got.extend(self.receive());
            if got.len() >= want {
                return got;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("only {} of {want} packets arrived: {got:?}", got.len());
    }
}

fn ops(p: &[Pkt]) -> Vec<u16> {
    p.iter().map(|p| p.op).collect()
}

/// A host program connecting to guest port `port`: returns its socket and
/// the host port hvm gave the connection, after the guest accepted.
fn host_connects(g: &mut Guest, port: u32) -> (UnixStream, u32) {
    let mut s = UnixStream::connect(g.path()).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let p = g.receive_n(1);
    assert_eq!(ops(&p), [OP_REQUEST]);
    assert_eq!(p[0].dst_port, port);
    let host_port = p[0].src_port;
    assert!(host_port >= FIRST_HOST_PORT);
    g.send(port, host_port, OP_RESPONSE, &[]);
    let mut line = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = s.read(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line[..n]).unwrap(),
        format!("OK {host_port}\n")
    );
    (s, host_port)
}

#[test]
fn a_host_program_connects_to_a_guest_listener_and_data_flows_both_ways() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.post_rx(64);
    let (mut s, hp) = host_connects(&mut g, 1234);
    // Guest to host.
    g.send(1234, hp, OP_RW, b"hello from the guest");
    let mut buf = [0u8; 20];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from the guest");
    // Host to guest, within the credit the guest gave (256 KiB).
    s.write_all(b"hello from the host").unwrap();
    let p = g.receive_n(1);
    assert_eq!(p[0].op, OP_RW);
    assert_eq!((p[0].src_port, p[0].dst_port), (hp, 1234));
    assert_eq!(p[0].data, b"hello from the host");
    assert_eq!(p[0].buf_alloc, BUF_ALLOC);
    assert_eq!(p[0].fwd_cnt, 20, "what hvm passed on to the host");
    // The host program stops sending: the guest hears SHUTDOWN (send);
    // it can still send, until it closes too.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let p = g.receive_n(1);
    assert_eq!((p[0].op, p[0].flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    g.send(1234, hp, OP_RW, b"after");
    s.read_exact(&mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"after");
    let mut shut = header((CID, 1234), (HOST_CID, hp), OP_SHUTDOWN, 0, TYPE_STREAM);
    shut[32..36].copy_from_slice(&(SHUTDOWN_RCV | SHUTDOWN_SEND).to_le_bytes());
    g.send_raw(&shut);
    assert_eq!(ops(&g.receive_n(1)), [OP_RST], "both sides done: reset");
    assert_eq!(
        s.read(&mut buf).unwrap(),
        0,
        "the host program sees the end"
    );
    assert!(g.dev.connections.is_empty());
    assert!(g.dev.ids.is_empty());
}

#[test]
fn a_guest_connects_to_a_host_listener_on_vm_vsock_port() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.post_rx(16);
    let mut target = g.path().into_os_string();
    target.push("_5000");
    let listener = UnixListener::bind(&target).unwrap();
    g.send(40000, 5000, OP_REQUEST, &[]);
    let p = g.receive_n(1);
    assert_eq!(ops(&p), [OP_RESPONSE]);
    assert_eq!((p[0].src_port, p[0].dst_port), (5000, 40000));
    let (mut s, _) = listener.accept().unwrap();
    g.send(40000, 5000, OP_RW, b"ping");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // Nobody on port 5001: refused with RST.
    g.send(40001, 5001, OP_REQUEST, &[]);
    let p = g.receive_n(1);
    assert_eq!((p[0].op, p[0].dst_port), (OP_RST, 40001));
    // The guest closes both ways: hvm resets the connection once what the
    // guest sent is out, and the host program sees the end.
    let mut shut = header((CID, 40000), (HOST_CID, 5000), OP_SHUTDOWN, 0, TYPE_STREAM);
    shut[32..36].copy_from_slice(&(SHUTDOWN_RCV | SHUTDOWN_SEND).to_le_bytes());
    g.send_raw(&shut);
    let p = g.receive_n(1);
    assert_eq!(ops(&p), [OP_RST]);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF");
    // Data for a connection that is gone: RST.
    g.send(40000, 5000, OP_RW, b"late");
    assert_eq!(ops(&g.receive_n(1)), [OP_RST]);
}

#[test]
fn payloads_split_over_many_descriptors_arrive_whole() {
    // As Linux 6.x sends large writes: the header, then page fragments.
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.post_rx(16);
    let (mut s, hp) = host_connects(&mut g, 99);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    let slot = g.tx_posted % QSIZE;
    let base = TX_BUFS + u64::from(slot) * 0x1_1000;
    let hdr = header(
        (CID, 99),
        (HOST_CID, hp),
        OP_RW,
        data.len() as u32,
        TYPE_STREAM,
    );
    mem.write_slice(&hdr, GuestAddress(base)).unwrap();
    let mut descs = vec![RawDescriptor::from(SplitDescriptor::new(
        base,
        PKT_HEADER_SIZE as u32,
        virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
        slot + 1,
    ))];
    for (i, piece) in data.chunks(4096).enumerate() {
        let addr = base + 0x1000 * (i as u64 + 1);
        mem.write_slice(piece, GuestAddress(addr)).unwrap();
        let last = (i + 1) * 4096 >= data.len();
        let flags = if last {
            0
        } else {
            virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16
        };
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            addr,
            piece.len() as u32,
            flags,
            slot + 2 + i as u16,
        )));
    }
    g.txq.add_desc_chains(&descs, slot).unwrap();
    g.tx_posted += descs.len() as u16;
    g.dev.transmit(&mut g.tx, &mem).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    assert_eq!(g.dev.malformed.count(), 0);
}

#[test]
fn many_connections_at_once_each_get_their_own_bytes() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.post_rx(100);
    let mut conns = Vec::new();
    for i in 0..32u32 {
        conns.push(host_connects(&mut g, 2000 + i));
    }
    for (i, (s, _)) in conns.iter_mut().enumerate() {
        s.write_all(&vec![i as u8; 1000]).unwrap();
    }
    let p = g.receive_n(32);
    let mut seen = std::collections::BTreeMap::new();
    for pkt in p {
        assert_eq!(pkt.op, OP_RW);
        let i = pkt.dst_port - 2000;
        assert!(
            pkt.data.iter().all(|&b| b == i as u8),
            "bytes of another connection"
        );
        *seen.entry(i).or_insert(0) += pkt.data.len();
    }
    assert_eq!(seen.len(), 32);
    assert!(seen.values().all(|&n| n == 1000));
}

#[test]
fn the_guest_never_gets_more_than_its_credit() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.post_rx(100);
    let (mut s, hp) = host_connects(&mut g, 77);
    // The guest says it has 8 KiB of room.
    let mut p = header((CID, 77), (HOST_CID, hp), OP_CREDIT_UPDATE, 0, TYPE_STREAM);
    p[36..40].copy_from_slice(&8192u32.to_le_bytes());
    g.send_raw(&p);
    s.write_all(&[9u8; 100_000]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let got: usize = g.receive().iter().map(|p| p.data.len()).sum();
    assert_eq!(got, 8192);
    // It consumed 4 KiB: 4 KiB more come.
    p[40..44].copy_from_slice(&4096u32.to_le_bytes());
    g.send_raw(&p);
    let got: usize = g.receive().iter().map(|p| p.data.len()).sum();
    assert_eq!(got, 4096);
}

#[test]
fn a_peer_that_vanishes_resets_only_its_own_connection() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.post_rx(64);
    let (gone, hp1) = host_connects(&mut g, 10);
    let (mut stays, hp2) = host_connects(&mut g, 11);
    drop(gone);
    // Writing to the vanished peer fails: that connection is reset.
    g.send(10, hp1, OP_RW, &[1u8; 100]);
    let p = g.receive_n(1);
    assert!(p
        .iter()
        .any(|p| p.dst_port == 10 && (p.op == OP_RST || p.op == OP_SHUTDOWN)));
    g.send(11, hp2, OP_RW, b"still here");
    let mut buf = [0u8; 10];
    stays.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}

#[test]
fn garbage_from_the_guest_harms_nothing() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.post_rx(64);
    let (mut s, hp) = host_connects(&mut g, 5);
    // Wrong CIDs: dropped silently.
    let mut bad = header((CID + 1, 5), (HOST_CID, hp), OP_RW, 0, TYPE_STREAM);
    g.send_raw(&bad);
    bad = header((CID, 5), (7, hp), OP_RW, 0, TYPE_STREAM);
    g.send_raw(&bad);
    // A header cut short, a length beyond the buffer, a huge length.
    g.send_raw(&[0u8; 10]);
    let mut long = header((CID, 5), (HOST_CID, hp), OP_RW, 5000, TYPE_STREAM);
    long.extend([0u8; 100]);
    g.send_raw(&long);
    g.send_raw(&header(
        (CID, 5),
        (HOST_CID, hp),
        OP_RW,
        u32::MAX,
        TYPE_STREAM,
    ));
    // A buffer outside guest memory.
    let slot = g.tx_posted % QSIZE;
    let d = RawDescriptor::from(SplitDescriptor::new(0xffff_0000, 64, 0, 0));
    g.txq.add_desc_chains(&[d], slot).unwrap();
    g.tx_posted += 1;
    g.dev.transmit(&mut g.tx, &mem).unwrap();
    // A datagram type, and an unknown op for no connection: RST.
    g.send_raw(&header((CID, 6), (HOST_CID, 99), OP_REQUEST, 0, 2));
    g.send(8, 4242, 99, &[]);
    let p = g.receive_n(2);
    assert_eq!(ops(&p), [OP_RST, OP_RST]);
    assert!(g.dev.malformed.count() >= 4, "{}", g.dev.malformed.count());
    // More data than the credit hvm gave: RST, the host socket closes.
    let (mut s2, hp2) = host_connects(&mut g, 6);
    // (The host socket itself takes a few hundred KiB first.)
    for _ in 0..20 {
        g.send(6, hp2, OP_RW, &vec![0u8; 64 << 10]);
    }
    // (The host program reads nothing, so hvm buffers up to its credit.)
    let p = g.receive_n(1);
    assert!(p.iter().any(|p| p.dst_port == 6 && p.op == OP_RST), "{p:?}");
    let mut sink = Vec::new();
    s2.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s2.read_to_end(&mut sink);
    // The first connection still works.
    s.write_all(b"ok").unwrap();
    assert_eq!(g.receive_n(1)[0].data, b"ok");
}

#[test]
fn a_flood_of_packets_for_no_connection_does_not_pile_up_answers() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    // No receive buffers: every answer has to wait. (Packets go straight to
    // the handler the transmit queue feeds: the mock ring holds too few.)
    for port in 0..10_000u32 {
        let raw = header((CID, port), (HOST_CID, 9), OP_RW, 0, TYPE_STREAM);
        let h = Header::parse(raw.as_slice().try_into().unwrap());
        g.dev.handle_packet(h, &[]);
    }
    assert!(
        g.dev.controls.len() <= MAX_QUEUED_CONTROLS,
        "{} answers queued",
        g.dev.controls.len()
    );
}

#[test]
fn host_programs_that_never_say_connect_or_say_nonsense_are_closed() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.post_rx(8);
    let mut s = UnixStream::connect(g.path()).unwrap();
    s.write_all(b"HELLO there\n").unwrap();
    g.receive();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    let closed = |r: std::io::Result<usize>| {
        matches!(r, Ok(0)) || matches!(r, Err(e) if e.kind() == ErrorKind::ConnectionReset)
    };
    assert!(closed(s.read(&mut buf)));
    let mut long = UnixStream::connect(g.path()).unwrap();
    long.write_all(&[b'x'; 100]).unwrap();
    g.receive();
    long.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(closed(long.read(&mut buf)));
    assert!(g.dev.pending.is_empty());
    assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
    assert_eq!(parse_connect(b"CONNECT -1"), None);
    assert_eq!(parse_connect(b"connect 52"), None);
}

#[test]
fn an_existing_socket_path_is_refused() {
    let mem = memory();
    let g = Guest::new(&mem);
    let e = Vsock::new(CID, &g.path()).err().expect("refused");
    assert!(e.to_string().contains("exists already"), "{e}");
}
