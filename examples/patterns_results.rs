//! Patterns for getting results, after the usage patterns of Python's
//! `ProcessPoolExecutor` guide: map and wait, results as completed, results
//! in order, done-callbacks, follow-up tasks, counting remaining tasks.
//!
//! `cargo run --release --example patterns_results`
//!
//! Each pattern is one function below, named after it, and asserts what it
//! shows. examples/README.md lists every pattern and where it is.

use loky::{Config, Error, Executor, ReturnWhen, Shutdown, as_completed, wait};
use std::sync::mpsc;
use std::time::Duration;

/// The guide's mock task: works for `millis`, then returns its `name`.
#[loky::task]
fn work(name: u64, millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    name
}

/// A second-round task, for follow-ups.
#[loky::task]
fn refine(value: u64) -> u64 {
    value * 100
}

/// Bounds every wait on the channels below.
const PATIENCE: Duration = Duration::from_secs(30);

#[loky::main]
fn main() -> Result<(), Error> {
    let executor = Executor::new(Config::new().max_workers(2))?;
    map_and_wait(&executor)?;
    submit_and_use_as_completed(&executor)?;
    submit_and_use_in_order(&executor)?;
    done_callbacks(&executor)?;
    follow_up_tasks(&executor)?;
    counting_remaining_tasks()?;
    // Waits for everything submitted, then for the workers to exit (what
    // leaving Python's `with ProcessPoolExecutor() as executor:` does).
    executor.shutdown(Shutdown::default());
    Ok(())
}

/// Map and wait: run the task on every input, get the results in input
/// order. Python: `for result in executor.map(task, range(10))`.
fn map_and_wait(executor: &Executor) -> Result<(), Error> {
    // `map` is lazy: nothing runs until it is iterated. One `Result` per
    // input; `collect` into `Result<Vec<_>, _>` stops at the first error.
    let inputs = (0..10).map(|name| (name, 10 * (name % 3)));
    let results: Vec<u64> = executor.map(work, inputs).collect::<Result<_, _>>()?;
    println!("map and wait: {results:?}");
    assert_eq!(results, (0..10).collect::<Vec<_>>());
    Ok(())
}

/// Submit and use as completed: one future per task, handled as each
/// finishes. Python: `for future in as_completed(futures)`.
fn submit_and_use_as_completed(executor: &Executor) -> Result<(), Error> {
    // Task 0 is the slowest: it comes last, although it was submitted first.
    let futures = (0..6)
        .map(|name| executor.submit(work, (name, if name == 0 { 800 } else { 20 })))
        .collect::<Result<Vec<_>, _>>()?;
    let mut order = Vec::new();
    // `None`: no deadline. With one, the last item is `Err(WaitTimeout)`.
    for future in as_completed(futures, None) {
        order.push(future?.result()?);
    }
    println!("as completed: {order:?}");
    assert_eq!(order.len(), 6);
    assert_eq!(order.last(), Some(&0), "the slowest task finished last");
    Ok(())
}

/// Submit and use in order: the results in the order the tasks were
/// submitted, whichever finished first. Python: `for future in futures:
/// future.result()`.
fn submit_and_use_in_order(executor: &Executor) -> Result<(), Error> {
    let futures = (0..6)
        .map(|name| executor.submit(work, (name, 60 - 10 * name)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::new();
    for future in futures {
        // Blocks until this task is done; the others go on meanwhile.
        results.push(future.result()?);
    }
    println!("in order: {results:?}");
    assert_eq!(results, [0, 1, 2, 3, 4, 5]);
    Ok(())
}

/// Done-callbacks: code that runs with each outcome as soon as its task is
/// done. Python: `future.add_done_callback(callback)`.
///
/// Callbacks run on the executor's manager thread (or at once, in this
/// thread, if the task is already done): keep them short and never wait
/// on another future of the same executor in one. Several callbacks on one
/// future run in the order they were added.
fn done_callbacks(executor: &Executor) -> Result<(), Error> {
    let futures = (0..5)
        .map(|name| executor.submit(work, (name, 10)))
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = mpsc::channel();
    for future in &futures {
        for callback in ["first", "second"] {
            let tx = tx.clone();
            // The callback gets `&Result<u64, Error>`: a failed task calls it too.
            future.add_done_callback(move |outcome| {
                let _ = tx.send((callback, outcome.as_ref().ok().copied()));
            });
        }
    }
    let mut calls = Vec::new();
    for _ in 0..10 {
        calls.push(rx.recv_timeout(PATIENCE).expect("every callback runs"));
    }
    println!("callbacks: {calls:?}");
    for name in 0..5 {
        let of_this: Vec<_> = calls.iter().filter(|(_, v)| *v == Some(name)).collect();
        assert_eq!(of_this.len(), 2);
        assert_eq!((of_this[0].0, of_this[1].0), ("first", "second"));
    }
    // A callback added to a future already done runs at once, right here.
    wait(&futures, Some(PATIENCE), ReturnWhen::AllCompleted);
    futures[0].add_done_callback(move |outcome| {
        let _ = tx.send(("late", outcome.as_ref().ok().copied()));
    });
    assert_eq!(rx.try_recv(), Ok(("late", Some(0))));
    Ok(())
}

/// Follow-up tasks: as first-round results come in, submit a second task
/// for those that need one, without waiting for the whole first round.
fn follow_up_tasks(executor: &Executor) -> Result<(), Error> {
    let first_round = (0..10)
        .map(|name| executor.submit(work, (name, 5 * (name % 4))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut follow_ups = Vec::new();
    for future in as_completed(first_round, None) {
        let value = future?.result()?;
        // Only even results need a second look.
        if value % 2 == 0 {
            follow_ups.push(executor.submit(refine, value)?);
        }
    }
    let mut refined = follow_ups
        .into_iter()
        .map(|future| future.result())
        .collect::<Result<Vec<_>, _>>()?;
    refined.sort_unstable();
    println!("follow-ups: {refined:?}");
    assert_eq!(refined, [0, 200, 400, 600, 800]);
    Ok(())
}

/// Counting remaining tasks: how many of the submitted tasks are not done
/// yet, as each one finishes. Python reads `executor._pending_work_items`;
/// here `stats()` counts every finished task exactly (and what is queued
/// and in workers, as of the manager's last step).
fn counting_remaining_tasks() -> Result<(), Error> {
    // An executor of its own, so that its counts are this pattern's only.
    let executor = Executor::new(Config::new().max_workers(2))?;
    const TASKS: u64 = 20;
    let futures = (0..TASKS)
        .map(|name| executor.submit(work, (name, 5)))
        .collect::<Result<Vec<_>, _>>()?;
    for (finished, future) in as_completed(futures, None).enumerate() {
        future?.result()?;
        let stats = executor.stats();
        let remaining = TASKS - (stats.done + stats.failed);
        println!(
            "about {remaining} tasks remain ({} queued, {} in workers)",
            stats.pending, stats.running
        );
        // Counted before its future completes: never more than we know of.
        assert!(remaining < TASKS - finished as u64);
    }
    assert_eq!(executor.stats().done, TASKS);
    Ok(())
}
