//! What an executor's handles, its manager thread and its jobs share:
//! counters for [`Stats`](crate::Stats) and the broken flag.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub(crate) struct Shared {
    done: AtomicU64,
    failed: AtomicU64,
    /// Why the executor is broken, once it is.
    broken: Mutex<Option<String>>,
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
