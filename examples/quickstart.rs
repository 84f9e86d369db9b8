//! Quickstart: run functions in worker processes, get results and errors back.
//!
//! `cargo run --release --example quickstart`

use std::time::Instant;

/// Squares a number, in whichever worker process picks it up.
#[loky::task]
fn square(x: u64) -> u64 {
    x * x
}

/// Says which process ran it.
#[loky::task]
fn whoami(label: String) -> String {
    format!("{label} ran in process {}", std::process::id())
}

/// Panics, to show that a panic comes back as an error.
#[loky::task]
fn fails(x: u64) -> u64 {
    assert!(x < 3, "x is too large: {x}");
    x
}

#[loky::main]
fn main() -> Result<(), loky::Error> {
    let started = Instant::now();
    let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;

    // One call: a future, then its result.
    let future = executor.submit(square, 12)?;
    println!("square(12) = {}", future.result()?);
    println!("first result after {:?}", started.elapsed());

    // Many calls, in order, chunked and lazily fed.
    let total: u64 = executor
        .map(square, 0..10_000)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .sum();
    println!("sum of squares below 10000 = {total}");

    // Which processes ran the work.
    println!(
        "{}",
        executor.submit(whoami, "a task".to_owned())?.result()?
    );
    println!("the parent is process {}", std::process::id());

    // A panic is an error value, and the pool goes on.
    match executor.submit(fails, 7)?.result() {
        Ok(value) => println!("unexpected: {value}"),
        Err(error) => println!("error, as expected: {error}"),
    }
    println!(
        "and afterwards: square(5) = {}",
        executor.submit(square, 5)?.result()?
    );

    // The default reusable executor, and a plain call in this process.
    println!("square.spawn(9) = {}", square.spawn(9).result()?);
    println!("square.call(4) = {}", square.call(4));

    executor.shutdown(loky::Shutdown::default());
    println!("done in {:?}", started.elapsed());
    Ok(())
}
