//! One vsock stream between a guest port and a host Unix socket, with the
//! credit accounting of the virtio-vsock protocol: each side tells the
//! other how much it can buffer (`buf_alloc`) and how much it has passed on
//! (`fwd_cnt`), and never sends more than the other has room for.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

/// What hvm buffers per connection for the host side: the guest may send
/// this much before the host program has read it.
pub const BUF_ALLOC: u32 = 256 << 10;
/// hvm tells the guest its new `fwd_cnt` once this much has been passed on
/// since it last did (the guest also learns it from every other packet).
const CREDIT_UPDATE_AFTER: u32 = BUF_ALLOC / 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the request is out, the guest has not answered.
    Connecting,
    Established,
}

/// What the connection asks of the device after an event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// Tell the guest how much room there is again (CREDIT_UPDATE).
    pub credit_update: bool,
    /// The connection is over: reset it (RST to the guest) and forget it.
    pub reset: bool,
}

/// Why data from the guest was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// More than the credit hvm gave: the guest broke the protocol.
    OverCredit,
    /// The connection cannot carry data now.
    NotEstablished,
}

pub struct Connection {
    pub stream: UnixStream,
    pub state: State,
    /// Guest to host: bytes accepted from the guest, not yet written.
    to_host: VecDeque<u8>,
    /// Bytes written to the host socket so far (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard from us.
    fwd_cnt_told: Wrapping<u32>,
    /// Host to guest: bytes read from the host socket; those from
    /// `to_guest_at` on are not in a guest buffer yet.
    to_guest: Vec<u8>,
    to_guest_at: usize,
    /// Bytes sent to the guest so far.
    rx_cnt: Wrapping<u32>,
    /// The guest's buffer size and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Epoll said the host socket has data (edge-triggered: until WouldBlock).
    pub readable: bool,
    /// The host program closed its side (EOF): nothing more comes from it.
    pub host_done: bool,
    /// The guest will send nothing more (SHUTDOWN with SEND).
    pub guest_done_sending: bool,
    /// The guest will take nothing more (SHUTDOWN with RCV).
    pub guest_done_receiving: bool,
    /// The guest has been told the host side is done (SHUTDOWN sent).
    pub shutdown_told: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, state: State) -> std::io::Result<Connection> {
        stream.set_nonblocking(true)?;
        Ok(Connection {
            stream,
            state,
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            to_guest: Vec::new(),
            to_guest_at: 0,
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            readable: false,
            host_done: false,
            guest_done_sending: false,
            guest_done_receiving: false,
            shutdown_told: false,
        })
    }

    /// Every packet from the guest carries its credit.
    pub fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// How many bytes the guest has room for now.
    pub fn guest_room(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Our side of the credit, for a packet header: (buf_alloc, fwd_cnt).
    /// Telling it counts as telling the guest.
    pub fn our_credit(&mut self) -> (u32, u32) {
        self.fwd_cnt_told = self.fwd_cnt;
        (BUF_ALLOC, self.fwd_cnt.0)
    }

    /// Host data waiting for a guest buffer.
    pub fn for_guest(&self) -> &[u8] {
        &self.to_guest[self.to_guest_at..]
    }

    /// The first `n` bytes of [`Connection::for_guest`] went to the guest.
    pub fn sent_to_guest(&mut self, n: usize) {
        self.rx_cnt += Wrapping(n as u32);
        self.to_guest_at = (self.to_guest_at + n).min(self.to_guest.len());
        if self.to_guest_at == self.to_guest.len() {
            self.to_guest.clear();
            self.to_guest_at = 0;
        }
    }

    /// Whether host data could go to the guest now (given buffers).
    pub fn has_data_for_guest(&self) -> bool {
        self.state == State::Established
            && !self.guest_done_receiving
            && self.guest_room() > 0
            && (!self.for_guest().is_empty() || (self.readable && !self.host_done))
    }

    /// Fills `to_guest` from the host socket (up to `max` bytes, within the
    /// guest's room) if it is empty. Returns whether it holds data now.
    pub fn pull_from_host(&mut self, max: usize, scratch: &mut [u8]) -> Wants {
        if !self.for_guest().is_empty() || !self.readable || self.host_done {
            return Wants::default();
        }
        let n = max.min(self.guest_room() as usize).min(scratch.len());
        if n == 0 {
            return Wants::default();
        }
        match self.stream.read(&mut scratch[..n]) {
            Ok(0) => {
                self.host_done = true;
                Wants::default()
            }
            Ok(got) => {
                self.to_guest.extend_from_slice(&scratch[..got]);
                Wants::default()
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.readable = false;
                Wants::default()
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Wants::default(),
            Err(_) => Wants {
                reset: true,
                ..Wants::default()
            },
        }
    }

    /// Data the guest sent: buffered and written to the host socket as far
    /// as it takes it.
    pub fn take_from_guest(&mut self, data: &[u8]) -> Result<Wants, Refused> {
        if self.state != State::Established || self.guest_done_sending {
            return Err(Refused::NotEstablished);
        }
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return Err(Refused::OverCredit);
        }
        self.to_host.extend(data);
        Ok(self.flush_to_host())
    }

    /// Writes what waits for the host socket; says whether the guest should
    /// hear of the room that made, or the connection is broken.
    pub fn flush_to_host(&mut self) -> Wants {
        let mut wants = Wants::default();
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    wants.reset = true;
                    return wants;
                }
            }
        }
        if self.to_host.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        wants.credit_update = (self.fwd_cnt - self.fwd_cnt_told).0 >= CREDIT_UPDATE_AFTER;
        wants
    }

    /// Bytes waiting for the host socket to take them.
    pub fn waiting_for_host(&self) -> usize {
        self.to_host.len()
    }

    /// The host program is done and all it sent went to the guest, which
    /// has not heard so yet.
    pub fn host_finished(&self) -> bool {
        self.state == State::Established
            && self.host_done
            && self.for_guest().is_empty()
            && !self.shutdown_told
    }

    /// Both directions are finished: the connection can be reset and forgotten.
    pub fn finished(&self) -> bool {
        let host_to_guest_over = self.guest_done_receiving
            || (self.host_done && self.for_guest().is_empty() && self.shutdown_told);
        let guest_to_host_over = self.guest_done_sending && self.to_host.is_empty();
        host_to_guest_over && guest_to_host_over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::new(a, State::Established).unwrap(), b)
    }

    #[test]
    fn the_guest_gets_no_more_than_its_credit() {
        let (mut c, mut host) = connection();
        host.write_all(&[7u8; 10_000]).unwrap();
        c.readable = true;
        let mut scratch = vec![0u8; 65536];
        // No credit yet: nothing is read.
        assert!(!c.has_data_for_guest());
        c.pull_from_host(65536, &mut scratch);
        assert!(c.for_guest().is_empty());
        c.peer_credit(4096, 0);
        assert!(c.has_data_for_guest());
        c.pull_from_host(65536, &mut scratch);
        assert_eq!(c.for_guest().len(), 4096);
        c.sent_to_guest(1000);
        assert_eq!(c.for_guest().len(), 3096);
        c.sent_to_guest(3096);
        assert!(c.for_guest().is_empty());
        assert_eq!(c.guest_room(), 0);
        assert!(!c.has_data_for_guest());
        // The guest consumed 1000: room for 1000 more.
        c.peer_credit(4096, 1000);
        assert_eq!(c.guest_room(), 1000);
        // Counters wrap around without losing the difference.
        let (mut c, _h) = connection();
        c.rx_cnt = Wrapping(u32::MAX - 10);
        c.peer_credit(100, u32::MAX - 30);
        assert_eq!(c.guest_room(), 80);
        c.sent_to_guest(50);
        assert_eq!(c.guest_room(), 30);
    }

    #[test]
    fn guest_data_beyond_the_credit_given_is_refused() {
        let (mut c, host) = connection();
        // The host program does not read: the buffer fills to BUF_ALLOC.
        let chunk = vec![1u8; 64 << 10];
        let mut accepted = 0usize;
        loop {
            match c.take_from_guest(&chunk) {
                Ok(_) => accepted += chunk.len(),
                Err(e) => {
                    assert_eq!(e, Refused::OverCredit);
                    break;
                }
            }
            assert!(accepted < 64 << 20, "never refused");
        }
        assert!(c.waiting_for_host() <= BUF_ALLOC as usize);
        drop(host);
        // The host side is gone: the next flush asks for a reset.
        assert!(c.flush_to_host().reset);
    }

    #[test]
    fn passing_data_on_earns_the_guest_a_credit_update() {
        let (mut c, mut host) = connection();
        let w = c
            .take_from_guest(&vec![3u8; CREDIT_UPDATE_AFTER as usize])
            .unwrap();
        assert!(w.credit_update);
        assert_eq!(c.our_credit(), (BUF_ALLOC, CREDIT_UPDATE_AFTER));
        let w = c.take_from_guest(&[3u8; 100]).unwrap();
        assert!(!w.credit_update, "told already");
        let mut got = vec![0u8; CREDIT_UPDATE_AFTER as usize + 100];
        host.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 3));
    }

    #[test]
    fn shutdown_both_ways_finishes_the_connection() {
        let (mut c, mut host) = connection();
        c.take_from_guest(b"last words").unwrap();
        c.guest_done_sending = true;
        c.flush_to_host();
        let mut all = Vec::new();
        host.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"last words", "the host sees EOF after the data");
        assert!(!c.finished());
        c.guest_done_receiving = true;
        assert!(c.finished());
        assert_eq!(c.take_from_guest(b"more"), Err(Refused::NotEstablished));
    }
}
