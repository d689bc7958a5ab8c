//! Where the guest's console output goes (stdout, files), through a bounded
//! buffer that a writer thread drains. A vCPU printing a byte only copies
//! it into the buffer: a terminal that scrolls slowly or a pipe nobody
//! reads can never block a vCPU (and with it pause, stop or the timeout).
//! What does not fit is dropped and counted; hvm reports the count at exit.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Guest output held for a slow consumer before bytes are dropped.
const BUFFER_LIMIT: usize = 4 << 20;
/// At exit, how long the drain may make no progress before hvm gives up on it.
const DRAIN_STALL: Duration = Duration::from_millis(500);
/// The guest's last output kept whatever the sinks (for failure reports).
const TAIL_LIMIT: usize = 16 << 10;
/// Output arriving within this long of the last write is gathered for
/// this long before it is written ...
const GATHER: Duration = Duration::from_millis(2);
/// ... unless this much is waiting already.
const GATHER_BELOW: usize = 4096;

/// One file the output is copied to; a failing file is dropped alone.
struct Sink {
    file: File,
    failed: bool,
    /// Bytes written so far, and the most this file may take.
    written: u64,
    max_size: Option<u64>,
}

impl Sink {
    /// Writes what fits; a file that fails or is full takes no more.
    fn write(&mut self, chunk: &[u8]) {
        let room = self.max_size.map_or(u64::MAX, |m| m - self.written);
        let n = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if let Err(e) = self.file.write_all(&chunk[..n]) {
            log::warn!("console output file: {e}; no more output goes to it");
            self.failed = true;
            return;
        }
        self.written += n as u64;
        if n < chunk.len() {
            log::warn!(
                "console output file reached its max_size ({} bytes); later output is not written to it",
                self.written
            );
            self.failed = true;
        }
    }
}

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    dropped: u64,
    /// Bytes the writer has taken but not yet written.
    in_flight: usize,
    writer_waiting: bool,
    writer_started: bool,
    stdout: bool,
    /// The stream is hvm's stderr instead of its stdout.
    to_stderr: bool,
    stdout_broken: bool,
    tail: VecDeque<u8>,
    sinks: Vec<Sink>,
    /// How many files were added (the writer takes `sinks` out while it
    /// writes, so their number cannot tell whether output is wanted).
    files: usize,
    delivered: u64,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Signals the writer (new bytes) and drainers (progress).
    changed: Condvar,
}

/// The console sinks, shared by every device that prints to the console
/// (the UART, and virtio-console when there is one).
#[derive(Clone, Default)]
pub struct SharedOutput(Arc<Inner>);

/// What became of the guest's output, for the report at exit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OutputReport {
    /// Dropped because the buffer was full (the consumer was too slow).
    pub dropped: u64,
    /// Still buffered when hvm gave up waiting for the consumer.
    pub undelivered: u64,
}

impl SharedOutput {
    pub fn new(stdout: bool) -> Self {
        let out = SharedOutput::default();
        out.state().stdout = stdout;
        out
    }

    /// Output that goes to hvm's stderr (a guest command's stderr).
    pub fn to_stderr() -> Self {
        let out = SharedOutput::new(true);
        out.state().to_stderr = true;
        out
    }

    /// The last `n` lines the guest printed (kept even when the output
    /// goes nowhere), for the report when a guest fails.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let s = self.state();
        let bytes: Vec<u8> = s.tail.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        super::bus::lock(&self.0.state)
    }

    /// Also copies everything into `file`, up to `max_size` bytes (a guest
    /// printing forever must not fill the host's disk).
    pub fn add_file(&self, file: File, max_size: Option<u64>) {
        let mut s = self.state();
        s.files += 1;
        s.sinks.push(Sink {
            file,
            failed: false,
            written: 0,
            max_size,
        });
    }

    /// Queues guest output; never blocks on the consumer.
    pub fn write_bytes(&self, bytes: &[u8]) {
        let mut s = self.state();
        let keep = bytes.len().min(TAIL_LIMIT);
        let excess = (s.tail.len() + keep).saturating_sub(TAIL_LIMIT);
        s.tail.drain(..excess);
        s.tail.extend(&bytes[bytes.len() - keep..]);
        if !s.stdout && s.files == 0 {
            return;
        }
        let room = BUFFER_LIMIT.saturating_sub(s.buf.len());
        let n = bytes.len().min(room);
        s.buf.extend(&bytes[..n]);
        s.dropped += (bytes.len() - n) as u64;
        if !s.writer_started {
            drop(s);
            self.start_writer(|| Ok(()));
        } else if s.writer_waiting {
            self.0.changed.notify_all();
        }
    }

    /// Starts the thread that writes the output out, if there is anywhere
    /// to write and it has not started yet; it runs `setup` first (hvm
    /// filters its system calls there) and writes nothing if that fails.
    /// Starting it before the guest runs keeps thread creation off the
    /// threads that serve the guest.
    pub fn start_writer<F>(&self, setup: F)
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        let mut s = self.state();
        if s.writer_started || (!s.stdout && s.files == 0) {
            return;
        }
        s.writer_started = true;
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("hvm-console".into())
            .spawn(move || match setup() {
                Ok(()) => me.writer(),
                Err(e) => log::error!("console writer: {e}; guest output is lost"),
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the console writer: {e}; guest output is lost");
        }
    }

    /// The writer thread: takes what is buffered and writes it out, with
    /// no lock held while it writes.
    fn writer(self) {
        let mut chunk = Vec::new();
        let mut last_write: Option<Instant> = None;
        loop {
            let (stdout, to_stderr, mut sinks) = {
                let mut s = self.state();
                while s.buf.is_empty() {
                    s.writer_waiting = true;
                    s = self.0.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.writer_waiting = false;
                if s.buf.len() < GATHER_BELOW && last_write.is_some_and(|t| t.elapsed() < GATHER) {
                    // In a burst from a UART (one exit per byte), waking
                    // and writing per byte costs more than the guest's
                    // exit: gather for a moment, unprompted (no one
                    // notifies a writer that is not waiting). The first
                    // bytes after a quiet spell go out at once.
                    drop(s);
                    std::thread::sleep(GATHER);
                    s = self.state();
                }
                chunk.clear();
                chunk.extend(s.buf.drain(..));
                s.in_flight = chunk.len();
                (
                    s.stdout && !s.stdout_broken,
                    s.to_stderr,
                    std::mem::take(&mut s.sinks),
                )
            };
            let mut stdout_broken = false;
            if stdout {
                let written = if to_stderr {
                    let mut err = io::stderr().lock();
                    err.write_all(&chunk).and_then(|_| err.flush())
                } else {
                    let mut out = io::stdout().lock();
                    out.write_all(&chunk).and_then(|_| out.flush())
                };
                if written.is_err() {
                    // A closed stdout must not stop the guest (or the log files).
                    stdout_broken = true;
                    log::debug!("stdout is closed; guest console output now goes only to files");
                }
            }
            for sink in sinks.iter_mut().filter(|s| !s.failed) {
                sink.write(&chunk);
            }
            let mut s = self.state();
            // Files added meanwhile follow the ones we had.
            sinks.append(&mut s.sinks);
            s.sinks = sinks;
            s.stdout_broken |= stdout_broken;
            s.delivered += chunk.len() as u64;
            s.in_flight = 0;
            last_write = Some(Instant::now());
            self.0.changed.notify_all();
        }
    }

    /// Waits until everything buffered is written, giving up when the
    /// consumer makes no progress for a while (a pipe nobody reads).
    pub fn drain(&self) -> OutputReport {
        let mut s = self.state();
        let mut last = (s.delivered, Instant::now());
        while s.writer_started && (!s.buf.is_empty() || s.in_flight > 0) {
            if s.delivered != last.0 {
                last = (s.delivered, Instant::now());
            }
            let Some(left) = DRAIN_STALL.checked_sub(last.1.elapsed()) else {
                break;
            };
            s = self
                .0
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        OutputReport {
            dropped: s.dropped,
            undelivered: (s.buf.len() + s.in_flight) as u64,
        }
    }
}

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hvm-out-{}-{name}", std::process::id()))
    }

    #[test]
    fn output_reaches_every_file_in_order() {
        let (a, b) = (temp("a"), temp("b"));
        let out = SharedOutput::new(false);
        out.add_file(File::create(&a).unwrap(), None);
        out.add_file(File::create(&b).unwrap(), None);
        for i in 0..1000 {
            out.write_bytes(format!("line {i}\n").as_bytes());
        }
        assert_eq!(out.drain(), OutputReport::default());
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), expected);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), expected);
        std::fs::remove_file(a).unwrap();
        std::fs::remove_file(b).unwrap();
    }

    #[test]
    fn a_failing_file_does_not_stop_the_others() {
        let good = temp("good");
        let out = SharedOutput::new(false);
        // Opened read-only: every write fails.
        out.add_file(File::open("/dev/null").unwrap(), None);
        out.add_file(File::create(&good).unwrap(), None);
        out.write_bytes(b"first\n");
        out.drain();
        out.write_bytes(b"second\n");
        out.drain();
        assert_eq!(std::fs::read_to_string(&good).unwrap(), "first\nsecond\n");
        std::fs::remove_file(good).unwrap();
    }

    #[test]
    fn a_file_stops_at_its_max_size_and_the_others_go_on() {
        let (capped, free) = (temp("capped"), temp("free"));
        let out = SharedOutput::new(false);
        out.add_file(File::create(&capped).unwrap(), Some(1000));
        out.add_file(File::create(&free).unwrap(), None);
        for _ in 0..30 {
            out.write_bytes(&[b'y'; 100]);
            out.drain();
        }
        assert_eq!(std::fs::metadata(&capped).unwrap().len(), 1000);
        assert_eq!(std::fs::metadata(&free).unwrap().len(), 3000);
        std::fs::remove_file(capped).unwrap();
        std::fs::remove_file(free).unwrap();
    }

    #[test]
    fn the_last_lines_are_kept_whatever_the_sinks() {
        let out = SharedOutput::new(false);
        for i in 0..5000 {
            out.write_bytes(format!("line {i}\r\n").as_bytes());
        }
        assert_eq!(out.last_lines(2), ["line 4998", "line 4999"]);
        out.write_bytes(&vec![b'x'; 3 * TAIL_LIMIT]);
        assert_eq!(out.last_lines(5).len(), 1, "one long line");
    }

    #[test]
    fn without_sinks_nothing_is_kept() {
        let out = SharedOutput::new(false);
        out.write_bytes(&[0; 100]);
        assert_eq!(out.drain(), OutputReport::default());
    }

    #[test]
    fn a_stuck_consumer_makes_output_drop_not_block() {
        // A socket whose reader never reads: the writer blocks once it is full.
        let (writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let out = SharedOutput::new(false);
        out.add_file(file, None);
        let start = Instant::now();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..16 {
            out.write_bytes(&block);
        }
        assert!(start.elapsed() < Duration::from_secs(2), "writing blocked");
        let report = out.drain();
        assert!(report.dropped > 0, "{report:?}");
        assert!(report.undelivered > 0, "{report:?}");
        drop(reader);
    }
}
