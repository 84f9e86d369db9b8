//! Deaths are seen at once and reported honestly, whatever the worker
//! leaves behind: a forked child holding its channel, a process started
//! before the handshake.

mod common;

use common::{BOUND, process_state, run};
use loky::{Config, Error, Executor, ExitReason, SpawnError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[loky::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Forks a child that sleeps 20 s holding every descriptor of the worker
/// (its channel included), writes its pid to `path`, then aborts.
#[loky::task]
fn fork_then_abort(path: PathBuf) {
    // SAFETY: the child only calls async-signal-safe functions.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: sleep and _exit are async-signal-safe.
        unsafe {
            libc::sleep(20);
            libc::_exit(0);
        }
    }
    std::fs::write(&path, child.to_string()).unwrap();
    std::process::abort();
}

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("loky-deaths-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn dead(pid: u32) -> bool {
    matches!(process_state(pid), None | Some('Z'))
}

fn eventually_dead(pid: u32) -> bool {
    common::eventually(Duration::from_secs(5), || dead(pid))
}

/// Regression: the death was reported only when the forked child exited,
/// because it held the worker's channel open.
#[test]
fn a_death_is_seen_even_when_a_forked_child_holds_the_channel() {
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let path = temp_path("fork");
    let started = Instant::now();
    let result = executor
        .submit(fork_then_abort, path.clone())
        .unwrap()
        .result_timeout(Duration::from_secs(10));
    let took = started.elapsed();
    match result {
        Err(Error::WorkerDied { reason, .. }) => assert_eq!(reason.signal_name(), Some("SIGABRT")),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(3),
        "the death took {took:?} to be seen"
    );
    let child: u32 = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    assert!(
        eventually_dead(child),
        "the forked child {child} outlived its worker"
    );
    assert_eq!(run(&executor, add, (2, 3)), 5);
    let _ = std::fs::remove_file(path);
}

/// Regression: a worker that exited before its handshake was reaped
/// without its process group being killed, leaving what it started.
#[test]
fn a_worker_that_exits_before_its_handshake_leaves_no_process() {
    let path = temp_path("orphan");
    let config = Config::new()
        .max_workers(1)
        .env("LOKY_WORKER_FAULT", "orphan-exit:3")
        .env("LOKY_WORKER_FAULT_FILE", &path);
    let executor = Executor::new(config).unwrap();
    let result = executor.submit(add, (1, 1)).unwrap().result_timeout(BOUND);
    match result {
        Err(Error::Spawn(SpawnError::ExitedEarly { reason, .. })) => {
            assert_eq!(reason, ExitReason::Code(3));
        }
        other => panic!("expected ExitedEarly, got {other:?}"),
    }
    let left: u32 = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    assert!(
        eventually_dead(left),
        "the process {left} outlived its worker"
    );
    let _ = std::fs::remove_file(path);
}

#[loky::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[loky::task]
fn abort_now() {
    std::process::abort();
}

/// A caller waiting for a single call watches for its outcome on the
/// worker's board, and the worker puts it there instead of sending it.
/// A worker that dies just after (here it exits at once) loses nothing:
/// the caller takes the outcome from the board, or the parent does when it
/// reaps the worker, and nobody is blamed for the exit.
#[test]
fn an_outcome_in_the_reply_box_of_a_worker_that_exits_is_not_lost() {
    let config = Config::new()
        .max_workers(1)
        .spin_wait(Duration::from_millis(10))
        .env("LOKY_WORKER_FAULT", "exit-after-reply:3");
    let executor = Executor::new(config).unwrap();
    for i in 0..20 {
        executor.start_workers().unwrap();
        // The worker is idle: the call goes straight to it, and this
        // thread watches for the outcome while it runs.
        assert_eq!(run(&executor, add, (i, 100)), i + 100, "call {i}");
    }
    // Most outcomes went through the box, each at the cost of a worker,
    // and no call was blamed for those exits.
    let stats = executor.stats();
    assert!(stats.exits.crashed >= 10, "{stats:?}");
    assert_eq!((stats.done, stats.failed), (20, 0));
}

#[test]
fn a_panic_in_the_worker_s_own_loop_is_a_death_not_a_hang() {
    let config = Config::new()
        .max_workers(1)
        .prefetch(8)
        .env("LOKY_WORKER_FAULT", "panic-after-call");
    let executor = Executor::new(config).unwrap();
    executor.start_workers().unwrap();
    // Each worker runs one call, holds its outcome back (more wait), and
    // panics outside the task: the outcome still leaves, the worker
    // aborts, and the calls queued on it run on the next.
    let sums: Vec<_> = (0..5)
        .map(|i| executor.submit(add, (i, 100)).unwrap())
        .collect();
    for (i, sum) in (0..).zip(sums) {
        assert_eq!(sum.result_timeout(BOUND).unwrap(), i + 100, "call {i}");
    }
    // Each of the five died (the last maybe after its outcome arrived).
    let deadline = Instant::now() + BOUND;
    while executor.stats().exits.crashed < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = executor.stats();
    assert_eq!(stats.exits.crashed, 5, "{stats:?}");
    assert_eq!((stats.done, stats.failed), (5, 0));
}

/// A worker holds the outcomes of short calls back to send several in one
/// message, on its board meanwhile. Dying with some held back, it loses
/// none: the parent reads them from the board, and only the call that was
/// running is blamed. (The hold is stretched to a minute, so that the
/// outcomes are still held when the worker dies.)
#[test]
fn outcomes_held_back_by_a_worker_that_dies_are_not_lost() {
    let config = Config::new()
        .max_workers(1)
        .prefetch(8)
        .env("LOKY_WORKER_FAULT", "hold:60000");
    let executor = Executor::new(config).unwrap();
    executor.start_workers().unwrap();
    // The rest queue up on the worker while it sleeps; then it runs the
    // additions, holds their outcomes back (more calls wait behind them),
    // and aborts.
    let slept = executor.submit(sleep_ms, 300).unwrap();
    let sums: Vec<_> = (0..5)
        .map(|i| executor.submit(add, (i, 100)).unwrap())
        .collect();
    let crash = executor.submit(abort_now, ()).unwrap();
    assert_eq!(slept.result_timeout(BOUND).unwrap(), 300);
    for (i, sum) in (0..).zip(sums) {
        assert_eq!(sum.result_timeout(BOUND).unwrap(), i + 100);
    }
    assert!(matches!(
        crash.result_timeout(BOUND),
        Err(Error::WorkerDied { .. })
    ));
    assert!(common::eventually(BOUND, || executor.stats().exits.crashed == 1));
}

/// Returns `size` bytes (inline: the test raises the shared-memory
/// threshold), far more than one fragment of the result channel, and kills
/// its own process `after_ms` into sending them.
#[loky::task]
fn return_at_length_then_die(size: usize, after_ms: u64, path: PathBuf) -> Vec<u8> {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(after_ms));
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    });
    vec![7; size]
}

/// Holds `executor`'s results thread in the done-callback of a call
/// (registered while the call waits on a gate file named `name`, opened
/// then), until the returned sender sends.
fn hold_results_thread(
    executor: &Executor,
    name: &str,
) -> (loky::Future<u64>, std::sync::mpsc::Sender<()>) {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (ran_on, thread) = std::sync::mpsc::channel::<String>();
    let gate = temp_path(name);
    let blocker = executor.submit(add_once_open, (gate.clone(), 1)).unwrap();
    blocker.add_done_callback(move |_| {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        let _ = ran_on.send(name);
        let _ = wait.recv_timeout(BOUND);
    });
    std::fs::write(&gate, b"open").unwrap();
    assert_eq!(thread.recv_timeout(BOUND).unwrap(), "loky-results");
    let _ = std::fs::remove_file(&gate);
    (blocker, release)
}

/// Adds one to `a` once file `gate` exists (waits at most `BOUND`).
#[loky::task]
fn add_once_open(gate: PathBuf, a: u64) -> u64 {
    let started = Instant::now();
    while !gate.exists() && started.elapsed() < BOUND {
        std::thread::sleep(Duration::from_millis(1));
    }
    a + 1
}

/// Every worker reports on one channel: a worker killed while the parent
/// reads the middle of its message (too large for one fragment: workers
/// avoid those, see `protocol::MAX_TEXT`, but a result can be one when the
/// shared-memory threshold is raised) loses that message alone. Its call
/// fails with its death; the other worker keeps serving, never killed.
#[test]
fn a_worker_killed_in_the_middle_of_a_message_costs_only_its_own_call() {
    let inline = Config::new()
        .max_workers(2)
        .env("LOKY_SHARED_MEMORY_THRESHOLD", (1u64 << 40).to_string());
    let executor = Executor::new(inline).unwrap();
    executor.start_workers().unwrap();
    let started = Instant::now();
    while executor.worker_pids().len() < 2 {
        assert!(started.elapsed() < BOUND, "workers started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = executor.worker_pids();
    // The results thread waits in this callback (registered while the
    // call still runs), so the big message's fragments pile up until its
    // sender blocks, then dies mid-message.
    let (blocker, release) = hold_results_thread(&executor, "mid-message-gate");
    let path = temp_path("mid-message");
    let big = executor
        .submit(return_at_length_then_die, (64 << 20, 300, path.clone()))
        .unwrap();
    // Released only once its worker is dead, its message stuck halfway.
    assert!(common::eventually(BOUND, || std::fs::read_to_string(&path)
        .ok()
        .and_then(|pid| pid.parse().ok())
        .is_some_and(dead)));
    let _ = std::fs::remove_file(&path);
    release.send(()).unwrap();
    match big.result_timeout(BOUND).map(|bytes| bytes.len()) {
        Err(Error::WorkerDied { reason, .. }) => {
            assert!(
                matches!(
                    reason,
                    ExitReason::Signal {
                        signal: libc::SIGKILL,
                        ..
                    }
                ),
                "{reason:?}"
            );
        }
        other => panic!("expected its death, got {other:?}"),
    }
    assert_eq!(blocker.result_timeout(BOUND).unwrap(), 2);
    for x in 0..20 {
        assert_eq!(run(&executor, add, (x, 1)), x + 1);
    }
    // Past the grace after which a worker whose link closed is killed:
    // the other worker was never closed, killed or replaced.
    std::thread::sleep(Duration::from_millis(1200));
    let exits = executor.stats().exits;
    assert_eq!((exits.crashed, exits.killed), (1, 0), "{exits:?}");
    let survivors = executor.worker_pids();
    assert_eq!(
        survivors.iter().filter(|pid| before.contains(pid)).count(),
        1,
        "{before:?} then {survivors:?}"
    );
}

/// Returns at once, and kills its own process `after_ms` later.
#[loky::task]
fn answer_then_die(after_ms: u64) -> u64 {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(after_ms));
        std::process::abort();
    });
    42
}

/// A worker that answered, then died while the results thread was busy
/// with another worker's done-callback, is reaped only once its answer is
/// read: the call it finished is not blamed for its death, however long
/// the callback takes.
#[test]
fn a_dead_worker_s_answer_still_unread_is_not_blamed_on_its_death() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    executor.start_workers().unwrap();
    let started = Instant::now();
    while executor.worker_pids().len() < 2 {
        assert!(started.elapsed() < BOUND, "workers started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (blocker, release) = hold_results_thread(&executor, "unread-answer-gate");
    // One on each worker: the one that did not run the blocker has
    // nothing of its own being passed on.
    let answered = [
        executor.submit(answer_then_die, 300).unwrap(),
        executor.submit(answer_then_die, 300).unwrap(),
    ];
    // Well past the grace a dead worker's link once had.
    std::thread::sleep(Duration::from_millis(1000));
    release.send(()).unwrap();
    for answered in answered {
        assert_eq!(answered.result_timeout(BOUND).unwrap(), 42);
    }
    assert_eq!(blocker.result_timeout(BOUND).unwrap(), 2);
}
