//! Running one call inside a worker: each stage (decode the arguments, call
//! the task, encode the result) under `catch_unwind`, so that every failure
//! becomes a [`Failure`] value that names its stage.

use crate::panic;
use crate::protocol::{Failure, Payload, Stage};
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
    let args: A = serde_stage(Stage::DecodeArgs, || decode(input))?;
    let result = panic::catch(|| f(args)).map_err(Failure::Panicked)?;
    serde_stage(Stage::EncodeResult, || encode(&result))
}

/// As [`run`], appending the encoded result to `out` with `encode`.
pub fn run_into<A, R>(
    decode: impl FnOnce(&[u8]) -> Result<A, String>,
    f: impl FnOnce(A) -> R,
    encode: impl FnOnce(&R, &mut Vec<u8>) -> Result<(), String>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let args: A = serde_stage(Stage::DecodeArgs, || decode(input))?;
    let result = panic::catch(|| f(args)).map_err(Failure::Panicked)?;
    serde_stage(Stage::EncodeResult, || encode(&result, out))
}

/// Runs a serde step, turning its error or panic into a [`Failure::Serde`].
pub fn serde_stage<T>(
    stage: Stage,
    step: impl FnOnce() -> Result<T, String>,
) -> Result<T, Failure> {
    match panic::catch(step) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(Failure::Serde { stage, message }),
        Err(panic) => Err(Failure::Serde {
            stage,
            message: format!("panicked: {panic}"),
        }),
    }
}
