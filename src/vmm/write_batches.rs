//! Port writes KVM batches instead of exiting for each one.
//!
//! The CMOS index and the PCI configuration address are latches: a write
//! only selects what the next data-port access reaches. KVM can append such
//! writes to a VM-wide ring (KVM_CAP_COALESCED_PIO) and go on running the
//! guest; hvm replays them into the port bus, oldest first, before it serves
//! any vCPU's next port access (the only way to reach those devices), so
//! every access sees every write made before it. A full ring makes KVM
//! exit for the write that did not fit, which replays the rest first.
//! A boot's clock and PCI probing then costs half the exits (QEMU batches
//! the CMOS index the same way): ~150 fewer per Linux boot, each a round
//! trip through the host kernel and, nested, through the outer hypervisor.

use crate::devices::bus::{lock, Bus};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use std::sync::{Arc, Mutex};

/// A port range whose writes may be batched: `(first port, length)`.
pub type Latch = (u16, u32);

/// The ring's reader side, shared by the vCPU threads.
#[derive(Clone, Default)]
pub struct WriteBatches {
    /// One ring for the VM, read through any vCPU's mapping of it: one
    /// reader at a time, or two would replay the same write.
    reader: Arc<Mutex<()>>,
}

impl WriteBatches {
    /// Has KVM batch writes to `latches`; `None` when it cannot (no
    /// KVM_CAP_COALESCED_PIO, or it refused every range): every write then
    /// exits, as before.
    pub fn enable(kvm: &Kvm, vm: &VmFd, latches: &[Latch]) -> Option<WriteBatches> {
        if !kvm.check_extension(Cap::CoalescedPio) {
            log::debug!("KVM cannot batch port writes (no KVM_CAP_COALESCED_PIO)");
            return None;
        }
        let mut any = false;
        for &(port, len) in latches {
            match vm.register_coalesced_mmio(IoEventAddress::Pio(port.into()), len) {
                Ok(()) => any = true,
                Err(e) => log::debug!("KVM will not batch writes to port {port:#x}: {e}"),
            }
        }
        any.then(WriteBatches::default)
    }

    /// Maps the ring into `vcpu`, when it is created.
    pub fn attach(vcpu: &mut VcpuFd) -> Result<(), kvm_ioctls::Error> {
        vcpu.map_coalesced_mmio_ring()
    }

    /// Replays every batched write into `pio`, oldest first, through
    /// `vcpu`'s mapping of the ring; returns how many there were.
    pub fn replay(&self, vcpu: &mut VcpuFd, pio: &Bus) -> u64 {
        let _only_reader = lock(&self.reader);
        let mut replayed = 0;
        while let Ok(Some(write)) = vcpu.coalesced_mmio_read() {
            // KVM records at most 8 bytes; a length it never writes is
            // clamped rather than trusted.
            let len = (write.len as usize).min(write.data.len());
            pio.write(write.phys_addr, &write.data[..len]);
            replayed += 1;
        }
        replayed
    }
}
