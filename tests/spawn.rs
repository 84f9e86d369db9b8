//! Starting workers: a child that dies or never connects, or that speaks
//! another protocol, is a clear, bounded error; never a hang. Faults are
//! injected through the hidden `LOKY_WORKER_FAULT` variable.

mod common;

use common::{BOUND, run};
use loky::{Config, Error, Executor, ExitReason, SpawnError};
use std::time::{Duration, Instant};

#[loky::task]
fn seven() -> u32 {
    7
}

#[loky::task]
fn explode(message: String) {
    panic!("{message}");
}

fn faulty(fault: &str) -> Config {
    Config::new().max_workers(1).env("LOKY_WORKER_FAULT", fault)
}

#[test]
fn a_worker_that_exits_before_its_handshake_is_reported_with_its_code() {
    let executor = Executor::new(faulty("exit:17")).unwrap();
    let result = executor.submit(seven, ()).unwrap().result_timeout(BOUND);
    match result {
        Err(Error::Spawn(SpawnError::ExitedEarly { reason, .. })) => {
            assert_eq!(reason, ExitReason::Code(17));
        }
        other => panic!("expected ExitedEarly, got {other:?}"),
    }
}

#[test]
fn a_worker_that_never_connects_times_out() {
    let timeout = Duration::from_millis(300);
    let executor = Executor::new(faulty("hang").handshake_timeout(timeout)).unwrap();
    let started = Instant::now();
    let result = executor.submit(seven, ()).unwrap().result_timeout(BOUND);
    assert!(
        matches!(result, Err(Error::Spawn(SpawnError::HandshakeTimeout { timeout: t, .. })) if t == timeout),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_protocol_mismatch_is_a_clear_error() {
    let executor = Executor::new(faulty("version:999")).unwrap();
    let result = executor.submit(seven, ()).unwrap().result_timeout(BOUND);
    let Err(Error::Spawn(SpawnError::ProtocolMismatch { ours, theirs, .. })) = result else {
        panic!("expected ProtocolMismatch, got {result:?}");
    };
    assert_eq!(theirs, 999);
    assert_ne!(ours, 999);
}

#[test]
fn failed_starts_fail_the_queue_instead_of_hanging_it() {
    // A failed start fails the queued futures instead of hanging them; a
    // healthy executor beside it is unaffected.
    let broken = Executor::new(faulty("exit:3")).unwrap();
    let healthy = Executor::new(Config::new().max_workers(1)).unwrap();
    let failed: Vec<_> = (0..3).map(|_| broken.submit(seven, ()).unwrap()).collect();
    for future in failed {
        assert!(matches!(future.result_timeout(BOUND), Err(Error::Spawn(_))));
    }
    assert_eq!(run(&healthy, seven, ()), 7);
}

#[test]
fn a_remote_backtrace_comes_with_rust_backtrace() {
    let executor = Executor::new(Config::new().max_workers(1).env("RUST_BACKTRACE", "1")).unwrap();
    let result = executor
        .submit(explode, "with a trace".to_owned())
        .unwrap()
        .result_timeout(BOUND);
    let Err(Error::Panicked { panic, .. }) = result else {
        panic!("expected Panicked, got {result:?}");
    };
    assert_eq!(panic.message, "with a trace");
    let backtrace = panic.backtrace.expect("a backtrace");
    assert!(backtrace.contains("explode"), "{backtrace}");

    let quiet = Executor::new(Config::new().max_workers(1).env("RUST_BACKTRACE", "0")).unwrap();
    let result = quiet
        .submit(explode, "no trace".to_owned())
        .unwrap()
        .result_timeout(BOUND);
    let Err(Error::Panicked { panic, .. }) = result else {
        panic!("expected Panicked, got {result:?}");
    };
    assert!(panic.backtrace.is_none());
}

#[test]
fn an_os_refusal_to_start_a_worker_is_a_spawn_error_with_the_os_message() {
    // A NUL byte in the environment makes the spawn itself fail.
    let executor =
        Executor::new(Config::new().max_workers(1).env("LOKY_TEST_BAD", "a\0b")).unwrap();
    let result = executor.submit(seven, ()).unwrap().result_timeout(BOUND);
    let Err(Error::Spawn(error @ SpawnError::Io { .. })) = result else {
        panic!("expected SpawnError::Io, got {result:?}");
    };
    assert!(error.to_string().starts_with("could not start"), "{error}");
}
