//! A descriptor chain's buffers as iovecs into guest memory, so a device
//! can hand them to one preadv/pwritev/writev and the kernel copies
//! between the host file or socket and guest RAM directly, with no bounce
//! buffer in hvm. Addresses and lengths are checked against guest RAM
//! (vm-memory's get_slices) before any pointer is made.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Guest-memory spans (address, length) of a chain's descriptors.
pub type Spans = Vec<(GuestAddress, usize)>;

/// A chain's spans, readable ones first and writable ones second, as
/// virtio-queue's Reader and Writer see them: readable descriptors end at
/// the first writable one.
pub fn chain_spans(chain: DescriptorChain<&GuestMemoryMmap>) -> (Spans, Spans) {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for desc in chain {
        let span = (desc.addr(), desc.len() as usize);
        if desc.is_write_only() {
            writable.push(span);
        } else if writable.is_empty() {
            readable.push(span);
        }
    }
    (readable, writable)
}

/// `len` bytes of `spans`, after the first `skip`, as iovecs pointing into
/// guest memory (split where guest RAM regions split). None when a span
/// leaves guest RAM or the spans hold fewer bytes. The pointers stay valid
/// as long as `mem` (guest RAM is mapped for the VM's life).
pub fn guest_iovecs(
    mem: &GuestMemoryMmap,
    spans: &[(GuestAddress, usize)],
    mut skip: usize,
    mut len: usize,
) -> Option<Vec<libc::iovec>> {
    let mut out = Vec::with_capacity(spans.len());
    for &(addr, n) in spans {
        if len == 0 {
            break;
        }
        if skip >= n {
            skip -= n;
            continue;
        }
        let start = addr.checked_add(skip as u64)?;
        let take = (n - skip).min(len);
        skip = 0;
        for slice in mem.get_slices(start, take, Permissions::ReadWrite).ok()? {
            let slice = slice.ok()?;
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        len -= take;
    }
    (len == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .unwrap()
    }

    fn host(mem: &GuestMemoryMmap, at: u64) -> usize {
        mem.get_host_address(GuestAddress(at)).unwrap() as usize
    }

    #[test]
    fn skip_and_length_cut_the_spans() {
        let m = mem();
        let spans = [(GuestAddress(0x100), 16), (GuestAddress(0x2000), 100)];
        let v = guest_iovecs(&m, &spans, 10, 50).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].iov_base as usize, host(&m, 0x10a));
        assert_eq!(v[0].iov_len, 6);
        assert_eq!(v[1].iov_base as usize, host(&m, 0x2000));
        assert_eq!(v[1].iov_len, 44);
        // Skipping a whole span, and taking nothing at all.
        let v = guest_iovecs(&m, &spans, 16, 100).unwrap();
        assert_eq!((v.len(), v[0].iov_len), (1, 100));
        assert!(guest_iovecs(&m, &spans, 0, 0).unwrap().is_empty());
    }

    #[test]
    fn a_span_across_regions_is_split_at_the_seam() {
        let m = mem();
        let v = guest_iovecs(&m, &[(GuestAddress(0xff00), 0x200)], 0, 0x200).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].iov_len, v[1].iov_len), (0x100, 0x100));
        assert_eq!(v[1].iov_base as usize, host(&m, 0x10000));
    }

    #[test]
    fn spans_outside_ram_or_too_short_give_nothing() {
        let m = mem();
        assert!(guest_iovecs(&m, &[(GuestAddress(0x1ff00), 0x200)], 0, 0x200).is_none());
        assert!(guest_iovecs(&m, &[(GuestAddress(u64::MAX - 4), 16)], 0, 16).is_none());
        assert!(guest_iovecs(&m, &[(GuestAddress(0x100), 16)], 0, 17).is_none());
        assert!(guest_iovecs(&m, &[(GuestAddress(0x100), 16)], 20, 1).is_none());
    }
}
