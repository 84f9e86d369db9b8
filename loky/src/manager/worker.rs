//! One worker as the manager sees it: its handle, its [`Life`], its board
//! and the calls it holds.

use super::direct::Direct;
use crate::error::Error;
use crate::host::Calls;
use crate::job::Job;
use loky_worker::protocol::{Board, Call, SLOTS};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

pub(super) struct Worker<W> {
    pub(super) handle: W,
    pub(super) pid: u32,
    pub(super) life: Life,
    /// Its board, once connected.
    pub(super) board: Option<Arc<Board>>,
    /// Calls sent to it and not settled, in the order it runs them.
    pub(super) inflight: VecDeque<InFlight>,
    /// When the first call in `inflight` started running (as far as the
    /// manager knows: when the one before it finished).
    pub(super) head_since: Instant,
    /// Since when it has had nothing to do.
    pub(super) idle_since: Instant,
    /// How many jobs were sent to it.
    pub(super) sent: usize,
    /// Calls given to it in this step, sent together at the step's end
    /// (they are in `inflight` already).
    pub(super) unsent: Vec<Call>,
    /// Its single calls whose outcome its link delivers.
    pub(super) direct: Arc<Direct>,
    /// The call number of its ticket while it is lent to submitters
    /// (`lend.rs`): busy until the ticket is reclaimed or its call arrives.
    pub(super) lent: Option<u64>,
    /// An encore ticket (`direct::Encore`) the manager took back before it
    /// heard of it: when the announcement comes, the worker is not lent.
    pub(super) reclaimed_encore: Option<u64>,
}

/// A call sent to a worker.
pub(super) struct InFlight {
    pub(super) seq: u64,
    pub(super) job: Job,
    /// Decided already: the error its running part gets when the worker is
    /// reaped (it timed out; or it was cancelled, and this is moot).
    pub(super) fate: Option<Error>,
    /// Its `Lent` waited for the manager's next step: when it started is
    /// not known.
    pub(super) late: bool,
}

/// A worker's life, one state at a time.
///
/// ```text
///  Starting ──Ready──> Initializing ──init ok──> Serving ──retire──> Leaving ──drained──> Told
///     │                    │ init failed ────────────────────────────> Leaving(InitFailed)
///     │ timeout, Ready(Err), retire                    │ timeout, cancel, kill
///     └──────────────────────────> Killed <────────────┘
///  any state ──Closed or Exited──> Gone ──both seen, or exited never connected──> reaped
/// ```
pub(super) enum Life {
    /// The process exists; its handshake is not done. `None`: no deadline.
    Starting { deadline: Option<Instant> },
    /// Connected, running the initializer (call `seq`); takes no job.
    Initializing { calls: Calls, seq: u64 },
    /// Takes jobs.
    Serving { calls: Calls },
    /// Takes no new job; is told to exit once it holds none.
    Leaving { calls: Calls, why: Retire },
    /// Told to exit (`ToWorker::Shutdown`): waits for it to go.
    Told { why: Retire },
    /// Signalled on purpose; SIGKILL follows at `escalate_at` if set.
    Killed {
        why: Kill,
        escalate_at: Option<Instant>,
    },
    /// Its link closed or its process exited (or both): reaped once
    /// both are seen. Killed if it lives on with its link closed; if it
    /// exited with its link open, the backend is asked now and then to
    /// report its exit again (`WorkerHandle::retell_exit`).
    Gone {
        cause: Cause,
        closed: bool,
        exited: bool,
        since: Instant,
        /// Killed because it lived on with its link closed.
        forced: bool,
        /// When to ask again for the report that closes its link, while it
        /// has exited with its link open.
        retell_at: Option<Instant>,
        /// How many times it was asked for.
        retold: u32,
    },
}

/// Why a worker is leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retire {
    Shutdown,
    Shrink,
    Idle,
    MaxTasks,
    Memory,
    InitFailed,
}

/// Why a worker was killed.
#[derive(Debug, Clone)]
pub(super) enum Kill {
    /// Its running call ran past its timeout.
    Timeout,
    /// Its running call was cancelled.
    Cancel,
    /// `shutdown(kill_workers)`, `kill_workers`, `terminate_workers`.
    Shutdown,
    /// Retired before it had connected.
    Retired(Retire),
    /// Its handshake failed or took too long.
    Handshake,
}

/// Why a worker ended, as known when it is reaped.
#[derive(Debug, Clone)]
pub(super) enum Cause {
    /// Died before its handshake.
    DiedStarting,
    /// Died running its initializer.
    DiedInitializing,
    /// Died unasked while serving.
    Unasked,
    /// Left, or died while leaving.
    Retired(Retire),
    /// Killed on purpose.
    Killed(Kill),
}

impl Life {
    /// Why it ends if it ends now.
    fn cause(&self) -> Cause {
        match self {
            Life::Starting { .. } => Cause::DiedStarting,
            Life::Initializing { .. } => Cause::DiedInitializing,
            Life::Serving { .. } => Cause::Unasked,
            Life::Leaving { why, .. } | Life::Told { why } => Cause::Retired(*why),
            Life::Killed { why, .. } => Cause::Killed(why.clone()),
            Life::Gone { cause, .. } => cause.clone(),
        }
    }
}

impl<W> Worker<W> {
    pub(super) fn new(
        handle: W,
        pid: u32,
        deadline: Option<Instant>,
        direct: Arc<Direct>,
    ) -> Worker<W> {
        let now = Instant::now();
        direct.set_pid(pid);
        Worker {
            handle,
            pid,
            life: Life::Starting { deadline },
            board: None,
            inflight: VecDeque::new(),
            head_since: now,
            idle_since: now,
            sent: 0,
            unsent: Vec::new(),
            direct,
            lent: None,
            reclaimed_encore: None,
        }
    }

    pub(super) fn is_starting(&self) -> bool {
        matches!(self.life, Life::Starting { .. })
    }

    /// Connected and not leaving: initializing or serving.
    pub(super) fn is_up(&self) -> bool {
        matches!(self.life, Life::Initializing { .. } | Life::Serving { .. })
    }

    /// Counts toward `max_workers`: starting, initializing or serving.
    pub(super) fn is_active(&self) -> bool {
        self.is_starting() || self.is_up()
    }

    /// Idle: serving and holding no call (perhaps lent: see `lent`).
    pub(super) fn is_idle(&self) -> bool {
        matches!(self.life, Life::Serving { .. }) && self.inflight.is_empty()
    }

    /// Can take a job now, holding fewer than `limit`, with a free board
    /// slot, and below `max_tasks`.
    pub(super) fn can_take(&self, limit: usize, max_tasks: Option<usize>) -> bool {
        // The oldest call by number: calls are held in the order of their
        // numbers, but for one taken under an encore ticket, held last
        // with a number taken earlier.
        let oldest = match (self.inflight.front(), self.inflight.back()) {
            (Some(front), Some(back)) => Some(front.seq.min(back.seq)),
            _ => None,
        };
        let slot_free = oldest.is_none_or(|oldest| self.direct.peek_seq() - oldest < SLOTS as u64);
        matches!(self.life, Life::Serving { .. })
            && self.lent.is_none()
            && self.inflight.len() < limit
            && slot_free
            && max_tasks.is_none_or(|max| self.sent < max)
    }

    /// Where calls go, while it takes them.
    pub(super) fn calls(&self) -> Option<&Calls> {
        match &self.life {
            Life::Initializing { calls, .. }
            | Life::Serving { calls }
            | Life::Leaving { calls, .. } => Some(calls),
            _ => None,
        }
    }

    /// Holds `job` as call `seq`, sent to it (by the manager or a
    /// submitter it was lent to); it retires once `max_tasks` were sent.
    pub(super) fn hold(&mut self, seq: u64, job: Job, max_tasks: Option<usize>) {
        if self.inflight.is_empty() {
            self.head_since = Instant::now();
        }
        self.inflight.push_back(InFlight {
            seq,
            job,
            fate: None,
            late: false,
        });
        self.sent += 1;
        if max_tasks.is_some_and(|max| self.sent >= max) {
            self.retire(Retire::MaxTasks);
        }
    }

    /// Marks it as leaving; the first reason sticks. A connected worker
    /// keeps its calls; the caller kills a starting one.
    pub(super) fn retire(&mut self, why: Retire) {
        let life = std::mem::replace(&mut self.life, Life::Told { why });
        self.life = match life {
            Life::Initializing { calls, .. } | Life::Serving { calls } => {
                tracing::debug!(pid = self.pid, ?why, "retiring worker");
                Life::Leaving { calls, why }
            }
            other => other,
        };
    }

    /// Its link closed (`closed`) or its process exited; `retell_at`:
    /// when to ask again for its exit report if its link stays open.
    pub(super) fn gone(&mut self, closed: bool, now: Instant, retell_at: Option<Instant>) {
        let exited = !closed;
        self.life = match &self.life {
            Life::Gone {
                cause,
                closed: was_closed,
                exited: was_exited,
                since,
                forced,
                retell_at: was,
                retold,
            } => Life::Gone {
                cause: cause.clone(),
                closed: *was_closed || closed,
                exited: *was_exited || exited,
                since: *since,
                forced: *forced,
                retell_at: if exited && !was_exited {
                    retell_at
                } else {
                    *was
                },
                retold: *retold,
            },
            other => Life::Gone {
                cause: other.cause(),
                closed,
                exited,
                since: now,
                forced: false,
                retell_at: if exited { retell_at } else { None },
                retold: 0,
            },
        };
    }
}
