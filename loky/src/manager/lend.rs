//! Idle workers lent to submitters: a call submitted while a worker is
//! idle goes straight to it, without waking the manager first.
//!
//! At the end of each step the manager lends every idle worker it would
//! give the next call to: it reserves the worker's next call number and
//! leaves a [`Ticket`] here. A submitter that takes one queues the call on
//! the worker's board, tells the manager ([`Event::Lent`], before the call
//! leaves, so that whatever the worker does next reaches the manager after
//! it) and sends the call itself. At the start of each step the manager
//! takes back the tickets nobody took ([`Lending::reclaim`]); a worker whose
//! ticket was taken counts as busy until its `Lent` arrives.

use super::Event;
use super::direct::Direct;
use crate::error::Error;
use crate::host::Calls;
use crate::job::{Claim, Job};
use crossbeam_channel::{SendError, Sender};
use loky_worker::protocol::{Board, Call, CallKind};
use std::sync::{Arc, Mutex, PoisonError};

/// One idle worker, reserved for the first submitter that takes it.
pub(crate) struct Ticket {
    pub(super) worker: u64,
    pub(super) seq: u64,
    pub(super) board: Arc<Board>,
    pub(super) calls: Calls,
    pub(super) direct: Arc<Direct>,
}

/// The tickets on offer.
#[derive(Default)]
pub(crate) struct Lending(Mutex<Vec<Ticket>>);

impl Lending {
    fn tickets(&self) -> std::sync::MutexGuard<'_, Vec<Ticket>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Manager: offers a worker.
    pub(super) fn offer(&self, ticket: Ticket) {
        self.tickets().push(ticket);
    }

    /// How many tickets are on offer.
    #[cfg(test)]
    pub(crate) fn offered(&self) -> usize {
        self.tickets().len()
    }

    /// Manager: takes back every ticket on offer; returns their workers.
    pub(super) fn reclaim(&self) -> Vec<u64> {
        self.tickets()
            .drain(..)
            .map(|ticket| ticket.worker)
            .collect()
    }

    /// Submitter: sends a single call straight to an idle worker, if one
    /// is on offer; otherwise gives the job back.
    pub(crate) fn send(&self, job: Job, events: &Sender<Event>) -> Option<Job> {
        if job.kind != CallKind::Single || self.tickets().is_empty() {
            return Some(job);
        }
        // Made before a ticket is taken: cloning regions may panic (out of
        // descriptors), and a taken ticket must end in a `Lent`.
        let task = job.task().to_owned();
        let (args, regions) = (job.args.clone(), job.regions.clone());
        let Some(ticket) = self.tickets().pop() else {
            return Some(job);
        };
        let Ticket {
            worker,
            seq,
            board,
            calls,
            direct,
        } = ticket;
        board.queue(seq);
        let claim = Claim::Board {
            board: Arc::clone(&board),
            seq,
        };
        if !job.completion.attach(claim) {
            // Cancelled already: it never runs. The manager still hears of
            // it, to count the worker idle again.
            board.revoke(seq);
        }
        direct.expect(seq, Arc::clone(&job.completion));
        let call = Call {
            seq,
            task,
            kind: CallKind::Single,
            args,
            regions,
        };
        let lent = Event::Lent {
            worker,
            seq,
            board: Arc::clone(&board),
            job,
        };
        if let Err(SendError(Event::Lent { job, .. })) = events.send(lent) {
            // Unreachable while the executor's gate is open (the manager
            // runs until a shutdown request): fail rather than lose it.
            direct.forget(seq);
            job.completion.fail(Error::ShutDown);
            return None;
        }
        // If the worker is gone, the call stays queued on its board and
        // runs elsewhere once the manager has reaped it; if the send failed
        // otherwise, the manager kills it, to the same end.
        if calls.send_calls(&board, vec![call]).is_err() {
            let _ = events.send(Event::LentUnsent { worker });
        }
        None
    }
}
