//! Errors as they travel between agents and clients.

use crate::error::{Attempt, Error, ExitReason};
use loky_worker::protocol::remote::{RemoteDeath, RemoteError};
use std::time::Duration;

/// An agent's local error, for the wire.
pub(super) fn to_remote(error: &Error) -> RemoteError {
    match error {
        Error::Panicked { pid, panic, .. } => RemoteError::Panicked {
            pid: *pid,
            panic: panic.clone(),
        },
        Error::WorkerDied {
            pid,
            reason,
            earlier,
            ..
        } => {
            let RemoteDeath {
                pid,
                code,
                signal,
                core_dumped,
            } = death(*pid, *reason);
            RemoteError::WorkerDied {
                pid,
                code,
                signal,
                core_dumped,
                earlier: earlier.iter().map(|a| death(a.pid, a.reason)).collect(),
            }
        }
        Error::Serialization { stage, message, .. } => RemoteError::Serde {
            pid: None,
            stage: *stage,
            message: message.clone(),
        },
        Error::TaskTimeout { pid, timeout, .. } => RemoteError::TimedOut {
            pid: *pid,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        },
        Error::Cancelled { .. } => RemoteError::Cancelled,
        other => RemoteError::Other(other.to_string()),
    }
}

/// A remote error as the client's error, naming the host.
pub(super) fn from_remote(task: &'static str, host: &str, error: RemoteError) -> Error {
    let error = match error {
        RemoteError::Panicked { pid, panic } => Error::Panicked { task, pid, panic },
        RemoteError::WorkerDied {
            pid,
            code,
            signal,
            core_dumped,
            earlier,
        } => Error::WorkerDied {
            task,
            pid,
            reason: reason(code, signal, core_dumped),
            earlier: earlier
                .into_iter()
                .map(|death| Attempt {
                    pid: death.pid,
                    reason: reason(death.code, death.signal, death.core_dumped),
                    host: Some(host.to_owned()),
                })
                .collect(),
        },
        RemoteError::Serde { stage, message, .. } => Error::Serialization {
            task,
            stage,
            message,
        },
        RemoteError::TimedOut { pid, timeout_ms } => Error::TaskTimeout {
            task,
            pid,
            timeout: Duration::from_millis(timeout_ms),
        },
        RemoteError::Cancelled => Error::Cancelled { task },
        RemoteError::Other(message) => Error::Broken { reason: message },
    };
    Error::Remote {
        host: host.to_owned(),
        error: Box::new(error),
    }
}

/// A worker's death, for the wire.
fn death(pid: u32, reason: ExitReason) -> RemoteDeath {
    let (code, signal, core_dumped) = match reason {
        ExitReason::Code(code) => (Some(code), None, false),
        ExitReason::Signal {
            signal,
            core_dumped,
        } => (None, Some(signal), core_dumped),
        ExitReason::Unknown | ExitReason::HostLost { .. } => (None, None, false),
    };
    RemoteDeath {
        pid,
        code,
        signal,
        core_dumped,
    }
}

/// How a worker of an agent ended, from the wire.
fn reason(code: Option<i32>, signal: Option<i32>, core_dumped: bool) -> ExitReason {
    match (code, signal) {
        (Some(code), _) => ExitReason::Code(code),
        (None, Some(signal)) => ExitReason::Signal {
            signal,
            core_dumped,
        },
        (None, None) => ExitReason::Unknown,
    }
}
