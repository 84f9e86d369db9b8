//! One worker as the manager sees it: its process, its state, the jobs it
//! holds, and why it is leaving, if it is.

use crate::error::Error;
use crate::job::Job;
use crate::process::Process;
use ipc_channel::ipc::IpcSender;
use loky_worker::protocol::ToWorker;
use std::collections::VecDeque;
use std::time::Instant;

pub(super) struct Worker {
    pub(super) process: Process,
    pub(super) state: WorkerState,
    /// Jobs sent to this worker, in the order it runs them: the first one
    /// is running, the others wait in its channel.
    pub(super) inflight: VecDeque<Job>,
    /// When the first job in `inflight` started running.
    pub(super) head_since: Instant,
    /// Since when it has had nothing to do.
    pub(super) idle_since: Instant,
    /// How many jobs were sent to it.
    pub(super) sent: usize,
    /// Leaving, and why: it gets no new job, and is told to exit once it
    /// has finished the ones it holds. Its exit is not a crash.
    pub(super) retiring: Option<Retire>,
    /// `ToWorker::Shutdown` was sent.
    pub(super) told_to_exit: bool,
    /// Killed on purpose because of its running job (timed out or
    /// cancelled), which is already settled: the jobs left in `inflight`
    /// never ran.
    pub(super) doomed: bool,
    /// Sent a gentle signal: kill it if it lives on past this instant.
    pub(super) escalate_at: Option<Instant>,
    /// The id of the initializer call it is running, if it is.
    pub(super) initializing: Option<u64>,
}

pub(super) enum WorkerState {
    /// Started; the handshake is not done.
    Starting { deadline: Instant },
    /// Connected: takes calls here.
    Ready(IpcSender<ToWorker>),
    /// Its channel closed; waiting for its exit status.
    Closed { since: Instant, killed: bool },
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

impl Worker {
    pub(super) fn new(process: Process, deadline: Instant) -> Worker {
        let now = Instant::now();
        Worker {
            process,
            state: WorkerState::Starting { deadline },
            inflight: VecDeque::new(),
            head_since: now,
            idle_since: now,
            sent: 0,
            retiring: None,
            told_to_exit: false,
            doomed: false,
            escalate_at: None,
            initializing: None,
        }
    }

    pub(super) fn is_starting(&self) -> bool {
        matches!(self.state, WorkerState::Starting { .. })
    }

    pub(super) fn is_ready(&self) -> bool {
        matches!(self.state, WorkerState::Ready(_))
    }

    /// Counts toward `max_workers`: not leaving, not dead.
    pub(super) fn is_active(&self) -> bool {
        self.retiring.is_none() && !self.doomed && !matches!(self.state, WorkerState::Closed { .. })
    }

    /// Can take a job now, holding fewer than `limit`.
    pub(super) fn can_take(&self, limit: usize, max_tasks: Option<usize>) -> bool {
        self.is_active()
            && self.is_ready()
            && self.initializing.is_none()
            && self.inflight.len() < limit
            && max_tasks.is_none_or(|max| self.sent < max)
    }

    /// Idle: connected, initialized and holding no job.
    pub(super) fn is_idle(&self) -> bool {
        self.is_ready() && self.inflight.is_empty() && self.initializing.is_none()
    }

    /// Marks it as leaving; the first reason sticks.
    pub(super) fn retire(&mut self, why: Retire) {
        if self.retiring.is_none() {
            tracing::debug!(pid = self.process.pid, ?why, "retiring worker");
            self.retiring = Some(why);
        }
    }

    /// Tells a leaving worker to exit once it has finished its jobs; kills
    /// one still starting.
    pub(super) fn tell_to_exit_if_drained(&mut self) {
        if self.retiring.is_none() || self.told_to_exit || self.doomed {
            return;
        }
        match &self.state {
            WorkerState::Ready(calls) if self.inflight.is_empty() => {
                // If the send fails the worker is gone already.
                let _ = calls.send(ToWorker::Shutdown);
                self.told_to_exit = true;
            }
            WorkerState::Starting { .. } => {
                self.process.kill();
                self.process.abort_handshake();
                self.told_to_exit = true;
            }
            _ => {}
        }
    }

    /// The running job finished: the next one in `inflight` starts now.
    pub(super) fn advance(&mut self, now: Instant) {
        if self.inflight.is_empty() {
            self.idle_since = now;
        } else {
            self.start_head(now);
        }
    }

    /// The first job in `inflight` starts running: its future says so. If
    /// it was cancelled while it waited in the worker's channel, the worker
    /// is killed at once, since it cannot skip it.
    pub(super) fn start_head(&mut self, now: Instant) {
        self.head_since = now;
        if self
            .inflight
            .front()
            .is_some_and(|job| !job.completion.set_running())
        {
            self.doom(None);
        }
    }

    /// Kills this worker because of its running job, which fails with
    /// `error` (or was cancelled already). The jobs behind it never ran:
    /// when the worker is reaped they go back to the queue.
    pub(super) fn doom(&mut self, error: Option<Error>) {
        if self.doomed {
            return;
        }
        if let Some(job) = self.inflight.pop_front() {
            if let Some(error) = error {
                job.completion.fail(error);
            }
        }
        self.doomed = true;
        self.process.kill();
    }
}
