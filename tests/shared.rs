//! `SharedBytes` across real workers: the worker reads the parent's pages
//! (a mapping, not a copy), in `submit`, `map` and an initializer; an empty
//! one works; returning one is a clear error; and no region outlives its
//! last user, here or in a worker.

mod common;

use common::{BOUND, run};
use loky::{Config, Error, Executor, SharedBytes};
use std::sync::Mutex;

/// The sum of the bytes, and whether they lie in a shared memory mapping
/// of this (worker) process.
#[loky::task]
fn inspect(data: SharedBytes) -> (u64, bool) {
    let sum = data.iter().map(|&b| u64::from(b)).sum();
    (sum, in_memfd_mapping(data.as_ptr() as usize))
}

/// Whether `address` lies in a mapping of a memfd in this process.
fn in_memfd_mapping(address: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        (start..end).contains(&address) && line.contains("memfd:")
    })
}

/// This process's descriptors that are memfds of `size` bytes.
#[loky::task]
fn memfds(size: u64) -> usize {
    memfds_of_size(size)
}

/// This process's descriptors that are memfds of `size` bytes (a size no
/// other test uses, since tests share the process).
fn memfds_of_size(size: u64) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let target = std::fs::read_link(&path).ok()?;
            let size_now = std::fs::metadata(&path).ok()?.len();
            (target.to_string_lossy().contains("memfd:") && size_now == size).then_some(())
        })
        .count()
}

/// Tries to return its argument.
#[loky::task]
fn give_back(data: SharedBytes) -> SharedBytes {
    data
}

static MODEL: Mutex<Option<SharedBytes>> = Mutex::new(None);

/// An initializer: keeps the model for every later task of this worker.
#[loky::task]
fn load_model(model: SharedBytes) {
    *MODEL.lock().unwrap() = Some(model);
}

/// Reads the model the initializer kept.
#[loky::task]
fn model_len() -> usize {
    MODEL.lock().unwrap().as_ref().map_or(0, |m| m.len())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn a_worker_reads_the_same_pages_not_a_copy() {
    let bytes = pattern(8 << 20);
    let shared = SharedBytes::new(&bytes).unwrap();
    assert_eq!(shared.as_slice(), &bytes[..]);
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    let (total, mapped) = run(&executor, inspect, shared.clone());
    assert_eq!(total, sum(&bytes));
    assert!(mapped, "the worker's bytes are not in a shared mapping");
    // Many tasks through map, chunked, one region.
    let results: Vec<_> = executor
        .map(inspect, std::iter::repeat_n(shared.clone(), 20))
        .chunksize(3)
        .collect();
    for result in results {
        assert_eq!(result.unwrap(), (sum(&bytes), true));
    }
}

/// The permissions of the mapping `address` lies in, in this process.
fn mapping_permissions(address: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next().unwrap().split_once('-').unwrap();
            let start = usize::from_str_radix(start, 16).unwrap();
            let end = usize::from_str_radix(end, 16).unwrap();
            (start..end)
                .contains(&address)
                .then(|| fields.next().unwrap().to_owned())
        })
        .unwrap_or_default()
}

/// How the worker maps `data`.
#[loky::task]
fn mapped_as(data: SharedBytes) -> String {
    mapping_permissions(data.as_ptr() as usize)
}

#[test]
fn shared_bytes_are_mapped_read_only_by_creator_and_workers() {
    let shared = SharedBytes::new(&pattern(1 << 20)).unwrap();
    assert_eq!(mapping_permissions(shared.as_ptr() as usize), "r--s");
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    assert_eq!(run(&executor, mapped_as, shared.clone()), "r--s");
    // Still read as it was, there and here.
    assert_eq!(
        run(&executor, inspect, shared.clone()).0,
        sum(&pattern(1 << 20))
    );
    assert_eq!(shared.as_slice(), &pattern(1 << 20)[..]);
}

#[test]
fn empty_bytes_travel_too() {
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let empty = SharedBytes::new(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(run(&executor, inspect, empty).0, 0);
}

#[test]
fn returning_shared_bytes_is_a_clear_error() {
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let shared = SharedBytes::new(b"abc").unwrap();
    let result = executor
        .submit(give_back, shared)
        .unwrap()
        .result_timeout(BOUND);
    match result {
        Err(error @ Error::Serialization { .. }) => {
            assert!(error.to_string().contains("not in its result"), "{error}");
        }
        other => panic!("expected a serialization error, got {other:?}"),
    }
    // The worker survived it.
    assert_eq!(
        run(&executor, inspect, SharedBytes::new(b"\x02").unwrap()).0,
        2
    );
}

#[test]
fn an_initializer_hands_every_worker_the_same_model() {
    let model = SharedBytes::new(&pattern(1 << 20)).unwrap();
    let config = Config::new()
        .max_workers(2)
        .initializer(load_model, model.clone());
    let executor = Executor::new(config).unwrap();
    executor.start_workers().unwrap();
    let lens: Vec<usize> = (0..6)
        .map(|_| executor.submit(model_len, ()).unwrap())
        .map(|f| f.result_timeout(BOUND).unwrap())
        .collect();
    assert_eq!(lens, [1 << 20; 6]);
}

/// Regions are freed when their last user lets go: the parent holds no
/// memfd for a dropped `SharedBytes`, nor a worker once its task returned.
#[test]
fn no_region_outlives_its_users() {
    const SIZE: usize = (1 << 20) + 7;
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    for round in 0..20u8 {
        let shared = SharedBytes::new(&vec![round; SIZE]).unwrap();
        let (total, _) = run(&executor, inspect, shared);
        assert_eq!(total, u64::from(round) * SIZE as u64);
    }
    // The manager drops a finished call's regions just after completing
    // its future: soon, not at once.
    let here = common::eventually(BOUND, || memfds_of_size(SIZE as u64) == 0);
    assert!(
        here,
        "the parent kept {} regions",
        memfds_of_size(SIZE as u64)
    );
    // A worker drops a call's regions before it answers.
    assert_eq!(
        run(&executor, memfds, SIZE as u64),
        0,
        "the worker kept regions"
    );
}

/// Reads `data`, then aborts with it still mapped.
#[loky::task]
fn read_then_abort(data: SharedBytes) {
    std::hint::black_box(data.iter().map(|&b| u64::from(b)).sum::<u64>());
    std::process::abort();
}

/// A worker that crashes holding a shared buffer leaks nothing: once the
/// buffer's last handle here is dropped and the executor is gone, no
/// process maps or holds a region this process made. Run alone, so that
/// no other test's regions are about.
#[test]
fn a_worker_crashing_with_a_shared_buffer_leaves_no_region_behind() {
    if !common::alone("a_worker_crashing_with_a_shared_buffer_leaves_no_region_behind") {
        return;
    }
    let me = std::process::id();
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    let shared = SharedBytes::new(&pattern(4 << 20)).unwrap();
    // Held by a worker that lives on, and by one that crashes.
    assert_eq!(
        run(&executor, inspect, shared.clone()).0,
        sum(&pattern(4 << 20))
    );
    let crashed = executor
        .submit(read_then_abort, shared.clone())
        .unwrap()
        .result_timeout(BOUND);
    assert!(
        matches!(crashed, Err(loky::Error::WorkerDied { .. })),
        "{crashed:?}"
    );
    let holders = common::regions_of(me);
    assert!(
        holders.contains(&me.to_string()),
        "the region is found here while held: {holders:?}"
    );
    drop(shared);
    executor.shutdown(loky::Shutdown::default());
    drop(executor);
    let none = common::eventually(BOUND, || common::regions_of(me).is_empty());
    assert!(none, "regions left: {:?}", common::regions_of(me));
}

/// The sum of all bytes of several buffers.
#[loky::task]
fn sum_all(buffers: Vec<SharedBytes>) -> u64 {
    buffers.iter().map(|data| sum(data)).sum()
}

/// The same buffer for every element of large chunks: it travels once per
/// chunk. (Once per element, a chunk carried more descriptors than a
/// message may, and the executor broke.)
#[test]
fn one_buffer_for_every_element_of_a_chunk_travels_once() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    let table = SharedBytes::new(&pattern(4096)).unwrap();
    let expected = sum(&table);
    let sums: Vec<(u64, bool)> = executor
        .map(inspect, std::iter::repeat_n(table, 1000))
        .chunksize(500)
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        sums.iter()
            .all(|&(total, in_place)| total == expected && in_place)
    );
}

/// Many distinct buffers: a chunk ends early rather than carry more than
/// a message may, and every element is served.
#[test]
fn many_distinct_buffers_are_spread_over_messages() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    let buffers: Vec<SharedBytes> = (0..300u32)
        .map(|i| SharedBytes::new(&i.to_le_bytes()).unwrap())
        .collect();
    let sums: Vec<(u64, bool)> = executor
        .map(inspect, buffers.clone())
        .chunksize(300)
        .collect::<Result<_, _>>()
        .unwrap();
    for (i, (total, _)) in sums.iter().enumerate() {
        assert_eq!(*total, sum(&(i as u32).to_le_bytes()), "element {i}");
    }
    // Single calls too, many queued behind a busy worker at once.
    let futures: Vec<_> = buffers
        .iter()
        .map(|data| executor.submit(inspect, data.clone()).unwrap())
        .collect();
    for (i, future) in futures.into_iter().enumerate() {
        let (total, _) = future.result_timeout(BOUND).unwrap();
        assert_eq!(total, sum(&(i as u32).to_le_bytes()), "call {i}");
    }
}

/// One call naming more buffers than a message carries fails clearly, and
/// the executor goes on.
#[test]
fn a_call_with_too_many_buffers_is_a_clear_error() {
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let buffers: Vec<SharedBytes> = (0..70u8)
        .map(|i| SharedBytes::new(&[i; 8]).unwrap())
        .collect();
    let refused = executor
        .submit(sum_all, buffers.clone())
        .unwrap()
        .result_timeout(BOUND);
    let Err(Error::Serialization { message, .. }) = &refused else {
        panic!("expected a serialization error, got {refused:?}");
    };
    assert!(message.contains("at most 64 shared regions"), "{message}");
    let fewer = buffers[..60].to_vec();
    let expected: u64 = fewer.iter().map(|data| sum(data)).sum();
    assert_eq!(run(&executor, sum_all, fewer), expected);
}

/// Buffers made on the fly by `map`'s input and dropped once encoded: each
/// element reads its own. (Regions were matched by the address of their
/// reference count, which a freed buffer hands to the next.)
#[test]
fn buffers_made_by_the_input_reach_their_own_element() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    let sums: Vec<(u64, bool)> = executor
        .map(
            inspect,
            (0..200u32).map(|i| SharedBytes::new(&i.to_le_bytes()).unwrap()),
        )
        .chunksize(8)
        .collect::<Result<_, _>>()
        .unwrap();
    for (i, (total, _)) in sums.iter().enumerate() {
        assert_eq!(*total, sum(&(i as u32).to_le_bytes()), "element {i}");
    }
}

/// Inputs naming several buffers each: a chunk that would carry more than
/// a message may passes its last input on to the next chunk.
#[test]
fn inputs_with_several_buffers_each_fill_chunks_without_failing() {
    let executor = Executor::new(Config::new().max_workers(2)).unwrap();
    let inputs: Vec<Vec<SharedBytes>> = (0..60u8)
        .map(|i| {
            (0..5u8)
                .map(|j| SharedBytes::new(&[i, j]).unwrap())
                .collect()
        })
        .collect();
    let expected: Vec<u64> = inputs
        .iter()
        .map(|buffers| buffers.iter().map(|data| sum(data)).sum())
        .collect();
    let sums: Vec<u64> = executor
        .map(sum_all, inputs)
        .chunksize(60)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(sums, expected);
}
