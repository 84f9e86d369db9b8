//! Progress bars (feature `progress`) across real workers: results and
//! failures counted, the length known from the input, the bar finished at
//! the end and abandoned when the iteration stops early.

mod common;

use common::BOUND;
use loky::indicatif::ProgressBar;
use loky::{Config, Executor};

/// Fails (with a panic) on multiples of 10.
#[loky::task]
fn fail_on_tens(x: u64) -> u64 {
    assert!(!x.is_multiple_of(10), "a multiple of ten");
    x
}

fn executor() -> Executor {
    Executor::new(Config::new().max_workers(2)).unwrap()
}

#[test]
fn map_counts_results_and_failures_and_finishes() {
    let bar = ProgressBar::hidden();
    let results: Vec<_> = executor()
        .map(fail_on_tens, 1..=50)
        .progress_with(bar.clone())
        .collect();
    assert_eq!(results.len(), 50);
    assert_eq!(bar.length(), Some(50), "the length comes from the input");
    assert_eq!(bar.position(), 50);
    assert_eq!(bar.message(), "5 failed");
    assert!(bar.is_finished());
}

#[test]
fn dropping_early_abandons_the_bar_with_a_note() {
    let bar = ProgressBar::hidden();
    let mut progress = executor()
        .map_unordered(fail_on_tens, (0..1000).map(|x| 10 * x + 1))
        .progress_with(bar.clone());
    for _ in 0..5 {
        progress.next().unwrap().1.unwrap();
    }
    assert!(!bar.is_finished());
    drop(progress);
    assert!(bar.is_finished());
    assert_eq!(bar.position(), 5);
    assert_eq!(bar.message(), "0 failed, stopped early");
}

#[test]
fn as_completed_counts_failed_futures() {
    let executor = executor();
    let futures: Vec<_> = (8..12)
        .map(|x| executor.submit(fail_on_tens, x).unwrap())
        .collect();
    let bar = ProgressBar::hidden();
    let mut progress = loky::as_completed(futures, Some(BOUND)).progress_with(bar.clone());
    let done: Vec<_> = progress.by_ref().collect();
    assert_eq!(done.len(), 4);
    assert_eq!(progress.failed(), 1);
    assert_eq!(bar.length(), Some(4));
    assert_eq!(bar.message(), "1 failed");
    assert!(bar.is_finished());
}

/// `.progress()` on an input of unknown length draws a spinner: no length,
/// every result counted.
#[test]
fn an_input_of_unknown_length_has_no_length() {
    let mut progress = executor()
        .map(fail_on_tens, (1..=30).filter(|x| x % 2 == 1))
        .progress();
    let count = progress.by_ref().count();
    assert_eq!(count, 15);
    assert_eq!(progress.bar().length(), None);
    assert_eq!(progress.bar().position(), 15);
    assert_eq!(progress.failed(), 0);
}
