//! Results as they finish, with a progress bar: `map_unordered` yields each
//! result with its input's index as soon as it is ready, and `.progress()`
//! (feature `progress`) draws done, failed, rate and time left.
//!
//! `cargo run --release --example progress`
//!
//! Without the feature, count as you go (`Iterator::inspect`) or read
//! `executor.stats()`, which any thread may call at any time.

use std::time::Duration;

/// Pretends to work for a while that depends on the input; fails on
/// multiples of 37, as real work sometimes does.
#[loky::task]
fn simulate(x: u64) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(x % 7));
    if x.is_multiple_of(37) {
        return Err(format!("input {x} is cursed"));
    }
    Ok(x * x)
}

#[loky::main]
fn main() -> Result<(), loky::Error> {
    let executor = loky::Executor::new(loky::Config::new())?;

    // Completion order, each result with the index of its input; the bar
    // counts a task that returned `Err` as done (the call worked): count
    // your own failures from the values.
    let mut slowest_first = Vec::new();
    let mut cursed = 0;
    for (index, result) in executor
        .map_unordered(simulate, 1..=2000)
        .chunksize(8)
        .progress()
    {
        match result? {
            Ok(square) => slowest_first.push((index, square)),
            Err(_) => cursed += 1,
        }
    }
    println!("{} results, {cursed} cursed inputs", slowest_first.len());

    // The same counts without a bar: the executor's stats.
    let stats = executor.stats();
    println!(
        "the executor finished {} calls (a chunk is one call), {} failed, on {} workers",
        stats.done + stats.failed,
        stats.failed,
        stats.started
    );
    Ok(())
}
