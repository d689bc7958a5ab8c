//! The 16550 UART: any register access sequence, with host input queued
//! between them.
#![no_main]
use hvm::devices::bus::BusDevice;
use hvm::devices::console_output::SharedOutput;
use hvm::devices::serial::SerialDevice;
use hvm_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let mut uart = SerialDevice::new(irq, SharedOutput::new(false));
    let mut input = Input::new(data);
    while !input.is_empty() {
        let op = input.u8();
        let offset = u64::from(op >> 2 & 7);
        match op % 4 {
            0 => uart.write(offset, &[input.u8()]),
            1 => uart.read(offset, &mut [0u8]),
            2 => {
                let len = usize::from(input.u8());
                uart.queue_input(input.bytes(len));
            }
            _ => {
                let mut wide = [0u8; 4];
                uart.read(offset, &mut wide);
                uart.write(offset, &wide);
            }
        }
    }
});
