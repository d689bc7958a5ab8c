//! Complaints about what a guest did, logged so that no guest can flood
//! hvm's stderr: the first of a kind at warn (saying the rest are counted),
//! every later one at debug with its running count.

/// One kind of complaint on one device.
#[derive(Debug, Default)]
pub struct Complaint {
    count: u64,
}

impl Complaint {
    pub const fn new() -> Self {
        Complaint { count: 0 }
    }

    /// Logs one more occurrence of `message` from `source`.
    pub fn log(&mut self, source: &str, message: std::fmt::Arguments<'_>) {
        self.count += 1;
        if self.count == 1 {
            log::warn!("{source}: {message} (repeats are logged at debug level, -vv)");
        } else {
            log::debug!("{source}: {message} (#{})", self.count);
        }
    }

    /// How many times it happened.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_occurrence() {
        let mut c = Complaint::new();
        for _ in 0..3 {
            c.log("dev", format_args!("bad"));
        }
        assert_eq!(c.count(), 3);
    }
}
