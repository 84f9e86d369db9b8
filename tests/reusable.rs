//! The process-wide reusable executor: reused, resized, replaced, killed,
//! shared by threads. After Python loky's `test_reusable_executor.py`.
//!
//! The executor is process-wide, so these tests take turns (`SERIAL`).

mod common;

use common::{BOUND, eventually, run};
use loky::{Config, Error, Reuse, get_reusable_executor, get_reusable_executor_with};
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[loky::task]
fn worker_pid() -> u32 {
    std::process::id()
}

#[loky::task]
fn sleep_then_echo(ms: u64, x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x
}

#[loky::task]
fn read_env(key: String) -> Option<String> {
    std::env::var(key).ok()
}

#[loky::task]
fn failing_init() {
    panic!("cannot initialize");
}

fn config(workers: usize) -> Config {
    Config::new().max_workers(workers)
}

/// The pids of `n` workers, kept busy together so that each is distinct.
fn busy_pids(executor: &loky::Executor, n: usize) -> BTreeSet<u32> {
    executor.start_workers().unwrap();
    // Workers a resize retired are alive until they exit: wait for them.
    let settled = eventually(BOUND, || executor.worker_pids().len() == n);
    let pids: BTreeSet<u32> = executor.worker_pids().into_iter().collect();
    assert!(settled, "{} workers, not {n}: {pids:?}", pids.len());
    pids
}

#[test]
fn the_same_config_reuses_and_another_size_resizes() {
    let _serial = serial();
    let first = get_reusable_executor(config(2)).unwrap();
    let again = get_reusable_executor(config(2)).unwrap();
    assert_eq!(first.id(), again.id());
    let pids = busy_pids(&first, 2);

    let grown = get_reusable_executor(config(3)).unwrap();
    assert_eq!(grown.id(), first.id(), "resized, not replaced");
    assert_eq!(grown.max_workers(), 3);
    let grown_pids = busy_pids(&grown, 3);
    assert!(pids.is_subset(&grown_pids), "growing keeps the workers");

    let retired_before = grown.stats().exits.retired;
    let shrunk = get_reusable_executor(config(1)).unwrap();
    assert_eq!(shrunk.id(), first.id());
    assert!(eventually(BOUND, || shrunk.worker_pids().len() == 1));
    let survivor = shrunk.worker_pids()[0];
    assert!(grown_pids.contains(&survivor), "the survivor keeps its pid");
    let ran_on = shrunk.submit(worker_pid, ()).unwrap().result_timeout(BOUND);
    assert_eq!(ran_on.unwrap(), survivor);
    assert_eq!(shrunk.stats().exits.retired, retired_before + 2);
}

#[test]
fn another_option_replaces_it_and_the_old_handle_keeps_working() {
    let _serial = serial();
    let old = get_reusable_executor(config(1)).unwrap();
    let new = get_reusable_executor(config(1).env("LOKY_TEST_FLAVOUR", "new")).unwrap();
    assert_ne!(new.id(), old.id(), "a replacement gets a new id");
    let flavour = new
        .submit(read_env, "LOKY_TEST_FLAVOUR".to_owned())
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(flavour.unwrap().as_deref(), Some("new"));
    // Another thread still holding the old executor sees no error (loky
    // issue 458): it shuts down once its last handle is gone.
    let on_old = old.submit(sleep_then_echo, (10, 5)).unwrap();
    assert_eq!(on_old.result_timeout(BOUND).unwrap(), 5);
    assert!(!old.is_shutdown());
    let old_pids = old.worker_pids();
    drop(old);
    for pid in old_pids {
        assert!(
            common::wait_gone(pid, BOUND),
            "the old worker {pid} lives on"
        );
    }
}

#[test]
fn replacing_with_kill_workers_stops_the_old_tasks() {
    let _serial = serial();
    let old = get_reusable_executor(config(1)).unwrap();
    let running = old.submit(sleep_then_echo, (20_000, 1)).unwrap();
    assert!(eventually(BOUND, || running.running()));
    let new = get_reusable_executor_with(
        config(1).env("LOKY_TEST_FLAVOUR", "killed"),
        Reuse::Auto,
        true,
    )
    .unwrap();
    assert_ne!(new.id(), old.id());
    assert!(matches!(
        running.result_timeout(BOUND),
        Err(Error::ShutDown)
    ));
    assert!(old.is_shutdown());
    assert_eq!(run(&new, sleep_then_echo, (0, 2)), 2);
}

#[test]
fn forced_reuse_keeps_the_executor_whatever_the_config() {
    let _serial = serial();
    let first = get_reusable_executor(config(2)).unwrap();
    let forced = get_reusable_executor_with(
        config(1).env("LOKY_TEST_FLAVOUR", "other"),
        Reuse::Force,
        false,
    )
    .unwrap();
    assert_eq!(forced.id(), first.id());
    assert_eq!(forced.max_workers(), 1, "still resized");
    let flavour = forced
        .submit(read_env, "LOKY_TEST_FLAVOUR".to_owned())
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(flavour.unwrap(), None, "the old configuration stays");
}

#[test]
fn a_shut_down_or_broken_executor_is_replaced() {
    let _serial = serial();
    let first = get_reusable_executor(config(1)).unwrap();
    first.shutdown(loky::Shutdown::default());
    let second = get_reusable_executor(config(1)).unwrap();
    assert_ne!(second.id(), first.id());

    let broken = get_reusable_executor(config(1).initializer(failing_init, ())).unwrap();
    let failed = broken.submit(worker_pid, ()).unwrap().result_timeout(BOUND);
    assert!(matches!(failed, Err(Error::Broken { .. })));
    let healed = get_reusable_executor(config(1).initializer(failing_init, ())).unwrap();
    assert_ne!(healed.id(), broken.id(), "a broken executor is not reused");
}

#[test]
fn the_reusable_executor_lets_idle_workers_go_after_ten_seconds() {
    let _serial = serial();
    let executor = get_reusable_executor(config(1)).unwrap();
    assert_eq!(executor.idle_timeout(), Some(loky::REUSABLE_IDLE_TIMEOUT));
    assert_eq!(loky::REUSABLE_IDLE_TIMEOUT, Duration::from_secs(10));
    let quick = get_reusable_executor(config(1).idle_timeout(Duration::from_millis(50))).unwrap();
    let pid = quick.submit(worker_pid, ()).unwrap().result_timeout(BOUND);
    assert!(common::wait_gone(pid.unwrap(), BOUND));
}

#[test]
fn spawn_uses_the_reusable_executor() {
    let _serial = serial();
    let executor = get_reusable_executor(config(2)).unwrap();
    let pid = worker_pid.spawn(()).result_timeout(BOUND).unwrap();
    assert!(executor.worker_pids().contains(&pid));
}

#[test]
fn ten_threads_with_varying_sizes_and_environments_all_get_a_working_executor() {
    let _serial = serial();
    let threads: Vec<_> = (0..10u64)
        .map(|t| {
            std::thread::spawn(move || {
                for round in 0..5u64 {
                    let config = config(1 + (t + round) as usize % 3)
                        .env("LOKY_TEST_FLAVOUR", format!("{}", (t + round) % 2));
                    let executor = get_reusable_executor(config).unwrap();
                    let x = t * 100 + round;
                    let result = executor
                        .submit(sleep_then_echo, (5, x))
                        .map_err(Error::from)
                        .and_then(|f| f.result_timeout(BOUND));
                    assert_eq!(result.unwrap(), x, "thread {t}, round {round}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no spurious error");
    }
}

/// Python loky's resize test: sizes [12, 2, 1, 12, 6, 1, 8, 5] with jobs
/// pending at each change, with and without `kill_workers`.
fn resize_sequence(kill_workers: bool) {
    let mut previous: Option<(u64, Vec<loky::Future<u64>>)> = None;
    for (step, size) in [12, 2, 1, 12, 6, 1, 8, 5].into_iter().enumerate() {
        let executor = get_reusable_executor_with(config(size), Reuse::Auto, kill_workers).unwrap();
        let base = step as u64 * 1000;
        let futures: Vec<_> = (0..2 * size as u64)
            .map(|i| executor.submit(sleep_then_echo, (20, base + i)).unwrap())
            .collect();
        // The previous step's jobs were still pending during the resize.
        if let Some((id, pending)) = previous.take() {
            assert_eq!(executor.id(), id, "resizing keeps the executor");
            let base = base - 1000;
            for (i, future) in pending.into_iter().enumerate() {
                let result = future.result_timeout(BOUND);
                assert_eq!(result.unwrap(), base + i as u64, "size {size}");
            }
        }
        previous = Some((executor.id(), futures));
        assert!(executor.worker_pids().len() <= 12);
    }
    let (_, pending) = previous.expect("eight steps");
    for (i, future) in pending.into_iter().enumerate() {
        assert_eq!(future.result_timeout(BOUND).unwrap(), 7000 + i as u64);
    }
    let executor = get_reusable_executor(config(5)).unwrap();
    assert!(
        eventually(BOUND, || executor.worker_pids().len() <= 5),
        "{} workers after shrinking to 5",
        executor.worker_pids().len()
    );
}

#[test]
fn resize_sequence_without_kill() {
    let _serial = serial();
    resize_sequence(false);
}

#[test]
fn resize_sequence_with_kill() {
    let _serial = serial();
    resize_sequence(true);
}

#[test]
fn resizing_with_jobs_pending_loses_none() {
    let _serial = serial();
    let executor = get_reusable_executor(config(4)).unwrap();
    let futures: Vec<_> = (0..40u64)
        .map(|i| executor.submit(sleep_then_echo, (10, i)).unwrap())
        .collect();
    // Shrink and grow while they run.
    for size in [1, 3, 2, 4] {
        executor.resize(size).unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    for (i, future) in futures.into_iter().enumerate() {
        assert_eq!(future.result_timeout(BOUND).unwrap(), i as u64);
    }
    assert_eq!(executor.stats().exits.crashed, 0);
    assert!(matches!(executor.resize(0), Err(Error::Config(_))));
}

/// Panics while the file `marker` exists.
#[loky::task]
fn init_unless_marker_gone(marker: std::path::PathBuf) {
    assert!(!marker.exists(), "marker present: cannot initialize");
}

/// Regression: once broken, the reusable executor failed every
/// `task.spawn` with `Broken` until someone called `get_reusable_executor`.
#[test]
fn a_broken_reusable_executor_replaces_itself_on_spawn() {
    let _serial = serial();
    let marker = std::env::temp_dir().join(format!("loky-reusable-marker-{}", std::process::id()));
    std::fs::write(&marker, "").unwrap();
    let config = config(1).initializer(init_unless_marker_gone, marker.clone());
    let broken = get_reusable_executor(config).unwrap();
    let failed = worker_pid.spawn(()).result_timeout(BOUND);
    assert!(matches!(failed, Err(Error::Broken { .. })), "{failed:?}");
    assert!(eventually(BOUND, || broken.broken().is_some()));
    std::fs::remove_file(&marker).unwrap();
    let pid = worker_pid.spawn(()).result_timeout(BOUND).unwrap();
    assert!(pid > 0);
    let current = get_reusable_executor_with(broken.config(), Reuse::Force, false).unwrap();
    assert_ne!(current.id(), broken.id(), "replaced");
    assert_eq!(
        current.config(),
        broken.config(),
        "with the same configuration"
    );
}
