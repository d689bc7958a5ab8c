//! virtio-blk's request processing over arbitrary descriptor tables and
//! guest memory, on a 64 KiB image.
#![no_main]
use hvm::devices::virtio::block::Block;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = hvm_fuzz::scratch("disk.img");
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(64 << 10)
        && std::fs::write(&path, vec![0u8; 64 << 10]).is_err()
    {
        return;
    }
    let Ok(block) = Block::open(&path, false, "fuzz") else {
        return;
    };
    hvm_fuzz::drive(Box::new(block), data, |_, _, _| {});
});
