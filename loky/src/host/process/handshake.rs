//! The handshake thread of one worker process: accepts its hello, checks
//! it, reports `Ready`, then hands the worker's link to the executor's
//! results thread and ends. Its exit is the exits thread's to report.

use super::super::{Calls, Notify, WorkerEvent};
use super::results::Handoff;
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
    handoff: Handoff,
) {
    let connected = Cell::new(false);
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        serve(pid, secret, server, aborted, &notify, handoff, &connected);
    }));
    let Err(payload) = served else { return };
    // ipc-channel panics on some OS errors. The manager must still hear
    // how this worker ends, or it would wait for it forever.
    let message = loky_worker::panic::payload_message(&*payload);
    tracing::error!(pid, message, "handshake thread panicked");
    if connected.get() {
        // The manager kills the worker if it does not exit by itself.
        notify(WorkerEvent::Closed);
    } else {
        notify(WorkerEvent::Ready(Err(SpawnError::Handshake {
            pid,
            message: format!("the handshake thread panicked: {message}"),
        })));
    }
}

fn serve(
    pid: u32,
    secret: u64,
    server: IpcOneShotServer<Bootstrap>,
    aborted: &AtomicBool,
    notify: &Arc<Notify>,
    handoff: Handoff,
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
    handoff.hand_over(pid, hello.results, Arc::clone(notify));
}
