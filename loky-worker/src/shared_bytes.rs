//! [`SharedBytes`]: read-only bytes in a shared memory region, handed to
//! tasks without a copy. A value travels as an index into the regions that
//! ride along the call (their descriptors pass through the socket): the
//! bytes are written once, and every worker that receives them maps the
//! same pages.

use ipc_channel::ipc::IpcSharedMemory;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Read-only bytes in shared memory: send a large table, model or buffer to
/// any number of tasks and workers at the cost of one copy, made here.
///
/// Cloning it is cheap (a reference count); sending it to a task passes a
/// descriptor, and the worker maps the same memory: its cost does not grow
/// with the size. The memory is freed when the last clone, here and in
/// every worker, is dropped.
///
/// It travels as (part of) a task's arguments, including `map`'s inputs
/// and an initializer's arguments. It cannot be a task's result: returning
/// one fails with a serialization error that says so.
///
/// See `loky::SharedBytes` for an example.
#[derive(Clone)]
pub struct SharedBytes {
    /// `None` for no bytes: a region cannot be empty.
    region: Option<Arc<IpcSharedMemory>>,
}

impl SharedBytes {
    /// Copies `bytes` into a new shared memory region.
    pub fn new(bytes: &[u8]) -> std::io::Result<SharedBytes> {
        if bytes.is_empty() {
            return Ok(SharedBytes { region: None });
        }
        // ipc-channel panics when the region cannot be created (out of
        // memory or descriptors): an error here, not a panic. Out of
        // address space is asked first (the panic's backtrace would need
        // memory that is not there).
        crate::protocol::region::probe(bytes.len()).map_err(std::io::Error::other)?;
        std::panic::catch_unwind(|| IpcSharedMemory::from_bytes(bytes))
            .map(|region| SharedBytes {
                region: Some(Arc::new(read_only(region))),
            })
            .map_err(|_| std::io::Error::other("could not create a shared memory region"))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.region.as_deref().map_or(&[], |region| region)
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &SharedBytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SharedBytes {}

/// On the wire: this index for no bytes.
const EMPTY: u32 = u32::MAX;

/// A region of the call being encoded: the value's own reference (which
/// identifies it), and the handle that travels.
type Sending = (Arc<IpcSharedMemory>, IpcSharedMemory);

thread_local! {
    /// Regions of the call being encoded on this thread, if one is, each
    /// once: the `Arc` is kept for the whole encoding, so that no other
    /// region can take its address meanwhile (it identifies the region).
    /// Beside each, the handle that travels, made as the value is
    /// serialized (under the encoding's catch: making it may panic).
    static SENDING: RefCell<Option<Vec<Sending>>> = const { RefCell::new(None) };
    /// Regions of the call being decoded on this thread, if one is: every
    /// value that names one shares its mapping.
    static RECEIVING: RefCell<Option<Vec<Arc<IpcSharedMemory>>>> = const { RefCell::new(None) };
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(region) = &self.region else {
            return serializer.serialize_u32(EMPTY);
        };
        // A region named several times in one call (the same table for
        // every element of a chunk) travels once.
        let index = SENDING.with(|sending| {
            let mut sending = sending.borrow_mut();
            let regions = sending.as_mut()?;
            let index = match regions
                .iter()
                .position(|(known, _)| Arc::ptr_eq(known, region))
            {
                Some(index) => index,
                None => {
                    regions.push((Arc::clone(region), IpcSharedMemory::clone(region)));
                    regions.len() - 1
                }
            };
            u32::try_from(index).ok()
        });
        match index {
            Some(index) => serializer.serialize_u32(index),
            None => Err(S::Error::custom(
                "SharedBytes travels only in a task's arguments, not in its result",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let index = u32::deserialize(deserializer)?;
        if index == EMPTY {
            return Ok(SharedBytes { region: None });
        }
        let region = RECEIVING.with(|receiving| {
            receiving
                .borrow()
                .as_ref()?
                .get(index as usize)
                .map(Arc::clone)
        });
        match region {
            Some(region) => Ok(SharedBytes {
                region: Some(region),
            }),
            None => Err(D::Error::custom(format!(
                "SharedBytes: the call carries no shared region {index}"
            ))),
        }
    }
}

/// Puts a thread-local back as it was, however the scope ends.
struct Restore<T: 'static> {
    key: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    outer: Option<Option<T>>,
}

impl<T: 'static> Restore<T> {
    fn set(key: &'static std::thread::LocalKey<RefCell<Option<T>>>, value: T) -> Self {
        let outer = key.with(|slot| slot.borrow_mut().replace(value));
        Restore {
            key,
            outer: Some(outer),
        }
    }

    /// The scope's value, and the outer one back in place.
    fn finish(mut self) -> Option<T> {
        let outer = self.outer.take().flatten();
        self.key
            .with(|slot| std::mem::replace(&mut *slot.borrow_mut(), outer))
    }
}

impl<T: 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        if let Some(outer) = self.outer.take() {
            self.key.with(|slot| *slot.borrow_mut() = outer);
        }
    }
}

/// Runs `encode` and returns the regions of the `SharedBytes` it
/// serialized, in index order: they travel beside the encoded bytes.
pub fn collect<R>(encode: impl FnOnce() -> R) -> (R, Vec<IpcSharedMemory>) {
    let scope = Restore::set(&SENDING, Vec::new());
    let result = encode();
    let regions = scope.finish().unwrap_or_default();
    let regions = regions.into_iter().map(|(_, handle)| handle).collect();
    (result, regions)
}

/// Within [`collect`]: forgets the regions serialized after the first
/// `count` (an element taken back out of a chunk).
#[inline]
pub fn forget_after(count: usize) {
    SENDING.with(|sending| {
        if let Some(regions) = sending.borrow_mut().as_mut() {
            regions.truncate(count);
        }
    });
}

/// Within [`collect`]: how many distinct regions were serialized so far.
#[inline]
pub fn collected() -> usize {
    SENDING.with(|sending| sending.borrow().as_ref().map_or(0, Vec::len))
}

/// Runs `decode` with `regions` (a call's) available to the `SharedBytes`
/// it deserializes.
pub fn provide<R>(regions: Vec<IpcSharedMemory>, decode: impl FnOnce() -> R) -> R {
    if regions.is_empty() {
        return decode();
    }
    let regions = regions
        .into_iter()
        .map(|region| Arc::new(read_only(region)))
        .collect();
    let scope = Restore::set(&RECEIVING, regions);
    let result = decode();
    drop(scope);
    result
}

/// `region`, its mapping here made read-only: written once by its creator,
/// it is only read, and a stray write through a pointer faults here rather
/// than changing what every other process reads. (The mapping ipc-channel
/// makes of it to send it is its own.)
fn read_only(region: IpcSharedMemory) -> IpcSharedMemory {
    if !region.is_empty() {
        // SAFETY: the whole mapping of this region, which nothing here
        // writes again (`SharedBytes` hands out `&[u8]` only); a failure
        // leaves it writable, as it was.
        let _ = unsafe {
            rustix::mm::mprotect(
                region.as_ptr().cast_mut().cast(),
                region.len(),
                rustix::mm::MprotectFlags::READ,
            )
        };
    }
    region
}
