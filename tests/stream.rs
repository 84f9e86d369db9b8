//! `map`, `map_unordered` and `as_completed` as async streams (feature
//! `stream`) on a single-threaded tokio runtime across real workers: the
//! runtime keeps running while results are awaited, results and errors are
//! those of the iterators, and timeouts fire without a blocked thread.

mod common;

use loky::stream::Stream;
use loky::{Config, Error, Executor};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[loky::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[loky::task]
fn square(x: u64) -> u64 {
    x * x
}

/// Exits with code 5 on 3, else returns its input.
#[loky::task]
fn exit_on_three(x: u64) -> u64 {
    if x == 3 {
        std::process::exit(5);
    }
    x
}

/// `stream.next().await` without a combinator crate.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

fn executor() -> Executor {
    Executor::new(Config::new().max_workers(2)).unwrap()
}

/// Runs `test` on a current-thread runtime, bounded by `common::BOUND`.
fn block_on<F: std::future::Future>(test: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(common::BOUND, test)
            .await
            .expect("the stream test finished within the bound")
    })
}

/// While a slow result is awaited, another task on the same single thread
/// keeps running: the stream waits without blocking the thread.
#[test]
fn awaiting_a_map_does_not_block_the_runtime() {
    block_on(async {
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = Arc::clone(&ticks);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let executor = executor();
        let mut results = executor.map(sleep_ms, [300, 1, 2]).chunksize(1);
        let mut got = Vec::new();
        while let Some(result) = next(&mut results).await {
            got.push(result.unwrap());
        }
        ticker.abort();
        assert_eq!(got, [300, 1, 2], "in input order");
        assert!(
            ticks.load(Ordering::Relaxed) >= 5,
            "the runtime was blocked: {} ticks in 300 ms",
            ticks.load(Ordering::Relaxed)
        );
    });
}

/// Completion order with indices, and a crashing element failing alone.
#[test]
fn map_unordered_streams_in_completion_order() {
    block_on(async {
        let executor = executor();
        let mut results = executor.map_unordered(sleep_ms, [400, 5, 5]).chunksize(1);
        let mut order = Vec::new();
        while let Some((index, result)) = next(&mut results).await {
            assert_eq!(result.unwrap(), [400, 5, 5][index]);
            order.push(index);
        }
        assert_eq!(order.last(), Some(&0), "{order:?}");
        assert_eq!(order.len(), 3);

        let mut results = executor.map_unordered(exit_on_three, 0..6).chunksize(2);
        let mut seen = 0;
        while let Some((index, result)) = next(&mut results).await {
            seen += 1;
            match result {
                Ok(value) => assert_eq!(value, index as u64),
                Err(Error::WorkerDied { reason, .. }) if index == 3 => {
                    assert_eq!(reason, loky::ExitReason::Code(5));
                }
                Err(error) => panic!("element {index}: {error}"),
            }
        }
        assert_eq!(seen, 6);
    });
}

/// An endless input is pulled only as results are consumed.
#[test]
fn an_endless_stream_is_pulled_lazily() {
    block_on(async {
        let executor = executor();
        let mut results = executor.map(square, 0u64..);
        for x in 0..200u64 {
            assert_eq!(next(&mut results).await.unwrap().unwrap(), x * x);
        }
    });
}

/// `as_completed` as a stream: futures as they finish, then the wait's
/// timeout on time although nothing else wakes the task.
#[test]
fn as_completed_streams_and_times_out() {
    block_on(async {
        let executor = executor();
        let futures = vec![
            executor.submit(sleep_ms, 20_000).unwrap(),
            executor.submit(sleep_ms, 5).unwrap(),
        ];
        let started = Instant::now();
        let mut completed = loky::as_completed(futures, Some(Duration::from_millis(300)));
        let first = next(&mut completed).await.unwrap().unwrap();
        assert_eq!(first.await.unwrap(), 5);
        match next(&mut completed).await {
            Some(Err(Error::WaitTimeout { waited })) => {
                assert_eq!(waited, Duration::from_millis(300))
            }
            other => panic!("expected the wait's timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(next(&mut completed).await.is_none());
        executor.kill_workers();
    });
}
