//! The byte-string fast path: a task's arguments or result that are a
//! `Vec<u8>` (or a one-element tuple of one, as a one-argument task's
//! arguments are) are encoded and decoded with one copy instead of one
//! serde call per byte.
//!
//! serde sees a `Vec<u8>` as a sequence of `u8`s, and postcard writes it
//! as a length then each byte; `serde_bytes` writes the very same bytes,
//! but at once. So the fast path changes no byte on the wire: either side
//! may take it or not. A runtime `TypeId` check sees through type aliases,
//! which the `#[loky::task]` macro cannot.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::{Any, TypeId};

/// Encodes `value` as [`super::encode`] does, faster for byte strings.
pub fn encode_value<T: Serialize + 'static>(value: &T) -> Result<Vec<u8>, String> {
    match byte_string(value) {
        Some(bytes) => encode_bytes(bytes),
        None => super::encode(value),
    }
}

/// Appends `value`, encoded as [`encode_value`] does, to `out`.
pub fn encode_value_into<T: Serialize + 'static>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if let Some(bytes) = byte_string(value) {
        out.extend_from_slice(&length_prefix(bytes.len())?);
        out.extend_from_slice(bytes);
        return Ok(());
    }
    let start = out.len();
    match postcard::serialize_with_flavor(value, Append(out)) {
        Ok(()) => Ok(()),
        Err(error) => {
            out.truncate(start);
            // Encoded again for the message (see `encode`): errors are rare.
            Err(super::encode(value)
                .err()
                .unwrap_or_else(|| error.to_string()))
        }
    }
}

/// A postcard flavor that appends to a borrowed buffer: no move of the
/// buffer in and out, and each write a plain `push` or `extend_from_slice`.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            // Varints and small fields: bytes pushed, not a `memmove` call.
            for &byte in data {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The bytes of a value that takes the fast path: encoded, they are
/// [`length_prefix`] then themselves.
pub(super) fn byte_string<T: 'static>(value: &T) -> Option<&[u8]> {
    let any: &dyn Any = value;
    any.downcast_ref::<Vec<u8>>()
        .or_else(|| any.downcast_ref::<(Vec<u8>,)>().map(|(bytes,)| bytes))
        .map(Vec::as_slice)
}

/// What postcard writes before a byte string of `len` bytes.
pub(super) fn length_prefix(len: usize) -> Result<Vec<u8>, String> {
    super::encode(&len)
}

/// The length, then the bytes: what postcard writes for a byte string,
/// into a buffer of the exact size.
fn encode_bytes(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let header = length_prefix(bytes.len())?;
    let mut encoded = large_buffer(header.len() + bytes.len());
    encoded.extend_from_slice(&header);
    encoded.extend_from_slice(bytes);
    Ok(encoded)
}

/// Decodes a value encoded by [`encode_value`] (or [`super::encode`]), as
/// [`super::decode`] does, faster for byte strings.
pub fn decode_value<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    let wanted = TypeId::of::<T>();
    let boxed: Box<dyn Any> = if wanted == TypeId::of::<Vec<u8>>() {
        Box::new(decode_bytes(bytes)?)
    } else if wanted == TypeId::of::<(Vec<u8>,)>() {
        Box::new((decode_bytes(bytes)?,))
    } else {
        return super::decode(bytes);
    };
    Ok(*boxed
        .downcast::<T>()
        .unwrap_or_else(|_| unreachable!("the type was checked above")))
}

fn decode_bytes(encoded: &[u8]) -> Result<Vec<u8>, String> {
    let (bytes, rest): (&serde_bytes::Bytes, _) =
        postcard::take_from_bytes(encoded).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected trailing bytes", rest.len()));
    }
    let mut decoded = large_buffer(bytes.len());
    decoded.extend_from_slice(bytes);
    Ok(decoded)
}

/// From this size on, a fresh buffer asks for transparent huge pages.
const HUGE_PAGES_FROM: usize = 4 << 20;

/// An empty buffer with room for `capacity` bytes. A large one asks the
/// kernel for huge pages (where it honours `madvise`): filling 64 MiB of
/// fresh memory then takes 32 page faults instead of 16 384, which were
/// most of the time a large argument or result spent being copied.
fn large_buffer(capacity: usize) -> Vec<u8> {
    let buffer = Vec::with_capacity(capacity);
    if capacity >= HUGE_PAGES_FROM {
        const HUGE: usize = 2 << 20;
        let start = buffer.as_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + capacity) / HUGE * HUGE;
        if end > aligned {
            // SAFETY: the range lies within this buffer's allocation, which
            // nothing else uses yet; the advice changes how its pages are
            // backed, never their contents (they are untouched).
            let _ = unsafe {
                rustix::mm::madvise(
                    aligned as *mut std::ffi::c_void,
                    end - aligned,
                    rustix::mm::Advice::LinuxHugepage,
                )
            };
        }
    }
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path writes what the slow one writes, and reads it back.
    #[test]
    fn byte_strings_take_the_fast_path_with_the_same_bytes() {
        for len in [0, 1, 127, 128, 300, 70_000, 5 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let fast = encode_value(&data).unwrap();
            assert_eq!(fast, super::super::encode(&data).unwrap(), "{len} bytes");
            assert_eq!(encode_value(&(data.clone(),)).unwrap(), fast);
            assert_eq!(decode_value::<Vec<u8>>(&fast).unwrap(), data);
            assert_eq!(decode_value::<(Vec<u8>,)>(&fast).unwrap().0, data);
            let slow: Vec<u8> = super::super::decode(&fast).unwrap();
            assert_eq!(slow, data);
        }
    }

    #[test]
    fn other_types_and_bad_input_behave_as_without_it() {
        let pair = (vec![1u8, 2], 3u32);
        let encoded = encode_value(&pair).unwrap();
        assert_eq!(encoded, super::super::encode(&pair).unwrap());
        assert_eq!(decode_value::<(Vec<u8>, u32)>(&encoded).unwrap(), pair);
        let data = encode_value(&vec![5u8; 10]).unwrap();
        let error = decode_value::<Vec<u8>>(&data[..5]).unwrap_err();
        assert_eq!(
            error,
            super::super::decode::<Vec<u8>>(&data[..5]).unwrap_err()
        );
        let mut trailing = data.clone();
        trailing.push(0);
        assert!(decode_value::<Vec<u8>>(&trailing).is_err());
    }
}
