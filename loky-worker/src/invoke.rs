//! Running one call inside a worker: its stages (decode the arguments, call
//! the task, encode the result) under one `catch_unwind`, so that every
//! failure becomes a [`Failure`] value that names its stage.

use crate::panic;
use crate::protocol::{self, Failure, Payload, Stage};
use std::cell::Cell;
/// Decodes `A` from `input` with `decode`, calls `f`, and encodes its
/// result with `encode`.
///
/// The `#[loky::task]` expansion registers a monomorphic instance of this,
/// with the protocol's `decode_value` and `encode_value` for the task's types.
pub fn run<A, R>(
    decode: impl FnOnce(&[u8]) -> Result<A, String>,
    f: impl FnOnce(A) -> R,
    encode: impl FnOnce(&R) -> Result<Payload, String>,
    input: &[u8],
) -> Result<Payload, Failure> {
    stages(decode, f, encode, input)
}

/// As [`run`], appending the encoded result to `out` with `encode`.
pub fn run_into<A, R>(
    decode: impl FnOnce(&[u8]) -> Result<A, String>,
    f: impl FnOnce(A) -> R,
    encode: impl FnOnce(&R, &mut Vec<u8>) -> Result<(), String>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    stages(decode, f, |result| encode(result, out), input)
}

/// The three stages of a call under one `catch_unwind` (a chunk runs this
/// per element): `at` says which stage a panic interrupted, `None` being
/// the task itself, dropping its result included.
#[inline]
fn stages<A, R, T>(
    decode: impl FnOnce(&[u8]) -> Result<A, String>,
    f: impl FnOnce(A) -> R,
    encode: impl FnOnce(&R) -> Result<T, String>,
    input: &[u8],
) -> Result<T, Failure> {
    let at = Cell::new(Some(Stage::DecodeArgs));
    let outcome = panic::catch(|| {
        let args = decode(input).map_err(|message| Failure::Serde {
            stage: Stage::DecodeArgs,
            message: protocol::bound_text(message),
        })?;
        // A stage's panic that its own code caught leaves a record; a later
        // one resumed without the hook must not be told by it.
        panic::take_last();
        at.set(None);
        let result = f(args);
        panic::take_last();
        at.set(Some(Stage::EncodeResult));
        let encoded = encode(&result).map_err(|message| Failure::Serde {
            stage: Stage::EncodeResult,
            message: protocol::bound_text(message),
        });
        at.set(None);
        drop(result);
        encoded
    });
    outcome.unwrap_or_else(|panic| {
        Err(match at.get() {
            Some(stage) => Failure::Serde {
                stage,
                message: protocol::bound_text(format!("panicked: {panic}")),
            },
            None => Failure::Panicked(panic),
        })
    })
}

/// Runs a serde step, turning its error or panic into a [`Failure::Serde`].
#[inline]
pub fn serde_stage<T>(
    stage: Stage,
    step: impl FnOnce() -> Result<T, String>,
) -> Result<T, Failure> {
    match panic::catch(step) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(Failure::Serde {
            stage,
            message: protocol::bound_text(message),
        }),
        Err(panic) => Err(Failure::Serde {
            stage,
            message: protocol::bound_text(format!("panicked: {panic}")),
        }),
    }
}
