//! The manager: the one thread that owns an executor's workers and its queue
//! of pending jobs. See `README.md` beside this file for its states.

mod direct;
pub(crate) mod lend;
mod policy;
#[cfg(test)]
mod tests;
mod worker;

use crate::config::Config;
use crate::error::{Attempt, Error, SpawnError};
use crate::host::{Backend, Notify, SendError, WorkerEvent, WorkerHandle};
use crate::job::{Claim, Job, Piece};
use crate::shared::Shared;
use crate::stats::{Stats, WorkerExits};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
pub(crate) use direct::settling;
use direct::{Direct, Routed};
use loky_worker::protocol::{
    self, Board, Call, CallKind, ChunkArgs, Claim as ClaimState, FromWorker, Outcome, Payload,
    Setup, ToWorker,
};
use policy::{Busy, Settle};
use std::collections::{BTreeMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{Cause, InFlight, Kill, Life, Retire, Worker};

/// Everything the manager reacts to.
pub(crate) enum Event {
    /// A job to run.
    Submit(Job),
    /// Stop: finish or cancel the queue, then stop the workers.
    Shutdown(ShutdownRequest),
    /// News from a worker's watchers.
    Worker(u64, WorkerEvent),
    /// A worker's call finished and its link (or its caller) settled its
    /// future; with the call number of the encore ticket its caller put
    /// the worker on offer under, if any.
    Delivered(u64, u64, Option<u64>),
    /// A worker's calls held back and sent together finished; the results
    /// thread settles their futures right after sending this, one event
    /// for the message.
    DeliveredAll(u64, Vec<u64>),
    /// A submitter could not send a call to worker `worker`, lent to it:
    /// the worker is killed (its death requeues the call), unless the call
    /// itself could not be sent (then it fails).
    LentUnsent {
        worker: u64,
        /// The call and why, if it could not be sent though the worker
        /// may be fine (`SendError::Unsendable`): it fails, the worker
        /// stays.
        unsendable: Option<(u64, String)>,
    },
    /// A submitter took worker `worker`'s ticket: `job` is call `seq`,
    /// queued on `board` and sent (or about to be).
    Lent {
        worker: u64,
        seq: u64,
        board: Arc<Board>,
        job: Job,
    },
    /// The future of this job was cancelled while a worker held it: drop
    /// the call, or kill the worker if it runs it.
    Cancel(u64),
    /// A new `max_workers`.
    Resize(usize),
    /// Start every worker now; answer once none is starting.
    StartWorkers(Sender<Result<(), Error>>),
    /// Take the events told for the next step now (`Executor::stats`
    /// wants them counted).
    Refresh,
}

/// How to shut down.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ShutdownRequest {
    pub(crate) cancel_futures: bool,
    /// Signal the workers' process groups with this (SIGTERM or SIGKILL);
    /// running and queued jobs fail.
    pub(crate) kill: Option<i32>,
}

impl ShutdownRequest {
    fn kills(&self) -> bool {
        self.kill.is_some()
    }
}

/// How long a worker whose link closed may take to exit before it is
/// killed; also how long SIGTERM has before SIGKILL.
const CLOSED_GRACE: Duration = Duration::from_secs(1);
/// How long a worker that exited waits for its link to close before the
/// backend is asked to report its exit again (`WorkerHandle::retell_exit`:
/// a report whose sending failed), and again as often while it waits. It
/// is reaped only once its link closed: then what it sent is all read.
const RETELL_AFTER: Duration = Duration::from_millis(200);
/// After how many such requests in vain (5 s) the wait is logged.
const RETELLS_BEFORE_WARNING: u32 = 25;
/// How long to wait before trying again after a worker failed to start.
const SPAWN_BACKOFF: Duration = Duration::from_millis(50);

/// `at + after`, or `None` (never) when that overflows.
fn deadline(at: Instant, after: Duration) -> Option<Instant> {
    at.checked_add(after)
}

/// Runs the manager loop until the executor is shut down and every worker
/// is gone.
pub(crate) fn run<B: Backend>(
    config: Config,
    backend: B,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    shared: Arc<Shared>,
) {
    Manager {
        config,
        backend,
        events,
        events_tx,
        shared,
        queue: VecDeque::new(),
        workers: BTreeMap::new(),
        next_worker: 0,
        shutdown: None,
        spawn_backoff_until: None,
        mean_call: None,
        last_spawn_error: None,
        broken: None,
        fill_pool: false,
        start_waiters: Vec::new(),
        started: 0,
        exits: WorkerExits::default(),
        init_failures: 0,
        later_batch: VecDeque::new(),
        hearing_late: false,
        later_open: false,
    }
    .run();
}

/// What a step's events were.
#[derive(Default)]
struct Tally {
    /// One was not a call lent or delivered: the step decides.
    deciding: bool,
    /// Calls delivered.
    delivered: usize,
}

struct Manager<B: Backend> {
    config: Config,
    backend: B,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    shared: Arc<Shared>,
    /// Jobs not held by any worker, oldest first.
    queue: VecDeque<Job>,
    workers: BTreeMap<u64, Worker<B::Worker>>,
    next_worker: u64,
    shutdown: Option<ShutdownRequest>,
    spawn_backoff_until: Option<Instant>,
    /// The running mean of how long a call holds its worker, for the
    /// automatic prefetch depth.
    mean_call: Option<Duration>,
    last_spawn_error: Option<SpawnError>,
    /// Set after a panic in this thread or repeated initializer failures:
    /// every job fails with it.
    broken: Option<Error>,
    /// Start workers up to `max_workers`, whatever the queue.
    fill_pool: bool,
    /// Callers of `start_workers` waiting for the pool to be up.
    start_waiters: Vec<Sender<Result<(), Error>>>,
    started: u64,
    exits: WorkerExits,
    /// Workers in a row whose initializer failed.
    init_failures: usize,
    /// Events told for the next step, being handled.
    later_batch: VecDeque<Event>,
    /// Handling events told for the next step: their calls' times are
    /// when the manager heard, not when they happened.
    hearing_late: bool,
    /// Whether events may wait for the next step (`Lending::allow_later`).
    later_open: bool,
}

impl<B: Backend> Manager<B> {
    fn run(mut self) {
        loop {
            match panic::catch_unwind(AssertUnwindSafe(|| self.step())) {
                Ok(true) => {}
                Ok(false) => {
                    // Nothing waits for a step that will not come (lending
                    // closed with the shutdown: none should).
                    fail_lent(self.shared.lending.allow_later(false), &Error::ShutDown);
                    // The executor is done: it keeps no idle shared memory.
                    loky_worker::region_pool::trim();
                    return;
                }
                Err(payload) => {
                    let message = loky_worker::panic::payload_message(&*payload);
                    self.break_down(format!("its manager thread panicked: {message}"));
                }
            }
        }
    }

    /// Waits for events and handles them; false once the manager is done.
    fn step(&mut self) -> bool {
        let event = match self.next_wakeup() {
            Some(timeout) => self.events.recv_timeout(timeout),
            None => self
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        // Tickets on offer are taken back before anything is decided: before
        // the first event that is not a call lent or delivered, and after
        // the events are drained, unless the step only heard of such calls
        // (`quiet_step`). A quiet step leaves the workers on offer, so that
        // a caller re-lending its worker (an encore) never finds it taken
        // back and waits for this step to offer it again.
        let mut tally = Tally::default();
        let mut next = match event {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            // Unreachable: this thread holds a sender itself.
            Err(RecvTimeoutError::Disconnected) => return false,
        };
        let woken = next.is_some();
        loop {
            // A channel event is received first, then the events told for
            // this step until then are handled before it: whatever it
            // follows from was told before it was sent.
            let event = next.take().or_else(|| self.events.try_recv().ok());
            self.hear_later(self.shared.lending.take_later(), &mut tally);
            let Some(event) = event else {
                break;
            };
            self.handle_counted(event, &mut tally);
        }
        // One instant for the decision and the timers: no timer found not
        // due here fires below.
        let now = Instant::now();
        if tally.deciding || !(woken && self.quiet_step(now)) {
            // Callers may have offered workers again meanwhile (encores):
            // no ticket is on offer while the manager decides.
            self.reclaim_tickets();
        }
        loop {
            self.check_timers(now);
            // Before dispatching: a reaped worker's unstarted calls go back
            // to the queue.
            self.reap_ready();
            self.dispatch();
            self.lend();
            // Events may wait for the next step only while callers may
            // offer workers again and hearing of them would decide
            // nothing; when that ends, those waiting are handled now, and
            // any ticket they put on offer comes back.
            self.later_open = self.encores_open() && self.undecided();
            let waiting = self.shared.lending.allow_later(self.later_open);
            if waiting.is_empty() {
                break;
            }
            self.hear_later(waiting, &mut tally);
            self.reclaim_tickets();
        }
        self.shared.lending.delivered(tally.delivered);
        self.publish();
        self.answer_start_waiters();
        !self.finished()
    }

    /// Handles events told for the next step, in order. Kept on the
    /// manager while it does: should it break down halfway, the rest are
    /// not lost (`break_down` fails their jobs).
    fn hear_later(&mut self, events: Vec<Event>, tally: &mut Tally) {
        self.later_batch.extend(events);
        self.hearing_late = true;
        while let Some(event) = self.later_batch.pop_front() {
            self.handle_counted(event, tally);
        }
        self.hearing_late = false;
    }

    /// Handles `event`, counted in `tally`: tickets come back before the
    /// first event of a step that is not a call lent or delivered.
    fn handle_counted(&mut self, event: Event, tally: &mut Tally) {
        let quiet = matches!(
            event,
            Event::Lent { .. } | Event::Delivered(..) | Event::DeliveredAll(..) | Event::Refresh
        );
        if !quiet && !tally.deciding {
            tally.deciding = true;
            // Lent workers come back first; those whose ticket was taken
            // stay busy until their `Lent` arrives.
            self.reclaim_tickets();
        }
        // Only deliveries sent on the channel were counted as coming.
        if !self.hearing_late {
            tally.delivered += match &event {
                Event::Delivered(..) => 1,
                Event::DeliveredAll(_, seqs) => seqs.len(),
                _ => 0,
            };
        }
        self.handle(event);
    }

    /// Whether a step woken by calls lent and delivered only, at `now`,
    /// leaves the workers on offer as they are: it would decide nothing
    /// (`undecided`), and no timer is due.
    fn quiet_step(&self, now: Instant) -> bool {
        self.undecided() && self.next_timer(now).is_none_or(|at| at > now)
    }

    /// Whether hearing of calls lent and delivered would decide nothing
    /// but the timers: nothing is queued, the executor runs as it was,
    /// every worker serves (or starts) and none holds a call waiting
    /// behind another (one an idle worker might take over). Only then may
    /// such events wait for the next step (`Lending::tell_later`).
    fn undecided(&self) -> bool {
        self.lending_open()
            && !self.fill_pool
            && self.workers.values().all(|worker| {
                worker.inflight.len() <= 1
                    && worker.unsent.is_empty()
                    && matches!(
                        worker.life,
                        Life::Serving { .. } | Life::Starting { .. } | Life::Initializing { .. }
                    )
            })
    }

    /// Takes back the tickets nobody took. An encore's is remembered if
    /// its announcement is still to come; a worker whose ticket was unused
    /// gets a fresh encore when it is lent again.
    fn reclaim_tickets(&mut self) {
        for (id, seq) in self.shared.lending.reclaim() {
            if let Some(worker) = self.workers.get_mut(&id) {
                if worker.lent == Some(seq) {
                    worker.lent = None;
                } else {
                    // An encore not announced yet.
                    worker.reclaimed_encore = Some(seq);
                }
                worker.direct.disarm();
            }
        }
    }

    /// Whether idle workers go on offer to submitters: while nothing is
    /// queued and the executor runs.
    fn lending_open(&self) -> bool {
        self.queue.is_empty() && self.shutdown.is_none() && self.broken.is_none()
    }

    /// Whether callers may put workers on offer again themselves
    /// (`direct::Encore`): while lending is open, and when a worker's tasks
    /// are not counted (the manager counts them when it hears of them).
    fn encores_open(&self) -> bool {
        self.lending_open() && self.config.max_tasks_per_child.is_none()
    }

    /// Offers each idle worker to submitters, while nothing is queued, each
    /// with leave for an encore.
    fn lend(&mut self) {
        let (open, encores) = (self.lending_open(), self.encores_open());
        let max_tasks = self.config.max_tasks_per_child;
        for (&id, worker) in &mut self.workers {
            if !encores || !matches!(worker.life, Life::Serving { .. }) {
                worker.direct.disarm();
            }
            // `can_take` is false for a worker lent already.
            if !(open
                && worker.is_idle()
                && worker.unsent.is_empty()
                && worker.can_take(1, max_tasks))
            {
                continue;
            }
            let (Some(board), Some(calls)) = (worker.board.clone(), worker.calls().cloned()) else {
                continue;
            };
            let seq = worker.direct.take_seq();
            worker.lent = Some(seq);
            if encores {
                arm_encore(id, worker, &calls);
            }
            self.shared.lending.offer(lend::Ticket {
                worker: id,
                seq,
                board,
                calls,
                direct: Arc::clone(&worker.direct),
                quiet: encores,
            });
        }
    }

    /// A submitter sent `job` as call `seq` to worker `id`, lent to it.
    fn lent(&mut self, id: u64, seq: u64, board: &Board, job: Job) {
        let max_tasks = self.config.max_tasks_per_child;
        let Some(worker) = self.workers.get_mut(&id) else {
            // Reaped meanwhile: the call runs elsewhere if it never
            // started, which is the only way (its `Lent` came first).
            if board.revoke(seq) {
                job.completion.detach();
                self.requeue(vec![job]);
            } else {
                job.completion.fail(Error::Broken {
                    reason: "a call sent to a worker reaped meanwhile".to_owned(),
                });
            }
            return;
        };
        if worker.lent == Some(seq) {
            worker.lent = None;
        }
        if board.state(seq) == ClaimState::Revoked {
            // Cancelled before it left: never runs.
            worker.direct.forget(seq);
            return;
        }
        worker.hold(seq, job, max_tasks);
        if self.hearing_late
            && let Some(held) = worker.inflight.back_mut()
        {
            held.late = true;
        }
        // Its caller may put it on offer again once this call is done.
        let encores = self.encores_open();
        let worker = self.workers.get_mut(&id).expect("found above");
        if encores
            && worker.inflight.len() == 1
            && worker.unsent.is_empty()
            && let Life::Serving { calls } = &worker.life
        {
            let calls = calls.clone();
            arm_encore(id, worker, &calls);
        }
    }

    /// Stops for good without losing anything: every job fails with
    /// `Error::Broken`, every worker is killed and reaped, and later
    /// submissions fail the same way.
    fn break_down(&mut self, reason: String) {
        tracing::error!(reason, "executor broken");
        self.shared.set_broken(reason.clone());
        let error = Error::Broken { reason };
        // Nothing waits for a next step any more, nor is any worker lent
        // (a `Lent` after this fails its job), nor offered again.
        let waiting = self.shared.lending.allow_later(false);
        fail_lent(self.later_batch.drain(..).chain(waiting), &error);
        self.shared.lending.reclaim();
        self.shared.lending.forget_deliveries();
        for worker in self.workers.values() {
            worker.direct.disarm();
        }
        for job in self.queue.drain(..) {
            job.completion.fail(error.clone());
        }
        for (_, mut worker) in std::mem::take(&mut self.workers) {
            for held in std::mem::take(&mut worker.inflight) {
                held.job.completion.fail(error.clone());
            }
            if worker.is_starting() {
                worker.handle.abort_handshake();
            }
            worker.handle.reap();
        }
        self.broken = Some(error);
        self.publish();
        self.answer_start_waiters();
    }

    /// How long the loop may sleep without missing a timer.
    fn next_wakeup(&self) -> Option<Duration> {
        let now = Instant::now();
        self.next_timer(now)
            .map(|at| at.saturating_duration_since(now))
    }

    /// When the next timer is due, seen at `now`.
    fn next_timer(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = self.spawn_backoff_until.filter(|_| !self.queue.is_empty());
        let mut earliest = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        let idle_timeout = self.config.idle_limit().filter(|_| self.queue.is_empty());
        let some_busy = self.workers.values().any(|w| !w.inflight.is_empty());
        if let Some(after) = policy::late_look(self.later_open, idle_timeout, some_busy) {
            earliest(now.checked_add(after));
        }
        for worker in self.workers.values() {
            match &worker.life {
                Life::Starting { deadline } => earliest(*deadline),
                Life::Serving { .. } | Life::Leaving { .. } => {
                    if let Some(timeout) = worker.inflight.front().and_then(|h| h.job.timeout) {
                        earliest(deadline(worker.head_since, timeout));
                    }
                    if let Some(idle) = idle_timeout.filter(|_| worker.is_idle()) {
                        earliest(deadline(worker.idle_since, idle));
                    }
                }
                Life::Killed { escalate_at, .. } => earliest(*escalate_at),
                Life::Gone {
                    closed,
                    exited,
                    since,
                    forced,
                    retell_at,
                    ..
                } => match (closed, exited) {
                    (true, false) if !forced => earliest(deadline(*since, CLOSED_GRACE)),
                    (false, true) => earliest(*retell_at),
                    _ => {}
                },
                Life::Initializing { .. } | Life::Told { .. } => {}
            }
        }
        next
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Submit(job) => match (&self.broken, self.shutdown) {
                (Some(error), _) => job.completion.fail(error.clone()),
                (None, Some(request)) if request.kills() => job.completion.fail(Error::ShutDown),
                _ => self.queue.push_back(job),
            },
            Event::Shutdown(request) => self.shut_down(request),
            Event::Worker(id, event) => self.worker_event(id, event),
            Event::DeliveredAll(id, seqs) => {
                for seq in seqs {
                    self.call_done(id, seq, None);
                }
            }
            Event::Delivered(id, seq, encore) => {
                self.call_done(id, seq, None);
                match (encore, self.workers.get_mut(&id)) {
                    (Some(encore), Some(worker)) => {
                        // On offer until reclaimed or taken, unless
                        // reclaimed already.
                        if worker.reclaimed_encore.take() != Some(encore) {
                            worker.lent = Some(encore);
                        }
                    }
                    // Offered by a caller as its worker was reaped: taken
                    // back at once, rather than left on offer through quiet
                    // steps (a call sent under it would run elsewhere).
                    (Some(_), None) => self.reclaim_tickets(),
                    (None, _) => {}
                }
            }
            Event::Lent {
                worker,
                seq,
                board,
                job,
            } => self.lent(worker, seq, &board, job),
            Event::LentUnsent {
                worker,
                unsendable: None,
            } => {
                if let Some(worker) = self.workers.get(&worker) {
                    tracing::debug!(pid = worker.pid, "send to a lent worker failed");
                    worker.handle.signal(libc::SIGKILL);
                }
            }
            Event::LentUnsent {
                worker,
                unsendable: Some((seq, why)),
            } => {
                if let Some(worker) = self.workers.get_mut(&worker)
                    && let Some(board) = worker.board.clone()
                {
                    fail_unsendable(worker, &board, &[seq], &why);
                }
            }
            Event::Cancel(job) => self.cancelled(job),
            Event::Resize(max_workers) => {
                self.config = self.config.clone().max_workers(max_workers);
                self.shrink();
            }
            Event::StartWorkers(reply) => {
                self.start_waiters.push(reply);
                self.fill_pool = true;
                self.last_spawn_error = None;
            }
            Event::Refresh => {}
        }
    }

    /// Publishes what `Executor::stats` and `worker_pids` report.
    fn publish(&self) {
        let stats = Stats {
            workers: self.workers.len(),
            pending: self.queue.len(),
            running: self.workers.values().map(|w| w.inflight.len()).sum(),
            started: self.started,
            exits: self.exits.clone(),
            ..Stats::default()
        };
        self.shared
            .publish(stats, self.workers.values().map(|w| w.pid));
    }

    /// Answers `start_workers` callers once no worker is starting.
    fn answer_start_waiters(&mut self) {
        let connecting =
            |w: &Worker<B::Worker>| w.is_starting() || matches!(w.life, Life::Initializing { .. });
        if self.start_waiters.is_empty() || self.workers.values().any(connecting) {
            return;
        }
        let up = self.workers.values().filter(|w| w.is_up()).count();
        let answer = match (&self.broken, &self.last_spawn_error) {
            (Some(error), _) => Err(error.clone()),
            (None, Some(error)) if up < self.config.max_workers => Err(Error::Spawn(error.clone())),
            _ => Ok(()),
        };
        for waiter in self.start_waiters.drain(..) {
            let _ = waiter.send(answer.clone());
        }
    }

    /// A future was cancelled while a worker held its call: the call was
    /// taken back (drop it) or it is running (kill the worker).
    fn cancelled(&mut self, job: u64) {
        let found = self.workers.iter_mut().find_map(|(&id, worker)| {
            let position = worker.inflight.iter().position(|h| h.job.id == job)?;
            Some((id, position))
        });
        let Some((id, position)) = found else { return };
        let worker = self.workers.get_mut(&id).expect("found above");
        let seq = worker.inflight[position].seq;
        let state = worker
            .board
            .as_ref()
            .map_or(ClaimState::Gone, |board| board.state(seq));
        match state {
            ClaimState::Started => {
                tracing::info!(
                    pid = worker.pid,
                    "running task cancelled: killing its worker"
                );
                worker.inflight[position].fate = Some(Error::Cancelled {
                    task: worker.inflight[position].job.task(),
                });
                self.kill_worker(id, Kill::Cancel, libc::SIGKILL);
            }
            ClaimState::Revoked | ClaimState::Gone => {
                worker.direct.forget(seq);
                worker.inflight.remove(position);
                if position == 0 {
                    worker.advance(Instant::now());
                }
            }
            ClaimState::Queued => {}
        }
    }

    /// Retires workers beyond `max_workers`.
    fn shrink(&mut self) {
        let active: Vec<(u64, Busy)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.is_active())
            .map(|(&id, w)| {
                let busy = if w.is_starting() {
                    Busy::Starting
                } else if w.is_idle() {
                    Busy::Idle
                } else {
                    Busy::Working
                };
                (id, busy)
            })
            .collect();
        for id in policy::shrink_victims(&active, self.config.max_workers) {
            self.retire(id, Retire::Shrink);
        }
    }

    /// Retires a worker: a connected one leaves once drained; a starting
    /// one is killed (no user code runs in it yet).
    fn retire(&mut self, id: u64, why: Retire) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.is_starting() {
            worker.handle.signal(libc::SIGKILL);
            worker.handle.abort_handshake();
            worker.life = Life::Killed {
                why: Kill::Retired(why),
                escalate_at: None,
            };
        } else {
            worker.retire(why);
        }
    }

    fn shut_down(&mut self, request: ShutdownRequest) {
        let merged = self.shutdown.unwrap_or_default().merge(request);
        self.shutdown = Some(merged);
        if merged.cancel_futures {
            for job in self.queue.drain(..) {
                job.completion.cancel();
            }
            // Calls workers hold but have not started are taken back too:
            // a cancelled future's call never runs.
            for worker in self.workers.values_mut() {
                let Some(board) = worker.board.clone() else {
                    continue;
                };
                let head_before = worker.inflight.front().map(|h| h.seq);
                let direct = Arc::clone(&worker.direct);
                worker.inflight.retain(|held| {
                    let taken = board.revoke(held.seq);
                    if taken {
                        direct.forget(held.seq);
                        held.job.completion.cancel();
                    }
                    !taken
                });
                if worker.inflight.front().map(|h| h.seq) != head_before {
                    worker.advance(Instant::now());
                }
            }
        }
        if let Some(signal) = merged.kill {
            for job in self.queue.drain(..) {
                job.completion.fail(Error::ShutDown);
            }
            let ids: Vec<u64> = self.workers.keys().copied().collect();
            for id in ids {
                let starting = self.workers.get(&id).is_some_and(Worker::is_starting);
                if starting {
                    self.retire(id, Retire::Shutdown);
                } else {
                    self.kill_worker(id, Kill::Shutdown, signal);
                }
            }
        }
    }

    /// Kills a worker on purpose. Its calls not started are taken back at
    /// once and run elsewhere (or, when shutting down, are cancelled or
    /// fail); the running one is settled by `why`: it timed out, was
    /// cancelled, or (shutdown) fails with `ShutDown`.
    fn kill_worker(&mut self, id: u64, why: Kill, signal: i32) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if matches!(worker.life, Life::Killed { .. } | Life::Gone { .. }) {
            if signal == libc::SIGKILL {
                worker.handle.signal(signal);
            }
            return;
        }
        worker.handle.signal(signal);
        let escalate_at = (signal != libc::SIGKILL)
            .then(|| deadline(Instant::now(), CLOSED_GRACE))
            .flatten();
        let shutting_down = matches!(why, Kill::Shutdown);
        worker.life = Life::Killed { why, escalate_at };
        // What it still sends is the manager's to settle: a call it ran
        // may have timed out or been cancelled meanwhile. Nobody offers it
        // again.
        worker.direct.clear();
        worker.direct.disarm();
        let board = worker.board.clone();
        let mut requeue = Vec::new();
        // Outcomes it holds back are of calls that finished.
        let mut held_back = held_back(board.as_deref(), false);
        let pid = worker.pid;
        for held in std::mem::take(&mut worker.inflight) {
            if let Some(outcome) = held_back.remove(&held.seq) {
                complete(held, pid, outcome);
                continue;
            }
            let state = board
                .as_ref()
                .map_or(ClaimState::Queued, |b| b.state(held.seq));
            match state {
                ClaimState::Queued if board.as_ref().is_none_or(|b| b.revoke(held.seq)) => {
                    held.job.completion.detach();
                    requeue.push(held.job);
                }
                // Unless its outcome is in the reply box: settled at reap.
                ClaimState::Started
                    if shutting_down
                        && held.job.kind == CallKind::Single
                        && !board.as_ref().is_some_and(|board| {
                            board.reply_ready(held.seq) || board.reply_taken(held.seq)
                        }) =>
                {
                    held.job.completion.fail(Error::ShutDown);
                }
                ClaimState::Revoked | ClaimState::Gone => {}
                // Running (or started just now): settled when reaped.
                _ => worker.inflight.push_back(held),
            }
        }
        self.requeue(requeue);
    }

    /// Puts jobs that never started back at the front of the queue, in
    /// order; when shutting down with a kill, they are cancelled or fail.
    fn requeue(&mut self, jobs: Vec<Job>) {
        if let Some(error) = &self.broken {
            for job in jobs {
                job.completion.fail(error.clone());
            }
            return;
        }
        match self.shutdown {
            Some(request) if request.kills() => {
                for job in jobs {
                    if !request.cancel_futures || !job.completion.cancel() {
                        job.completion.fail(Error::ShutDown);
                    }
                }
            }
            _ => {
                for job in jobs.into_iter().rev() {
                    self.queue.push_front(job);
                }
            }
        }
    }

    fn worker_event(&mut self, id: u64, event: WorkerEvent) {
        let Some(worker) = self.workers.get_mut(&id) else {
            // A worker reaped already.
            return;
        };
        let now = Instant::now();
        match event {
            WorkerEvent::Ready(Ok(calls)) => {
                if worker.is_starting() {
                    self.connected(id, calls);
                }
            }
            WorkerEvent::Ready(Err(error)) => {
                if worker.is_starting() {
                    self.handshake_failed(id, error);
                }
            }
            WorkerEvent::Message(FromWorker::Done { seq, outcome }) => {
                if matches!(worker.life, Life::Initializing { seq: init, .. } if init == seq) {
                    let placeholder = Life::Told {
                        why: Retire::InitFailed,
                    };
                    let Life::Initializing { calls, .. } =
                        std::mem::replace(&mut worker.life, placeholder)
                    else {
                        unreachable!("matched above")
                    };
                    self.initialized(id, calls, outcome);
                    return;
                }
                self.call_done(id, seq, Some(outcome));
            }
            WorkerEvent::Message(FromWorker::Items {
                seq,
                first,
                count,
                items,
            }) => {
                let pid = worker.pid;
                if let Some(held) = worker.inflight.iter_mut().find(|h| h.seq == seq) {
                    held.job
                        .pieces
                        .receive(pid, first, count, items.bytes().to_vec());
                }
            }
            WorkerEvent::Message(FromWorker::Settled { records }) => {
                // The worker's `notify` splits these into `Done`s; in case
                // one comes whole, the same.
                let (outcomes, _) = protocol::settled_outcomes(records.bytes());
                for (seq, outcome) in outcomes {
                    self.worker_event(id, WorkerEvent::Message(FromWorker::Done { seq, outcome }));
                }
            }
            WorkerEvent::Message(FromWorker::Log(record)) => {
                crate::worker_logs::emit(worker.pid, &record);
            }
            WorkerEvent::Message(FromWorker::Retire(reason)) => {
                tracing::info!(
                    pid = worker.pid,
                    ?reason,
                    "worker over its memory limit: replacing it"
                );
                worker.retire(Retire::Memory);
            }
            WorkerEvent::Closed => {
                worker.gone(true, now, None);
                // It usually has exited by now: reap in this step rather
                // than wake again for its `Exited`.
                if worker.handle.exited() {
                    worker.gone(false, now, None);
                }
            }
            WorkerEvent::Exited => {
                worker.gone(false, now, deadline(now, RETELL_AFTER));
                // Dead but not reaped: its group is still ours. Kill what
                // it left behind, so that nothing keeps its channel open.
                worker.handle.signal(libc::SIGKILL);
            }
        }
    }

    /// Call `seq` of worker `id` finished: with its `outcome`, or settled
    /// already by the worker's link (`None`).
    fn call_done(&mut self, id: u64, seq: u64, outcome: Option<Outcome>) {
        let Some(worker) = self.workers.get_mut(&id) else {
            // A worker reaped already.
            return;
        };
        let Some(position) = worker.inflight.iter().position(|h| h.seq == seq) else {
            return;
        };
        let held = worker.inflight.remove(position).expect("found above");
        let pid = worker.pid;
        if position == 0 {
            let now = Instant::now();
            // Heard late (its `Lent` or this delivery), the call's time is
            // not known: it does not count.
            if !held.late && !self.hearing_late {
                let took = now.saturating_duration_since(worker.head_since);
                self.mean_call = Some(policy::mean_call_time(self.mean_call, took));
            }
            worker.advance(now);
        }
        if let Some(outcome) = outcome {
            complete(held, pid, outcome);
        }
    }

    /// A worker completed its handshake: give it its board, then its
    /// initializer or its first jobs.
    fn connected(&mut self, id: u64, calls: crate::host::Calls) {
        let worker = self.workers.get_mut(&id).expect("checked by the caller");
        // Sharing the board maps it once more, and ipc-channel panics when
        // the OS refuses (out of descriptors or memory): a spawn failure.
        let setup = Board::new().and_then(|board| {
            let shared = panic::catch_unwind(AssertUnwindSafe(|| {
                calls.send(ToWorker::Setup(Setup {
                    board: board.share(),
                    spin: self.config.spin_wait,
                    link: None,
                }))
            }));
            match shared {
                // If the worker is gone, its watchers say so.
                Ok(Ok(()) | Err(SendError::Gone(_))) => Ok(Arc::new(board)),
                Ok(Err(SendError::Unsendable(why))) => Err(why),
                Err(payload) => Err(loky_worker::panic::payload_message(&*payload)),
            }
        });
        let board = match setup {
            Ok(board) => board,
            Err(message) => {
                let error = SpawnError::io(
                    "could not create a worker's board",
                    std::io::Error::other(message),
                );
                self.handshake_failed(id, error);
                return;
            }
        };
        worker.board = Some(Arc::clone(&board));
        worker.direct.set_board(Arc::clone(&board));
        worker.idle_since = Instant::now();
        self.spawn_backoff_until = None;
        worker.life = match self.config.initializer.as_ref() {
            Some(init) => {
                let seq = worker.direct.take_seq();
                board.queue(seq);
                let _ = calls.send_calls(
                    &board,
                    vec![Call {
                        seq,
                        task: init.task.to_owned(),
                        kind: CallKind::Single,
                        args: Payload::pack_args(init.args.clone().unwrap_or_default())
                            .unwrap_or_else(|_| {
                                // No region to be had: inline, once per worker.
                                Payload::Inline(init.args.clone().unwrap_or_default())
                            }),
                        regions: init.regions.0.clone(),
                    }],
                );
                Life::Initializing { calls, seq }
            }
            None => Life::Serving { calls },
        };
    }

    /// A starting worker failed its handshake (or it took too long): it is
    /// killed, and counts as a spawn failure at once, so that no
    /// replacement starts before the backoff.
    fn handshake_failed(&mut self, id: u64, error: SpawnError) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.handle.signal(libc::SIGKILL);
        worker.handle.abort_handshake();
        worker.life = Life::Killed {
            why: Kill::Handshake,
            escalate_at: None,
        };
        self.exits.failed_to_start += 1;
        self.spawn_failed(error);
    }

    /// A worker's initializer returned (or failed).
    fn initialized(&mut self, id: u64, calls: crate::host::Calls, outcome: Outcome) {
        let task = self.initializer_task();
        let worker = self.workers.get_mut(&id).expect("checked by the caller");
        worker.idle_since = Instant::now();
        worker.life = Life::Serving { calls };
        match outcome {
            Outcome::Returned(_) => self.init_failures = 0,
            Outcome::Failed(failure) => {
                worker.retire(Retire::InitFailed);
                let error = Error::from_failure(task, Some(worker.pid), failure);
                self.initializer_failed(error.to_string());
            }
        }
    }

    fn initializer_task(&self) -> &'static str {
        self.config
            .initializer
            .as_ref()
            .map_or("", |init| init.task)
    }

    /// A worker failed its initializer: after too many in a row, the
    /// executor is broken with that reason.
    fn initializer_failed(&mut self, reason: String) {
        self.exits.failed_to_start += 1;
        self.init_failures += 1;
        let max = self
            .config
            .initializer
            .as_ref()
            .map_or(usize::MAX, |init| init.max_failures);
        tracing::error!(
            failures = self.init_failures,
            reason,
            "worker initializer failed"
        );
        if policy::initializer_breaks(self.init_failures, max) {
            let task = self.initializer_task();
            self.break_down(format!(
                "the initializer `{task}` failed in {} workers in a row; last: {reason}",
                self.init_failures
            ));
        } else {
            self.spawn_backoff_until = deadline(Instant::now(), SPAWN_BACKOFF);
        }
    }

    /// Reaps the workers that are gone: exited with their link closed
    /// (everything they sent is read), or that never connected.
    fn reap_ready(&mut self) {
        let ready: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| match &w.life {
                // A worker that never connected has no channel to drain.
                Life::Gone {
                    exited: true,
                    closed,
                    ..
                } => *closed || w.board.is_none(),
                _ => false,
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            let worker = self.workers.remove(&id).expect("listed above");
            self.reap(worker);
        }
    }

    /// Collects a dead worker's status (its group killed first), settles
    /// the calls it held by their claims, and counts its exit.
    fn reap(&mut self, worker: Worker<B::Worker>) {
        // An outcome a caller picks up from the reply box meanwhile goes to
        // nobody (the calls are settled here, the box read too), and puts
        // the worker on offer no more.
        worker.direct.clear();
        worker.direct.disarm();
        let Worker {
            handle,
            pid,
            life,
            board,
            inflight,
            ..
        } = worker;
        let cause = match life {
            Life::Gone { cause, .. } => cause,
            _ => unreachable!("only gone workers are reaped"),
        };
        if matches!(
            cause,
            Cause::DiedStarting | Cause::Killed(Kill::Handshake | Kill::Retired(_))
        ) {
            handle.abort_handshake();
        }
        let reason = handle.reap();
        let killed_for_another = matches!(cause, Cause::Killed(Kill::Timeout | Kill::Cancel));
        let mut blamed = false;
        let mut requeue = Vec::new();
        let retries = self.config.retries;
        // Outcomes it held back and never sent: those calls finished.
        let mut held_back = held_back(board.as_deref(), true);
        for mut held in inflight {
            if let Some(outcome) = held_back.remove(&held.seq) {
                complete(held, pid, outcome);
                continue;
            }
            // Settled by the worker's link already (its `Delivered` is on
            // its way), or cancelled by its caller: nothing to blame.
            if held.job.kind == CallKind::Single
                && held.fate.is_none()
                && held.job.completion.settled()
            {
                continue;
            }
            let state = board
                .as_ref()
                .map_or(ClaimState::Queued, |b| b.state(held.seq));
            let fated = held.fate.is_some();
            match policy::settle(state, killed_for_another && !fated) {
                Settle::Drop => {}
                Settle::Requeue
                    if held.job.kind == CallKind::Chunk && state == ClaimState::Started =>
                {
                    requeue.extend(self.split_chunk(held, pid, board.as_deref(), None));
                }
                Settle::Requeue => {
                    if let Some(board) = &board {
                        board.revoke(held.seq);
                    }
                    held.job.completion.detach();
                    requeue.push(held.job);
                }
                Settle::Blame => {
                    blamed = true;
                    let task = held.job.task();
                    // A death nobody asked for may be retried; a fate
                    // (timeout, cancel) or a kill on purpose may not.
                    let retry = (held.fate.is_none()
                        && matches!(cause, Cause::Unasked | Cause::Retired(_)))
                    .then_some(Attempt::died(pid, reason));
                    let error = match (&cause, &held.fate) {
                        (_, Some(fate)) => fate.clone(),
                        (Cause::Killed(Kill::Shutdown), None) => Error::ShutDown,
                        _ => {
                            tracing::warn!(pid, task, %reason, "worker died while running a task");
                            Error::WorkerDied {
                                task,
                                pid,
                                reason,
                                earlier: Vec::new(),
                            }
                        }
                    };
                    if held.job.kind == CallKind::Chunk {
                        let died = Died {
                            error,
                            retry,
                            retries,
                        };
                        requeue.extend(self.split_chunk(held, pid, board.as_deref(), Some(died)));
                    } else if let Some(attempt) = retry
                        && held.job.retry(attempt, retries)
                    {
                        tracing::info!(pid, task, "retrying a task whose worker died");
                        held.job.completion.detach();
                        requeue.push(held.job);
                    } else {
                        let error = held.job.with_attempts(error);
                        held.job.completion.fail(error);
                    }
                }
            }
        }
        match cause {
            Cause::DiedStarting => {
                self.exits.failed_to_start += 1;
                self.spawn_failed(SpawnError::ExitedEarly { pid, reason });
            }
            // Counted when its handshake failed.
            Cause::Killed(Kill::Handshake) => {}
            Cause::DiedInitializing => {
                let task = self.initializer_task();
                self.initializer_failed(format!(
                    "worker {pid} running the initializer `{task}` {reason}"
                ));
            }
            Cause::Killed(Kill::Timeout | Kill::Cancel) => self.exits.killed += 1,
            Cause::Killed(Kill::Shutdown) => self.exits.retired += 1,
            Cause::Retired(_) | Cause::Unasked if blamed => self.exits.crashed += 1,
            Cause::Retired(why) | Cause::Killed(Kill::Retired(why)) => match why {
                Retire::Idle => self.exits.idle += 1,
                Retire::MaxTasks => self.exits.max_tasks += 1,
                Retire::Memory => self.exits.memory += 1,
                Retire::Shrink | Retire::Shutdown => self.exits.retired += 1,
                // Counted when its initializer failed.
                Retire::InitFailed => {}
            },
            Cause::Unasked => {
                tracing::warn!(pid, %reason, "idle worker died");
                self.exits.crashed += 1;
            }
        }
        self.requeue(requeue);
    }

    /// Settles a chunk whose worker died in it: the outcomes it delivered
    /// (in messages or in the board's arena) are kept, the running element
    /// fails as `died` says (or, with no blame or a retry left, runs
    /// again), and the elements that never started come back as a job of
    /// their own.
    fn split_chunk(
        &mut self,
        held: InFlight,
        pid: u32,
        board: Option<&Board>,
        died: Option<Died>,
    ) -> Option<Job> {
        let InFlight { seq, mut job, .. } = held;
        if let Some(progress) = board.and_then(|b| b.chunk_progress(seq)) {
            job.pieces
                .receive(pid, progress.first, progress.count, progress.items);
            if job.pieces.received > 0 {
                // The element the attempts were about is settled.
                job.attempts.clear();
            }
            let elements: ChunkArgs = match protocol::decode(job.args.bytes()) {
                Ok(elements) => elements,
                Err(message) => {
                    job.completion.fail(Error::Broken {
                        reason: format!("a chunk's own arguments: {message}"),
                    });
                    return None;
                }
            };
            let started = usize::try_from(progress.started).unwrap_or(usize::MAX);
            let split = policy::chunk_split(elements.len(), job.pieces.received, started);
            let rest = match (split.running, died) {
                (Some(running), Some(died)) => {
                    if died.retried(&mut job) {
                        running
                    } else {
                        let error = job.with_attempts(died.error);
                        job.pieces.settled.push(Piece::Failed(error));
                        split.rest
                    }
                }
                (running, _) => running.unwrap_or(split.rest),
            };
            if rest >= elements.len() {
                job.completion.finish_chunk(job.pieces.settled);
                return None;
            }
            let remaining: ChunkArgs = elements[rest..].to_vec();
            match protocol::encode(&remaining).and_then(Payload::pack_args) {
                Ok(args) => job.args = args,
                Err(message) => {
                    job.completion.fail(Error::Broken {
                        reason: format!("re-encoding a chunk: {message}"),
                    });
                    return None;
                }
            }
            job.pieces.received = 0;
        } else if let Some(died) = died
            && !died.retried(&mut job)
        {
            // It died before it began the chunk's first element.
            let error = job.with_attempts(died.error);
            job.completion.fail(error);
            return None;
        }
        job.completion.detach();
        Some(job)
    }

    fn spawn_failed(&mut self, error: SpawnError) {
        tracing::error!(%error, "a worker failed to start");
        self.spawn_backoff_until = deadline(Instant::now(), SPAWN_BACKOFF);
        self.last_spawn_error = Some(error.clone());
        self.fill_pool = false;
        let any_alive = self.workers.values().any(Worker::is_active);
        if !any_alive {
            // Nobody can run the queue: tell its futures why.
            for job in self.queue.drain(..) {
                job.completion.fail(Error::Spawn(error.clone()));
            }
        }
    }

    fn check_timers(&mut self, now: Instant) {
        let idle_timeout = self.config.idle_limit().filter(|_| self.queue.is_empty());
        let mut expired = Vec::new();
        let mut idle = Vec::new();
        let mut late = Vec::new();
        for (&id, worker) in &mut self.workers {
            match &mut worker.life {
                Life::Starting { deadline: Some(at) } if now >= *at => {
                    late.push((id, worker.pid));
                }
                Life::Serving { .. } | Life::Leaving { .. } => {
                    let head = worker.inflight.front();
                    if let Some(timeout) = head.and_then(|h| h.job.timeout)
                        && deadline(worker.head_since, timeout).is_some_and(|at| now >= at)
                    {
                        expired.push((id, timeout));
                    }
                    if let Some(after) = idle_timeout.filter(|_| worker.is_idle())
                        && deadline(worker.idle_since, after).is_some_and(|at| now >= at)
                    {
                        idle.push(id);
                    }
                }
                Life::Killed { escalate_at, .. } if escalate_at.is_some_and(|at| now >= at) => {
                    worker.handle.signal(libc::SIGKILL);
                    *escalate_at = None;
                }
                Life::Gone {
                    closed: true,
                    exited: false,
                    since,
                    forced,
                    ..
                } if !*forced && deadline(*since, CLOSED_GRACE).is_some_and(|at| now >= at) => {
                    // Its link closed but it lives on: make sure.
                    worker.handle.signal(libc::SIGKILL);
                    *forced = true;
                }
                Life::Gone {
                    closed: false,
                    exited: true,
                    retell_at,
                    retold,
                    since,
                    ..
                } if retell_at.is_some_and(|at| now >= at) => {
                    // Exited, and its link still open: what closes it may
                    // have been lost on its way.
                    worker.handle.retell_exit();
                    *retell_at = deadline(now, RETELL_AFTER);
                    *retold += 1;
                    if *retold == RETELLS_BEFORE_WARNING {
                        tracing::warn!(
                            pid = worker.pid,
                            waited = ?now.saturating_duration_since(*since),
                            "a worker exited and what it sent is still not all read: the \
                             results thread is held (a done-callback that does not return, \
                             or a message whose rest never comes); it is reaped once read"
                        );
                    }
                }
                _ => {}
            }
        }
        for (id, timeout) in expired {
            let worker = self.workers.get_mut(&id).expect("listed above");
            let head = worker.inflight.front_mut().expect("it has a head");
            let task = head.job.task();
            let pid = worker.pid;
            tracing::warn!(pid, task, ?timeout, "task timed out: killing its worker");
            let error = Error::TaskTimeout { task, pid, timeout };
            if head.job.kind == CallKind::Single {
                head.job.completion.fail(error.clone());
            }
            head.fate = Some(error);
            self.kill_worker(id, Kill::Timeout, libc::SIGKILL);
        }
        for id in idle {
            self.retire(id, Retire::Idle);
        }
        for (id, pid) in late {
            let timeout = self.config.handshake_timeout;
            self.handshake_failed(id, SpawnError::HandshakeTimeout { pid, timeout });
        }
    }

    /// Sends queued jobs to workers with room, gives idle workers the jobs
    /// busy ones have not started, starts workers as needed, and tells
    /// leaving workers to exit once they are done.
    fn dispatch(&mut self) {
        loop {
            // Calls that could not be sent failed, and left their worker
            // free: it takes the next ones now.
            if self.send_queued() {
                continue;
            }
            if !self.queue.is_empty() || !self.steal() {
                break;
            }
        }
        self.spawn_as_needed();
        if self.shutdown.is_some() && self.queue.is_empty() {
            let ids: Vec<u64> = self.workers.keys().copied().collect();
            for id in ids {
                self.retire(id, Retire::Shutdown);
            }
        }
        for worker in self.workers.values_mut() {
            if let Life::Leaving { calls, why } = &worker.life
                && worker.inflight.is_empty()
                && worker.lent.is_none()
            {
                // If the send fails the worker is gone already.
                let _ = calls.send(ToWorker::Shutdown);
                worker.life = Life::Told { why: *why };
            }
        }
    }

    /// Gives queued jobs to workers and sends them; true if some could not
    /// be sent (they failed).
    fn send_queued(&mut self) -> bool {
        let max_tasks = self.config.max_tasks_per_child;
        let starting = self.workers.values().filter(|w| w.is_starting()).count();
        // Workers that may still be started take jobs before anyone
        // prefetches them: the pool grows instead of queueing behind a
        // busy worker.
        let room = if self.broken.is_some() || self.shutdown.is_some_and(|r| r.kills()) {
            0
        } else {
            self.config.max_workers.saturating_sub(self.workers.len())
        };
        let incoming = starting.saturating_add(room);
        let depth = policy::prefetch_depth(self.config.prefetch, self.mean_call);
        while !self.queue.is_empty() {
            let limit = policy::hold_limit(self.queue.len(), incoming, depth);
            let candidates = self
                .workers
                .iter()
                .filter(|(_, w)| w.can_take(limit, max_tasks))
                .map(|(&id, w)| (id, w.inflight.len()));
            let Some(target) = policy::pick_worker(candidates) else {
                break;
            };
            let job = self.queue.pop_front().expect("not empty");
            if job.completion.cancelled() {
                // Cancelled while queued: its future is settled.
                continue;
            }
            let worker = self.workers.get_mut(&target).expect("picked above");
            give(worker, job, max_tasks);
        }
        self.send_given()
    }

    /// Sends each worker the calls given to it in this step, in one
    /// message. If that fails the worker is dead or dying: it is killed to
    /// be sure, and its watchers say when it is gone. Until its link
    /// closed it is not reaped (outcomes it sent before dying may still be
    /// unread); then the calls still queued on its board run elsewhere.
    fn send_given(&mut self) -> bool {
        let mut failed_some = false;
        for worker in self.workers.values_mut() {
            if worker.unsent.is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut worker.unsent);
            let (Some(calls), Some(board)) = (worker.calls().cloned(), worker.board.clone()) else {
                tracing::debug!(
                    pid = worker.pid,
                    "a worker that takes no calls was given some"
                );
                worker.handle.signal(libc::SIGKILL);
                continue;
            };
            // Few messages, each within the descriptors one may carry.
            let mut messages = protocol::split_by_descriptors(batch).into_iter();
            let failed = messages.by_ref().find_map(|message| {
                let seqs: Vec<u64> = message.iter().map(|call| call.seq).collect();
                calls
                    .send_calls(&board, message)
                    .err()
                    .map(|error| (error, seqs))
            });
            match failed {
                None => {}
                Some((SendError::Gone(error), _)) => {
                    tracing::debug!(pid = worker.pid, %error, "send to worker failed");
                    worker.handle.signal(libc::SIGKILL);
                }
                Some((SendError::Unsendable(why), mut seqs)) => {
                    seqs.extend(messages.flatten().map(|call| call.seq));
                    fail_unsendable(worker, &board, &seqs, &why);
                    failed_some = true;
                }
            }
        }
        failed_some
    }

    /// When a worker is idle and nothing is queued, takes back the newest
    /// unstarted call of the busiest worker so that the idle one runs it.
    /// True if a call was taken back.
    fn steal(&mut self) -> bool {
        let max_tasks = self.config.max_tasks_per_child;
        if !self
            .workers
            .values()
            .any(|w| w.is_idle() && w.can_take(1, max_tasks))
        {
            return false;
        }
        let busy = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.life, Life::Serving { .. } | Life::Leaving { .. }))
            .map(|(&id, w)| (id, w.inflight.len().saturating_sub(1)));
        let Some(victim) = policy::steal_from(busy) else {
            return false;
        };
        let worker = self.workers.get_mut(&victim).expect("picked above");
        let board = worker.board.clone().expect("filtered above");
        let newest = worker.inflight.back().expect("it has waiting calls");
        if !board.revoke(newest.seq) {
            // It started meanwhile (its predecessors finished).
            return false;
        }
        let held = worker.inflight.pop_back().expect("checked above");
        worker.direct.forget(held.seq);
        held.job.completion.detach();
        self.queue.push_back(held.job);
        true
    }

    /// Starts workers while queued jobs outnumber the workers that could
    /// take them (or all of them, after `start_workers`), up to
    /// `max_workers`.
    fn spawn_as_needed(&mut self) {
        if self.broken.is_some()
            || self.spawn_backoff_until.is_some_and(|t| Instant::now() < t)
            || self
                .shutdown
                .is_some_and(|request| request.kills() || self.queue.is_empty())
        {
            return;
        }
        let starting = self.workers.values().filter(|w| w.is_starting()).count();
        // Calls a busy worker holds and has not started are demand too:
        // prefetched while dead workers still counted against the limit,
        // they would otherwise wait behind a long call once room appears.
        // A new worker takes them back as soon as it is idle.
        let held: usize = self
            .workers
            .values()
            .filter(|w| w.is_up())
            .map(|w| w.inflight.len().saturating_sub(1))
            .sum();
        let wanted = policy::spawn_count(
            self.queue.len().saturating_add(held),
            starting,
            self.workers.len(),
            self.config.max_workers,
            self.fill_pool,
        );
        self.fill_pool = false;
        for _ in 0..wanted {
            let id = self.next_worker;
            self.next_worker += 1;
            let events = self.events_tx.clone();
            let shared = Arc::clone(&self.shared);
            let executor = self.shared.lending.key();
            let direct = Arc::new(Direct::new(executor, move |routed| match routed {
                Routed::Event(event) => events.send(Event::Worker(id, event)).is_ok(),
                Routed::DeliveredAll(seqs) => {
                    shared.lending.delivering(seqs.len());
                    events.send(Event::DeliveredAll(id, seqs)).is_ok()
                }
                Routed::Delivered { seq, encore, quiet } => {
                    // Counted as coming only when sent: one told for the
                    // next step comes with its worker on offer already.
                    match encore {
                        None => {
                            shared.lending.delivering(1);
                            events.send(Event::Delivered(id, seq, None)).is_ok()
                        }
                        // A caller put the worker on offer again: if the
                        // call's `Lent` waited for the manager's next step,
                        // so may this (the manager has nothing to do).
                        Some(ticket) => shared.lending.offer_announced(ticket, |encore| {
                            let delivered = Event::Delivered(id, seq, Some(encore));
                            let untold = if quiet {
                                shared.lending.tell_later(delivered)
                            } else {
                                Some(delivered)
                            };
                            match untold {
                                None => Some(true),
                                Some(delivered) => {
                                    shared.lending.delivering(1);
                                    events.send(delivered).is_ok().then_some(false)
                                }
                            }
                        }),
                    }
                }
            }));
            let link_direct = Arc::clone(&direct);
            // Runs on the results thread: an expected outcome settles
            // its future there, and the manager hears only that it did.
            let notify: Notify = Box::new(move |event| link_direct.deliver(event));
            match self.backend.spawn(&self.config, notify) {
                Ok(handle) => {
                    let pid = handle.pid();
                    let deadline = deadline(Instant::now(), self.config.handshake_timeout);
                    let worker = Worker::new(handle, pid, deadline, direct);
                    self.workers.insert(id, worker);
                    self.started += 1;
                }
                Err(error) => {
                    self.exits.failed_to_start += 1;
                    self.spawn_failed(error);
                    return;
                }
            }
        }
    }

    fn finished(&self) -> bool {
        self.shutdown.is_some() && self.queue.is_empty() && self.workers.is_empty()
    }
}

/// Fails the jobs of the calls lent among `events`, which the manager will
/// never handle, with `error`.
fn fail_lent(events: impl IntoIterator<Item = Event>, error: &Error) {
    for event in events {
        if let Event::Lent { job, .. } = event {
            job.completion.fail(error.clone());
        }
    }
}

/// Lets the callers who pick up the last call `worker` holds put it on
/// offer again, each under a call number it takes itself, until the
/// manager withdraws that leave.
fn arm_encore<W>(id: u64, worker: &mut Worker<W>, calls: &crate::host::Calls) {
    worker.direct.arm(|| direct::Encore {
        worker: id,
        calls: calls.clone(),
    });
}

/// Gives a job to a worker that can take it: claimed on its board, held,
/// and sent with the step's other calls to it (`send_given`).
fn give<W>(worker: &mut Worker<W>, job: Job, max_tasks: Option<usize>) {
    // A worker the manager feeds is nobody's to offer again.
    worker.direct.disarm();
    let board = worker.board.clone().expect("a serving worker has a board");
    let seq = worker.direct.take_seq();
    board.queue(seq);
    let pickup = (job.kind == CallKind::Single)
        .then(|| Arc::clone(&worker.direct) as Arc<dyn crate::job::Pickup>);
    if !job.completion.attach(Claim::Board {
        board: Arc::clone(&board),
        seq,
        pickup,
    }) {
        // Cancelled just now: it never runs.
        board.revoke(seq);
        return;
    }
    if job.kind == CallKind::Single {
        worker.direct.expect(seq, Arc::clone(&job.completion));
    }
    worker.unsent.push(Call {
        seq,
        task: job.task().to_owned(),
        kind: job.kind,
        args: job.args.clone(),
        regions: job.regions.clone(),
    });
    worker.hold(seq, job, max_tasks);
}

/// The outcomes a worker holds back on its board's outbox, and the one in
/// its reply box if it is `dead`, by call: calls that finished, whatever
/// becomes of the worker. A dead worker's box is read even while a caller
/// delivers it (a future settles once).
fn held_back(board: Option<&Board>, dead: bool) -> std::collections::HashMap<u64, Outcome> {
    let Some(board) = board else {
        return std::collections::HashMap::new();
    };
    let mut records = board.outbox_records();
    // The outcome in a dead worker's reply box, which its caller may not
    // have taken. A live one's stays for its caller, or for the reap: its
    // call may not be known here yet (a `Lent` still on its way).
    if dead {
        records.extend(board.dead_reply().unwrap_or_default());
    }
    protocol::settled_outcomes(&records).0.into_iter().collect()
}

/// Fails worker's calls `seqs`, which could not be sent (`why`): taken
/// back from its board and its queue, their futures failed, the worker
/// left as it is.
fn fail_unsendable<W>(worker: &mut Worker<W>, board: &Board, seqs: &[u64], why: &str) {
    tracing::warn!(pid = worker.pid, why, "calls that could not be sent fail");
    for &seq in seqs {
        board.revoke(seq);
        worker.direct.forget(seq);
        let Some(at) = worker.inflight.iter().position(|held| held.seq == seq) else {
            continue;
        };
        let held = worker.inflight.remove(at).expect("found above");
        let task = held.job.task();
        held.job.completion.fail(Error::Serialization {
            task,
            stage: loky_worker::protocol::Stage::EncodeArgs,
            message: format!("the call could not be sent to its worker: {why}"),
        });
    }
    worker.advance(Instant::now());
}

/// Completes a call its worker finished.
fn complete(held: InFlight, pid: u32, outcome: Outcome) {
    let InFlight { mut job, fate, .. } = held;
    match (job.kind, outcome) {
        // Failed already when it timed out, as it finished.
        (CallKind::Single, _) if fate.is_some() => {}
        (CallKind::Single, outcome) => job.completion.finish_remote(pid, outcome),
        (CallKind::Chunk, Outcome::Returned(payload)) => {
            // The outcomes the worker had not sent yet: all of them are
            // known, even if it timed out as it finished.
            // As many as the elements of this attempt not received yet.
            let bytes = payload.bytes().to_vec();
            let piece = match protocol::chunk_args_len(job.args.bytes()) {
                Some(elements) => Piece::Items {
                    pid,
                    skip: 0,
                    count: elements.saturating_sub(job.pieces.received),
                    bytes,
                },
                None => Piece::counting(pid, 0, bytes),
            };
            job.pieces.settled.push(piece);
            job.completion.finish_chunk(job.pieces.settled);
        }
        (CallKind::Chunk, Outcome::Failed(failure)) => {
            let task = job.task();
            job.completion
                .fail(Error::from_failure(task, Some(pid), failure));
        }
    }
}

impl<W> Worker<W> {
    /// The running call finished (or was dropped): the next one runs now.
    fn advance(&mut self, now: Instant) {
        if self.inflight.is_empty() {
            self.idle_since = now;
        } else {
            self.head_since = now;
        }
    }
}

/// How a call's worker died under it, for [`Manager::split_chunk`].
struct Died {
    /// The call's error if it is not run again.
    error: Error,
    /// The attempt to record, if the death allows a retry.
    retry: Option<Attempt>,
    /// The executor's default budget.
    retries: u32,
}

impl Died {
    /// Whether `job` runs again (the attempt recorded).
    fn retried(&self, job: &mut Job) -> bool {
        self.retry
            .clone()
            .is_some_and(|attempt| job.retry(attempt, self.retries))
    }
}
