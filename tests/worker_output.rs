//! Worker stdout and stderr reach the parent's, and with `#[loky::main]` a
//! worker never runs `main`.
//!
//! A `harness = false` test: it runs itself again as a child with its output
//! captured, and checks what the child's worker printed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "LOKY_TEST_WORKER_OUTPUT_CHILD";

/// Prints on both streams from inside a worker.
#[loky::task]
fn shout(line: String) -> u32 {
    println!("{line} on stdout");
    eprintln!("{line} on stderr");
    std::process::id()
}

#[loky::main]
fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
    } else {
        parent();
    }
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
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
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
    println!("worker_output: 1 passed, 0 failed");
}
