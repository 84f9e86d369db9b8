//! The future of one task: its state machine, its result, its callbacks.
//!
//! States: `Pending` -> `Finished`, or `Pending` -> `Cancelled`. A pending
//! future sent to a worker holds a [`Claim`]: its slot on that worker's
//! board, where the worker marks it started before running it. "Started"
//! means exactly that mark, so [`Future::running`] reads it, and
//! [`Future::cancel`] takes the call back on the board: if that wins, the
//! call never runs; if the worker won, it is running and its worker is
//! killed.
//!
//! A worker's result is stored as it arrived, encoded, and decoded by the
//! thread that takes it (`result`, `.await`, a waiter), so that a slow
//! `Deserialize` never holds up the manager's timers and dispatch. Only
//! done-callbacks, which need the value where the future completes, have it
//! decoded there.
//!
//! A thread that waits for an outcome (`result`, `wait_timeout`) first
//! looks at the future's published flag for `Config::spin_wait`, then
//! sleeps on its condition variable (`loky_worker::spin`).
//!
//! Architecture Invariant: a future finishes exactly once; every callback
//! runs exactly once, after the outcome is known and outside any lock.
//! While callbacks run, the outcome is lent to them: `result` waits until
//! they are done, so it can still move the value out.

use crate::error::Error;
use crate::job::Claim;
use crossbeam_channel::Sender;
use loky_worker::protocol::Claim as ClaimState;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The pending result of a task run by an executor.
///
/// Like `concurrent.futures.Future`: query it with [`done`](Self::done),
/// [`running`](Self::running) and [`cancelled`](Self::cancelled), get the
/// outcome with [`result`](Self::result), react to it with
/// [`add_done_callback`](Self::add_done_callback), or `.await` it in any
/// async runtime.
#[must_use = "a future does nothing by itself; the task runs anyway, but its result is lost"]
pub struct Future<R> {
    state: Arc<State<R>>,
}

type Callback<R> = Box<dyn FnOnce(&Result<R, Error>) + Send>;

/// An outcome as a future holds it.
pub(crate) enum Held<R> {
    /// Known as a value (or an error).
    Ready(Result<R, Error>),
    /// A worker's result, decoded when first needed, outside any lock
    /// where it can be.
    Encoded(Box<dyn FnOnce() -> Result<R, Error> + Send>),
}

impl<R> Held<R> {
    fn decode(self) -> Result<R, Error> {
        match self {
            Held::Ready(outcome) => outcome,
            Held::Encoded(decode) => decode(),
        }
    }
}

pub(crate) struct State<R> {
    task: &'static str,
    inner: Mutex<Inner<R>>,
    changed: Condvar,
    /// Tells the executor that a task a worker holds was cancelled, so
    /// that it drops the call or, if it is running, kills the worker.
    /// Unset for futures no executor runs.
    on_cancel: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Set when the outcome is published: what a spinning waiter looks at.
    published: AtomicBool,
    /// A waiter looked for the outcome already: later waits sleep at once.
    spun: AtomicBool,
    /// How long a waiter looks for the outcome before it sleeps, in
    /// nanoseconds (`Config::spin_wait`; zero for futures no worker
    /// settles).
    spin_nanos: AtomicU64,
}

struct Inner<R> {
    phase: Phase,
    /// Where the call stands on its worker's board, while a worker holds it.
    claim: Option<Claim>,
    /// The outcome, once finished, until it is moved out or lent out.
    outcome: Option<Held<R>>,
    /// Callbacks currently hold the outcome.
    lent: bool,
    /// The outcome was moved out by `poll`.
    taken: bool,
    callbacks: Vec<Callback<R>>,
    watchers: Vec<Watcher>,
    waker: Option<Waker>,
    /// Threads asleep on `changed`: most futures have none when they
    /// finish, and a wake-up is a system call.
    sleepers: usize,
}

/// Someone waiting on several futures at once: see [`crate::wait`].
pub(crate) struct Watcher {
    pub(crate) key: u64,
    pub(crate) index: usize,
    pub(crate) notify: Sender<usize>,
    /// An async consumer of `notify`, woken after each index is sent.
    pub(crate) wake: Option<Arc<WakeSlot>>,
}

impl Watcher {
    /// Says that future `index` is done.
    fn fire(&self) {
        let _ = self.notify.send(self.index);
        if let Some(wake) = &self.wake {
            wake.wake();
        }
    }
}

/// The waker of a task that polls a stream of several futures; any of them
/// finishing wakes it.
#[derive(Default)]
pub(crate) struct WakeSlot {
    waker: Mutex<Option<Waker>>,
}

impl WakeSlot {
    /// Wakes `waker` on the next [`wake`](Self::wake).
    #[cfg_attr(not(feature = "stream"), allow(dead_code))]
    pub(crate) fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *slot {
            Some(old) if old.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    pub(crate) fn wake(&self) {
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Finished,
    Cancelled,
}

impl<R> Future<R> {
    /// A new pending future, and the state its executor completes.
    pub(crate) fn new(task: &'static str) -> (Future<R>, Arc<State<R>>) {
        let state = Arc::new(State {
            task,
            inner: Mutex::new(Inner {
                phase: Phase::Pending,
                claim: None,
                outcome: None,
                lent: false,
                taken: false,
                callbacks: Vec::new(),
                watchers: Vec::new(),
                waker: None,
                sleepers: 0,
            }),
            changed: Condvar::new(),
            on_cancel: OnceLock::new(),
            published: AtomicBool::new(false),
            spun: AtomicBool::new(false),
            spin_nanos: AtomicU64::new(0),
        });
        (
            Future {
                state: Arc::clone(&state),
            },
            state,
        )
    }

    /// A future that has already failed.
    pub(crate) fn failed(task: &'static str, error: Error) -> Future<R> {
        let (future, state) = Future::new(task);
        state.finish(Held::Ready(Err(error)));
        future
    }

    /// The id of the task this future belongs to.
    pub fn task(&self) -> &'static str {
        self.state.task
    }

    /// Whether the task finished (with a result or an error) or was cancelled.
    pub fn done(&self) -> bool {
        matches!(self.state.lock().phase, Phase::Finished | Phase::Cancelled)
    }

    /// Whether a worker is running the task: the worker has marked it
    /// started (it does so just before calling it) and it has not finished.
    /// A task that was not running when [`cancel`](Self::cancel) took it
    /// back never runs.
    pub fn running(&self) -> bool {
        let inner = self.state.lock();
        inner.phase == Phase::Pending
            && inner
                .claim
                .as_ref()
                .is_some_and(|claim| claim.state() == ClaimState::Started)
    }

    /// Whether the task was cancelled.
    pub fn cancelled(&self) -> bool {
        self.state.is_cancelled()
    }

    /// Whether the task finished with an error (including cancellation).
    /// Decodes a result not decoded yet, in this thread: a result that
    /// cannot be decoded is an error too.
    pub(crate) fn failed_now(&self) -> bool {
        let mut inner = self.state.lock();
        match inner.phase {
            Phase::Cancelled => true,
            Phase::Finished => match inner.outcome.take() {
                Some(held) => {
                    let outcome = held.decode();
                    let failed = outcome.is_err();
                    inner.outcome = Some(Held::Ready(outcome));
                    failed
                }
                // Lent to callbacks or taken: it was decoded, and seen.
                None => false,
            },
            Phase::Pending => false,
        }
    }

    /// Cancels the task and returns whether the future is now cancelled
    /// (false once it finished).
    ///
    /// A task that has not started never runs. A running task's worker is
    /// killed, with every process it started, and replaced; the tasks it
    /// had not started run elsewhere. (Python's `Future.cancel` cannot stop
    /// a running task; pebble's can, and so can this one.)
    ///
    /// ```
    /// #[loky::task]
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(1))?;
    /// let long = executor.submit(nap, 60_000)?;
    /// let queued = executor.submit(nap, 1)?; // behind `long`, on the only worker
    /// assert!(queued.cancel()); // it never runs
    /// assert!(long.cancel()); // running or not, it stops: its worker is killed
    /// assert!(queued.cancelled() && long.cancelled());
    /// assert!(matches!(long.result(), Err(loky::Error::Cancelled { .. })));
    ///
    /// let finished = executor.submit(nap, 1)?; // on a new worker
    /// assert!(finished.wait_timeout(std::time::Duration::from_secs(30)));
    /// assert!(!finished.cancel()); // too late: it keeps its result
    /// assert_eq!(finished.result()?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel(&self) -> bool {
        self.state.cancel()
    }

    /// Blocks until the task is done, and returns its outcome: the task's
    /// value, or the [`Error`] that says why there is none.
    ///
    /// ```
    /// #[loky::task]
    /// fn half(x: u64) -> u64 {
    ///     assert!(x % 2 == 0, "{x} is odd");
    ///     x / 2
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
    /// assert_eq!(executor.submit(half, 10)?.result()?, 5);
    /// let error = executor.submit(half, 7)?.result().unwrap_err();
    /// assert!(matches!(error, loky::Error::Panicked { ref panic, .. } if panic.message == "7 is odd"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn result(self) -> Result<R, Error> {
        self.take(None)
            .unwrap_or_else(|| unreachable!("waited without a deadline"))
    }

    /// Blocks until the task is done or `timeout` passes. On timeout the
    /// future is dropped (the task goes on) and [`Error::WaitTimeout`] returned;
    /// use [`wait_timeout`](Self::wait_timeout) to keep the future.
    pub fn result_timeout(self, timeout: Duration) -> Result<R, Error> {
        // A deadline past the end of time is no deadline.
        self.take(Instant::now().checked_add(timeout))
            .unwrap_or(Err(Error::WaitTimeout { waited: timeout }))
    }

    /// Blocks until the task is done or `timeout` passes; returns whether it
    /// is done.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut inner = self.state.lock();
        while !matches!(inner.phase, Phase::Finished | Phase::Cancelled) {
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                return false;
            }
            inner = self
                .state
                .wait(inner, deadline.map(|deadline| deadline - now));
        }
        true
    }

    /// Runs `callback` with the outcome once the task is done: at once, in
    /// this thread, if it already is; otherwise in the thread that completes
    /// the future (one of the executor's, or, for a callback added while
    /// another thread waits in [`result`](Self::result), perhaps that
    /// thread). It runs exactly once. A panic in it is caught and
    /// reported, and harms neither the future nor the executor. Callbacks
    /// must not block on other futures of the same executor.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    ///
    /// #[loky::task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
    /// let future = executor.submit(square, 9)?;
    /// let (tx, rx) = mpsc::channel();
    /// // Gets `&Result<u64, loky::Error>`: called on failure too.
    /// future.add_done_callback(move |outcome| {
    ///     let _ = tx.send(outcome.as_ref().ok().copied());
    /// });
    /// assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(Some(81)));
    /// assert_eq!(future.result()?, 81); // the result is still there
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_done_callback(&self, callback: impl FnOnce(&Result<R, Error>) + Send + 'static) {
        let mut inner = self.state.lock();
        let finished = matches!(inner.phase, Phase::Finished | Phase::Cancelled);
        if !finished || inner.lent {
            inner.callbacks.push(Box::new(callback));
            return;
        }
        assert!(
            !inner.taken,
            "add_done_callback on a future whose result was already taken"
        );
        let outcome = inner
            .outcome
            .take()
            .expect("a finished future has an outcome");
        inner.lent = true;
        drop(inner);
        self.state
            .run_callbacks(vec![Box::new(callback)], outcome.decode());
    }

    /// Waits for the outcome, up to `deadline`, moves it out and decodes it
    /// in this thread.
    fn take(&self, deadline: Option<Instant>) -> Option<Result<R, Error>> {
        self.take_held(deadline).map(Held::decode)
    }

    fn take_held(&self, deadline: Option<Instant>) -> Option<Held<R>> {
        let mut inner = self.state.lock();
        // Awaited to completion already: nothing will ever come.
        assert!(
            !inner.taken,
            "loky::Future: the result was already taken by awaiting the future"
        );
        loop {
            if !inner.lent
                && let Some(outcome) = inner.outcome.take()
            {
                inner.taken = true;
                return Some(outcome);
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    Some(deadline - now)
                }
            };
            inner = self.state.wait(inner, timeout);
        }
    }

    /// Registers `watcher`, or notifies it at once if the task is done.
    pub(crate) fn watch(&self, watcher: Watcher) {
        let mut inner = self.state.lock();
        if matches!(inner.phase, Phase::Finished | Phase::Cancelled) && !inner.lent {
            drop(inner);
            watcher.fire();
        } else {
            inner.watchers.push(watcher);
        }
    }

    /// Removes the watchers registered under `key`.
    pub(crate) fn unwatch(&self, key: u64) {
        self.state.lock().watchers.retain(|w| w.key != key);
    }
}

/// Whether a waiting thread looks for its outcome before it sleeps:
/// always while its looks find it, only now and then once they keep
/// missing. A thread waiting for long tasks (a map's consumer, say) would
/// otherwise spend `Config::spin_wait` of a CPU per wait, taken from the
/// workers; a thread in a loop of short round trips keeps looking.
mod spin_policy {
    use std::cell::Cell;

    /// Looks that missed in a row before the thread looks only now and then.
    const MISSES: u32 = 4;
    /// Then it looks once every this many waits.
    const EVERY: u32 = 16;

    thread_local! {
        /// Waits since this thread's last look found its outcome.
        static SINCE_FOUND: Cell<u32> = const { Cell::new(0) };
    }

    /// Whether this wait looks before it sleeps.
    pub(super) fn looks() -> bool {
        let since = SINCE_FOUND.get();
        let looks = since < MISSES || since.is_multiple_of(EVERY);
        if !looks {
            // Cycles rather than saturates: a saturated count would never
            // look again.
            SINCE_FOUND.set(MISSES + (since - MISSES + 1) % EVERY);
        }
        looks
    }

    /// The look found the outcome, or not.
    pub(super) fn looked(found: bool) {
        let since = SINCE_FOUND.get();
        SINCE_FOUND.set(if found {
            0
        } else if since < MISSES {
            since + 1
        } else {
            MISSES + (since - MISSES + 1) % EVERY
        });
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_thread_whose_looks_keep_missing_looks_now_and_then_until_one_finds() {
            // On a thread of its own: the record is per thread.
            std::thread::spawn(|| {
                let mut record = Vec::new();
                for _ in 0..40 {
                    let look = looks();
                    record.push(look);
                    if look {
                        looked(false);
                    }
                }
                // The first four miss, then one wait in sixteen looks.
                let which: Vec<usize> = (0..40).filter(|&i| record[i]).collect();
                assert_eq!(which, [0, 1, 2, 3, 16, 32]);
                // One that finds brings the looks back.
                looked(true);
                assert!((0..4).all(|_| {
                    let look = looks();
                    looked(false);
                    look
                }));
            })
            .join()
            .unwrap();
        }
    }
}

impl<R> State<R> {
    fn lock(&self) -> MutexGuard<'_, Inner<R>> {
        // A panic never happens while the lock is held (callbacks run
        // outside it), so a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a change, at most `timeout`. The first wait on the future
    /// looks for the outcome for a while before it sleeps
    /// (`loky_worker::spin`), picking it up from the worker's board if it
    /// can: the guard is released meanwhile, and given back as it is then.
    fn wait<'a>(
        &'a self,
        mut guard: MutexGuard<'a, Inner<R>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Inner<R>> {
        let spin = Duration::from_nanos(self.spin_nanos.load(Ordering::Relaxed));
        if !spin.is_zero() && !self.spun.swap(true, Ordering::Relaxed) && spin_policy::looks() {
            // Not with done-callbacks: they would run in this thread, in
            // `result` or `wait_timeout`.
            let pickup = guard
                .claim
                .as_ref()
                .and_then(Claim::pickup)
                .filter(|_| guard.callbacks.is_empty());
            drop(guard);
            let budget = timeout.map_or(spin, |timeout| timeout.min(spin));
            let published = || self.published.load(Ordering::Acquire);
            match pickup {
                // A single call on a local worker: its outcome may come
                // through the board, picked up here.
                Some((pickup, seq)) => pickup.pick_up(seq, budget, &published),
                None => {
                    loky_worker::spin::until(budget, published);
                }
            }
            spin_policy::looked(published());
            return self.lock();
        }
        guard.sleepers += 1;
        let mut guard = match timeout {
            None => self.changed.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(timeout) => {
                self.changed
                    .wait_timeout(guard, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        guard.sleepers -= 1;
        guard
    }

    /// A waiter looks for the outcome this long before it sleeps.
    pub(crate) fn spin_for(&self, budget: Duration) {
        let nanos = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        self.spin_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The task's id.
    pub(crate) fn task(&self) -> &'static str {
        self.task
    }

    /// The call was sent to a worker under `claim`. False if the future is
    /// cancelled or finished: then the call must not run.
    pub(crate) fn attach(&self, claim: Claim) -> bool {
        let mut inner = self.lock();
        if inner.phase == Phase::Pending {
            inner.claim = Some(claim);
            true
        } else {
            false
        }
    }

    /// No worker holds the call any more (it goes back to the queue).
    pub(crate) fn detach(&self) {
        self.lock().claim = None;
    }

    /// Sets what cancelling this future while a worker holds it does.
    pub(crate) fn on_cancel(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_cancel.set(hook);
    }

    /// Pending -> Cancelled; true if the future is cancelled now. A call a
    /// worker holds is taken back on its board first: if the worker had
    /// started it already, it is running, and the executor kills it.
    pub(crate) fn cancel(&self) -> bool {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Cancelled => return true,
            Phase::Finished => return false,
            Phase::Pending => {}
        }
        // A call taken back here never starts; one the worker started is
        // running and can only be stopped by killing its worker.
        let held = inner
            .claim
            .as_ref()
            .is_some_and(|claim| claim.revoke() || claim.state() == ClaimState::Started);
        if held && self.on_cancel.get().is_none() {
            return false;
        }
        inner.phase = Phase::Cancelled;
        let task = self.task;
        self.complete(inner, Held::Ready(Err(Error::Cancelled { task })));
        if held && let Some(hook) = self.on_cancel.get() {
            hook();
        }
        true
    }

    /// Whether the future is settled: finished or cancelled.
    pub(crate) fn is_settled(&self) -> bool {
        matches!(self.lock().phase, Phase::Finished | Phase::Cancelled)
    }

    /// Whether the future was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.lock().phase == Phase::Cancelled
    }

    /// Finishes the future with `outcome`, unless it is done already.
    /// Returns whether this call finished it.
    pub(crate) fn finish(&self, outcome: Held<R>) -> bool {
        self.finish_counted(outcome, |_| {})
    }

    /// Like `finish`; `count` learns whether it succeeded (an encoded
    /// result is a success: the task returned) before anyone waiting on
    /// the future does.
    pub(crate) fn finish_counted(&self, outcome: Held<R>, count: impl FnOnce(bool)) -> bool {
        let mut inner = self.lock();
        if matches!(inner.phase, Phase::Finished | Phase::Cancelled) {
            return false;
        }
        inner.phase = Phase::Finished;
        count(!matches!(outcome, Held::Ready(Err(_))));
        self.complete(inner, outcome);
        true
    }

    /// Stores the outcome, or decodes it and runs the callbacks with it
    /// first, then wakes everyone.
    fn complete(&self, mut inner: MutexGuard<'_, Inner<R>>, outcome: Held<R>) {
        // Settled: its worker's board is no longer its business.
        inner.claim = None;
        let callbacks = std::mem::take(&mut inner.callbacks);
        if callbacks.is_empty() {
            inner.outcome = Some(outcome);
            self.publish(inner);
        } else {
            inner.lent = true;
            drop(inner);
            self.run_callbacks(callbacks, outcome.decode());
        }
    }

    /// Runs callbacks, and any added meanwhile, then stores the outcome.
    fn run_callbacks(&self, mut callbacks: Vec<Callback<R>>, outcome: Result<R, Error>) {
        loop {
            for callback in callbacks.drain(..) {
                let task = self.task;
                if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| callback(&outcome))) {
                    let message = loky_worker::panic::payload_message(&*payload);
                    tracing::error!(task, message, "a done-callback panicked");
                }
            }
            let mut inner = self.lock();
            if inner.callbacks.is_empty() {
                inner.outcome = Some(Held::Ready(outcome));
                inner.lent = false;
                self.publish(inner);
                return;
            }
            callbacks = std::mem::take(&mut inner.callbacks);
        }
    }

    /// Wakes waiters, watchers and the async waker of a finished future.
    fn publish(&self, mut inner: MutexGuard<'_, Inner<R>>) {
        self.published.store(true, Ordering::Release);
        let watchers = std::mem::take(&mut inner.watchers);
        let waker = inner.waker.take();
        let sleepers = inner.sleepers > 0;
        drop(inner);
        if sleepers {
            self.changed.notify_all();
        }
        for watcher in watchers {
            watcher.fire();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<R> std::future::Future for Future<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.state.lock();
        if !inner.lent {
            if let Some(outcome) = inner.outcome.take() {
                inner.taken = true;
                drop(inner);
                return Poll::Ready(outcome.decode());
            }
            assert!(!inner.taken, "a loky::Future polled after it completed");
        }
        match &mut inner.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<R> fmt::Debug for Future<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = self.state.lock().phase;
        f.debug_struct("Future")
            .field("task", &self.state.task)
            .field("phase", &phase)
            .finish()
    }
}
