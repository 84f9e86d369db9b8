//! The parent's side of the tasks' logs: which level workers forward (what
//! this process listens to, through `tracing` or `log`), and re-emitting
//! each forwarded record here, with the worker's pid and task.

use loky_worker::protocol::LogRecord;
use tracing::Level;

/// The target of re-emitted records; their own target is the `origin` field.
pub const WORKER_LOG_TARGET: &str = "loky::worker";

/// The most verbose level this process listens to, numbered as
/// [`LogRecord::level`]: the more verbose of `tracing`'s and `log`'s.
pub(crate) fn listening_level() -> u8 {
    let tracing = match tracing::level_filters::LevelFilter::current().into_level() {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(_) => 5,
    };
    tracing.max(log::max_level() as u8)
}

/// Emits a worker's record here: through `tracing` if a subscriber wants
/// it, else through `log`.
pub(crate) fn emit(pid: u32, record: &LogRecord) {
    let task = record.task.as_deref().unwrap_or("-");
    let origin = record.target.as_str();
    let message = record.message.as_str();
    macro_rules! to_tracing {
        ($level:expr) => {
            if tracing::enabled!(target: WORKER_LOG_TARGET, $level) {
                tracing::event!(target: WORKER_LOG_TARGET, $level, pid, task, origin, "{message}");
                return;
            }
        };
    }
    let level = match record.level {
        1 => {
            to_tracing!(Level::ERROR);
            log::Level::Error
        }
        2 => {
            to_tracing!(Level::WARN);
            log::Level::Warn
        }
        3 => {
            to_tracing!(Level::INFO);
            log::Level::Info
        }
        4 => {
            to_tracing!(Level::DEBUG);
            log::Level::Debug
        }
        _ => {
            to_tracing!(Level::TRACE);
            log::Level::Trace
        }
    };
    log::log!(target: WORKER_LOG_TARGET, level, "[worker {pid} {task}] {origin}: {message}");
}
