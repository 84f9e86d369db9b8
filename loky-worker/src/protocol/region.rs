//! A large payload's shared-memory region, as it crosses the boundary.
//!
//! The side that writes a payload takes a region from its pool
//! ([`crate::region_pool`]), writes the bytes after a 64-byte header and
//! sends a handle; the side that receives it maps the same pages and reads
//! them in place. The header counts the handles that other processes hold
//! (readers): a sender adds one as it sends, a receiver removes its own
//! when it drops the handle. The writer reuses a region once it holds the
//! only local handle and the count is back at zero, so a region is filled
//! once and its pages stay warm, instead of a fresh one (every page faulted
//! anew) per payload.
//!
//! Layout: bytes 0..4 the readers (little-endian `u32`, atomic), 8..16 the
//! payload's length (`u64`, written before sending), then from 64 on the
//! payload.

use ipc_channel::ipc::IpcSharedMemory;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes before the payload.
pub const HEADER: usize = 64;

/// One region's memory, as mapped in this process.
pub struct Memory {
    shared: IpcSharedMemory,
    base: *mut u8,
}

// SAFETY: the mapping lives as long as `shared`; the header's readers word
// is only accessed atomically; the payload is written only by the owner
// while no reader holds the region (checked through that word), and read
// otherwise.
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Memory {
    /// A fresh region with room for `capacity` payload bytes, all zeros.
    /// Fails when the OS refuses shared memory (ipc-channel panics then).
    pub fn new(capacity: usize) -> Result<Memory, String> {
        let len = capacity
            .checked_add(HEADER)
            .ok_or_else(|| format!("a region of {capacity} bytes"))?;
        probe(len)?;
        let shared = std::panic::catch_unwind(|| IpcSharedMemory::from_byte(0, len))
            .map_err(|payload| crate::panic::payload_message(&*payload))?;
        Memory::from_shared(shared)
    }

    fn from_shared(mut shared: IpcSharedMemory) -> Result<Memory, String> {
        if shared.len() < HEADER {
            return Err(format!(
                "a region of {} bytes, shorter than its header",
                shared.len()
            ));
        }
        // SAFETY: every access goes through `base`: atomically for the
        // header's word, and for the payload as the readers word allows.
        let base = unsafe { shared.deref_mut() }.as_mut_ptr();
        if !(base as usize).is_multiple_of(8) {
            return Err("a misaligned region".to_owned());
        }
        Ok(Memory { shared, base })
    }

    /// How many payload bytes it holds at most.
    pub fn capacity(&self) -> usize {
        self.shared.len() - HEADER
    }

    fn readers(&self) -> &AtomicU32 {
        // SAFETY: in bounds (the header is part of the mapping), aligned
        // (checked when built), and only ever accessed atomically.
        unsafe { AtomicU32::from_ptr(self.base.cast()) }
    }

    /// Whether no other process holds a handle to it.
    pub fn unread(&self) -> bool {
        self.readers().load(Ordering::Acquire) == 0
    }

    /// Writes `parts`, one after the other, as the payload.
    ///
    /// # Safety
    /// Only the owner writes, while it holds the only local handle and
    /// [`unread`](Self::unread) is true (the pool checks both).
    pub unsafe fn write(&self, parts: &[&[u8]]) {
        let mut at = HEADER;
        for part in parts {
            assert!(
                at + part.len() <= self.shared.len(),
                "the region is too small"
            );
            // SAFETY: in bounds (asserted); no other handle reads it now.
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), self.base.add(at), part.len()) };
            at += part.len();
        }
    }

    /// The first `len` payload bytes.
    fn payload(&self, len: usize) -> &[u8] {
        &self.shared[HEADER..HEADER + len]
    }
}

/// Whether the address space has room for a region of `len` bytes: its
/// mapping, and the second one ipc-channel makes of it while sending it
/// (its `Serialize` maps the file again). ipc-channel panics when a mapping
/// fails, and the panic's backtrace then needs memory that is not there:
/// asked first, the answer is an error.
pub(crate) fn probe(len: usize) -> Result<(), String> {
    use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};
    let len = len.saturating_mul(2);
    let flags = MapFlags::PRIVATE | MapFlags::NORESERVE;
    // SAFETY: a fresh mapping that nothing else knows of, unmapped at once.
    unsafe {
        let address = mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::empty(), flags)
            .map_err(|error| format!("no room for {len} bytes of address space: {error}"))?;
        let _ = munmap(address, len);
    }
    Ok(())
}

/// A payload in a region: this side's handle to it.
pub struct Region {
    memory: Handle,
    len: usize,
}

enum Handle {
    /// Written in this process: the pool's region, shared by reference.
    Owned(Arc<Memory>),
    /// Received: one reader of the region until dropped.
    Received(Memory),
}

impl Region {
    /// The payload `len` bytes long just written into `memory`.
    pub fn owned(memory: Arc<Memory>, len: usize) -> Region {
        assert!(len <= memory.capacity(), "the payload overflows its region");
        Region {
            memory: Handle::Owned(memory),
            len,
        }
    }

    fn memory(&self) -> &Memory {
        match &self.memory {
            Handle::Owned(memory) => memory,
            Handle::Received(memory) => memory,
        }
    }

    /// The payload.
    pub fn bytes(&self) -> &[u8] {
        self.memory().payload(self.len)
    }
}

impl Clone for Region {
    fn clone(&self) -> Region {
        let memory = match &self.memory {
            Handle::Owned(memory) => Handle::Owned(Arc::clone(memory)),
            Handle::Received(memory) => {
                memory.readers().fetch_add(1, Ordering::AcqRel);
                let shared = memory.shared.clone();
                Handle::Received(Memory::from_shared(shared).expect("checked when received"))
            }
        };
        Region {
            memory,
            len: self.len,
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Handle::Received(memory) = &self.memory {
            memory.readers().fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // One more reader from now on. A message that is then not sent
        // leaves the region counted as read: never reused, which is safe.
        self.memory().readers().fetch_add(1, Ordering::AcqRel);
        (&self.memory().shared, self.len as u64).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Region, D::Error> {
        let (shared, len): (IpcSharedMemory, u64) = Deserialize::deserialize(deserializer)?;
        let memory = Memory::from_shared(shared).map_err(D::Error::custom)?;
        let capacity = memory.capacity();
        // From here on, dropping the handle releases the region.
        let mut region = Region {
            memory: Handle::Received(memory),
            len: 0,
        };
        region.len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= capacity)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "a payload of {len} bytes in a region of {capacity}"
                ))
            })?;
        Ok(region)
    }
}
