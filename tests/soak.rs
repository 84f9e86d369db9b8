//! Soak: 100 000 tasks, about 1% of which fail in every way a task can,
//! on one executor. Every future resolves, every good result is right,
//! every failure is of its own kind, and neither file descriptors nor
//! processes leak. Alone in its binary, so that the counts are its own.

mod common;

use common::triggers::{EXIT_CODE, OnDecode, OnEncode, Trigger};
use common::{BOUND, children, eventually, open_fds};
use loky::{Error, ExitReason, Stage};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TASKS: u64 = 100_000;
const BATCH: u64 = 10_000;

/// Fails as `plan` says, else returns `x * 3`.
#[loky::task]
fn soak(x: u64, decode: OnDecode, plan: Option<(u8, Trigger)>) -> (u64, OnEncode) {
    let _ = decode;
    match plan {
        Some((3, trigger)) => {
            trigger.fire();
            (x, OnEncode(None))
        }
        Some((4, trigger)) => (x, OnEncode(Some(trigger))),
        _ => (x * 3, OnEncode(None)),
    }
}

/// A cheap, fixed pseudo-random number for `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// About one task in a hundred fails: at which stage, and how.
fn plan(x: u64) -> Option<(u8, Trigger)> {
    let r = mix(x);
    if !r.is_multiple_of(100) {
        return None;
    }
    let trigger = Trigger::ALL[(r / 100 % Trigger::ALL.len() as u64) as usize];
    // Process-ending triggers in the worker's stages only; serde errors
    // in the serde stages.
    let stage = match trigger {
        Trigger::SerdeError => [1, 2, 4][(r / 1000 % 3) as usize],
        Trigger::Panic => [1, 2, 3, 4][(r / 1000 % 4) as usize],
        _ => [2, 3, 4][(r / 1000 % 3) as usize],
    };
    Some((stage, trigger))
}

fn submit(executor: &loky::Executor, x: u64) -> loky::Future<(u64, OnEncode)> {
    let plan = plan(x);
    let decode = OnDecode(plan.filter(|p| p.0 == 2).map(|p| p.1));
    let args = match plan {
        Some((1, trigger)) => {
            // Stage 1 fails in this thread while encoding: `OnEncode` is
            // not an argument of `soak`, so fail the way encoding does.
            return executor
                .submit(soak_encode, (x, OnEncode(Some(trigger))))
                .unwrap();
        }
        Some((2, _)) => (x, decode, None),
        other => (x, decode, other),
    };
    executor.submit(soak, args).unwrap()
}

/// Stage 1 of the soak: the arguments fail to encode.
#[loky::task]
fn soak_encode(x: u64, value: OnEncode) -> (u64, OnEncode) {
    (x, value)
}

/// The kind of an outcome, for counting.
fn kind(x: u64, result: &Result<(u64, OnEncode), Error>) -> String {
    let Some((stage, trigger)) = plan(x) else {
        match result {
            Ok((value, _)) => assert_eq!(*value, x * 3, "wrong result for {x}"),
            Err(error) => panic!("good task {x} failed: {error}"),
        }
        return "ok".to_owned();
    };
    match (trigger, result) {
        (Trigger::SerdeError | Trigger::Panic, Err(Error::Serialization { stage: s, .. })) => {
            let expected = [
                Stage::EncodeArgs,
                Stage::DecodeArgs,
                Stage::EncodeArgs,
                Stage::EncodeResult,
            ][usize::from(stage) - 1];
            assert_eq!(*s, expected, "task {x}");
        }
        (Trigger::Panic, Err(Error::Panicked { .. })) => assert_eq!(stage, 3),
        (Trigger::Exit, Err(Error::WorkerDied { reason, .. })) => {
            assert_eq!(*reason, ExitReason::Code(EXIT_CODE));
        }
        (_, Err(Error::WorkerDied { reason, .. })) => {
            let expected = match trigger {
                Trigger::Abort => vec!["SIGABRT"],
                Trigger::Segfault => vec!["SIGSEGV"],
                Trigger::SigKill => vec!["SIGKILL"],
                _ => vec!["SIGSEGV", "SIGABRT"],
            };
            assert!(
                expected.contains(&reason.signal_name().unwrap_or("")),
                "task {x}: {trigger:?} gave {reason}"
            );
        }
        (_, other) => panic!("task {x}: {trigger:?} at stage {stage} gave {other:?}"),
    }
    format!("{trigger:?}")
}

#[test]
fn a_hundred_thousand_tasks_with_one_percent_failures() {
    let fds_before = open_fds();
    let children_before = children();
    let started = Instant::now();
    let executor = loky::Executor::new(loky::Config::new().max_workers(2).prefetch(2)).unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for batch in 0..TASKS / BATCH {
        let futures: Vec<_> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|x| (x, submit(&executor, x)))
            .collect();
        for (x, future) in futures {
            let result = future.result_timeout(BOUND);
            *counts.entry(kind(x, &result)).or_default() += 1;
        }
    }
    executor.shutdown(loky::Shutdown::default());
    eprintln!("soak: {counts:?} in {:?}", started.elapsed());
    assert_eq!(counts.values().sum::<u64>(), TASKS);
    let failures = TASKS - counts["ok"];
    assert!((500..2000).contains(&failures), "{failures} failures");
    for trigger in Trigger::ALL {
        assert!(
            counts.get(&format!("{trigger:?}")).is_some_and(|&n| n > 50),
            "too few {trigger:?}: {counts:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || children() == children_before),
        "children before {children_before:?}, after {:?}",
        children()
    );
    assert!(
        eventually(Duration::from_secs(5), || open_fds() <= fds_before),
        "file descriptors: {fds_before} before, {} after",
        open_fds()
    );
}
