//! A program that ignores SIGCHLD (the kernel then discards its children's
//! exit statuses): a crash is reported with an honest "unknown" status,
//! never an invented code, and the pool heals. Its own binary, since the
//! disposition is process-wide.

mod common;

use common::BOUND;
use loky::{Config, Error, Executor, ExitReason};

#[loky::task]
fn abort() {
    std::process::abort();
}

#[loky::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[test]
fn a_crash_with_sigchld_ignored_has_an_unknown_status() {
    // SAFETY: sets a signal disposition, before any worker exists.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    match executor.submit(abort, ()).unwrap().result_timeout(BOUND) {
        Err(error @ Error::WorkerDied { reason, .. }) => {
            assert_eq!(reason, ExitReason::Unknown);
            let text = error.to_string();
            assert!(text.contains("unknown") && !text.contains("-1"), "{text}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    let again = executor.submit(add, (2, 3)).unwrap().result_timeout(BOUND);
    assert_eq!(again.unwrap(), 5);
}
