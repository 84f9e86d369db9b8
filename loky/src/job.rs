//! A submitted call as the manager sees it: encoded arguments and a
//! type-erased handle to complete its future.

use crate::error::Error;
use crate::future::State;
use crate::shared::Shared;
use loky_worker::invoke::serde_stage;
use loky_worker::protocol::{self, CallKind, ChunkItem, Outcome, Payload, Stage};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// One call (or chunk of calls) waiting for or running in a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) kind: CallKind,
    pub(crate) args: Payload,
    /// How long it may run before its worker is killed.
    pub(crate) timeout: Option<Duration>,
    pub(crate) completion: Arc<dyn Completion>,
}

impl Job {
    pub(crate) fn task(&self) -> &'static str {
        self.completion.task()
    }
}

/// What the manager may do to a job's future, whatever its result type.
pub(crate) trait Completion: Send + Sync {
    fn task(&self) -> &'static str;
    /// Pending -> Running, when its worker starts it; false if cancelled.
    fn set_running(&self) -> bool;
    /// Running -> Pending, for a job its worker never started.
    fn set_pending(&self);
    /// Cancels a pending job.
    fn cancel(&self) -> bool;
    /// Whether the future was cancelled (perhaps while it ran).
    fn cancelled(&self) -> bool;
    /// Fails the job.
    fn fail(&self, error: Error);
    /// Completes the job with a worker's outcome.
    fn finish_remote(&self, pid: u32, outcome: Outcome);
}

/// Decodes a worker's encoded result into the future's type.
pub(crate) type Decode<R> = fn(&'static str, u32, &[u8]) -> Result<R, Error>;

/// A future's state and the decoder for its result type.
pub(crate) struct Typed<R> {
    pub(crate) state: Arc<State<R>>,
    pub(crate) decode: Decode<R>,
    /// Where finished tasks are counted.
    pub(crate) shared: Arc<Shared>,
}

impl<R> Typed<R> {
    fn finish(&self, result: Result<R, Error>) {
        self.state
            .finish_counted(result, |ok| self.shared.count(ok));
    }
}

impl<R: Send + 'static> Completion for Typed<R> {
    fn task(&self) -> &'static str {
        self.state.task()
    }

    fn set_running(&self) -> bool {
        self.state.set_running()
    }

    fn set_pending(&self) {
        self.state.set_pending()
    }

    fn cancel(&self) -> bool {
        self.state.cancel()
    }

    fn cancelled(&self) -> bool {
        self.state.is_cancelled()
    }

    fn fail(&self, error: Error) {
        self.finish(Err(error));
    }

    fn finish_remote(&self, pid: u32, outcome: Outcome) {
        let task = self.state.task();
        let result = match outcome {
            Outcome::Returned(payload) => (self.decode)(task, pid, payload.bytes()),
            Outcome::Failed(failure) => Err(Error::from_failure(task, Some(pid), failure)),
        };
        self.finish(result);
    }
}

/// Decodes the result of one call.
pub(crate) fn decode_single<R: DeserializeOwned>(
    task: &'static str,
    pid: u32,
    bytes: &[u8],
) -> Result<R, Error> {
    serde_stage(Stage::DecodeResult, || protocol::decode(bytes))
        .map_err(|failure| Error::from_failure(task, Some(pid), failure))
}

/// Decodes the results of a chunk: each element succeeds or fails alone.
pub(crate) fn decode_chunk<R: DeserializeOwned>(
    task: &'static str,
    pid: u32,
    bytes: &[u8],
) -> Result<Vec<Result<R, Error>>, Error> {
    let items: Vec<ChunkItem> = decode_single(task, pid, bytes)?;
    Ok(items
        .into_iter()
        .map(|item| match item {
            ChunkItem::Returned(bytes) => decode_single(task, pid, &bytes),
            ChunkItem::Failed(failure) => Err(Error::from_failure(task, Some(pid), failure)),
        })
        .collect())
}

/// Encodes arguments in the submitting thread.
pub(crate) fn encode_args<A: serde::Serialize>(
    task: &'static str,
    args: &A,
) -> Result<Vec<u8>, Error> {
    serde_stage(Stage::EncodeArgs, || protocol::encode(args))
        .map_err(|failure| Error::from_failure(task, None, failure))
}
