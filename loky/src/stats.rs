//! What an executor has done so far: [`Executor::stats`](crate::Executor::stats).

/// A snapshot of an executor's activity.
///
/// Counts cover the tasks that reached the executor's manager: a task
/// whose arguments could not be encoded fails before and is not counted.
/// A `map` chunk counts as one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Worker processes alive now, starting ones included.
    pub workers: usize,
    /// Tasks waiting for a worker.
    pub pending: usize,
    /// Tasks sent to a worker and not finished.
    pub running: usize,
    /// Tasks that finished with a result.
    pub done: u64,
    /// Tasks that finished with an error (including cancelled ones).
    pub failed: u64,
    /// Workers started so far.
    pub started: u64,
    /// Why workers ended.
    pub exits: WorkerExits,
}

/// How many workers ended, by reason. Each one that ends while the pool
/// needs it is replaced on demand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerExits {
    /// Died unasked: exit, abort, signal.
    pub crashed: u64,
    /// Killed on purpose: a timeout or a cancelled running task.
    pub killed: u64,
    /// Idle longer than the idle timeout.
    pub idle: u64,
    /// Reached `max_tasks_per_child`.
    pub max_tasks: u64,
    /// Exceeded a memory limit.
    pub memory: u64,
    /// Retired by a resize that shrank the pool, or by a shutdown.
    pub retired: u64,
    /// Failed to start, or failed its initializer.
    pub failed_to_start: u64,
}
