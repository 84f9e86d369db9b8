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

/// Runs the calling test alone, in a fresh copy of this test binary, for a
/// test that looks at the whole process (its threads, say) and must not
/// see other tests' executors. True in that copy: run the body there.
/// False here, once the copy passed (it panics if it did not).
pub(crate) fn alone(test: &str) -> bool {
    const ALONE: &str = "LOKY_TEST_ALONE";
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the test binary starts again");
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let exited = eventually(BOUND * 2, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("waited");
    let out = reader.join().expect("read");
    print!("{out}");
    assert!(exited, "{test}, run alone, hung");
    assert!(status.success(), "{test}, run alone, failed: {status}");
    assert!(
        out.contains("1 passed"),
        "{test} did not run alone (no such test?)"
    );
    false
}

/// The names of this process's threads.
pub(crate) fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

/// The processes that map or hold a shared memory region made by process
/// `creator` (ipc-channel names them `...-shared-memory.N.PID.TIME`).
pub(crate) fn regions_of(creator: u32) -> Vec<String> {
    let mark = format!(".{creator}.");
    let made_by = |text: &str| text.contains("ipc-channel-shared-memory.") && text.contains(&mark);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let dir = entry.path();
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let maps = std::fs::read_to_string(dir.join("maps")).unwrap_or_default();
        let fds = std::fs::read_dir(dir.join("fd"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|target| target.to_string_lossy().into_owned());
        if maps.lines().any(made_by) || fds.into_iter().any(|target| made_by(&target)) {
            found.push(pid);
        }
    }
    found
}
