//! The future and executor API across real workers: results, timeouts,
//! cancellation, callbacks, `.await`, `wait`, `as_completed`, `map`,
//! shutdown. Scenarios follow CPython's `test_concurrent_futures` and
//! Python loky's `test_reusable_executor.py` where they apply.

mod common;

use common::{BOUND, eventually, executor, run, wait_gone};
use loky::{Error, ReturnWhen, Shutdown};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

#[loky::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[loky::task]
fn answer() -> u32 {
    42
}

#[loky::task]
fn double(x: u64) -> u64 {
    2 * x
}

#[loky::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[loky::task]
fn checked_div(a: i32, b: i32) -> Result<i32, String> {
    if b == 0 {
        Err("division by zero".to_owned())
    } else {
        Ok(a / b)
    }
}

#[loky::task]
fn fail_on(x: u64, bad: u64) -> u64 {
    assert_ne!(x, bad, "bad input");
    x
}

#[loky::task]
fn echo_bytes(data: Vec<u8>) -> Vec<u8> {
    data
}

#[loky::task]
fn worker_id() -> u32 {
    std::process::id()
}

#[test]
fn zero_one_and_many_arguments() {
    let executor = executor(2);
    assert_eq!(run(&executor, answer, ()), 42);
    assert_eq!(run(&executor, double, 21), 42);
    assert_eq!(run(&executor, add, (40, 2)), 42);
    assert_eq!(add.call((1, 2)), 3);
    assert_eq!(answer.call(()), 42);
    assert_ne!(run(&executor, worker_id, ()), std::process::id());
}

#[test]
fn a_task_error_is_the_users_own() {
    let executor = executor(1);
    let ok = executor
        .submit(checked_div, (7, 2))
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(ok.unwrap(), Ok(3));
    let err = executor
        .submit(checked_div, (7, 0))
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(err.unwrap(), Err("division by zero".to_owned()));
}

#[test]
fn spawn_uses_the_reusable_executor() {
    assert_eq!(double.spawn(4).result_timeout(BOUND).unwrap(), 8);
    let executor = loky::get_reusable_executor(loky::Config::default()).unwrap();
    let again = loky::get_reusable_executor(loky::Config::default()).unwrap();
    assert_eq!(run(&executor, double, 5), run(&again, double, 5));
}

#[test]
fn large_payloads_travel_both_ways() {
    let executor = executor(1);
    for size in [0, 1, 64 * 1024 - 1, 64 * 1024, 3 << 20, 33 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let back = run(&executor, echo_bytes, data.clone());
        assert_eq!(back, data, "size {size}");
    }
}

#[test]
fn max_workers_zero_is_a_clear_error() {
    let error = loky::Executor::new(loky::Config::new().max_workers(0))
        .err()
        .unwrap();
    assert!(matches!(error, Error::Config(_)));
    assert_eq!(
        error.to_string(),
        "invalid configuration: max_workers must be at least 1 (it is 0)"
    );
}

#[test]
fn a_spin_wait_past_ten_milliseconds_is_a_clear_error() {
    let config = loky::Config::new().spin_wait(Duration::from_millis(11));
    let error = loky::Executor::new(config).err().unwrap();
    assert_eq!(
        error.to_string(),
        "invalid configuration: spin_wait must be at most 10ms (it is 11ms): past that, \
         sleeping costs less"
    );
    for budget in [Duration::ZERO, Duration::from_millis(10)] {
        let config = loky::Config::new().max_workers(1).spin_wait(budget);
        let executor = loky::Executor::new(config).unwrap();
        assert_eq!(run(&executor, double, 4), 8);
    }
}

/// One worker, started, whose callers look for outcomes on its board for
/// 10 ms before they sleep.
fn watching_executor() -> loky::Executor {
    let config = loky::Config::new()
        .max_workers(1)
        .spin_wait(Duration::from_millis(10));
    let executor = loky::Executor::new(config).unwrap();
    executor.start_workers().unwrap();
    executor
}

/// Two threads wait on one future while its call runs: the first looks
/// for the outcome on the worker's board, the other sleeps; both see it,
/// and it is delivered once.
#[test]
fn two_threads_waiting_on_one_future_both_see_its_outcome() {
    let executor = watching_executor();
    for ms in [0, 2, 5] {
        let future = executor.submit(sleep_ms, ms).unwrap();
        let shared = &future;
        std::thread::scope(|scope| {
            let waiters: Vec<_> = (0..2)
                .map(|_| scope.spawn(move || shared.wait_timeout(BOUND)))
                .collect();
            for waiter in waiters {
                assert!(waiter.join().unwrap());
            }
        });
        assert_eq!(future.result_timeout(BOUND).unwrap(), ms);
    }
    assert!(eventually(BOUND, || executor.stats().done == 3));
}

/// A call cancelled while its caller looks for its outcome on the
/// worker's board: the caller gets `Cancelled`, never a result, and the
/// executor serves on.
#[test]
fn a_call_cancelled_while_its_caller_watches_is_cancelled() {
    let executor = watching_executor();
    for _ in 0..5 {
        let future = executor.submit(sleep_ms, 30).unwrap();
        let cancelled = std::thread::scope(|scope| {
            let canceller = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(3));
                future.cancel()
            });
            assert!(future.wait_timeout(BOUND));
            canceller.join().unwrap()
        });
        assert!(cancelled);
        assert!(matches!(
            future.result_timeout(BOUND),
            Err(Error::Cancelled { .. })
        ));
    }
    assert_eq!(run(&executor, double, 21), 42);
}

#[test]
fn result_timeout_and_states() {
    let executor = executor(1);
    let running = executor.submit(sleep_ms, 300).unwrap();
    let queued = executor.submit(sleep_ms, 1).unwrap();
    let queued_too = executor.submit(sleep_ms, 2).unwrap();
    assert!(eventually(BOUND, || running.running()));
    assert!(!running.done());
    assert!(!running.wait_timeout(Duration::from_millis(10)));
    // With one worker and prefetch 1, the third task waits in the parent.
    assert!(!queued_too.running() && !queued_too.done());
    let started = Instant::now();
    let timeout = executor
        .submit(sleep_ms, 5)
        .unwrap()
        .result_timeout(Duration::from_millis(20));
    assert!(matches!(timeout, Err(Error::WaitTimeout { .. })));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(running.result_timeout(BOUND).unwrap(), 300);
    assert_eq!(queued.result_timeout(BOUND).unwrap(), 1);
    assert!(queued_too.wait_timeout(BOUND));
    assert!(queued_too.done() && !queued_too.running() && !queued_too.cancelled());
}

#[test]
fn cancel_works_on_pending_tasks_but_not_finished_ones() {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1).prefetch(0)).unwrap();
    let running = executor.submit(sleep_ms, 200).unwrap();
    let pending = executor.submit(sleep_ms, 10).unwrap();
    assert!(eventually(BOUND, || running.running()));
    assert!(pending.cancel());
    assert!(pending.cancel(), "cancelling twice still says cancelled");
    assert!(pending.cancelled() && pending.done());
    assert!(matches!(
        pending.result_timeout(BOUND),
        Err(Error::Cancelled {
            task: "futures::sleep_ms"
        })
    ));
    assert!(running.wait_timeout(BOUND));
    assert!(!running.cancel(), "a finished task cannot be cancelled");
    assert!(!running.cancelled());
    assert_eq!(running.result_timeout(BOUND).unwrap(), 200);
    // The pool goes on after a cancellation.
    assert_eq!(run(&executor, double, 1), 2);
}

#[test]
fn done_callbacks_run_exactly_once() {
    let executor = executor(2);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let future = executor.submit(sleep_ms, 50).unwrap();
    for _ in 0..3 {
        let calls = Arc::clone(&calls);
        let seen = Arc::clone(&seen);
        future.add_done_callback(move |outcome| {
            calls.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(*outcome.as_ref().unwrap());
        });
    }
    // A panicking callback is caught; the others and the result survive.
    future.add_done_callback(|_| panic!("callback panic (expected by the test)"));
    assert!(future.wait_timeout(BOUND));
    assert!(eventually(BOUND, || calls.load(Ordering::SeqCst) == 3));
    // Added after completion: runs at once, in this thread.
    let here = std::thread::current().id();
    let ran_here = Arc::new(Mutex::new(None));
    let ran_here2 = Arc::clone(&ran_here);
    future
        .add_done_callback(move |_| *ran_here2.lock().unwrap() = Some(std::thread::current().id()));
    assert_eq!(*ran_here.lock().unwrap(), Some(here));
    assert_eq!(future.result_timeout(BOUND).unwrap(), 50);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(*seen.lock().unwrap(), vec![50, 50, 50]);
    assert_eq!(run(&executor, double, 2), 4);
}

#[test]
fn callbacks_can_submit_more_work() {
    let executor = executor(2);
    let (tx, rx) = std::sync::mpsc::channel();
    let inner = executor.clone();
    executor
        .submit(double, 1)
        .unwrap()
        .add_done_callback(move |outcome| {
            let next = inner.submit(double, *outcome.as_ref().unwrap()).unwrap();
            next.add_done_callback(move |outcome| tx.send(*outcome.as_ref().unwrap()).unwrap());
        });
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), 4);
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal `block_on`, bounded in time.
fn block_on<F: std::future::Future>(future: F, limit: Duration) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + limit;
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

#[test]
fn futures_can_be_awaited() {
    let executor = executor(2);
    let a = executor.submit(sleep_ms, 30).unwrap();
    let b = executor.submit(add, (1, 2)).unwrap();
    let sum = block_on(
        async move { a.await.unwrap() as i64 + b.await.unwrap() },
        BOUND,
    );
    assert_eq!(sum, Some(33));
}

#[test]
fn wait_first_completed_first_exception_all_completed() {
    let executor = executor(2);
    let futures: Vec<_> = [400, 5]
        .iter()
        .map(|&ms| executor.submit(sleep_ms, ms).unwrap())
        .collect();
    let first = loky::wait(&futures, Some(BOUND), ReturnWhen::FirstCompleted);
    assert_eq!(first.done, vec![1]);
    assert_eq!(first.not_done, vec![0]);
    let all = loky::wait(&futures, Some(BOUND), ReturnWhen::AllCompleted);
    assert_eq!(all.done, vec![0, 1]);

    let mixed: Vec<_> = [(1, 99), (2, 2), (3, 99)]
        .iter()
        .map(|&args| executor.submit(fail_on, args).unwrap())
        .collect();
    let exception = loky::wait(&mixed, Some(BOUND), ReturnWhen::FirstException);
    assert!(exception.done.contains(&1), "{exception:?}");

    let slow = vec![executor.submit(sleep_ms, 500).unwrap()];
    let started = Instant::now();
    let timed_out = loky::wait(
        &slow,
        Some(Duration::from_millis(30)),
        ReturnWhen::AllCompleted,
    );
    assert_eq!(timed_out.not_done, vec![0]);
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[test]
fn as_completed_yields_in_completion_order_and_times_out() {
    let executor = executor(2);
    let futures: Vec<_> = [300, 10]
        .iter()
        .map(|&ms| executor.submit(sleep_ms, ms).unwrap())
        .collect();
    let order: Vec<u64> = loky::as_completed(futures, Some(BOUND))
        .map(|f| f.unwrap().result_timeout(BOUND).unwrap())
        .collect();
    assert_eq!(order, vec![10, 300]);

    let slow = vec![executor.submit(sleep_ms, 2000).unwrap()];
    let mut iter = loky::as_completed(slow, Some(Duration::from_millis(30)));
    assert!(matches!(iter.next(), Some(Err(Error::WaitTimeout { .. }))));
    assert!(iter.next().is_none());
}

#[test]
fn map_is_ordered_for_every_chunksize() {
    let executor = executor(2);
    let expected: Vec<u64> = (0..1000).map(|x| 2 * x).collect();
    for chunksize in [0, 1, 7, 1000, 5000] {
        let got: Vec<u64> = executor
            .map(double, 0..1000)
            .chunksize(chunksize)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, expected, "chunksize {chunksize}");
    }
}

#[test]
fn map_failures_are_per_element() {
    let executor = executor(2);
    let results: Vec<_> = executor
        .map(fail_on, (0..20).map(|x| (x, 13)))
        .chunksize(4)
        .collect();
    for (x, result) in results.iter().enumerate() {
        match result {
            Ok(value) => assert_eq!(*value, x as u64),
            Err(Error::Panicked { panic, .. }) => {
                assert_eq!(x, 13);
                assert!(panic.message.contains("bad input"));
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
}

#[test]
fn map_is_lazy_with_a_bounded_window_over_an_endless_input() {
    let executor = executor(2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let inputs = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut map = executor.map(double, inputs).chunksize(5).max_in_flight(3);
    let first: Vec<u64> = map.by_ref().take(10).map(Result::unwrap).collect();
    assert_eq!(first, (0..10).map(|x| 2 * x).collect::<Vec<_>>());
    // 10 consumed; at most 3 chunks of 5 beyond the current one were pulled.
    let pulled = pulled.load(Ordering::SeqCst);
    assert!(pulled <= 10 + 3 * 5, "pulled {pulled} inputs");
}

/// The default window grows while chunks are small, but stays bounded:
/// 128 elements per worker in flight (plus the chunk being filled).
#[test]
fn map_default_window_is_deeper_for_small_chunks_and_still_bounded() {
    let executor = executor(2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let inputs = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut map = executor.map(double, inputs).chunksize(1);
    let first: Vec<u64> = map.by_ref().take(10).map(Result::unwrap).collect();
    assert_eq!(first, (0..10).map(|x| 2 * x).collect::<Vec<_>>());
    let pulled = pulled.load(Ordering::SeqCst);
    assert!(
        pulled > 10 + 4,
        "the window stayed at 4 chunks: {pulled} pulled"
    );
    assert!(pulled <= 10 + 2 * 128 + 1, "pulled {pulled} inputs");
}

#[test]
fn map_reports_a_panicking_input_iterator() {
    let executor = executor(2);
    let inputs = (0u64..10).map(|x| {
        if x == 6 {
            panic!("input exhausted badly")
        } else {
            x
        }
    });
    let results: Vec<_> = executor.map(double, inputs).chunksize(2).collect();
    assert_eq!(results.len(), 7);
    for (x, result) in results[..6].iter().enumerate() {
        assert_eq!(*result.as_ref().unwrap(), 2 * x as u64);
    }
    match &results[6] {
        Err(Error::InputPanicked { message }) => assert_eq!(message, "input exhausted badly"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn submit_after_shutdown_hands_the_arguments_back() {
    let executor = executor(1);
    assert_eq!(run(&executor, double, 1), 2);
    executor.shutdown(Shutdown::default());
    assert!(executor.is_shutdown() && executor.is_stopped());
    let refused = executor.submit(add, (3, 4)).unwrap_err();
    assert_eq!(refused.args, (3, 4));
    assert!(matches!(refused.reason, Error::ShutDown));
    let results: Vec<_> = executor.map(double, 0..3).collect();
    assert!(results.iter().all(|r| matches!(r, Err(Error::ShutDown))));
}

/// Quick calls on idle workers are settled by the workers' links, which
/// tell the manager first: every future is still done once `shutdown`
/// has waited.
#[test]
fn every_quick_future_is_done_once_shutdown_returns() {
    let executor = executor(2);
    let futures: Vec<_> = (0..300)
        .map(|x| executor.submit(double, x).unwrap())
        .collect();
    executor.shutdown(Shutdown::default());
    assert!(executor.is_stopped());
    for (x, future) in (0..).zip(futures) {
        assert!(future.done(), "call {x}");
        assert_eq!(future.result_timeout(BOUND).unwrap(), 2 * x);
    }
}

#[test]
fn shutdown_waits_for_submitted_work() {
    let executor = executor(2);
    let futures: Vec<_> = (0..6)
        .map(|_| executor.submit(sleep_ms, 20).unwrap())
        .collect();
    executor.shutdown(Shutdown::default());
    assert!(executor.is_stopped());
    for future in futures {
        assert!(future.done());
        assert_eq!(future.result_timeout(BOUND).unwrap(), 20);
    }
}

#[test]
fn shutdown_can_cancel_pending_futures() {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1).prefetch(0)).unwrap();
    let running = executor.submit(sleep_ms, 100).unwrap();
    let pending: Vec<_> = (0..5)
        .map(|_| executor.submit(sleep_ms, 100).unwrap())
        .collect();
    assert!(eventually(BOUND, || running.running()));
    executor.shutdown(Shutdown {
        cancel_futures: true,
        ..Shutdown::default()
    });
    assert_eq!(running.result_timeout(BOUND).unwrap(), 100);
    for future in pending {
        assert!(future.cancelled());
    }
}

#[test]
fn dropping_the_executor_finishes_the_work_then_stops_the_workers() {
    let executor = executor(2);
    let future = executor.submit(sleep_ms, 50).unwrap();
    let pids = executor.worker_pids();
    drop(executor);
    assert_eq!(future.result_timeout(BOUND).unwrap(), 50);
    for pid in pids {
        assert!(wait_gone(pid, BOUND), "worker {pid} survived the executor");
    }
}

/// Where each [`Traced`] was decoded.
static DECODED_ON: Mutex<Vec<std::thread::ThreadId>> = Mutex::new(Vec::new());

/// A result that records which thread of the parent decodes it.
#[derive(serde::Serialize)]
struct Traced(u64);

impl<'de> serde::Deserialize<'de> for Traced {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        DECODED_ON.lock().unwrap().push(std::thread::current().id());
        Ok(Traced(value))
    }
}

#[loky::task]
fn traced(x: u64) -> Traced {
    Traced(x)
}

/// Results are decoded by the thread that takes them (never on the
/// executor's manager thread, where a slow `Deserialize` would hold up
/// timeouts and dispatch), for single calls and for `map` chunks alike.
#[test]
fn results_are_decoded_by_the_thread_that_takes_them() {
    let executor = executor(2);
    let futures: Vec<_> = (0..10)
        .map(|x| executor.submit(traced, x).unwrap())
        .collect();
    // Let them all finish before anyone takes a result.
    for future in &futures {
        assert!(future.wait_timeout(BOUND));
    }
    assert!(DECODED_ON.lock().unwrap().is_empty());
    let taker = std::thread::spawn(move || {
        for (x, future) in (0..).zip(futures) {
            assert_eq!(future.result_timeout(BOUND).unwrap().0, x);
        }
        let mapped: Vec<u64> = executor
            .map(traced, 0..100)
            .chunksize(7)
            .map(|result| result.unwrap().0)
            .collect();
        assert_eq!(mapped, (0..100).collect::<Vec<_>>());
        std::thread::current().id()
    });
    let taker = taker.join().unwrap();
    let decoded_on = DECODED_ON.lock().unwrap();
    assert_eq!(decoded_on.len(), 110);
    assert!(decoded_on.iter().all(|&thread| thread == taker));
}

#[test]
fn public_handles_print_with_debug() {
    let executor = executor(2);
    let shown = format!("{executor:?}");
    assert!(
        shown.starts_with("Executor {") && shown.contains("max_workers: 2"),
        "{shown}"
    );
    let map = executor.map(double, 0..3).chunksize(2);
    let shown = format!("{map:?}");
    assert!(
        shown.contains("double") && shown.contains("chunksize: Some(2)"),
        "{shown}"
    );
    let futures = vec![executor.submit(double, 1).unwrap()];
    let completed = loky::as_completed(futures, Some(BOUND));
    let shown = format!("{completed:?}");
    assert!(shown.contains("remaining: 1"), "{shown}");
}

/// An argument whose encoding writes part of itself, then panics (3) or
/// fails (5). Encoded as the pair (value, 0).
struct Touchy(u64);

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (value, _) = <(u64, u8)>::deserialize(deserializer)?;
        Ok(Touchy(value))
    }
}

impl serde::Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeTuple};
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&self.0)?;
        match self.0 {
            3 => panic!("touchy about 3"),
            5 => Err(S::Error::custom("touchy about 5")),
            _ => {
                tuple.serialize_element(&0u8)?;
                tuple.end()
            }
        }
    }
}

#[loky::task]
fn touchy(value: Touchy) -> u64 {
    value.0
}

/// In one chunk, an argument that panics or fails halfway through its
/// encoding fails alone: what it wrote before is not left for its
/// neighbours to be read with.
#[test]
fn an_argument_that_fails_halfway_through_its_encoding_fails_alone_in_its_chunk() {
    let executor = executor(1);
    let results: Vec<_> = executor
        .map(touchy, (0..8).map(Touchy))
        .chunksize(8)
        .collect();
    for (x, result) in (0..).zip(results) {
        match (x, result) {
            (3 | 5, Err(Error::Serialization { stage, message, .. })) => {
                assert_eq!(stage, loky::Stage::EncodeArgs, "element {x}");
                assert!(message.contains(&format!("touchy about {x}")), "{message}");
            }
            (x, Ok(value)) => assert_eq!(value, x),
            (x, other) => panic!("element {x}: {other:?}"),
        }
    }
}
