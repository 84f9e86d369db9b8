//! The handshake thread of one worker process: accepts its hello, checks
//! it, reports `Ready` (or why not) and ends. Its messages are the results
//! thread's to pass on, its exit the exits thread's to report.

use super::super::Notify;
use super::results::Registration;
use crate::error::SpawnError;
use ipc_channel::IpcError;
use ipc_channel::ipc::IpcOneShotServer;
use loky_worker::protocol::{Bootstrap, PROTOCOL_VERSION};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub(super) fn run(
    pid: u32,
    secret: u64,
    server: IpcOneShotServer<Bootstrap>,
    aborted: &AtomicBool,
    notify: Arc<Notify>,
    registration: Registration,
) {
    let connected = Cell::new(false);
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        serve(
            pid,
            secret,
            server,
            aborted,
            &notify,
            &registration,
            &connected,
        );
    }));
    let Err(payload) = served else { return };
    // ipc-channel panics on some OS errors. The manager must still hear
    // how this worker ends, or it would wait for it forever.
    let message = loky_worker::panic::payload_message(&*payload);
    tracing::error!(pid, message, "handshake thread panicked");
    if connected.get() {
        // `Ready` may have been told: its exit closes its link, and the
        // manager kills it if it does not exit by itself.
        registration.told_ready(true);
    } else {
        let error = SpawnError::Handshake {
            pid,
            message: format!("the handshake thread panicked: {message}"),
        };
        registration.failed(error, &notify);
    }
}

fn serve(
    pid: u32,
    secret: u64,
    server: IpcOneShotServer<Bootstrap>,
    aborted: &AtomicBool,
    notify: &Notify,
    registration: &Registration,
    connected: &Cell<bool>,
) {
    let hello = match server.accept() {
        Ok((_, Bootstrap::Hello(hello))) => hello,
        // The manager gave up on this worker and woke us: it expects
        // nothing more from this thread.
        Err(_) if aborted.load(Ordering::Acquire) => {
            registration.forget();
            return;
        }
        Err(error) => {
            let message = match error {
                IpcError::SerializationError(e) => {
                    format!("could not read its hello ({e}): is it the same binary?")
                }
                other => other.to_string(),
            };
            registration.failed(SpawnError::Handshake { pid, message }, notify);
            return;
        }
    };
    let refusal = if hello.version != PROTOCOL_VERSION {
        Some(SpawnError::ProtocolMismatch {
            pid,
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        })
    } else if hello.secret != secret {
        Some(SpawnError::Handshake {
            pid,
            message: "wrong secret".to_owned(),
        })
    } else if hello.pid != pid {
        Some(SpawnError::Handshake {
            pid,
            message: format!("a process with pid {} answered instead", hello.pid),
        })
    } else {
        None
    };
    if let Some(refusal) = refusal {
        registration.failed(refusal, notify);
        return;
    }
    // Its own result channel is unused (`Hello::results`).
    drop(hello.results);
    connected.set(true);
    registration.ready(hello.calls, notify);
}
