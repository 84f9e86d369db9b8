//! The link thread of one worker: accepts its handshake, then forwards each
//! message from it to the manager, then reports when its channel closes and
//! when the process has exited.

use crate::error::SpawnError;
use crate::manager::Event;
use crossbeam_channel::Sender;
use ipc_channel::IpcError;
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};
use loky_worker::protocol::{Bootstrap, FromWorker, PROTOCOL_VERSION, ToWorker};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

/// What a link thread tells the manager about its worker.
pub(crate) enum WorkerEvent {
    /// The handshake succeeded: where to send calls. Or why it failed.
    Ready(Result<IpcSender<ToWorker>, SpawnError>),
    /// A message from the worker.
    Message(FromWorker),
    /// The worker's channel closed: it died or is dying.
    Closed,
    /// The worker process has exited and can be reaped without blocking.
    Exited,
}

pub(super) fn run(
    worker: u64,
    pid: u32,
    secret: u64,
    server: IpcOneShotServer<Bootstrap>,
    events: Sender<Event>,
) {
    let connected = Cell::new(false);
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        serve(worker, pid, secret, server, &events, &connected);
    }));
    let Err(payload) = served else { return };
    // ipc-channel panics on some OS errors. The manager must still hear
    // how this worker ends, or it would wait for it forever.
    let message = loky_worker::panic::payload_message(&*payload);
    tracing::error!(pid, message, "link thread panicked");
    let send = |event| events.send(Event::Worker(worker, event)).is_ok();
    if connected.get() {
        // The manager kills the worker if it does not exit by itself.
        send(WorkerEvent::Closed);
        super::wait_exit_no_reap(pid);
        send(WorkerEvent::Exited);
    } else {
        send(WorkerEvent::Ready(Err(SpawnError::Handshake {
            pid,
            message: format!("the link thread panicked: {message}"),
        })));
    }
}

fn serve(
    worker: u64,
    pid: u32,
    secret: u64,
    server: IpcOneShotServer<Bootstrap>,
    events: &Sender<Event>,
    connected: &Cell<bool>,
) {
    let send = |event| events.send(Event::Worker(worker, event)).is_ok();
    let hello = match server.accept() {
        Ok((_, Bootstrap::Hello(hello))) => hello,
        // The manager gave up on this worker.
        Ok((_, Bootstrap::Abort)) => return,
        Err(error) => {
            let message = match error {
                IpcError::SerializationError(e) => {
                    format!("could not read its hello ({e}): is it the same binary?")
                }
                other => other.to_string(),
            };
            send(WorkerEvent::Ready(Err(SpawnError::Handshake {
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
        send(WorkerEvent::Ready(Err(refusal)));
        return;
    }
    if !send(WorkerEvent::Ready(Ok(hello.calls))) {
        return;
    }
    connected.set(true);
    loop {
        match hello.results.recv() {
            Ok(message) => {
                if !send(WorkerEvent::Message(message)) {
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
    send(WorkerEvent::Closed);
    super::wait_exit_no_reap(pid);
    send(WorkerEvent::Exited);
}
