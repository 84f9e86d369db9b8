//! Outcomes of single calls held back briefly, so that many travel in one
//! message.
//!
//! A worker running many short calls would send a message per call, and
//! each message wakes the parent's results thread: with calls of a few
//! microseconds, the messages cost more than the calls. So a single call's
//! outcome goes to the board's outbox (shared memory, which outlives this
//! process: the parent recovers what a dead worker held back), and the
//! outbox travels as one `FromWorker::Settled`:
//! - before the worker waits for more calls (nothing left to run),
//! - before it runs a chunk,
//! - when the outbox is full,
//! - and at the latest [`HOLD_AT_MOST`] after its oldest outcome, sent by a
//!   flusher thread whatever the worker is running meanwhile.
//!
//! Without a flusher thread (the OS refused one), nothing is held back.

use crate::main_loop::Outbox;
use crate::protocol::{self, Board, FromWorker, Outcome, Payload};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The longest an outcome is held back.
pub(crate) const HOLD_AT_MOST: Duration = Duration::from_micros(200);

/// One worker's held-back outcomes.
pub(crate) struct Batch<'a, O> {
    board: &'a Board,
    /// How long an outcome is held back at most.
    hold_at_most: Duration,
    results: &'a O,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// When the oldest outcome in the outbox was put there.
    oldest: Option<Instant>,
    /// Whether a flusher thread runs: outcomes are held back only then.
    flusher: bool,
    /// The flusher is to return.
    stop: bool,
    /// Reused for each record.
    record: Vec<u8>,
}

impl<'a, O: Outbox> Batch<'a, O> {
    pub(crate) fn new(board: &'a Board, results: &'a O) -> Self {
        Batch::holding(board, results, crate::fault::hold_at_most(HOLD_AT_MOST))
    }

    fn holding(board: &'a Board, results: &'a O, hold_at_most: Duration) -> Self {
        Batch {
            board,
            hold_at_most,
            results,
            state: Mutex::new(State {
                oldest: None,
                flusher: false,
                stop: false,
                record: Vec::new(),
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds back `outcome` of call `seq`; false if it must be sent now
    /// (no flusher, a result in shared memory, or too large for the
    /// outbox), once what was held back before it is sent.
    pub(crate) fn hold(&self, seq: u64, outcome: &Outcome) -> bool {
        let mut state = self.lock();
        if !state.flusher {
            return false;
        }
        let record = std::mem::take(&mut state.record);
        let Some(record) = protocol::encode_settled(seq, outcome, clear(record)) else {
            self.flush_locked(&mut state);
            return false;
        };
        let mut held = self.board.outbox_push(&record);
        if !held {
            // Full: what it holds goes first.
            self.flush_locked(&mut state);
            held = self.board.outbox_push(&record);
        }
        if held && state.oldest.is_none() {
            state.oldest = Some(Instant::now());
            self.wake.notify_one();
        }
        state.record = record;
        held
    }

    /// Sends what is held back; false if the parent is gone.
    pub(crate) fn flush(&self) -> bool {
        let mut state = self.lock();
        self.flush_locked(&mut state)
    }

    fn flush_locked(&self, state: &mut State) -> bool {
        if state.oldest.take().is_none() {
            return true;
        }
        let records = self.board.outbox_records();
        // Sent before the outbox is emptied: a death in between leaves
        // duplicates, which the parent ignores, rather than losing any.
        let sent = self.results.send(FromWorker::Settled {
            records: Payload::Inline(records),
        });
        if sent {
            self.board.outbox_reset();
        }
        // Unsent, they stay on the board: the parent reads them there once
        // it has reaped this worker.
        sent
    }

    /// The flusher thread: sends held-back outcomes once they are
    /// `hold_at_most` old, until [`stop`](Self::stop).
    pub(crate) fn run_flusher(&self) {
        let mut state = self.lock();
        state.flusher = true;
        while !state.stop {
            state = match state.oldest {
                None => self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(oldest) => {
                    let due = oldest + self.hold_at_most;
                    let now = Instant::now();
                    if now >= due {
                        self.flush_locked(&mut state);
                        state
                    } else {
                        self.wake
                            .wait_timeout(state, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                }
            };
        }
        state.flusher = false;
    }

    /// Sends what is held back and stops the flusher.
    pub(crate) fn stop(&self) {
        let mut state = self.lock();
        self.flush_locked(&mut state);
        state.stop = true;
        self.wake.notify_all();
    }
}

fn clear(mut buffer: Vec<u8>) -> Vec<u8> {
    buffer.clear();
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Failure, settled_outcomes};

    /// Records what a worker sends.
    #[derive(Default)]
    struct Sent(Mutex<Vec<FromWorker>>);

    impl Outbox for Sent {
        fn send(&self, message: FromWorker) -> bool {
            self.0.lock().unwrap().push(message);
            true
        }
    }

    impl Sent {
        fn settled(&self) -> Vec<Vec<u64>> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|message| match message {
                    FromWorker::Settled { records } => settled_outcomes(records.bytes())
                        .0
                        .into_iter()
                        .map(|(seq, _)| seq)
                        .collect(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        }
    }

    fn returned(value: u8) -> Outcome {
        Outcome::Returned(Payload::Inline(vec![value]))
    }

    fn wait_for_flusher<O: Outbox>(batch: &Batch<'_, O>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !batch.lock().flusher {
            assert!(Instant::now() < deadline, "no flusher");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Long enough that nothing is flushed by time in these tests.
    const LONG: Duration = Duration::from_secs(600);

    #[test]
    fn outcomes_wait_on_the_board_and_travel_together() {
        let board = Board::new().unwrap();
        let sent = Sent::default();
        let batch = Batch::holding(&board, &sent, LONG);
        // No flusher: nothing is held back.
        assert!(!batch.hold(1, &returned(1)));
        std::thread::scope(|scope| {
            scope.spawn(|| batch.run_flusher());
            wait_for_flusher(&batch);
            let failed = Outcome::Failed(Failure::UnknownTask);
            assert!(batch.hold(2, &returned(2)));
            assert!(batch.hold(3, &failed));
            // On the board meanwhile, where the parent finds them if this
            // worker dies now.
            let (on_board, _) = settled_outcomes(&board.outbox_records());
            assert_eq!(
                on_board.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
                [2, 3]
            );
            assert!(
                matches!(on_board[0].1, Outcome::Returned(Payload::Inline(ref b)) if b == &[2])
            );
            assert!(batch.flush());
            assert!(board.outbox_records().is_empty());
            batch.stop();
        });
        assert_eq!(sent.settled(), [vec![2, 3]]);
    }

    #[test]
    fn an_outcome_is_held_back_no_longer_than_its_bound() {
        let board = Board::new().unwrap();
        let sent = Sent::default();
        let batch = Batch::new(&board, &sent);
        std::thread::scope(|scope| {
            scope.spawn(|| batch.run_flusher());
            wait_for_flusher(&batch);
            // The worker goes on with something long: the flusher sends it.
            assert!(batch.hold(4, &returned(4)));
            let deadline = Instant::now() + Duration::from_secs(10);
            while sent.settled().is_empty() {
                assert!(Instant::now() < deadline, "never flushed");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(board.outbox_records().is_empty());
            batch.stop();
        });
        assert_eq!(sent.settled(), [vec![4]]);
    }

    #[test]
    fn unsent_outcomes_stay_on_the_board_for_the_parent() {
        struct Gone;
        impl Outbox for Gone {
            fn send(&self, _: FromWorker) -> bool {
                false
            }
        }
        let board = Board::new().unwrap();
        let batch = Batch::holding(&board, &Gone, LONG);
        std::thread::scope(|scope| {
            scope.spawn(|| batch.run_flusher());
            wait_for_flusher(&batch);
            assert!(batch.hold(7, &returned(7)));
            assert!(!batch.flush());
            batch.stop();
        });
        let (on_board, error) = settled_outcomes(&board.outbox_records());
        assert_eq!(error, None);
        assert_eq!(on_board.len(), 1);
        assert_eq!(on_board[0].0, 7);
    }

    #[test]
    fn large_or_shared_results_are_not_held() {
        let board = Board::new().unwrap();
        let sent = Sent::default();
        let batch = Batch::holding(&board, &sent, LONG);
        std::thread::scope(|scope| {
            scope.spawn(|| batch.run_flusher());
            wait_for_flusher(&batch);
            assert!(batch.hold(1, &returned(1)));
            let large = Outcome::Returned(Payload::Inline(vec![0; 70_000]));
            assert!(!batch.hold(2, &large), "larger than the outbox");
            batch.stop();
        });
        // What was held went before the large one.
        assert_eq!(sent.settled(), [vec![1]]);
    }
}
