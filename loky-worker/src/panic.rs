//! Panics as values: capture a panic's message, location and backtrace so
//! that it can cross the process boundary as a [`RemotePanic`].

use crate::protocol::RemotePanic;
use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// Boxed, so that taking it (twice per call in a worker) moves a
    /// pointer.
    static LAST_PANIC: Cell<Option<Box<RemotePanic>>> = const { Cell::new(None) };
}

/// Whether [`install_hook`] ran: without the hook nothing records panics,
/// and [`catch`] skips the record (a thread-local access per call, on hot
/// paths of the parent).
static HOOKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[inline]
pub(crate) fn take_last() -> Option<Box<RemotePanic>> {
    if HOOKED.load(std::sync::atomic::Ordering::Relaxed) {
        LAST_PANIC.take()
    } else {
        None
    }
}

/// Installs the worker's panic hook: it records the panic for
/// [`catch`] instead of printing it, since the parent reports it.
pub fn install_hook() {
    HOOKED.store(true, std::sync::atomic::Ordering::Relaxed);
    panic::set_hook(Box::new(|info| {
        let backtrace = Backtrace::capture();
        let captured = RemotePanic {
            message: payload_message(info.payload()),
            location: info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
            backtrace: (backtrace.status() == BacktraceStatus::Captured)
                .then(|| backtrace.to_string()),
        };
        LAST_PANIC.set(Some(Box::new(captured.bounded())));
    }));
}

/// Runs `f`, turning a panic into a [`RemotePanic`].
#[inline]
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, RemotePanic> {
    take_last();
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| match take_last() {
        Some(last) => *last,
        None => RemotePanic {
            message: payload_message(&*payload),
            location: None,
            backtrace: None,
        }
        .bounded(),
    })
}

/// The message of a panic payload: the `&str` or `String` given to `panic!`.
pub fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}
