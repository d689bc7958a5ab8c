//! hvm's boot timeline: milliseconds since the process started, logged at
//! each milestone (`RUST_LOG=hvm::timeline=info`, or `-v`).

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Marks the process start; call first thing in main.
pub fn start() {
    START.get_or_init(Instant::now);
}

/// Time since [`start`] (zero if it was never called).
pub fn since_start() -> Duration {
    START.get().map(Instant::elapsed).unwrap_or_default()
}

/// Every milestone so far, for `--stats`.
static MARKS: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// Logs a milestone and keeps it.
pub fn mark(what: &'static str) {
    let at = since_start();
    log::info!(target: "hvm::timeline", "{what}: {:.3} ms", at.as_secs_f64() * 1e3);
    MARKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((what, at));
}

/// The milestones so far, in order.
pub fn marks() -> Vec<(&'static str, Duration)> {
    MARKS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
