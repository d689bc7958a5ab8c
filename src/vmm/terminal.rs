//! The controlling terminal: raw mode while the guest owns the console,
//! restored on every way out (normal exit, error, signal, panic), and the
//! Ctrl-A escape that lets the user leave.

use std::sync::{Mutex, OnceLock};

/// The byte that starts an escape sequence (Ctrl-A).
pub const ESCAPE: u8 = 0x01;

/// Saved terminal settings, for restoring from anywhere (even a panic hook).
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// The settings found at the first raw-mode entry, readable without a lock
/// (for a signal handler that ends hvm).
static ORIGINAL: OnceLock<libc::termios> = OnceLock::new();

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Puts the terminal in raw mode until [`restore`] (or the guard's drop).
pub struct RawMode;

impl RawMode {
    pub fn enter() -> std::io::Result<RawMode> {
        // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and a pointer to a live termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        let _ = ORIGINAL.set(t);
        let mut raw = t;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so hvm's own messages still start at column 0.
        raw.c_oflag = t.c_oflag;
        // SAFETY: as above; TCSANOW applies the settings at once.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the saved terminal settings, if any. Safe to call repeatedly.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = saved {
        // SAFETY: restores settings read earlier from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

/// Restores the terminal from a signal handler: no lock, one ioctl.
pub fn restore_from_signal() {
    if let Some(t) = ORIGINAL.get() {
        // SAFETY: tcsetattr is async-signal-safe; settings read earlier.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
}

/// What a chunk of keyboard input means once escapes are taken out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    pub to_guest: Vec<u8>,
    pub quit: bool,
    pub help: bool,
}

/// Splits Ctrl-A sequences out of keyboard input: `Ctrl-A x` quits,
/// `Ctrl-A Ctrl-A` sends one Ctrl-A, `Ctrl-A h` shows help; any other
/// byte after Ctrl-A is passed on with it.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    armed: bool,
}

impl EscapeFilter {
    pub fn feed(&mut self, input: &[u8]) -> Filtered {
        let mut out = Filtered::default();
        for &b in input {
            if self.armed {
                self.armed = false;
                match b {
                    b'x' | b'X' => {
                        out.quit = true;
                        return out;
                    }
                    b'h' | b'H' | b'?' => out.help = true,
                    ESCAPE => out.to_guest.push(ESCAPE),
                    other => out.to_guest.extend([ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.armed = true;
            } else {
                out.to_guest.push(b);
            }
        }
        out
    }
}

pub const HELP: &str =
    "\r\nhvm console: Ctrl-A x quits hvm, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h shows this\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_input_passes_through() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ls -l\r").to_guest, b"ls -l\r");
    }

    #[test]
    fn ctrl_a_x_quits_even_split_across_reads() {
        let mut f = EscapeFilter::default();
        let first = f.feed(b"ab\x01");
        assert_eq!(first.to_guest, b"ab");
        assert!(!first.quit);
        assert!(f.feed(b"x").quit);
    }

    #[test]
    fn double_ctrl_a_sends_one_and_others_pass() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"\x01\x01").to_guest, b"\x01");
        assert_eq!(f.feed(b"\x01c").to_guest, b"\x01c");
        assert!(f.feed(b"\x01h").help);
    }
}
