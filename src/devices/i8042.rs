//! The i8042 keyboard controller, only as far as Linux uses it here: its
//! reset command (0xFE to port 0x64) ends the VM. vm-superio does the work.

use super::bus::BusDevice;
use super::events::{GuestEvent, GuestEvents};
use vm_superio::{I8042Device, Trigger};

/// Port of the i8042's data register; the command/status port is +4.
pub const I8042_DATA_PORT: u16 = 0x60;

/// Turns the controller's reset request into a VM exit.
pub struct ResetTrigger(GuestEvents);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.send(GuestEvent::Reset);
        Ok(())
    }
}

/// Ports 0x60..=0x64 (the data port and the command port).
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    pub fn new(exit: GuestEvents) -> Self {
        I8042(I8042Device::new(ResetTrigger(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.0.read(offset as u8);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), 0 | 4) = (data.first(), offset) {
            let _ = self.0.write(offset as u8, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::events::test_channel;

    #[test]
    fn reset_command_requests_a_reset_exit() {
        let (tx, rx) = test_channel();
        let mut kbd = I8042::new(tx);
        kbd.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), GuestEvent::Reset);
    }

    #[test]
    fn other_writes_do_nothing() {
        let (tx, rx) = test_channel();
        let mut kbd = I8042::new(tx);
        kbd.write(0, &[0xfe]);
        kbd.write(4, &[0xaa]);
        kbd.write(4, &[]);
        let mut d = [0xffu8; 2];
        kbd.read(4, &mut d);
        assert_eq!(d, [0, 0]);
        assert!(rx.try_recv().is_err());
    }
}
