//! Ethernet frames over a stream socket, each preceded by its length as a
//! 4-byte big-endian number: what passt speaks on `--fd` (QEMU's "stream"
//! netdev). Non-blocking both ways: input is parsed from a buffer however
//! the bytes arrive (and a frame is handed on from there), and output that
//! the socket cannot take yet waits in a buffer of its own (one frame at
//! most) until it can.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::os::unix::net::UnixStream;

/// Largest Ethernet frame accepted either way (passt's MTU of 65,520 plus
/// the Ethernet header fits, with room to spare).
pub const MAX_ETH_FRAME: usize = 65_550;
/// Smallest: an Ethernet header.
const MIN_ETH_FRAME: usize = 14;
/// Input buffer: several frames per read, and room for what the peer sends
/// while the guest has no buffers (see [`FrameStream::fill`]). Its pages
/// are touched only as traffic needs them.
const IN_BUF: usize = 4 << 20;

/// What came of asking for the next frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A frame of this many bytes is in the caller's buffer.
    Frame(usize),
    /// Nothing complete yet: wait for the socket to be readable.
    Nothing,
    /// The peer closed the connection.
    Closed,
}

pub struct FrameStream {
    socket: UnixStream,
    input: Box<[u8]>,
    /// Unparsed input is `input[start..end]`.
    start: usize,
    end: usize,
    /// Bytes of a bad frame (too big or too small) still to be thrown away.
    skip: usize,
    /// The length of the whole frame at `input[start + 4..]`, once found.
    current: Option<usize>,
    /// Output the socket has not taken yet, from `sent` on.
    output: Vec<u8>,
    sent: usize,
    /// Frames thrown away because their length was out of bounds.
    pub malformed: u64,
}

impl FrameStream {
    pub fn new(socket: UnixStream) -> std::io::Result<FrameStream> {
        socket.set_nonblocking(true)?;
        Ok(FrameStream {
            socket,
            input: vec![0; IN_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            skip: 0,
            current: None,
            output: Vec::new(),
            sent: 0,
            malformed: 0,
        })
    }

    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// Brings the next whole frame to the front, reading the socket as
    /// needed: [`FrameStream::frame`] shows it (no copy) until
    /// [`FrameStream::consume`] drops it, so a frame that must wait for
    /// room in the guest waits where it is.
    pub fn peek(&mut self) -> std::io::Result<Received> {
        if let Some(len) = self.current {
            return Ok(Received::Frame(len));
        }
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.start += n;
                self.skip -= n;
            }
            if self.skip == 0 && self.end - self.start >= 4 {
                let mut word = [0u8; 4];
                word.copy_from_slice(&self.input[self.start..self.start + 4]);
                let len = u32::from_be_bytes(word) as usize;
                if !(MIN_ETH_FRAME..=MAX_ETH_FRAME).contains(&len) {
                    // Not a frame hvm can pass on: skip it whole, keep in step.
                    self.malformed += 1;
                    log::debug!("net stream: skipping a frame of {len} bytes");
                    self.start += 4;
                    self.skip = len;
                    continue;
                }
                if self.end - self.start >= 4 + len {
                    self.current = Some(len);
                    return Ok(Received::Frame(len));
                }
            }
            match self.read_more()? {
                Some(0) => return Ok(Received::Closed),
                Some(_) => {}
                None => return Ok(Received::Nothing),
            }
        }
    }

    /// Reads what the socket holds while the input buffer has room, for
    /// when the guest takes no frames for a while: passt drops frames its
    /// socket cannot take (Debian 12's passt does not resend them until the
    /// guest's TCP notices the gap), so hvm takes them off the socket
    /// instead and keeps them until the guest posts buffers.
    pub fn fill(&mut self) -> std::io::Result<()> {
        while self.end - self.start < self.input.len() {
            match self.read_more()? {
                Some(0) | None => break,
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Makes room at the end of the input buffer and reads once: the bytes
    /// read (0 at the end of the stream), None if there are none now.
    fn read_more(&mut self) -> std::io::Result<Option<usize>> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 && self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.input.len() {
            return Ok(None);
        }
        loop {
            match self.socket.read(&mut self.input[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Some(0)),
                Err(e) => return Err(e),
            }
        }
    }

    /// The frame [`FrameStream::peek`] brought to the front (empty if none).
    pub fn frame(&self) -> &[u8] {
        match self.current {
            Some(len) => &self.input[self.start + 4..self.start + 4 + len],
            None => &[],
        }
    }

    /// Drops the frame at the front.
    pub fn consume(&mut self) {
        if let Some(len) = self.current.take() {
            self.start += 4 + len;
        }
    }

    /// True while earlier output waits for the socket: send nothing more
    /// until [`FrameStream::flush`] empties it (the socket becomes writable).
    pub fn blocked(&self) -> bool {
        self.sent < self.output.len()
    }

    /// Sends what waits; true when nothing is left.
    pub fn flush(&mut self) -> std::io::Result<bool> {
        while self.blocked() {
            match self.socket.write(&self.output[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.sent = 0;
        Ok(true)
    }

    /// Sends one frame, or as much of it as the socket takes now; the rest
    /// waits (see [`FrameStream::blocked`]). Frames out of bounds are refused.
    pub fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        if !(MIN_ETH_FRAME..=MAX_ETH_FRAME).contains(&frame.len()) {
            return Err(ErrorKind::InvalidInput.into());
        }
        let prefix = (frame.len() as u32).to_be_bytes();
        if self.blocked() {
            self.output.extend_from_slice(&prefix);
            self.output.extend_from_slice(frame);
            return Ok(());
        }
        let total = prefix.len() + frame.len();
        let written = loop {
            match self
                .socket
                .write_vectored(&[IoSlice::new(&prefix), IoSlice::new(frame)])
            {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break 0,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if written < total {
            self.output.clear();
            self.sent = 0;
            if written < prefix.len() {
                self.output.extend_from_slice(&prefix[written..]);
                self.output.extend_from_slice(frame);
            } else {
                self.output
                    .extend_from_slice(&frame[written - prefix.len()..]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next frame, copied out and dropped from the stream.
    fn receive(s: &mut FrameStream) -> Received {
        let got = s.peek().unwrap();
        if let Received::Frame(n) = got {
            assert_eq!(s.frame().len(), n);
        }
        got
    }

    fn pair() -> (FrameStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (FrameStream::new(a).unwrap(), b)
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn frames_arrive_whole_however_the_bytes_are_split() {
        let (mut s, mut peer) = pair();
        let (f1, f2) = (pattern(60, 1), pattern(1500, 2));
        let mut bytes = framed(&f1);
        bytes.extend(framed(&f2));
        // One byte at a time: nothing until a frame is complete.
        let mut got = Vec::new();
        for b in &bytes {
            peer.write_all(std::slice::from_ref(b)).unwrap();
            match receive(&mut s) {
                Received::Frame(_) => {
                    // Until consumed, the same frame stays in front.
                    assert_eq!(receive(&mut s), Received::Frame(s.frame().len()));
                    got.push(s.frame().to_vec());
                    s.consume();
                }
                Received::Nothing => {}
                Received::Closed => panic!("closed"),
            }
        }
        assert_eq!(got, vec![f1, f2]);
        assert!(s.frame().is_empty());
        drop(peer);
        assert_eq!(receive(&mut s), Received::Closed);
    }

    #[test]
    fn many_frames_in_one_read_and_the_biggest_frame_fit() {
        let (mut s, mut peer) = pair();
        let big = pattern(MAX_ETH_FRAME, 3);
        let mut bytes = Vec::new();
        for i in 0..20 {
            bytes.extend(framed(&pattern(100 + i, i as u8)));
        }
        bytes.extend(framed(&big));
        let writer = std::thread::spawn(move || peer.write_all(&bytes).unwrap());
        let mut frames = Vec::new();
        while frames.len() < 21 {
            match receive(&mut s) {
                Received::Frame(_) => {
                    frames.push(s.frame().to_vec());
                    s.consume();
                }
                Received::Nothing => std::thread::sleep(std::time::Duration::from_millis(1)),
                Received::Closed => panic!("closed"),
            }
        }
        writer.join().unwrap();
        assert_eq!(frames[5], pattern(105, 5));
        assert_eq!(frames[20], big);
    }

    #[test]
    fn fill_takes_what_the_peer_sends_while_the_front_frame_waits() {
        let (mut s, mut peer) = pair();
        peer.set_nonblocking(true).unwrap();
        let frames: Vec<Vec<u8>> = (0..64).map(|i| pattern(60_000, i)).collect();
        let bytes: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
        // The peer sends until the socket pushes back; returns how far it got.
        let send = |peer: &mut UnixStream, mut at: usize| {
            while at < bytes.len() {
                match peer.write(&bytes[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            at
        };
        let first = send(&mut peer, 0);
        assert!(first < bytes.len(), "the socket never filled");
        // The front frame waits (the guest has no buffers); the rest is
        // taken off the socket, so the peer can go on.
        assert_eq!(receive(&mut s), Received::Frame(60_000));
        s.fill().unwrap();
        let mut at = send(&mut peer, first);
        assert!(at > first, "fill took nothing");
        // 3.8 MB fit in hvm's buffer, however little the socket holds.
        while at < bytes.len() {
            s.fill().unwrap();
            let next = send(&mut peer, at);
            assert!(next > at, "stuck after {at} of {} bytes", bytes.len());
            at = next;
        }
        drop(peer);
        let mut got = Vec::new();
        while let Received::Frame(_) = receive(&mut s) {
            got.push(s.frame().to_vec());
            s.consume();
        }
        assert!(got == frames, "frames lost or out of order");
        assert_eq!(receive(&mut s), Received::Closed);
    }

    #[test]
    fn oversize_and_runt_frames_are_skipped_and_the_stream_stays_in_step() {
        let (mut s, mut peer) = pair();
        let good = pattern(64, 9);
        let mut bytes = framed(&pattern(MAX_ETH_FRAME + 1, 1));
        bytes.extend(framed(&[1, 2, 3]));
        bytes.extend(framed(&[]));
        bytes.extend(framed(&good));
        let writer = std::thread::spawn(move || peer.write_all(&bytes).unwrap());
        let got = loop {
            match receive(&mut s) {
                Received::Frame(_) => break s.frame().to_vec(),
                Received::Nothing => std::thread::sleep(std::time::Duration::from_millis(1)),
                Received::Closed => panic!("closed"),
            }
        };
        writer.join().unwrap();
        assert_eq!(got, good);
        assert_eq!(s.malformed, 3);
    }

    #[test]
    fn output_the_socket_cannot_take_waits_and_goes_out_in_order() {
        let (mut s, mut peer) = pair();
        let frames: Vec<Vec<u8>> = (0..64).map(|i| pattern(60_000, i)).collect();
        let mut sent = 0;
        // Fill the socket until it pushes back.
        while sent < frames.len() && !s.blocked() {
            s.send(&frames[sent]).unwrap();
            sent += 1;
        }
        assert!(s.blocked(), "the socket never filled");
        assert!(s.send(&[0u8; 10]).is_err(), "runts are refused");
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all
        });
        while sent < frames.len() {
            if s.flush().unwrap() {
                s.send(&frames[sent]).unwrap();
                sent += 1;
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        while !s.flush().unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(s);
        let all = reader.join().unwrap();
        let expected: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
        assert_eq!(all.len(), expected.len());
        assert!(all == expected, "bytes out of order");
    }
}
