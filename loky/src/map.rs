//! `Executor::map`: lazy, ordered, chunked, with a bounded number of chunks
//! in flight, so that an endless input works. The feed it shares with
//! `MapUnordered` pulls the input and submits the chunks.

use crate::chunk_results::ChunkResults;
use crate::error::Error;
use crate::executor::Executor;
use crate::future::Future;
use crate::job;
use crate::message::Message;
use crate::options::CallOptions;
use crate::task::Task;
use loky_worker::invoke::serde_stage;
use loky_worker::protocol::{CallKind, ChunkArgsBuilder, Stage};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// The ordered results of [`Executor::map`]: one `Result` per input.
///
/// Nothing runs until the first call to `next`: then, and as results are
/// consumed, inputs are pulled lazily and sent in chunks, a bounded window
/// of them submitted and not yet consumed (see
/// [`max_in_flight`](Self::max_in_flight)). A failing element yields its
/// error and the others go on. If the input iterator panics, the results
/// before it are yielded, then [`Error::InputPanicked`], then the iteration
/// ends. [`unordered`](Self::unordered) yields results as they finish
/// instead.
#[must_use = "a map does nothing until it is iterated"]
pub struct Map<T: Task, I> {
    pub(crate) feed: Feed<T, I>,
    pending: VecDeque<Chunk<T::Output>>,
    current: ChunkResults<T::Output>,
}

/// What `Map` and `MapUnordered` share: the lazy input, cut into chunks
/// and submitted while the window is open.
pub(crate) struct Feed<T: Task, I> {
    task: PhantomData<fn() -> T>,
    executor: Executor,
    input: I,
    chunksize: Option<usize>,
    timeout: Option<Duration>,
    /// Chunks submitted and not consumed, at most; `None`: the default
    /// window.
    max_in_flight: Option<usize>,
    retries: Option<u32>,
    /// Chunks submitted and not consumed.
    chunks: usize,
    /// Elements in the submitted, unconsumed chunks.
    elements: usize,
    /// The index of the next input.
    next_index: usize,
    adaptive: usize,
    input_done: bool,
    input_error: Option<Error>,
    /// An input pulled for a chunk it did not fit in (too many shared
    /// regions): the next chunk's first.
    carried: Option<T::Args>,
}

/// One submitted chunk.
pub(crate) struct Chunk<R> {
    /// The results of the elements that could be encoded.
    pub(crate) future: Result<Future<ChunkResults<R>>, Error>,
    pub(crate) meta: ChunkMeta,
}

/// What is known of a chunk besides its future.
pub(crate) struct ChunkMeta {
    /// Elements that failed before being sent: (position, error).
    early: Vec<(usize, Error)>,
    /// The index of its first input.
    pub(crate) first: usize,
    len: usize,
    submitted: Instant,
}

impl<R> Chunk<R> {
    /// The future of the elements sent, if any were.
    pub(crate) fn future(&self) -> Option<&Future<ChunkResults<R>>> {
        self.future.as_ref().ok()
    }
}

/// Elements per worker the default window keeps in flight.
const ELEMENTS_IN_FLIGHT: usize = 128;
/// The most chunks the default window submits.
const MAX_CHUNKS_IN_FLIGHT: usize = 512;

/// The largest automatic chunk.
const MAX_AUTO_CHUNK: usize = 4096;
/// An automatic chunk grows while chunks take less than this.
const CHUNK_TARGET: Duration = Duration::from_millis(20);

impl<T: Task, I: Iterator<Item = T::Args>> Map<T, I> {
    pub(crate) fn new(executor: Executor, _task: T, input: I) -> Self {
        Map {
            feed: Feed {
                task: PhantomData,
                executor,
                input,
                chunksize: None,
                timeout: None,
                max_in_flight: None,
                retries: None,
                chunks: 0,
                elements: 0,
                next_index: 0,
                adaptive: 1,
                input_done: false,
                input_error: None,
                carried: None,
            },
            pending: VecDeque::new(),
            current: ChunkResults::ready(Vec::new()),
        }
    }

    /// Sends inputs `chunksize` at a time; 0 (the default) chooses
    /// automatically: from the input's length when it is known, otherwise
    /// growing from 1 while chunks finish quickly.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        self.feed.set_chunksize(chunksize);
        self
    }

    /// Limits how long each call may run in its worker, as
    /// [`Executor::submit_timeout`] does: at expiry the worker is killed and
    /// replaced, and the element fails with [`Error::TaskTimeout`]. The limit
    /// applies to each chunk (as in pebble), so with a timeout and no
    /// explicit [`chunksize`](Self::chunksize), elements are sent one by one.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.feed.set_timeout(timeout);
        self
    }

    /// How many chunks may be submitted and not yet consumed. At least 1.
    /// By default twice the number of workers, and more while chunks are
    /// small, until 128 elements per worker are in flight (at most 512
    /// chunks): short tasks then never wait for the next submission.
    pub fn max_in_flight(mut self, chunks: usize) -> Self {
        self.feed.set_max_in_flight(chunks);
        self
    }

    /// Runs an element again, on another worker, if its worker dies while
    /// running it (or, on a cluster, its host is lost), up to `retries`
    /// more times: see
    /// [`Config::retries`](crate::Config::retries).
    pub fn retries(mut self, retries: u32) -> Self {
        self.feed.set_retries(retries);
        self
    }

    /// Yields each result as soon as it is ready, with the index of its
    /// input, instead of in input order: see [`MapUnordered`]. Keeps the
    /// chunk size, timeout and window set so far.
    ///
    /// [`MapUnordered`]: crate::MapUnordered
    pub fn unordered(self) -> crate::MapUnordered<T, I> {
        debug_assert!(self.pending.is_empty(), "not iterated yet");
        crate::MapUnordered::new(self.feed)
    }
}

impl<T: Task, I> Feed<T, I> {
    /// 0: automatic.
    pub(crate) fn set_chunksize(&mut self, chunksize: usize) {
        self.chunksize = (chunksize > 0).then_some(chunksize);
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }

    /// At least 1.
    pub(crate) fn set_max_in_flight(&mut self, chunks: usize) {
        self.max_in_flight = Some(chunks.max(1));
    }

    pub(crate) fn set_retries(&mut self, retries: u32) {
        self.retries = Some(retries);
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> Feed<T, I> {
    /// Whether another chunk may be submitted.
    fn window_open(&self) -> bool {
        match self.max_in_flight {
            Some(max) => self.chunks < max,
            None => {
                let workers = self.executor.max_workers();
                self.chunks < workers.saturating_mul(2).max(2)
                    || (self.elements < workers.saturating_mul(ELEMENTS_IN_FLIGHT)
                        && self.chunks < MAX_CHUNKS_IN_FLIGHT)
            }
        }
    }

    fn next_chunk_size(&self) -> usize {
        if let Some(size) = self.chunksize {
            return size;
        }
        if self.timeout.is_some() {
            return 1;
        }
        match self.input.size_hint() {
            (_, Some(remaining)) => {
                let workers = self.executor.max_workers();
                remaining
                    .div_ceil(workers.saturating_mul(4))
                    .clamp(1, MAX_AUTO_CHUNK)
            }
            (_, None) => self.adaptive,
        }
    }

    /// Pulls inputs and submits the next chunk if the window is open and
    /// inputs remain.
    pub(crate) fn next_chunk(&mut self) -> Option<Chunk<T::Output>> {
        if self.input_done || !self.window_open() {
            return None;
        }
        let size = self.next_chunk_size();
        let mut encoded = ChunkArgsBuilder::default();
        // A chunk of one travels as a single call: no chunk bookkeeping on
        // either side, and it may go straight to an idle worker.
        let mut single = None;
        let mut early = Vec::new();
        let mut len = 0;
        let ((), regions) = loky_worker::shared_bytes::collect(|| {
            // A chunk ends early rather than carry more regions than one
            // message may (one left for its arguments' own).
            let room = loky_worker::protocol::MAX_DESCRIPTORS - 1;
            while len < size && loky_worker::shared_bytes::collected() < room {
                let next = match self.carried.take() {
                    Some(args) => Ok(Some(args)),
                    None => panic::catch_unwind(AssertUnwindSafe(|| self.input.next())),
                };
                match next {
                    Ok(Some(args)) if size == 1 => {
                        match job::encode_call_args(T::ID, &args) {
                            Ok(payload) => single = Some(payload),
                            Err(error) => early.push((len, error)),
                        }
                        len += 1;
                    }
                    Ok(Some(args)) => {
                        let before = (encoded.checkpoint(), loky_worker::shared_bytes::collected());
                        let pushed = serde_stage(Stage::EncodeArgs, || {
                            encoded.push(|out| args.encode_into(out))
                        });
                        if pushed.is_ok()
                            && loky_worker::shared_bytes::collected() > room
                            && encoded.len() > 1
                        {
                            // Its regions do not fit beside the others': it
                            // opens the next chunk instead.
                            encoded.rollback(before.0);
                            loky_worker::shared_bytes::forget_after(before.1);
                            self.carried = Some(args);
                            break;
                        }
                        if let Err(failure) = pushed {
                            // Nothing of it travels (a panic may have left
                            // some bytes), its regions neither.
                            encoded.rollback(before.0);
                            loky_worker::shared_bytes::forget_after(before.1);
                            early.push((len, Error::from_failure(T::ID, None, failure)));
                        }
                        len += 1;
                    }
                    Ok(None) => {
                        self.input_done = true;
                        break;
                    }
                    Err(payload) => {
                        self.input_done = true;
                        self.input_error = Some(Error::InputPanicked {
                            message: loky_worker::panic::payload_message(&*payload),
                        });
                        break;
                    }
                }
            }
        });
        if len == 0 {
            return None;
        }
        let options = CallOptions {
            timeout: self.timeout,
            retries: self.retries,
        };
        let future = if let Some(payload) = single {
            let args = crate::task::registered(T::ID).map(|()| payload);
            self.executor.submit_encoded(
                T::ID,
                CallKind::Single,
                (args, regions),
                options,
                job::decode_as_chunk::<T::Output>,
            )
        } else if encoded.is_empty() {
            // Every element failed before it could be sent.
            let (future, state) = Future::new(T::ID);
            state.finish(crate::future::Held::Ready(Ok(ChunkResults::ready(
                Vec::new(),
            ))));
            Ok(future)
        } else {
            let bytes = crate::task::registered(T::ID)
                .and_then(|()| job::pack_args(T::ID, encoded.finish()));
            self.executor.submit_encoded(
                T::ID,
                CallKind::Chunk,
                (bytes, regions),
                options,
                job::decode_chunk::<T::Output>,
            )
        };
        self.chunks += 1;
        self.elements += len;
        let first = self.next_index;
        self.next_index += len;
        Some(Chunk {
            future,
            meta: ChunkMeta {
                early,
                first,
                len,
                submitted: Instant::now(),
            },
        })
    }

    /// What the input says of its remaining length.
    #[cfg_attr(not(feature = "progress"), allow(dead_code))]
    pub(crate) fn input_size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = self.input.size_hint();
        let pulled = self.next_index;
        (
            low.saturating_add(pulled),
            high.and_then(|high| high.checked_add(pulled)),
        )
    }

    /// How many inputs were pulled so far.
    pub(crate) fn inputs_pulled(&self) -> usize {
        self.next_index
    }

    /// The input's panic, once every chunk before it is consumed.
    pub(crate) fn input_error(&mut self) -> Option<Error> {
        self.input_error.take()
    }

    /// Waits for `chunk` and returns its results in input order.
    pub(crate) fn collect(&mut self, chunk: Chunk<T::Output>) -> ChunkResults<T::Output> {
        let Chunk { future, meta } = chunk;
        self.settle(meta, future.and_then(Future::result))
    }

    /// The results of the chunk described by `meta`, in input order, from
    /// its future's `outcome`.
    pub(crate) fn settle(
        &mut self,
        chunk: ChunkMeta,
        outcome: Result<ChunkResults<T::Output>, Error>,
    ) -> ChunkResults<T::Output> {
        self.chunks -= 1;
        self.elements -= chunk.len;
        let sent = chunk.len - chunk.early.len();
        let results = match outcome {
            Ok(results) if results.len() == sent => results,
            Ok(results) => {
                let reason = format!("a chunk of {sent} came back with {} results", results.len());
                ChunkResults::ready(
                    (0..sent)
                        .map(|_| {
                            Err(Error::Broken {
                                reason: reason.clone(),
                            })
                        })
                        .collect(),
                )
            }
            Err(error) => ChunkResults::ready((0..sent).map(|_| Err(error.clone())).collect()),
        };
        if chunk.submitted.elapsed() < CHUNK_TARGET {
            self.adaptive = (self.adaptive * 2).min(MAX_AUTO_CHUNK);
        } else {
            self.adaptive = (self.adaptive / 2).max(1);
        }
        if chunk.early.is_empty() {
            return results;
        }
        let mut early = chunk.early.into_iter().peekable();
        let mut sent = results;
        ChunkResults::ready(
            (0..chunk.len)
                .map(|position| match early.next_if(|(p, _)| *p == position) {
                    Some((_, error)) => Err(error),
                    None => sent.next().expect("one result per sent element"),
                })
                .collect(),
        )
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> Iterator for Map<T, I> {
    type Item = Result<T::Output, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(item);
            }
            while let Some(chunk) = self.feed.next_chunk() {
                self.pending.push_back(chunk);
            }
            match self.pending.pop_front() {
                Some(chunk) => self.current = self.feed.collect(chunk),
                None => return self.feed.input_error().map(Err),
            }
        }
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> Map<T, I> {
    /// The next item without blocking: `Pending` (with `cx` woken later)
    /// while the oldest chunk runs.
    #[cfg(feature = "stream")]
    pub(crate) fn poll_step(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<T::Output, Error>>> {
        use std::task::Poll;
        loop {
            if let Some(item) = self.current.next() {
                return Poll::Ready(Some(item));
            }
            while let Some(chunk) = self.feed.next_chunk() {
                self.pending.push_back(chunk);
            }
            let Some(head) = self.pending.front_mut() else {
                return Poll::Ready(self.feed.input_error().map(Err));
            };
            let outcome = match &mut head.future {
                Ok(future) => match std::future::Future::poll(std::pin::Pin::new(future), cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => return Poll::Pending,
                },
                Err(error) => Err(error.clone()),
            };
            let Chunk { meta, .. } = self.pending.pop_front().expect("polled above");
            self.current = self.feed.settle(meta, outcome);
        }
    }
}

impl<T: Task, I> std::fmt::Debug for Map<T, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.feed.fmt("Map", f)
    }
}

impl<T: Task, I> Feed<T, I> {
    pub(crate) fn fmt(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("task", &T::ID)
            .field("chunksize", &self.chunksize)
            .field("timeout", &self.timeout)
            .field("chunks_in_flight", &self.chunks)
            .field("elements_in_flight", &self.elements)
            .field("input_done", &self.input_done)
            .finish_non_exhaustive()
    }
}
