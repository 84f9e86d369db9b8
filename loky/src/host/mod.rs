//! The seam between the manager and its workers: how a worker is started,
//! talked to, signalled and reaped, whatever it is.
//!
//! Two backends, chosen when the executor is built, as ipc-channel chooses
//! its platform:
//! - [`process`]: a re-executed copy of this binary (what users get);
//! - `thread` (unit tests only): a thread of this process running the same
//!   worker loop over channels, whose death the test decides.
//!
//! A worker on another machine is a third implementation of the same two
//! traits. The manager names neither `Child` nor `IpcSender`, and
//! [`WorkerHandle::reap`] takes the handle by value, so nothing can signal a
//! worker after reaping it.

pub(crate) mod process;
#[cfg(test)]
pub(crate) mod thread;

use crate::config::Config;
use crate::error::{ExitReason, SpawnError};
use loky_worker::protocol::{FromWorker, ToWorker};
use std::sync::Arc;

/// Starts workers.
pub(crate) trait Backend: Send + 'static {
    /// A started worker.
    type Worker: WorkerHandle;

    /// Starts a worker. Everything it says afterwards, from its handshake
    /// to its exit, reaches `notify`, from other threads.
    fn spawn(&mut self, config: &Config, notify: Notify) -> Result<Self::Worker, SpawnError>;
}

/// A started worker, until it is reaped.
pub(crate) trait WorkerHandle: Send + 'static {
    /// Its process id (a made-up one for a thread).
    fn pid(&self) -> u32;
    /// Sends `signal` to it and to everything it started.
    fn signal(&self, signal: i32);
    /// Stops waiting for a handshake that will not come.
    fn abort_handshake(&self);
    /// It has exited and its link is not closed yet: makes sure what
    /// closes it is on its way. The backend reports `Closed` once what the
    /// worker sent before dying is read, behind a report of its own; if
    /// sending that report failed, this sends it again, and otherwise does
    /// nothing. The manager calls it now and then until `Closed` comes.
    fn retell_exit(&self);
    /// Whether it has exited already, so that [`reap`](Self::reap) would
    /// not block; reaps nothing. Lets the manager reap at `Closed` without
    /// waiting for the `Exited` that is on its way.
    fn exited(&self) -> bool;
    /// Kills what it left behind and collects its exit status. Blocks
    /// until it has exited: call it after [`WorkerEvent::Exited`] or a
    /// SIGKILL.
    fn reap(self) -> ExitReason;
}

/// What a worker's watchers tell the manager, in this order for one
/// worker: `Ready`, then `Message`s, then `Closed`; `Exited` at any point.
pub(crate) enum WorkerEvent {
    /// The handshake succeeded: where to send calls. Or why it failed.
    Ready(Result<Calls, SpawnError>),
    /// A message from the worker.
    Message(FromWorker),
    /// Its link closed: everything it sent before it exited was passed on
    /// (or what it sent could not be read).
    Closed,
    /// The process has exited (it can be reaped without blocking).
    Exited,
}

/// Where a worker's events go; false once nobody listens.
pub(crate) type Notify = Box<dyn Fn(WorkerEvent) -> bool + Send + Sync>;

/// The sending end of a worker's call channel; clones send on the same
/// channel (a submitter holding a lent worker's, the manager its own).
#[derive(Clone)]
pub(crate) struct Calls(Arc<dyn Fn(ToWorker) -> Result<(), SendError> + Send + Sync>);

/// Why a message did not reach its worker.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The worker is gone (or cannot be reached): it is killed to be sure,
    /// and the calls queued on its board run elsewhere.
    Gone(String),
    /// The message could not be made here (ipc-channel could not map one
    /// of its regions again: out of address space): the worker is fine,
    /// the message's calls fail, lest each new try kill another worker.
    Unsendable(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Gone(why) => write!(f, "the worker is gone: {why}"),
            SendError::Unsendable(why) => write!(f, "the message could not be sent: {why}"),
        }
    }
}

impl Calls {
    pub(crate) fn new(
        send: impl Fn(ToWorker) -> Result<(), SendError> + Send + Sync + 'static,
    ) -> Calls {
        Calls(Arc::new(send))
    }

    /// Sends a message.
    pub(crate) fn send(&self, message: ToWorker) -> Result<(), SendError> {
        (self.0)(message)
    }

    /// Sends calls queued on the worker's `board`, then rings its doorbell,
    /// for a worker that looks there before it sleeps.
    pub(crate) fn send_calls(
        &self,
        board: &loky_worker::protocol::Board,
        calls: Vec<loky_worker::protocol::Call>,
    ) -> Result<(), SendError> {
        self.send(ToWorker::Calls(calls))?;
        board.ring();
        Ok(())
    }
}
