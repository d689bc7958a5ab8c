//! The MC146818 CMOS real-time clock on ports 0x70/0x71, as a PC has it
//! (the DSDT describes it as PNP0B00, so Linux's rtc_cmos makes it
//! /dev/rtc0): the host's UTC time plus the guest's own offset, in the
//! BCD or binary and 12- or 24-hour formats the guest selects in register
//! B, with the update-in-progress flag raised in the last 244 µs of each
//! second as the chip does. Computed on each read: no timer, no thread. A
//! guest that sets the clock (`hwclock --systohc`) moves only its offset.

use super::bus::BusDevice;
use std::time::{SystemTime, UNIX_EPOCH};

pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_LEN: u64 = 2;
/// The index port: a write only selects the register the data port reaches
/// next, so the VMM may batch such writes and replay them in order.
pub const INDEX_LATCH: (u16, u32) = (CMOS_PORT, 1);

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// The century byte (the FADT's `century` names it).
pub const CENTURY: u8 = 0x32;

/// Register A: update in progress.
const A_UIP: u8 = 0x80;
/// Register A's divider bits: a 32.768 kHz time base, 1024 Hz periodic rate.
const A_DIVIDER: u8 = 0x26;
/// Register B: updates halted while the guest sets the clock.
const B_SET: u8 = 0x80;
/// Register B: binary (not BCD) values.
const B_BINARY: u8 = 0x04;
/// Register B: 24-hour mode.
const B_24H: u8 = 0x02;
/// In 12-hour mode, the hour byte's PM flag.
const PM: u8 = 0x80;
/// The chip updates during the last 244 µs of each second.
const UIP_WINDOW_NS: u32 = 244_000;

/// A broken-down UTC time, as the clock registers hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

impl DateTime {
    fn from_epoch(secs: i64) -> DateTime {
        let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u64);
        let (year, month, day) = civil(days);
        DateTime {
            year,
            month,
            day,
            hour: rest / 3600,
            minute: rest / 60 % 60,
            second: rest % 60,
        }
    }

    fn to_epoch(self) -> i64 {
        let days = days_from_civil(self.year, self.month.clamp(1, 12), self.day.clamp(1, 31));
        days * 86_400 + (self.hour * 3600 + self.minute * 60 + self.second) as i64
    }
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

/// Days since 1970-01-01 of a civil date (the inverse of [`civil`]).
fn days_from_civil(year: i64, month: u64, day: u64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn to_bcd(v: u64) -> u8 {
    (((v / 10 % 10) << 4) | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u64 {
    u64::from(v >> 4) * 10 + u64::from(v & 0x0f)
}

/// The host's clock: seconds and nanoseconds since the epoch.
pub trait Clock: Send {
    fn now(&self) -> (i64, u32);
}

/// The host's real-time clock.
pub struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> (i64, u32) {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_secs() as i64, d.subsec_nanos()))
            .unwrap_or((0, 0))
    }
}

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    /// Register B as the guest set it.
    reg_b: u8,
    /// The guest's clock minus the host's, in seconds.
    offset: i64,
    /// While register B's SET bit is on: the time being written.
    staged: Option<DateTime>,
    clock: Box<dyn Clock>,
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos::with_clock(Box::new(HostClock))
    }
}

impl Cmos {
    pub fn with_clock(clock: Box<dyn Clock>) -> Cmos {
        Cmos {
            index: 0,
            nvram: [0; 128],
            reg_b: B_24H,
            offset: 0,
            staged: None,
            clock,
        }
    }

    /// The guest's current time, and whether the chip is updating.
    fn guest_time(&self) -> (DateTime, bool) {
        if let Some(t) = self.staged {
            return (t, false);
        }
        let (secs, nanos) = self.clock.now();
        let updating = nanos >= 1_000_000_000 - UIP_WINDOW_NS;
        (DateTime::from_epoch(secs + self.offset), updating)
    }

    /// A clock value in the guest's chosen format.
    fn encode(&self, v: u64) -> u8 {
        if self.reg_b & B_BINARY != 0 {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u64 {
        if self.reg_b & B_BINARY != 0 {
            u64::from(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u64) -> u8 {
        if self.reg_b & B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if hour >= 12 { PM } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> u64 {
        if self.reg_b & B_24H != 0 {
            return self.decode(v);
        }
        let h12 = self.decode(v & !PM) % 12;
        h12 + if v & PM != 0 { 12 } else { 0 }
    }

    fn register(&self, index: u8) -> u8 {
        let (t, updating) = self.guest_time();
        let days = t.to_epoch().div_euclid(86_400);
        match index {
            SECONDS => self.encode(t.second),
            MINUTES => self.encode(t.minute),
            HOURS => self.encode_hour(t.hour),
            WEEKDAY => self.encode((days + 4).rem_euclid(7) as u64 + 1),
            DAY => self.encode(t.day),
            MONTH => self.encode(t.month),
            YEAR => self.encode(t.year.rem_euclid(100) as u64),
            CENTURY => self.encode(t.year.div_euclid(100).clamp(0, 99) as u64),
            REG_A => A_DIVIDER | if updating { A_UIP } else { 0 },
            REG_B => self.reg_b,
            // No interrupts are ever raised (none are wired).
            REG_C => 0,
            // The battery is good.
            REG_D => 0x80,
            i => self.nvram[usize::from(i & 0x7f)],
        }
    }

    /// A write to a clock register: that field of the guest's time, kept
    /// as an offset from the host's (or staged while SET is on).
    fn set_field(&mut self, index: u8, v: u8) {
        let (mut t, _) = self.guest_time();
        match index {
            SECONDS => t.second = self.decode(v).min(59),
            MINUTES => t.minute = self.decode(v).min(59),
            HOURS => t.hour = self.decode_hour(v).min(23),
            DAY => t.day = self.decode(v).clamp(1, 31),
            MONTH => t.month = self.decode(v).clamp(1, 12),
            YEAR => t.year = t.year.div_euclid(100) * 100 + self.decode(v).min(99) as i64,
            CENTURY => t.year = self.decode(v).min(99) as i64 * 100 + t.year.rem_euclid(100),
            _ => return,
        }
        if self.staged.is_some() {
            self.staged = Some(t);
        } else {
            self.commit(t);
        }
    }

    fn commit(&mut self, t: DateTime) {
        self.offset = t.to_epoch() - self.clock.now().0;
    }

    fn set_reg_b(&mut self, v: u8) {
        let was_set = self.reg_b & B_SET != 0;
        if v & B_SET != 0 && !was_set {
            // Updates stop: the guest writes the new time field by field.
            self.staged = Some(self.guest_time().0);
        }
        self.reg_b = v;
        if v & B_SET == 0 {
            if let Some(t) = self.staged.take() {
                self.commit(t);
            }
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), 1) = (data.first_mut(), offset) {
            *b = self.register(self.index);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else {
            return;
        };
        match (offset, self.index) {
            // Bit 7 of the index masks NMIs on a PC: there are none here.
            (0, _) => self.index = v & 0x7f,
            (1, SECONDS | MINUTES | HOURS | DAY | MONTH | YEAR | CENTURY) => {
                self.set_field(self.index, v)
            }
            (1, REG_B) => self.set_reg_b(v),
            // The divider and the weekday: accepted, not kept (the weekday
            // follows from the date).
            (1, REG_A | WEEKDAY | REG_C | REG_D) => {}
            (1, i) => self.nvram[usize::from(i)] = v,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    /// A clock the test moves: seconds, and nanoseconds in the low 30 bits' stead.
    #[derive(Clone, Default)]
    struct TestClock(Arc<(AtomicI64, AtomicI64)>);
    impl Clock for TestClock {
        fn now(&self) -> (i64, u32) {
            (
                self.0 .0.load(Ordering::SeqCst),
                self.0 .1.load(Ordering::SeqCst) as u32,
            )
        }
    }
    impl TestClock {
        fn set(&self, secs: i64, nanos: u32) {
            self.0 .0.store(secs, Ordering::SeqCst);
            self.0 .1.store(i64::from(nanos), Ordering::SeqCst);
        }
    }

    // 2024-02-29 13:45:56 UTC, a Thursday.
    const LEAP_DAY: i64 = 1_709_214_356;

    fn cmos_at(secs: i64) -> (Cmos, TestClock) {
        let clock = TestClock::default();
        clock.set(secs, 0);
        (Cmos::with_clock(Box::new(clock.clone())), clock)
    }

    fn read(c: &mut Cmos, index: u8) -> u8 {
        c.write(0, &[index]);
        let mut d = [0u8];
        c.read(1, &mut d);
        d[0]
    }

    fn write(c: &mut Cmos, index: u8, v: u8) {
        c.write(0, &[index]);
        c.write(1, &[v]);
    }

    #[test]
    fn clock_registers_are_bcd_24_hour_by_default() {
        let (mut c, _) = cmos_at(LEAP_DAY);
        let regs: Vec<u8> = [SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY, WEEKDAY]
            .iter()
            .map(|&i| read(&mut c, i))
            .collect();
        assert_eq!(regs, [0x56, 0x45, 0x13, 0x29, 0x02, 0x24, 0x20, 0x05]);
        assert_eq!(read(&mut c, REG_B), B_24H);
        assert_eq!(read(&mut c, REG_D), 0x80);
    }

    #[test]
    fn binary_and_12_hour_modes_follow_register_b() {
        let (mut c, _) = cmos_at(LEAP_DAY);
        write(&mut c, REG_B, B_BINARY);
        assert_eq!(read(&mut c, SECONDS), 56);
        assert_eq!(read(&mut c, HOURS), PM | 1, "13h is 1 PM");
        write(&mut c, REG_B, 0);
        assert_eq!(read(&mut c, HOURS), PM | 0x01);
        let (mut c, _) = cmos_at(LEAP_DAY - 13 * 3600);
        write(&mut c, REG_B, 0);
        assert_eq!(read(&mut c, HOURS), 0x12, "midnight is 12 AM");
    }

    #[test]
    fn update_in_progress_only_in_the_last_244_microseconds() {
        let (mut c, clock) = cmos_at(LEAP_DAY);
        assert_eq!(read(&mut c, REG_A), A_DIVIDER);
        clock.set(LEAP_DAY, 999_800_000);
        assert_eq!(read(&mut c, REG_A), A_DIVIDER | A_UIP);
        clock.set(LEAP_DAY, 999_700_000);
        assert_eq!(read(&mut c, REG_A) & A_UIP, 0);
    }

    #[test]
    fn the_clock_advances_with_the_host() {
        let (mut c, clock) = cmos_at(LEAP_DAY);
        clock.set(LEAP_DAY + 5, 0);
        assert_eq!(read(&mut c, SECONDS), 0x01);
        assert_eq!(read(&mut c, MINUTES), 0x46);
    }

    #[test]
    fn setting_the_clock_moves_only_the_guests_offset() {
        let (mut c, clock) = cmos_at(LEAP_DAY);
        // hwclock --systohc: SET on, fields written, SET off.
        write(&mut c, REG_B, B_SET | B_24H);
        write(&mut c, YEAR, 0x30);
        write(&mut c, MONTH, 0x01);
        write(&mut c, DAY, 0x02);
        write(&mut c, HOURS, 0x03);
        write(&mut c, MINUTES, 0x04);
        write(&mut c, SECONDS, 0x05);
        // Frozen while SET is on.
        clock.set(LEAP_DAY + 100, 0);
        assert_eq!(read(&mut c, SECONDS), 0x05);
        write(&mut c, REG_B, B_24H);
        assert_eq!(read(&mut c, YEAR), 0x30);
        assert_eq!(read(&mut c, HOURS), 0x03);
        clock.set(LEAP_DAY + 102, 0);
        assert_eq!(read(&mut c, SECONDS), 0x07);
        // A second Cmos (another VM, or the host) is untouched.
        let (mut other, _) = cmos_at(LEAP_DAY);
        assert_eq!(read(&mut other, YEAR), 0x24);
    }

    #[test]
    fn dates_round_trip_through_the_epoch() {
        for secs in [0, LEAP_DAY, 951_782_400, 4_102_444_800, -86_400] {
            assert_eq!(DateTime::from_epoch(secs).to_epoch(), secs);
        }
    }

    #[test]
    fn nvram_keeps_what_the_guest_wrote() {
        let (mut c, _) = cmos_at(LEAP_DAY);
        write(&mut c, 0x40, 0x5a);
        assert_eq!(read(&mut c, 0x40), 0x5a);
        // Garbage indexes wrap into the 128 bytes: never out of bounds.
        c.write(0, &[0xff]);
        c.write(1, &[1]);
        let mut d = [0u8; 4];
        c.read(1, &mut d);
        c.read(7, &mut d);
    }
}
