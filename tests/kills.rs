//! Timeouts, cancelling running tasks, killing and terminating workers:
//! the worker and every process it started die, the pool carries on.
//!
//! Beyond Python loky: pebble's per-task timeouts and cancellation, and
//! Python 3.14's `terminate_workers` and `kill_workers`.

mod common;

use common::{BOUND, eventually, executor, process_state, run, wait_gone};
use loky::{Error, Shutdown};
use std::path::{Path, PathBuf};
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

/// Starts `sleep 1000` as a child of the worker, writes its pid and the
/// worker's to `path`, then sleeps `ms`.
#[loky::task]
fn spawn_sleeper_then_sleep(path: PathBuf, ms: u64) {
    let child = start_sleeper(&path);
    std::thread::sleep(Duration::from_millis(ms));
    // Only reached when the task outlives its `sleep`, which it should not.
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
}

/// Like `spawn_sleeper_then_sleep`, then exits with code 3.
#[loky::task]
fn spawn_sleeper_then_exit(path: PathBuf) {
    let child = start_sleeper(&path);
    // Exits with the child still running: the pool must not leave it.
    std::mem::forget(child);
    std::process::exit(3);
}

/// Starts `sleep 1000` and writes the worker's pid and its pid to `path`.
fn start_sleeper(path: &Path) -> std::process::Child {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep starts");
    let pids = format!("{} {}", std::process::id(), child.id());
    std::fs::write(path.with_extension("tmp"), pids).unwrap();
    std::fs::rename(path.with_extension("tmp"), path).unwrap();
    child
}

/// Ignores SIGTERM, then sleeps.
#[loky::task]
fn ignore_sigterm_then_sleep(ms: u64) -> u32 {
    // SAFETY: sets a signal disposition.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// A process that no longer runs: gone, or a zombie waiting for a parent
/// that is not this test (an orphaned grandchild belongs to init).
fn dead(pid: u32) -> bool {
    matches!(process_state(pid), None | Some('Z'))
}

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("loky-kills-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits for the task to write its pids: (worker, sleep child).
fn read_pids(path: &Path) -> (u32, u32) {
    assert!(
        eventually(BOUND, || path.exists()),
        "the task never wrote {path:?}"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let _ = std::fs::remove_file(path);
    let mut pids = text.split(' ').map(|p| p.parse().unwrap());
    (pids.next().unwrap(), pids.next().unwrap())
}

#[test]
fn a_task_past_its_timeout_fails_and_its_worker_is_replaced() {
    let executor = executor(1);
    let first = run(&executor, worker_pid, ());
    let started = Instant::now();
    let slow = executor
        .submit_timeout(sleep_ms, 20_000, Duration::from_millis(200))
        .unwrap();
    // Queued behind the slow task, in the same worker's channel.
    let behind = executor.submit(sleep_ms, 1).unwrap();
    let result = slow.result_timeout(BOUND);
    let took = started.elapsed();
    let Err(Error::TaskTimeout { task, pid, timeout }) = result else {
        panic!("expected TaskTimeout, got {result:?}");
    };
    assert_eq!(task, "kills::sleep_ms");
    assert_eq!(pid, first);
    assert_eq!(timeout, Duration::from_millis(200));
    assert!(took >= timeout && took < Duration::from_secs(1), "{took:?}");
    assert!(wait_gone(pid, BOUND), "the timed-out worker lives on");
    assert_eq!(behind.result_timeout(BOUND).unwrap(), 1);
    let replacement = executor
        .submit(worker_pid, ())
        .unwrap()
        .result_timeout(BOUND);
    assert_ne!(replacement.unwrap(), first);
}

#[test]
fn the_timeout_counts_from_the_start_of_the_task_not_its_submission() {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1).prefetch(2)).unwrap();
    // Three 150 ms tasks in a row on one worker: the last waits 300 ms,
    // more than its timeout, but runs well within it.
    let futures: Vec<_> = (0..3)
        .map(|_| {
            executor
                .submit_timeout(sleep_ms, 150, Duration::from_millis(400))
                .unwrap()
        })
        .collect();
    for future in futures {
        assert_eq!(future.result_timeout(BOUND).unwrap(), 150);
    }
}

#[test]
fn map_with_a_timeout_fails_only_the_slow_elements() {
    let executor = executor(2);
    let results: Vec<_> = executor
        .map(sleep_ms, [10, 20_000, 30, 20_000, 50])
        .timeout(Duration::from_millis(300))
        .collect();
    assert_eq!(results.len(), 5);
    for (index, ms) in [(0, 10), (2, 30), (4, 50)] {
        assert_eq!(*results[index].as_ref().unwrap(), ms);
    }
    for index in [1, 3] {
        assert!(
            matches!(
                results[index],
                Err(Error::TaskTimeout {
                    task: "kills::sleep_ms",
                    ..
                })
            ),
            "{:?}",
            results[index]
        );
    }
}

#[test]
fn cancelling_a_running_task_kills_its_worker_and_the_pool_goes_on() {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1).prefetch(1)).unwrap();
    let pid = run(&executor, worker_pid, ());
    let running = executor.submit(sleep_ms, 20_000).unwrap();
    let behind = executor.submit(sleep_ms, 2).unwrap();
    assert!(eventually(BOUND, || running.running()));
    let started = Instant::now();
    assert!(running.cancel());
    assert!(running.cancelled() && running.done());
    assert!(
        wait_gone(pid, BOUND),
        "the cancelled task's worker lives on"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        running.result_timeout(BOUND),
        Err(Error::Cancelled {
            task: "kills::sleep_ms"
        })
    ));
    // The task queued behind it had not started: it runs on a new worker.
    assert_eq!(behind.result_timeout(BOUND).unwrap(), 2);
    let next = executor
        .submit(worker_pid, ())
        .unwrap()
        .result_timeout(BOUND);
    assert_ne!(next.unwrap(), pid);
}

/// A task sent to a worker's channel but not started is taken back on the
/// worker's board: it never runs, and its worker is not killed for it.
#[test]
fn a_cancelled_task_waiting_in_a_worker_never_runs_and_costs_no_worker() {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1).prefetch(1)).unwrap();
    let pid = run(&executor, worker_pid, ());
    let first = executor.submit(sleep_ms, 300).unwrap();
    // Sent to the same worker's channel behind `first`: not running yet.
    let second = executor.submit(sleep_ms, 20_000).unwrap();
    assert!(eventually(BOUND, || executor.stats().running == 2));
    assert!(first.running() && !second.running());
    assert!(second.cancel());
    assert_eq!(first.result_timeout(BOUND).unwrap(), 300);
    assert!(second.cancelled());
    // The worker skipped it: the next task runs at once, on the same worker.
    let started = Instant::now();
    assert_eq!(run(&executor, worker_pid, ()), pid);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(executor.stats().exits.killed, 0);
}

#[test]
fn shutdown_with_kill_takes_down_the_processes_tasks_started() {
    let executor = executor(1);
    let path = temp_path("shutdown");
    let running = executor
        .submit(spawn_sleeper_then_sleep, (path.clone(), 20_000))
        .unwrap();
    let pending = executor.submit(sleep_ms, 1).unwrap();
    let (worker, sleeper) = read_pids(&path);
    let started = Instant::now();
    executor.shutdown(Shutdown {
        wait: true,
        cancel_futures: false,
        kill_workers: true,
    });
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        running.result_timeout(BOUND),
        Err(Error::ShutDown)
    ));
    assert!(matches!(
        pending.result_timeout(BOUND),
        Err(Error::ShutDown)
    ));
    assert_eq!(process_state(worker), None, "the worker was reaped");
    assert!(
        eventually(Duration::from_secs(1), || dead(sleeper)),
        "the worker's `sleep` child survived"
    );
}

#[test]
fn a_crashing_worker_takes_down_the_processes_its_task_started() {
    let executor = executor(1);
    let path = temp_path("crash");
    let future = executor
        .submit(spawn_sleeper_then_exit, path.clone())
        .unwrap();
    let (_, sleeper) = read_pids(&path);
    assert!(matches!(
        future.result_timeout(BOUND),
        Err(Error::WorkerDied {
            reason: loky::ExitReason::Code(3),
            ..
        })
    ));
    assert!(
        eventually(Duration::from_secs(1), || dead(sleeper)),
        "the crashed worker's `sleep` child survived"
    );
}

#[test]
fn a_timeout_takes_down_the_processes_the_task_started() {
    let executor = executor(1);
    let path = temp_path("timeout");
    let future = executor
        .submit_timeout(
            spawn_sleeper_then_sleep,
            (path.clone(), 20_000),
            Duration::from_millis(500),
        )
        .unwrap();
    let (worker, sleeper) = read_pids(&path);
    assert!(matches!(
        future.result_timeout(BOUND),
        Err(Error::TaskTimeout { pid, .. }) if pid == worker
    ));
    assert!(eventually(Duration::from_secs(1), || dead(sleeper)));
    assert!(wait_gone(worker, BOUND));
}

#[test]
fn terminate_workers_stops_running_and_pending_tasks() {
    let executor = executor(1);
    let path = temp_path("terminate");
    let running = executor
        .submit(spawn_sleeper_then_sleep, (path.clone(), 20_000))
        .unwrap();
    let pending = executor.submit(sleep_ms, 1).unwrap();
    let (worker, sleeper) = read_pids(&path);
    executor.terminate_workers();
    assert!(executor.is_shutdown());
    assert!(matches!(
        running.result_timeout(BOUND),
        Err(Error::ShutDown)
    ));
    assert!(matches!(
        pending.result_timeout(BOUND),
        Err(Error::Cancelled { .. })
    ));
    assert!(wait_gone(worker, Duration::from_secs(2)));
    assert!(eventually(Duration::from_secs(1), || dead(sleeper)));
    assert!(eventually(Duration::from_secs(2), || executor.is_stopped()));
    assert!(executor.submit(sleep_ms, 1).is_err());
}

#[test]
fn terminate_workers_kills_a_worker_that_ignores_sigterm() {
    let executor = executor(1);
    let pid = run(&executor, worker_pid, ());
    let stubborn = executor.submit(ignore_sigterm_then_sleep, 20_000).unwrap();
    assert!(eventually(BOUND, || stubborn.running()));
    // Let it install its handler.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    executor.terminate_workers();
    assert!(wait_gone(pid, Duration::from_secs(5)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "SIGKILL should follow SIGTERM after about a second, took {took:?}"
    );
    assert!(matches!(
        stubborn.result_timeout(BOUND),
        Err(Error::ShutDown)
    ));
}

/// Two workers each running a long task, a third task pending, and the
/// workers' pids.
fn two_running_one_pending() -> (
    loky::Executor,
    Vec<loky::Future<u64>>,
    loky::Future<u64>,
    Vec<u32>,
) {
    // Without prefetch, each task gets a worker of its own.
    let executor = loky::Executor::new(loky::Config::new().max_workers(2).prefetch(0)).unwrap();
    let running: Vec<_> = (0..2)
        .map(|_| executor.submit(sleep_ms, 20_000).unwrap())
        .collect();
    let pending = executor.submit(sleep_ms, 1).unwrap();
    assert!(eventually(BOUND, || running.iter().all(|f| f.running())));
    let pids = executor.worker_pids();
    assert_eq!(pids.len(), 2);
    (executor, running, pending, pids)
}

#[test]
fn shutdown_can_kill_the_workers() {
    let (executor, running, pending, pids) = two_running_one_pending();
    let started = Instant::now();
    executor.shutdown(Shutdown {
        kill_workers: true,
        ..Shutdown::default()
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    for future in running {
        assert!(matches!(future.result_timeout(BOUND), Err(Error::ShutDown)));
    }
    let pending = pending.result_timeout(BOUND);
    assert!(matches!(pending, Err(Error::ShutDown)), "{pending:?}");
    for pid in pids {
        assert!(wait_gone(pid, BOUND), "worker {pid} survived");
    }
}

#[test]
fn kill_workers_stops_everything_at_once() {
    let (executor, running, pending, pids) = two_running_one_pending();
    executor.kill_workers();
    for pid in pids {
        assert!(wait_gone(pid, Duration::from_secs(1)));
    }
    for future in running {
        assert!(matches!(future.result_timeout(BOUND), Err(Error::ShutDown)));
    }
    assert!(matches!(
        pending.result_timeout(BOUND),
        Err(Error::Cancelled { .. })
    ));
}
