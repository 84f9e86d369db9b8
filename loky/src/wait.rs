//! Waiting on several futures: [`wait`] and [`as_completed`], as in
//! `concurrent.futures`.

use crate::error::Error;
use crate::future::{Future, WakeSlot, Watcher};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When [`wait`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any future is done.
    FirstCompleted,
    /// As soon as any future fails (or when all are done).
    FirstException,
    /// When all futures are done.
    AllCompleted,
}

/// What [`wait`] found: indices into the slice it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitResult {
    /// The futures that are done, in index order.
    pub done: Vec<usize>,
    /// The others, in index order.
    pub not_done: Vec<usize>,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// A key no other set of watchers uses.
pub(crate) fn next_watch_key() -> u64 {
    NEXT_KEY.fetch_add(1, Ordering::Relaxed)
}

/// Registers one watcher on every future; each sends its index once done
/// (and wakes `wake`, if given).
fn watch_all<R>(futures: &[Future<R>], wake: Option<&Arc<WakeSlot>>) -> (u64, Receiver<usize>) {
    let key = next_watch_key();
    let (notify, done) = crossbeam_channel::unbounded();
    for (index, future) in futures.iter().enumerate() {
        future.watch(Watcher {
            key,
            index,
            notify: notify.clone(),
            wake: wake.cloned(),
        });
    }
    (key, done)
}

/// Blocks until `return_when` is met or `timeout` passes, and says which
/// futures are done.
///
/// ```
/// use loky::{ReturnWhen, WaitResult};
/// use std::time::Duration;
///
/// #[loky::task]
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// # fn main() -> Result<(), loky::Error> {
/// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
/// let futures = vec![executor.submit(nap, 60_000)?, executor.submit(nap, 10)?];
/// let timeout = Some(Duration::from_secs(30));
/// let WaitResult { done, not_done } = loky::wait(&futures, timeout, ReturnWhen::FirstCompleted);
/// assert_eq!((done, not_done), (vec![1], vec![0]));
/// futures[0].cancel(); // no longer needed
/// # Ok(())
/// # }
/// ```
pub fn wait<R>(
    futures: &[Future<R>],
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> WaitResult {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let (key, notifications) = watch_all(futures, None);
    let mut done = vec![false; futures.len()];
    let mut count = 0;
    let mut failed = false;
    loop {
        let satisfied = match return_when {
            ReturnWhen::FirstCompleted => count > 0 || futures.is_empty(),
            ReturnWhen::FirstException => failed || count == futures.len(),
            ReturnWhen::AllCompleted => count == futures.len(),
        };
        if satisfied {
            break;
        }
        let index = match deadline {
            None => notifications
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => notifications.recv_deadline(deadline),
        };
        let Ok(index) = index else { break };
        if !done[index] {
            done[index] = true;
            count += 1;
            failed |= futures[index].failed_now();
        }
    }
    for future in futures {
        future.unwatch(key);
    }
    let (done, not_done) = (0..futures.len()).partition(|&i| done[i]);
    WaitResult { done, not_done }
}

/// Yields the futures as they finish, in completion order. If `timeout`
/// passes first, yields one [`Error::WaitTimeout`] and stops.
///
/// ```
/// #[loky::task]
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
///     ms
/// }
///
/// # fn main() -> Result<(), loky::Error> {
/// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
/// let futures = vec![executor.submit(nap, 300)?, executor.submit(nap, 10)?];
/// let mut order = Vec::new();
/// for future in loky::as_completed(futures, None) {
///     order.push(future?.result()?);
/// }
/// assert_eq!(order, [10, 300]);
/// # Ok(())
/// # }
/// ```
pub fn as_completed<R>(futures: Vec<Future<R>>, timeout: Option<Duration>) -> AsCompleted<R> {
    let wake = Arc::new(WakeSlot::default());
    let (key, notifications) = watch_all(&futures, Some(&wake));
    AsCompleted {
        wake,
        timer: false,
        remaining: futures.len(),
        futures: futures.into_iter().map(Some).collect(),
        key,
        notifications,
        started: Instant::now(),
        timeout,
    }
}

/// The iterator returned by [`as_completed`].
pub struct AsCompleted<R> {
    /// Woken when a future finishes, for the `Stream` implementation.
    #[cfg_attr(not(feature = "stream"), allow(dead_code))]
    pub(crate) wake: Arc<WakeSlot>,
    /// Whether a thread wakes `wake` at the timeout.
    #[cfg_attr(not(feature = "stream"), allow(dead_code))]
    pub(crate) timer: bool,
    futures: Vec<Option<Future<R>>>,
    remaining: usize,
    key: u64,
    notifications: Receiver<usize>,
    started: Instant,
    timeout: Option<Duration>,
}

impl<R> AsCompleted<R> {
    /// How many futures are still to come.
    #[cfg_attr(not(feature = "progress"), allow(dead_code))]
    pub(crate) fn remaining(&self) -> usize {
        self.remaining
    }

    /// The timeout and when it expires, if there is one.
    pub(crate) fn deadline(&self) -> Option<(Duration, Instant)> {
        let timeout = self.timeout?;
        Some((timeout, self.started.checked_add(timeout)?))
    }

    /// The item for a notification: the future at `index`, if not yielded
    /// yet (a stale notification yields nothing).
    pub(crate) fn take(&mut self, index: usize) -> Option<Future<R>> {
        let future = self.futures.get_mut(index).and_then(Option::take)?;
        self.remaining -= 1;
        Some(future)
    }

    /// The item that ends the iteration at the timeout.
    pub(crate) fn expire(&mut self, timeout: Duration) -> Error {
        self.remaining = 0;
        Error::WaitTimeout { waited: timeout }
    }

    #[cfg_attr(not(feature = "stream"), allow(dead_code))]
    pub(crate) fn notifications(&self) -> &Receiver<usize> {
        &self.notifications
    }
}

impl<R> Iterator for AsCompleted<R> {
    type Item = Result<Future<R>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.remaining > 0 {
            let index = match self.deadline() {
                None => self.notifications.recv().ok(),
                Some((timeout, deadline)) => match self.notifications.recv_deadline(deadline) {
                    Ok(index) => Some(index),
                    Err(_) => return Some(Err(self.expire(timeout))),
                },
            };
            if let Some(future) = self.take(index?) {
                return Some(Ok(future));
            }
        }
        None
    }
}

impl<R> Drop for AsCompleted<R> {
    fn drop(&mut self) {
        for future in self.futures.iter().flatten() {
            future.unwatch(self.key);
        }
    }
}

impl<R> std::fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.remaining)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
