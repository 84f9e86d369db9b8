//! The crash matrix, a port of Python loky's `test_crashes` extended with
//! Rust's own ways to die: every trigger at every stage where it can
//! happen, each asserted to give its specific error fast, to leave other
//! tasks alone and the pool working, with no extra worker and no zombie.
//! The whole matrix runs twice: submitted directly, and from done-callbacks.
//!
//! Stages: (1) encode the arguments in the parent, (2) decode them in the
//! worker, (3) run the task, (4) encode the result in the worker, (5) decode
//! it in the parent. Triggers that end a process (exit, abort, segfault,
//! SIGKILL, stack overflow) only run in the worker's stages: in the parent
//! they would end the caller itself, which no pool can report.

mod common;

use common::triggers::{EXIT_CODE, OnDecode, OnEncode, Trigger};
use common::{BOUND, executor, process_state, wait_gone};
use loky::{Error, ExitReason, Stage};
use std::time::{Duration, Instant};

/// Stage 1: the arguments fail to encode in the parent.
#[loky::task]
fn stage_encode_args(_value: OnEncode) {}

/// Stage 2: the arguments fail to decode in the worker.
#[loky::task]
fn stage_decode_args(_value: OnDecode) {}

/// Stage 3: the task itself.
#[loky::task]
fn stage_run(trigger: Trigger) {
    trigger.fire();
}

/// Stage 4: the result fails to encode in the worker.
#[loky::task]
fn stage_encode_result(trigger: Trigger) -> OnEncode {
    OnEncode(Some(trigger))
}

/// Stage 5: the result fails to decode in the parent.
#[loky::task]
fn stage_decode_result(trigger: Trigger) -> OnDecode {
    OnDecode(Some(trigger))
}

#[loky::task]
fn slow_echo(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    x
}

#[loky::task]
fn echo(x: u64) -> u64 {
    x
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy)]
struct Case {
    stage: u8,
    trigger: Trigger,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for stage in 1..=5 {
        for trigger in Trigger::ALL {
            let in_parent = stage == 1 || stage == 5;
            let serde_in_task = stage == 3 && trigger == Trigger::SerdeError;
            if (in_parent && trigger.kills_the_process()) || serde_in_task {
                continue;
            }
            cases.push(Case { stage, trigger });
        }
    }
    cases
}

/// A future of any result type, waited on the same way.
trait AnyFuture: Send {
    fn wait_timeout(&self, timeout: Duration) -> bool;
    fn outcome(self: Box<Self>) -> Result<(), Error>;
}

impl<R: Send + 'static> AnyFuture for loky::Future<R> {
    fn wait_timeout(&self, timeout: Duration) -> bool {
        loky::Future::wait_timeout(self, timeout)
    }

    fn outcome(self: Box<Self>) -> Result<(), Error> {
        self.result().map(drop)
    }
}

/// Submits the case's task.
fn submit(executor: &loky::Executor, case: Case) -> Box<dyn AnyFuture> {
    let trigger = case.trigger;
    match case.stage {
        1 => Box::new(
            executor
                .submit(stage_encode_args, OnEncode(Some(trigger)))
                .unwrap(),
        ),
        2 => Box::new(
            executor
                .submit(stage_decode_args, OnDecode(Some(trigger)))
                .unwrap(),
        ),
        3 => Box::new(executor.submit(stage_run, trigger).unwrap()),
        4 => Box::new(executor.submit(stage_encode_result, trigger).unwrap()),
        5 => Box::new(executor.submit(stage_decode_result, trigger).unwrap()),
        _ => unreachable!(),
    }
}

fn expected_stage(stage: u8) -> Stage {
    match stage {
        1 => Stage::EncodeArgs,
        2 => Stage::DecodeArgs,
        4 => Stage::EncodeResult,
        5 => Stage::DecodeResult,
        _ => unreachable!("stage 3 is not a serde stage"),
    }
}

/// Checks that `result` is the specific error `case` must give.
fn check(case: Case, result: Result<(), Error>) {
    match (case.trigger, result) {
        (Trigger::SerdeError, Err(Error::Serialization { stage, message, .. })) => {
            assert_eq!(stage, expected_stage(case.stage), "{case:?}");
            assert_eq!(message, "the matrix refuses", "{case:?}");
        }
        (Trigger::Panic, Err(Error::Serialization { stage, message, .. })) if case.stage != 3 => {
            assert_eq!(stage, expected_stage(case.stage), "{case:?}");
            assert!(message.contains("the matrix panics"), "{case:?}: {message}");
        }
        (Trigger::Panic, Err(Error::Panicked { panic, pid, .. })) if case.stage == 3 => {
            assert_eq!(panic.message, "the matrix panics");
            assert!(pid > 0);
        }
        (
            trigger,
            Err(Error::WorkerDied {
                task, pid, reason, ..
            }),
        ) if trigger.kills_the_process() => {
            assert!(task.starts_with("matrix::stage_"), "{case:?}: {task}");
            assert!(pid > 0);
            let signal = |s| ExitReason::Signal {
                signal: s,
                core_dumped: false,
            };
            let expected: &[ExitReason] = match trigger {
                Trigger::Exit => &[ExitReason::Code(EXIT_CODE)],
                Trigger::Abort => &[signal(libc::SIGABRT)],
                Trigger::Segfault => &[signal(libc::SIGSEGV)],
                Trigger::SigKill => &[signal(libc::SIGKILL)],
                // Rust's guard page handler aborts; without it, SIGSEGV.
                Trigger::StackOverflow => &[signal(libc::SIGSEGV), signal(libc::SIGABRT)],
                Trigger::SerdeError | Trigger::Panic => unreachable!(),
            };
            let reason = match reason {
                ExitReason::Signal { signal, .. } => ExitReason::Signal {
                    signal,
                    core_dumped: false,
                },
                code => code,
            };
            assert!(expected.contains(&reason), "{case:?}: {reason}");
            assert!(
                wait_gone(pid, BOUND),
                "{case:?}: worker {pid} left a zombie"
            );
        }
        (_, other) => panic!("{case:?}: unexpected outcome {other:?}"),
    }
}

/// Runs every case on one executor of two workers, each beside a good
/// task, submitting through `submit_case`.
fn run_matrix(submit_case: impl Fn(&loky::Executor, Case) -> Box<dyn AnyFuture>) {
    let executor = executor(2);
    for (index, case) in cases().into_iter().enumerate() {
        let bystander = executor.submit(slow_echo, index as u64).unwrap();
        let started = Instant::now();
        let future = submit_case(&executor, case);
        assert!(future.wait_timeout(BOUND), "{case:?} hangs");
        let took = started.elapsed();
        check(case, future.outcome());
        assert!(took < Duration::from_secs(1), "{case:?} took {took:?}");
        assert_eq!(
            bystander.result_timeout(BOUND).unwrap(),
            index as u64,
            "{case:?} hurt another task"
        );
        let next = executor.submit(echo, 7).unwrap().result_timeout(BOUND);
        assert_eq!(next.unwrap(), 7, "the pool did not heal after {case:?}");
        let pids = executor.worker_pids();
        assert!(pids.len() <= 2, "{case:?}: workers {pids:?}");
        for pid in pids {
            assert_ne!(process_state(pid), Some('Z'), "{case:?}: zombie {pid}");
        }
    }
}

#[test]
fn every_failure_at_every_stage_gives_its_own_error() {
    assert_eq!(cases().len(), 24);
    run_matrix(submit);
}

#[test]
fn the_matrix_submitted_from_done_callbacks() {
    run_matrix(|executor, case| {
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = executor.clone();
        executor
            .submit(echo, 1)
            .unwrap()
            .add_done_callback(move |_| {
                let _ = tx.send(submit(&inner, case));
            });
        rx.recv_timeout(BOUND).expect("the callback submitted")
    });
}
