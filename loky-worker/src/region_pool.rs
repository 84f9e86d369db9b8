//! This process's pool of warm shared-memory regions for large payloads.
//!
//! A fresh region costs a page fault per page on its first write (about
//! 54 ms for 64 MiB here), more than the copy itself; a region written
//! before costs only the copy. So a payload large enough for shared memory
//! is written into a region of the pool that nobody holds or reads any
//! more ([`region`](crate::protocol::region) says how that is known), or
//! into a new one, which the pool then keeps. The pool is bounded in
//! regions and bytes: past either bound it lets go of its oldest regions,
//! unused ones first (a region it lets go of lives on until its last
//! handle, here or in another process, is dropped).

use crate::protocol::region::{Memory, Region};
use std::sync::{Arc, Mutex, PoisonError};

/// At most this many regions are kept...
const MAX_REGIONS: usize = 8;
/// ...holding at most this many bytes.
const MAX_BYTES: usize = 256 << 20;
/// Capacities are multiples of this (a huge page).
const GRAIN: usize = 2 << 20;

static POOL: Mutex<Vec<Arc<Memory>>> = Mutex::new(Vec::new());

/// A region holding `parts`, one after the other. Fails only when the OS
/// refuses a new region (out of memory or address space).
pub fn fill(parts: &[&[u8]]) -> Result<Region, String> {
    let len = parts.iter().map(|part| part.len()).sum();
    let memory = lease(len)?;
    // SAFETY: `lease` returns a region that nobody else holds or reads.
    unsafe { memory.write(parts) };
    Ok(Region::owned(memory, len))
}

/// Lets go of every region no payload of this process holds: an executor
/// that shuts down keeps no shared memory alive. Regions still read
/// elsewhere go too (their readers keep their own mappings), among them
/// one whose reader died before it let go.
/// Returns how many it let go of.
pub fn trim() -> usize {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let before = pool.len();
    pool.retain(|memory| Arc::strong_count(memory) > 1);
    before - pool.len()
}

/// How many regions the pool holds, and how many of them are free.
pub fn census() -> (usize, usize) {
    let pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    (
        pool.len(),
        pool.iter().filter(|memory| free(memory)).count(),
    )
}

/// Nobody but the pool holds it, here or elsewhere.
fn free(memory: &Arc<Memory>) -> bool {
    // Under the pool's lock, both stay true: only a local handle can be
    // cloned or sent, and the pool's own is the only one.
    Arc::strong_count(memory) == 1 && memory.unread()
}

/// A region for `len` bytes that nobody else holds or reads.
fn lease(len: usize) -> Result<Arc<Memory>, String> {
    {
        let pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let slots: Vec<Slot> = pool.iter().map(Slot::of).collect();
        if let Some(index) = reuse(&slots, len) {
            return Ok(Arc::clone(&pool[index]));
        }
    }
    // Built outside the lock: faulting its pages in takes a while.
    let capacity = len
        .checked_next_multiple_of(GRAIN)
        .ok_or_else(|| format!("no region holds {len} bytes"))?;
    let memory = match Memory::new(capacity) {
        Ok(memory) => Ok(memory),
        // Short of memory or address space: the warm regions nobody holds
        // give theirs back, and the region is tried once more.
        Err(_) if trim() > 0 => Memory::new(capacity),
        Err(reason) => Err(reason),
    }
    .map_err(|reason| {
        format!("could not create a shared memory region of {capacity} bytes: {reason}")
    })?;
    let memory = Arc::new(memory);
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    pool.push(Arc::clone(&memory));
    loop {
        let slots: Vec<Slot> = pool.iter().map(Slot::of).collect();
        match evict(&slots) {
            Some(index) => drop(pool.remove(index)),
            None => break,
        }
    }
    Ok(memory)
}

/// What the pool's policy sees of a region.
#[derive(Clone, Copy, Debug)]
struct Slot {
    capacity: usize,
    free: bool,
}

impl Slot {
    fn of(memory: &Arc<Memory>) -> Slot {
        Slot {
            capacity: memory.capacity(),
            free: free(memory),
        }
    }
}

/// The smallest free region that holds `len` bytes without wasting more
/// than it holds (a 64 MiB region is not tied up for a 1 MiB payload).
fn reuse(slots: &[Slot], len: usize) -> Option<usize> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, slot)| {
            slot.free && slot.capacity >= len && slot.capacity <= len.saturating_mul(2) + GRAIN
        })
        .min_by_key(|(_, slot)| slot.capacity)
        .map(|(index, _)| index)
}

/// Which region to let go of, oldest first and free ones first, while the
/// pool is over a bound.
fn evict(slots: &[Slot]) -> Option<usize> {
    let bytes: usize = slots.iter().map(|slot| slot.capacity).sum();
    if slots.len() <= MAX_REGIONS && bytes <= MAX_BYTES {
        return None;
    }
    slots.iter().position(|slot| slot.free).or(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(capacity: usize, free: bool) -> Slot {
        Slot { capacity, free }
    }

    #[test]
    fn the_smallest_free_region_that_fits_is_reused() {
        let mib = 1 << 20;
        let slots = [
            slot(66 * mib, false),
            slot(130 * mib, true),
            slot(66 * mib, true),
            slot(2 * mib, true),
        ];
        assert_eq!(reuse(&slots, 64 * mib), Some(2));
        assert_eq!(reuse(&slots, 65 * mib), Some(2));
        // Too small, or too wasteful: a new one.
        assert_eq!(reuse(&slots, 200 * mib), None);
        assert_eq!(reuse(&slots, mib), Some(3));
        assert_eq!(reuse(&slots[..3], mib), None);
        assert_eq!(reuse(&[], 1), None);
    }

    #[test]
    fn past_a_bound_the_oldest_free_region_goes_first() {
        let mib = 1 << 20;
        let within: Vec<Slot> = (0..MAX_REGIONS).map(|_| slot(2 * mib, true)).collect();
        assert_eq!(evict(&within), None);
        let mut many = within.clone();
        many[0].free = false;
        many.push(slot(2 * mib, false));
        assert_eq!(evict(&many), Some(1), "over the count: the oldest free one");
        let large = [slot(200 * mib, false), slot(100 * mib, false)];
        assert_eq!(
            evict(&large),
            Some(0),
            "over the bytes, none free: the oldest"
        );
        let huge = [slot(300 * mib, true)];
        assert_eq!(
            evict(&huge),
            Some(0),
            "a region larger than the pool is not kept"
        );
    }

    /// The only test of this binary that fills regions: the pool is the
    /// process's.
    #[test]
    fn a_region_is_reused_once_every_handle_here_and_elsewhere_is_dropped() {
        let first = fill(&[b"ab", b"cd"]).unwrap();
        assert_eq!(first.bytes(), b"abcd");
        let address = first.bytes().as_ptr();
        // Held here: another region.
        let second = fill(&[b"ef"]).unwrap();
        assert_ne!(second.bytes().as_ptr(), address);
        drop(second);
        // Sent: the receiver's handle counts as a reader of the region.
        let (sender, receiver) = ipc_channel::ipc::channel::<Region>().unwrap();
        sender.send(first.clone()).unwrap();
        let received = receiver.recv().unwrap();
        assert_eq!(received.bytes(), b"abcd");
        assert_eq!(received.clone().bytes(), b"abcd");
        drop(first);
        let (regions, free_regions) = census();
        assert_eq!((regions, free_regions), (2, 1), "the read one is not free");
        let third = fill(&[b"gh"]).unwrap();
        assert_ne!(third.bytes().as_ptr(), address);
        drop(third);
        // The reader is done: the first region is reused, with its pages.
        drop(received);
        assert_eq!(census(), (2, 2));
        let reused = [fill(&[b"ij"]).unwrap(), fill(&[b"kl"]).unwrap()];
        assert!(
            reused
                .iter()
                .any(|region| region.bytes().as_ptr() == address)
        );
        assert_eq!(census(), (2, 0), "no new region");
        drop(reused);
        trim();
        assert_eq!(census(), (0, 0));
    }
}
