//! What happens inside workers, seen from the parent: `tracing` events and
//! `log` records of tasks reach this process's subscriber (with the
//! worker's pid and the task), and with `label_output` every line a worker
//! prints is prefixed with its pid and task.
//!
//! `cargo run --release --example worker_logs`

#[loky::task]
fn work(x: u64) -> u64 {
    tracing::info!(x, "working");
    tracing::debug!("filtered out in the worker: the parent listens at info");
    log::warn!("a `log` record from input {x}");
    println!("plain output from input {x}");
    x * x
}

#[loky::main]
fn main() -> Result<(), loky::Error> {
    // This process's subscriber, at info: workers forward what it listens to.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .init();
    let config = loky::Config::new().max_workers(2).label_output(true);
    let executor = loky::Executor::new(config)?;
    let squares: Vec<u64> = executor.map(work, 0..4).collect::<Result<_, _>>()?;
    assert_eq!(squares, [0, 1, 4, 9]);
    println!("squares {squares:?}");
    Ok(())
}
