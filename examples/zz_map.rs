//! Scratch: map chunksize 1 for profiling.
use std::time::Instant;

/// No-op.
#[loky::task]
fn noop(x: u32) -> u32 {
    x
}

#[loky::main]
fn main() -> Result<(), loky::Error> {
    let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
    executor.start_workers()?;
    for _ in 0..5 {
        let started = Instant::now();
        let n = executor
            .map(noop, 0..100_000)
            .chunksize(1)
            .filter(|r| r.is_ok())
            .count();
        println!(
            "{n} in {:?}: {:.0}/s",
            started.elapsed(),
            n as f64 / started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
