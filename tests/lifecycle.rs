//! A worker's life: started ahead of time or on demand, initialized,
//! retired when idle, after N tasks or when it leaks memory, nested
//! executors, per-worker environment, and the stats that report it all.
//! After Python loky's `test_worker_timeout`, `test_memory_leak_protection`
//! and CPython's `max_tasks_per_child` and initializer tests.

mod common;

use common::{BOUND, eventually, executor, run, wait_gone};
use loky::{Config, Error, Executor};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[loky::task]
fn worker_pid() -> u32 {
    std::process::id()
}

#[loky::task]
fn sleep_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[loky::task]
fn echo(x: u64) -> u64 {
    x
}

static INITIALIZED: AtomicU64 = AtomicU64::new(0);

#[loky::task]
fn set_initialized(value: u64) {
    INITIALIZED.store(value, Ordering::SeqCst);
}

#[loky::task]
fn read_initialized() -> (u32, u64) {
    (std::process::id(), INITIALIZED.load(Ordering::SeqCst))
}

#[loky::task]
fn failing_initializer(message: String) {
    panic!("{message}");
}

#[loky::task]
fn exiting_initializer() {
    std::process::exit(9);
}

/// Leaks `mb` megabytes, touched so that they count as resident.
#[loky::task]
fn leak_mb(mb: usize, sleep_ms: u64) -> u32 {
    let leaked: &'static mut [u8] = Box::leak(vec![1u8; mb << 20].into_boxed_slice());
    std::hint::black_box(leaked);
    std::thread::sleep(Duration::from_millis(sleep_ms));
    std::process::id()
}

#[loky::task]
fn read_env(key: String) -> Option<String> {
    std::env::var(key).ok()
}

/// Builds an executor inside this worker and recurses: the depths reached.
#[loky::task]
fn nest(levels: u32) -> Result<Vec<String>, String> {
    let depth = std::env::var("LOKY_DEPTH").unwrap_or_default();
    if levels == 0 {
        return Ok(vec![depth]);
    }
    let executor = Executor::new(Config::new().max_workers(1)).map_err(|e| e.to_string())?;
    let inner = executor
        .submit(crate::nest, levels - 1)
        .map_err(|e| e.to_string())?
        .result_timeout(BOUND)
        .map_err(|e| e.to_string())??;
    Ok(std::iter::once(depth).chain(inner).collect())
}

#[test]
fn an_idle_worker_exits_after_its_timeout_and_workers_come_back() {
    let executor = Executor::new(
        Config::new()
            .max_workers(2)
            .idle_timeout(Duration::from_millis(100)),
    )
    .unwrap();
    let pid = run(&executor, worker_pid, ());
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "the idle worker stayed"
    );
    assert!(executor.worker_pids().is_empty());
    assert_eq!(executor.stats().exits.idle, 1);
    assert_eq!(executor.stats().exits.crashed, 0);
    let again = executor
        .submit(worker_pid, ())
        .unwrap()
        .result_timeout(BOUND);
    assert_ne!(again.unwrap(), pid);
}

#[test]
fn a_plain_executor_keeps_idle_workers_by_default() {
    let executor = executor(1);
    assert_eq!(executor.idle_timeout(), None);
    let pid = executor
        .submit(worker_pid, ())
        .unwrap()
        .result_timeout(BOUND);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(executor.worker_pids(), vec![pid.unwrap()]);
}

#[test]
fn idle_timeouts_from_1_to_100_ms_under_load_lose_nothing() {
    for timeout_ms in [1, 5, 10, 50, 100] {
        let executor = Executor::new(
            Config::new()
                .max_workers(2)
                .idle_timeout(Duration::from_millis(timeout_ms)),
        )
        .unwrap();
        for round in 0..6u64 {
            let futures: Vec<_> = (0..40u64)
                .map(|i| executor.submit(echo, round * 100 + i).unwrap())
                .collect();
            for (i, future) in futures.into_iter().enumerate() {
                assert_eq!(
                    future.result_timeout(BOUND).unwrap(),
                    round * 100 + i as u64,
                    "idle timeout {timeout_ms} ms"
                );
            }
            // Sleep around the timeout, so that workers are retiring just
            // as the next round arrives.
            std::thread::sleep(Duration::from_millis(timeout_ms * (round % 3) / 2));
        }
        let stats = executor.stats();
        assert_eq!(stats.done, 240, "{stats:?}");
        assert_eq!(stats.exits.crashed, 0, "{stats:?}");
    }
}

#[test]
fn start_workers_starts_them_all_ahead_of_time() {
    let executor = executor(3);
    assert!(executor.worker_pids().is_empty(), "workers start on demand");
    let started = Instant::now();
    executor.start_workers().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(executor.worker_pids().len(), 3);
    assert_eq!(executor.stats().started, 3);
    let pids: BTreeSet<u32> = executor.worker_pids().into_iter().collect();
    let ran_on = executor
        .submit(worker_pid, ())
        .unwrap()
        .result_timeout(BOUND);
    assert!(
        pids.contains(&ran_on.unwrap()),
        "a task used a started worker"
    );
}

#[test]
fn start_workers_reports_workers_that_cannot_start() {
    let executor = Executor::new(
        Config::new()
            .max_workers(2)
            .env("LOKY_WORKER_FAULT", "exit:3"),
    )
    .unwrap();
    let result = executor.start_workers();
    assert!(
        matches!(
            result,
            Err(Error::Spawn(loky::SpawnError::ExitedEarly {
                reason: loky::ExitReason::Code(3),
                ..
            }))
        ),
        "{result:?}"
    );
}

#[test]
fn the_initializer_runs_once_in_every_worker_before_its_tasks() {
    let config = Config::new()
        .max_workers(2)
        .initializer(set_initialized, 42);
    let executor = Executor::new(config).unwrap();
    executor.start_workers().unwrap();
    let mut seen = BTreeSet::new();
    let futures: Vec<_> = (0..20)
        .map(|_| executor.submit(read_initialized, ()).unwrap())
        .collect();
    for future in futures {
        let (pid, value) = future.result_timeout(BOUND).unwrap();
        assert_eq!(value, 42, "worker {pid} ran a task before its initializer");
        seen.insert(pid);
    }
    assert!(!seen.is_empty());
    assert_eq!(executor.stats().exits.failed_to_start, 0);
}

#[test]
fn a_panicking_initializer_breaks_the_executor_after_three_tries() {
    let config = Config::new()
        .max_workers(1)
        .initializer(failing_initializer, "no database".to_owned());
    let executor = Executor::new(config).unwrap();
    let result = executor.submit(echo, 1).unwrap().result_timeout(BOUND);
    let Err(Error::Broken { reason }) = result else {
        panic!("expected Broken, got {result:?}");
    };
    assert!(
        reason.contains("lifecycle::failing_initializer"),
        "{reason}"
    );
    assert!(reason.contains("3 workers in a row"), "{reason}");
    assert!(
        reason.contains("panicked") && reason.contains("no database"),
        "{reason}"
    );
    assert_eq!(executor.broken(), Some(reason));
    assert_eq!(
        executor.stats().started,
        3,
        "bounded: no endless respawning"
    );
    // Later tasks fail the same way, at once.
    let later = executor.submit(echo, 2).unwrap().result_timeout(BOUND);
    assert!(matches!(later, Err(Error::Broken { .. })));
    assert!(eventually(BOUND, || executor.worker_pids().is_empty()));
}

#[test]
fn an_initializer_that_kills_its_worker_is_reported_with_the_exit_code() {
    let config = Config::new()
        .max_workers(1)
        .initializer(exiting_initializer, ());
    let executor = Executor::new(config).unwrap();
    let result = executor.submit(echo, 1).unwrap().result_timeout(BOUND);
    let Err(Error::Broken { reason }) = result else {
        panic!("expected Broken, got {result:?}");
    };
    assert!(reason.contains("exited with code 9"), "{reason}");
}

#[test]
fn max_tasks_per_child_replaces_workers_and_loses_nothing() {
    let executor = Executor::new(Config::new().max_workers(1).max_tasks_per_child(3)).unwrap();
    let pids: Vec<u32> = (0..10)
        .map(|_| executor.submit(worker_pid, ()).unwrap())
        .map(|f| f.result_timeout(BOUND).unwrap())
        .collect();
    for chunk in pids.chunks(3) {
        assert!(chunk.iter().all(|&p| p == chunk[0]), "{pids:?}");
    }
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "{pids:?}");
    assert!(eventually(BOUND, || executor.stats().exits.max_tasks >= 3));

    // Many at once on two workers with prefetch: no deadlock, no loss.
    let executor = Executor::new(
        Config::new()
            .max_workers(2)
            .prefetch(3)
            .max_tasks_per_child(5),
    )
    .unwrap();
    let futures: Vec<_> = (0..200u64)
        .map(|i| executor.submit(echo, i).unwrap())
        .collect();
    for (i, future) in futures.into_iter().enumerate() {
        assert_eq!(future.result_timeout(BOUND).unwrap(), i as u64);
    }
    assert!(executor.stats().started >= 40);
}

#[test]
fn a_leaking_worker_is_replaced_and_every_result_is_right() {
    let config = Config::new()
        .max_workers(1)
        .memory_leak_threshold(Some(20 << 20));
    let executor = Executor::new(config).unwrap();
    let futures: Vec<_> = (0..60)
        .map(|_| executor.submit(leak_mb, (3, 40)).unwrap())
        .collect();
    let pids: Vec<u32> = futures
        .into_iter()
        .map(|f| f.result_timeout(BOUND).unwrap())
        .collect();
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert!(distinct.len() >= 2, "the leaking worker was never replaced");
    let stats = executor.stats();
    assert!(stats.exits.memory >= 1, "{stats:?}");
    assert_eq!(stats.exits.crashed, 0, "{stats:?}");
    assert_eq!(stats.done, 60);
}

#[test]
fn the_memory_cap_is_absolute() {
    // Every worker is over a 1-byte cap: each is replaced at its first
    // check, a second after its first task.
    let executor = Executor::new(Config::new().max_workers(1).max_rss(1)).unwrap();
    let pids: Vec<u32> = (0..8)
        .map(|_| executor.submit(sleep_then_pid, 300).unwrap())
        .map(|f| f.result_timeout(BOUND).unwrap())
        .collect();
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert!(distinct.len() >= 2, "{pids:?}");
    assert!(executor.stats().exits.memory >= 1);
}

#[test]
fn no_leak_check_without_a_threshold() {
    let config = Config::new().max_workers(1).memory_leak_threshold(None);
    let executor = Executor::new(config).unwrap();
    let pids: BTreeSet<u32> = (0..25)
        .map(|_| executor.submit(leak_mb, (3, 50)).unwrap())
        .map(|f| f.result_timeout(BOUND).unwrap())
        .collect();
    assert_eq!(pids.len(), 1);
}

#[test]
fn workers_get_the_configured_environment_and_their_depth() {
    let executor = Executor::new(
        Config::new()
            .max_workers(1)
            .env("LOKY_TEST_GREETING", "hello"),
    )
    .unwrap();
    let greeting = executor
        .submit(read_env, "LOKY_TEST_GREETING".to_owned())
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(greeting.unwrap().as_deref(), Some("hello"));
    let depth = executor
        .submit(read_env, "LOKY_DEPTH".to_owned())
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(depth.unwrap().as_deref(), Some("1"));
}

#[test]
fn tasks_may_nest_executors_down_to_the_depth_limit() {
    let executor = executor(1);
    let depths = executor.submit(nest, 2).unwrap().result_timeout(BOUND);
    assert_eq!(depths.unwrap().unwrap(), ["1", "2", "3"]);

    let limited = Executor::new(Config::new().max_workers(1).env("LOKY_MAX_DEPTH", "2")).unwrap();
    let too_deep = limited.submit(nest, 5).unwrap().result_timeout(BOUND);
    let message = too_deep.unwrap().unwrap_err();
    assert!(
        message.contains("nested too deep") && message.contains("depth 2"),
        "{message}"
    );
}

#[test]
fn stats_count_tasks_and_workers() {
    let executor = executor(2);
    for i in 0..5 {
        run(&executor, echo, i);
    }
    let failed = executor
        .submit_timeout(sleep_then_pid, 10_000, Duration::from_millis(50))
        .unwrap()
        .result_timeout(BOUND);
    assert!(matches!(failed, Err(Error::TaskTimeout { .. })));
    // The killed worker is reaped a moment later.
    assert!(eventually(BOUND, || executor.stats().exits.killed == 1));
    let stats = executor.stats();
    assert_eq!((stats.done, stats.failed), (5, 1), "{stats:?}");
    assert_eq!((stats.pending, stats.running), (0, 0), "{stats:?}");
    // The killed worker is replaced on demand.
    assert_eq!(stats.workers, stats.started as usize - 1, "{stats:?}");
    run(&executor, echo, 9);
    let after = executor.stats();
    assert_eq!(
        after.started,
        stats.started + u64::from(stats.workers == 0),
        "{after:?}"
    );
    assert!(after.workers >= 1 && after.workers <= 2, "{after:?}");
    assert_eq!(after.done, 6);
}

#[test]
fn asking_the_executor_from_a_done_callback_does_not_deadlock() {
    let executor = executor(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let inner = executor.clone();
    // Long enough that the callback is registered first and so runs where
    // the future is settled (the results thread).
    let future = executor.submit(sleep_then_pid, 200).unwrap();
    future.add_done_callback(move |_| {
        let answers = (
            inner.worker_pids(),
            inner.stats().done,
            inner.start_workers(),
        );
        let _ = tx.send(answers);
    });
    let (pids, done, started) = rx.recv_timeout(BOUND).expect("the callback returned");
    // Published by the manager after each step: no answer to wait for.
    assert_eq!(pids.len(), 1, "the worker's pid, from a done-callback");
    assert_eq!(done, 1, "counters need no answer from the manager");
    assert!(started.is_ok());
    assert!(future.result_timeout(BOUND).is_ok());
}

/// The thread-limit variables as a worker sees them.
#[loky::task]
fn thread_vars() -> Vec<(String, Option<String>)> {
    loky::THREAD_LIMIT_VARS
        .iter()
        .map(|var| (var.to_string(), std::env::var(var).ok()))
        .collect()
}

/// What a variable should be in a worker: the parent's value if it has
/// one (never overridden), else `limited`.
fn expected(var: &str, limited: Option<String>) -> Option<String> {
    std::env::var(var).ok().or(limited)
}

/// Workers share the CPUs out among their thread pools by default, keep
/// what the user set, take an explicit limit, and opting out leaves the
/// variables as the parent has them.
#[test]
fn workers_limit_library_thread_pools() {
    let share = (loky::cpu_count() / 2).max(1).to_string();
    let default = executor(2);
    for (var, value) in run(&default, thread_vars, ()) {
        assert_eq!(
            value,
            expected(&var, Some(share.clone())),
            "{var} by default"
        );
    }

    let explicit = Executor::new(
        Config::new()
            .max_workers(2)
            .worker_threads(3)
            .env("OMP_NUM_THREADS", "5"),
    )
    .unwrap();
    for (var, value) in run(&explicit, thread_vars, ()) {
        let want = if var == "OMP_NUM_THREADS" {
            Some("5".to_owned())
        } else {
            expected(&var, Some("3".to_owned()))
        };
        assert_eq!(value, want, "{var} with worker_threads(3)");
    }

    let off = Executor::new(Config::new().max_workers(2).no_thread_limit()).unwrap();
    for (var, value) in run(&off, thread_vars, ()) {
        assert_eq!(value, expected(&var, None), "{var} with no_thread_limit");
    }
}

/// The descriptors of a worker from 3 up, with what they point to.
#[loky::task]
fn worker_descriptors() -> Vec<(i32, String)> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .filter(|(fd, _)| *fd > 2)
        .collect()
}

/// A descriptor the parent leaves inheritable (as ipc-channel's clones of
/// shared memory are) does not reach a worker: workers close what they
/// inherit, as Python's `close_fds` does.
#[test]
fn workers_inherit_no_descriptor_but_the_standard_streams() {
    let file = std::fs::File::open("/proc/self/stat").unwrap();
    // SAFETY: dup of a valid descriptor; the copy has no close-on-exec.
    let leaky = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&file)) };
    assert!(leaky > 2);
    let executor = executor(1);
    let descriptors = run(&executor, worker_descriptors, ());
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(leaky) };
    assert!(
        descriptors
            .iter()
            .all(|(_, target)| !target.contains("/stat")),
        "the worker inherited the parent's descriptor: {descriptors:?}"
    );
}

/// A done-callback holding the last handle of its executor drops it: the
/// executor shuts down without waiting (the callback runs on a thread the
/// manager waits for), and nothing hangs.
#[test]
fn dropping_the_last_handle_in_a_done_callback_does_not_deadlock() {
    let executor = executor(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let last = executor.clone();
    let future = executor.submit(sleep_then_pid, 200).unwrap();
    drop(executor);
    future.add_done_callback(move |_| {
        drop(last);
        let _ = tx.send(());
    });
    rx.recv_timeout(BOUND).expect("the callback returned");
    assert!(future.result_timeout(BOUND).is_ok());
}

/// CPU ticks (user and system) that `/proc/.../stat` reports.
fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).unwrap();
    // Fields after the command name, which may hold spaces: state is the
    // first, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The stat files of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            (comm.trim_end() == name).then(|| path.join("stat").display().to_string())
        })
        .collect()
}

/// Waiting threads look for their answer before they sleep
/// (`Config::spin_wait`), but only briefly: once the calls stop, neither
/// the workers nor the threads that read and watch them in the parent use
/// any CPU.
#[test]
fn an_idle_executor_uses_no_cpu_after_a_burst() {
    if !common::alone("an_idle_executor_uses_no_cpu_after_a_burst") {
        return;
    }
    let executor = executor(2);
    executor.start_workers().unwrap();
    for x in 0..300 {
        assert_eq!(run(&executor, echo, x), x);
    }
    let pids = executor.worker_pids();
    assert_eq!(pids.len(), 2);
    let mut watched: Vec<String> = pids.iter().map(|pid| format!("/proc/{pid}/stat")).collect();
    for name in ["loky-results", "loky-exits"] {
        let threads = threads_named(name);
        assert_eq!(threads.len(), 1, "one {name} thread per executor");
        watched.extend(threads);
    }
    std::thread::sleep(Duration::from_millis(50));
    let before: Vec<u64> = watched.iter().map(|path| cpu_ticks(path)).collect();
    std::thread::sleep(Duration::from_millis(500));
    for (path, before) in watched.iter().zip(before) {
        // A thread that kept looking would use about 50 ticks here.
        let used = cpu_ticks(path) - before;
        assert!(used <= 5, "{path} used {used} ticks while idle");
    }
}

/// However many workers a pool has, the parent runs three threads for it:
/// the manager, one that reads every worker's results and one that waits
/// for every worker's exit; all three end with the executor.
#[test]
fn a_pool_of_any_size_costs_the_parent_three_threads() {
    if !common::alone("a_pool_of_any_size_costs_the_parent_three_threads") {
        return;
    }
    let loky_threads = || {
        let mut names: Vec<String> = common::thread_names()
            .into_iter()
            .filter(|name| name.starts_with("loky-"))
            .collect();
        names.sort();
        names
    };
    assert!(loky_threads().is_empty(), "{:?}", loky_threads());
    let executor = executor(6);
    executor.start_workers().unwrap();
    let futures: Vec<_> = (0..12)
        .map(|_| executor.submit(sleep_then_pid, 20).unwrap())
        .collect();
    for future in futures {
        future.result_timeout(BOUND).unwrap();
    }
    assert_eq!(executor.worker_pids().len(), 6);
    let expected = ["loky-exits", "loky-manager", "loky-results"];
    // The handshake threads end once their worker's link is handed over.
    assert!(
        eventually(BOUND, || loky_threads() == expected),
        "{:?}",
        loky_threads()
    );
    executor.shutdown(loky::Shutdown::default());
    assert!(
        eventually(BOUND, || loky_threads().is_empty()),
        "{:?}",
        loky_threads()
    );
}
