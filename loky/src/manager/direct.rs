//! Outcomes a worker's link delivers straight to their futures.
//!
//! A single call's outcome needs nothing of the manager to settle its
//! future, and routing it through the manager thread costs the waiting
//! caller one more thread wake-up. So the manager registers each single
//! call it sends to a worker ([`Direct::expect`]); the worker's `notify`,
//! which runs on that worker's link thread, completes the future as the
//! outcome arrives ([`Direct::route`]) and tells the manager only that the
//! call is done. Whatever the manager still decides about a call (taken
//! back, cancelled, timed out, its worker killed or dead) it first takes
//! out of the table, so its outcome then reaches the manager as before.

use crate::host::WorkerEvent;
use crate::job::{Completion, Pickup};
use loky_worker::protocol::{self, Board, FromWorker, Outcome, Payload};
use loky_worker::spin;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a link must have been idle to count as drained.
const QUIET: Duration = Duration::from_millis(10);
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

thread_local! {
    /// Set while this thread settles futures for a worker's link: their
    /// done-callbacks run here, and must never wait on the executor (its
    /// manager waits for this thread's `Delivered`).
    static SETTLING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is settling futures for a worker's link (running
/// their done-callbacks): see [`Executor`](crate::Executor)'s shutdown.
pub(crate) fn settling() -> bool {
    SETTLING.with(Cell::get)
}

/// Where a routed event goes: the manager.
type PassOn = Box<dyn Fn(Routed) -> bool + Send + Sync>;

/// One worker's single calls whose outcome its link (or their caller,
/// from the reply box) delivers.
pub(crate) struct Direct {
    /// The worker's pid, set once it is spawned: outcomes name it.
    pid: OnceLock<u32>,
    expected: Mutex<HashMap<u64, Arc<dyn Completion>>>,
    /// Messages the link is passing on (settling futures, running their
    /// callbacks): the worker's outcomes are not all with the manager yet.
    busy: AtomicUsize,
    /// When the link last finished passing a message on, in nanoseconds
    /// since `epoch`.
    last_done: AtomicU64,
    epoch: OnceLock<Instant>,
    /// The worker's board, once it has one: callers pick outcomes up from
    /// its reply box.
    board: OnceLock<Arc<Board>>,
    pass_on: PassOn,
}

/// What the link passes on to the manager.
pub(super) enum Routed {
    /// The event, untouched.
    Event(WorkerEvent),
    /// Call `seq` finished and its future is settled.
    Delivered(u64),
}

impl Direct {
    /// Routed events go to `pass_on`.
    pub(super) fn new(pass_on: impl Fn(Routed) -> bool + Send + Sync + 'static) -> Direct {
        Direct {
            pid: OnceLock::new(),
            expected: Mutex::default(),
            busy: AtomicUsize::new(0),
            last_done: AtomicU64::new(0),
            epoch: OnceLock::new(),
            board: OnceLock::new(),
            pass_on: Box::new(pass_on),
        }
    }

    /// The worker got its board.
    pub(super) fn set_board(&self, board: Arc<Board>) {
        let _ = self.board.set(board);
    }

    /// On the link thread: passes a worker's event on, settling the
    /// futures of expected calls; false once the manager is gone.
    pub(super) fn deliver(&self, event: WorkerEvent) -> bool {
        let message = matches!(event, WorkerEvent::Message(_));
        self.passing_on(message, || self.route(event, &self.pass_on))
    }

    pub(super) fn set_pid(&self, pid: u32) {
        let _ = self.pid.set(pid);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<dyn Completion>>> {
        self.expected.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Call `seq`'s outcome settles `completion` where it arrives.
    pub(super) fn expect(&self, seq: u64, completion: Arc<dyn Completion>) {
        self.table().insert(seq, completion);
    }

    /// Call `seq`'s outcome, if any comes, goes to the manager.
    pub(super) fn forget(&self, seq: u64) {
        self.table().remove(&seq);
    }

    /// Every outcome still to come goes to the manager.
    pub(super) fn clear(&self) {
        self.table().clear();
    }

    fn nanos(&self, at: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs `pass_on`, counted as busy if it passes a worker's `message`
    /// on (the exit watcher's events are not: it runs beside the link). A
    /// panic ends the count too.
    pub(super) fn passing_on<R>(&self, message: bool, pass_on: impl FnOnce() -> R) -> R {
        struct Done<'a>(&'a Direct);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let now = self.0.nanos(Instant::now());
                self.0.last_done.store(now, Ordering::Release);
                self.0.busy.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if !message {
            return pass_on();
        }
        self.busy.fetch_add(1, Ordering::AcqRel);
        let _done = Done(self);
        pass_on()
    }

    /// Whether the link has passed on all it read and has been waiting for
    /// more for a while: what the worker sent is with the manager (or
    /// will never come).
    pub(super) fn quiet(&self, now: Instant) -> bool {
        let idle_for = self
            .nanos(now)
            .saturating_sub(self.last_done.load(Ordering::Acquire));
        self.busy.load(Ordering::Acquire) == 0 && idle_for >= QUIET.as_nanos() as u64
    }

    /// On the link thread: settles expected calls' futures with their
    /// outcomes (held-back outcomes arrive several to a message), and
    /// passes the rest on, one event per call. An expected call's
    /// `Delivered` goes before its future is settled, so that the manager
    /// can lend its worker again while the caller wakes; the link counts as
    /// busy until both are done. False once `pass_on` is.
    fn route(&self, event: WorkerEvent, mut pass_on: impl FnMut(Routed) -> bool) -> bool {
        match event {
            WorkerEvent::Message(FromWorker::Settled { records }) => {
                let (outcomes, error) = protocol::settled_outcomes(records.bytes());
                if let Some(error) = error {
                    // Settled when the worker is reaped, from its board.
                    tracing::error!(%error, "unreadable outcomes from a worker");
                }
                let mut open = true;
                for (seq, outcome) in outcomes {
                    open &= self.route_done(seq, outcome, &mut pass_on);
                }
                open
            }
            WorkerEvent::Message(FromWorker::Done { seq, outcome }) => {
                self.route_done(seq, outcome, &mut pass_on)
            }
            other => pass_on(Routed::Event(other)),
        }
    }

    fn route_done(
        &self,
        seq: u64,
        outcome: Outcome,
        pass_on: &mut impl FnMut(Routed) -> bool,
    ) -> bool {
        let expected = match self.pid.get() {
            Some(&pid) => self
                .table()
                .remove(&seq)
                .map(|completion| (pid, completion)),
            None => None,
        };
        let Some((pid, completion)) = expected else {
            return pass_on(Routed::Event(WorkerEvent::Message(FromWorker::Done {
                seq,
                outcome,
            })));
        };
        // Settled even if the manager is gone: the outcome is known.
        let open = pass_on(Routed::Delivered(seq));
        // Outside the table's lock: callbacks may run here.
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                SETTLING.with(|settling| settling.set(self.0));
            }
        }
        let _restore = Restore(SETTLING.with(|settling| settling.replace(true)));
        completion.finish_remote(pid, outcome);
        open
    }
}

impl Pickup for Direct {
    /// On the caller's thread: watches for call `seq`'s outcome in the
    /// board's reply box while it waits, and delivers it as the link would.
    fn pick_up(&self, seq: u64, budget: Duration, done: &dyn Fn() -> bool) {
        let Some(board) = self.board.get().filter(|board| board.watch(seq)) else {
            // Another caller watches this worker: wait as usual.
            spin::until(budget, done);
            return;
        };
        spin::until(budget, || done() || board.reply_ready(seq));
        if board.unwatch(seq) {
            // Not answered into the box: its link delivers it.
            return;
        }
        // Taken by the manager instead when its worker died meanwhile.
        let Some(record) = board.take_reply(seq) else {
            return;
        };
        let records = Payload::Inline(record);
        self.deliver(WorkerEvent::Message(FromWorker::Settled { records }));
        board.reply_delivered(seq);
        if self.table().is_empty() {
            // Its worker holds no other single call: it is idle again,
            // unless it runs a chunk.
            super::lend::offer_coming();
        }
    }
}
