//! Outcomes delivered straight to their futures, by a worker's link or by
//! the caller waiting for them.
//!
//! A single call's outcome needs nothing of the manager to settle its
//! future, and routing it through the manager thread costs the waiting
//! caller one more thread wake-up. So the manager registers each single
//! call it sends to a worker ([`Direct::expect`]); the worker's `notify`,
//! which runs on the executor's results thread, completes the future as the
//! outcome arrives ([`Direct::route`]) and tells the manager only that the
//! call is done. A caller waiting for the outcome may instead pick it up
//! from the worker's reply box on the board (`Pickup`), and then offer the
//! worker it emptied again under an [`Encore`] the manager left. Whatever
//! the manager still decides about a call (taken back, cancelled, timed
//! out, its worker killed or dead) it first takes out of the table, so its
//! outcome then reaches the manager as before.

use super::lend::Ticket;
use crate::host::{Calls, WorkerEvent};
use crate::job::{Completion, Pickup};
use loky_worker::protocol::{self, Board, Failure, FromWorker, Outcome, Stage};
use loky_worker::spin;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

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
    /// Each expected call's completion, and whether the manager may hear
    /// of its delivery at its next step (its `Lent` waited there too).
    expected: Mutex<HashMap<u64, Expected>>,
    /// The worker's board, once it has one: callers pick outcomes up from
    /// its reply box.
    board: OnceLock<Arc<Board>>,
    pass_on: PassOn,
    /// The manager's leave to offer the worker again (an encore), armed
    /// while lending is open: see [`Encore`].
    encore: Mutex<Option<Encore>>,
    /// Which executor's worker this is (`lend::offer_coming`).
    executor: usize,
    /// The number of the worker's next call: the manager takes numbers
    /// from it, and so do callers offering the worker again.
    next_seq: AtomicU64,
}

/// An expected call's completion, and whether its `Lent` waited for the
/// manager's next step.
type Expected = (Arc<dyn Completion>, bool);

/// The manager's leave for the caller who picks up the last call a lent
/// worker holds to put that worker on offer again itself, under a call
/// number it takes (`Direct::take_seq`): the caller's next call then goes
/// straight to the worker without waiting for the manager's round. The
/// leave stays, for the callers after it, until the manager withdraws it.
pub(super) struct Encore {
    pub(super) worker: u64,
    pub(super) calls: Calls,
}

/// What the link passes on to the manager.
pub(super) enum Routed {
    /// The event, untouched.
    Event(WorkerEvent),
    /// Calls whose outcomes came in one message finished, and their
    /// futures are about to be settled (after this is passed on).
    DeliveredAll(Vec<u64>),
    /// Call `seq` finished and its future is settled; `encore`: its
    /// worker, idle again, goes on offer under this ticket (announced to
    /// the manager with the delivery, before anyone can take it). `quiet`:
    /// the call's `Lent` waited for the manager's next step, so the
    /// delivery may too.
    Delivered {
        seq: u64,
        encore: Option<Ticket>,
        quiet: bool,
    },
}

impl Direct {
    /// Routed events go to `pass_on`.
    pub(super) fn new(
        executor: usize,
        pass_on: impl Fn(Routed) -> bool + Send + Sync + 'static,
    ) -> Direct {
        Direct {
            pid: OnceLock::new(),
            expected: Mutex::default(),
            board: OnceLock::new(),
            pass_on: Box::new(pass_on),
            encore: Mutex::new(None),
            executor,
            next_seq: AtomicU64::new(0),
        }
    }

    /// A number for the worker's next call, its own.
    pub(super) fn take_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::AcqRel)
    }

    /// The number the worker's next call would get.
    pub(super) fn peek_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    /// Manager: allows the callers that pick up the worker's last call to
    /// offer it again, until `disarm` (unless they are allowed already).
    pub(super) fn arm(&self, encore: impl FnOnce() -> Encore) {
        let mut armed = self.encore.lock().unwrap_or_else(PoisonError::into_inner);
        if armed.is_none() {
            *armed = Some(encore());
        }
    }

    /// Manager: withdraws that leave.
    pub(super) fn disarm(&self) {
        self.encore
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// The worker got its board.
    pub(super) fn set_board(&self, board: Arc<Board>) {
        let _ = self.board.set(board);
    }

    /// On the results thread: passes a worker's event on, settling the
    /// futures of expected calls; false once the manager is gone.
    pub(super) fn deliver(&self, event: WorkerEvent) -> bool {
        self.route(event, &self.pass_on)
    }

    pub(super) fn set_pid(&self, pid: u32) {
        let _ = self.pid.set(pid);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Expected>> {
        self.expected.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Call `seq`'s outcome settles `completion` where it arrives.
    pub(super) fn expect(&self, seq: u64, completion: Arc<dyn Completion>) {
        self.table().insert(seq, (completion, false));
    }

    /// Call `seq`'s `Lent` waits for the manager's next step
    /// (`Lending::tell_later`): its delivery may wait there too.
    pub(super) fn told_later(&self, seq: u64) {
        if let Some((_, quiet)) = self.table().get_mut(&seq) {
            *quiet = true;
        }
    }

    /// Call `seq`'s outcome, if any comes, goes to the manager.
    pub(super) fn forget(&self, seq: u64) {
        self.table().remove(&seq);
    }

    /// Every outcome still to come goes to the manager.
    pub(super) fn clear(&self) {
        self.table().clear();
    }

    /// On the results thread: settles expected calls' futures with their
    /// outcomes (held-back outcomes arrive several to a message), and
    /// passes the rest on, one event per call. An expected call's
    /// `Delivered` goes before its future is settled, so that the manager
    /// can lend its worker again while the caller wakes. False once
    /// `pass_on` is.
    fn route(&self, event: WorkerEvent, mut pass_on: impl FnMut(Routed) -> bool) -> bool {
        match event {
            WorkerEvent::Message(FromWorker::Settled { records }) => {
                let (outcomes, error) = protocol::settled_outcomes(records.bytes());
                if let Some(error) = error {
                    // Settled when the worker is reaped, from its board.
                    tracing::error!(%error, "unreadable outcomes from a worker");
                }
                // One delivery for the expected calls in a row, passed on
                // before their futures are settled; an outcome nobody
                // expects goes to the manager in its place in the row.
                let mut open = true;
                let mut row = Row::default();
                for (seq, outcome) in outcomes {
                    match self.expected(seq).0 {
                        Some((pid, completion, _)) => row.push(seq, pid, completion, outcome),
                        None => {
                            open &= row.deliver(&mut pass_on);
                            open &= pass_on(unexpected(seq, outcome));
                        }
                    }
                }
                open & row.deliver(&mut pass_on)
            }
            WorkerEvent::Message(FromWorker::Done { seq, outcome }) => {
                self.route_done(seq, outcome, &mut pass_on)
            }
            other => pass_on(Routed::Event(other)),
        }
    }

    /// Settles call `seq`'s future (after its `Delivered`), if it is
    /// expected; otherwise passes its outcome on.
    fn route_done(
        &self,
        seq: u64,
        outcome: Outcome,
        pass_on: &mut impl FnMut(Routed) -> bool,
    ) -> bool {
        let Some((pid, completion, _)) = self.expected(seq).0 else {
            return pass_on(unexpected(seq, outcome));
        };
        // Settled even if the manager is gone: the outcome is known. The
        // manager is woken for it: the worker is its to offer again.
        let open = pass_on(Routed::Delivered {
            seq,
            encore: None,
            quiet: false,
        });
        settle(pid, &*completion, outcome);
        open
    }

    /// Takes call `seq` out of the table: its pid, completion and whether
    /// it was told later, if it was there, and whether the table is empty
    /// now.
    #[allow(clippy::type_complexity)]
    fn expected(&self, seq: u64) -> (Option<(u32, Arc<dyn Completion>, bool)>, bool) {
        let Some(&pid) = self.pid.get() else {
            return (None, false);
        };
        let mut table = self.table();
        let completion = table.remove(&seq);
        (
            completion.map(|(c, quiet)| (pid, c, quiet)),
            table.is_empty(),
        )
    }

    /// On the caller's thread: settles call `seq`'s future with the
    /// outcome it picked up, then tells the manager (offering the worker
    /// again if it holds no other single call and the manager allowed an
    /// encore). Whether the worker holds no other single call; `None` if
    /// the call was not expected any more: the manager decided about it
    /// (its worker is being killed or reaped) and gets the outcome instead.
    fn settle_picked_up(self: &Arc<Self>, seq: u64, outcome: Outcome) -> Option<bool> {
        let (expected, emptied) = self.expected(seq);
        let Some((pid, completion, quiet)) = expected else {
            (self.pass_on)(unexpected(seq, outcome));
            return None;
        };
        // Settled before the manager hears of it, as the link's outcomes
        // are before it reports its channel closed: the manager reaps the
        // worker, and `shutdown` returns, only once its futures are settled.
        settle(pid, &*completion, outcome);
        let encore = match self.board.get() {
            Some(board) if emptied => self
                .encore
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|encore| Ticket {
                    worker: encore.worker,
                    seq: self.take_seq(),
                    board: Arc::clone(board),
                    calls: encore.calls.clone(),
                    direct: Arc::clone(self),
                    // Set as it is announced.
                    quiet: false,
                }),
            _ => None,
        };
        (self.pass_on)(Routed::Delivered { seq, encore, quiet });
        Some(emptied)
    }
}

/// Expected calls whose outcomes came in a row, delivered together.
#[derive(Default)]
struct Row {
    seqs: Vec<u64>,
    settling: Vec<(u32, Arc<dyn Completion>, Outcome)>,
}

impl Row {
    fn push(&mut self, seq: u64, pid: u32, completion: Arc<dyn Completion>, outcome: Outcome) {
        self.seqs.push(seq);
        self.settling.push((pid, completion, outcome));
    }

    /// Tells the manager, then settles the futures (even if the manager is
    /// gone: the outcomes are known); false if it is gone.
    fn deliver(&mut self, pass_on: &mut impl FnMut(Routed) -> bool) -> bool {
        if self.seqs.is_empty() {
            return true;
        }
        let open = pass_on(Routed::DeliveredAll(std::mem::take(&mut self.seqs)));
        for (pid, completion, outcome) in self.settling.drain(..) {
            settle(pid, &*completion, outcome);
        }
        open
    }
}

/// The outcome of a call nobody here expects: the manager's to settle.
fn unexpected(seq: u64, outcome: Outcome) -> Routed {
    Routed::Event(WorkerEvent::Message(FromWorker::Done { seq, outcome }))
}

/// Settles a future with a worker's outcome, marked as settling: its
/// done-callbacks run here, and must not wait on the executor.
fn settle(pid: u32, completion: &dyn Completion, outcome: Outcome) {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SETTLING.with(|settling| settling.set(self.0));
        }
    }
    let _restore = Restore(SETTLING.with(|settling| settling.replace(true)));
    completion.finish_remote(pid, outcome);
}

impl Pickup for Direct {
    /// On the caller's thread: watches for call `seq`'s outcome in the
    /// board's reply box while it waits, and delivers it as the link would.
    fn pick_up(self: Arc<Self>, seq: u64, budget: Duration, done: &dyn Fn() -> bool) {
        let cpu = spin::current_cpu();
        let Some(board) = self.board.get().filter(|board| board.watch(seq, cpu)) else {
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
        let emptied = {
            let outcome = match protocol::settled_outcomes(&record) {
                (mut outcomes, _) if outcomes.len() == 1 => outcomes.remove(0).1,
                (_, error) => Outcome::Failed(Failure::Serde {
                    stage: Stage::DecodeResult,
                    message: format!(
                        "the worker's reply box held no outcome: {}",
                        error.unwrap_or_default()
                    ),
                }),
            };
            self.settle_picked_up(seq, outcome)
        };
        let Some(emptied) = emptied else {
            // The box stays taken: the manager reads it when it reaps the
            // worker, and before that gets the outcome from here.
            return;
        };
        board.reply_delivered(seq);
        if emptied {
            // Its worker holds no other single call: it is idle again,
            // unless it runs a chunk.
            super::lend::offer_coming(self.executor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::job::Piece;
    use loky_worker::protocol::Payload;

    /// What the manager and the futures saw, in order.
    type Log = Arc<Mutex<Vec<String>>>;

    /// A future that logs its settling.
    struct Probe {
        seq: u64,
        log: Log,
    }

    impl Completion for Probe {
        fn task(&self) -> &'static str {
            "probe"
        }
        fn attach(&self, _claim: crate::job::Claim) -> bool {
            true
        }
        fn detach(&self) {}
        fn cancel(&self) -> bool {
            false
        }
        fn cancelled(&self) -> bool {
            false
        }
        fn settled(&self) -> bool {
            false
        }
        fn fail(&self, error: Error) {
            self.log.lock().unwrap().push(format!("failed {error}"));
        }
        fn finish_remote(&self, pid: u32, _outcome: Outcome) {
            assert!(settling(), "settled as the link's");
            let seq = self.seq;
            self.log
                .lock()
                .unwrap()
                .push(format!("settled {seq} of {pid}"));
        }
        fn finish_chunk(&self, _pieces: Vec<Piece>) {
            unreachable!("single calls only");
        }
    }

    /// A worker's `Direct` whose routed events are logged.
    fn direct(log: &Log) -> Direct {
        let heard = Arc::clone(log);
        let direct = Direct::new(0, move |routed| {
            let said = match routed {
                Routed::DeliveredAll(seqs) => format!("delivered {seqs:?}"),
                Routed::Delivered { seq, .. } => format!("delivered {seq}"),
                Routed::Event(WorkerEvent::Message(FromWorker::Done { seq, .. })) => {
                    format!("unexpected {seq}")
                }
                Routed::Event(_) => "event".to_owned(),
            };
            heard.lock().unwrap().push(said);
            true
        });
        direct.set_pid(7);
        direct
    }

    fn settled(seqs: &[u64]) -> WorkerEvent {
        let mut records = Vec::new();
        for &seq in seqs {
            let outcome = Outcome::Returned(Payload::Inline(vec![1, 2, 3]));
            records = protocol::encode_settled(seq, &outcome, records).unwrap();
        }
        WorkerEvent::Message(FromWorker::Settled {
            records: Payload::Inline(records),
        })
    }

    #[test]
    fn expected_outcomes_in_a_row_are_delivered_together_then_settled_in_their_place() {
        let log = Log::default();
        let direct = direct(&log);
        for seq in [1, 2, 4] {
            let probe = Probe {
                seq,
                log: Arc::clone(&log),
            };
            direct.expect(seq, Arc::new(probe));
        }
        assert!(direct.deliver(settled(&[1, 2, 3, 4])));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "delivered [1, 2]",
                "settled 1 of 7",
                "settled 2 of 7",
                "unexpected 3",
                "delivered [4]",
                "settled 4 of 7",
            ]
        );
        assert!(!settling(), "restored after settling");
    }

    #[test]
    fn an_outcome_the_manager_took_back_goes_to_it_and_a_single_one_is_delivered_first() {
        let log = Log::default();
        let direct = direct(&log);
        for seq in [1, 2] {
            let probe = Probe {
                seq,
                log: Arc::clone(&log),
            };
            direct.expect(seq, Arc::new(probe));
        }
        // The manager decided about call 1 itself (say, timed out).
        direct.forget(1);
        for seq in [1, 2] {
            let outcome = Outcome::Returned(Payload::Inline(vec![9]));
            assert!(direct.deliver(WorkerEvent::Message(FromWorker::Done { seq, outcome })));
        }
        // Told once: a second outcome for call 2 is the manager's.
        let outcome = Outcome::Returned(Payload::Inline(vec![9]));
        direct.deliver(WorkerEvent::Message(FromWorker::Done { seq: 2, outcome }));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "unexpected 1",
                "delivered 2",
                "settled 2 of 7",
                "unexpected 2"
            ]
        );
    }
}
