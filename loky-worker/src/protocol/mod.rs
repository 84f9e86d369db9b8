//! The wire protocol: every message that crosses the process boundary.
//!
//! Not a semver promise: the messages, their encoding and
//! [`PROTOCOL_VERSION`] change whenever loky needs them to (see the crate's
//! Stability section). The only guarantee across versions is the hello
//! below.
//!
//! Architecture Invariant: this file is the only place that defines what
//! travels between the parent and a worker. The first message on a new link
//! is always [`Bootstrap::Hello`], whose layout never changes: a parent and a
//! worker of different protocol versions can always read each other's
//! version and fail with a clear error instead of a decoding error.
//!
//! Sequence for one worker (its reports travel on its executor's one
//! result channel, each as a [`Report::From`] under its tag):
//!
//! ```text
//! parent                                   worker (re-executed binary)
//!   | IpcOneShotServer::new() -> name         |
//!   | spawn with LOKY_WORKER_SERVER=name ---> |
//!   |                                         | connect(name)
//!   | <------ Bootstrap::Hello{version, ...}  | (carries its call channel)
//!   | ToWorker::Setup{board, link} ----------> | link: the result channel, its tag
//!   | ToWorker::Calls[{seq}, ...] -----------> | claims each seq on the board
//!   | <------ FromWorker::Items (chunks only) | when its arena is full
//!   | <------------------- FromWorker::Done   |
//!   | <------- FromWorker::Retire (optional)  | over its memory limit:
//!   |                                         | keeps serving until...
//!   | ToWorker::Shutdown --------------------> | exits with code 0
//!   | Report::Exited{tag} (the parent's own, behind the worker's last report)
//! ```
//!
//! Right after the hello the parent sends [`ToWorker::Setup`] with the
//! worker's [`Board`]: the shared page on which the two sides agree, call
//! by call, whether it started (see `board.rs`). A worker runs calls
//! strictly one at a time in the order received, skipping those taken back.

mod board;
mod bytes;
pub mod region;
pub mod remote;

pub use board::{ARENA, BOARD_BYTES, Board, ChunkProgress, Claim, SLOTS};
pub use bytes::{decode_value, encode_value, encode_value_into};

use ipc_channel::ipc::{IpcReceiver, IpcSender, IpcSharedMemory};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of this protocol. Bump it whenever any message below changes.
pub const PROTOCOL_VERSION: u32 = 10;

/// Environment variable naming the parent's one-shot server. Its presence
/// makes a process a worker.
pub const ENV_SERVER: &str = "LOKY_WORKER_SERVER";
/// Environment variable carrying the per-executor secret, in hex.
pub const ENV_SECRET: &str = "LOKY_WORKER_SECRET";
/// Environment variable carrying the parent's pid, to detect a parent that
/// died before the worker could arm its death signal.
pub const ENV_PARENT: &str = "LOKY_WORKER_PARENT";

/// Environment variable carrying a worker's memory limits in bytes:
/// `LEAK,CAP`, each `0` for none.
pub const ENV_MEMORY: &str = "LOKY_WORKER_MEMORY";
/// Environment variable carrying the most verbose log level the parent
/// listens to, as [`LogRecord::level`] numbers it (`0` or absent: none): a
/// worker forwards the `tracing` events and `log` records of its tasks up
/// to that level, and filters the rest out itself.
pub const ENV_LOG_LEVEL: &str = "LOKY_WORKER_LOG_LEVEL";
/// Environment variable set (to `1`) when the parent labels the worker's
/// output lines: the worker then marks on stdout and stderr where each task
/// begins and ends, with [`TASK_MARKER`] lines.
pub const ENV_LABEL_OUTPUT: &str = "LOKY_WORKER_LABEL_OUTPUT";
/// Starts a line that a labelling parent reads as "the worker now runs the
/// task named after it" (nothing after it: between tasks) and never prints.
pub const TASK_MARKER: &[u8] = b"\x01loky-task:";
/// Environment variable carrying how deep in nested executors a process
/// is: unset in the user's process, 1 in its workers, 2 in theirs...
pub const ENV_DEPTH: &str = "LOKY_DEPTH";

/// Exit code of a worker that could not complete its handshake.
pub const EXIT_HANDSHAKE_FAILED: i32 = 70;

/// Exit code of a worker that received a message it could not decode.
pub const EXIT_PROTOCOL_ERROR: i32 = 71;

/// Arguments at least this large travel through shared memory instead of
/// the socket. An inline message larger than the socket's buffer (about
/// 208 KiB here) blocks its sender until the receiver reads it: the manager
/// sending a large inline call to a busy worker would stall. So arguments
/// stay well below that.
pub const ARGS_SHARED_MEMORY_THRESHOLD: usize = 64 * 1024;

/// Results at least this large travel through shared memory. Measured with
/// `examples/threshold.rs` (echo round trip of a `ByteBuf`, medians,
/// 2026-11-26, warm regions): inline and shared are even at 64 KiB,
/// shared wins from 128 KiB on (268 against 444 us; 1 MiB: 2.7 against
/// 3.3 ms; 16 MiB: 61 against 102 ms).
pub const RESULT_SHARED_MEMORY_THRESHOLD: usize = 128 << 10;

/// A result region at least this large stays mapped until its result is
/// taken; a smaller one is copied out as it arrives ([`Payload::settle`]),
/// so that results waiting to be taken hold no descriptors (thousands of
/// them would exhaust the process's) and the worker gets its region back.
pub const RESULT_HELD_IN_PLACE: usize = 32 << 20;

/// Environment variable overriding both thresholds (in bytes), for
/// measurements. Workers inherit it.
#[doc(hidden)]
pub const ENV_SHARED_MEMORY_THRESHOLD: &str = "LOKY_SHARED_MEMORY_THRESHOLD";

fn threshold_override() -> Option<usize> {
    static THRESHOLD: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *THRESHOLD.get_or_init(|| {
        std::env::var(ENV_SHARED_MEMORY_THRESHOLD)
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

/// The first and only message on the bootstrap connection, worker to parent.
#[derive(Serialize, Deserialize)]
pub enum Bootstrap {
    /// The worker introduces itself. Never reordered, never changed.
    Hello(Hello),
}

/// A worker's introduction: who it is and the two channels of the link.
#[derive(Serialize, Deserialize)]
pub struct Hello {
    /// The worker's [`PROTOCOL_VERSION`]. First field, forever.
    pub version: u32,
    /// The secret the parent passed in [`ENV_SECRET`].
    pub secret: u64,
    /// The worker's process id.
    pub pid: u32,
    /// Where the parent sends calls.
    pub calls: IpcSender<ToWorker>,
    /// The worker's own result channel. Unused since version 10 (the
    /// worker reports on its executor's channel, [`Setup::link`]); kept so
    /// that the hello never changes.
    pub results: IpcReceiver<FromWorker>,
}

/// Parent to worker.
#[derive(Serialize, Deserialize, Debug)]
pub enum ToWorker {
    /// Run these calls in order, each unless it was taken back on the
    /// board. Calls sent to a worker at the same time travel together.
    Calls(Vec<Call>),
    /// Finish and exit with code 0.
    Shutdown,
    /// The first message after the hello: the worker's board.
    Setup(Setup),
}

/// What a worker needs before its first call.
#[derive(Serialize, Deserialize, Debug)]
pub struct Setup {
    /// The shared page of claims and chunk progress: [`Board`].
    pub board: IpcSharedMemory,
    /// How long the worker looks for its next call before it sleeps
    /// (`crate::spin`).
    pub spin: std::time::Duration,
    /// Where a worker process reports: its executor's one result channel,
    /// shared by all its workers, and its tag there. Left out by the
    /// parent's manager, filled in by the process backend as the setup
    /// leaves (a worker in the parent's own process, for tests, has no
    /// channel).
    pub link: Option<Link>,
}

/// A worker's place on its executor's result channel.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Link {
    /// The channel every worker of the executor reports on.
    pub results: IpcSender<Report>,
    /// What this worker's reports carry, so the parent knows whose they are.
    pub tag: u64,
}

/// What an executor's result channel carries. Workers send only
/// [`Report::From`]; the parent sends the others to its own reader, which
/// therefore reads them after everything sent before them.
#[derive(Serialize, Deserialize, Debug)]
pub enum Report {
    /// A worker's message, under its tag.
    From {
        /// The worker's tag ([`Link::tag`]).
        tag: u64,
        /// What it said, or why that could not be read: the tag is read
        /// even then, so the failure is that worker's alone.
        message: Readable<FromWorker>,
    },
    /// The worker tagged `tag` has exited: what it sent before is read.
    Exited {
        /// The parent's key, which no worker knows.
        key: u64,
        /// The worker's tag.
        tag: u64,
    },
    /// The reader stops.
    Stop {
        /// The parent's key, which no worker knows.
        key: u64,
    },
}

/// A value that may not decode. Decoding one never fails: a value that
/// does not decode is [`Readable::Unreadable`] with the reason. It must
/// come last in its message (what follows it is not read).
#[derive(Debug)]
pub enum Readable<T> {
    /// Decoded.
    Read(T),
    /// Why it did not decode.
    Unreadable(String),
}

impl<T: Serialize> Serialize for Readable<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Readable::Read(value) => value.serialize(serializer),
            Readable::Unreadable(reason) => Err(serde::ser::Error::custom(reason)),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Readable<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match T::deserialize(deserializer) {
            Ok(value) => Readable::Read(value),
            Err(error) => Readable::Unreadable(error.to_string()),
        })
    }
}

/// One call of a registered task.
#[derive(Serialize, Deserialize, Debug)]
pub struct Call {
    /// The call's number on this worker: its claim slot on the board, and
    /// echoed in [`FromWorker::Done`].
    pub seq: u64,
    /// The task's registered id.
    pub task: String,
    /// One call, or a chunk of calls of the same task.
    pub kind: CallKind,
    /// The postcard-encoded argument (for a chunk: a `Vec<ByteBuf>` of them).
    pub args: Payload,
    /// The regions of the [`SharedBytes`](crate::shared_bytes::SharedBytes)
    /// in `args`, which name them by index.
    pub regions: Vec<IpcSharedMemory>,
}

/// The most descriptors one message carries (ipc-channel's limit; it
/// panics past it): each shared region of a call is one.
pub const MAX_DESCRIPTORS: usize = 64;

impl Call {
    /// The descriptors it carries: its `SharedBytes` regions, and its
    /// arguments' region if they travel in one.
    pub fn descriptors(&self) -> usize {
        self.regions.len() + usize::from(matches!(self.args, Payload::Shared(_)))
    }
}

/// Splits `calls` into messages of at most [`MAX_DESCRIPTORS`] descriptors
/// each, in order. A call that carries more on its own goes alone (the
/// executor refuses such calls before they get here).
pub fn split_by_descriptors(calls: Vec<Call>) -> Vec<Vec<Call>> {
    let mut messages: Vec<Vec<Call>> = Vec::new();
    let mut used = 0;
    for call in calls {
        let needed = call.descriptors();
        match messages.last_mut() {
            Some(message) if used + needed <= MAX_DESCRIPTORS => {
                used += needed;
                message.push(call);
            }
            _ => {
                used = needed;
                messages.push(vec![call]);
            }
        }
    }
    messages
}

/// Whether a call carries one argument or a chunk of them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// One call: the outcome is the encoded result.
    Single,
    /// A chunk: the arguments are a `Vec<ByteBuf>` and the outcomes are
    /// [`ChunkItem`]s, one per argument, in order.
    Chunk,
}

/// The encoded arguments of a chunk.
pub type ChunkArgs = Vec<serde_bytes::ByteBuf>;

/// Builds encoded [`ChunkArgs`] element by element in one buffer: the very
/// bytes encoding the `Vec<ByteBuf>` gives (a count, then each element's
/// length and bytes), without an allocation per element.
#[derive(Default)]
pub struct ChunkArgsBuilder {
    body: Vec<u8>,
    count: usize,
    scratch: Vec<u8>,
}

impl ChunkArgsBuilder {
    /// Adds one element, which `encode` appends to the buffer it is given;
    /// on error nothing is added. After a panic in `encode`, roll back to a
    /// [`checkpoint`](Self::checkpoint) taken before.
    #[inline]
    pub fn push<E>(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        // Encoded in place after a one-byte length, the usual size; a
        // longer one moves the bytes to make room for its length.
        let at = self.body.len();
        self.body.push(0);
        if let Err(error) = encode(&mut self.body) {
            self.body.truncate(at);
            return Err(error);
        }
        let len = self.body.len() - at - 1;
        if len < 0x80 {
            self.body[at] = len as u8;
        } else {
            self.scratch.clear();
            write_varint(&mut self.scratch, len);
            let extra = self.scratch.len() - 1;
            self.body.splice(at..at + 1, self.scratch.iter().copied());
            debug_assert_eq!(self.body.len(), at + 1 + extra + len);
        }
        self.count += 1;
        Ok(())
    }

    /// How many elements it holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Where it stands, to [`rollback`](Self::rollback) to.
    #[inline]
    pub fn checkpoint(&self) -> (usize, usize) {
        (self.body.len(), self.count)
    }

    /// Drops the elements pushed since `checkpoint`.
    pub fn rollback(&mut self, (body, count): (usize, usize)) {
        self.body.truncate(body);
        self.count = count;
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded chunk.
    pub fn finish(self) -> Vec<u8> {
        let mut encoded = Vec::with_capacity(10 + self.body.len());
        write_varint(&mut encoded, self.count);
        encoded.extend_from_slice(&self.body);
        encoded
    }
}

/// Appends `value` as postcard writes a `usize`: seven bits a byte, low
/// first, the high bit set on every byte but the last.
#[inline]
fn write_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many elements encoded [`ChunkArgs`] hold, read from their head.
#[inline]
pub fn chunk_args_len(bytes: &[u8]) -> Option<usize> {
    read_varint(bytes).map(|(count, _)| count)
}

/// Decodes [`ChunkArgs`], borrowing each element's bytes from `bytes`.
pub fn decode_chunk_args(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let truncated = || "chunk arguments cut short".to_owned();
    // As `ChunkArgsBuilder` writes them: a count, then each element's
    // length and bytes.
    let (count, mut rest) = read_varint(bytes).ok_or_else(truncated)?;
    // Each element takes a byte at least: a count past that is a lie.
    if count > rest.len() {
        return Err(truncated());
    }
    let mut elements = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, after) = read_varint(rest).ok_or_else(truncated)?;
        let element = after.get(..len).ok_or_else(truncated)?;
        elements.push(element);
        rest = &after[len..];
    }
    if !rest.is_empty() {
        return Err(format!("{} unexpected trailing bytes", rest.len()));
    }
    Ok(elements)
}

/// Worker to parent.
#[derive(Serialize, Deserialize, Debug)]
pub enum FromWorker {
    /// A call finished, one way or another. For a chunk, the outcome
    /// carries the element outcomes not yet sent in [`FromWorker::Items`].
    Done {
        /// The call's number.
        seq: u64,
        /// What happened.
        outcome: Outcome,
    },
    /// The worker wants to be replaced. It keeps serving the calls already
    /// sent until the parent answers with [`ToWorker::Shutdown`], so no
    /// call is lost.
    Retire(RetireReason),
    /// A `tracing` event or `log` record of a task, for the parent's
    /// subscriber or logger.
    Log(LogRecord),
    /// Outcomes of chunk elements `first..first + count`, sent before the
    /// chunk is done because the board's arena was full.
    Items {
        /// The chunk's call number.
        seq: u64,
        /// The index of the first element.
        first: u64,
        /// How many outcomes `items` holds.
        count: u64,
        /// Encoded [`ChunkItem`]s, one after the other.
        items: Payload,
    },
    /// Single calls finished, their outcomes held back and sent together:
    /// encoded [`SettledCall`]s, one after the other.
    Settled {
        /// The records, as the board's outbox held them.
        records: Payload,
    },
}

/// A single call's outcome, held back in the worker's outbox and sent with
/// others in a [`FromWorker::Settled`].
#[derive(Serialize, Deserialize, Debug)]
pub struct SettledCall<'a> {
    /// The call's number.
    pub seq: u64,
    /// Its outcome (`Returned`: the encoded result).
    #[serde(borrow)]
    pub item: ChunkItem<'a>,
}

/// Appends call `seq`'s `outcome`, encoded as a [`SettledCall`], to `out`;
/// `None` for an outcome that cannot be laid out so (a result in shared
/// memory) or does not encode.
pub fn encode_settled(seq: u64, outcome: &Outcome, out: Vec<u8>) -> Option<Vec<u8>> {
    let item = match outcome {
        Outcome::Returned(Payload::Inline(bytes)) => {
            ChunkItem::Returned(std::borrow::Cow::Borrowed(bytes))
        }
        Outcome::Failed(failure) => ChunkItem::Failed(failure.clone()),
        Outcome::Returned(Payload::Shared(_)) => return None,
    };
    postcard::to_extend(&SettledCall { seq, item }, out).ok()
}

/// The [`SettledCall`]s laid one after the other in `bytes`, one at a
/// time; stops after the first error.
pub fn settled_calls(bytes: &[u8]) -> impl Iterator<Item = Result<SettledCall<'_>, String>> {
    end_to_end(bytes)
}

/// The outcomes in encoded [`SettledCall`]s, by call number, as a
/// [`FromWorker::Done`] would carry them; `Err` for unreadable records (the
/// outcomes before them are kept).
pub fn settled_outcomes(bytes: &[u8]) -> (Vec<(u64, Outcome)>, Option<String>) {
    let mut outcomes = Vec::new();
    for record in settled_calls(bytes) {
        match record {
            Ok(SettledCall { seq, item }) => outcomes.push((
                seq,
                match item {
                    ChunkItem::Returned(bytes) => {
                        Outcome::Returned(Payload::Inline(bytes.into_owned()))
                    }
                    ChunkItem::Failed(failure) => Outcome::Failed(failure),
                },
            )),
            Err(error) => return (outcomes, Some(error)),
        }
    }
    (outcomes, None)
}

/// A log event from a worker: see [`FromWorker::Log`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub level: u8,
    /// The event's target (by default the module path where it was
    /// emitted).
    pub target: String,
    /// The message, then the other fields as ` name=value`.
    pub message: String,
    /// The task the worker was running, if it was running one.
    pub task: Option<String>,
}

/// Why a worker asks to be replaced.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    /// Its resident memory grew past the leak threshold over its reference,
    /// even after handing freed memory back to the OS.
    MemoryLeak {
        /// Resident memory now, in bytes.
        rss: u64,
        /// Resident memory after its first task, in bytes.
        reference: u64,
    },
    /// Its resident memory exceeds the absolute cap.
    MemoryCap {
        /// Resident memory now, in bytes.
        rss: u64,
    },
}

/// What became of one call.
#[derive(Serialize, Deserialize, Debug)]
pub enum Outcome {
    /// The task returned; its postcard-encoded result (for a chunk, encoded
    /// [`ChunkItem`]s one after the other).
    Returned(Payload),
    /// The call failed inside the worker, which lives on.
    Failed(Failure),
}

/// The outcome of one element of a chunk. Owned where a worker builds
/// it, borrowed from the received bytes where the parent reads it.
#[derive(Serialize, Deserialize, Debug)]
pub enum ChunkItem<'a> {
    /// The postcard-encoded result.
    Returned(#[serde(borrow, with = "serde_bytes")] std::borrow::Cow<'a, [u8]>),
    /// The element failed.
    Failed(Failure),
}

/// The most bytes of any text a worker sends (a panic's message, location
/// or backtrace, a serde error, a log record's target and message): with it
/// every report but a large result fits in one fragment of the result
/// channel, which the parent reads in one receive, never waiting on a
/// sender that stopped halfway. That holds while a unix socket's send
/// buffer (ipc-channel's fragment size) is at least about 130 KiB, as
/// Linux's default (`net.core.wmem_default`, 208 KiB) is: a panic's three
/// texts are the largest report.
pub const MAX_TEXT: usize = 32 << 10;

/// `text`, cut to at most [`MAX_TEXT`] bytes at a character boundary, with
/// how much was cut said at its end.
pub fn bound_text(mut text: String) -> String {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let total = text.len();
    let mut end = MAX_TEXT - 64;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("... ({} more bytes cut)", total - end));
    text
}

/// A failure that the worker survived.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The task panicked.
    Panicked(RemotePanic),
    /// Encoding or decoding failed (or panicked) in the worker.
    Serde {
        /// Where.
        stage: Stage,
        /// The serde error's message.
        message: String,
    },
    /// The worker has no task registered under that id.
    UnknownTask,
    /// The worker has several tasks registered under that id.
    DuplicateTask {
        /// Where each was defined.
        locations: Vec<String>,
    },
}

/// Where a serialization failed: which data, on which side.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Encoding the arguments, in the parent.
    EncodeArgs,
    /// Decoding the arguments, in the worker.
    DecodeArgs,
    /// Encoding the result, in the worker.
    EncodeResult,
    /// Decoding the result, in the parent.
    DecodeResult,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::EncodeArgs => "encoding the arguments in the parent",
            Stage::DecodeArgs => "decoding the arguments in the worker",
            Stage::EncodeResult => "encoding the result in the worker",
            Stage::DecodeResult => "decoding the result in the parent",
        })
    }
}

/// A panic that happened in another process, as a value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RemotePanic {
    /// The panic message.
    pub message: String,
    /// `file:line:column` of the panic, when known.
    pub location: Option<String>,
    /// The worker's backtrace, captured when `RUST_BACKTRACE` is set.
    pub backtrace: Option<String>,
}

impl RemotePanic {
    /// Its texts cut to [`MAX_TEXT`].
    pub fn bounded(self) -> RemotePanic {
        RemotePanic {
            message: bound_text(self.message),
            location: self.location.map(bound_text),
            backtrace: self.backtrace.map(bound_text),
        }
    }
}

impl fmt::Display for RemotePanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", self.message)?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        Ok(())
    }
}

/// Encoded bytes, carried inline or, when large, in shared memory.
#[derive(Serialize, Deserialize, Clone)]
pub enum Payload {
    /// Bytes carried in the message itself.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Bytes carried in a shared memory region passed along the message,
    /// from the sender's pool of warm regions.
    Shared(region::Region),
}

/// Where an encoded value is headed, which decides how it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// A call's arguments: [`Payload::pack_args`].
    Args,
    /// A call's result: [`Payload::pack_result`].
    Result,
    /// Inside a larger message (a chunk's element): always inline.
    Inline,
}

impl Payload {
    /// Encodes `value` (as [`encode_value`] does) for `packing`. A large
    /// byte string is written straight into its region, without an
    /// encoded copy in between.
    pub fn encode<T: Serialize + 'static>(value: &T, packing: Packing) -> Result<Payload, String> {
        let threshold = match packing {
            Packing::Args => ARGS_SHARED_MEMORY_THRESHOLD,
            Packing::Result => RESULT_SHARED_MEMORY_THRESHOLD,
            Packing::Inline => usize::MAX,
        };
        let threshold = match packing {
            Packing::Inline => threshold,
            _ => threshold_override().unwrap_or(threshold),
        };
        if let Some(bytes) = bytes::byte_string(value) {
            let prefix = bytes::length_prefix(bytes.len())?;
            if prefix.len() + bytes.len() >= threshold {
                match crate::region_pool::fill(&[&prefix, bytes]) {
                    Ok(region) => return Ok(Payload::Shared(region)),
                    Err(reason) if packing == Packing::Args => return Err(reason),
                    // A result goes inline instead: see `pack_result`.
                    Err(_) => {}
                }
            }
        }
        let encoded = encode_value(value)?;
        match packing {
            Packing::Args => Payload::pack_args(encoded),
            Packing::Result => Ok(Payload::pack_result(encoded)),
            Packing::Inline => Ok(Payload::Inline(encoded)),
        }
    }

    /// A received result as it waits to be taken: a region smaller than
    /// [`RESULT_HELD_IN_PLACE`] is copied out (and released at once).
    pub fn settle(self) -> Payload {
        match self {
            Payload::Shared(region) if region.bytes().len() < RESULT_HELD_IN_PLACE => {
                Payload::Inline(region.bytes().to_vec())
            }
            other => other,
        }
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Payload::Inline(bytes) => bytes,
            Payload::Shared(region) => region.bytes().to_vec(),
        }
    }

    /// Wraps encoded arguments, in shared memory from
    /// [`ARGS_SHARED_MEMORY_THRESHOLD`] on. `Err` when the OS refuses a
    /// region: sent inline, they could block the sender on a busy worker.
    pub fn pack_args(bytes: Vec<u8>) -> Result<Payload, String> {
        if bytes.len() >= threshold_override().unwrap_or(ARGS_SHARED_MEMORY_THRESHOLD) {
            crate::region_pool::fill(&[&bytes]).map(Payload::Shared)
        } else {
            Ok(Payload::Inline(bytes))
        }
    }

    /// Wraps an encoded result, in shared memory from
    /// [`RESULT_SHARED_MEMORY_THRESHOLD`] on, or inline when the OS refuses
    /// a region (the parent reads results as they come: inline is only
    /// slower).
    pub fn pack_result(bytes: Vec<u8>) -> Payload {
        if bytes.len() >= threshold_override().unwrap_or(RESULT_SHARED_MEMORY_THRESHOLD)
            && let Ok(region) = crate::region_pool::fill(&[&bytes])
        {
            return Payload::Shared(region);
        }
        Payload::Inline(bytes)
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Inline(bytes) => bytes,
            Payload::Shared(region) => region.bytes(),
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
            Payload::Shared(region) => write!(f, "Shared({} bytes)", region.bytes().len()),
        }
    }
}

/// Encodes a value with the protocol's serializer, postcard.
///
/// postcard drops the message of a custom serde error (`Error::custom`). On
/// such a failure the value is encoded once more through `erased-serde`,
/// whose error keeps the message, so that the caller learns what the user's
/// `Serialize` said. Success costs nothing extra.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|error| match error {
        postcard::Error::SerdeSerCustom => {
            let mut serializer = postcard::Serializer {
                output: postcard::ser_flavors::AllocVec::new(),
            };
            let mut erased = <dyn erased_serde::Serializer>::erase(&mut serializer);
            match erased_serde::Serialize::erased_serialize(value, &mut erased) {
                Err(error) => error.to_string(),
                Ok(()) => error.to_string(),
            }
        }
        other => other.to_string(),
    })
}

/// Decodes a value encoded by [`encode`]. Trailing bytes are an error.
///
/// Like [`encode`], a custom error is decoded once more to recover its message.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} unexpected trailing bytes", rest.len())),
        Err(postcard::Error::SerdeDeCustom) => {
            let mut deserializer = postcard::Deserializer::from_bytes(bytes);
            let mut erased = <dyn erased_serde::Deserializer>::erase(&mut deserializer);
            match erased_serde::deserialize::<T>(&mut erased) {
                Err(error) => Err(error.to_string()),
                Ok(_) => Err(postcard::Error::SerdeDeCustom.to_string()),
            }
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Appends the encoding of `item` to `buffer`.
pub fn encode_item(item: &ChunkItem<'_>, buffer: Vec<u8>) -> Result<Vec<u8>, String> {
    postcard::to_extend(item, buffer).map_err(|e| e.to_string())
}

/// Writes into `out` (emptied first) what [`encode_item`] writes for
/// `ChunkItem::Returned(result)`: the variant's index (0), the length, the
/// bytes.
#[inline]
pub fn encode_returned_item(result: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(0);
    write_varint(out, result.len());
    out.extend_from_slice(result);
}

/// Decodes encoded [`ChunkItem`]s laid one after the other, borrowing
/// each result's bytes from `bytes`.
#[cfg(test)]
fn decode_items(bytes: &[u8]) -> Result<Vec<ChunkItem<'_>>, String> {
    items(bytes).collect()
}

/// The encoded [`ChunkItem`]s laid one after the other in `bytes`, one at a
/// time, each result's bytes borrowed; stops after the first error.
pub fn items(mut bytes: &[u8]) -> impl Iterator<Item = Result<ChunkItem<'_>, String>> {
    std::iter::from_fn(move || match next_item(bytes)? {
        Ok((item, used)) => {
            bytes = &bytes[used..];
            Some(Ok(item))
        }
        Err(error) => {
            bytes = &[];
            Some(Err(error))
        }
    })
}

/// The first encoded [`ChunkItem`] in `bytes` and how many bytes it took;
/// `None` if `bytes` is empty.
#[inline]
pub fn next_item(bytes: &[u8]) -> Option<Result<(ChunkItem<'_>, usize), String>> {
    if bytes.is_empty() {
        return None;
    }
    // A returned result, the common item, read by hand as it was written
    // (`encode_returned_item`): its variant (0), its length, its bytes.
    if let [0, rest @ ..] = bytes
        && let Some((len, after)) = read_varint(rest)
        && let Some(result) = after.get(..len)
    {
        let used = bytes.len() - after.len() + len;
        return Some(Ok((
            ChunkItem::Returned(std::borrow::Cow::Borrowed(result)),
            used,
        )));
    }
    Some(match postcard::take_from_bytes(bytes) {
        Ok((value, rest)) => Ok((value, bytes.len() - rest.len())),
        Err(error) => Err(error.to_string()),
    })
}

/// Reads a `usize` as postcard writes it ([`write_varint`]); `None` if
/// `bytes` does not start with one.
#[inline]
fn read_varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value = 0usize;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        let shift = 7 * index as u32;
        let bits = usize::from(byte & 0x7f);
        if shift >= usize::BITS || (bits << shift) >> shift != bits {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some((value, &bytes[index + 1..]));
        }
    }
    None
}

/// Values of type `T` encoded one after the other in `bytes`, decoded one
/// at a time (borrowing from `bytes`); stops after the first error.
fn end_to_end<'a, T: Deserialize<'a>>(
    mut bytes: &'a [u8],
) -> impl Iterator<Item = Result<T, String>> + 'a {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        match postcard::take_from_bytes(bytes) {
            Ok((value, rest)) => {
                bytes = rest;
                Some(Ok(value))
            }
            Err(error) => {
                bytes = &[];
                Some(Err(error.to_string()))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_at_a_character_boundary_and_say_so() {
        assert_eq!(bound_text("short".to_owned()), "short");
        let long = "é".repeat(MAX_TEXT);
        let cut = bound_text(long.clone());
        assert!(cut.len() <= MAX_TEXT, "{}", cut.len());
        assert!(long.starts_with(cut.split("...").next().unwrap()));
        let kept = cut.split("...").next().unwrap().len();
        assert!(cut.ends_with(&format!("({} more bytes cut)", long.len() - kept)));
    }

    #[test]
    fn chunk_args_built_in_place_are_the_encoded_vector() {
        let elements: Vec<Vec<u8>> = vec![vec![1, 2], Vec::new(), vec![3; 300], vec![4; 20_000]];
        let mut builder = ChunkArgsBuilder::default();
        for element in &elements {
            builder
                .push(|out| {
                    out.extend_from_slice(element);
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        // A failed element adds nothing.
        assert!(
            builder
                .push(|out| {
                    out.push(9);
                    Err(())
                })
                .is_err()
        );
        assert_eq!(builder.len(), 4);
        let args: ChunkArgs = elements
            .iter()
            .cloned()
            .map(serde_bytes::ByteBuf::from)
            .collect();
        assert_eq!(builder.finish(), encode(&args).unwrap());
        for count in [0usize, 1, 127, 128, 300, 16_384, usize::MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, count);
            assert_eq!(out, encode(&count).unwrap(), "{count}");
            assert_eq!(read_varint(&out), Some((count, &[][..])), "{count}");
            // Cut short: not a varint.
            assert_eq!(read_varint(&out[..out.len() - 1]), None, "{count}");
        }
        // Past the width of a `usize`.
        assert_eq!(read_varint(&[0xff; 11]), None);
    }

    #[test]
    fn calls_are_split_into_messages_within_the_descriptor_limit() {
        let call = |seq, regions: usize| Call {
            seq,
            task: "t".to_owned(),
            kind: CallKind::Single,
            args: Payload::Inline(Vec::new()),
            regions: (0..regions)
                .map(|_| IpcSharedMemory::from_bytes(&[1]))
                .collect(),
        };
        let shape = |calls: Vec<Call>| -> Vec<Vec<u64>> {
            split_by_descriptors(calls)
                .into_iter()
                .map(|message| message.into_iter().map(|call| call.seq).collect())
                .collect()
        };
        assert_eq!(
            shape(vec![call(0, 0), call(1, 0), call(2, 0)]),
            [vec![0, 1, 2]]
        );
        assert_eq!(
            shape(vec![call(0, 40), call(1, 24), call(2, 1)]),
            [vec![0, 1], vec![2]]
        );
        assert_eq!(shape(vec![call(0, 70), call(1, 0)]), [vec![0], vec![1]]);
        assert!(shape(Vec::new()).is_empty());
    }

    #[test]
    fn a_returned_item_written_by_hand_is_the_encoded_one() {
        for len in [0, 1, 127, 128, 70_000] {
            let result: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = vec![9; 3];
            encode_returned_item(&result, &mut out);
            let item = ChunkItem::Returned(std::borrow::Cow::Borrowed(&result));
            assert_eq!(out, encode_item(&item, Vec::new()).unwrap(), "{len} bytes");
        }
    }

    #[test]
    fn chunk_args_encoded_owned_decode_borrowed() {
        let args: ChunkArgs = vec![
            serde_bytes::ByteBuf::from(vec![1, 2]),
            serde_bytes::ByteBuf::from(Vec::new()),
            serde_bytes::ByteBuf::from(vec![3; 300]),
        ];
        let bytes = encode(&args).unwrap();
        let decoded = decode_chunk_args(&bytes).unwrap();
        assert_eq!(decoded, [&[1, 2][..], &[], &[3; 300][..]]);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            decode_chunk_args(&trailing).unwrap_err(),
            "1 unexpected trailing bytes"
        );
        assert!(decode_chunk_args(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn chunk_items_laid_end_to_end_decode_in_order() {
        let mut bytes = Vec::new();
        for item in [
            ChunkItem::Returned(vec![7, 8, 9].into()),
            ChunkItem::Failed(Failure::UnknownTask),
            ChunkItem::Returned(vec![5; 300].into()),
            ChunkItem::Returned(Vec::new().into()),
        ] {
            bytes = encode_item(&item, bytes).unwrap();
        }
        let items = decode_items(&bytes).unwrap();
        assert!(
            matches!(&items[..], [
                ChunkItem::Returned(first),
                ChunkItem::Failed(Failure::UnknownTask),
                ChunkItem::Returned(long),
                ChunkItem::Returned(last),
            ] if **first == [7, 8, 9] && **long == [5; 300] && last.is_empty()),
            "{items:?}"
        );
        assert!(decode_items(&bytes[..bytes.len() - 1]).is_err());
    }
}
