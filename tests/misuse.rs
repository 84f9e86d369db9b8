//! Misuse fails fast and clearly: a future awaited to completion and then
//! asked for its result panics at once; a refused submission of arguments
//! without `Debug` still unwraps and converts into `Box<dyn Error>`.

mod common;

use common::BOUND;
use loky::{Config, Executor, Shutdown};
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Arguments that are deliberately not `Debug`.
#[derive(Serialize, Deserialize)]
struct Opaque {
    value: u64,
}

#[loky::task]
fn unwrap_opaque(opaque: Opaque) -> u64 {
    opaque.value
}

/// Regression: awaiting `&mut future`, then calling `result()`, blocked
/// forever.
#[test]
fn result_after_awaiting_to_completion_panics_at_once() {
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let mut future = executor.submit(unwrap_opaque, Opaque { value: 7 }).unwrap();
    let mut context = Context::from_waker(Waker::noop());
    let deadline = std::time::Instant::now() + BOUND;
    let value = loop {
        match Pin::new(&mut future).poll(&mut context) {
            Poll::Ready(value) => break value,
            Poll::Pending if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Poll::Pending => panic!("no result within {BOUND:?}"),
        }
    };
    assert_eq!(value.unwrap(), 7);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.result()));
        let _ = tx.send(outcome.is_err());
    });
    let panicked = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("result() returned or panicked instead of blocking");
    assert!(panicked, "result() after completion must panic");
}

/// Regression: `submit(..).unwrap()` and `?` required `Args: Debug`.
#[test]
fn a_refused_submission_unwraps_and_converts_without_debug_args() {
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let future = executor.submit(unwrap_opaque, Opaque { value: 3 }).unwrap();
    assert_eq!(future.result_timeout(BOUND).unwrap(), 3);
    executor.shutdown(Shutdown::default());
    let refused = executor
        .submit(unwrap_opaque, Opaque { value: 4 })
        .unwrap_err();
    assert_eq!(refused.args.value, 4, "the arguments are handed back");
    assert!(format!("{refused:?}").contains("ShutDown"));
    let boxed: Box<dyn std::error::Error + Send + Sync> = refused.into();
    assert!(boxed.to_string().contains("shut down"), "{boxed}");
}
