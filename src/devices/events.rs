//! How devices tell whoever owns the VM that the guest asked for something
//! only the owner can do (power off, reset, report a verdict or a panic).
//! Devices know nothing of the VMM: they send a [`GuestEvent`] and wake the
//! owner through an eventfd; the owner decides what it means.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use vmm_sys_util::eventfd::EventFd;

/// What the guest asked for through a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// ACPI S5 (soft off).
    PowerOff,
    /// i8042 reset line or the ACPI reset register.
    Reset,
    /// A byte written to the debug-exit port: the guest's verdict.
    DebugExit(u8),
    /// pvpanic: the guest kernel panicked.
    Panic,
}

/// The sending side handed to devices. Every event ends the VM, so the
/// first one also raises a flag the vCPUs check after each exit: no more
/// guest code runs once the guest has asked to stop.
#[derive(Clone)]
pub struct GuestEvents {
    tx: mpsc::Sender<GuestEvent>,
    wake: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    /// Raised (before `stopping`) when the guest reported a panic, so a
    /// vCPU that sees the VM stopping also sees why.
    panicked: Arc<AtomicBool>,
}

impl GuestEvents {
    /// A sender, and the receiver the owner drains when `wake` fires.
    pub fn channel(wake: Arc<EventFd>) -> (GuestEvents, mpsc::Receiver<GuestEvent>) {
        let (tx, rx) = mpsc::channel();
        let events = GuestEvents {
            tx,
            wake,
            stopping: Arc::new(AtomicBool::new(false)),
            panicked: Arc::new(AtomicBool::new(false)),
        };
        (events, rx)
    }

    pub fn send(&self, event: GuestEvent) {
        if event == GuestEvent::Panic {
            self.panicked.store(true, Ordering::SeqCst);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // The receiver is gone only while the process is exiting anyway.
        let _ = self.tx.send(event);
        if let Err(e) = self.wake.write(1) {
            log::debug!("cannot wake the control loop: {e}");
        }
    }

    /// Whether the guest has asked to stop (checked by vCPUs after each exit).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Whether the guest reported a panic (true before [`stopping`] is).
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }

    /// Raises the stop flag without an event (the owner is stopping the VM).
    pub fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// A sender with its own eventfd, for device unit tests.
#[cfg(test)]
pub fn test_channel() -> (GuestEvents, mpsc::Receiver<GuestEvent>) {
    GuestEvents::channel(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_wakes_the_owner_and_marks_the_vm_stopping() {
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (tx, rx) = GuestEvents::channel(wake.clone());
        let other = tx.clone();
        assert!(!other.stopping());
        tx.send(GuestEvent::Reset);
        assert!(other.stopping());
        assert_eq!(wake.read().unwrap(), 1);
        assert_eq!(rx.try_recv().unwrap(), GuestEvent::Reset);
        assert!(!other.panicked());
        tx.send(GuestEvent::Panic);
        assert!(other.panicked());
    }
}
