//! PCI configuration mechanism #1 (ports 0xcf8..0xcff) with a single host
//! bridge at 00:00.0. Linux probes these ports at boot; with nothing there it
//! logs "PCI: Fatal: No config space access function found". A bus with a
//! host bridge is what real machines have, and what virtio-pci will use.

use super::bus::BusDevice;

pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_LEN: u64 = 8;
/// The address register: a write only selects what the data port reaches
/// next, so the VMM may batch such writes and replay them in order.
pub const ADDRESS_LATCH: (u16, u32) = (PCI_CONFIG_PORT, 4);
/// Red Hat's ID for a QEMU/virtual PCIe host bridge, class 06.00.00.
const VENDOR_ID: u16 = 0x1b36;
const DEVICE_ID: u16 = 0x0008;
const CLASS_HOST_BRIDGE: u32 = 0x0600_0000;

#[derive(Default)]
pub struct PciRoot {
    address: u32,
}

impl PciRoot {
    /// The 32-bit register at `reg` (dword aligned) of the selected function.
    fn config_dword(&self) -> u32 {
        let enabled = self.address & 0x8000_0000 != 0;
        let bus_dev_fn = (self.address >> 8) & 0xffff;
        if !enabled || bus_dev_fn != 0 {
            return 0xffff_ffff;
        }
        match self.address & 0xfc {
            0x00 => u32::from(VENDOR_ID) | (u32::from(DEVICE_ID) << 16),
            0x08 => CLASS_HOST_BRIDGE,
            // Everything else (command, status, BARs, header type 0) reads zero.
            _ => 0,
        }
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (value, shift) = match offset {
            0..=3 => (self.address, offset),
            _ => (self.config_dword(), offset - 4),
        };
        for (i, b) in data.iter_mut().enumerate() {
            let byte = shift + i as u64;
            *b = if byte < 4 {
                (value >> (8 * byte)) as u8
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a dword write latches the address; config writes are ignored (all read-only).
        if let (0, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
            self.address = u32::from_le_bytes(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(p: &mut PciRoot, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        p.read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn address_register_latches_dword_writes_only() {
        let mut p = PciRoot::default();
        p.write(3, &[1]);
        assert_eq!(read32(&mut p, 0), 0);
        p.write(0, &0x8000_0000u32.to_le_bytes());
        assert_eq!(read32(&mut p, 0), 0x8000_0000);
    }

    #[test]
    fn host_bridge_answers_at_00_00_0_and_nothing_else_does() {
        let mut p = PciRoot::default();
        p.write(0, &0x8000_0000u32.to_le_bytes());
        assert_eq!(read32(&mut p, 4), 0x0008_1b36);
        p.write(0, &0x8000_0008u32.to_le_bytes());
        assert_eq!(read32(&mut p, 4) >> 16, 0x0600);
        let mut word = [0u8; 2];
        p.read(6, &mut word);
        assert_eq!(u16::from_le_bytes(word), 0x0600);
        p.write(0, &0x8000_0800u32.to_le_bytes()); // device 1
        assert_eq!(read32(&mut p, 4), 0xffff_ffff);
        p.write(0, &0x0000_0000u32.to_le_bytes()); // not enabled
        assert_eq!(read32(&mut p, 4), 0xffff_ffff);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut p = PciRoot::default();
        let mut big = [0u8; 8];
        p.read(6, &mut big);
        p.write(5, &[1, 2, 3]);
        p.write(0, &[]);
        p.read(0, &mut []);
    }
}
