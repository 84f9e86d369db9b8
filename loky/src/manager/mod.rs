//! The manager: the one thread that owns an executor's workers and its queue
//! of pending jobs. See `README.md` beside this file for its states.

use crate::config::Config;
use crate::error::{Error, ExitReason, SpawnError};
use crate::job::Job;
use crate::process::{self, Process, WorkerEvent};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ipc_channel::ipc::IpcSender;
use loky_worker::protocol::{Call, FromWorker, ToWorker};
use std::collections::{BTreeMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

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
pub(crate) fn run(config: Config, events: Receiver<Event>, events_tx: Sender<Event>) {
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
        queue: VecDeque::new(),
        workers: BTreeMap::new(),
        next_worker: 0,
        shutdown: None,
        spawn_backoff_until: None,
        broken: None,
    }
    .run();
}

struct Manager {
    config: Config,
    secret: u64,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    /// Jobs not yet sent to a worker, oldest first.
    queue: VecDeque<Job>,
    workers: BTreeMap<u64, Worker>,
    next_worker: u64,
    shutdown: Option<ShutdownRequest>,
    spawn_backoff_until: Option<Instant>,
    /// Set after a panic in this thread: every job fails with it.
    broken: Option<Error>,
}

struct Worker {
    process: Process,
    state: WorkerState,
    /// Jobs sent to this worker, in the order it runs them: the first one
    /// is running, the others wait in its channel.
    inflight: VecDeque<Job>,
    /// When the first job in `inflight` started running.
    head_since: Instant,
    /// Asked to exit: its exit is not a crash.
    retiring: bool,
    /// Killed on purpose because of its running job (timed out or
    /// cancelled), which is already settled: the jobs left in `inflight`
    /// never ran.
    doomed: bool,
    /// Sent a gentle signal: kill it if it lives on past this instant.
    escalate_at: Option<Instant>,
}

enum WorkerState {
    /// Started; the handshake is not done.
    Starting { deadline: Instant },
    /// Connected: takes calls here.
    Ready(IpcSender<ToWorker>),
    /// Its channel closed; waiting for its exit status.
    Closed { since: Instant, killed: bool },
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
        {
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
            !self.finished()
        }
    }

    /// After a bug (a panic in this thread), stops for good without losing
    /// anything: every job fails with `Error::Broken`, every worker is
    /// killed and reaped, and later submissions fail the same way.
    fn break_down(&mut self, reason: String) {
        tracing::error!(reason, "executor broken");
        let error = Error::Broken { reason };
        for job in self.queue.drain(..) {
            job.completion.fail(error.clone());
        }
        for (_, mut worker) in std::mem::take(&mut self.workers) {
            for job in worker.inflight.drain(..) {
                job.completion.fail(error.clone());
            }
            worker.process.kill();
            if let WorkerState::Starting { .. } = worker.state {
                worker.process.abort_handshake();
            }
            let _ = worker.process.child.wait();
        }
        self.broken = Some(error);
    }

    /// How long the loop may sleep without missing a timer.
    fn next_wakeup(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Instant> = self.spawn_backoff_until.filter(|_| !self.queue.is_empty());
        let mut earliest = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
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
        }
    }

    /// Kills the worker that runs `job`, whose future was just cancelled.
    /// If the job waits behind another in the worker's channel, the worker
    /// is killed when it reaches it (see `advance`).
    fn cancel_running(&mut self, job: u64) {
        let running = self
            .workers
            .values_mut()
            .find(|w| w.inflight.front().is_some_and(|head| head.id == job));
        if let Some(worker) = running {
            worker.doom(None);
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
                worker.retiring = true;
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
                if let WorkerState::Starting { .. } = worker.state {
                    // No user code runs yet: nothing to be gentle with.
                    worker.process.kill();
                    worker.process.abort_handshake();
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
                if let WorkerState::Starting { .. } = worker.state {
                    worker.state = WorkerState::Ready(calls);
                    self.spawn_backoff_until = None;
                }
            }
            WorkerEvent::Ready(Err(error)) => {
                let mut worker = self.workers.remove(&id).expect("present above");
                worker.process.kill();
                let _ = worker.process.child.wait();
                self.spawn_failed(error);
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
        let mut inflight = std::mem::take(&mut worker.inflight).into_iter();
        let running = if worker.doomed { None } else { inflight.next() };
        if let Some(running) = running {
            let task = running.task();
            tracing::warn!(pid, task, %reason, "worker died while running a task");
            running
                .completion
                .fail(Error::WorkerDied { task, pid, reason });
        } else if !worker.retiring && !worker.doomed {
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
        let any_alive = self.workers.values().any(|w| {
            matches!(
                w.state,
                WorkerState::Starting { .. } | WorkerState::Ready(_)
            )
        });
        if !any_alive {
            // Nobody can run the queue: tell its futures why.
            for job in self.queue.drain(..) {
                job.completion.fail(Error::Spawn(error.clone()));
            }
        }
    }

    fn check_timers(&mut self, now: Instant) {
        let mut failed = Vec::new();
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
            self.spawn_failed(error);
        }
    }

    /// Sends queued jobs to workers with room, and starts workers as needed.
    fn dispatch(&mut self) {
        let capacity = 1 + self.config.get_prefetch();
        let starting = self
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Starting { .. }))
            .count();
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
                .filter(|(_, w)| !w.retiring && !w.doomed && w.inflight.len() < limit)
                .filter(|(_, w)| matches!(w.state, WorkerState::Ready(_)))
                .min_by_key(|(_, w)| w.inflight.len())
                .map(|(&id, _)| id);
            let Some(target) = target else { break };
            let job = self.queue.pop_front().expect("not empty");
            if !job.completion.set_running() {
                // Cancelled while queued.
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
                    if worker.inflight.is_empty() {
                        worker.head_since = Instant::now();
                    }
                    worker.inflight.push_back(job);
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
        self.retire_if_done();
    }

    /// Starts workers while queued jobs outnumber the workers that could
    /// take them, up to `max_workers`.
    fn spawn_as_needed(&mut self) {
        if self.queue.is_empty()
            || self.broken.is_some()
            || self.spawn_backoff_until.is_some_and(|t| Instant::now() < t)
            || self.shutdown.is_some_and(|request| request.kills())
        {
            return;
        }
        let alive = self
            .workers
            .values()
            .filter(|w| !w.retiring && !w.doomed && !matches!(w.state, WorkerState::Closed { .. }))
            .count();
        let starting = self
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Starting { .. }))
            .count();
        let wanted = self.queue.len().saturating_sub(starting);
        let room = self.config.get_max_workers().saturating_sub(alive);
        for _ in 0..wanted.min(room) {
            let id = self.next_worker;
            self.next_worker += 1;
            match process::spawn(&self.config, self.secret, id, self.events_tx.clone()) {
                Ok(process) => {
                    let deadline = Instant::now() + self.config.get_handshake_timeout();
                    self.workers.insert(
                        id,
                        Worker {
                            process,
                            state: WorkerState::Starting { deadline },
                            inflight: VecDeque::new(),
                            head_since: Instant::now(),
                            retiring: false,
                            doomed: false,
                            escalate_at: None,
                        },
                    );
                }
                Err(error) => {
                    self.spawn_failed(error);
                    return;
                }
            }
        }
    }

    /// During a shutdown, once no job is left, asks idle workers to exit.
    fn retire_if_done(&mut self) {
        if self.shutdown.is_none() || !self.queue.is_empty() {
            return;
        }
        for worker in self.workers.values_mut() {
            if !worker.inflight.is_empty() {
                continue;
            }
            match &worker.state {
                WorkerState::Ready(calls) if !worker.retiring => {
                    worker.retiring = true;
                    // If the send fails the worker is gone already.
                    let _ = calls.send(ToWorker::Shutdown);
                }
                WorkerState::Starting { .. } if !worker.retiring => {
                    worker.retiring = true;
                    worker.process.kill();
                    worker.process.abort_handshake();
                }
                _ => {}
            }
        }
        // Starting workers that were killed will not report: reap them.
        let killed: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.retiring && matches!(w.state, WorkerState::Starting { .. }))
            .map(|(&id, _)| id)
            .collect();
        for id in killed {
            if let Some(mut worker) = self.workers.remove(&id) {
                let _ = worker.process.child.wait();
            }
        }
    }

    fn finished(&self) -> bool {
        self.shutdown.is_some() && self.queue.is_empty() && self.workers.is_empty()
    }
}

impl Worker {
    /// The running job finished: the next one in `inflight` starts now. If
    /// its future was cancelled meanwhile, the worker is killed at once.
    fn advance(&mut self, now: Instant) {
        self.head_since = now;
        if self
            .inflight
            .front()
            .is_some_and(|job| job.completion.cancelled())
        {
            self.doom(None);
        }
    }

    /// Kills this worker because of its running job, which fails with
    /// `error` (or was cancelled already). The jobs behind it never ran:
    /// when the worker is reaped they go back to the queue.
    fn doom(&mut self, error: Option<Error>) {
        if self.doomed {
            return;
        }
        if let Some(job) = self.inflight.pop_front() {
            if let Some(error) = error {
                job.completion.fail(error);
            }
        }
        self.doomed = true;
        self.process.kill();
    }
}
