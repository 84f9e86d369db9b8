//! `MapUnordered`: `map`'s results in completion order, each with the
//! index of its input.

use crate::error::Error;
use crate::future::{WakeSlot, Watcher};
use crate::map::{Chunk, Feed};
use crate::task::Task;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// The results of [`Executor::map_unordered`](crate::Executor::map_unordered)
/// (or [`Map::unordered`](crate::Map::unordered)) in the order they finish:
/// `(index of the input, result)`, one per input.
///
/// It pulls and sends inputs as [`Map`](crate::Map) does (lazily, in chunks,
/// within a bounded window, from the first call to `next`), but a slow
/// element holds back only itself (and the rest of its chunk), never the
/// results after it. Elements of one chunk are yielded together, in input
/// order. If the input iterator panics, [`Error::InputPanicked`] comes last,
/// with the index of the input that panicked.
///
/// ```
/// # #[loky::task] fn slow_square(x: u64) -> u64 {
/// #     std::thread::sleep(std::time::Duration::from_millis(x % 3));
/// #     x * x
/// # }
/// # fn main() -> Result<(), loky::Error> {
/// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
/// let mut squares = vec![0; 100];
/// for (index, result) in executor.map_unordered(slow_square, 0..100).chunksize(4) {
///     squares[index] = result?; // in whatever order they finish
/// }
/// assert_eq!(squares[99], 99 * 99);
/// # Ok(())
/// # }
/// ```
#[must_use = "a map does nothing until it is iterated"]
pub struct MapUnordered<T: Task, I> {
    feed: Feed<T, I>,
    /// The submitted chunks, by slot; a consumed chunk's slot is reused.
    slots: Vec<Option<Chunk<T::Output>>>,
    free: Vec<usize>,
    /// Submitted chunks not yet consumed.
    live: usize,
    key: u64,
    notify: Sender<usize>,
    /// The slots whose chunk is done, in the order they finished.
    finished: Receiver<usize>,
    /// Woken when a chunk finishes, for the `Stream` implementation.
    pub(crate) wake: Arc<WakeSlot>,
    /// The consumed chunk being yielded: its first index, its results.
    current: Option<(usize, Results<T::Output>)>,
}

/// A consumed chunk's results, numbered from 0.
type Results<R> = std::iter::Enumerate<crate::chunk_results::ChunkResults<R>>;

impl<T: Task, I: Iterator<Item = T::Args>> MapUnordered<T, I> {
    pub(crate) fn new(feed: Feed<T, I>) -> Self {
        let (notify, finished) = crossbeam_channel::unbounded();
        MapUnordered {
            feed,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            key: crate::wait::next_watch_key(),
            notify,
            finished,
            wake: Arc::default(),
            current: None,
        }
    }

    /// Sends inputs `chunksize` at a time: as [`Map::chunksize`](crate::Map::chunksize).
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        self.feed.set_chunksize(chunksize);
        self
    }

    /// Limits how long each call may run: as [`Map::timeout`](crate::Map::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.feed.set_timeout(timeout);
        self
    }

    /// How many chunks may be in flight: as
    /// [`Map::max_in_flight`](crate::Map::max_in_flight).
    pub fn max_in_flight(mut self, chunks: usize) -> Self {
        self.feed.set_max_in_flight(chunks);
        self
    }

    /// Retries elements whose worker died: as [`Map::retries`](crate::Map::retries).
    pub fn retries(mut self, retries: u32) -> Self {
        self.feed.set_retries(retries);
        self
    }

    #[cfg_attr(not(feature = "progress"), allow(dead_code))]
    pub(crate) fn feed(&self) -> &Feed<T, I> {
        &self.feed
    }

    fn insert(&mut self, chunk: Chunk<T::Output>) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        match chunk.future() {
            Some(future) => future.watch(Watcher {
                key: self.key,
                index: slot,
                notify: self.notify.clone(),
                wake: Some(Arc::clone(&self.wake)),
            }),
            // Submission failed: the chunk's error is ready now.
            None => {
                let _ = self.notify.send(slot);
            }
        }
        self.slots[slot] = Some(chunk);
        self.live += 1;
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> Iterator for MapUnordered<T, I> {
    type Item = (usize, Result<T::Output, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        // Every live chunk's future finishes (a worker's death and a
        // timeout fail it), and this map holds a sender: never stuck.
        let step = self.step(|finished| Some(finished.recv().expect("the map holds a sender")));
        match step {
            Poll::Ready(item) => item,
            Poll::Pending => unreachable!("a blocking wait always finds a chunk"),
        }
    }
}

impl<T: Task, I: Iterator<Item = T::Args>> MapUnordered<T, I> {
    /// The next item, once `wait_for` gives the slot of a finished chunk
    /// (`None` from it: pending).
    pub(crate) fn step(
        &mut self,
        mut wait_for: impl FnMut(&Receiver<usize>) -> Option<usize>,
    ) -> Poll<Option<<Self as Iterator>::Item>> {
        loop {
            if let Some((first, results)) = &mut self.current
                && let Some((offset, result)) = results.next()
            {
                return Poll::Ready(Some((*first + offset, result)));
            }
            self.current = None;
            while let Some(chunk) = self.feed.next_chunk() {
                self.insert(chunk);
            }
            if self.live == 0 {
                let index = self.feed.inputs_pulled();
                return Poll::Ready(self.feed.input_error().map(|error| (index, Err(error))));
            }
            let Some(slot) = wait_for(&self.finished) else {
                return Poll::Pending;
            };
            let Some(chunk) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            self.live -= 1;
            let first = chunk.meta.first;
            self.current = Some((first, self.feed.collect(chunk).enumerate()));
        }
    }
}

impl<T: Task, I> Drop for MapUnordered<T, I> {
    fn drop(&mut self) {
        for chunk in self.slots.iter().flatten() {
            if let Some(future) = chunk.future() {
                future.unwatch(self.key);
            }
        }
    }
}

impl<T: Task, I> std::fmt::Debug for MapUnordered<T, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.feed.fmt("MapUnordered", f)
    }
}
