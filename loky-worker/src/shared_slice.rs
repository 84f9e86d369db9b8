//! [`SharedSlice`]: a [`SharedBytes`] seen as a slice of plain numbers.

use crate::shared_bytes::SharedBytes;
use bytemuck::Pod;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

/// Read-only plain values (`f64`, `u32`, arrays of them... any
/// [`bytemuck::Pod`] type) in shared memory: a matrix, an embedding table or
/// a signal handed to any number of tasks and workers without a copy, as
/// [`SharedBytes`] hands bytes.
///
/// The values are laid out as in this process; workers are copies of the
/// same binary on the same machine, so they read them as written.
///
/// See `loky::SharedSlice` for an example.
pub struct SharedSlice<T> {
    bytes: SharedBytes,
    values: PhantomData<fn() -> T>,
}

impl<T: Pod> SharedSlice<T> {
    /// Copies `values` into a new shared memory region.
    pub fn new(values: &[T]) -> std::io::Result<SharedSlice<T>> {
        SharedBytes::new(bytemuck::cast_slice(values)).map(|bytes| SharedSlice {
            bytes,
            values: PhantomData,
        })
    }

    /// The values.
    pub fn as_slice(&self) -> &[T] {
        // Checked when made or received: a whole number of values, and the
        // region starts on a page, aligned for any `T` (no bytes: no region).
        match self.bytes.as_slice() {
            [] => &[],
            bytes => bytemuck::cast_slice(bytes),
        }
    }

    /// The same memory as bytes.
    pub fn as_bytes(&self) -> &SharedBytes {
        &self.bytes
    }
}

impl<T> Clone for SharedSlice<T> {
    fn clone(&self) -> SharedSlice<T> {
        SharedSlice {
            bytes: self.bytes.clone(),
            values: PhantomData,
        }
    }
}

impl<T: Pod> Deref for SharedSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> AsRef<[T]> for SharedSlice<T> {
    fn as_ref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSlice")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T: Pod + PartialEq> PartialEq for SharedSlice<T> {
    fn eq(&self, other: &SharedSlice<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.bytes.serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = SharedBytes::deserialize(deserializer)?;
        if bytes.is_empty() {
            return Ok(SharedSlice {
                bytes,
                values: PhantomData,
            });
        }
        bytemuck::try_cast_slice::<u8, T>(bytes.as_slice()).map_err(|error| {
            D::Error::custom(format!(
                "SharedSlice<{}> over {} bytes: {error}",
                std::any::type_name::<T>(),
                bytes.len()
            ))
        })?;
        Ok(SharedSlice {
            bytes,
            values: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written_and_share_the_bytes() {
        let values: Vec<f64> = (0..1000).map(|i| f64::from(i) * 0.5).collect();
        let shared = SharedSlice::new(&values).unwrap();
        assert_eq!(shared.as_slice(), values.as_slice());
        assert_eq!(shared.as_bytes().len(), values.len() * 8);
        let copy = shared.clone();
        assert_eq!(copy.as_ptr(), shared.as_ptr(), "one region");
        let empty = SharedSlice::<u32>::new(&[]).unwrap();
        assert!(empty.is_empty());
    }
}
