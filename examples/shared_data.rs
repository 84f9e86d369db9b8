//! Large read-only data shipped once: a "model" in `SharedBytes` is written
//! to shared memory once, handed to every worker by an initializer and to
//! tasks as an argument, without a copy per task; a matrix of `f64` in a
//! `SharedSlice`, read in place by every task. Workers also get their share
//! of the CPUs for the thread pools of numeric libraries.
//!
//! `cargo run --release --example shared_data`

use loky::{Config, Executor, SharedBytes, SharedSlice};
use std::sync::Mutex;
use std::time::Instant;

/// The model this worker received from its initializer.
static MODEL: Mutex<Option<SharedBytes>> = Mutex::new(None);

/// The initializer: runs once per worker, before its first task.
#[loky::task]
fn load(model: SharedBytes) {
    *MODEL.lock().unwrap() = Some(model);
}

/// "Scores" an input against the model the worker holds.
#[loky::task]
fn score(input: u64) -> u64 {
    let model = MODEL.lock().unwrap();
    let model = model.as_ref().expect("the initializer ran");
    let at = (input as usize * 4099) % model.len();
    u64::from(model[at]) * input
}

/// Reads a whole table handed as an argument.
#[loky::task]
fn checksum(table: SharedBytes) -> u64 {
    table.iter().map(|&b| u64::from(b)).sum()
}

/// The sum of one row of a square matrix of side `n`.
#[loky::task]
fn row_sum(matrix: SharedSlice<f64>, n: usize, row: usize) -> f64 {
    matrix[row * n..(row + 1) * n].iter().sum()
}

/// What a worker's numeric libraries would see.
#[loky::task]
fn omp_threads() -> Option<String> {
    std::env::var("OMP_NUM_THREADS").ok()
}

#[loky::main]
fn main() -> Result<(), loky::Error> {
    let bytes: Vec<u8> = (0..64 << 20).map(|i| (i % 7) as u8).collect();
    let started = Instant::now();
    let model = SharedBytes::new(&bytes).expect("a shared region");
    println!(
        "64 MiB written to shared memory once in {:?}",
        started.elapsed()
    );

    let config = Config::new()
        .max_workers(2)
        .initializer(load, model.clone());
    let executor = Executor::new(config)?;

    let scores: Vec<u64> = executor.map(score, 0..1000).collect::<Result<_, _>>()?;
    let expected: Vec<u64> = (0..1000u64)
        .map(|i| u64::from(bytes[(i as usize * 4099) % bytes.len()]) * i)
        .collect();
    assert_eq!(scores, expected);
    println!("1000 tasks scored against the model; no copy of it per task");

    let started = Instant::now();
    let sums: Vec<u64> = executor
        .map(checksum, std::iter::repeat_n(model.clone(), 8))
        .collect::<Result<_, _>>()?;
    let expected: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    assert!(sums.iter().all(|&sum| sum == expected));
    println!("8 tasks read all 64 MiB each in {:?}", started.elapsed());

    // Plain numbers: a 2000 x 2000 matrix of f64 (32 MB), shared once; each
    // task reads its row in place.
    let n = 2000;
    let values: Vec<f64> = (0..n * n).map(|i| (i % n) as f64).collect();
    let matrix = SharedSlice::new(&values).expect("a shared region");
    let started = Instant::now();
    let rows: Vec<f64> = executor
        .map(row_sum, (0..n).map(|row| (matrix.clone(), n, row)))
        .collect::<Result<_, _>>()?;
    let expected = (0..n).map(|i| i as f64).sum::<f64>();
    assert!(rows.iter().all(|&sum| sum == expected));
    println!(
        "{n} row sums of a shared {n}x{n} matrix in {:?}",
        started.elapsed()
    );

    let threads = executor.submit(omp_threads, ())?.result()?;
    println!("a worker's OMP_NUM_THREADS: {threads:?}");
    Ok(())
}
