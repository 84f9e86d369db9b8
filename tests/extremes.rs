//! No configuration value causes a storm or a hang: every knob at its
//! extremes gives a working executor or a clear `Error::Config`, tasks
//! finish, and dropping the executor returns.

mod common;

use common::BOUND;
use loky::{Config, Error, Executor};
use std::time::Duration;

#[loky::task]
fn double(x: u64) -> u64 {
    2 * x
}

#[loky::task]
fn nap_then_double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    2 * x
}

const EXTREME_DURATIONS: [Duration; 3] = [Duration::ZERO, Duration::from_nanos(1), Duration::MAX];

/// Runs 20 tasks on an executor built with `config` (if it is accepted),
/// with `check` on the results, then requires the drop to return.
fn survive(what: &str, config: Config, check: impl Fn(&Executor, Vec<Result<u64, Error>>)) {
    let executor = match Executor::new(config) {
        Ok(executor) => executor,
        Err(Error::Config(message)) => {
            println!("{what}: refused: {message}");
            return;
        }
        Err(other) => panic!("{what}: expected a working executor or Error::Config, got {other}"),
    };
    let futures: Vec<_> = (0..20)
        .map(|x| executor.submit(double, x).unwrap())
        .collect();
    let results: Vec<_> = futures
        .into_iter()
        .map(|future| future.result_timeout(BOUND))
        .collect();
    for result in &results {
        assert!(
            !matches!(result, Err(Error::WaitTimeout { .. })),
            "{what}: a task hung"
        );
    }
    check(&executor, results);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(executor);
        let _ = tx.send(());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what}: dropping the executor hung"));
}

/// Every task returned its value.
fn all_ok(_: &Executor, results: Vec<Result<u64, Error>>) {
    for (x, result) in (0u64..).zip(results) {
        assert_eq!(result.unwrap(), 2 * x);
    }
}

#[test]
fn every_config_knob_at_its_extremes() {
    for workers in [1, usize::MAX] {
        survive(
            &format!("max_workers({workers})"),
            Config::new().max_workers(workers),
            |executor, results| {
                all_ok(executor, results);
                assert!(executor.stats().started <= 20, "{:?}", executor.stats());
            },
        );
    }
    for timeout in EXTREME_DURATIONS {
        // Too short to connect: a clear spawn error, never a hang.
        survive(
            &format!("handshake_timeout({timeout:?})"),
            Config::new().max_workers(2).handshake_timeout(timeout),
            |_, results| {
                for result in results {
                    assert!(matches!(result, Ok(_) | Err(Error::Spawn(_))), "{result:?}");
                }
            },
        );
        survive(
            &format!("idle_timeout({timeout:?})"),
            Config::new().max_workers(2).idle_timeout(timeout),
            |executor, results| {
                all_ok(executor, results);
                let started = executor.stats().started;
                assert!(
                    started <= 40,
                    "idle_timeout({timeout:?}): {started} workers started"
                );
            },
        );
    }
    for prefetch in [0, 1, usize::MAX] {
        survive(
            &format!("prefetch({prefetch})"),
            Config::new().max_workers(2).prefetch(prefetch),
            all_ok,
        );
    }
    for tasks in [1, usize::MAX] {
        survive(
            &format!("max_tasks_per_child({tasks})"),
            Config::new().max_workers(2).max_tasks_per_child(tasks),
            all_ok,
        );
    }
    for bytes in [0, u64::MAX] {
        survive(
            &format!("memory_leak_threshold({bytes})"),
            Config::new()
                .max_workers(2)
                .memory_leak_threshold(Some(bytes)),
            all_ok,
        );
        survive(
            &format!("max_rss({bytes})"),
            Config::new().max_workers(2).max_rss(bytes),
            all_ok,
        );
    }
}

/// A timeout too long to be a deadline (`Instant + Duration::MAX`
/// overflows) never expires, however long the task is watched.
#[test]
fn a_timeout_past_the_end_of_time_never_expires() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    let futures: Vec<_> = (0..40)
        .map(|x| {
            executor
                .submit_timeout(nap_then_double, x, Duration::MAX)
                .unwrap()
        })
        .collect();
    for (x, future) in (0..).zip(futures) {
        assert_eq!(future.result_timeout(BOUND).unwrap(), 2 * x);
    }
    let mapped: Vec<u64> = executor
        .map(nap_then_double, 0..40)
        .timeout(Duration::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(mapped, (0..40).map(|x| 2 * x).collect::<Vec<_>>());
}

#[test]
fn per_call_knobs_at_their_extremes() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    for timeout in EXTREME_DURATIONS {
        let result = executor
            .submit_timeout(double, 4, timeout)
            .unwrap()
            .result_timeout(BOUND);
        match (timeout, result) {
            (Duration::MAX, result) => assert_eq!(result.unwrap(), 8),
            (_, Ok(8) | Err(Error::TaskTimeout { .. })) => {}
            (_, other) => panic!("submit_timeout({timeout:?}): {other:?}"),
        }
        let future = executor.submit(double, 5).unwrap();
        assert_eq!(future.result_timeout(Duration::MAX).unwrap(), 10);
    }
    let mapped: Vec<u64> = executor
        .map(double, 0..10)
        .timeout(Duration::MAX)
        .max_in_flight(usize::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(mapped, (0..10).map(|x| 2 * x).collect::<Vec<_>>());
    let chunked: Vec<u64> = executor
        .map(double, 0..10)
        .chunksize(usize::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chunked.len(), 10);
    let huge = Executor::new(Config::new().max_workers(usize::MAX)).unwrap();
    let count = huge.map(double, 0..100).filter(Result::is_ok).count();
    assert_eq!(count, 100);
    assert!(
        loky::wait(
            &[executor.submit(double, 1).unwrap()],
            Some(Duration::MAX),
            loky::ReturnWhen::AllCompleted
        )
        .not_done
        .is_empty()
    );
}
