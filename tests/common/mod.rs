//! Helpers shared by the integration tests: bounded waits and process probes.

#![allow(dead_code)]

pub(crate) mod triggers;

use std::time::{Duration, Instant};

/// The longest any test waits for one result: a hang fails fast.
pub(crate) const BOUND: Duration = Duration::from_secs(30);

/// An executor with `workers` workers.
pub(crate) fn executor(workers: usize) -> loky::Executor {
    loky::Executor::new(loky::Config::new().max_workers(workers)).expect("valid config")
}

/// Submits `task(args)` and waits for its result, within [`BOUND`];
/// panics with the error if there is one.
pub(crate) fn run<T: loky::Task>(executor: &loky::Executor, task: T, args: T::Args) -> T::Output {
    let future = match executor.submit(task, args) {
        Ok(future) => future,
        Err(refused) => panic!("{} was refused: {}", T::ID, refused.reason),
    };
    future
        .result_timeout(BOUND)
        .unwrap_or_else(|error| panic!("{} failed: {error}", T::ID))
}

/// The state letter of a process in /proc (`Z` for a zombie), or `None` if
/// it does not exist.
pub(crate) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.chars().next()
}

/// Waits until `pid` no longer exists (neither alive nor a zombie).
pub(crate) fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if process_state(pid).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Polls `condition` until it holds or `limit` passes.
pub(crate) fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The number of file descriptors this process has open.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// The pids of this process's children (alive or zombies).
pub(crate) fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{me}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            children.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    children
}
