//! Running one call inside a worker: each stage (decode the arguments, call
//! the task, encode the result) under `catch_unwind`, so that every failure
//! becomes a [`Failure`] value that names its stage.

use crate::panic;
use crate::protocol::{self, Failure, Stage};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `A` from `input`, calls `f`, and encodes its result.
///
/// The `#[loky::task]` expansion registers a monomorphic instance of this.
pub fn run<A, R>(f: impl FnOnce(A) -> R, input: &[u8]) -> Result<Vec<u8>, Failure>
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let args: A = serde_stage(Stage::DecodeArgs, || protocol::decode_value(input))?;
    let result = panic::catch(|| f(args)).map_err(Failure::Panicked)?;
    serde_stage(Stage::EncodeResult, || protocol::encode_value(&result))
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
