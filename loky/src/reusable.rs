//! The process-wide reusable executor that `task.spawn(..)` uses.

use crate::config::Config;
use crate::error::Error;
use crate::executor::{Executor, Shutdown};
use crate::future::Future;
use crate::task::Task;
use std::sync::{Mutex, PoisonError};

static REUSABLE: Mutex<Option<Executor>> = Mutex::new(None);

/// When [`get_reusable_executor_with`] may keep the current executor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reuse {
    /// Keep it if its configuration matches the one asked for, apart from
    /// `max_workers` (then it is resized); otherwise replace it. Python
    /// loky's `reuse="auto"`.
    #[default]
    Auto,
    /// Keep it whatever the configuration asked for, only resized to its
    /// `max_workers`. Python loky's `reuse=True`.
    Force,
}

/// Returns the process-wide reusable executor, as
/// [`get_reusable_executor_with`] with [`Reuse::Auto`] and without killing
/// the workers of a replaced executor.
///
/// ```
/// use loky::{Config, get_reusable_executor};
///
/// #[loky::task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), loky::Error> {
/// let executor = get_reusable_executor(Config::new().max_workers(2))?;
/// assert_eq!(executor.submit(square, 4)?.result()?, 16);
/// // Only the size differs: the same executor, resized.
/// let same = get_reusable_executor(Config::new().max_workers(3))?;
/// assert_eq!(same.id(), executor.id());
/// // Another configuration replaces it (the old one finishes its work).
/// let other = get_reusable_executor(Config::new().max_workers(2).retries(1))?;
/// assert_ne!(other.id(), executor.id());
/// // `task.spawn(args)` submits to the reusable executor.
/// assert_eq!(square.spawn(5).result()?, 25);
/// # Ok(())
/// # }
/// ```
pub fn get_reusable_executor(config: Config) -> Result<Executor, Error> {
    get_reusable_executor_with(config, Reuse::Auto, false)
}

/// Returns the process-wide reusable executor, built with `config`.
///
/// The current one is kept when `reuse` allows it and it is neither shut
/// down nor broken; if only `max_workers` differs, it is resized in place
/// (growing starts workers on demand; shrinking retires the surplus once
/// idle, and the survivors keep their pids). Otherwise a new executor, with
/// a new [`id`](Executor::id), takes its place. The old one is shut down:
/// with `kill_workers` at once, its running tasks failing with
/// [`Error::ShutDown`]; otherwise once its last handle is dropped, after
/// its submitted work, so that other threads still using it see no error.
///
/// Unless `config` sets one, the reusable executor's workers exit after
/// [`REUSABLE_IDLE_TIMEOUT`](crate::REUSABLE_IDLE_TIMEOUT) of idleness.
pub fn get_reusable_executor_with(
    config: Config,
    reuse: Reuse,
    kill_workers: bool,
) -> Result<Executor, Error> {
    let config = config.with_reusable_defaults();
    config.validate()?;
    let mut slot = REUSABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(executor) = slot.as_ref() {
        let usable = !executor.is_shutdown() && executor.broken().is_none();
        let keep = match reuse {
            Reuse::Auto => executor.config().same_but_size(&config),
            Reuse::Force => true,
        };
        if usable && keep {
            if executor.max_workers() != config.max_workers {
                executor.resize(config.max_workers)?;
            }
            return Ok(executor.clone());
        }
    }
    let executor = Executor::new(config)?;
    if let Some(old) = slot.replace(executor.clone()) {
        if kill_workers {
            old.shutdown(Shutdown {
                wait: false,
                cancel_futures: true,
                kill_workers: true,
            });
        }
        old.release();
    }
    Ok(executor)
}

/// The reusable executor as it is; replaced, with the same configuration,
/// if it is shut down or broken; a default one if there is none.
fn current() -> Result<Executor, Error> {
    let config = {
        let slot = REUSABLE.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(executor) if !executor.is_shutdown() && executor.broken().is_none() => {
                return Ok(executor.clone());
            }
            Some(executor) => executor.config(),
            None => Config::default().backend(crate::cluster::Backend::from_env()?),
        }
    };
    get_reusable_executor(config)
}

/// Submits to the reusable executor; every failure lands in the future.
pub(crate) fn spawn<T: Task>(task: T, args: T::Args) -> Future<T::Output> {
    let mut args = args;
    // A concurrent shutdown may close the executor between `current` and
    // `submit`: try once more with a fresh one.
    for _ in 0..2 {
        match current() {
            Ok(executor) => match executor.submit(task, args) {
                Ok(future) => return future,
                Err(refused) => args = refused.args,
            },
            Err(error) => return Future::failed(T::ID, error),
        }
    }
    Future::failed(T::ID, Error::ShutDown)
}

#[cfg(test)]
mod tests {
    //! Unit tests run worker processes too: the test binary is re-executed.

    use std::time::Duration;

    #[loky::task]
    fn triple(x: u32) -> u32 {
        3 * x
    }

    #[test]
    fn spawn_runs_in_a_worker_of_the_unit_test_binary() {
        let future = triple.spawn(5);
        assert_eq!(future.result_timeout(Duration::from_secs(30)).unwrap(), 15);
        let same = super::get_reusable_executor(crate::Config::default()).unwrap();
        let again = super::get_reusable_executor(crate::Config::default()).unwrap();
        assert_eq!(same.worker_pids(), again.worker_pids());
    }
}
