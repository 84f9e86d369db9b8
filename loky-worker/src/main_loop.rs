//! The worker's life: connect to the parent, introduce itself, then receive a
//! call, claim it on the board, look its task up by id, run it, send the
//! outcome; until told to stop or until the parent goes away.
//!
//! [`serve`] is the loop itself, over any [`Inbox`] and [`Outbox`]: the
//! process's ipc-channel link, or channels in the parent's own process for
//! the manager's unit tests.

use crate::batch::Batch;
use crate::fault;
use crate::invoke;
use crate::memory::MemoryWatch;
use crate::protocol::{
    self, Board, Bootstrap, Call, CallKind, ChunkItem, EXIT_HANDSHAKE_FAILED, EXIT_PROTOCOL_ERROR,
    Failure, FromWorker, Hello, Link, Outcome, PROTOCOL_VERSION, Packing, Payload, Readable,
    Report, Stage, ToWorker,
};
use crate::registry;
use ipc_channel::IpcError;
use ipc_channel::ipc::{self, IpcReceiver, IpcSender};

/// Where a worker's messages come from.
pub trait Inbox {
    /// The next message; `Ok(None)` once the parent is gone.
    fn recv(&mut self) -> Result<Option<ToWorker>, String>;
}

/// Where a worker's messages go.
pub trait Outbox {
    /// Sends a message; false once the parent is gone.
    fn send(&self, message: FromWorker) -> bool;
}

impl Inbox for IpcReceiver<ToWorker> {
    fn recv(&mut self) -> Result<Option<ToWorker>, String> {
        match IpcReceiver::recv(self) {
            Ok(message) => Ok(Some(message)),
            Err(IpcError::Disconnected) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// A worker process's outbox: its executor's result channel, each message
/// under the worker's tag.
#[derive(Clone)]
pub(crate) struct Reporter(Link);

impl Outbox for Reporter {
    fn send(&self, message: FromWorker) -> bool {
        let report = Report::From {
            tag: self.0.tag,
            message: Readable::Read(message),
        };
        self.0.results.send(report).is_ok()
    }
}

/// An inbox whose first message was read already.
struct Replay<I> {
    first: Option<ToWorker>,
    rest: I,
}

impl<I: Inbox> Inbox for Replay<I> {
    fn recv(&mut self) -> Result<Option<ToWorker>, String> {
        match self.first.take() {
            Some(first) => Ok(Some(first)),
            None => self.rest.recv(),
        }
    }
}

/// Runs a worker connected to the parent's one-shot server `server`, and
/// returns the process exit code.
pub fn run(server: String, secret: u64) -> i32 {
    let mut calls = match handshake(server, secret) {
        Ok(calls) => calls,
        Err(error) => {
            eprintln!(
                "loky worker {}: handshake failed: {error}",
                std::process::id()
            );
            return EXIT_HANDSHAKE_FAILED;
        }
    };
    // The setup says where to report; `serve` reads it again.
    let (first, results) = match Inbox::recv(&mut calls) {
        Ok(Some(ToWorker::Setup(mut setup))) => match setup.link.take() {
            Some(link) => (ToWorker::Setup(setup), Reporter(link)),
            None => return protocol_error("a setup without a result channel"),
        },
        Ok(Some(ToWorker::Shutdown) | None) => return 0,
        Ok(Some(ToWorker::Calls(_))) => return protocol_error("a call before the board"),
        Err(error) => return protocol_error(&error),
    };
    crate::logs::install(&results);
    crate::output::install();
    let calls = Replay {
        first: Some(first),
        rest: calls,
    };
    serve(calls, &results, Some(MemoryWatch::from_env()))
}

/// The worker loop: returns the exit code. `memory` watches this process's
/// memory, if it is a worker process of its own.
#[doc(hidden)]
pub fn serve(
    mut calls: impl Inbox,
    results: &(impl Outbox + Sync),
    memory: Option<MemoryWatch>,
) -> i32 {
    // The board comes first.
    let (board, spin) = match calls.recv() {
        Ok(Some(ToWorker::Setup(setup))) => match Board::from_shared(setup.board) {
            Ok(board) => (board, setup.spin.min(crate::spin::MAX_SPIN)),
            Err(error) => return protocol_error(&error),
        },
        Ok(Some(ToWorker::Calls(_))) => return protocol_error("a call before the board"),
        Ok(Some(ToWorker::Shutdown) | None) => return 0,
        Err(error) => return protocol_error(&error),
    };
    let batch = Batch::new(&board, results);
    std::thread::scope(|scope| {
        // Without it (the OS refused a thread), outcomes go one by one.
        let _flusher = std::thread::Builder::new()
            .name("loky-flusher".to_owned())
            .spawn_scoped(scope, || batch.run_flusher());
        // Stopped however the loop ends: a panic escaping it (a bug of
        // ours; the task's own are caught) must not leave the scope
        // waiting for the flusher forever. In a worker process it then
        // unwinds out of the entry (which aborts, or, entered from
        // `main`, ends the process with code 101): a death the parent
        // reports, not a hang.
        let _stop = StopOnExit(&batch);
        serve_calls(calls, &board, spin, &batch, results, memory)
    })
}

/// Stops the flusher when dropped.
struct StopOnExit<'a, 'b, O: Outbox>(&'a Batch<'b, O>);

impl<O: Outbox> Drop for StopOnExit<'_, '_, O> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Runs the calls as they come, until the parent says stop or goes.
fn serve_calls(
    mut calls: impl Inbox,
    board: &Board,
    spin: std::time::Duration,
    batch: &Batch<'_, impl Outbox>,
    results: &impl Outbox,
    mut memory: Option<MemoryWatch>,
) -> i32 {
    let mut retiring = false;
    // Calls received and not yet run, in order.
    let mut waiting = std::collections::VecDeque::new();
    // `Calls` messages received, against the board's doorbell.
    let mut received = 0u64;
    let mut exchanging = true;
    // The last call's outcome went to a caller through the reply box.
    let mut replied = false;
    // When the last call, sent alone, started.
    let mut alone_since: Option<std::time::Instant> = None;
    // Where an outcome for the reply box is encoded, reused.
    let mut record = Vec::new();
    loop {
        let call = match waiting.pop_front() {
            Some(call) => call,
            None => {
                // Nothing left to run: what is held back goes now.
                if !batch.flush() {
                    return 0;
                }
                // Calls sent one at a time are an exchange: the next one is
                // often microseconds after this answer, so look for it on
                // the board before sleeping in the socket. Calls sent in
                // batches come from a busy feeder, whose CPU looking would
                // take.
                if exchanging {
                    // Not on the CPU of the caller that took the last
                    // outcome from the box: it is about to send the next.
                    // Only after a short call: after a long one the
                    // exchange gains little beside the call, and the
                    // other CPU may be a busy worker's.
                    let short = alone_since
                        .is_some_and(|since| since.elapsed() < crate::spin::STEP_ASIDE_AFTER);
                    if replied
                        && short
                        && let Some(cpu) = board.caller_cpu()
                    {
                        crate::spin::step_aside(cpu);
                    }
                    crate::spin::until(spin, || board.rung() != received);
                }
                match calls.recv() {
                    Ok(Some(ToWorker::Setup(_))) => return protocol_error("a second board"),
                    Ok(Some(ToWorker::Calls(calls))) => {
                        received += 1;
                        exchanging = calls.len() == 1;
                        waiting.extend(calls);
                        continue;
                    }
                    Ok(Some(ToWorker::Shutdown) | None) => return 0,
                    Err(error) => return protocol_error(&error),
                }
            }
        };
        if !board.claim(call.seq) {
            // Taken back by the parent: it never runs.
            continue;
        }
        let seq = call.seq;
        let kind = call.kind;
        alone_since = (exchanging && waiting.is_empty()).then(std::time::Instant::now);
        if kind == CallKind::Chunk && !batch.flush() {
            return 0;
        }
        let outcome = execute(call, board, results);
        // Held back only while more calls wait: the last one's outcome
        // goes at once (and what was held with it, just after).
        replied = false;
        let held = kind == CallKind::Single
            && if waiting.is_empty() {
                // A caller watching for it takes it from the board.
                replied = board.watched(seq) && reply(board, seq, &outcome, &mut record);
                replied
            } else {
                batch.hold(seq, &outcome)
            };
        if !held && !results.send(FromWorker::Done { seq, outcome }) {
            // The parent is gone: nobody is left to serve.
            return 0;
        }
        fault::after_call();
        if !retiring && let Some(reason) = memory.as_mut().and_then(MemoryWatch::after_task) {
            // Keep serving until the parent says stop.
            retiring = batch.flush() && results.send(FromWorker::Retire(reason));
        }
    }
}

/// Puts call `seq`'s outcome in the board's reply box, for the caller
/// watching for it; false if it must be sent instead.
fn reply(board: &Board, seq: u64, outcome: &Outcome, record: &mut Vec<u8>) -> bool {
    let mut buffer = std::mem::take(record);
    buffer.clear();
    let Some(encoded) = protocol::encode_settled(seq, outcome, buffer) else {
        return false;
    };
    let replied = board.reply(seq, &encoded);
    *record = encoded;
    if replied {
        fault::after_reply();
    }
    replied
}

fn protocol_error(error: &str) -> i32 {
    eprintln!("loky worker {}: bad message: {error}", std::process::id());
    EXIT_PROTOCOL_ERROR
}

fn handshake(server: String, secret: u64) -> Result<IpcReceiver<ToWorker>, String> {
    let version = fault::before_handshake(PROTOCOL_VERSION);
    let bootstrap = IpcSender::<Bootstrap>::connect(server).map_err(|e| e.to_string())?;
    let (calls_tx, calls_rx) = ipc::channel().map_err(|e| e.to_string())?;
    // The hello's own result channel is not used (`Hello::results`): its
    // sending end closes at once.
    let (_, results_rx) = ipc::channel::<FromWorker>().map_err(|e| e.to_string())?;
    bootstrap
        .send(Bootstrap::Hello(Hello {
            version,
            secret,
            pid: std::process::id(),
            calls: calls_tx,
            results: results_rx,
        }))
        .map_err(|e| e.to_string())?;
    Ok(calls_rx)
}

/// Tells the log forwarder and the output markers which task runs now.
fn running(task: Option<&str>) {
    crate::logs::running(task);
    crate::output::running(task);
}

/// Runs one call (or chunk) and says what became of it.
fn execute(mut call: Call, board: &Board, results: &impl Outbox) -> Outcome {
    if fault::forgotten(&call.task) {
        return Outcome::Failed(Failure::UnknownTask);
    }
    let entry = match registry::lookup(&call.task).entry() {
        Ok(entry) => entry,
        Err(failure) => return Outcome::Failed(failure),
    };
    let args = call.args.bytes();
    running(Some(&call.task));
    let regions = std::mem::take(&mut call.regions);
    let encoded = crate::shared_bytes::provide(regions, || match call.kind {
        CallKind::Single => entry.invoke(args, Packing::Result),
        CallKind::Chunk => {
            let invoke = |one: &[u8], out: &mut Vec<u8>| entry.invoke_into(one, out);
            run_chunk(call.seq, invoke, args, board, results).map(Payload::pack_result)
        }
    });
    running(None);
    match encoded {
        Ok(payload) => Outcome::Returned(payload),
        Err(failure) => Outcome::Failed(failure),
    }
}

/// Runs every element of a chunk; one element's failure is its own. Each
/// outcome goes to the board's arena as soon as it is known (flushed as
/// `FromWorker::Items` when full), so a crash loses none of them; the
/// outcomes still in the arena at the end are returned.
fn run_chunk(
    seq: u64,
    invoke: impl Fn(&[u8], &mut Vec<u8>) -> Result<(), Failure>,
    args: &[u8],
    board: &Board,
    results: &impl Outbox,
) -> Result<Vec<u8>, Failure> {
    let elements = invoke::serde_stage(Stage::DecodeArgs, || protocol::decode_chunk_args(args))?;
    board.chunk_begin(seq);
    // One buffer for every element's encoded outcome, one for its result.
    let mut encoded = Vec::new();
    let mut result = Vec::new();
    for (index, one) in (0u64..).zip(elements) {
        board.element_started(index);
        result.clear();
        let encoded_item = match invoke(one, &mut result) {
            Ok(()) => {
                protocol::encode_returned_item(&result, &mut encoded);
                Ok(())
            }
            Err(failure) => {
                encoded.clear();
                let item = ChunkItem::Failed(failure);
                protocol::encode_item(&item, std::mem::take(&mut encoded)).map(|bytes| {
                    encoded = bytes;
                })
            }
        };
        if let Err(message) = encoded_item {
            let failure = ChunkItem::Failed(Failure::Serde {
                stage: Stage::EncodeResult,
                message,
            });
            encoded = protocol::encode_item(&failure, Vec::new()).expect("a failure encodes");
        }
        if board.arena_push(&encoded) {
            continue;
        }
        flush(seq, board, results);
        if !board.arena_push(&encoded) {
            // Larger than the whole arena: straight to the parent.
            let items = Payload::pack_result(std::mem::take(&mut encoded));
            let sent = results.send(FromWorker::Items {
                seq,
                first: index,
                count: 1,
                items,
            });
            if !sent {
                return Ok(Vec::new());
            }
            board.arena_reset(index + 1);
        }
    }
    Ok(board.arena_items().2)
}

/// Sends the arena's outcomes to the parent, then empties it. Sent before
/// the reset, so that a crash in between duplicates outcomes (the parent
/// ignores those it has) rather than losing them.
fn flush(seq: u64, board: &Board, results: &impl Outbox) {
    let (first, count, bytes) = board.arena_items();
    if count == 0 {
        return;
    }
    let items = Payload::pack_result(bytes);
    if results.send(FromWorker::Items {
        seq,
        first,
        count,
        items,
    }) {
        board.arena_reset(first + count);
    }
}
