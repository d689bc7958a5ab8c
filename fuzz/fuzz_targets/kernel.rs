//! The kernel loader: an arbitrary file as a kernel (ELF vmlinux or
//! bzImage headers, or neither) is recognised or refused, and when loaded
//! lands inside guest memory or is refused; it never panics.
#![no_main]
use hvm::vmm::boot::{self, BootRequest, KernelImage};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// 32 MiB of guest memory, mapped once (loads overwrite it in place).
fn memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)])
            .expect("32 MiB of guest memory")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = hvm_fuzz::scratch("kernel");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(kernel) = KernelImage::open(&path) {
        let Ok(cmdline) = boot::compose_cmdline("console=ttyS0", false, &[]) else {
            return;
        };
        let req = BootRequest {
            cmdline: &cmdline,
            memory: 32 << 20,
            rsdp: 0xe0000,
        };
        let _ = boot::load(memory(), kernel, None, &req);
    }
});
