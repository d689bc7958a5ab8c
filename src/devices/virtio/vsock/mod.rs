//! virtio-vsock: stream sockets between the guest and host programs, with
//! Firecracker's host-side convention so tools written for it work:
//!
//! - host to guest: a program connects to the Unix socket (`vm.vsock`),
//!   writes `CONNECT <port>\n`, reads `OK <host port>\n`, and then talks to
//!   the guest's listener on that port;
//! - guest to host: a guest connection to CID 2, port P, reaches the program
//!   listening on the Unix socket `vm.vsock_P`.
//!
//! The device owns an epoll set of its own (the listener, every host socket,
//! and a wake-up eventfd); the device loop watches that one fd, so any
//! number of connections costs the loop nothing. Packets are parsed by the
//! rust-vmm `virtio-vsock` crate; the multiplexer and its credit-based flow
//! control are here and in [`connection`].

mod connection;

use super::{read_config_bytes, QueueError, Served, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::complaint::Complaint;
#[cfg(test)]
use connection::BUF_ALLOC;
use connection::{Connection, Refused, State, Wants};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::ops::Bound;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// The host's CID, as the guest addresses it.
pub const HOST_CID: u64 = 2;
/// Largest payload in one packet, either way.
const MAX_PAYLOAD: usize = 64 << 10;
/// Connections at once (host- and guest-initiated); more are refused.
const MAX_CONNECTIONS: usize = 1024;
/// Host programs that connected but have not sent their `CONNECT` line yet.
const MAX_PENDING: usize = 64;
/// Packets without payload waiting for the guest's receive buffers.
const MAX_QUEUED_CONTROLS: usize = 4096;
/// A `CONNECT <port>\n` line is never longer.
const MAX_LINE: usize = 32;
/// Host ports handed to host-initiated connections start here (as Firecracker's).
const FIRST_HOST_PORT: u32 = 1 << 30;

const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

/// Epoll tokens of the device's own set; host sockets have their id.
const TOKEN_LISTENER: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const FIRST_ID: u64 = 16;

/// Errors while setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket {}: exists already (another VM's, or left over: remove it if no VM uses it)", .0.display())]
    Exists(PathBuf),
    #[error("vsock socket {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock: cannot set up its epoll: {0}")]
    Epoll(std::io::Error),
}

/// A connection is known by (host port, guest port).
type Key = (u32, u32);

/// A packet without payload, waiting for a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    key: Key,
    op: u16,
    flags: u32,
}

/// A host program that connected and has not said which port yet.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Vsock {
    cid: u64,
    /// `vm.vsock`; guest-initiated connections go to `vm.vsock_PORT`.
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    wake: EventFd,
    /// Host sockets by epoll id (in order, for round-robin), and ids by connection.
    connections: BTreeMap<u64, (Key, Connection)>,
    ids: HashMap<Key, u64>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    next_host_port: u32,
    /// Packets without payload for the guest, in order.
    controls: VecDeque<Control>,
    /// Connections whose credit the guest should hear of.
    credit_due: Vec<Key>,
    scratch: Vec<u8>,
    /// Malformed packets from the guest (logged once, then counted).
    malformed: Complaint,
    /// The connection whose data went to the guest last: the next turn
    /// starts after it, so no connection starves the others.
    last_served: u64,
}

impl Vsock {
    /// Listens on `path` (which must not exist) for a guest with `cid`.
    pub fn new(cid: u64, path: &Path) -> Result<Vsock, VsockError> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(VsockError::Exists(path.to_path_buf()));
        }
        let listener = UnixListener::bind(path).map_err(|source| VsockError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        let listen_err = |source| VsockError::Listen {
            path: path.to_path_buf(),
            source,
        };
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(VsockError::Epoll)?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::Epoll)?;
        for (fd, token) in [
            (listener.as_raw_fd(), TOKEN_LISTENER),
            (wake.as_raw_fd(), TOKEN_WAKE),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, token),
                )
                .map_err(VsockError::Epoll)?;
        }
        Ok(Vsock {
            cid,
            path: path.to_path_buf(),
            listener,
            epoll,
            wake,
            connections: BTreeMap::new(),
            last_served: 0,
            ids: HashMap::new(),
            pending: HashMap::new(),
            next_id: FIRST_ID,
            next_host_port: FIRST_HOST_PORT,
            controls: VecDeque::new(),
            credit_due: Vec::new(),
            scratch: vec![0; MAX_PAYLOAD],
            malformed: Complaint::new(),
        })
    }

    /// Work for the receive queue appeared outside it: the device loop
    /// hears of it through the device's epoll fd.
    fn wake_rx(&self) {
        let _ = self.wake.write(1);
    }

    fn watch(&self, fd: RawFd, id: u64) -> bool {
        let ev = EpollEvent::new(
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
            id,
        );
        self.epoll.ctl(ControlOperation::Add, fd, ev).is_ok()
    }

    fn control(&mut self, key: Key, op: u16, flags: u32) {
        // Resets for connections that do not exist are a courtesy: a guest
        // that floods them without taking its answers does not grow this.
        if op == OP_RST && self.controls.len() >= MAX_QUEUED_CONTROLS {
            log::debug!("vsock: answers pile up; a reset for {key:?} is dropped");
            return;
        }
        self.controls.push_back(Control { key, op, flags });
    }

    /// Forgets a connection (closing its host socket) and resets it on the
    /// guest's side unless the guest reset it.
    fn drop_connection(&mut self, key: Key, tell_guest: bool) {
        if let Some(id) = self.ids.remove(&key) {
            if let Some((_, c)) = self.connections.remove(&id) {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        self.controls
            .retain(|c| c.key != key || c.op == OP_RST || !tell_guest);
        self.credit_due.retain(|k| *k != key);
        if tell_guest {
            self.control(key, OP_RST, 0);
        }
    }

    fn add_connection(&mut self, key: Key, c: Connection) -> bool {
        let id = self.next_id;
        self.next_id += 1;
        if !self.watch(c.stream.as_raw_fd(), id) {
            return false;
        }
        self.ids.insert(key, id);
        self.connections.insert(id, (key, c));
        true
    }

    /// Acts on what a connection asked for.
    fn follow(&mut self, key: Key, wants: Wants) {
        if wants.reset {
            self.drop_connection(key, true);
        } else if wants.credit_update && !self.credit_due.contains(&key) {
            self.credit_due.push(key);
        }
    }

    /// Handles what the device's epoll reports: new host programs, their
    /// CONNECT lines, host sockets readable, writable or closed.
    fn poll_host(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        // Until it is empty (handling events adds sockets, which may be
        // ready at once), within reason.
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: epoll failed: {e}");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_LISTENER => self.accept(),
                    TOKEN_WAKE => {
                        let _ = self.wake.read();
                    }
                    id if self.pending.contains_key(&id) => self.read_connect_line(id),
                    id => self.host_socket_event(id, ev.event_set()),
                }
            }
        }
        // Still more: the device loop comes back for it.
        self.wake_rx();
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= MAX_PENDING
                        || self.connections.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        log::debug!("vsock: too many connections; one refused");
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    if self.watch(stream.as_raw_fd(), id) {
                        self.pending.insert(
                            id,
                            Pending {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("vsock: cannot accept on {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }

    /// Reads a host program's `CONNECT <port>\n` and asks the guest for
    /// that connection. Anything else closes it.
    fn read_connect_line(&mut self, id: u64) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte, so what follows the line stays in the socket.
        let port = loop {
            match p.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&p.line),
                Ok(1) if p.line.len() < MAX_LINE => p.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            p.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        let Some(guest_port) = port else {
            log::debug!("vsock: a host program sent no valid CONNECT line");
            return;
        };
        let host_port = self.free_host_port(guest_port);
        let key = (host_port, guest_port);
        log::debug!("vsock: host program asks for guest port {guest_port} (host port {host_port})");
        let Ok(mut c) = Connection::new(p.stream, State::Connecting) else {
            return;
        };
        // Data that came with the line waits until the guest accepts.
        c.readable = true;
        if self.add_connection(key, c) {
            self.control(key, OP_REQUEST, 0);
            self.wake_rx();
        }
    }

    fn free_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
            if !self.ids.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    fn host_socket_event(&mut self, id: u64, events: EventSet) {
        let Some((key, c)) = self.connections.get_mut(&id) else {
            return;
        };
        let key = *key;
        if events.contains(EventSet::IN) || events.contains(EventSet::READ_HANG_UP) {
            c.readable = true;
        }
        let wants = if events.contains(EventSet::OUT) && c.waiting_for_host() > 0 {
            c.flush_to_host()
        } else {
            Wants::default()
        };
        let finished = c.finished();
        if events.contains(EventSet::ERROR) || finished {
            self.drop_connection(key, true);
            return;
        }
        self.follow(key, wants);
    }

    /// Fills receive buffers: packets without payload first (in order), then
    /// credit updates, then data from host sockets, as far as the guest
    /// has buffers and credit.
    fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.poll_host();
        let mut used = false;
        let start = std::time::Instant::now();
        loop {
            if start.elapsed() >= super::PASS_BUDGET {
                // More next time: the wake-up brings the device loop back.
                self.wake_rx();
                return Ok(used);
            }
            let next = match self.next_for_guest() {
                Some(n) => n,
                None => return Ok(used),
            };
            let Some(mut chain) = queue.iter(mem)?.next() else {
                self.put_back(next);
                return Ok(used);
            };
            let head = chain.head_index();
            let written =
                match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PAYLOAD as u32) {
                    Ok(mut pkt) => self.write_packet(&mut pkt, next),
                    Err(e) => {
                        self.count_malformed(&format!("receive buffer: {e}"));
                        self.put_back(next);
                        0
                    }
                };
            queue.add_used(mem, head, written)?;
            used = true;
        }
    }

    /// What goes to the guest next, if anything.
    fn next_for_guest(&mut self) -> Option<Outgoing> {
        if let Some(c) = self.controls.pop_front() {
            return Some(Outgoing::Control(c));
        }
        if let Some(key) = self.credit_due.pop() {
            return Some(Outgoing::Control(Control {
                key,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            }));
        }
        let mut finished = Vec::new();
        let mut found = None;
        let mut resets = Vec::new();
        // Round-robin: the connections after the one served last, then the rest.
        let after = (Bound::Excluded(self.last_served), Bound::Unbounded);
        let upto = (Bound::Unbounded, Bound::Included(self.last_served));
        'scan: for range in [after, upto] {
            for (&id, (key, c)) in self.connections.range_mut(range) {
                if c.has_data_for_guest() {
                    let wants = c.pull_from_host(MAX_PAYLOAD, &mut self.scratch);
                    if wants.reset {
                        resets.push(*key);
                        continue;
                    }
                    if !c.for_guest().is_empty() {
                        found = Some((id, *key));
                        break 'scan;
                    }
                }
                if c.host_finished() {
                    c.shutdown_told = true;
                    finished.push(*key);
                }
            }
        }
        for key in resets {
            self.drop_connection(key, true);
        }
        // The host program closed its side (or half of it: Unix sockets
        // cannot tell): nothing more comes from it. It may still read; a
        // write that fails later resets the connection, and the guest's
        // SHUTDOWN or RST ends it.
        for key in finished {
            self.control(key, OP_SHUTDOWN, SHUTDOWN_SEND);
        }
        if let Some((id, key)) = found {
            self.last_served = id;
            return Some(Outgoing::Data(key));
        }
        self.controls.pop_front().map(Outgoing::Control)
    }

    /// Resets and forgets the connection if both directions are over.
    fn reset_if_finished(&mut self, key: Key) {
        let done = self
            .ids
            .get(&key)
            .and_then(|id| self.connections.get(id))
            .is_some_and(|(_, c)| c.finished());
        if done {
            self.drop_connection(key, true);
        }
    }

    fn put_back(&mut self, next: Outgoing) {
        if let Outgoing::Control(c) = next {
            if c.op == OP_CREDIT_UPDATE {
                self.credit_due.push(c.key);
            } else {
                self.controls.push_front(c);
            }
        }
        // Data stays with its connection.
    }

    /// Writes `next` into the receive packet; returns the bytes used.
    fn write_packet(&mut self, pkt: &mut VsockPacket<'_, ()>, next: Outgoing) -> u32 {
        let (key, op, flags) = match next {
            Outgoing::Control(c) => (c.key, c.op, c.flags),
            Outgoing::Data(key) => (key, OP_RW, 0),
        };
        log::trace!("vsock: to the guest: op {op} flags {flags} ports {key:?}");
        let (buf_alloc, fwd_cnt) = self
            .ids
            .get(&key)
            .and_then(|id| self.connections.get_mut(id))
            .map_or((0, 0), |(_, c)| c.our_credit());
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.cid)
            .set_src_port(key.0)
            .set_dst_port(key.1)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_buf_alloc(buf_alloc)
            .set_fwd_cnt(fwd_cnt)
            .set_len(0);
        if op != OP_RW {
            return PKT_HEADER_SIZE as u32;
        }
        let Some(id) = self.ids.get(&key).copied() else {
            return PKT_HEADER_SIZE as u32;
        };
        let Some((_, c)) = self.connections.get_mut(&id) else {
            return PKT_HEADER_SIZE as u32;
        };
        let room = pkt.data_slice().map_or(0, |d| d.len());
        let n = room.min(c.for_guest().len());
        let ok = pkt
            .data_slice()
            .is_some_and(|d| d.write_slice(&c.for_guest()[..n], 0).is_ok());
        if !ok || n == 0 {
            pkt.set_op(OP_RST);
            self.drop_connection(key, false);
            return PKT_HEADER_SIZE as u32;
        }
        c.sent_to_guest(n);
        pkt.set_len(n as u32);
        (PKT_HEADER_SIZE + n) as u32
    }

    fn count_malformed(&mut self, what: &str) {
        self.malformed.log(
            "vsock",
            format_args!("malformed packet from the guest ({what})"),
        );
    }

    /// Serves the transmit queue: the guest's packets.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Served, QueueError> {
        let before = (self.controls.len(), self.credit_due.len());
        let mut payload = Vec::new();
        let served = super::drain_queue(queue, mem, |chain| {
            match read_tx_packet(chain, mem, &mut payload) {
                Ok(header) => self.handle_packet(header, &payload),
                Err(why) => self.count_malformed(why),
            }
            0
        })?;
        if (self.controls.len(), self.credit_due.len()) != before || self.any_data_for_guest() {
            self.wake_rx();
        }
        Ok(served)
    }

    fn any_data_for_guest(&self) -> bool {
        self.connections
            .values()
            .any(|(_, c)| c.has_data_for_guest())
    }

    /// One packet from the guest.
    fn handle_packet(&mut self, h: Header, payload: &[u8]) {
        log::trace!("vsock: from the guest: {h:?}, {} bytes", payload.len());
        if h.dst_cid != HOST_CID || h.src_cid != self.cid {
            self.count_malformed("addressed wrongly");
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            self.control(key, OP_RST, 0);
            return;
        }
        let id = self.ids.get(&key).copied();
        let Some(id) = id else {
            match h.op {
                OP_REQUEST => self.connect_to_host(key, h),
                OP_RST => {}
                _ => self.control(key, OP_RST, 0),
            }
            return;
        };
        let Some((_, c)) = self.connections.get_mut(&id) else {
            return;
        };
        c.peer_credit(h.buf_alloc, h.fwd_cnt);
        match h.op {
            OP_RESPONSE if c.state == State::Connecting => {
                log::debug!("vsock: guest port {} accepted host port {}", key.1, key.0);
                c.state = State::Established;
                // The host program learns its port; a 20-byte line always fits.
                let _ = c.stream.write_all(format!("OK {}\n", key.0).as_bytes());
            }
            OP_RW => match c.take_from_guest(payload) {
                Ok(wants) => self.follow(key, wants),
                Err(Refused::OverCredit) => {
                    self.count_malformed("more data than the credit given");
                    self.drop_connection(key, true);
                }
                Err(Refused::NotEstablished) => self.drop_connection(key, true),
            },
            OP_SHUTDOWN => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.guest_done_sending = true;
                    let wants = c.flush_to_host();
                    self.follow(key, wants);
                }
                if let Some((_, c)) = self.connections.get_mut(&id) {
                    if h.flags & SHUTDOWN_RCV != 0 {
                        c.guest_done_receiving = true;
                    }
                }
                self.reset_if_finished(key);
            }
            OP_RST => self.drop_connection(key, false),
            OP_CREDIT_REQUEST => {
                if !self.credit_due.contains(&key) {
                    self.credit_due.push(key);
                }
            }
            OP_CREDIT_UPDATE => {}
            _ => self.drop_connection(key, true),
        }
    }

    /// The guest connects to host port P: the program on `vm.vsock_P`.
    fn connect_to_host(&mut self, key: Key, h: Header) {
        if self.connections.len() >= MAX_CONNECTIONS {
            self.control(key, OP_RST, 0);
            return;
        }
        let mut target = self.path.clone().into_os_string();
        target.push(format!("_{}", key.0));
        let connected = connect_nonblocking(Path::new(&target))
            .and_then(|s| Connection::new(s, State::Established));
        match connected {
            Ok(mut c) => {
                c.peer_credit(h.buf_alloc, h.fwd_cnt);
                if self.add_connection(key, c) {
                    self.control(key, OP_RESPONSE, 0);
                } else {
                    self.control(key, OP_RST, 0);
                }
            }
            Err(e) => {
                log::debug!(
                    "vsock: guest port {} to host port {}: {}: {e}",
                    key.1,
                    key.0,
                    Path::new(&target).display()
                );
                self.control(key, OP_RST, 0);
            }
        }
    }
}

/// What goes into the next receive buffer.
#[derive(Debug, Clone, Copy)]
enum Outgoing {
    Control(Control),
    Data(Key),
}

/// A packet header from the guest.
#[derive(Debug, Clone, Copy)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    /// The little-endian wire layout (virtio 1.2, 5.10.6).
    fn parse(b: &[u8; PKT_HEADER_SIZE]) -> Header {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | u64::from(u32_at(o + 4)) << 32;
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Reads one transmit packet: its header, then its payload from however
/// many descriptors carry it. (Linux 6.x sends large payloads as page
/// fragments, one descriptor each, which the virtio-vsock crate's parser
/// refuses; receive buffers are one descriptor and go through the crate.)
fn read_tx_packet(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    payload: &mut Vec<u8>,
) -> Result<Header, &'static str> {
    let mut r = chain.reader(mem).map_err(|_| "a bad descriptor chain")?;
    let mut raw = [0u8; PKT_HEADER_SIZE];
    r.read_exact(&mut raw)
        .map_err(|_| "shorter than a packet header")?;
    let header = Header::parse(&raw);
    let len = header.len as usize;
    if len > MAX_PAYLOAD {
        return Err("a payload longer than 64 KiB");
    }
    if r.available_bytes() < len {
        return Err("a payload shorter than its header says");
    }
    payload.resize(len, 0);
    r.read_exact(payload)
        .map_err(|_| "a payload that cannot be read")?;
    Ok(header)
}

/// Connects to a Unix socket without ever waiting: a listener whose
/// backlog is full refuses (EAGAIN) instead of stalling the device loop.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a new socket; its fd is owned by the UnixStream at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a socket this function just created and owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: addr is a valid sockaddr_un of the given size.
    let r = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// `CONNECT <port>` (the newline already gone); `None` for anything else.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    text.strip_prefix("CONNECT ")?.trim().parse().ok()
}

impl VirtioDevice for Vsock {
    fn device_id(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK
    }

    fn label(&self) -> String {
        format!("virtio-vsock (cid {}, {})", self.cid, self.path.display())
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_sizes(&self) -> &[u16] {
        &[256, 256, 16]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, QueueError> {
        match index {
            RX_QUEUE => self.fill_rx(queue, mem).map(Served::done),
            TX_QUEUE => self.transmit(queue, mem),
            // hvm sends no events (they are for live migration).
            _ => Ok(Served::default()),
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn input_queue(&self) -> Option<usize> {
        Some(RX_QUEUE)
    }

    fn reset(&mut self) {
        // The driver's connections are gone with its state: so are hvm's.
        let keys: Vec<Key> = self.ids.keys().copied().collect();
        for key in keys {
            self.drop_connection(key, false);
        }
        self.controls.clear();
        self.credit_due.clear();
    }
}

#[cfg(test)]
mod tests;
