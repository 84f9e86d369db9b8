//! The process-wide reusable executor that `task.spawn(..)` uses.

use crate::config::Config;
use crate::error::Error;
use crate::executor::{Executor, Shutdown};
use crate::future::Future;
use crate::task::Task;
use std::sync::{Mutex, PoisonError};

static REUSABLE: Mutex<Option<Executor>> = Mutex::new(None);

/// Returns the process-wide executor, built with `config`: the same one as
/// before when the configuration matches and it is not shut down;
/// otherwise the old one is shut down (its submitted work still finishes)
/// and a new one takes its place.
pub fn get_reusable_executor(config: Config) -> Result<Executor, Error> {
    let mut slot = REUSABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(executor) = slot.as_ref() {
        if !executor.is_shutdown() && *executor.config() == config {
            return Ok(executor.clone());
        }
    }
    let executor = Executor::new(config)?;
    if let Some(old) = slot.replace(executor.clone()) {
        old.shutdown(Shutdown {
            wait: false,
            ..Shutdown::default()
        });
    }
    Ok(executor)
}

/// The reusable executor as it is, or a default one if there is none.
fn current() -> Result<Executor, Error> {
    {
        let slot = REUSABLE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(executor) = slot.as_ref().filter(|e| !e.is_shutdown()) {
            return Ok(executor.clone());
        }
    }
    get_reusable_executor(Config::default())
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
