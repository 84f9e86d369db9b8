//! What an executor's handles, its manager thread and its jobs share:
//! counters for [`Stats`](crate::Stats), the snapshot of the workers the
//! manager publishes, and the broken flag.

use crate::stats::Stats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub(crate) struct Shared {
    done: AtomicU64,
    failed: AtomicU64,
    /// Why the executor is broken, once it is.
    broken: Mutex<Option<String>>,
    /// What the manager last published: its counts and the live pids. Read
    /// without asking the manager, so a done-callback (which may run on the
    /// manager thread) gets true answers.
    snapshot: Mutex<(Stats, Vec<u32>)>,
    /// Idle workers on offer to submitters.
    pub(crate) lending: crate::manager::lend::Lending,
}

impl Shared {
    /// Counts a task that finished (`ok`: with a result).
    pub(crate) fn count(&self, ok: bool) {
        let counter = if ok { &self.done } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (done, failed).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The manager's snapshot, after each of its steps.
    pub(crate) fn publish(&self, stats: Stats, pids: impl Iterator<Item = u32>) {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        snapshot.0 = stats;
        snapshot.1.clear();
        snapshot.1.extend(pids);
    }

    /// The last published stats, with the counters of finished tasks.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone();
        (stats.done, stats.failed) = self.counts();
        stats
    }

    /// The pids of the workers alive at the last step.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    pub(crate) fn set_broken(&self, reason: String) {
        let mut broken = self.broken.lock().unwrap_or_else(PoisonError::into_inner);
        broken.get_or_insert(reason);
    }

    pub(crate) fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
