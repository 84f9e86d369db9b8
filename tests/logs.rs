//! Log events of tasks reach the parent across real workers: `tracing`
//! events and `log` records, with the worker's pid and the task, at the
//! levels the parent listens to, and not at all when turned off.

mod common;

use common::{BOUND, eventually};
use loky::{Config, Executor};
use std::sync::{Mutex, Once};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Logs at info (tracing), debug (tracing) and warn (log), and returns its
/// worker's pid.
#[loky::task]
fn noisy(n: u64) -> u32 {
    tracing::info!(n, "hello from a task");
    tracing::debug!(n, "too verbose");
    log::warn!("a log record {n}");
    std::process::id()
}

/// One event as this process's subscriber saw it.
#[derive(Debug, Clone, Default)]
struct Seen {
    level: Option<Level>,
    target: String,
    fields: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// A subscriber that listens up to INFO and keeps every event.
struct Collector;

impl Visit for Seen {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields
            .push((field.name().to_owned(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .push((field.name().to_owned(), value.to_owned()));
    }
}

impl Subscriber for Collector {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= &Level::INFO
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut seen = Seen {
            level: Some(*event.metadata().level()),
            target: event.metadata().target().to_owned(),
            fields: Vec::new(),
        };
        event.record(&mut seen);
        SEEN.lock().unwrap().push(seen);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn listen() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| tracing::subscriber::set_global_default(Collector).unwrap());
}

/// The events forwarded for `noisy(n)`.
fn seen_for(n: u64) -> Vec<Seen> {
    let needle = format!("{n}");
    SEEN.lock()
        .unwrap()
        .iter()
        .filter(|s| s.target == loky::WORKER_LOG_TARGET)
        .filter(|s| {
            s.field("message")
                .is_some_and(|m| m.contains(&format!("n={needle}")) || m.ends_with(&needle))
        })
        .cloned()
        .collect()
}

#[test]
fn task_events_reach_the_parent_with_pid_and_task() {
    listen();
    let executor = Executor::new(Config::new().max_workers(1)).unwrap();
    let pid = executor
        .submit(noisy, 3)
        .unwrap()
        .result_timeout(BOUND)
        .unwrap();
    assert!(eventually(BOUND, || seen_for(3).len() >= 2));
    let seen = seen_for(3);
    let info = seen
        .iter()
        .find(|s| s.level == Some(Level::INFO))
        .unwrap_or_else(|| panic!("no info event: {seen:?}"));
    assert_eq!(info.field("pid"), Some(pid.to_string().as_str()));
    assert_eq!(info.field("task"), Some("logs::noisy"));
    assert_eq!(info.field("origin"), Some("logs"));
    assert_eq!(info.field("message"), Some("hello from a task n=3"));
    let warn = seen
        .iter()
        .find(|s| s.level == Some(Level::WARN))
        .unwrap_or_else(|| panic!("no log record: {seen:?}"));
    assert_eq!(warn.field("message"), Some("a log record 3"));
    assert_eq!(warn.field("pid"), Some(pid.to_string().as_str()));
    assert!(
        seen.iter().all(|s| s.level != Some(Level::DEBUG)),
        "a debug event passed an info filter: {seen:?}"
    );
}

#[test]
fn forwarding_can_be_turned_off() {
    listen();
    let executor = Executor::new(Config::new().max_workers(1).forward_logs(false)).unwrap();
    executor
        .submit(noisy, 4)
        .unwrap()
        .result_timeout(BOUND)
        .unwrap();
    // Forwarded records arrive before the result: none can be late.
    assert!(seen_for(4).is_empty(), "{:?}", seen_for(4));
}
