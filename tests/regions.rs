//! Large payloads travel through warm shared-memory regions, reused both
//! ways, and no region outlives its users, even when a worker dies reading
//! one. (Running short of memory for a region: `tests/hostile.rs`.)

mod common;

use common::{BOUND, executor};
use loky::Error;

/// Held by each test: they count this process's regions.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Past this size a result is held in its region until taken (smaller
/// ones are copied out on arrival: `RESULT_HELD_IN_PLACE`, 32 MiB); results
/// travel in shared memory from 128 KiB, arguments from 64 KiB.
const LARGE: usize = 33 << 20;

#[loky::task]
fn echo(data: Vec<u8>) -> Vec<u8> {
    data
}

#[loky::task]
fn bytes_of(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

#[loky::task]
fn abort_holding(data: Vec<u8>) {
    assert!(!data.is_empty());
    std::process::abort();
}

/// This process's shared-memory descriptors of at least `size` bytes.
fn regions_here(size: u64) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            let path = entry.path();
            let target = std::fs::read_link(&path).unwrap_or_default();
            let size_now = std::fs::metadata(&path).map_or(0, |meta| meta.len());
            target.to_string_lossy().contains("memfd:") && size_now >= size
        })
        .count()
}

/// The tests count this process's regions: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Shuts `executor` down and drops it, then expects no region of `size`
/// bytes or more left in this process.
fn assert_none_left_after(executor: loky::Executor, size: u64) {
    executor.shutdown(loky::Shutdown::default());
    drop(executor);
    assert!(
        common::eventually(BOUND, || regions_here(size) == 0),
        "{} regions left after the executor",
        regions_here(size)
    );
}

#[loky::task]
fn worker_regions(size: u64) -> usize {
    regions_here(size)
}

#[test]
fn large_payloads_reuse_warm_regions_both_ways() {
    let _serial = serial();
    let executor = executor(1);
    for round in 0..6u8 {
        let data = vec![round; LARGE];
        let back = executor
            .submit(echo, data)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap();
        assert_eq!(back.len(), LARGE);
        assert!(back.iter().all(|&byte| byte == round), "round {round}");
    }
    // Six large arguments and six large results, through a few regions:
    // each side reuses the ones the other is done with.
    let here = regions_here(LARGE as u64);
    assert!((1..=3).contains(&here), "{here} regions in the parent");
    let there = executor
        .submit(worker_regions, LARGE as u64)
        .unwrap()
        .result_timeout(BOUND)
        .unwrap();
    assert!((1..=3).contains(&there), "{there} regions in the worker");
    assert_none_left_after(executor, LARGE as u64);
}

#[test]
fn a_worker_that_dies_reading_a_region_leaks_none() {
    let _serial = serial();
    let size = 1 << 20;
    let executor = executor(1);
    let died = executor
        .submit(abort_holding, vec![1; size])
        .unwrap()
        .result_timeout(BOUND);
    assert!(
        matches!(died, Err(Error::WorkerDied { .. })),
        "expected WorkerDied, got {died:?}"
    );
    // The region it held is never written again while counted as read;
    // the next payload of that size gets one that is free.
    for round in 0..3u8 {
        let back = executor
            .submit(echo, vec![round; size])
            .unwrap()
            .result_timeout(BOUND)
            .unwrap();
        assert!(back.len() == size && back.iter().all(|&byte| byte == round));
    }
    assert_none_left_after(executor, size as u64);
}

#[test]
fn results_waiting_to_be_taken_hold_no_regions() {
    let _serial = serial();
    // In shared memory on the way (from 128 KiB), copied out on arrival
    // (below 32 MiB): a thousand waiting results hold no descriptor.
    let size = 256 << 10;
    let executor = executor(2);
    let futures: Vec<_> = (0..1000)
        .map(|i| executor.submit(bytes_of, (size, i as u8)).unwrap())
        .collect();
    // Not `wait`, which decodes results to tell failures.
    let all_done = || futures.iter().all(|future| future.done());
    assert!(common::eventually(BOUND, all_done));
    let held = regions_here(size as u64);
    assert!(held <= 2, "{held} regions held by waiting results");
    for (i, future) in futures.into_iter().enumerate() {
        let bytes = future.result_timeout(BOUND).unwrap();
        assert!(bytes.len() == size && bytes.iter().all(|&byte| byte == i as u8));
    }
}
