//! A submitted call as the manager sees it: encoded arguments, what is
//! known of a chunk's elements so far, and a type-erased handle to complete
//! its future.

use crate::chunk_results::ChunkResults;
use crate::error::{Attempt, Error};
use crate::future::{Held, State};
use crate::message::Message;
use crate::shared::Shared;
use ipc_channel::ipc::IpcSharedMemory;
use loky_worker::invoke::serde_stage;
use loky_worker::protocol::{
    self, Board, CallKind, Claim as ClaimState, Failure, Outcome, Packing, Payload, Stage,
};
use std::sync::Arc;
use std::time::Duration;

/// One call (or chunk of calls) waiting for or held by a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) kind: CallKind,
    /// For a chunk: the elements not yet settled.
    pub(crate) args: Payload,
    /// How long it may run before its worker is killed.
    pub(crate) timeout: Option<Duration>,
    /// How often it may run again when its worker dies running it;
    /// `None`: the executor's setting.
    pub(crate) retries: Option<u32>,
    /// Attempts whose worker died running it (a chunk: its first
    /// unsettled element), oldest first.
    pub(crate) attempts: Vec<Attempt>,
    pub(crate) completion: Arc<dyn Completion>,
    /// For a chunk: the outcomes known so far.
    pub(crate) pieces: Pieces,
    /// The shared regions its arguments name.
    pub(crate) regions: Vec<IpcSharedMemory>,
}

/// The outcomes of a chunk's elements known so far, in element order.
#[derive(Default)]
pub(crate) struct Pieces {
    pub(crate) settled: Vec<Piece>,
    /// Outcomes received from the current attempt (elements of `args`).
    pub(crate) received: usize,
}

/// Outcomes of consecutive elements of a chunk.
pub(crate) enum Piece {
    /// `count` encoded [`ChunkItem`](loky_worker::protocol::ChunkItem)s
    /// from worker `pid`, as its messages announced them, of which the
    /// first `skip` are duplicates to ignore. Items the bytes turn out not
    /// to hold fail as unreadable when they are taken.
    Items {
        pid: u32,
        skip: usize,
        count: usize,
        bytes: Vec<u8>,
    },
    /// One element failed in the parent's view (its worker died).
    Failed(Error),
}

impl Pieces {
    /// Records outcomes `first..first + count` of the current attempt,
    /// ignoring those already received (a worker that died right after
    /// sending its arena leaves them in the arena too).
    pub(crate) fn receive(&mut self, pid: u32, first: u64, count: u64, bytes: Vec<u8>) {
        let received = self.received as u64;
        let skip = received.saturating_sub(first);
        if skip >= count {
            return;
        }
        self.received = usize::try_from(first + count).unwrap_or(usize::MAX);
        self.settled.push(Piece::Items {
            pid,
            skip: skip as usize,
            count: usize::try_from(count).unwrap_or(usize::MAX),
            bytes,
        });
    }
}

impl Piece {
    /// The items in `bytes`, counted by reading them (an unreadable one
    /// ends the count, counted itself), of which the first `skip` are
    /// duplicates: where no message announced their number.
    pub(crate) fn counting(pid: u32, skip: usize, bytes: Vec<u8>) -> Piece {
        let count = protocol::items(&bytes).count();
        Piece::Items {
            pid,
            skip,
            count,
            bytes,
        }
    }
}

impl Job {
    pub(crate) fn task(&self) -> &'static str {
        self.completion.task()
    }

    /// Records that `attempt`'s worker died running it and says whether it
    /// may run again: at most `retries` (else `default`) times in all.
    pub(crate) fn retry(&mut self, attempt: Attempt, default: u32) -> bool {
        let budget = self.retries.unwrap_or(default) as usize;
        if self.attempts.len() >= budget {
            return false;
        }
        self.attempts.push(attempt);
        true
    }

    /// `error` with the earlier attempts listed first, if it is a death or
    /// a lost host (see [`Error::after_attempts`]); they are spent.
    pub(crate) fn with_attempts(&mut self, error: Error) -> Error {
        error.after_attempts(std::mem::take(&mut self.attempts))
    }
}

/// Where a call sent to a worker stands.
pub(crate) enum Claim {
    /// Its slot on a local worker's board, which the worker claims; for a
    /// single call, where its caller may pick its outcome up itself.
    Board {
        board: Arc<Board>,
        seq: u64,
        pickup: Option<Arc<dyn Pickup>>,
    },
    /// A flag the client of a cluster sets when an agent says it started
    /// the call (feature `nats`).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Flag(Arc<RemoteClaim>),
}

/// Where a caller may pick a single call's outcome up itself, from its
/// worker's board, instead of waiting for the results thread to pass
/// it on (`manager::direct`).
pub(crate) trait Pickup: Send + Sync {
    /// Waits for call `seq`'s outcome until `done` holds or `budget` has
    /// passed, and delivers it (settling the future) if it is found.
    fn pick_up(self: Arc<Self>, seq: u64, budget: std::time::Duration, done: &dyn Fn() -> bool);
}

impl Claim {
    /// Where the caller may pick the outcome up, and the call's number.
    pub(crate) fn pickup(&self) -> Option<(Arc<dyn Pickup>, u64)> {
        match self {
            Claim::Board {
                seq,
                pickup: Some(pickup),
                ..
            } => Some((Arc::clone(pickup), *seq)),
            _ => None,
        }
    }

    pub(crate) fn state(&self) -> ClaimState {
        match self {
            Claim::Board { board, seq, .. } => board.state(*seq),
            Claim::Flag(flag) => flag.state(),
        }
    }

    pub(crate) fn revoke(&self) -> bool {
        match self {
            Claim::Board { board, seq, .. } => board.revoke(*seq),
            Claim::Flag(flag) => flag.swap(RemoteClaim::REVOKED),
        }
    }
}

/// A remote call's claim: queued, started or revoked, decided once.
#[derive(Debug, Default)]
pub(crate) struct RemoteClaim(std::sync::atomic::AtomicU8);

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
impl RemoteClaim {
    const QUEUED: u8 = 0;
    const STARTED: u8 = 1;
    const REVOKED: u8 = 2;

    fn state(&self) -> ClaimState {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            RemoteClaim::QUEUED => ClaimState::Queued,
            RemoteClaim::STARTED => ClaimState::Started,
            _ => ClaimState::Revoked,
        }
    }

    /// From queued to `to`; false if it was decided already.
    fn swap(&self, to: u8) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(RemoteClaim::QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the call is neither started nor taken back.
    pub(crate) fn queued(&self) -> bool {
        self.state() == ClaimState::Queued
    }

    /// An agent started the call: false if it was taken back first.
    pub(crate) fn start(&self) -> bool {
        self.swap(RemoteClaim::STARTED)
    }
}

/// What the manager may do to a job's future, whatever its result type.
pub(crate) trait Completion: Send + Sync {
    fn task(&self) -> &'static str;
    /// The job was sent to a worker under `claim`; false if the future is
    /// cancelled (or finished), in which case the call must not run.
    fn attach(&self, claim: Claim) -> bool;
    /// The job goes back to the queue: no worker holds it.
    fn detach(&self);
    /// Cancels a pending job.
    fn cancel(&self) -> bool;
    /// Whether the future was cancelled (perhaps while it ran).
    fn cancelled(&self) -> bool;
    /// Whether the future is settled (finished, failed or cancelled).
    fn settled(&self) -> bool;
    /// Fails the job.
    fn fail(&self, error: Error);
    /// Completes a single call with a worker's outcome.
    fn finish_remote(&self, pid: u32, outcome: Outcome);
    /// Completes a chunk with the outcomes of all its elements.
    fn finish_chunk(&self, pieces: Vec<Piece>);
}

/// What a decoder gets.
pub(crate) enum Encoded<'a> {
    /// The encoded result of a single call.
    Single(&'a [u8]),
    /// The outcomes of a chunk's elements.
    Chunk(Vec<Piece>),
}

/// Decodes a worker's encoded result into the future's type.
pub(crate) type Decode<R> = fn(&'static str, u32, Encoded<'_>) -> Result<R, Error>;

/// A future's state and the decoder for its result type.
pub(crate) struct Typed<R> {
    pub(crate) state: Arc<State<R>>,
    pub(crate) decode: Decode<R>,
    /// Where finished tasks are counted.
    pub(crate) shared: Arc<Shared>,
}

impl<R> Typed<R> {
    fn finish(&self, outcome: Held<R>) {
        self.state
            .finish_counted(outcome, |ok| self.shared.count(ok));
    }
}

impl<R: Send + 'static> Completion for Typed<R> {
    fn task(&self) -> &'static str {
        self.state.task()
    }

    fn attach(&self, claim: Claim) -> bool {
        self.state.attach(claim)
    }

    fn detach(&self) {
        self.state.detach()
    }

    fn cancel(&self) -> bool {
        self.state.cancel()
    }

    fn cancelled(&self) -> bool {
        self.state.is_cancelled()
    }

    fn settled(&self) -> bool {
        self.state.is_settled()
    }

    fn fail(&self, error: Error) {
        self.finish(Held::Ready(Err(error)));
    }

    /// Leaves the result encoded: the thread that takes it decodes it.
    fn finish_remote(&self, pid: u32, outcome: Outcome) {
        let task = self.state.task();
        let decode = self.decode;
        self.finish(match outcome {
            Outcome::Returned(payload) => Held::Encoded(Box::new(move || {
                decode(task, pid, Encoded::Single(payload.bytes()))
            })),
            Outcome::Failed(failure) => {
                Held::Ready(Err(Error::from_failure(task, Some(pid), failure)))
            }
        });
    }

    /// Leaves the elements' results encoded, as `finish_remote` does.
    fn finish_chunk(&self, pieces: Vec<Piece>) {
        let task = self.state.task();
        let decode = self.decode;
        self.finish(Held::Encoded(Box::new(move || {
            decode(task, 0, Encoded::Chunk(pieces))
        })));
    }
}

/// Decodes the result of one call.
pub(crate) fn decode_single<R: Message>(
    task: &'static str,
    pid: u32,
    encoded: Encoded<'_>,
) -> Result<R, Error> {
    match encoded {
        Encoded::Single(bytes) => decode_bytes(task, pid, bytes),
        Encoded::Chunk(_) => Err(Error::Broken {
            reason: "a single call completed as a chunk".to_owned(),
        }),
    }
}

/// Decodes one result worker `pid` returned; a failure is the task's
/// `DecodeResult` error.
pub(crate) fn decode_bytes<R: Message>(
    task: &'static str,
    pid: u32,
    bytes: &[u8],
) -> Result<R, Error> {
    serde_stage(Stage::DecodeResult, || R::decode(bytes))
        .map_err(|failure| Error::from_failure(task, Some(pid), failure))
}

/// Decodes the result of a single call that stands for a chunk of one.
pub(crate) fn decode_as_chunk<R: Message>(
    task: &'static str,
    pid: u32,
    encoded: Encoded<'_>,
) -> Result<ChunkResults<R>, Error> {
    Ok(ChunkResults::ready(vec![decode_single(task, pid, encoded)]))
}

/// The results of a chunk: each element succeeds or fails alone, and is
/// decoded as it is taken (`ChunkResults`).
pub(crate) fn decode_chunk<R: Message>(
    task: &'static str,
    _pid: u32,
    encoded: Encoded<'_>,
) -> Result<ChunkResults<R>, Error> {
    let Encoded::Chunk(pieces) = encoded else {
        return Err(Error::Broken {
            reason: "a chunk completed as a single call".to_owned(),
        });
    };
    Ok(ChunkResults::encoded(task, pieces))
}

/// Encodes arguments in the submitting thread, to travel inside a larger
/// message (a chunk, an initializer's call).
pub(crate) fn encode_args<A: Message>(task: &'static str, args: &A) -> Result<Vec<u8>, Error> {
    serde_stage(Stage::EncodeArgs, || {
        args.encode(Packing::Inline).map(Payload::into_bytes)
    })
    .map_err(|failure| Error::from_failure(task, None, failure))
}

/// Encodes a call's arguments in the submitting thread, large ones
/// straight into shared memory.
pub(crate) fn encode_call_args<A: Message>(task: &'static str, args: &A) -> Result<Payload, Error> {
    serde_stage(Stage::EncodeArgs, || args.encode(Packing::Args))
        .map_err(|failure| Error::from_failure(task, None, failure))
}

/// Wraps a call's encoded arguments, large ones in shared memory.
pub(crate) fn pack_args(task: &'static str, bytes: Vec<u8>) -> Result<Payload, Error> {
    Payload::pack_args(bytes).map_err(|message| {
        let stage = Stage::EncodeArgs;
        Error::from_failure(task, None, Failure::Serde { stage, message })
    })
}
