//! `map_unordered` across real workers: results in completion order, each
//! with its input's index, chunks, crashes, timeouts, a panicking input and
//! an endless one.

mod common;

use loky::{Config, Error, Executor};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[loky::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[loky::task]
fn square(x: u64) -> u64 {
    x * x
}

/// Exits with code 3 when `x % 10 == 7`, else squares it.
#[loky::task]
fn exit_on_sevens(x: u64) -> u64 {
    if x % 10 == 7 {
        std::process::exit(3);
    }
    x * x
}

fn executor(workers: usize) -> Executor {
    Executor::new(Config::new().max_workers(workers)).unwrap()
}

/// Runs `f` on a thread and fails the test if it takes longer than
/// `common::BOUND`: a hang fails fast instead of eating CI time.
fn bounded<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(f()));
    result
        .recv_timeout(common::BOUND)
        .expect("map_unordered finished within the bound")
}

/// A slow first element comes last, and does not hold back the results
/// after it as `map` would.
#[test]
fn results_come_in_completion_order() {
    let order = bounded(|| {
        let executor = executor(2);
        let started = Instant::now();
        let order: Vec<(usize, u64, Duration)> = executor
            .map_unordered(sleep_ms, [600, 10, 10, 10, 10])
            .chunksize(1)
            .map(|(index, result)| (index, result.unwrap(), started.elapsed()))
            .collect();
        order
    });
    let indices: Vec<usize> = order.iter().map(|(index, ..)| *index).collect();
    assert_eq!(
        indices.last(),
        Some(&0),
        "the slow element is last: {order:?}"
    );
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [0, 1, 2, 3, 4], "each index once: {order:?}");
    for (index, value, _) in &order {
        assert_eq!(*value, [600, 10, 10, 10, 10][*index]);
    }
    // The four short ones were yielded before the slow one finished.
    let (_, _, fourth) = order[3];
    assert!(
        fourth < Duration::from_millis(500),
        "short results waited for the slow one: {order:?}"
    );
}

/// Every index comes exactly once with its own result, whatever the
/// chunking.
#[test]
fn indices_match_inputs_across_chunks() {
    for chunksize in [0, 1, 7, 1000] {
        let results = bounded(move || {
            executor(2)
                .map(square, 0..500)
                .chunksize(chunksize)
                .unordered()
                .collect::<Vec<_>>()
        });
        assert_eq!(results.len(), 500, "chunksize {chunksize}");
        let by_index: BTreeMap<usize, u64> = results
            .into_iter()
            .map(|(index, result)| (index, result.unwrap()))
            .collect();
        assert_eq!(
            by_index.len(),
            500,
            "chunksize {chunksize}: an index repeated"
        );
        for (index, value) in by_index {
            assert_eq!(value, (index * index) as u64, "chunksize {chunksize}");
        }
    }
}

/// A crashing element fails alone, with its worker's exit code; the others
/// keep their results.
#[test]
fn a_crash_fails_only_its_element() {
    let results = bounded(|| {
        executor(2)
            .map_unordered(exit_on_sevens, 0..40)
            .chunksize(4)
            .collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 40);
    for (index, result) in results {
        match result {
            Ok(value) => assert_eq!(value, (index * index) as u64),
            Err(Error::WorkerDied { reason, .. }) if index % 10 == 7 => {
                assert_eq!(reason, loky::ExitReason::Code(3), "element {index}");
            }
            Err(error) => panic!("element {index}: {error}"),
        }
    }
}

/// A per-call timeout fails the element that ran out of time, which does
/// not delay the others.
#[test]
fn a_timeout_fails_only_its_element() {
    let results = bounded(|| {
        let started = Instant::now();
        let results: Vec<_> = executor(2)
            .map_unordered(sleep_ms, [20_000, 5, 5, 5])
            .timeout(Duration::from_millis(300))
            .map(|(index, result)| (index, result, started.elapsed()))
            .collect();
        results
    });
    assert_eq!(results.len(), 4);
    let (last, result, _) = &results[3];
    assert_eq!(*last, 0);
    assert!(
        matches!(
            result,
            Err(Error::TaskTimeout {
                task: "unordered::sleep_ms",
                ..
            })
        ),
        "{result:?}"
    );
    for (index, result, at) in &results[..3] {
        assert_eq!(result.as_ref().ok(), Some(&5), "element {index}");
        assert!(
            *at < Duration::from_millis(300),
            "element {index} waited: {at:?}"
        );
    }
}

/// An input that panics: the elements before it are yielded, then
/// `InputPanicked` with the index of the input that panicked, then nothing.
#[test]
fn a_panicking_input_ends_the_map_with_its_index() {
    let results = bounded(|| {
        let inputs = (0u64..).map(|x| if x == 10 { panic!("input ten") } else { x });
        executor(2)
            .map_unordered(square, inputs)
            .chunksize(3)
            .collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 11);
    let (index, last) = results.last().unwrap();
    assert_eq!(*index, 10);
    assert!(
        matches!(last, Err(Error::InputPanicked { message }) if message == "input ten"),
        "{last:?}"
    );
    let mut indices: Vec<usize> = results[..10].iter().map(|(index, _)| *index).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..10).collect::<Vec<_>>());
}

/// An endless input is pulled lazily: taking 100 results ends the map.
#[test]
fn an_endless_input_is_pulled_lazily() {
    let results = bounded(|| {
        executor(2)
            .map_unordered(square, 0u64..)
            .take(100)
            .collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 100);
    for (index, result) in results {
        assert_eq!(result.unwrap(), (index * index) as u64);
    }
}
