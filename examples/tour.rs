//! A tour of what goes wrong in worker processes, and how loky reports it
//! and carries on: `cargo run --release --example tour`.

use loky::{Config, Error, Executor, Shutdown};
use std::time::{Duration, Instant};

/// Crashes its worker with a real segmentation fault.
#[loky::task]
fn segfault(x: u64) -> u64 {
    // SAFETY: none; this is the crash being demonstrated.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(x) };
    x
}

/// Exits its worker, as a C library calling `exit` might.
#[loky::task]
fn exits(code: i32) {
    std::process::exit(code);
}

/// Panics, which the worker survives.
#[loky::task]
fn panics(what: String) -> u64 {
    panic!("{what}");
}

/// Sleeps, then answers.
#[loky::task]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    x * x
}

fn show(label: &str, started: Instant, result: Result<impl std::fmt::Debug, Error>) {
    match result {
        Ok(value) => println!("{label:<28} ok: {value:?}  ({:?})", started.elapsed()),
        Err(error) => println!("{label:<28} {error}  ({:?})", started.elapsed()),
    }
}

#[loky::main]
fn main() -> Result<(), Error> {
    let executor = Executor::new(Config::new().max_workers(2))?;
    // Innocent tasks run beside the crashes and are not affected.
    let innocent: Vec<_> = (0..6)
        .map(|x| executor.submit(slow_square, x))
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    show("segfault", started, executor.submit(segfault, 1)?.result());
    let started = Instant::now();
    show(
        "process::exit(3)",
        started,
        executor.submit(exits, 3)?.result(),
    );
    let started = Instant::now();
    show(
        "panic",
        started,
        executor
            .submit(panics, "out of cheese".to_owned())?
            .result(),
    );

    let squares: Vec<u64> = innocent
        .into_iter()
        .map(|f| f.result())
        .collect::<Result<_, _>>()?;
    println!("{:<28} ok: {squares:?}", "innocent tasks beside them");
    let started = Instant::now();
    show(
        "the same pool, afterwards",
        started,
        executor.submit(slow_square, 12)?.result(),
    );
    executor.shutdown(Shutdown::default());
    Ok(())
}
