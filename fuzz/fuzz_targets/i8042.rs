//! The i8042 keyboard controller (its reset command ends the VM through an event).
#![no_main]
use hvm::devices::events::GuestEvents;
use hvm::devices::i8042::I8042;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let Ok(wake) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let (events, _rx) = GuestEvents::channel(Arc::new(wake));
    let mut dev = I8042::new(events);
    hvm_fuzz::ports(&mut dev, data, 8);
});
