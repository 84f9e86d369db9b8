//! Scheduling promises across real workers: a free worker takes the next
//! task, a task cancelled before it started never runs, and a chunk crash
//! fails only the element that crashed.

mod common;

use common::{BOUND, eventually, run};
use loky::{Config, Error, Executor, Shutdown};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[loky::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[loky::task]
fn worker_pid() -> u32 {
    std::process::id()
}

/// Appends a line to `path`: proof that it ran.
#[loky::task]
fn touch(path: PathBuf) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(file, "ran").unwrap();
}

/// Segfaults (a real invalid write) when `x % 10 == 7`, else doubles it.
#[loky::task]
fn crash_on_sevens(x: u64) -> u64 {
    if x % 10 == 7 {
        // SAFETY: none: this is the crash under test.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    }
    2 * x
}

/// Sleeps 20 s for input 2, else returns it.
#[loky::task]
fn hang_on_two(x: u64) -> u64 {
    if x == 2 {
        std::thread::sleep(Duration::from_secs(20));
    }
    x
}

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("loky-scheduling-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// After many short tasks the automatic prefetch queues deeply; a long
/// task must still not hold the tasks queued behind it, and a pool that
/// has room grows rather than queueing (one worker served the warm-up).
#[test]
fn after_short_tasks_a_long_one_still_finishes_last() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    for _ in 0..300 {
        assert_eq!(run(&executor, sleep_ms, 0), 0);
    }
    let long = executor.submit(sleep_ms, 1500).unwrap();
    let shorts: Vec<_> = (0..10)
        .map(|_| executor.submit(sleep_ms, 5).unwrap())
        .collect();
    for short in shorts {
        assert_eq!(short.result_timeout(BOUND).unwrap(), 5);
    }
    assert!(!long.done(), "the long task finishes last");
    assert_eq!(long.result_timeout(BOUND).unwrap(), 1500);
}

/// Regression: one 10 ms task waited behind the 800 ms task in that
/// worker's channel while the other worker sat idle.
#[test]
fn a_free_worker_takes_the_next_task() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    executor.start_workers().unwrap();
    let submitted = Instant::now();
    let long = executor.submit(sleep_ms, 800).unwrap();
    let shorts: Vec<_> = (0..4)
        .map(|_| executor.submit(sleep_ms, 10).unwrap())
        .collect();
    for short in shorts {
        assert_eq!(short.result_timeout(BOUND).unwrap(), 10);
    }
    let shorts_done = submitted.elapsed();
    assert!(!long.done(), "the long task finishes last");
    assert!(
        shorts_done < Duration::from_millis(600),
        "the short tasks took {shorts_done:?}: one waited behind the long one"
    );
    assert_eq!(long.result_timeout(BOUND).unwrap(), 800);
}

/// Regression: a task `running()` called not started was cancelled, yet
/// its worker ran it.
#[test]
fn a_task_cancelled_before_it_started_never_runs() {
    let executor = Executor::new(Config::new().max_workers(1).prefetch(2)).unwrap();
    let pid = run(&executor, worker_pid, ());
    let path = temp_path("cancelled");
    let first = executor.submit(sleep_ms, 300).unwrap();
    let second = executor.submit(touch, path.clone()).unwrap();
    assert!(eventually(BOUND, || first.running()));
    assert!(!second.running());
    assert!(second.cancel());
    assert!(matches!(second.result(), Err(Error::Cancelled { .. })));
    assert_eq!(first.result_timeout(BOUND).unwrap(), 300);
    assert_eq!(run(&executor, worker_pid, ()), pid, "no worker was killed");
    assert!(!path.exists(), "the cancelled task ran");
}

/// Regression: `shutdown(cancel_futures)` let a task handed to a worker,
/// still reported pending, run to completion.
#[test]
fn shutdown_cancel_futures_never_runs_a_task_a_worker_holds() {
    let executor = Executor::new(Config::new().max_workers(1).prefetch(2)).unwrap();
    let path = temp_path("shutdown");
    let first = executor.submit(sleep_ms, 300).unwrap();
    let second = executor.submit(touch, path.clone()).unwrap();
    assert!(eventually(BOUND, || first.running()));
    executor.shutdown(Shutdown {
        wait: true,
        cancel_futures: true,
        kill_workers: false,
    });
    assert_eq!(first.result_timeout(BOUND).unwrap(), 300);
    assert!(matches!(
        second.result_timeout(BOUND),
        Err(Error::Cancelled { .. })
    ));
    assert!(!path.exists(), "a task cancelled by shutdown ran");
}

/// Regression: 10 crashing inputs in 100 failed 37 elements, because a
/// chunk failed as a whole.
#[test]
fn a_chunk_crash_fails_only_the_element_that_crashed() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    let results: Vec<_> = executor
        .map(crash_on_sevens, 0..100)
        .chunksize(10)
        .collect();
    assert_eq!(results.len(), 100);
    for (x, result) in (0u64..).zip(results) {
        match result {
            Ok(value) => assert_eq!(value, 2 * x),
            Err(Error::WorkerDied { reason, .. }) if x % 10 == 7 => {
                assert_eq!(reason.signal_name(), Some("SIGSEGV"), "element {x}");
            }
            Err(error) => panic!("element {x}: {error}"),
        }
        if x % 10 == 7 {
            continue;
        }
    }
}

/// The timeout of a chunk names the element that ran out of time; the
/// others keep their results.
#[test]
fn a_chunk_timeout_fails_only_the_element_that_ran_out_of_time() {
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let started = Instant::now();
    let results: Vec<_> = executor
        .map(hang_on_two, 0..10)
        .chunksize(5)
        .timeout(Duration::from_millis(300))
        .collect();
    assert!(started.elapsed() < Duration::from_secs(10));
    for (x, result) in (0u64..).zip(results) {
        match result {
            Ok(value) => assert_eq!(value, x),
            Err(Error::TaskTimeout { task, .. }) if x == 2 => {
                assert_eq!(task, "scheduling::hang_on_two")
            }
            Err(error) => panic!("element {x}: {error}"),
        }
    }
}

/// Regression (found writing the wait examples): cancelling running tasks
/// kills their workers; until those were reaped they counted against
/// `max_workers`, so new calls were prefetched behind a busy worker, and
/// nothing started a worker for them once the dead ones were gone. A short
/// task waited 3 s behind a long one in 4 runs of 5.
#[test]
fn after_cancelling_running_tasks_new_ones_do_not_queue_behind_a_busy_worker() {
    let executor = Executor::new(Config::new().max_workers(4)).unwrap();
    executor.start_workers().unwrap();
    // Short calls first: the adaptive prefetch then queues deeply.
    for result in executor.map(sleep_ms, vec![0; 200]).chunksize(1) {
        result.unwrap();
    }
    let running: Vec<_> = (0..4)
        .map(|_| executor.submit(sleep_ms, 10_000).unwrap())
        .collect();
    assert!(eventually(BOUND, || running.iter().all(|f| f.running())));
    for future in &running[1..] {
        assert!(future.cancel());
    }
    let started = Instant::now();
    let long = executor.submit(sleep_ms, 3_000).unwrap();
    let short = executor.submit(sleep_ms, 20).unwrap();
    let other = executor.submit(sleep_ms, 3_000).unwrap();
    assert_eq!(short.result_timeout(BOUND).unwrap(), 20);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the short task waited {:?} behind a long one",
        started.elapsed()
    );
    // Room for three new workers: every new call starts, none waits
    // behind the 10 s task that was not cancelled.
    assert!(
        eventually(Duration::from_millis(1500), || long.running()
            && other.running()),
        "a call waited behind a busy worker while the pool had room"
    );
    for future in [&running[0], &long, &other] {
        future.cancel();
    }
}

/// A call submitted while a worker is idle goes straight to it, without
/// the manager. Killed just before, the worker cannot take it: the call
/// runs on its replacement, and the killed worker's death is nobody's.
#[test]
fn a_call_sent_to_a_worker_killed_just_before_runs_on_its_replacement() {
    let executor = common::executor(1);
    let mut pid = run(&executor, worker_pid, ());
    for _ in 0..5 {
        // SAFETY: kill only sends a signal, to our own worker.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        let next = executor
            .submit(worker_pid, ())
            .unwrap()
            .result_timeout(BOUND)
            .unwrap();
        assert_ne!(next, pid, "ran on the replacement");
        pid = next;
    }
    assert_eq!(executor.stats().failed, 0);
}
