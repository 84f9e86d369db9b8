//! Retries for tasks lost to a dead worker: a task that crashes its worker
//! now and then (a flaky native library, the OOM killer) runs again on
//! another worker, up to a budget; out of retries, the error lists every
//! attempt. Panics and timeouts are never retried.
//!
//! `cargo run --release --example retries`

use loky::{CallOptions, Config, Error, Executor};
use std::path::PathBuf;

/// Crashes its worker (a real segfault) the first `crashes` times it runs
/// for `name`, then returns how many runs it took. The runs are counted in
/// a file, since each attempt is a fresh worker.
#[loky::task]
fn flaky(path: PathBuf, crashes: u64) -> u64 {
    let runs = std::fs::read_to_string(&path).map_or(0, |s| s.len() as u64) + 1;
    std::fs::write(&path, "x".repeat(runs as usize)).unwrap();
    if runs <= crashes {
        // SAFETY: none: this is the crash being shown.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    }
    runs
}

/// Where the runs for `name` are counted (named by this, the parent's, pid).
fn marker(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "loky-retries-example-{}-{name}",
        std::process::id()
    ))
}

#[loky::main]
fn main() -> Result<(), Error> {
    // Every task of this executor may run twice more if its worker dies.
    let executor = Executor::new(Config::new().max_workers(2).retries(2))?;

    // Crashes once, then succeeds: the caller sees only the result.
    let runs = executor
        .submit(flaky, (marker("once"), 1))
        .map_err(|refused| refused.reason)?
        .result()?;
    println!("`once` succeeded on run {runs}");
    assert_eq!(runs, 2);

    // In a map, each element has its own budget.
    let inputs = (0..6).map(|i| (marker(&format!("map{i}")), u64::from(i % 3 == 0)));
    let runs: Vec<u64> = executor.map(flaky, inputs).collect::<Result<_, _>>()?;
    println!("map: runs per element {runs:?}");
    assert_eq!(runs, [2, 1, 1, 2, 1, 1]);

    // Out of retries: the error names the last worker and lists the others.
    let options = CallOptions::new().retries(1);
    let error = executor
        .submit_with(flaky, (marker("always"), 99), options)
        .map_err(|refused| refused.reason)?
        .result()
        .unwrap_err();
    println!("`always`: {error}");
    let Error::WorkerDied { earlier, .. } = &error else {
        panic!("expected WorkerDied, got {error:?}");
    };
    assert_eq!(earlier.len(), 1);

    for name in ["once", "always"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..6).map(|i| format!("map{i}")))
    {
        let _ = std::fs::remove_file(marker(&name));
    }
    Ok(())
}
