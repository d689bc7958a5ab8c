//! hvm's boot timeline: milliseconds since the process started, logged at
//! each milestone (`RUST_LOG=hvm::timeline=info`, or `-v`).

use std::sync::OnceLock;
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

/// Logs a milestone.
pub fn mark(what: &str) {
    log::info!(target: "hvm::timeline", "{what}: {:.3} ms", since_start().as_secs_f64() * 1e3);
}
