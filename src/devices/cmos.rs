//! A minimal MC146818 CMOS/RTC on ports 0x70/0x71: the wall-clock time
//! registers in BCD and an always-idle update flag, so a guest that reads
//! the clock neither spins on "update in progress" nor sees garbage.

use super::bus::BusDevice;
use std::time::{SystemTime, UNIX_EPOCH};

pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_LEN: u64 = 2;

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos {
            index: 0,
            nvram: [0; 128],
        }
    }
}

fn bcd(v: u64) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Cmos {
    fn register(&self, index: u8, now: u64) -> u8 {
        let (secs, days) = (now % 86_400, (now / 86_400) as i64);
        let (year, month, day) = civil(days);
        match index {
            0x00 => bcd(secs % 60),
            0x02 => bcd(secs / 60 % 60),
            0x04 => bcd(secs / 3600),
            0x06 => bcd(((days + 4) % 7 + 1) as u64),
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd(year.rem_euclid(100) as u64),
            0x32 => bcd((year / 100) as u64),
            0x0a => 0x26, // Divider on, no update in progress.
            0x0b => 0x02, // 24-hour mode, BCD.
            0x0c => 0,
            0x0d => 0x80, // Battery good.
            i => self.nvram[usize::from(i & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let (Some(b), 1) = (data.first_mut(), offset) {
            *b = self.register(self.index, now);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0, Some(&v)) => self.index = v & 0x7f,
            (1, Some(&v)) if self.index > 0x0d => self.nvram[usize::from(self.index)] = v,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_registers_are_bcd_of_the_given_time() {
        // 2024-02-29 13:45:56 UTC, a Thursday.
        let t = 1_709_214_356;
        let c = Cmos::default();
        assert_eq!(c.register(0x00, t), 0x56);
        assert_eq!(c.register(0x02, t), 0x45);
        assert_eq!(c.register(0x04, t), 0x13);
        assert_eq!(c.register(0x07, t), 0x29);
        assert_eq!(c.register(0x08, t), 0x02);
        assert_eq!(c.register(0x09, t), 0x24);
        assert_eq!(c.register(0x32, t), 0x20);
        assert_eq!(c.register(0x06, t), 0x05);
    }

    #[test]
    fn update_in_progress_is_never_set() {
        let mut c = Cmos::default();
        c.write(0, &[0x0a]);
        let mut d = [0u8];
        c.read(1, &mut d);
        assert_eq!(d[0] & 0x80, 0);
    }

    #[test]
    fn nvram_keeps_what_the_guest_wrote() {
        let mut c = Cmos::default();
        c.write(0, &[0x40]);
        c.write(1, &[0x5a]);
        let mut d = [0u8];
        c.read(1, &mut d);
        assert_eq!(d[0], 0x5a);
        c.write(0, &[0xff]);
        c.read(1, &mut d);
    }
}
