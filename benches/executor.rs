//! The executor's figures: `cargo bench --bench executor [-- --json]`.
//!
//! Prints a readable table, or with `--json` one JSON object as its last
//! line, with the keys of ../shared/ANCHORS.md. Medians over repetitions;
//! these machines are shared and noisy, so compare ratios from one run.

mod report;

use loky::{Config, Error, Executor, Shutdown};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[loky::task]
fn noop(x: u64) -> u64 {
    x
}

#[loky::task]
fn echo(data: Vec<u8>) -> Vec<u8> {
    data
}

#[loky::task]
fn abort() {
    std::process::abort();
}

#[loky::task]
fn spin(iterations: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..iterations {
        x = black_box(x.rotate_left(5) ^ i).wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    x
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn two_workers() -> Executor {
    Executor::new(Config::new().max_workers(2)).expect("valid config")
}

fn cold_start_ms() -> f64 {
    report::median(
        (0..15)
            .map(|_| {
                let started = Instant::now();
                let executor = two_workers();
                executor.submit(noop, 1).unwrap().result().unwrap();
                let took = started.elapsed();
                executor.shutdown(Shutdown::default());
                took.as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn roundtrips_us(executor: &Executor) -> (f64, f64) {
    for i in 0..500 {
        executor.submit(noop, i).unwrap().result().unwrap();
    }
    let samples: Vec<f64> = (0..5000)
        .map(|i| {
            let started = Instant::now();
            executor.submit(noop, i).unwrap().result().unwrap();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    (percentile(samples.clone(), 0.5), percentile(samples, 0.99))
}

fn map_tasks_per_s(executor: &Executor, chunksize: usize) -> f64 {
    let n = 100_000u64;
    report::median(
        (0..3)
            .map(|_| {
                let started = Instant::now();
                let count = executor
                    .map(noop, 0..n)
                    .chunksize(chunksize)
                    .filter(Result::is_ok)
                    .count();
                assert_eq!(count as u64, n);
                n as f64 / started.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn echo_gb_per_s(executor: &Executor) -> f64 {
    let data = vec![7u8; 64 << 20];
    report::median(
        (0..5)
            .map(|_| {
                // The task takes its argument by value; the copy is the
                // caller's, not the executor's (Python's bench passes its
                // buffer as is), so it is made before the clock starts.
                let argument = data.clone();
                let started = Instant::now();
                let back = executor.submit(echo, argument).unwrap().result().unwrap();
                let took = started.elapsed().as_secs_f64();
                assert_eq!(back.len(), data.len());
                2.0 * data.len() as f64 / took / 1e9
            })
            .collect(),
    )
}

/// Reads every byte of a shared buffer (sums them 8 at a time).
#[loky::task]
fn sum_shared(data: loky::SharedBytes) -> u64 {
    data.chunks_exact(8)
        .map(|word| u64::from_le_bytes(word.try_into().unwrap()))
        .fold(0u64, u64::wrapping_add)
}

/// 64 MiB already in a `SharedBytes`, handed to a task that reads every
/// byte: submit to result.
fn shared_handoff_ms(executor: &Executor) -> f64 {
    let shared = loky::SharedBytes::new(&vec![1u8; 64 << 20]).unwrap();
    let expected = sum_shared.call(shared.clone());
    report::median(
        (0..7)
            .map(|_| {
                let started = Instant::now();
                let sum = executor
                    .submit(sum_shared, shared.clone())
                    .unwrap()
                    .result()
                    .unwrap();
                let took = started.elapsed().as_secs_f64() * 1e3;
                assert_eq!(sum, expected);
                took
            })
            .collect(),
    )
}

fn crash_and_recover_ms(executor: &Executor) -> (f64, f64) {
    let mut detect = Vec::new();
    let mut recover = Vec::new();
    for _ in 0..10 {
        // Warm both workers so the crash is all that is measured.
        let warm: Vec<_> = (0..4).map(|i| executor.submit(noop, i).unwrap()).collect();
        for future in warm {
            future.result().unwrap();
        }
        let started = Instant::now();
        let result = executor.submit(abort, ()).unwrap().result();
        detect.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(
            matches!(result, Err(Error::WorkerDied { .. })),
            "{result:?}"
        );
        let started = Instant::now();
        executor.submit(noop, 1).unwrap().result().unwrap();
        recover.push(started.elapsed().as_secs_f64() * 1e3);
    }
    (report::median(detect), report::median(recover))
}

fn cpu_speedup(executor: &Executor) -> f64 {
    // Calibrate `spin` to about 20 ms here.
    let probe = 2_000_000;
    let started = Instant::now();
    black_box(spin.call(probe));
    let per_iteration = started.elapsed().as_secs_f64() / probe as f64;
    let iterations = (0.020 / per_iteration) as u64;
    let started = Instant::now();
    for _ in 0..200 {
        black_box(spin.call(iterations));
    }
    let serial = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let done = executor
        .map(spin, std::iter::repeat_n(iterations, 200))
        .chunksize(1)
        .count();
    assert_eq!(done, 200);
    serial / started.elapsed().as_secs_f64()
}

fn idle_worker_rss_mb(executor: &Executor) -> f64 {
    executor.submit(noop, 1).unwrap().result().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let rss: Vec<f64> = executor
        .worker_pids()
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb / 1024.0)
        })
        .collect();
    report::median(rss)
}

fn main() {
    let cold_start_ms = cold_start_ms();
    let executor = two_workers();
    let (p50, p99) = roundtrips_us(&executor);
    let map_cs1 = map_tasks_per_s(&executor, 1);
    let map_auto = map_tasks_per_s(&executor, 0);
    let echo_rate = echo_gb_per_s(&executor);
    let shared_ms = shared_handoff_ms(&executor);
    let (crash_detect_ms, recover_ms) = crash_and_recover_ms(&executor);
    let cpu = cpu_speedup(&executor);
    let rss = idle_worker_rss_mb(&executor);
    let rows = [
        (
            "cold_start_ms",
            cold_start_ms,
            "new executor (2 workers) to first result",
        ),
        (
            "roundtrip_us_p50",
            p50,
            "sequential no-op submit + result, median",
        ),
        ("roundtrip_us_p99", p99, "same, 99th percentile"),
        (
            "map_cs1_tasks_per_s",
            map_cs1,
            "map of 100 000 no-op tasks, chunksize 1",
        ),
        (
            "map_auto_tasks_per_s",
            map_auto,
            "same, automatic chunksize",
        ),
        (
            "echo_64mib_gb_per_s",
            echo_rate,
            "64 MiB Vec<u8> there and back, bytes both ways / time",
        ),
        (
            "shared_64mib_handoff_ms",
            shared_ms,
            "64 MiB SharedBytes to a task that reads it all, submit to result",
        ),
        (
            "crash_detect_ms",
            crash_detect_ms,
            "task aborts -> error in the parent",
        ),
        (
            "recover_ms",
            recover_ms,
            "after the crash, next result, same executor",
        ),
        (
            "cpu_speedup_2w",
            cpu,
            "200 tasks of ~20 ms: serial time / pool time",
        ),
        (
            "idle_worker_rss_mb",
            rss,
            "resident memory of an idle worker",
        ),
    ];
    report::print(&rows);
}
