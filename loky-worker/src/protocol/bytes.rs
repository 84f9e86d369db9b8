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
    let any: &dyn Any = value;
    let bytes = any
        .downcast_ref::<Vec<u8>>()
        .or_else(|| any.downcast_ref::<(Vec<u8>,)>().map(|(bytes,)| bytes));
    match bytes {
        Some(bytes) => super::encode(serde_bytes::Bytes::new(bytes)),
        None => super::encode(value),
    }
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

fn decode_bytes(bytes: &[u8]) -> Result<Vec<u8>, String> {
    super::decode::<serde_bytes::ByteBuf>(bytes).map(serde_bytes::ByteBuf::into_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path writes what the slow one writes, and reads it back.
    #[test]
    fn byte_strings_take_the_fast_path_with_the_same_bytes() {
        for len in [0, 1, 127, 128, 300, 70_000] {
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
