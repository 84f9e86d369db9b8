//! Patterns for waiting on several tasks, after the usage patterns of
//! Python's `ProcessPoolExecutor` guide: wait for the first to complete,
//! wait for the first failure, wait for all (with a timeout).
//!
//! `cargo run --release --example patterns_wait`
//!
//! `loky::wait(&futures, timeout, return_when)` is Python's
//! `concurrent.futures.wait`: it returns the indices of the futures that
//! are done and of those that are not. Each pattern is one function below,
//! named after it, and asserts what it shows. examples/README.md lists
//! every pattern and where it is.

use loky::{Config, Error, Executor, ReturnWhen, WaitResult, wait};
use std::time::Duration;

/// The guide's mock task: works for `millis`, then returns its `name`;
/// panics (a failure) on a negative name.
#[loky::task]
fn work(name: i64, millis: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(millis));
    assert!(name >= 0, "negative name {name}");
    name
}

/// Bounds the waits that are expected to end early.
const PATIENCE: Option<Duration> = Some(Duration::from_secs(30));

#[loky::main]
fn main() -> Result<(), Error> {
    wait_for_first_completed(&pool()?)?;
    wait_for_first_failure(&pool()?)?;
    wait_for_all_with_timeout(&pool()?)?;
    Ok(())
}

/// A pool with a worker for every task of a pattern, started before the
/// tasks are submitted, so that no task waits behind a slow one. Dropping
/// the last handle shuts it down.
fn pool() -> Result<Executor, Error> {
    let executor = Executor::new(Config::new().max_workers(4))?;
    executor.start_workers()?;
    Ok(executor)
}

/// Wait for the first to complete: start several tasks, go on with
/// whichever answers first. Python: `wait(futures,
/// return_when=FIRST_COMPLETED)`.
fn wait_for_first_completed(executor: &Executor) -> Result<(), Error> {
    let futures = [(0, 3000), (1, 3000), (2, 20), (3, 3000)]
        .into_iter()
        .map(|args| executor.submit(work, args))
        .collect::<Result<Vec<_>, _>>()?;
    let WaitResult { done, not_done } = wait(&futures, PATIENCE, ReturnWhen::FirstCompleted);
    println!("first completed: done {done:?}, not done {not_done:?}");
    assert_eq!(done, [2]);
    assert_eq!(not_done, [0, 1, 3]);
    // The others are not needed. Unlike Python, `cancel` stops a running
    // task too: its worker is killed (and replaced on demand).
    for &index in &not_done {
        assert!(futures[index].cancel());
    }
    let mut futures = futures;
    assert_eq!(futures.swap_remove(2).result()?, 2);
    Ok(())
}

/// Wait for the first failure: stop waiting as soon as any task fails.
/// Python: `wait(futures, return_when=FIRST_EXCEPTION)`.
///
/// A failure is an `Err` outcome: a panic, a worker that died, a timeout,
/// a cancellation. A task that returns `Result` and gives `Err` succeeded:
/// its outcome is `Ok(Err(..))`.
fn wait_for_first_failure(executor: &Executor) -> Result<(), Error> {
    let mut futures = [(0, 3000), (-1, 20), (2, 3000)]
        .into_iter()
        .map(|args| executor.submit(work, args))
        .collect::<Result<Vec<_>, _>>()?;
    let WaitResult { done, not_done } = wait(&futures, PATIENCE, ReturnWhen::FirstException);
    println!("first failure: done {done:?}, not done {not_done:?}");
    assert_eq!(done, [1]);
    assert_eq!(not_done, [0, 2]);
    for &index in &not_done {
        futures[index].cancel();
    }
    match futures.swap_remove(1).result() {
        Err(Error::Panicked { panic, pid, .. }) => {
            println!("  task 1 panicked in worker {pid}: {panic}");
            assert_eq!(panic.message, "negative name -1");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    Ok(())
}

/// Wait for all, with a timeout: wait until every task is done, or give up
/// waiting after a while. Python: `wait(futures, timeout=0.5)`.
fn wait_for_all_with_timeout(executor: &Executor) -> Result<(), Error> {
    let futures = [(0, 20), (1, 20), (2, 20), (3, 1500)]
        .into_iter()
        .map(|args| executor.submit(work, args))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = Some(Duration::from_millis(500));
    let WaitResult { done, not_done } = wait(&futures, timeout, ReturnWhen::AllCompleted);
    println!("all, within 500 ms: done {done:?}, not done {not_done:?}");
    assert_eq!(done, [0, 1, 2]);
    assert_eq!(not_done, [3]);
    // Only the wait ended: task 3 goes on. Waiting for all again, without
    // a timeout (Python: `wait(futures)`), returns once it is done too.
    let WaitResult { done, not_done } = wait(&futures, None, ReturnWhen::AllCompleted);
    println!("all: done {done:?}");
    assert_eq!(done, [0, 1, 2, 3]);
    assert!(not_done.is_empty());
    let results = futures
        .into_iter()
        .map(|future| future.result())
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(results, [0, 1, 2, 3]);
    Ok(())
}
