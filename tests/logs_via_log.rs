//! A parent that listens through `log` (no `tracing` subscriber) receives
//! its tasks' records through `log`, labelled with the worker and task.

mod common;

use common::BOUND;
use loky::{Config, Executor};
use std::sync::Mutex;

/// Logs at info through `tracing` and at debug through `log`; returns its
/// pid.
#[loky::task]
fn chatty(n: u64) -> u32 {
    tracing::info!(n, "a tracing event");
    log::debug!("a debug record {n}");
    std::process::id()
}

static LINES: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Keep;

impl log::Log for Keep {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            LINES.lock().unwrap().push((
                record.level(),
                record.target().to_owned(),
                record.args().to_string(),
            ));
        }
    }
    fn flush(&self) {}
}

static KEEP: Keep = Keep;

#[test]
fn records_reach_a_log_logger() {
    log::set_logger(&KEEP).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let pid = executor
        .submit(chatty, 7)
        .unwrap()
        .result_timeout(BOUND)
        .unwrap();
    let lines = LINES.lock().unwrap().clone();
    let forwarded: Vec<_> = lines
        .iter()
        .filter(|(_, target, _)| target == loky::WORKER_LOG_TARGET)
        .collect();
    assert_eq!(
        forwarded,
        [&(
            log::Level::Info,
            loky::WORKER_LOG_TARGET.to_owned(),
            format!("[worker {pid} logs_via_log::chatty] logs_via_log: a tracing event n=7")
        )],
        "only the info event, labelled: {lines:?}"
    );
}
