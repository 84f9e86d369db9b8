//! Crashes become specific errors, the pool heals, nothing is lost.
//!
//! Partly a port of Python loky's `test_reusable_executor.py::TestExecutorDeadLock`
//! (a worker that exits, aborts or segfaults while running a task), extended
//! with Rust's own ways to die and with the serde stages of
//! `test_crashes`.

mod common;

use common::{BOUND, executor, process_state, run, wait_gone};
use loky::{Error, ExitReason, Stage};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{Duration, Instant};

#[loky::task]
fn echo(x: u64) -> u64 {
    x
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
fn exit_with(code: i32) {
    std::process::exit(code);
}

#[loky::task]
fn abort() {
    std::process::abort();
}

#[loky::task]
fn segfault() {
    // A real invalid write, not raise(SIGSEGV), which a handler may catch.
    // SAFETY: not safe at all: this is the crash under test.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(42) };
}

#[loky::task]
fn kill_self() {
    // SAFETY: sends a signal to this process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(10));
}

#[loky::task]
fn panics(message: String) -> u64 {
    panic!("{message}");
}

/// Fails to serialize, with a message.
#[derive(Debug)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Unserializable refuses to be encoded",
        ))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _ = u8::deserialize(d)?;
        Ok(Unserializable)
    }
}

/// Serializes fine, fails to deserialize, with a message.
#[derive(Debug)]
struct Undeserializable;

impl Serialize for Undeserializable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(7)
    }
}

impl<'de> Deserialize<'de> for Undeserializable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _ = u8::deserialize(d)?;
        Err(serde::de::Error::custom(
            "Undeserializable refuses to be decoded",
        ))
    }
}

#[loky::task]
fn takes_unserializable(_value: Unserializable) {}

#[loky::task]
fn takes_undeserializable(_value: Undeserializable) {}

#[loky::task]
fn returns_unserializable() -> Unserializable {
    Unserializable
}

#[loky::task]
fn returns_undeserializable() -> Undeserializable {
    Undeserializable
}

/// Panics when decoded (in the worker, as an argument).
#[derive(Debug)]
struct PanicsWhenDecoded;

impl Serialize for PanicsWhenDecoded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(7)
    }
}

impl<'de> Deserialize<'de> for PanicsWhenDecoded {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("PanicsWhenDecoded went off")
    }
}

/// Panics when encoded (in the worker, as a result).
#[derive(Debug)]
struct PanicsWhenEncoded;

impl Serialize for PanicsWhenEncoded {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("PanicsWhenEncoded went off")
    }
}

impl<'de> Deserialize<'de> for PanicsWhenEncoded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _ = u8::deserialize(d)?;
        Ok(PanicsWhenEncoded)
    }
}

/// A result whose drop panics where it was made armed: in the worker, after
/// it was encoded. The parent's decoded copy is unarmed.
#[derive(Debug)]
struct DropBomb {
    armed: bool,
}

impl Serialize for DropBomb {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(self.armed)
    }
}

impl<'de> Deserialize<'de> for DropBomb {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _ = bool::deserialize(d)?;
        Ok(DropBomb { armed: false })
    }
}

impl Drop for DropBomb {
    fn drop(&mut self) {
        if self.armed {
            panic!("DropBomb went off");
        }
    }
}

/// Panics when encoded, by `resume_unwind`: no panic hook runs.
#[derive(Debug)]
struct ResumesWhenEncoded;

impl Serialize for ResumesWhenEncoded {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        std::panic::resume_unwind(Box::new("ResumesWhenEncoded went off"))
    }
}

impl<'de> Deserialize<'de> for ResumesWhenEncoded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _ = u8::deserialize(d)?;
        Ok(ResumesWhenEncoded)
    }
}

/// Catches a panic of its own, then returns what panics when encoded.
#[loky::task]
fn caught_then_resumed() -> ResumesWhenEncoded {
    let caught = std::panic::catch_unwind(|| panic!("caught inside the task"));
    assert!(caught.is_err());
    ResumesWhenEncoded
}

#[loky::task]
fn takes_panicking(_value: PanicsWhenDecoded) {}

#[loky::task]
fn returns_panicking() -> PanicsWhenEncoded {
    PanicsWhenEncoded
}

#[loky::task]
fn bomb(armed: bool) -> DropBomb {
    DropBomb { armed }
}

/// Asserts that a dead worker's error names the task, the pid and `reason`,
/// that it came fast, and that the worker was reaped.
fn assert_died(result: Result<(), Error>, task: &str, reason: ExitReason, took: Duration) -> u32 {
    let Err(Error::WorkerDied {
        task: got_task,
        pid,
        reason: got_reason,
        earlier,
    }) = result
    else {
        panic!("expected WorkerDied, got {result:?}");
    };
    assert_eq!(got_task, task);
    assert_eq!(got_reason, reason);
    assert!(earlier.is_empty(), "retried without asking: {earlier:?}");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} to report the death"
    );
    assert!(
        wait_gone(pid, BOUND),
        "worker {pid} left a zombie or lives on"
    );
    pid
}

fn died_of(
    executor: &loky::Executor,
    submit: impl FnOnce(&loky::Executor) -> loky::Future<()>,
) -> (Result<(), Error>, Duration) {
    // Warm a worker up first, so that the time measured is the crash's.
    assert_eq!(run(executor, echo, 1), 1);
    let started = Instant::now();
    let result = submit(executor).result_timeout(BOUND);
    (result, started.elapsed())
}

#[test]
fn exit_code_is_reported_and_the_pool_heals() {
    let executor = executor(2);
    let (result, took) = died_of(&executor, |e| e.submit(exit_with, 3).unwrap());
    assert_died(result, "crashes::exit_with", ExitReason::Code(3), took);
    assert_eq!(run(&executor, echo, 5), 5);
}

#[test]
fn abort_is_reported_as_sigabrt() {
    let executor = executor(2);
    let (result, took) = died_of(&executor, |e| e.submit(abort, ()).unwrap());
    let reason = ExitReason::Signal {
        signal: libc::SIGABRT,
        core_dumped: false,
    };
    // Some systems dump core on SIGABRT: accept both.
    let result = result.map_err(|e| match e {
        Error::WorkerDied {
            task,
            pid,
            reason: ExitReason::Signal { signal, .. },
            earlier,
        } => Error::WorkerDied {
            task,
            pid,
            reason: ExitReason::Signal {
                signal,
                core_dumped: false,
            },
            earlier,
        },
        other => other,
    });
    assert_died(result, "crashes::abort", reason, took);
    assert_eq!(run(&executor, echo, 6), 6);
}

#[test]
fn segfault_is_reported_with_a_readable_message() {
    let executor = executor(2);
    let (result, took) = died_of(&executor, |e| e.submit(segfault, ()).unwrap());
    let message = result.as_ref().unwrap_err().to_string();
    let Err(Error::WorkerDied { pid, reason, .. }) = &result else {
        panic!("expected WorkerDied, got {result:?}");
    };
    assert_eq!(reason.signal_name(), Some("SIGSEGV"));
    assert!(
        message.starts_with(&format!(
            "worker {pid} running task `crashes::segfault` was killed by signal SIGSEGV (segmentation fault)"
        )),
        "{message}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(run(&executor, echo, 7), 7);
}

#[test]
fn sigkill_is_reported() {
    let executor = executor(2);
    let (result, took) = died_of(&executor, |e| e.submit(kill_self, ()).unwrap());
    let reason = ExitReason::Signal {
        signal: libc::SIGKILL,
        core_dumped: false,
    };
    assert_died(result, "crashes::kill_self", reason, took);
    assert_eq!(run(&executor, echo, 8), 8);
}

#[test]
fn a_panic_is_a_value_and_the_worker_survives() {
    let executor = executor(1);
    let before = run(&executor, worker_pid, ());
    let result = executor
        .submit(panics, "boom 42".to_owned())
        .unwrap()
        .result_timeout(BOUND);
    let Err(Error::Panicked { task, pid, panic }) = result else {
        panic!("expected Panicked, got {result:?}");
    };
    assert_eq!(task, "crashes::panics");
    assert_eq!(pid, before);
    assert_eq!(panic.message, "boom 42");
    let location = panic.location.expect("a location");
    assert!(location.starts_with("tests/crashes.rs:"), "{location}");
    let after = run(&executor, worker_pid, ());
    assert_eq!(after, before, "a panic must not cost the worker");
}

#[test]
fn other_tasks_are_not_affected_by_a_crash() {
    let executor = executor(2);
    let slow: Vec<_> = (0..4)
        .map(|i| executor.submit(sleep_then_echo, (50, i)).unwrap())
        .collect();
    let crash = executor.submit(abort, ()).unwrap();
    assert!(matches!(
        crash.result_timeout(BOUND),
        Err(Error::WorkerDied { .. })
    ));
    for (i, future) in slow.into_iter().enumerate() {
        assert_eq!(future.result_timeout(BOUND).unwrap(), i as u64);
    }
}

#[test]
fn tasks_queued_behind_a_crash_run_on_another_worker() {
    // One worker holding four tasks: the crash runs first, the three
    // behind it were never started and must run on its replacement.
    let executor = loky::Executor::new(loky::Config::new().max_workers(1).prefetch(3)).unwrap();
    let first_pid = run(&executor, worker_pid, ());
    let crash = executor.submit(exit_with, 9).unwrap();
    let queued: Vec<_> = (0..3).map(|i| executor.submit(echo, i).unwrap()).collect();
    let pid_after = executor.submit(worker_pid, ()).unwrap();
    let Err(Error::WorkerDied {
        pid: dead, reason, ..
    }) = crash.result_timeout(BOUND)
    else {
        panic!("expected WorkerDied");
    };
    assert_eq!((dead, reason), (first_pid, ExitReason::Code(9)));
    for (i, future) in queued.into_iter().enumerate() {
        assert_eq!(future.result_timeout(BOUND).unwrap(), i as u64);
    }
    assert_ne!(pid_after.result_timeout(BOUND).unwrap(), first_pid);
}

#[test]
fn repeated_crashes_never_exceed_max_workers_nor_leave_zombies() {
    let executor = executor(2);
    let mut dead = Vec::new();
    for _ in 0..6 {
        match executor.submit(exit_with, 1).unwrap().result_timeout(BOUND) {
            Err(Error::WorkerDied { pid, .. }) => dead.push(pid),
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        assert!(executor.worker_pids().len() <= 2);
    }
    assert_eq!(run(&executor, echo, 3), 3);
    for pid in dead {
        assert!(
            wait_gone(pid, BOUND),
            "worker {pid}: {:?}",
            process_state(pid)
        );
    }
}

fn serde_error(result: Result<impl std::fmt::Debug, Error>) -> (Stage, String) {
    match result {
        Err(Error::Serialization { stage, message, .. }) => (stage, message),
        other => panic!("expected a serialization error, got {other:?}"),
    }
}

#[test]
fn serde_failures_name_their_stage_and_message() {
    let executor = executor(1);
    let worker = run(&executor, worker_pid, ());

    let encode_args = executor
        .submit(takes_unserializable, Unserializable)
        .unwrap();
    assert_eq!(
        serde_error(encode_args.result_timeout(BOUND)),
        (
            Stage::EncodeArgs,
            "Unserializable refuses to be encoded".to_owned()
        )
    );
    let decode_args = executor
        .submit(takes_undeserializable, Undeserializable)
        .unwrap();
    assert_eq!(
        serde_error(decode_args.result_timeout(BOUND)),
        (
            Stage::DecodeArgs,
            "Undeserializable refuses to be decoded".to_owned()
        )
    );
    let encode_result = executor.submit(returns_unserializable, ()).unwrap();
    assert_eq!(
        serde_error(encode_result.result_timeout(BOUND)),
        (
            Stage::EncodeResult,
            "Unserializable refuses to be encoded".to_owned()
        )
    );
    let decode_result = executor.submit(returns_undeserializable, ()).unwrap();
    let error = decode_result.result_timeout(BOUND).unwrap_err();
    assert_eq!(
        error.to_string(),
        "task `crashes::returns_undeserializable`: serialization failed decoding the result in \
         the parent: Undeserializable refuses to be decoded"
    );
    // None of that cost the worker its life.
    assert_eq!(run(&executor, worker_pid, ()), worker);
}

#[test]
fn a_panic_in_each_stage_of_a_call_is_blamed_on_that_stage() {
    let executor = executor(1);
    let worker = run(&executor, worker_pid, ());

    let decode_args = executor.submit(takes_panicking, PanicsWhenDecoded).unwrap();
    let (stage, message) = serde_error(decode_args.result_timeout(BOUND));
    assert_eq!(stage, Stage::DecodeArgs);
    assert!(
        message.starts_with("panicked: 'PanicsWhenDecoded went off' at tests/crashes.rs:"),
        "{message}"
    );
    let encode_result = executor.submit(returns_panicking, ()).unwrap();
    let (stage, message) = serde_error(encode_result.result_timeout(BOUND));
    assert_eq!(stage, Stage::EncodeResult);
    assert!(
        message.starts_with("panicked: 'PanicsWhenEncoded went off' at tests/crashes.rs:"),
        "{message}"
    );
    // A panic the task caught itself is not the one reported later.
    let resumed = executor.submit(caught_then_resumed, ()).unwrap();
    assert_eq!(
        serde_error(resumed.result_timeout(BOUND)),
        (
            Stage::EncodeResult,
            "panicked: 'ResumesWhenEncoded went off'".to_owned()
        )
    );
    // Dropping the result is the task's own code, after its encoding.
    let dropped = executor.submit(bomb, true).unwrap().result_timeout(BOUND);
    let Err(Error::Panicked { pid, panic, .. }) = dropped else {
        panic!("expected Panicked, got {dropped:?}");
    };
    assert_eq!((pid, panic.message.as_str()), (worker, "DropBomb went off"));
    // In a chunk each fails alone.
    let results: Vec<_> = executor
        .map(bomb, [false, true, false])
        .chunksize(3)
        .collect();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(&results[1], Err(Error::Panicked { panic, .. }) if panic.message == "DropBomb went off"),
        "{results:?}"
    );
    assert_eq!(run(&executor, worker_pid, ()), worker);
}
