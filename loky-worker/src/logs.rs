//! The tasks' log events, forwarded to the parent: workers never run the
//! user's `main`, so nothing there installs a subscriber or a logger. When
//! the parent listens ([`ENV_LOG_LEVEL`]), the worker installs both, keeps
//! only the events the parent's level lets through, and sends each as a
//! [`FromWorker::Log`] to the parent, on its executor's result channel.

use crate::main_loop::{Outbox, Reporter};
use crate::protocol::{ENV_LOG_LEVEL, FromWorker, LogRecord};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};
use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Interest, Level, LevelFilter, Metadata, Subscriber};

/// Where events go, once installed.
struct Sink {
    parent: Mutex<Reporter>,
}

static SINK: OnceLock<Sink> = OnceLock::new();
/// The task this worker runs now, for the records' `task`.
static TASK: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Set while this thread forwards a record: an event raised by the
    /// forwarding itself is dropped instead of recursing.
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

/// Installs the forwarding subscriber and logger if the parent listens.
pub(crate) fn install(parent: &Reporter) {
    let level = std::env::var(ENV_LOG_LEVEL)
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .unwrap_or(0);
    let Some(max) = level_of(level) else { return };
    if SINK
        .set(Sink {
            parent: Mutex::new(parent.clone()),
        })
        .is_err()
    {
        return;
    }
    let _ = tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(Forwarder {
        max,
    }));
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log_filter(level));
    }
}

/// Records that the worker now runs `task` (`None`: between tasks).
pub(crate) fn running(task: Option<&str>) {
    if SINK.get().is_some() {
        *TASK.lock().unwrap_or_else(PoisonError::into_inner) = task.map(str::to_owned);
    }
}

/// The tracing level for a [`LogRecord::level`] number.
fn level_of(number: u8) -> Option<Level> {
    match number {
        0 => None,
        1 => Some(Level::ERROR),
        2 => Some(Level::WARN),
        3 => Some(Level::INFO),
        4 => Some(Level::DEBUG),
        _ => Some(Level::TRACE),
    }
}

/// A tracing level's [`LogRecord::level`] number.
fn number_of(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

fn log_filter(number: u8) -> log::LevelFilter {
    match number {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

fn forward(level: u8, target: &str, message: String) {
    let Some(sink) = SINK.get() else { return };
    if FORWARDING.with(|f| f.replace(true)) {
        return;
    }
    let task = TASK.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let record = LogRecord {
        level,
        target: crate::protocol::bound_text(target.to_owned()),
        message: crate::protocol::bound_text(message),
        task,
    };
    // A parent that is gone hears nothing; the worker ends soon anyway.
    let _ = sink
        .parent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(FromWorker::Log(record));
    FORWARDING.with(|f| f.set(false));
}

/// The `tracing` subscriber of a worker: events up to `max`, spans ignored.
struct Forwarder {
    max: Level,
}

impl Subscriber for Forwarder {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= &self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text::default();
        event.record(&mut text);
        let metadata = event.metadata();
        forward(
            number_of(metadata.level()),
            metadata.target(),
            text.finish(),
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event's fields as text: the message, then ` name=value` each.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn finish(mut self) -> String {
        self.message.push_str(&self.fields);
        self.message
    }
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

/// The `log` logger of a worker.
struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            forward(
                record.level() as u8,
                record.target(),
                record.args().to_string(),
            );
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_numbers_match_both_facades() {
        for number in 1..=5u8 {
            let level = level_of(number).unwrap();
            assert_eq!(number_of(&level), number);
            assert_eq!(log_filter(number).to_level().unwrap() as u8, number);
        }
        assert_eq!(level_of(0), None);
        assert_eq!(log_filter(0), log::LevelFilter::Off);
        assert_eq!(level_of(9), Some(Level::TRACE), "more than trace is trace");
    }
}
