//! The kernel loader: an arbitrary file as a kernel (ELF vmlinux or
//! bzImage headers, or neither) is recognised or refused, and when loaded
//! lands inside guest memory or is refused; it never panics. Loads go
//! through the copy-on-write mapping reader, as a VM without shares does.
#![no_main]
use hvm::vmm::boot::{self, BootRequest, KernelImage};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fuzz_target!(|data: &[u8]| {
    let path = hvm_fuzz::scratch("kernel");
    // A new file each time, never rewritten in place: the loader maps the
    // file's pages into guest memory (cow_file.rs), and a mapped file
    // rewritten under it is what docs/spec.md tells users not to do.
    let _ = std::fs::remove_file(&path);
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(kernel) = KernelImage::open(&path) {
        let Ok(cmdline) = boot::compose_cmdline("console=ttyS0", false, &[]) else {
            return;
        };
        // Fresh (lazy) guest memory per input, as each VM has: mapped file
        // pages go with it.
        let Ok(memory) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]) else {
            return;
        };
        let req = BootRequest {
            cmdline: &cmdline,
            memory: 32 << 20,
            rsdp: 0xe0000,
            private_memory: true,
        };
        let _ = boot::load(&memory, kernel, None, &req);
    }
});
