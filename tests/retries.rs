//! Retries across real workers: a task whose worker died runs again on
//! another worker, up to its budget, then fails listing every attempt;
//! panics, timeouts and serde errors are never retried.

mod common;

use common::BOUND;
use loky::{CallOptions, Config, Error, Executor, ExitReason};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Counts its runs in `path`; the first `crashes` runs exit with code 9
/// (the worker dies), the next returns how many runs there were.
#[loky::task]
fn crash_first(path: PathBuf, crashes: usize) -> usize {
    let runs = record_run(&path);
    if runs <= crashes {
        std::process::exit(9);
    }
    runs
}

/// Counts its runs in `path`, then panics.
#[loky::task]
fn panic_counted(path: PathBuf) -> usize {
    record_run(&path);
    panic!("a panic is not retried");
}

/// Counts its runs in `path`, then sleeps 20 s.
#[loky::task]
fn hang_counted(path: PathBuf) -> usize {
    record_run(&path);
    std::thread::sleep(Duration::from_secs(20));
    0
}

/// Appends one byte to `path` and returns how many it holds now.
fn record_run(path: &Path) -> usize {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(b"x").unwrap();
    file.sync_all().unwrap();
    std::fs::metadata(path).unwrap().len() as usize
}

fn runs(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize)
}

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("loky-retries-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn executor(config: Config) -> Executor {
    Executor::new(config.max_workers(2)).unwrap()
}

/// Two deaths, then success: with two retries the caller sees only the
/// result of the third run.
#[test]
fn a_task_whose_worker_died_runs_again() {
    let path = temp_path("again");
    let executor = executor(Config::new());
    let future = executor
        .submit_with(
            crash_first,
            (path.clone(), 2),
            CallOptions::new().retries(2),
        )
        .unwrap();
    assert_eq!(future.result_timeout(BOUND).unwrap(), 3);
    assert_eq!(runs(&path), 3);
}

/// Out of retries: `WorkerDied` names the last worker and lists the
/// earlier attempts, each a different worker with its exit code.
#[test]
fn out_of_retries_the_error_lists_every_attempt() {
    let path = temp_path("exhausted");
    let executor = executor(Config::new());
    let future = executor
        .submit_with(
            crash_first,
            (path.clone(), 100),
            CallOptions::new().retries(2),
        )
        .unwrap();
    match future.result_timeout(BOUND) {
        Err(error @ Error::WorkerDied { .. }) => {
            let Error::WorkerDied {
                pid,
                reason,
                ref earlier,
                ..
            } = error
            else {
                unreachable!()
            };
            assert_eq!(reason, ExitReason::Code(9));
            assert_eq!(earlier.len(), 2, "{error}");
            let mut pids: Vec<u32> = earlier.iter().map(|a| a.pid).collect();
            pids.push(pid);
            pids.sort_unstable();
            pids.dedup();
            assert_eq!(pids.len(), 3, "each attempt on its own worker: {error}");
            for attempt in earlier {
                assert_eq!(attempt.reason, ExitReason::Code(9));
                assert!(
                    error
                        .to_string()
                        .contains(&format!("worker {}", attempt.pid)),
                    "{error}"
                );
            }
            assert!(
                error.to_string().contains("after 2 earlier attempts"),
                "{error}"
            );
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(runs(&path), 3);
}

/// The executor's setting applies to every submission; a submission's own
/// setting overrides it.
#[test]
fn the_executor_default_and_the_per_call_override() {
    let executor = executor(Config::new().retries(1));
    let path = temp_path("default");
    let future = executor.submit(crash_first, (path.clone(), 1)).unwrap();
    assert_eq!(future.result_timeout(BOUND).unwrap(), 2);

    let path = temp_path("override");
    let future = executor
        .submit_with(
            crash_first,
            (path.clone(), 1),
            CallOptions::new().retries(0),
        )
        .unwrap();
    match future.result_timeout(BOUND) {
        Err(Error::WorkerDied { earlier, .. }) => assert!(earlier.is_empty()),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(runs(&path), 1, "no retry with retries(0)");
}

/// A panic and a timeout fail at once whatever the budget: the task ran
/// once.
#[test]
fn panics_and_timeouts_are_never_retried() {
    let executor = executor(Config::new().retries(3));
    let path = temp_path("panic");
    let result = executor
        .submit(panic_counted, path.clone())
        .unwrap()
        .result_timeout(BOUND);
    assert!(matches!(result, Err(Error::Panicked { .. })), "{result:?}");
    assert_eq!(runs(&path), 1);

    let path = temp_path("timeout");
    let options = CallOptions::new().timeout(Duration::from_millis(200));
    let result = executor
        .submit_with(hang_counted, path.clone(), options)
        .unwrap()
        .result_timeout(BOUND);
    assert!(
        matches!(result, Err(Error::TaskTimeout { .. })),
        "{result:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(runs(&path), 1);
}

/// In a chunk each element has its own budget: two elements that each die
/// once both succeed with one retry, and the others run once.
#[test]
fn chunk_elements_are_retried_one_by_one() {
    let executor = executor(Config::new());
    let paths: Vec<PathBuf> = (0..6).map(|i| temp_path(&format!("chunk{i}"))).collect();
    let inputs = paths
        .iter()
        .enumerate()
        .map(|(i, path)| (path.clone(), usize::from(i == 1 || i == 4)));
    let results: Vec<_> = executor
        .map(crash_first, inputs)
        .chunksize(6)
        .retries(1)
        .collect();
    for (i, (result, path)) in results.into_iter().zip(&paths).enumerate() {
        let expected = if i == 1 || i == 4 { 2 } else { 1 };
        assert_eq!(result.unwrap(), expected, "element {i}");
        assert_eq!(runs(path), expected, "element {i}");
    }
}
