//! scratch
use std::time::Instant;
/// x
#[loky::task]
fn noop(x: u64) -> u64 {
    x
}
#[loky::main]
fn main() {
    let executor = loky::Executor::new(loky::Config::new().max_workers(2)).unwrap();
    for cs in [1usize, 1, 1, 1, 1] {
        let n = 100_000u64;
        let started = Instant::now();
        let count = executor
            .map(noop, 0..n)
            .chunksize(cs)
            .filter(Result::is_ok)
            .count();
        assert_eq!(count as u64, n);
        println!("cs{cs} {:.0}/s", n as f64 / started.elapsed().as_secs_f64());
    }
}
