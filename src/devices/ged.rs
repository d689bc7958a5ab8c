//! The ACPI Generic Event Device (`ACPI0013`): how a hardware-reduced ACPI
//! machine, which has no fixed power button, tells the guest that a button
//! was pressed. The owner of the VM sets an event bit and raises the GED's
//! interrupt; the DSDT's `_EVT` method reads the event register (this
//! device, one I/O port, read-to-clear) and notifies the power button
//! device (`PNP0C0C`), which Linux's ACPI button driver reports as
//! KEY_POWER to user space (acpid, systemd-logind).

use super::bus::BusDevice;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// The GED's event register (next to hvm's ACPI PM ports).
pub const GED_PORT: u16 = 0x603;
/// Its interrupt line (kept off the virtio lines).
pub const GED_IRQ: u32 = 23;
/// Event bit: the power button was pressed.
pub const EVENT_POWER_BUTTON: u8 = 1;

/// The register the guest reads.
pub struct Ged {
    pending: Arc<AtomicU8>,
}

/// The owner's side: presses buttons.
pub struct GedTrigger {
    pending: Arc<AtomicU8>,
    irq: EventFd,
}

/// A GED and the trigger that feeds it; `irq` is registered as an irqfd on [`GED_IRQ`].
pub fn ged(irq: EventFd) -> (Ged, GedTrigger) {
    let pending = Arc::new(AtomicU8::new(0));
    (
        Ged {
            pending: pending.clone(),
        },
        GedTrigger { pending, irq },
    )
}

impl GedTrigger {
    /// Presses the ACPI power button.
    pub fn power_button(&self) -> std::io::Result<()> {
        self.pending.fetch_or(EVENT_POWER_BUTTON, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl BusDevice for Ged {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.pending.swap(0, Ordering::SeqCst);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_press_raises_the_interrupt_and_reads_once() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (mut dev, trigger) = ged(irq.try_clone().unwrap());
        trigger.power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        let mut d = [0xffu8; 2];
        dev.read(0, &mut d);
        assert_eq!(d, [EVENT_POWER_BUTTON, 0]);
        dev.read(0, &mut d[..1]);
        assert_eq!(d[0], 0, "read-to-clear");
        dev.write(0, &[0xff]);
        dev.read(0, &mut []);
    }
}
