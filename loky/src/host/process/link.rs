//! The link thread of one worker process: accepts its handshake, then
//! forwards each message from it, then reports when its channel closes.
//! Its exit is the exit watcher's to report.

use super::super::{Calls, Notify, WorkerEvent};
use crate::error::SpawnError;
use ipc_channel::IpcError;
use ipc_channel::ipc::IpcOneShotServer;
use loky_worker::protocol::{Bootstrap, FromWorker, Outcome, PROTOCOL_VERSION};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

pub(super) fn run(
    pid: u32,
    secret: u64,
    server: IpcOneShotServer<Bootstrap>,
    aborted: &AtomicBool,
    notify: &Notify,
) {
    let connected = Cell::new(false);
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        serve(pid, secret, server, aborted, notify, &connected);
    }));
    let Err(payload) = served else { return };
    // ipc-channel panics on some OS errors. The manager must still hear
    // how this worker ends, or it would wait for it forever.
    let message = loky_worker::panic::payload_message(&*payload);
    tracing::error!(pid, message, "link thread panicked");
    if connected.get() {
        // The manager kills the worker if it does not exit by itself.
        notify(WorkerEvent::Closed);
    } else {
        notify(WorkerEvent::Ready(Err(SpawnError::Handshake {
            pid,
            message: format!("the link thread panicked: {message}"),
        })));
    }
}

fn serve(
    pid: u32,
    secret: u64,
    server: IpcOneShotServer<Bootstrap>,
    aborted: &AtomicBool,
    notify: &Notify,
    connected: &Cell<bool>,
) {
    let hello = match server.accept() {
        Ok((_, Bootstrap::Hello(hello))) => hello,
        // The manager gave up on this worker and woke us: it expects
        // nothing more from this thread.
        Err(_) if aborted.load(Ordering::Acquire) => return,
        Err(error) => {
            let message = match error {
                IpcError::SerializationError(e) => {
                    format!("could not read its hello ({e}): is it the same binary?")
                }
                other => other.to_string(),
            };
            notify(WorkerEvent::Ready(Err(SpawnError::Handshake {
                pid,
                message,
            })));
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
        notify(WorkerEvent::Ready(Err(refusal)));
        return;
    }
    let calls = hello.calls;
    let calls = Calls::new(move |message| calls.send(message).map_err(|e| e.to_string()));
    if !notify(WorkerEvent::Ready(Ok(calls))) {
        return;
    }
    connected.set(true);
    loop {
        match hello.results.recv() {
            // Logs are this thread's to emit: a task that logs a lot
            // slows no other worker's results, nor the manager.
            Ok(FromWorker::Log(record)) => crate::worker_logs::emit(pid, &record),
            Ok(message) => {
                if !notify(WorkerEvent::Message(settle(message))) {
                    return;
                }
            }
            Err(IpcError::Disconnected) => break,
            Err(error) => {
                tracing::error!(pid, %error, "unreadable message from worker");
                break;
            }
        }
    }
    notify(WorkerEvent::Closed);
}

/// A result as it waits for the manager and its taker: small regions are
/// copied out here, off the manager thread (`Payload::settle`).
fn settle(message: FromWorker) -> FromWorker {
    match message {
        FromWorker::Done {
            seq,
            outcome: Outcome::Returned(payload),
        } => FromWorker::Done {
            seq,
            outcome: Outcome::Returned(payload.settle()),
        },
        other => other,
    }
}
