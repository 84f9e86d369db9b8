//! Patterns for the life of a pool and its tasks, after Python's
//! `ProcessPoolExecutor` guide: an initializer that sets per-worker state,
//! chunksize, cancelling tasks that have not started, shutting down with
//! cancel, and a task that fails while the others go on.
//!
//! `cargo run --release --example patterns_lifecycle`
//!
//! Each pattern is one function below, named after it, and asserts what it
//! shows. examples/README.md lists every pattern and where it is.

use loky::{Config, Error, Executor, Shutdown};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The guide's mock task: works for `millis`, then returns its `name`.
#[loky::task]
fn work(name: u64, millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    name
}

/// Bounds every wait below that is expected to end early.
const PATIENCE: Duration = Duration::from_secs(30);

#[loky::main]
fn main() -> Result<(), Error> {
    initializer_sets_per_worker_state()?;
    chunksize()?;
    cancel_tasks_not_started()?;
    shutdown_with_cancel()?;
    a_failing_task_among_others()?;
    Ok(())
}

/// Per-worker state: set once in each worker by the initializer, read by
/// every task that worker runs. Each worker is a process: this static is
/// not shared between them, nor with the parent.
static CONNECTION: OnceLock<String> = OnceLock::new();

/// The initializer: a task that every worker runs once, before its first
/// task (a database connection, a model loaded from disk...).
#[loky::task]
fn connect(url: String) {
    let connection = format!("{url} (opened by worker {})", std::process::id());
    CONNECTION
        .set(connection)
        .expect("the initializer runs once per worker");
}

/// A task that uses its worker's connection.
#[loky::task]
fn query(id: u64) -> (u64, u32, String) {
    let connection = CONNECTION.get().expect("the initializer ran first");
    (id, std::process::id(), connection.clone())
}

/// An initializer that sets per-worker state. Python:
/// `ProcessPoolExecutor(initializer=f, initargs=(..,))`.
///
/// If the initializer fails, the worker is replaced; after three failures
/// in a row the executor is broken and every task fails with
/// `Error::Broken`, saying why.
fn initializer_sets_per_worker_state() -> Result<(), Error> {
    let config = Config::new()
        .max_workers(2)
        .initializer(connect, "db://example".to_owned());
    let executor = Executor::new(config)?;
    let answers = executor
        .map(query, 0..20)
        .chunksize(1)
        .collect::<Result<Vec<_>, _>>()?;
    for (id, pid, connection) in &answers {
        assert_eq!(
            *connection,
            format!("db://example (opened by worker {pid})")
        );
        assert_ne!(*pid, std::process::id(), "query {id} ran in a worker");
    }
    let mut pids: Vec<u32> = answers.iter().map(|(_, pid, _)| *pid).collect();
    pids.sort_unstable();
    pids.dedup();
    println!(
        "initializer: 20 queries over {} worker connections",
        pids.len()
    );
    assert!(pids.len() <= 2);
    executor.shutdown(Shutdown::default());
    Ok(())
}

/// Squares a number: a task too short to be worth a message of its own.
#[loky::task]
fn square(x: u64) -> u64 {
    x * x
}

/// Chunksize: send many short tasks a batch at a time, one message and one
/// call per batch. Python: `executor.map(task, items, chunksize=100)`.
///
/// `chunksize(0)`, the default, chooses: from the input's length when it is
/// known, else growing while chunks finish quickly. Set it to bound the
/// work a crash or a timeout can take down with it, or to tune. Results
/// still come one per input, in order, and a failing input fails alone.
fn chunksize() -> Result<(), Error> {
    let executor = Executor::new(Config::new().max_workers(2))?;
    let squares = executor
        .map(square, 0..1000)
        .chunksize(100)
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(squares.len(), 1000);
    assert_eq!(squares[999], 999 * 999);
    // The executor counts calls: ten chunks of a hundred.
    let calls = executor.stats().done;
    println!("chunksize: 1000 inputs in {calls} calls");
    assert_eq!(calls, 10);
    executor.shutdown(Shutdown::default());
    Ok(())
}

/// Cancel tasks that have not started: they never run, and no worker is
/// harmed. Python: `future.cancel()`.
///
/// (Cancelling a running task also works here, unlike in Python: its
/// worker is killed and replaced; see `patterns_wait`.)
fn cancel_tasks_not_started() -> Result<(), Error> {
    // One worker, busy for a second: the tasks behind it wait their turn.
    let executor = Executor::new(Config::new().max_workers(1))?;
    let busy = executor.submit(work, (0, 1000))?;
    let queued = (1..=5)
        .map(|name| executor.submit(work, (name, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    // Callbacks run for a cancelled task too.
    let (tx, rx) = mpsc::channel();
    queued[0].add_done_callback(move |outcome| {
        let _ = tx.send(matches!(outcome, Err(Error::Cancelled { .. })));
    });
    for future in &queued {
        assert!(!future.running());
        assert!(future.cancel(), "a task not started can be cancelled");
        assert!(future.cancelled() && future.done());
    }
    assert_eq!(rx.recv_timeout(PATIENCE), Ok(true));
    assert_eq!(busy.result()?, 0, "the running task was not affected");
    for future in queued {
        assert!(matches!(future.result(), Err(Error::Cancelled { .. })));
    }
    let stats = executor.stats();
    println!(
        "cancel: 5 cancelled, {} worker killed, {} started",
        stats.exits.killed, stats.started
    );
    assert_eq!(stats.exits.killed, 0);
    assert_eq!(stats.started, 1);
    executor.shutdown(Shutdown::default());
    Ok(())
}

/// Shutdown with cancel: stop the pool, let the running tasks finish and
/// cancel the ones not started. Python: `executor.shutdown(wait=True,
/// cancel_futures=True)`.
///
/// `kill_workers: true` would also stop the running ones (they fail with
/// `Error::ShutDown`); `wait: false` returns at once.
fn shutdown_with_cancel() -> Result<(), Error> {
    let executor = Executor::new(Config::new().max_workers(2))?;
    executor.start_workers()?;
    let futures = (0..10)
        .map(|name| executor.submit(work, (name, 300)))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + PATIENCE;
    while !futures[0].running() {
        assert!(Instant::now() < deadline, "the first task never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    executor.shutdown(Shutdown {
        wait: true,
        cancel_futures: true,
        kill_workers: false,
    });
    let (mut finished, mut cancelled) = (0, 0);
    for (name, future) in (0..).zip(futures) {
        match future.result() {
            Ok(value) => {
                assert_eq!(value, name);
                finished += 1;
            }
            Err(Error::Cancelled { .. }) => cancelled += 1,
            Err(other) => panic!("task {name}: {other}"),
        }
    }
    println!("shutdown with cancel: {finished} finished, {cancelled} cancelled");
    // The running tasks (at most one per worker) finished; the rest never ran.
    assert!((1..=2).contains(&finished));
    assert_eq!(finished + cancelled, 10);
    // A shut-down executor refuses work and hands the arguments back.
    let refused = executor.submit(work, (99, 0)).unwrap_err();
    assert!(matches!(refused.reason, Error::ShutDown));
    assert_eq!(refused.args, (99, 0));
    Ok(())
}

/// Divides 100 by `x`; panics on zero, as a bug would.
#[loky::task]
fn divide(x: i64) -> i64 {
    100 / x
}

/// A task that fails while the others go on: its error is its own future's
/// (or map element's); the other tasks, and the worker, carry on. Python:
/// `future.exception()`, or the exception `future.result()` raises.
fn a_failing_task_among_others() -> Result<(), Error> {
    let executor = Executor::new(Config::new().max_workers(2))?;
    let futures = [5, 0, 20, -4]
        .into_iter()
        .map(|x| executor.submit(divide, x))
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes: Vec<Result<i64, Error>> = futures.into_iter().map(|f| f.result()).collect();
    for outcome in &outcomes {
        match outcome {
            Ok(value) => println!("failing task: ok {value}"),
            Err(error) => println!("failing task: {error}"),
        }
    }
    assert!(matches!(outcomes[0], Ok(20)));
    match &outcomes[1] {
        // The panic's message and location (and backtrace, with
        // RUST_BACKTRACE set) come back from the worker.
        Err(Error::Panicked { panic, .. }) => {
            assert!(panic.message.contains("divide by zero"), "{panic}")
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(matches!(outcomes[2..], [Ok(5), Ok(-25)]));
    // The same with `map`: the failing element yields its error, the
    // others their results.
    let results: Vec<Result<i64, Error>> = executor.map(divide, [10, 0, 50]).collect();
    assert!(matches!(
        results[..],
        [Ok(10), Err(Error::Panicked { .. }), Ok(2)]
    ));
    // A panic does not kill the worker.
    assert_eq!(executor.stats().exits.crashed, 0);
    executor.shutdown(Shutdown::default());
    Ok(())
}
