//! The manager: the one thread that owns an executor's workers and its queue
//! of pending jobs. See `README.md` beside this file for its states.

mod worker;

use crate::config::Config;
use crate::error::{Error, ExitReason, SpawnError};
use crate::job::Job;
use crate::process::{self, WorkerEvent};
use crate::shared::Shared;
use crate::stats::{Stats, WorkerExits};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use loky_worker::protocol::{Call, CallKind, FromWorker, Outcome, Payload, ToWorker};
use std::collections::{BTreeMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{Retire, Worker, WorkerState};

/// Everything the manager reacts to.
pub(crate) enum Event {
    /// A job to run.
    Submit(Job),
    /// Stop: finish or cancel the queue, then stop the workers.
    Shutdown(ShutdownRequest),
    /// News from a worker's link thread.
    Worker(u64, WorkerEvent),
    /// Asks for the pids of the live workers.
    Pids(Sender<Vec<u32>>),
    /// The future of this job was cancelled while it was running (or sent
    /// to a worker): kill the worker if it runs it.
    Cancel(u64),
    /// A new `max_workers`.
    Resize(usize),
    /// Start every worker now; answer once none is starting.
    StartWorkers(Sender<Result<(), Error>>),
    /// Asks for a snapshot of the workers and the queue.
    Stats(Sender<Stats>),
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
    /// The stronger of two requests.
    fn merge(self, other: ShutdownRequest) -> ShutdownRequest {
        let kill = match (self.kill, other.kill) {
            (Some(libc::SIGKILL), _) | (_, Some(libc::SIGKILL)) => Some(libc::SIGKILL),
            (Some(signal), _) | (None, Some(signal)) => Some(signal),
            (None, None) => None,
        };
        ShutdownRequest {
            cancel_futures: self.cancel_futures || other.cancel_futures,
            kill,
        }
    }

    fn kills(&self) -> bool {
        self.kill.is_some()
    }
}

/// How long a worker whose channel closed may take to exit before it is
/// killed.
const CLOSED_GRACE: Duration = Duration::from_secs(1);
/// How often starting workers are checked for an early death.
const STARTING_POLL: Duration = Duration::from_millis(5);
/// How long to wait before trying again after a worker failed to start.
const SPAWN_BACKOFF: Duration = Duration::from_millis(50);

/// Runs the manager loop until the executor is shut down and every worker
/// is gone.
pub(crate) fn run(
    config: Config,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    shared: Arc<Shared>,
) {
    // RandomState is keyed from the OS's randomness: no other process can
    // guess the secret that lets a worker in.
    let secret = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        (std::process::id(), Instant::now()),
    );
    Manager {
        config,
        secret,
        events,
        events_tx,
        shared,
        queue: VecDeque::new(),
        workers: BTreeMap::new(),
        next_worker: 0,
        shutdown: None,
        spawn_backoff_until: None,
        last_spawn_error: None,
        broken: None,
        fill_pool: false,
        start_waiters: Vec::new(),
        started: 0,
        exits: WorkerExits::default(),
        init_failures: 0,
        next_init_call: u64::MAX,
    }
    .run();
}

struct Manager {
    config: Config,
    secret: u64,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    shared: Arc<Shared>,
    /// Jobs not yet sent to a worker, oldest first.
    queue: VecDeque<Job>,
    workers: BTreeMap<u64, Worker>,
    next_worker: u64,
    shutdown: Option<ShutdownRequest>,
    spawn_backoff_until: Option<Instant>,
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
    /// Ids for initializer calls, counting down: never a job's id.
    next_init_call: u64,
}

impl Manager {
    fn run(mut self) {
        loop {
            match panic::catch_unwind(AssertUnwindSafe(|| self.step())) {
                Ok(true) => {}
                Ok(false) => return,
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
        match event {
            Ok(event) => self.handle(event),
            Err(RecvTimeoutError::Timeout) => {}
            // Unreachable: this thread holds a sender itself.
            Err(RecvTimeoutError::Disconnected) => return false,
        }
        while let Ok(event) = self.events.try_recv() {
            self.handle(event);
        }
        self.check_timers(Instant::now());
        self.dispatch();
        self.answer_start_waiters();
        !self.finished()
    }

    /// Stops for good without losing anything: every job fails with
    /// `Error::Broken`, every worker is killed and reaped, and later
    /// submissions fail the same way.
    fn break_down(&mut self, reason: String) {
        tracing::error!(reason, "executor broken");
        self.shared.set_broken(reason.clone());
        let error = Error::Broken { reason };
        for job in self.queue.drain(..) {
            job.completion.fail(error.clone());
        }
        for (_, mut worker) in std::mem::take(&mut self.workers) {
            for job in worker.inflight.drain(..) {
                job.completion.fail(error.clone());
            }
            worker.process.kill();
            if worker.is_starting() {
                worker.process.abort_handshake();
            }
            let _ = worker.process.child.wait();
        }
        self.broken = Some(error);
        self.answer_start_waiters();
    }

    /// How long the loop may sleep without missing a timer.
    fn next_wakeup(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Instant> = self.spawn_backoff_until.filter(|_| !self.queue.is_empty());
        let mut earliest = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        let idle_timeout = self.config.get_idle_timeout();
        for worker in self.workers.values() {
            match worker.state {
                WorkerState::Starting { deadline } => earliest(deadline.min(now + STARTING_POLL)),
                WorkerState::Closed {
                    since,
                    killed: false,
                } => earliest(since + CLOSED_GRACE),
                WorkerState::Closed { killed: true, .. } => {}
                WorkerState::Ready(_) => {
                    if let Some(timeout) = worker.inflight.front().and_then(|job| job.timeout) {
                        earliest(worker.head_since + timeout);
                    }
                    if let Some(idle) = idle_timeout.filter(|_| worker.is_active()) {
                        if worker.is_idle() {
                            earliest(worker.idle_since + idle);
                        }
                    }
                }
            }
            if let Some(at) = worker.escalate_at {
                earliest(at);
            }
        }
        next.map(|at| at.saturating_duration_since(now))
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
            Event::Pids(reply) => {
                let _ = reply.send(self.workers.values().map(|w| w.process.pid).collect());
            }
            Event::Cancel(job) => self.cancel_running(job),
            Event::Resize(max_workers) => {
                self.config = self.config.clone().max_workers(max_workers);
                self.shrink();
            }
            Event::StartWorkers(reply) => {
                self.start_waiters.push(reply);
                self.fill_pool = true;
                self.last_spawn_error = None;
            }
            Event::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            workers: self.workers.len(),
            pending: self.queue.len(),
            running: self.workers.values().map(|w| w.inflight.len()).sum(),
            started: self.started,
            exits: self.exits.clone(),
            ..Stats::default()
        }
    }

    /// Answers `start_workers` callers once no worker is starting.
    fn answer_start_waiters(&mut self) {
        if self.start_waiters.is_empty() || self.workers.values().any(Worker::is_starting) {
            return;
        }
        let ready = self.workers.values().filter(|w| w.is_ready()).count();
        let answer = match (&self.broken, &self.last_spawn_error) {
            (Some(error), _) => Err(error.clone()),
            (None, Some(error)) if ready < self.config.get_max_workers() => {
                Err(Error::Spawn(error.clone()))
            }
            _ if self.shutdown.is_some() => Err(Error::ShutDown),
            _ => Ok(()),
        };
        for waiter in self.start_waiters.drain(..) {
            let _ = waiter.send(answer.clone());
        }
    }

    /// Kills the worker that runs `job`, whose future was just cancelled.
    /// If the job waits behind another in the worker's channel, the worker
    /// is killed when it reaches it (see `Worker::advance`).
    fn cancel_running(&mut self, job: u64) {
        let running = self
            .workers
            .values_mut()
            .find(|w| w.inflight.front().is_some_and(|head| head.id == job));
        if let Some(worker) = running {
            worker.doom(None);
        }
    }

    /// Retires workers beyond `max_workers`: idle or starting ones first,
    /// then busy ones, which leave once they have finished their jobs.
    fn shrink(&mut self) {
        let max = self.config.get_max_workers();
        let mut active: Vec<(u64, usize)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.is_active())
            .map(|(&id, w)| {
                let busy = if w.is_starting() {
                    0
                } else if w.is_idle() {
                    1
                } else {
                    2
                };
                (id, busy)
            })
            .collect();
        let surplus = active.len().saturating_sub(max);
        // Least busy first; among equals, the newest first, so the oldest
        // workers survive.
        active.sort_by_key(|&(id, busy)| (busy, std::cmp::Reverse(id)));
        for &(id, _) in active.iter().take(surplus) {
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.retire(Retire::Shrink);
            }
        }
    }

    fn shut_down(&mut self, request: ShutdownRequest) {
        let merged = self.shutdown.unwrap_or_default().merge(request);
        self.shutdown = Some(merged);
        if merged.cancel_futures {
            for job in self.queue.drain(..) {
                job.completion.cancel();
            }
        }
        if let Some(signal) = merged.kill {
            for job in self.queue.drain(..) {
                job.completion.fail(Error::ShutDown);
            }
            let now = Instant::now();
            for worker in self.workers.values_mut() {
                worker.retire(Retire::Shutdown);
                let mut inflight = worker.inflight.drain(..);
                let running = if worker.doomed { None } else { inflight.next() };
                if let Some(job) = running {
                    job.completion.fail(Error::ShutDown);
                }
                // Never started: cancelled if asked, like queued ones.
                for job in inflight {
                    job.completion.set_pending();
                    if !merged.cancel_futures || !job.completion.cancel() {
                        job.completion.fail(Error::ShutDown);
                    }
                }
                if worker.is_starting() {
                    // No user code runs yet: nothing to be gentle with.
                    worker.process.kill();
                    worker.process.abort_handshake();
                    worker.told_to_exit = true;
                } else {
                    worker.process.signal(signal);
                    if signal != libc::SIGKILL && worker.escalate_at.is_none() {
                        worker.escalate_at = Some(now + CLOSED_GRACE);
                    }
                }
            }
        }
    }

    fn worker_event(&mut self, id: u64, event: WorkerEvent) {
        let Some(worker) = self.workers.get_mut(&id) else {
            // A worker already given up on (failed handshake, early exit).
            return;
        };
        match event {
            WorkerEvent::Ready(Ok(calls)) => {
                if worker.is_starting() {
                    worker.state = WorkerState::Ready(calls);
                    worker.idle_since = Instant::now();
                    self.spawn_backoff_until = None;
                    self.initialize(id);
                }
            }
            WorkerEvent::Ready(Err(error)) => {
                let mut worker = self.workers.remove(&id).expect("present above");
                worker.process.kill();
                let _ = worker.process.child.wait();
                self.exits.failed_to_start += 1;
                self.spawn_failed(error);
            }
            WorkerEvent::Message(FromWorker::Done {
                id: call_id,
                outcome,
            }) if worker.initializing == Some(call_id) => {
                worker.initializing = None;
                worker.idle_since = Instant::now();
                let pid = worker.process.pid;
                match outcome {
                    Outcome::Returned(_) => self.init_failures = 0,
                    Outcome::Failed(failure) => {
                        worker.retire(Retire::InitFailed);
                        let task = self.initializer_task();
                        let error = Error::from_failure(task, Some(pid), failure);
                        self.initializer_failed(error.to_string());
                    }
                }
            }
            WorkerEvent::Message(FromWorker::Done {
                id: job_id,
                outcome,
            }) => {
                let position = worker.inflight.iter().position(|job| job.id == job_id);
                if let Some(job) = position.and_then(|p| worker.inflight.remove(p)) {
                    job.completion.finish_remote(worker.process.pid, outcome);
                    if position == Some(0) {
                        worker.advance(Instant::now());
                    }
                }
            }
            WorkerEvent::Message(FromWorker::Retire(reason)) => {
                tracing::info!(
                    pid = worker.process.pid,
                    ?reason,
                    "worker over its memory limit: replacing it"
                );
                worker.retire(Retire::Memory);
            }
            WorkerEvent::Closed => {
                worker.state = WorkerState::Closed {
                    since: Instant::now(),
                    killed: false,
                };
            }
            WorkerEvent::Exited => {
                let mut worker = self.workers.remove(&id).expect("present above");
                self.reap(&mut worker);
            }
        }
    }

    fn initializer_task(&self) -> &'static str {
        self.config.get_initializer().map_or("", |init| init.task)
    }

    /// Sends the initializer, if there is one, to a worker that just
    /// connected. It takes no job until it has run it.
    fn initialize(&mut self, id: u64) {
        let Some(init) = self.config.get_initializer() else {
            return;
        };
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        let WorkerState::Ready(calls) = &worker.state else {
            return;
        };
        let call_id = self.next_init_call;
        self.next_init_call -= 1;
        let args = init.args.clone().unwrap_or_default();
        let call = ToWorker::Call(Call {
            id: call_id,
            task: init.task.to_owned(),
            kind: CallKind::Single,
            args: Payload::pack_args(args),
        });
        if calls.send(call).is_ok() {
            worker.initializing = Some(call_id);
        }
    }

    /// A worker failed its initializer: after too many in a row, the
    /// executor is broken with that reason.
    fn initializer_failed(&mut self, reason: String) {
        self.exits.failed_to_start += 1;
        self.init_failures += 1;
        let max = self
            .config
            .get_initializer()
            .map_or(usize::MAX, |init| init.max_failures);
        tracing::error!(
            failures = self.init_failures,
            reason,
            "worker initializer failed"
        );
        if self.init_failures >= max {
            let task = self.initializer_task();
            self.break_down(format!(
                "the initializer `{task}` failed in {} workers in a row; last: {reason}",
                self.init_failures
            ));
        } else {
            self.spawn_backoff_until = Some(Instant::now() + SPAWN_BACKOFF);
        }
    }

    /// Collects a dead worker's status, fails the job it was running and
    /// requeues the ones it had not started.
    fn reap(&mut self, worker: &mut Worker) {
        let pid = worker.process.pid;
        // The worker is dead but not reaped, so its process group is still
        // ours: kill what its tasks started and left behind.
        worker.process.kill();
        let reason = match worker.process.child.wait() {
            Ok(status) => ExitReason::from_status(status),
            Err(error) => {
                tracing::error!(pid, %error, "could not reap worker");
                ExitReason::Code(-1)
            }
        };
        match (worker.doomed, worker.retiring) {
            (true, _) => self.exits.killed += 1,
            (false, Some(Retire::Idle)) => self.exits.idle += 1,
            (false, Some(Retire::MaxTasks)) => self.exits.max_tasks += 1,
            (false, Some(Retire::Memory)) => self.exits.memory += 1,
            (false, Some(Retire::Shrink | Retire::Shutdown)) => self.exits.retired += 1,
            // Counted when its initializer failed.
            (false, Some(Retire::InitFailed)) => {}
            (false, None) => self.exits.crashed += 1,
        }
        if worker.initializing.is_some() {
            let task = self.initializer_task();
            self.initializer_failed(format!(
                "worker {pid} running the initializer `{task}` {reason}"
            ));
        }
        let mut inflight = std::mem::take(&mut worker.inflight).into_iter();
        let running = if worker.doomed { None } else { inflight.next() };
        if let Some(running) = running {
            let task = running.task();
            tracing::warn!(pid, task, %reason, "worker died while running a task");
            running
                .completion
                .fail(Error::WorkerDied { task, pid, reason });
        } else if worker.retiring.is_none() && !worker.doomed {
            tracing::warn!(pid, %reason, "idle worker died");
        }
        for job in inflight.rev() {
            job.completion.set_pending();
            self.queue.push_front(job);
        }
    }

    fn spawn_failed(&mut self, error: SpawnError) {
        tracing::error!(%error, "a worker failed to start");
        self.spawn_backoff_until = Some(Instant::now() + SPAWN_BACKOFF);
        self.last_spawn_error = Some(error.clone());
        self.fill_pool = false;
        let any_alive = self
            .workers
            .values()
            .any(|w| w.is_starting() || w.is_ready());
        if !any_alive {
            // Nobody can run the queue: tell its futures why.
            for job in self.queue.drain(..) {
                job.completion.fail(Error::Spawn(error.clone()));
            }
        }
    }

    fn check_timers(&mut self, now: Instant) {
        let mut failed = Vec::new();
        let idle_timeout = self.config.get_idle_timeout();
        for (&id, worker) in &mut self.workers {
            match &mut worker.state {
                WorkerState::Starting { deadline } => {
                    let pid = worker.process.pid;
                    let error = match worker.process.child.try_wait() {
                        Ok(Some(status)) => Some(SpawnError::ExitedEarly {
                            pid,
                            reason: ExitReason::from_status(status),
                        }),
                        _ if now >= *deadline => {
                            worker.process.kill();
                            let _ = worker.process.child.wait();
                            Some(SpawnError::HandshakeTimeout {
                                pid,
                                timeout: self.config.get_handshake_timeout(),
                            })
                        }
                        _ => None,
                    };
                    if let Some(error) = error {
                        worker.process.abort_handshake();
                        failed.push((id, error));
                    }
                }
                WorkerState::Closed { since, killed } => {
                    if !*killed && now >= *since + CLOSED_GRACE {
                        // Its channel closed but it lives on: make sure.
                        worker.process.kill();
                        *killed = true;
                    }
                }
                WorkerState::Ready(_) => {
                    let expired = worker.inflight.front().and_then(|job| {
                        let timeout = job.timeout?;
                        (now >= worker.head_since + timeout).then_some((job.task(), timeout))
                    });
                    if let (false, Some((task, timeout))) = (worker.doomed, expired) {
                        let pid = worker.process.pid;
                        tracing::warn!(pid, task, ?timeout, "task timed out: killing its worker");
                        worker.doom(Some(Error::TimedOut { task, pid, timeout }));
                    }
                    if let Some(idle) = idle_timeout {
                        if worker.is_active() && worker.is_idle() && now >= worker.idle_since + idle
                        {
                            worker.retire(Retire::Idle);
                        }
                    }
                }
            }
            if worker.escalate_at.is_some_and(|at| now >= at) {
                worker.process.kill();
                worker.escalate_at = None;
            }
        }
        for (id, error) in failed {
            if let Some(mut worker) = self.workers.remove(&id) {
                // A worker that dies before its handshake ran nothing.
                for job in worker.inflight.drain(..).rev() {
                    job.completion.set_pending();
                    self.queue.push_front(job);
                }
            }
            self.exits.failed_to_start += 1;
            self.spawn_failed(error);
        }
    }

    /// Sends queued jobs to workers with room, starts workers as needed,
    /// and tells leaving workers to exit once they are done.
    fn dispatch(&mut self) {
        let capacity = 1 + self.config.get_prefetch();
        let max_tasks = self.config.get_max_tasks_per_child();
        let starting = self.workers.values().filter(|w| w.is_starting()).count();
        while !self.queue.is_empty() {
            // An idle worker first; a busy one's prefetch slots only for
            // jobs that the workers still starting will not take.
            let limit = if self.queue.len() > starting {
                capacity
            } else {
                1
            };
            let target = self
                .workers
                .iter()
                .filter(|(_, w)| w.can_take(limit, max_tasks))
                .min_by_key(|(_, w)| w.inflight.len())
                .map(|(&id, _)| id);
            let Some(target) = target else { break };
            let job = self.queue.pop_front().expect("not empty");
            if job.completion.cancelled() {
                // Cancelled while queued: its future is settled.
                continue;
            }
            let worker = self.workers.get_mut(&target).expect("picked above");
            let WorkerState::Ready(calls) = &worker.state else {
                unreachable!("picked a ready worker")
            };
            let call = ToWorker::Call(Call {
                id: job.id,
                task: job.task().to_owned(),
                kind: job.kind,
                args: job.args.clone(),
            });
            match calls.send(call) {
                Ok(()) => {
                    worker.inflight.push_back(job);
                    if worker.inflight.len() == 1 {
                        // It runs now; jobs behind it stay pending until
                        // the worker reaches them.
                        worker.start_head(Instant::now());
                    }
                    worker.sent += 1;
                    if max_tasks.is_some_and(|max| worker.sent >= max) {
                        worker.retire(Retire::MaxTasks);
                    }
                }
                Err(error) => {
                    // Not delivered: the worker is gone. Its link thread
                    // reports the exit; this job runs elsewhere.
                    tracing::debug!(pid = worker.process.pid, %error, "send to worker failed");
                    worker.state = WorkerState::Closed {
                        since: Instant::now(),
                        killed: false,
                    };
                    job.completion.set_pending();
                    self.queue.push_front(job);
                }
            }
        }
        self.spawn_as_needed();
        if self.shutdown.is_some() && self.queue.is_empty() {
            for worker in self.workers.values_mut() {
                worker.retire(Retire::Shutdown);
            }
        }
        for worker in self.workers.values_mut() {
            worker.tell_to_exit_if_drained();
        }
        // Starting workers that were killed will not report: reap them.
        let killed: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.told_to_exit && w.is_starting())
            .map(|(&id, _)| id)
            .collect();
        for id in killed {
            if let Some(mut worker) = self.workers.remove(&id) {
                let _ = worker.process.child.wait();
                self.exits.retired += 1;
            }
        }
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
        let active = self.workers.values().filter(|w| w.is_active()).count();
        let starting = self.workers.values().filter(|w| w.is_starting()).count();
        let room = self.config.get_max_workers().saturating_sub(active);
        let wanted = if self.fill_pool {
            room
        } else {
            self.queue.len().saturating_sub(starting)
        };
        self.fill_pool = false;
        for _ in 0..wanted.min(room) {
            let id = self.next_worker;
            self.next_worker += 1;
            match process::spawn(&self.config, self.secret, id, self.events_tx.clone()) {
                Ok(process) => {
                    let deadline = Instant::now() + self.config.get_handshake_timeout();
                    self.workers.insert(id, Worker::new(process, deadline));
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
