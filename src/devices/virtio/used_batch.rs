//! Several used buffers made visible to the driver with one index update.
//!
//! virtio-queue's `add_used` publishes each buffer as it is added. A frame
//! received into several mergeable buffers must appear at once: Linux reads
//! `num_buffers` from the first buffer and takes the others from the used
//! ring right away; if they are not visible yet it drops the frame ("rx
//! error: N buffers out of M missing", counted as a drop and a frame error
//! on the interface). So the elements before the last are written past the
//! used index, where the driver does not look yet, and the last one's
//! `add_used` moves the index over all of them.

use super::QueueError;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// The used ring's flags and idx, before its elements.
const USED_RING_HEADER: u64 = 4;
/// One used element: id and len, 32 bits each.
const USED_ELEMENT: u64 = 8;
/// The avail ring's flags and idx, before its elements; `used_event`
/// follows the elements.
const AVAIL_RING_HEADER: u64 = 4;

/// Puts `used` (head index, bytes written) on the used ring, visible to
/// the driver all at once. True when the driver asked (EVENT_IDX) to be
/// notified of a buffer added since the queue's last notification check,
/// this batch included; without EVENT_IDX, always true.
pub fn publish(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    used: &[(u16, u32)],
) -> Result<bool, QueueError> {
    let Some((&(last_head, last_len), rest)) = used.split_last() else {
        return Ok(false);
    };
    // Buffers added before this batch, checked while the queue's own count
    // of them is exact (the batch below adds one to it, not used.len()).
    let earlier = queue.needs_notification(mem)?;
    let size = queue.size();
    let start = Wrapping(queue.next_used());
    for (k, &(head, len)) in rest.iter().enumerate() {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex.into());
        }
        let slot = u64::from((start + Wrapping(k as u16)).0 % size);
        let at = GuestAddress(queue.used_ring())
            .checked_add(USED_RING_HEADER + slot * USED_ELEMENT)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let mut element = [0u8; USED_ELEMENT as usize];
        element[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        element[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&element, at)
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    queue.set_next_used((start + Wrapping(rest.len() as u16)).0);
    // Writes the last element, then the index with release ordering: the
    // driver sees every element of the batch or none.
    queue.add_used(mem, last_head, last_len)?;
    let n = Wrapping(used.len() as u16);
    let batch = if queue.event_idx_enabled() {
        // As virtio-queue's needs_notification, over the whole batch.
        fence(Ordering::SeqCst);
        let at = GuestAddress(queue.avail_ring())
            .checked_add(AVAIL_RING_HEADER + 2 * u64::from(size))
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let used_event: u16 = mem.read_obj(at).map_err(virtio_queue::Error::GuestMemory)?;
        let new = start + n;
        new - Wrapping(u16::from_le(used_event)) - Wrapping(1) < n
    } else {
        true
    };
    // Resets the queue's count (its answer covers the last element only,
    // which `batch` includes).
    queue.needs_notification(mem)?;
    Ok(earlier || batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;

    const USED_RING: u64 = 0x8000;

    /// Where the driver writes used_event: after a 16-entry avail ring.
    fn set_used_event(mock: &MockSplitQueue<'_, GuestMemoryMmap>, mem: &GuestMemoryMmap, v: u16) {
        let at = mock.avail_addr().unchecked_add(AVAIL_RING_HEADER + 2 * 16);
        mem.write_obj(u16::to_le(v), at).unwrap();
    }

    fn queue_with_chains<'a>(
        mem: &'a GuestMemoryMmap,
        chains: u16,
    ) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
        let mock = MockSplitQueue::new(mem, 16);
        for i in 0..chains {
            mock.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
                0x10000 + u64::from(i) * 0x1000,
                0x1000,
                2,
                0,
            ))])
            .unwrap();
        }
        let mut queue: Queue = mock.create_queue().unwrap();
        // The mock packs its used ring over the end of its avail ring, where
        // used_event lives: the used ring goes elsewhere.
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        (mock, queue)
    }

    fn used_idx(queue: &Queue, mem: &GuestMemoryMmap) -> u16 {
        queue.used_idx(mem, Ordering::Acquire).unwrap().0
    }

    #[test]
    fn a_batch_appears_with_one_index_update_in_order() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (_mock, mut queue) = queue_with_chains(&mem, 3);
        let heads: Vec<u16> = queue.iter(&mem).unwrap().map(|c| c.head_index()).collect();
        assert_eq!(heads.len(), 3);
        let used: Vec<(u16, u32)> = heads.iter().map(|&h| (h, 100 + u32::from(h))).collect();
        assert!(publish(&mut queue, &mem, &used).unwrap());
        assert_eq!(used_idx(&queue, &mem), 3);
        assert_eq!(queue.next_used(), 3);
        for (k, &(head, len)) in used.iter().enumerate() {
            let at = GuestAddress(USED_RING + USED_RING_HEADER + k as u64 * USED_ELEMENT);
            let e: [u32; 2] = mem.read_obj(at).unwrap();
            assert_eq!(e, [u32::from(head), len]);
        }
    }

    #[test]
    fn event_idx_notifies_when_the_event_falls_inside_the_batch() {
        for (used_event, expected) in [(0u16, true), (1, true), (2, true), (3, false)] {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let (mock, mut queue) = queue_with_chains(&mem, 3);
            queue.set_event_idx(true);
            set_used_event(&mock, &mem, used_event);
            let heads: Vec<(u16, u32)> = queue
                .iter(&mem)
                .unwrap()
                .map(|c| (c.head_index(), 1))
                .collect();
            assert_eq!(
                publish(&mut queue, &mem, &heads).unwrap(),
                expected,
                "used_event {used_event}"
            );
            // The queue's own check afterwards covers nothing more.
            assert!(!queue.needs_notification(&mem).unwrap());
        }
    }

    #[test]
    fn buffers_added_before_the_batch_still_count() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (mock, mut queue) = queue_with_chains(&mem, 3);
        queue.set_event_idx(true);
        set_used_event(&mock, &mem, 0);
        let heads: Vec<u16> = queue.iter(&mem).unwrap().map(|c| c.head_index()).collect();
        queue.add_used(&mem, heads[0], 1).unwrap();
        let rest: Vec<(u16, u32)> = heads[1..].iter().map(|&h| (h, 1)).collect();
        assert!(publish(&mut queue, &mem, &rest).unwrap());
        assert_eq!(used_idx(&queue, &mem), 3);
    }

    #[test]
    fn a_bad_head_index_is_refused_before_anything_is_published() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (_mock, mut queue) = queue_with_chains(&mem, 1);
        assert!(publish(&mut queue, &mem, &[(99, 1), (0, 1)]).is_err());
        assert_eq!(used_idx(&queue, &mem), 0);
    }
}
