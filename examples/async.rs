//! loky from async code (tokio): futures are awaited, `map_unordered` is a
//! stream (feature `stream`), and the runtime's single thread keeps serving
//! other tasks while workers compute.
//!
//! `cargo run --release --example async`

use loky::stream::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// CPU work that would stall an async runtime if run on it.
#[loky::task]
fn count_primes(below: u64) -> usize {
    (2..below)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count()
}

/// `stream.next().await`, as `futures::StreamExt::next` does.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

#[loky::main]
fn main() -> Result<(), loky::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let executor = loky::Executor::new(loky::Config::new())?;

        // A heartbeat on the same thread: it keeps beating while we await.
        let beats = Arc::new(AtomicU32::new(0));
        let heartbeat = tokio::spawn({
            let beats = Arc::clone(&beats);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    beats.fetch_add(1, Ordering::Relaxed);
                }
            }
        });

        // One future, awaited.
        let primes = executor
            .submit(count_primes, 200_000)
            .map_err(|refused| refused.reason)?
            .await?;
        println!("{primes} primes below 200000");

        // Many, as a stream in completion order, with their input's index.
        let limits = [400_000, 1_000, 100_000, 10_000];
        let mut results = executor.map_unordered(count_primes, limits).chunksize(1);
        while let Some((index, count)) = next(&mut results).await {
            println!("{} primes below {}", count?, limits[index]);
        }

        // A deadline from the runtime: the task goes on in its worker.
        let slow = executor
            .submit(count_primes, 5_000_000)
            .map_err(|refused| refused.reason)?;
        match tokio::time::timeout(Duration::from_millis(100), slow).await {
            Ok(count) => println!("{} primes below 5000000", count?),
            Err(_) => println!("still counting after 100 ms: gave up waiting"),
        }
        heartbeat.abort();
        let beats = beats.load(Ordering::Relaxed);
        println!("meanwhile the runtime's one thread ran the heartbeat {beats} times");
        Ok(())
    })
}
