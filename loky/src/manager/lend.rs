//! Idle workers lent to submitters: a call submitted while a worker is
//! idle goes straight to it, without waking the manager first.
//!
//! At the end of each step the manager lends every idle worker it would
//! give the next call to: it takes the worker's next call number and leaves
//! a [`Ticket`] here. A submitter that takes one queues the call on the
//! worker's board, tells the manager ([`Event::Lent`], before the call
//! leaves, so that whatever the worker does next reaches the manager after
//! it: sent, or left for the manager's next step with
//! [`Lending::tell_later`] while it would decide nothing) and sends the
//! call itself. Before a step decides anything, and again once it has
//! drained its events, the manager takes back the tickets nobody took
//! ([`Lending::reclaim`]); a worker whose ticket was taken counts as busy
//! until its `Lent` arrives.
//!
//! A caller that picks up the last call of a lent worker may offer that
//! worker again itself (an encore, `direct::Encore`), announced to the
//! manager before anyone can take it ([`Lending::offer_announced`]). A
//! submitter whose thread just did so waits briefly for that offer, or the
//! manager's ([`Lending::await_offer`]), rather than queue its call.

use super::Event;
use super::direct::Direct;
use crate::error::Error;
use crate::host::Calls;
use crate::job::{Claim, Job, Pickup};
use crossbeam_channel::{SendError, Sender};
use loky_worker::protocol::{Board, Call, CallKind};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One idle worker, reserved for the first submitter that takes it.
pub(crate) struct Ticket {
    pub(super) worker: u64,
    pub(super) seq: u64,
    pub(super) board: Arc<Board>,
    pub(super) calls: Calls,
    pub(super) direct: Arc<Direct>,
    /// Whatever the manager was told of this offer may wait in
    /// `Lending::later`: the ticket's `Lent` may wait there too (a `Lent`
    /// never overtakes the announcement of its ticket).
    pub(super) quiet: bool,
}

thread_local! {
    /// The executor (its [`Lending::key`]) one of whose workers this
    /// thread just emptied, picking its last call up: that worker is about
    /// to be offered again. Zero: none.
    static OFFER_COMING: Cell<usize> = const { Cell::new(0) };
}

/// This thread delivered the last call a worker of `executor` (its
/// [`Lending::key`]) held.
pub(super) fn offer_coming(executor: usize) {
    OFFER_COMING.set(executor);
}

/// The tickets on offer.
#[derive(Default)]
pub(crate) struct Lending {
    tickets: Mutex<Vec<Ticket>>,
    /// Calls delivered (`Event::Delivered`) whose step the manager has not
    /// finished: each may put its worker on offer again.
    coming: AtomicUsize,
    /// Calls lent and delivered that the manager hears of at its next step
    /// instead of being woken for each, while it allows that.
    later: Mutex<Later>,
}

/// Events waiting for the manager's next step.
#[derive(Default)]
struct Later {
    /// Whether the manager allows events to wait (while callers may offer
    /// workers again themselves).
    open: bool,
    events: Vec<Event>,
}

impl Lending {
    fn tickets(&self) -> std::sync::MutexGuard<'_, Vec<Ticket>> {
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn later(&self) -> std::sync::MutexGuard<'_, Later> {
        self.later.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Submitter or caller: `event` (a call lent or delivered) waits for
    /// the manager's next step, if the manager allows that now; otherwise
    /// it is given back (`Some`), to be sent (waking the manager).
    pub(super) fn tell_later(&self, event: Event) -> Option<Event> {
        let mut later = self.later();
        if !later.open {
            return Some(event);
        }
        later.events.push(event);
        None
    }

    /// Manager: the events told since it last took them, in order.
    pub(super) fn take_later(&self) -> Vec<Event> {
        std::mem::take(&mut self.later().events)
    }

    /// Manager: whether events may wait for its next step from now on;
    /// when it stops allowing that, the events waiting, for it to handle
    /// now.
    pub(super) fn allow_later(&self, open: bool) -> Vec<Event> {
        let mut later = self.later();
        later.open = open;
        if open {
            Vec::new()
        } else {
            std::mem::take(&mut later.events)
        }
    }

    /// Whether events wait for the manager's next step.
    pub(crate) fn told_later(&self) -> bool {
        !self.later().events.is_empty()
    }

    /// Results thread or caller: `calls` calls were delivered; their
    /// workers may come back on offer once the manager has heard.
    pub(super) fn delivering(&self, calls: usize) {
        self.coming.fetch_add(calls, Ordering::AcqRel);
    }

    /// Manager: it finished the step in which it heard of `delivered`
    /// calls (and offered their workers, if it would).
    pub(super) fn delivered(&self, delivered: usize) {
        // Saturating: deliveries forgotten at a break-down may still be
        // counted off.
        let _ = self
            .coming
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |coming| {
                Some(coming.saturating_sub(delivered))
            });
    }

    /// Caller with an encore: `announce`s it to the manager, then offers
    /// it, under one lock, so that whatever is done with the ticket reaches
    /// the manager after the announcement. `announce` says whether the
    /// announcement waits for the manager's next step (`None`: the
    /// manager is gone). False if the manager is gone.
    pub(super) fn offer_announced(
        &self,
        mut ticket: Ticket,
        announce: impl FnOnce(u64) -> Option<bool>,
    ) -> bool {
        let mut tickets = self.tickets();
        let Some(quiet) = announce(ticket.seq) else {
            return false;
        };
        ticket.quiet = quiet;
        tickets.push(ticket);
        true
    }

    /// What tells this executor's lending from another's, for
    /// [`offer_coming`]: its address, never zero.
    pub(super) fn key(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Submitter of a single call, before it takes the executor's gate: if
    /// this thread just picked up the last call of one of this executor's
    /// workers, waits (at most `spin`) for the manager to offer that worker
    /// again, or to decide not to. Waiting is shorter than the manager's
    /// round (a wake-up, a step) for the call.
    pub(crate) fn await_offer(&self, spin: Duration) {
        if OFFER_COMING.replace(0) != self.key() {
            return;
        }
        loky_worker::spin::until(spin, || {
            !self.tickets().is_empty() || self.coming.load(Ordering::Acquire) == 0
        });
    }

    /// Manager: forgets the deliveries it did not finish a step for (it
    /// broke down): nobody waits for offers any more.
    pub(super) fn forget_deliveries(&self) {
        self.coming.store(0, Ordering::Release);
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

    /// Manager: takes back every ticket on offer; returns their workers
    /// and call numbers.
    pub(super) fn reclaim(&self) -> Vec<(u64, u64)> {
        self.tickets()
            .drain(..)
            .map(|ticket| (ticket.worker, ticket.seq))
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
            quiet,
        } = ticket;
        // A call with a timeout wakes the manager, which times it.
        let quiet = quiet && job.timeout.is_none();
        board.queue(seq);
        let claim = Claim::Board {
            board: Arc::clone(&board),
            seq,
            pickup: Some(Arc::clone(&direct) as Arc<dyn Pickup>),
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
        let untold = if quiet {
            self.tell_later(lent)
        } else {
            Some(lent)
        };
        match untold {
            // Its outcome may then be told later too: nothing about the
            // call waits for the manager's step on the channel.
            None => direct.told_later(seq),
            Some(lent) => {
                if let Err(SendError(Event::Lent { job, .. })) = events.send(lent) {
                    // Unreachable while the executor's gate is open (the
                    // manager runs until a shutdown request): fail rather
                    // than lose it.
                    direct.forget(seq);
                    job.completion.fail(Error::ShutDown);
                    return None;
                }
            }
        }
        // If the worker is gone, the call stays queued on its board and
        // runs elsewhere once the manager has reaped it; if the send failed
        // otherwise, the manager kills it, to the same end. A call that
        // could not be made into a message fails instead.
        let seq = call.seq;
        match calls.send_calls(&board, vec![call]) {
            Ok(()) => {}
            Err(crate::host::SendError::Gone(_)) => {
                let _ = events.send(Event::LentUnsent {
                    worker,
                    unsendable: None,
                });
            }
            Err(crate::host::SendError::Unsendable(why)) => {
                let _ = events.send(Event::LentUnsent {
                    worker,
                    unsendable: Some((seq, why)),
                });
            }
        }
        None
    }
}
