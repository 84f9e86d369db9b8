//! Hostile conditions that need a process of their own: the parent killed
//! with SIGKILL, file descriptors or processes running out while workers
//! start.
//!
//! `harness = false`: `main` runs each scenario in a fresh copy of this
//! binary (`LOKY_TEST_ROLE` says which) and checks it from outside, with a
//! bound on every wait. Workers are copies of this binary too.
//!
//! Starved workers say so on stderr ("Too many open files", "failed to
//! initiate panic"): that is what the scenarios provoke. So a helper's
//! output, and its workers', is captured and shown only when its scenario
//! fails, as libtest does; `-- --nocapture` shows it always.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

const ROLE: &str = "LOKY_TEST_ROLE";
const PIDS_FILE: &str = "LOKY_TEST_PIDS_FILE";
/// The longest any scenario may take.
const BOUND: Duration = Duration::from_secs(60);

#[loky::task]
fn worker_pid() -> u32 {
    std::process::id()
}

#[loky::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Starts `sleep 1000`, returns the worker's pid and its child's, and
/// sleeps far longer than any test.
#[loky::task]
fn start_sleeper_then_block(path: PathBuf) {
    let child = Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep starts");
    append_line(&path, &format!("{} {}", std::process::id(), child.id()));
    std::thread::sleep(Duration::from_secs(1000));
    drop(child);
}

/// Keeps `data` (a shared buffer of the parent) mapped in this worker for
/// good, and returns the worker's pid.
#[loky::task]
fn hold(data: loky::SharedBytes) -> u32 {
    static HELD: std::sync::Mutex<Vec<loky::SharedBytes>> = std::sync::Mutex::new(Vec::new());
    HELD.lock().unwrap().push(data);
    std::process::id()
}

#[loky::task]
fn byte_len(data: Vec<u8>) -> usize {
    data.len()
}

fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    // One write: lines other processes append meanwhile never interleave
    // with it (`writeln!` writes the line and its newline apart).
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("parent") => parent_role(),
        Ok("fds") => fd_role(),
        Ok("nproc") => nproc_role(),
        Ok("env") => env_role(),
        Ok("memory") => memory_role(),
        Ok("sendpanic") => send_panic_role(),
        Ok(other) => panic!("unknown role {other}"),
        Err(_) => run_all(),
    }
}

type Scenario = fn() -> Result<(), String>;

fn run_all() {
    let scenarios: [(&str, Scenario); 6] = [
        (
            "workers_their_children_and_its_shared_buffers_go_with_a_killed_parent",
            parent_death,
        ),
        (
            "running_out_of_file_descriptors_is_an_error_not_a_hang",
            fds_scenario,
        ),
        (
            "running_out_of_processes_is_an_error_not_a_hang",
            nproc_scenario,
        ),
        (
            "environment_overrides_of_cpu_count_and_leak_threshold",
            env_overrides,
        ),
        (
            "no_memory_for_a_shared_region_is_an_error_then_heals",
            memory_scenario,
        ),
        (
            "a_send_that_panics_fails_its_call_and_keeps_its_worker",
            send_panic_scenario,
        ),
    ];
    let mut failed = 0;
    for (name, scenario) in scenarios {
        let started = Instant::now();
        match scenario() {
            Ok(()) => println!("test {name} ... ok ({:?})", started.elapsed()),
            Err(message) => {
                failed += 1;
                println!("test {name} ... FAILED: {message}");
            }
        }
    }
    println!(
        "hostile: {} passed, {failed} failed",
        scenarios.len() - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

fn helper(role: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(ROLE, role);
    command
}

/// A helper's stdout and stderr, which its workers inherit. A file and not
/// a pipe: a process that outlives the helper (a worker's `sleep`) could
/// hold a pipe open forever, and a full pipe would block its writers.
struct Output {
    /// `None` with `--nocapture`: the output goes to the terminal.
    path: Option<PathBuf>,
}

impl Output {
    /// Sends `command`'s output to a file named after `role`.
    fn capture(command: &mut Command, role: &str) -> Result<Output, String> {
        if std::env::args().any(|arg| arg == "--nocapture") {
            return Ok(Output { path: None });
        }
        let path =
            std::env::temp_dir().join(format!("loky-hostile-{}-{role}.out", std::process::id()));
        let file = File::create(&path).map_err(|e| e.to_string())?;
        let stdout = file.try_clone().map_err(|e| e.to_string())?;
        command.stdout(stdout).stderr(file);
        Ok(Output { path: Some(path) })
    }

    /// `message`, followed by what the helper and its workers printed.
    fn explain(&self, message: String) -> String {
        let Some(path) = &self.path else {
            return message;
        };
        let printed = std::fs::read_to_string(path).unwrap_or_default();
        if printed.is_empty() {
            message
        } else {
            format!("{message}\n---- output of the helper and its workers:\n{printed}----")
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Waits for `child` with a bound; kills it past the bound.
fn wait_bounded(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("helper still running after {limit:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_role(role: &str) -> Result<(), String> {
    run_helper(role, helper(role))
}

fn fds_scenario() -> Result<(), String> {
    run_role("fds")
}

fn nproc_scenario() -> Result<(), String> {
    run_role("nproc")
}

fn memory_scenario() -> Result<(), String> {
    run_role("memory")
}

fn send_panic_scenario() -> Result<(), String> {
    let mut command = helper("sendpanic");
    command.env("LOKY_PARENT_FAULT", "send-panics-once");
    run_helper("sendpanic", command)
}

/// The first send of calls panics inside ipc-channel (as when it cannot map
/// a region again): that call fails with an error saying so, the worker
/// is neither killed nor replaced, the next calls run on it.
fn send_panic_role() {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1)).unwrap();
    executor.start_workers().unwrap();
    let pids = executor.worker_pids();
    let failed = executor.submit(add, (2, 3)).unwrap().result_timeout(BOUND);
    let Err(loky::Error::Serialization {
        stage: loky::Stage::EncodeArgs,
        message,
        ..
    }) = &failed
    else {
        panic!("expected an EncodeArgs error, got {failed:?}");
    };
    assert!(message.contains("fault: the send panics"), "{message}");
    for x in 0..5 {
        let sum = executor.submit(add, (x, 1)).unwrap().result_timeout(BOUND);
        assert_eq!(sum.unwrap(), x + 1);
    }
    assert_eq!(executor.worker_pids(), pids, "the worker stayed");
    let exits = executor.stats().exits;
    assert_eq!(exits.crashed + exits.killed, 0, "{exits:?}");
}

fn env_overrides() -> Result<(), String> {
    let mut command = helper("env");
    command
        .env("LOKY_MAX_CPU_COUNT", "1")
        .env("LOKY_MAX_MEMORY_LEAK", "20000000");
    run_helper("env", command)
}

fn run_helper(role: &str, mut command: Command) -> Result<(), String> {
    let output = Output::capture(&mut command, role)?;
    let mut child = command.spawn().map_err(|e| e.to_string())?;
    let status = wait_bounded(&mut child, BOUND).map_err(|e| output.explain(e))?;
    if status.success() {
        Ok(())
    } else {
        Err(output.explain(format!("the {role} helper failed: {status}")))
    }
}

/// Running: alive and not a zombie.
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
    state != Some('Z')
}

fn parent_death() -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("loky-hostile-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut command = helper("parent");
    command.env(PIDS_FILE, &path);
    let output = Output::capture(&mut command, "parent")?;
    let mut parent = command.spawn().map_err(|e| e.to_string())?;
    kill_parent_and_watch(&mut parent, &path).map_err(|e| output.explain(e))
}

/// Kills the parent once it reported its workers and their children, and
/// checks that they all die within a second.
fn kill_parent_and_watch(parent: &mut Child, path: &Path) -> Result<(), String> {
    // Two busy workers with a `sleep` child each, and one idle worker.
    let deadline = Instant::now() + BOUND;
    let pids: Vec<u32> = loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= 3 {
            break text
                .split_whitespace()
                .map(|pid| pid.parse().unwrap())
                .collect();
        }
        if Instant::now() >= deadline || parent.try_wait().map_err(|e| e.to_string())?.is_some() {
            let _ = parent.kill();
            let _ = parent.wait();
            return Err("the parent never reported its workers".to_owned());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_file(path);
    if pids.len() != 5 || !pids.iter().all(|&pid| running(pid)) {
        let _ = parent.kill();
        let _ = parent.wait();
        return Err(format!("expected 5 live processes, got {pids:?}"));
    }
    let creator = parent.id();
    // Before: the parent and the worker holding its buffer are found, so
    // that the check after the kill cannot pass for a wrong pattern.
    let before = common::regions_of(creator);
    if before.len() < 2 {
        let _ = parent.kill();
        let _ = parent.wait();
        return Err(format!(
            "the shared buffer is held by {before:?}, expected 2 processes"
        ));
    }
    parent.kill().map_err(|e| e.to_string())?;
    let killed = Instant::now();
    parent.wait().map_err(|e| e.to_string())?;
    while pids.iter().any(|&pid| running(pid)) {
        if killed.elapsed() > Duration::from_secs(1) {
            let alive: Vec<_> = pids.iter().filter(|&&pid| running(pid)).collect();
            for &&pid in &alive {
                // SAFETY: cleaning up after a failed test.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            return Err(format!(
                "still running 1 s after the parent died: {alive:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // No process maps or holds a shared memory region the parent made (its
    // name carries the creator's pid): a region lives no longer than its
    // last user, and its users are gone.
    let left = common::regions_of(creator);
    if !left.is_empty() {
        return Err(format!("regions of the dead parent still held: {left:?}"));
    }
    Ok(())
}

/// The parent that gets killed: two workers blocked in tasks that started
/// `sleep` children, a third one idle.
fn parent_role() {
    let path = PathBuf::from(std::env::var_os(PIDS_FILE).unwrap());
    let busy = loky::Executor::new(loky::Config::new().max_workers(2).prefetch(0)).unwrap();
    let _blocked: Vec<_> = (0..2)
        .map(|_| busy.submit(start_sleeper_then_block, path.clone()).unwrap())
        .collect();
    let idle = loky::Executor::new(loky::Config::new().max_workers(1)).unwrap();
    // The idle worker keeps one of the parent's shared buffers mapped.
    let shared = loky::SharedBytes::new(&vec![7u8; 1 << 20]).unwrap();
    let idle_pid = idle
        .submit(hold, shared)
        .unwrap()
        .result_timeout(BOUND)
        .unwrap();
    append_line(&path, &idle_pid.to_string());
    std::thread::sleep(BOUND);
    std::process::exit(2);
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// Each open descriptor with what it points at, to name a leak.
fn fd_table() -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|entry| {
            let target = std::fs::read_link(entry.path())
                .map(|target| target.display().to_string())
                .unwrap_or_default();
            (entry.file_name().to_string_lossy().into_owned(), target)
        })
        .collect()
}

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit write and read only `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(resource, &mut limit), 0);
        limit.rlim_cur = soft.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(resource, &limit), 0);
    }
}

/// Every outcome that is not a hang and not a wrong answer is fine while
/// resources are short: a result, or a clear spawn error. Returns whether
/// it was an error.
fn check_short_outcome(what: &str, result: Result<u64, loky::Error>) -> bool {
    match result {
        Ok(5) => {
            println!("  {what}: ran anyway");
            false
        }
        Err(loky::Error::Spawn(error)) => {
            println!("  {what}: {error}");
            true
        }
        other => panic!("{what}: expected 5 or a spawn error, got {other:?}"),
    }
}

/// Submits a task to a fresh executor while `resource` is limited to
/// `limit()` (computed once the executor exists), then restores `restore`
/// and checks that the same executor heals. Returns whether the limited
/// submission was refused.
fn run_short_of(
    resource: libc::__rlimit_resource_t,
    limit: impl FnOnce() -> u64,
    restore: u64,
    what: &str,
) -> bool {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1))
        .unwrap_or_else(|error| panic!("could not build an executor: {error}"));
    set_limit(resource, limit());
    let result = executor
        .submit(add, (2, 3))
        .map_err(loky::Error::from)
        .and_then(|future| future.result_timeout(Duration::from_secs(20)));
    set_limit(resource, restore);
    let refused = check_short_outcome(what, result);
    // With the resource back, the same executor heals.
    let again = executor.submit(add, (2, 3)).unwrap();
    assert_eq!(again.result_timeout(Duration::from_secs(20)).unwrap(), 5);
    executor.shutdown(loky::Shutdown::default());
    refused
}

fn fd_role() {
    let mut original = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: writes only `original`.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut original) };
    let baseline = fd_table();
    let mut refused = 0;
    for slack in 0..12 {
        refused += usize::from(run_short_of(
            libc::RLIMIT_NOFILE,
            || open_fds() + slack,
            original.rlim_cur,
            &format!("{slack} spare descriptors"),
        ));
    }
    assert!(refused > 0, "no limit was tight enough to refuse a worker");
    let after = fd_table();
    let leaked: Vec<_> = after
        .iter()
        .filter(|(fd, target)| baseline.get(*fd) != Some(target))
        .collect();
    assert!(leaked.is_empty(), "file descriptors leaked: {leaked:?}");
}

fn threads_of(uid: u32) -> u64 {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        };
        if field("Uid:").and_then(|u| u.parse::<u32>().ok()) == Some(uid) {
            count += field("Threads:").and_then(|t| t.parse().ok()).unwrap_or(1);
        }
    }
    count
}

fn nproc_role() {
    // RLIMIT_NPROC does not bind root: become an unprivileged user first.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        const NOBODY: u32 = 65534;
        // SAFETY: setgid/setuid change this process's credentials; glibc
        // applies them to every thread.
        let dropped = unsafe { libc::setgid(NOBODY) == 0 && libc::setuid(NOBODY) == 0 };
        assert!(dropped, "could not drop root to test RLIMIT_NPROC");
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let mut refused = 0;
    // How the kernel counts this user's processes is its own business:
    // sweep absolute limits from none at all to a few above our threads.
    for limit in 0..threads_of(uid) + 4 {
        refused += usize::from(run_short_of(
            libc::RLIMIT_NPROC,
            || limit,
            u64::MAX,
            &format!("at most {limit} processes"),
        ));
    }
    assert!(refused > 0, "no limit was tight enough to refuse a worker");
}

/// Leaks `mb` megabytes, touched so that they count as resident.
#[loky::task]
fn leak_mb(mb: usize) -> u32 {
    let leaked: &'static mut [u8] = Box::leak(vec![1u8; mb << 20].into_boxed_slice());
    std::hint::black_box(leaked);
    std::thread::sleep(Duration::from_millis(40));
    std::process::id()
}

/// Runs with LOKY_MAX_CPU_COUNT=1 and LOKY_MAX_MEMORY_LEAK=20000000.
fn env_role() {
    assert_eq!(loky::cpu_count(), 1);
    assert_eq!(loky::physical_cpu_count(), 1);
    // The default configuration's 300 MB threshold is overridden: a worker
    // leaking 3 MB per task is replaced well before 300 MB.
    let executor = loky::Executor::new(loky::Config::default()).unwrap();
    assert_eq!(executor.max_workers(), 1);
    let pids: std::collections::BTreeSet<u32> = (0..60)
        .map(|_| executor.submit(leak_mb, 3).unwrap())
        .map(|f| f.result_timeout(BOUND).unwrap())
        .collect();
    assert!(pids.len() >= 2, "never replaced: {pids:?}");
    assert!(executor.stats().exits.memory >= 1);
}

/// This process's virtual memory size, in bytes.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Large arguments need a shared-memory region. With the address space
/// too short for one, the submission fails with an error that says so;
/// small calls go on meanwhile, and once memory is back the same executor
/// takes large arguments again. Short of memory again, the warm region
/// that call left in the pool gives its room back to a larger one.
fn memory_role() {
    // Small enough for the pool to keep (it holds 256 MiB at most).
    const LARGE: usize = 200 << 20;
    const LARGER: usize = 240 << 20;
    let executor = loky::Executor::new(loky::Config::new().max_workers(1)).unwrap();
    let small = || executor.submit(add, (2, 3)).unwrap().result_timeout(BOUND);
    assert_eq!(small().unwrap(), 5);
    let (first, second) = (vec![1u8; LARGE], vec![2u8; LARGE]);
    let third = vec![3u8; LARGER];
    set_limit(libc::RLIMIT_AS, vm_size() + (64 << 20));
    let refused = executor
        .submit(byte_len, first)
        .unwrap()
        .result_timeout(BOUND);
    let Err(loky::Error::Serialization {
        stage: loky::Stage::EncodeArgs,
        message,
        ..
    }) = &refused
    else {
        panic!("expected an EncodeArgs error, got {refused:?}");
    };
    assert!(
        message.contains("could not create a shared memory region"),
        "{message}"
    );
    println!("  short of memory: {}", refused.unwrap_err());
    assert_eq!(small().unwrap(), 5);
    set_limit(libc::RLIMIT_AS, libc::RLIM_INFINITY);
    let taken = executor
        .submit(byte_len, second)
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(taken.unwrap(), LARGE);
    // The manager lets go of the call (and its region) as it hears of its
    // delivery, which may wait for its next step: a map's submission is
    // handled after it, so once the map is done only the pool holds the
    // region.
    let sums: Vec<_> = executor.map(add, [(1, 1)]).collect();
    assert_eq!(sums.len(), 1);
    // The pool keeps that region warm, and too little room is left for a
    // larger one beside it (it needs twice its size: a send maps it again):
    // the warm one gives way.
    set_limit(libc::RLIMIT_AS, vm_size() + (400 << 20));
    let taken = executor
        .submit(byte_len, third)
        .unwrap()
        .result_timeout(BOUND);
    set_limit(libc::RLIMIT_AS, libc::RLIM_INFINITY);
    assert_eq!(taken.unwrap(), LARGER);
}
