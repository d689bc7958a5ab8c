//! virtio-console's queues, with host input arriving between steps.
#![no_main]
use hvm::devices::console_output::SharedOutput;
use hvm::devices::virtio::console::{Console, PendingInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pending = PendingInput::default();
    let console = Console::new(SharedOutput::new(false), pending.clone());
    hvm_fuzz::drive(Box::new(console), data, |_, input, t| {
        let len = usize::from(input.u8());
        Console::queue_input(&pending, input.bytes(len));
        t.backend_event();
    });
});
