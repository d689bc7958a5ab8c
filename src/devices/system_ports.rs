//! I/O ports through which the guest controls its own lifetime: the
//! debug-exit port (a test's verdict), the boot-time marker, ACPI power-off
//! and reset, and pvpanic (a guest kernel panic).

use super::bus::BusDevice;
use super::events::{GuestEvent, GuestEvents};
use crate::arch::x86_64::acpi::{RESET_VALUE, S5_SLEEP_TYPE};
use crate::timeline;

/// The debug-exit port: writing byte N ends hvm with exit code N.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The boot-time marker port: any write is logged with the time since hvm started.
pub const BOOT_MARKER_PORT: u16 = 0xf5;
/// QEMU's pvpanic ISA port; Linux's pvpanic driver finds it through ACPI (QEMU0001).
pub const PVPANIC_PORT: u16 = 0x505;

/// Debug builds only: a write to this port makes the vCPU thread serving
/// it open `/` (which Landlock refuses: no rule covers it) and then call
/// getppid (which its system call filter refuses); the tests use it to
/// prove both are there. Release builds have no such port.
#[cfg(debug_assertions)]
pub const SANDBOX_PROBE_PORT: u16 = 0xf6;

/// Port 0xf6 (debug builds): the sandbox probe.
#[cfg(debug_assertions)]
pub struct SandboxProbe;

#[cfg(debug_assertions)]
impl BusDevice for SandboxProbe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        // (With the filters on, seccomp refuses the open first, quietly.)
        match std::fs::File::open("/") {
            Ok(_) => log::warn!("landlock probe: a vCPU thread opened /: no rule refused it"),
            Err(e) => log::warn!("landlock probe: a vCPU thread could not open /: {e}"),
        }
        // SAFETY: a plain system call without arguments.
        if unsafe { libc::getppid() } > 0 {
            log::warn!("seccomp probe: getppid ran on a vCPU thread: no filter refused it");
        }
    }
}

/// Port 0xf4: the guest's exit code (like QEMU's isa-debug-exit, but the
/// byte is the code as it is, so a guest can report success as 0).
pub struct DebugExit(pub GuestEvents);

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.0.send(GuestEvent::DebugExit(code));
        }
    }
}

/// Port 0xf5: logs when the guest says it has booted (how boot time is
/// measured), and tells whoever waits for it (a command's stdin is held
/// until hvm's init in the guest has its consoles ready).
#[derive(Default)]
pub struct BootMarker {
    seen: u32,
    notify: Option<vmm_sys_util::eventfd::EventFd>,
}

impl BootMarker {
    /// A marker that also signals `notify` each time the guest writes it.
    pub fn notifying(notify: vmm_sys_util::eventfd::EventFd) -> Self {
        BootMarker {
            seen: 0,
            notify: Some(notify),
        }
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.seen = self.seen.saturating_add(1);
        let value = data.first().copied().unwrap_or(0);
        let ms = timeline::since_start().as_secs_f64() * 1e3;
        // Informative for the first few; a guest writing in a loop must not flood the log.
        let level = if self.seen <= 16 {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(target: "hvm::boot", level, "guest boot marker {value} after {ms:.3} ms (#{})", self.seen);
        if let Some(n) = &self.notify {
            let _ = n.write(1);
        }
    }
}

/// Ports 0x600..=0x602: ACPI sleep control, sleep status, reset register.
pub struct AcpiPm(pub GuestEvents);

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        const SLP_EN: u8 = 1 << 5;
        let Some(&value) = data.first() else { return };
        match offset {
            0 if value & SLP_EN != 0 => {
                let sleep_type = (value >> 2) & 0x7;
                if sleep_type == S5_SLEEP_TYPE {
                    self.0.send(GuestEvent::PowerOff);
                } else {
                    log::debug!("guest asked for ACPI sleep type {sleep_type}; only S5 is offered");
                }
            }
            2 if value == RESET_VALUE => self.0.send(GuestEvent::Reset),
            _ => {}
        }
    }
}

/// Port 0x505: pvpanic. Bit 0 of a write means "guest panicked".
pub struct PvPanic(pub GuestEvents);

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Events hvm understands: PANICKED (bit 0).
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = 1;
        }
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first().is_some_and(|v| v & 1 != 0) {
            self.0.send(GuestEvent::Panic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::events::test_channel;

    #[test]
    fn debug_exit_carries_the_byte() {
        let (tx, rx) = test_channel();
        DebugExit(tx).write(0, &[42, 0, 0, 0]);
        assert_eq!(rx.try_recv().unwrap(), GuestEvent::DebugExit(42));
    }

    #[test]
    fn acpi_s5_powers_off_and_reset_register_resets() {
        let (tx, rx) = test_channel();
        let mut pm = AcpiPm(tx);
        pm.write(0, &[(5 << 2) | (1 << 5)]);
        assert_eq!(rx.try_recv().unwrap(), GuestEvent::PowerOff);
        pm.write(2, &[RESET_VALUE]);
        assert_eq!(rx.try_recv().unwrap(), GuestEvent::Reset);
        pm.write(0, &[(3 << 2) | (1 << 5)]);
        pm.write(0, &[5 << 2]);
        pm.write(2, &[7]);
        pm.write(1, &[]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn pvpanic_reports_a_guest_panic() {
        let (tx, rx) = test_channel();
        let mut p = PvPanic(tx);
        let mut d = [0u8];
        p.read(0, &mut d);
        assert_eq!(d[0], 1);
        p.write(0, &[2]);
        assert!(rx.try_recv().is_err());
        p.write(0, &[1]);
        assert_eq!(rx.try_recv().unwrap(), GuestEvent::Panic);
    }
}
