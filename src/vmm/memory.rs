//! Guest RAM: the regions, their mapping into hvm, and the e820 map that
//! tells the guest which addresses are RAM.
//!
//! RAM is anonymous, private and `MAP_NORESERVE` (vm-memory's default), so
//! the host only pays for pages the guest touches. When another process
//! must reach guest RAM (a vhost-user server such as virtiofsd), RAM is a
//! sparse memfd mapped shared instead: just as lazy, and its fd can be sent.

use crate::arch::x86_64::layout::{
    ACPI_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, MP_TABLE_END,
};
use std::fs::File;
use std::os::fd::FromRawFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Errors while setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} MiB of guest memory: {source}")]
    Map {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot create {size} MiB of shareable guest memory (memfd): {source}")]
    Memfd { size: u64, source: std::io::Error },
}

/// An e820 entry type, as Linux reads it from boot_params.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// The RAM regions for `size` bytes: below the MMIO hole, then above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if size > MMIO_GAP_START {
        regions.push((GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize));
    }
    regions
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

/// The e820 map for `size` bytes of RAM laid out by [`ram_regions`].
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        },
        E820Entry {
            addr: HIMEM_START,
            size: low_ram_end(size) - HIMEM_START,
            kind: E820Kind::Ram,
        },
    ];
    if size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: size - MMIO_GAP_START,
            kind: E820Kind::Ram,
        });
    }
    const { assert!(ACPI_START >= EBDA_START && MP_TABLE_END <= HIMEM_START) };
    map
}

/// Maps guest RAM into hvm's address space (lazily: nothing is touched),
/// from a memfd other processes can map when `shared`.
pub fn create_guest_memory(size: u64, shared: bool) -> Result<GuestMemoryMmap, MemoryError> {
    let map_error = |source| MemoryError::Map {
        size: size >> 20,
        source,
    };
    if !shared {
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(size)).map_err(map_error)?;
        keep_out_of_core_dumps(&mem);
        return Ok(mem);
    }
    let memfd_error = |source| MemoryError::Memfd {
        size: size >> 20,
        source,
    };
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::memfd_create(c"hvm-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(memfd_error(std::io::Error::last_os_error()));
    }
    // SAFETY: a new fd nobody else owns.
    let file = std::sync::Arc::new(unsafe { File::from_raw_fd(fd) });
    // Sparse: set_len allocates nothing.
    file.set_len(size).map_err(memfd_error)?;
    let mut offset = 0u64;
    let ranges: Vec<_> = ram_regions(size)
        .into_iter()
        .map(|(addr, len)| {
            let at = FileOffset::from_arc(file.clone(), offset);
            offset += len as u64;
            (addr, len, Some(at))
        })
        .collect();
    let mem = GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(map_error)?;
    keep_out_of_core_dumps(&mem);
    Ok(mem)
}

/// Guest RAM stays out of hvm's core dumps: it is the guest's data (and
/// may be gigabytes), not hvm's state.
fn keep_out_of_core_dumps(mem: &GuestMemoryMmap) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in mem.iter() {
        // SAFETY: advice on a mapping vm-memory made and keeps alive.
        let r = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_DONTDUMP,
            )
        };
        if r != 0 {
            log::debug!(
                "guest RAM may appear in core dumps: madvise: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn guest_ram_is_kept_out_of_core_dumps() {
        for shared in [false, true] {
            let mem = create_guest_memory(64 << 20, shared).unwrap();
            let start = mem.iter().next().unwrap().as_ptr() as usize;
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let header = format!("{start:x}-");
            let flags = smaps
                .lines()
                .skip_while(|l| !l.starts_with(&header))
                .find(|l| l.starts_with("VmFlags"))
                .unwrap_or_default();
            assert!(flags.contains(" dd"), "shared {shared}: {flags}");
        }
    }

    #[test]
    fn small_memory_is_one_region_below_the_gap() {
        let r = ram_regions(256 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_memory_splits_around_the_gap() {
        let r = ram_regions(6 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(1 << 32), (3usize << 30)));
    }

    #[test]
    fn memory_exactly_at_gap_start_has_no_high_region() {
        assert_eq!(ram_regions(MMIO_GAP_START).len(), 1);
    }

    #[test]
    fn e820_ram_adds_up_to_memory_minus_legacy_hole() {
        for size in [128u64 << 20, 3584 << 20, 3 << 30, 8 << 30, 64 << 30] {
            let map = e820_map(size);
            assert_eq!(
                ram_total(&map),
                size - (HIMEM_START - EBDA_START),
                "size {size}"
            );
            for e in &map {
                let end = e.addr + e.size;
                assert!(
                    end <= MMIO_GAP_START || e.addr >= MMIO_GAP_END,
                    "entry {e:?} overlaps the MMIO gap"
                );
            }
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "sorted, disjoint");
            }
        }
    }

    #[test]
    fn guest_memory_maps_lazily_and_is_usable_at_both_ends() {
        let size = 5u64 << 30;
        let mem = create_guest_memory(size, false).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xabu8, GuestAddress(0)).unwrap();
        mem.write_obj(0xcdu8, GuestAddress(MMIO_GAP_START - 1))
            .unwrap();
        mem.write_obj(0xefu8, GuestAddress(MMIO_GAP_END + (2 << 30) - 1))
            .unwrap();
        assert!(mem.write_obj(0u8, GuestAddress(MMIO_GAP_START)).is_err());
        assert!(mem
            .write_obj(0u8, GuestAddress(MMIO_GAP_END + (2 << 30)))
            .is_err());
    }

    #[test]
    fn shared_memory_is_one_sparse_memfd_behind_both_regions() {
        let size = 5u64 << 30;
        let mem = create_guest_memory(size, true).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let low = regions[0].file_offset().expect("file-backed");
        let high = regions[1].file_offset().expect("file-backed");
        assert_eq!(low.start(), 0);
        assert_eq!(high.start(), MMIO_GAP_START);
        let meta = low.file().metadata().unwrap();
        assert_eq!(meta.len(), size);
        // Lazy: nothing allocated until touched.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.blocks(), 0);
        mem.write_obj(0x5au8, GuestAddress(MMIO_GAP_END)).unwrap();
        // The high region starts at that offset of the same file.
        let mut byte = [0u8];
        use std::os::unix::fs::FileExt;
        high.file()
            .read_exact_at(&mut byte, MMIO_GAP_START)
            .unwrap();
        assert_eq!(byte[0], 0x5a);
    }
}
