//! The [`Message`] trait: what may cross a process boundary.

use loky_worker::protocol::{self, Packing, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value that can cross a process boundary: a task's arguments and its
/// result.
///
/// Every `Serialize + DeserializeOwned + Send + 'static` type is one, through
/// a blanket implementation: there is nothing to implement, and a type that
/// is not one gets a single error that says what to do, rather than one per
/// serde trait. `Vec<u8>` takes a fast path (bytes copied as a block).
///
/// ```
/// fn assert_message<T: loky::Message>() {}
/// assert_message::<(u64, String, Vec<f64>)>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent to or from a worker process",
    label = "not `Serialize + Deserialize + Send + 'static`",
    note = "a task's arguments and result cross a process boundary: \
            derive `serde::Serialize` and `serde::Deserialize` on your own types \
            (serde's `derive` feature), or pass a type that has them",
    note = "an error type: return `Result<T, String>` or an error type that derives serde"
)]
pub trait Message: Sized + Send + 'static {
    /// Encodes the value in the wire format. Not public API.
    #[doc(hidden)]
    fn encode(&self, packing: Packing) -> Result<Payload, String>;

    /// Appends the value, encoded, to `out`. Not public API.
    #[doc(hidden)]
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String>;

    /// Decodes a value from the wire format. Not public API.
    #[doc(hidden)]
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

// `do_not_recommend`: a type that is not serde gets the error of this trait,
// once, rather than one error per serde trait. For that the trait has no
// serde supertraits (rustc would check those one by one too); the crate
// encodes and decodes through its methods instead.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Send + 'static> Message for T {
    fn encode(&self, packing: Packing) -> Result<Payload, String> {
        Payload::encode(self, packing)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        protocol::encode_value_into(self, out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        protocol::decode_value(bytes)
    }
}
