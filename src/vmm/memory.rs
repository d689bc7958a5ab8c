//! Guest RAM: the regions, their mapping into hvm, and the e820 map that
//! tells the guest which addresses are RAM.
//!
//! RAM is anonymous, private and `MAP_NORESERVE` (vm-memory's default), so
//! the host only pays for pages the guest touches.

use crate::arch::x86_64::layout::{
    ACPI_END, ACPI_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors while setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} MiB of guest memory: {source}")]
    Map {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
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
    const { assert!(ACPI_START >= EBDA_START && ACPI_END <= HIMEM_START) };
    map
}

/// Maps guest RAM into hvm's address space (lazily: nothing is touched).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_regions(size)).map_err(|source| MemoryError::Map {
        size: size >> 20,
        source,
    })
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
        let mem = create_guest_memory(size).unwrap();
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
}
