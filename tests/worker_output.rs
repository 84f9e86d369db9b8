//! Worker stdout and stderr reach the parent's, labelled with the worker
//! and task when asked (even the last lines of a worker that aborts), and
//! with `#[loky::main]` a worker never runs `main`.
//!
//! A `harness = false` test: it runs itself again as a child with its output
//! captured, and checks what the child's worker printed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "LOKY_TEST_WORKER_OUTPUT_CHILD";

/// Writes straight to descriptor 1 (as C code would), then aborts.
#[loky::task]
fn raw_then_abort() {
    let line = b"raw line before abort\n";
    // SAFETY: writing a valid buffer to a descriptor has no memory-safety
    // preconditions.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
    std::process::abort();
}

/// Prints on both streams from inside a worker.
#[loky::task]
fn shout(line: String) -> u32 {
    println!("{line} on stdout");
    eprintln!("{line} on stderr");
    std::process::id()
}

#[loky::main]
fn main() {
    match std::env::var(CHILD).as_deref() {
        Ok("plain") => child(),
        Ok("labelled") => labelled_child(),
        _ => {
            parent();
            labelled_parent();
            println!("worker_output: 2 passed, 0 failed");
        }
    }
}

/// The labelled child: its workers print, panic and abort.
fn labelled_child() {
    let config = loky::Config::new().max_workers(1).label_output(true);
    let executor = loky::Executor::new(config).unwrap();
    let bound = Duration::from_secs(30);
    let pid = executor
        .submit(shout, "labelled".to_owned())
        .unwrap()
        .result_timeout(bound)
        .unwrap();
    let died = executor
        .submit(raw_then_abort, ())
        .unwrap()
        .result_timeout(bound);
    assert!(
        matches!(died, Err(loky::Error::WorkerDied { .. })),
        "{died:?}"
    );
    println!("first worker {pid}");
}

/// Runs the labelled child and checks every line's label.
fn labelled_parent() {
    let (status, stdout, stderr) = run_child("labelled");
    assert!(
        status.success(),
        "child failed: {status}\n{stdout}\n{stderr}"
    );
    let pid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("first worker "))
        .unwrap_or_else(|| panic!("no pid in:\n{stdout}"));
    let line = format!("[worker {pid} worker_output::shout] labelled on stdout");
    assert!(
        stdout.lines().any(|l| l == line),
        "no `{line}` in:\n{stdout}"
    );
    let line = format!("[worker {pid} worker_output::shout] labelled on stderr");
    assert!(
        stderr.lines().any(|l| l == line),
        "no `{line}` in:\n{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("[worker ")
            && l.ends_with(" worker_output::raw_then_abort] raw line before abort")),
        "the aborting worker's last line is lost or unlabelled:\n{stdout}"
    );
    assert!(
        !stdout.contains("loky-task:") && !stderr.contains("loky-task:"),
        "a task marker leaked:\n{stdout}\n{stderr}"
    );
    println!("test worker_output labelled ... ok");
}

/// Runs this binary as a child in `mode`, bounded in time: (status,
/// stdout, stderr).
fn run_child(mode: &str) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read both while it runs: a full pipe would block it.
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().unwrap().unwrap();
    let stderr = err.join().unwrap().unwrap();
    (status, stdout, stderr)
}

/// The child: a pool whose worker prints.
fn child() {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1)).unwrap();
    let worker = executor
        .submit(shout, "hello from a worker".to_owned())
        .unwrap()
        .result_timeout(Duration::from_secs(30))
        .unwrap();
    assert_ne!(worker, std::process::id());
    println!("main ran in process {}", std::process::id());
}

/// The test: runs the child, bounded in time, and reads its output.
fn parent() {
    let (status, stdout, stderr) = run_child("plain");
    assert!(
        status.success(),
        "child failed: {status}\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("hello from a worker on stdout"),
        "stdout: {stdout}"
    );
    assert!(
        stderr.contains("hello from a worker on stderr"),
        "stderr: {stderr}"
    );
    assert_eq!(
        stdout.matches("main ran in process").count(),
        1,
        "main must run in the parent only:\n{stdout}"
    );
    println!("test worker_output ... ok");
}
