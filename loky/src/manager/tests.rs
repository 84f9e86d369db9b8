//! The manager's scheduling and settling, on in-process thread workers
//! (`host::thread`): each test runs in milliseconds, and decides itself
//! when a worker dies. The same promises are tested across real processes
//! in `tests/`.

use crate::error::{Error, ExitReason};
use crate::host::thread::{Control, Fake, ThreadBackend};
use crate::{Config, Executor, Shutdown};
use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(10);

/// Gates that tasks wait on, by key: each test uses its own keys.
static GATES: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
static GATE_OPENED: Condvar = Condvar::new();
/// What `record` saw, by key.
static RECORDED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

fn open(key: u64) {
    GATES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key);
    GATE_OPENED.notify_all();
}

fn recorded(key: u64) -> bool {
    RECORDED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&key)
}

/// Waits until gate `key` opens (at most `BOUND`), then returns `key`.
#[loky::task]
fn wait_gate(key: u64) -> u64 {
    let mut gates = GATES.lock().unwrap_or_else(PoisonError::into_inner);
    let deadline = Instant::now() + BOUND;
    while !gates.contains(&key) && Instant::now() < deadline {
        gates = GATE_OPENED
            .wait_timeout(gates, Duration::from_millis(10))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    key
}

/// Records that it ran.
#[loky::task]
fn record(key: u64) -> u64 {
    RECORDED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key);
    key
}

#[loky::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// An executor over thread workers, and the test's control of them.
fn executor(config: Config) -> (Executor, Arc<Control>) {
    let (backend, control) = ThreadBackend::new();
    (Executor::start(config, backend).unwrap(), control)
}

/// `task(key)` on `executor`, its result.
fn run(executor: &Executor, task: record, key: u64) -> u64 {
    executor
        .submit(task, key)
        .unwrap()
        .result_timeout(BOUND)
        .unwrap()
}

/// Asserts that `future` failed with the death of worker `pid` by
/// `signal`.
fn assert_died<R: std::fmt::Debug>(future: crate::Future<R>, pid: u32, signal: i32) {
    match future.result_timeout(BOUND) {
        Err(Error::WorkerDied {
            pid: died,
            reason: ExitReason::Signal { signal: by, .. },
            ..
        }) => assert_eq!((died, by), (pid, signal)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn a_free_worker_takes_the_next_task_from_a_busy_ones_queue() {
    let (executor, _control) = executor(Config::new().max_workers(2).prefetch(4));
    executor.start_workers().unwrap();
    let long = executor.submit(sleep_ms, 400).unwrap();
    let shorts: Vec<_> = (0..6)
        .map(|_| executor.submit(sleep_ms, 10).unwrap())
        .collect();
    for short in shorts {
        assert_eq!(short.result_timeout(BOUND).unwrap(), 10);
    }
    assert!(
        !long.done(),
        "every short task finished before the long one"
    );
    assert_eq!(long.result_timeout(BOUND).unwrap(), 400);
}

#[test]
fn a_task_cancelled_before_it_started_never_runs() {
    let (executor, control) = executor(Config::new().max_workers(1).prefetch(2));
    let blocker = executor.submit(wait_gate, 100).unwrap();
    let victim = executor.submit(record, 101).unwrap();
    assert!(eventually(|| blocker.running()));
    assert!(!victim.running());
    assert!(victim.cancel());
    assert!(matches!(victim.result(), Err(Error::Cancelled { .. })));
    open(100);
    assert_eq!(blocker.result_timeout(BOUND).unwrap(), 100);
    assert_eq!(
        executor
            .submit(record, 102)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        102
    );
    assert!(!recorded(101), "the cancelled task ran");
    assert_eq!(control.workers().len(), 1, "no worker was killed");
}

#[test]
fn cancelling_a_running_task_kills_only_its_worker() {
    let (executor, control) = executor(Config::new().max_workers(1));
    let running = executor.submit(wait_gate, 200).unwrap();
    let next = executor.submit(record, 201).unwrap();
    assert!(eventually(|| running.running()));
    assert!(running.cancel());
    assert!(matches!(running.result(), Err(Error::Cancelled { .. })));
    assert_eq!(next.result_timeout(BOUND).unwrap(), 201);
    let workers = control.workers();
    assert_eq!(workers.len(), 2);
    assert!(workers[0].dead());
    open(200);
    assert_eq!(executor.stats().exits.killed, 1);
}

#[test]
fn shutdown_cancelling_futures_never_runs_a_held_task() {
    let (executor, _control) = executor(Config::new().max_workers(1).prefetch(2));
    let blocker = executor.submit(wait_gate, 300).unwrap();
    let held = executor.submit(record, 301).unwrap();
    assert!(eventually(|| blocker.running()));
    let shutdown = {
        let executor = executor.clone();
        std::thread::spawn(move || {
            executor.shutdown(Shutdown {
                wait: true,
                cancel_futures: true,
                kill_workers: false,
            })
        })
    };
    assert!(held.cancel() || held.cancelled());
    open(300);
    assert_eq!(blocker.result_timeout(BOUND).unwrap(), 300);
    shutdown.join().unwrap();
    assert!(
        !recorded(301),
        "a task held by a worker ran after its cancellation"
    );
}

#[test]
fn a_death_fails_the_running_task_and_requeues_the_rest() {
    let (executor, control) = executor(Config::new().max_workers(1).prefetch(3));
    let running = executor.submit(wait_gate, 400).unwrap();
    let queued: Vec<_> = (401..404)
        .map(|key| executor.submit(record, key).unwrap())
        .collect();
    assert!(eventually(|| running.running()));
    let pid = control.workers()[0].pid;
    control.workers()[0].die(ExitReason::Signal {
        signal: libc::SIGSEGV,
        core_dumped: false,
    });
    assert_died(running, pid, libc::SIGSEGV);
    for (future, key) in queued.into_iter().zip(401..) {
        assert_eq!(future.result_timeout(BOUND).unwrap(), key);
    }
    assert_eq!(executor.stats().exits.crashed, 1);
    open(400);
}

#[test]
fn a_death_with_retries_left_runs_the_task_again_and_lists_attempts_when_out() {
    let segfault = ExitReason::Signal {
        signal: libc::SIGSEGV,
        core_dumped: false,
    };
    let (executor, control) = executor(Config::new().max_workers(1).retries(1));
    let future = executor.submit(wait_gate, 420).unwrap();
    assert!(eventually(|| future.running()));
    let first = control.workers()[0].pid;
    control.workers()[0].die(segfault);
    // Back to pending, then running on a new worker.
    assert!(eventually(|| control
        .workers()
        .iter()
        .any(|w| w.pid != first && !w.dead())));
    assert!(eventually(|| future.running()));
    assert!(!future.done(), "a retried task is not failed");
    let second = control
        .workers()
        .iter()
        .find(|w| w.pid != first && !w.dead())
        .unwrap()
        .pid;
    control
        .workers()
        .iter()
        .find(|w| w.pid == second)
        .unwrap()
        .die(segfault);
    match future.result_timeout(BOUND) {
        Err(Error::WorkerDied { pid, earlier, .. }) => {
            assert_eq!(pid, second);
            assert_eq!(earlier, [crate::Attempt::died(first, segfault)]);
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // A retry that succeeds: the caller sees only the result.
    let future = executor.submit(wait_gate, 421).unwrap();
    assert!(eventually(|| future.running()));
    let live = control.workers().into_iter().find(|w| !w.dead()).unwrap();
    live.die(segfault);
    assert!(eventually(|| control
        .workers()
        .iter()
        .any(|w| w.pid != live.pid && !w.dead())));
    open(421);
    assert_eq!(future.result_timeout(BOUND).unwrap(), 421);
    open(420);
}

#[test]
fn a_chunk_death_keeps_finished_elements_and_reruns_unstarted_ones() {
    let (executor, control) = executor(Config::new().max_workers(1));
    // Elements 500..505 finish, 505 blocks until its worker dies, the rest
    // never start on that worker.
    let keys: Vec<u64> = (500..510).collect();
    let inputs = keys.clone();
    let killer = std::thread::spawn(move || {
        assert!(eventually(|| recorded(504)));
        std::thread::sleep(Duration::from_millis(20));
        control.workers()[0].die(ExitReason::Signal {
            signal: libc::SIGABRT,
            core_dumped: false,
        });
        control
    });
    let results: Vec<_> = executor.map(record_or_wait, inputs).chunksize(10).collect();
    let control = killer.join().unwrap();
    for (key, result) in keys.iter().zip(&results) {
        match (key, result) {
            (505, Err(Error::WorkerDied { reason, .. })) => {
                assert_eq!(reason.signal_name(), Some("SIGABRT"));
            }
            (505, other) => panic!("element 505: expected WorkerDied, got {other:?}"),
            (key, Ok(value)) => assert_eq!(key, value),
            (key, Err(error)) => panic!("element {key} failed: {error}"),
        }
    }
    assert_eq!(control.workers().len(), 2);
    open(505);
}

/// Records `key`; for key 505, waits on its gate first.
#[loky::task]
fn record_or_wait(key: u64) -> u64 {
    if key == 505 {
        wait_gate.call(key);
    }
    record.call(key)
}

#[test]
fn a_refused_spawn_fails_the_queue_and_the_next_submission_heals() {
    let (executor, control) = executor(Config::new().max_workers(1));
    control.refuse_spawns(1);
    let refused = executor.submit(record, 600).unwrap();
    assert!(matches!(
        refused.result_timeout(BOUND),
        Err(Error::Spawn(_))
    ));
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        executor
            .submit(record, 601)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        601
    );
}

#[test]
fn a_zero_idle_timeout_runs_the_queue_without_a_storm() {
    let (executor, _control) = executor(Config::new().max_workers(2).idle_timeout(Duration::ZERO));
    let futures: Vec<_> = (700..720)
        .map(|key| executor.submit(record, key).unwrap())
        .collect();
    for (future, key) in futures.into_iter().zip(700..) {
        assert_eq!(future.result_timeout(BOUND).unwrap(), key);
    }
    let started = executor.stats().started;
    assert!(started <= 20, "{started} workers started for 20 tasks");
}

#[test]
fn a_done_callback_sees_true_stats_and_pids() {
    let (executor, _control) = executor(Config::new().max_workers(1));
    assert_eq!(
        executor
            .submit(record, 800)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        800
    );
    let (tx, rx) = crossbeam_channel::bounded(1);
    let inside = executor.clone();
    executor
        .submit(record, 801)
        .unwrap()
        .add_done_callback(move |_| {
            let _ = tx.send((inside.worker_pids(), inside.stats().workers));
        });
    let (pids, workers) = rx.recv_timeout(BOUND).unwrap();
    assert_eq!((pids.len(), workers), (1, 1));
}

#[test]
fn a_task_past_its_timeout_is_killed_and_the_rest_run_elsewhere() {
    let (executor, control) = executor(Config::new().max_workers(1).prefetch(2));
    let slow = executor
        .submit_timeout(wait_gate, 900, Duration::from_millis(50))
        .unwrap();
    let next = executor.submit(record, 901).unwrap();
    assert!(matches!(
        slow.result_timeout(BOUND),
        Err(Error::TaskTimeout { .. })
    ));
    assert_eq!(next.result_timeout(BOUND).unwrap(), 901);
    assert!(control.workers()[0].dead());
    assert_eq!(executor.stats().exits.killed, 1);
    open(900);
}

#[test]
fn a_pool_that_shrank_grows_back_only_as_retired_workers_exit() {
    // No prefetch: a busy worker takes nothing more, so only a new worker
    // could run the next task.
    let (executor, control) = executor(Config::new().max_workers(2).prefetch(0));
    let held: Vec<_> = [910, 911]
        .map(|key| executor.submit(wait_gate, key).unwrap())
        .into();
    assert!(eventually(|| executor.stats().running == 2));
    // One of the two busy workers is retired; it finishes its task first.
    executor.resize(1).unwrap();
    executor.resize(2).unwrap();
    let more = executor.submit(record, 912).unwrap();
    // Two processes exist (one serving, one leaving): room for none more.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(control.workers().len(), 2);
    assert!(!more.done());
    open(910);
    open(911);
    for (future, key) in held.into_iter().zip([910, 911]) {
        assert_eq!(future.result_timeout(BOUND).unwrap(), key);
    }
    assert_eq!(more.result_timeout(BOUND).unwrap(), 912);
    let alive = control.workers().iter().filter(|w| !w.dead()).count();
    assert!(alive <= 2, "{alive} workers alive with max_workers 2");
}

/// Runs `count` calls of `sleep_ms(ms)` one after the other, so that the
/// manager has timed them.
fn warm_up(executor: &Executor, count: usize, ms: u64) {
    for _ in 0..count {
        assert_eq!(
            executor
                .submit(sleep_ms, ms)
                .unwrap()
                .result_timeout(BOUND)
                .unwrap(),
            ms
        );
    }
}

#[test]
fn the_automatic_prefetch_deepens_for_short_calls_only() {
    // Short calls: a busy worker is sent many more.
    let (executor, _control) = executor(Config::new().max_workers(1));
    warm_up(&executor, 200, 0);
    let held: Vec<_> = (920..940)
        .map(|key| executor.submit(wait_gate, key).unwrap())
        .collect();
    // Deeper than `prefetch(1)` would hold (how much deeper depends on how
    // fast this machine hands calls between threads).
    let deep = eventually(|| executor.stats().running > 2);
    for key in 920..940 {
        open(key);
    }
    assert!(deep, "never more than 2 calls held after short calls");
    for (future, key) in held.into_iter().zip(920..) {
        assert_eq!(future.result_timeout(BOUND).unwrap(), key);
    }
    // Calls of 5 ms: one behind the running one, as with `prefetch(1)`.
    let (executor, _control) = executor_pair_slow();
    let held: Vec<_> = (940..950)
        .map(|key| executor.submit(wait_gate, key).unwrap())
        .collect();
    assert!(eventually(|| executor.stats().running == 2));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(executor.stats().running, 2);
    for key in 940..950 {
        open(key);
    }
    for (future, key) in held.into_iter().zip(940..) {
        assert_eq!(future.result_timeout(BOUND).unwrap(), key);
    }
}

/// One worker that has run calls of 5 ms.
fn executor_pair_slow() -> (Executor, Arc<Control>) {
    let (executor, control) = executor(Config::new().max_workers(1));
    warm_up(&executor, 10, 5);
    (executor, control)
}

#[test]
fn after_short_calls_a_long_one_still_finishes_last() {
    let (executor, _control) = executor(Config::new().max_workers(2));
    warm_up(&executor, 200, 0);
    // Deep queues now; the long call holds one worker, and the calls
    // queued behind it are taken back by the free one.
    let long = executor.submit(wait_gate, 960).unwrap();
    let shorts: Vec<_> = (0..30)
        .map(|_| executor.submit(sleep_ms, 1).unwrap())
        .collect();
    for short in shorts {
        assert_eq!(short.result_timeout(BOUND).unwrap(), 1);
    }
    assert!(
        !long.done(),
        "every short call finished before the long one"
    );
    open(960);
    assert_eq!(long.result_timeout(BOUND).unwrap(), 960);
}

/// Regression (soak, under load): a send to a worker that had just died
/// marked its channel closed, so the worker was reaped at its `Exited`
/// while its link still held the outcome of the call it finished
/// before dying: that good call was blamed for the death.
#[test]
fn an_outcome_still_in_the_link_is_never_lost_to_a_failed_send() {
    let (executor, control) = executor(Config::new().max_workers(1).prefetch(1));
    executor.start_workers().unwrap();
    let fake = Arc::clone(&control.workers()[0]);
    fake.hold_messages();
    let finished = executor.submit(record, 970).unwrap();
    assert!(eventually(|| recorded(970)));
    // Dies after finishing it; its outcome is still in the link.
    fake.vanish(ExitReason::Signal {
        signal: libc::SIGABRT,
        core_dumped: false,
    });
    // The next call is sent to it, and the send fails.
    let next = executor.submit(record, 971).unwrap();
    assert!(eventually(|| executor.stats().running == 2));
    fake.report_exit();
    std::thread::sleep(Duration::from_millis(20));
    assert!(!finished.done(), "reaped before its channel was drained");
    fake.release();
    assert_eq!(finished.result_timeout(BOUND).unwrap(), 970);
    assert_eq!(next.result_timeout(BOUND).unwrap(), 971);
}

/// A worker running call `key` (gated) with call `key + 1` queued behind
/// it ends by `end`: the running call fails with its death by `signal`, the
/// queued one runs on its replacement.
fn a_death_under_a_call(key: u64, end: impl FnOnce(&Fake), signal: i32) -> (Executor, Arc<Fake>) {
    let (executor, control) = executor(Config::new().max_workers(1).prefetch(1));
    let running = executor.submit(wait_gate, key).unwrap();
    let queued = executor.submit(record, key + 1).unwrap();
    assert!(eventually(|| running.running()));
    let fake = Arc::clone(&control.workers()[0]);
    end(&fake);
    assert_died(running, fake.pid, signal);
    assert_eq!(queued.result_timeout(BOUND).unwrap(), key + 1);
    assert_eq!(control.workers().len(), 2, "it ran on the replacement");
    open(key);
    (executor, fake)
}

/// A worker is reaped only once its link closed, which the backend tells
/// behind a report it sends at the exit. If sending that report fails, the
/// manager asks for it again until it gets through.
#[test]
fn a_lost_exit_report_is_sent_again_until_the_link_closes() {
    let bus = |fake: &Fake| {
        fake.lose_exit_reports(2);
        fake.die(ExitReason::Signal {
            signal: libc::SIGBUS,
            core_dumped: false,
        });
    };
    let (executor, fake) = a_death_under_a_call(1200, bus, libc::SIGBUS);
    assert_eq!(fake.exit_retold(), 2, "asked until it got through");
    assert_eq!(executor.stats().exits.crashed, 1);
}

/// A worker whose link closed while it lives on (what it sent could not be
/// read) is killed after a grace and replaced.
#[test]
fn a_worker_whose_link_closed_alive_is_killed_and_replaced() {
    let (_executor, fake) = a_death_under_a_call(1210, Fake::close_link, libc::SIGKILL);
    assert!(fake.dead(), "killed");
}

/// A call submitted while a worker is idle goes straight to it. If that
/// worker died meanwhile (its death not yet seen), the send fails and the
/// call, still queued on its board, runs on the worker that replaces it.
#[test]
fn a_call_sent_straight_to_a_worker_that_just_died_runs_elsewhere() {
    let (executor, control) = executor(Config::new().max_workers(1));
    assert_eq!(
        executor
            .submit(record, 980)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        980
    );
    let lending = executor.lending();
    assert!(
        eventually(|| lending.offered() == 1),
        "the idle worker is lent"
    );
    let fake = Arc::clone(&control.workers()[0]);
    fake.vanish(ExitReason::Signal {
        signal: libc::SIGKILL,
        core_dumped: false,
    });
    let sent = executor.submit(record, 981).unwrap();
    assert_eq!(lending.offered(), 0, "sent straight to the lent worker");
    fake.report_exit();
    assert_eq!(sent.result_timeout(BOUND).unwrap(), 981);
    assert_eq!(control.workers().len(), 2, "it ran on the replacement");
    assert_eq!(executor.stats().exits.crashed, 1);
}

/// A call that cannot be made into a message (ipc-channel cannot map its
/// regions again: out of address space) fails with a clear error, sent
/// straight to a lent worker or by the manager; the worker, fine, is
/// neither killed nor replaced (killing it would not help the next try).
#[test]
fn a_call_that_cannot_be_sent_fails_and_its_worker_stays() {
    let (executor, control) = executor(Config::new().max_workers(1));
    assert_eq!(run(&executor, record, 985), 985);
    let lending = executor.lending();
    assert!(
        eventually(|| lending.offered() == 1),
        "the idle worker is lent"
    );
    let fake = Arc::clone(&control.workers()[0]);
    fake.refuse_calls(true);
    let unsendable = |result: Result<u64, Error>| {
        matches!(
            result,
            Err(Error::Serialization {
                stage: crate::Stage::EncodeArgs,
                ..
            })
        )
    };
    // Sent straight to the lent worker (on offer again once it failed).
    let sent = executor.submit(record, 986).unwrap().result_timeout(BOUND);
    assert!(unsendable(sent.clone()), "{sent:?}");
    // Through the manager: a map's chunks.
    let results: Vec<_> = executor.map(record, 987..997).chunksize(2).collect();
    assert!(results.iter().all(|r| unsendable(r.clone())), "{results:?}");
    fake.refuse_calls(false);
    assert_eq!(run(&executor, record, 997), 997);
    assert!(!recorded(986) && !recorded(990), "never ran");
    assert!(!fake.dead());
    assert_eq!(control.workers().len(), 1, "never replaced");
    let exits = executor.stats().exits;
    assert_eq!(exits.crashed + exits.killed, 0, "{exits:?}");
}

/// The outcome of a call sent straight to a worker settles its future on
/// the worker's link, and the manager still counts the worker idle again:
/// the next calls go straight to it too, and it retires when idle.
#[test]
fn calls_sent_straight_keep_the_pool_s_bookkeeping_exact() {
    let (executor, control) = executor(
        Config::new()
            .max_workers(1)
            .idle_timeout(Duration::from_millis(100)),
    );
    for key in 990..995 {
        let lending = executor.lending();
        assert!(key == 990 || eventually(|| lending.offered() == 1));
        assert_eq!(
            executor
                .submit(record, key)
                .unwrap()
                .result_timeout(BOUND)
                .unwrap(),
            key
        );
    }
    assert_eq!(control.workers().len(), 1, "one worker served them all");
    assert!(
        eventually(|| executor.stats().exits.idle == 1),
        "and retired when idle"
    );
}

/// A caller that picks up the last call of a lent worker from its reply
/// box puts the worker on offer again itself (an encore the manager allowed
/// when it lent the worker), and the manager hears of it with the call's
/// delivery. However the callers' offers and the manager's steps
/// interleave, its tables stay exact: one worker serves every call with
/// never two tickets on offer, nothing counts as running afterwards, and
/// the worker still retires when idle.
#[test]
fn callers_offering_their_worker_again_keep_the_pool_s_bookkeeping_exact() {
    let (executor, control) = executor(
        Config::new()
            .max_workers(1)
            .spin_wait(Duration::from_millis(10))
            .idle_timeout(Duration::from_millis(200)),
    );
    let lending = executor.lending();
    for x in 0..200 {
        // Calls of a millisecond or two: long enough for this thread to
        // watch the reply box before they end, so it picks them up.
        let ms = 1 + x % 2;
        if x % 3 == 0 {
            // A step that decides (a resize) takes the worker back, maybe
            // before the announcement of its encore.
            executor.resize(1).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        } else if x % 3 == 1 {
            // A step that only hears of the last delivery leaves the
            // worker on offer.
            std::thread::sleep(Duration::from_millis(1));
        }
        let future = executor.submit(sleep_ms, ms).unwrap();
        assert_eq!(future.result_timeout(BOUND).unwrap(), ms);
        assert!(lending.offered() <= 1, "never two tickets for a worker");
    }
    assert_eq!(control.workers().len(), 1, "one worker served them all");
    assert!(eventually(|| executor.stats().running == 0));
    assert_eq!(executor.stats().done, 200);
    assert!(
        eventually(|| executor.stats().exits.idle == 1),
        "and retired when idle"
    );
    // The pool serves on with a new worker.
    assert_eq!(
        executor
            .submit(sleep_ms, 1)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        1
    );
}

/// A call waiting behind a long one on a busy worker moves to a worker that
/// just became idle, even when that worker's caller put it on offer again
/// itself (an encore) and the manager only hears of that delivery.
#[test]
fn a_call_waiting_behind_a_long_one_moves_to_a_worker_its_caller_offered_again() {
    let (executor, _control) = executor(
        Config::new()
            .max_workers(2)
            .spin_wait(Duration::from_millis(50)),
    );
    executor.start_workers().unwrap();
    let lending = executor.lending();
    assert!(
        eventually(|| lending.offered() == 2),
        "both idle workers lent"
    );
    // The last ticket offered goes first: the second worker takes the
    // short call, the first the long one.
    let short = executor.submit(sleep_ms, 5).unwrap();
    let long = executor.submit(sleep_ms, 20_000).unwrap();
    // Queued, then given to the busy worker holding the fewest calls, the
    // oldest among equals: behind the long call.
    let behind = executor.submit(sleep_ms, 1).unwrap();
    // Picked up here, from the reply box: its worker goes on offer again.
    assert_eq!(short.result_timeout(BOUND).unwrap(), 5);
    assert_eq!(behind.result_timeout(BOUND).unwrap(), 1);
    assert!(
        !long.done(),
        "the waiting call did not wait for the long one"
    );
    long.cancel();
}

/// Calls its callers keep re-lending a worker for reach the manager only at
/// its next step (`Lending::later`): it sleeps through a round-trip loop,
/// and yet retires the worker once idle, without anyone asking
/// (`worker_pids` reads the snapshot without waking it).
#[test]
fn a_worker_its_callers_keep_re_lending_still_retires_when_idle() {
    let (executor, control) = executor(
        Config::new()
            .max_workers(1)
            .spin_wait(Duration::from_millis(10))
            .idle_timeout(Duration::from_millis(100)),
    );
    executor.start_workers().unwrap();
    let lending = executor.lending();
    let mut heard_later = false;
    for x in 0..100 {
        let ms = if x == 50 { 20 } else { x % 2 };
        let future = executor.submit(sleep_ms, ms).unwrap();
        if x == 50 {
            // The manager hears of this call as it runs (`stats` wakes
            // it), and of nothing after it: to it the worker is busy.
            std::thread::sleep(Duration::from_millis(5));
            let _ = executor.stats();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(future.result_timeout(BOUND).unwrap(), ms);
        heard_later |= lending.told_later();
    }
    assert!(
        heard_later,
        "the loop's calls waited for the manager's next step"
    );
    assert_eq!(control.workers().len(), 1, "one worker served them all");
    assert!(
        eventually(|| executor.worker_pids().is_empty()),
        "the idle worker retired"
    );
    assert_eq!(executor.stats().exits.idle, 1);
}
