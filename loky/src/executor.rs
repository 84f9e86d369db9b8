//! The executor: submit tasks, map over inputs, shut down.

use crate::config::Config;
use crate::depth;
use crate::error::{Error, SubmitError};
use crate::future::Future;
use crate::host::Backend;
use crate::host::process::ProcessBackend;
use crate::job::{self, Decode, Job, Typed};
use crate::manager::{self, Event, ShutdownRequest};
use crate::map::Map;
use crate::map_unordered::MapUnordered;
use crate::options::CallOptions;
use crate::shared::Shared;
use crate::stats::Stats;
use crate::task::Task;
use crossbeam_channel::{Receiver, Sender};
use ipc_channel::ipc::IpcSharedMemory;
use loky_worker::protocol::{CallKind, Payload};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

/// A pool of worker processes that run [`Task`]s.
///
/// Like Python's `concurrent.futures.ProcessPoolExecutor` and loky's: tasks
/// are submitted and return [`Future`]s; a worker that crashes fails the
/// task it was running with a clear error and is replaced; tasks it had not
/// started run elsewhere.
///
/// `Executor` is a cheap handle: clones share one pool. When the last
/// handle is dropped, the pool shuts down after the work already submitted
/// is finished (like `Executor::shutdown(Shutdown::default())`).
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    config: Config,
    /// The current `max_workers` (resizing changes it).
    max_workers: AtomicUsize,
    shared: Arc<Shared>,
    /// Open while submissions are accepted. Submitting and shutting down
    /// take this lock, so no job is queued after the shutdown request.
    gate: Mutex<Gate>,
    next_job: AtomicU64,
    stopped: Arc<Stopped>,
    manager_thread: ThreadId,
    /// Whether dropping the last handle waits for the workers to exit.
    wait_on_drop: AtomicBool,
}

struct Gate {
    open: bool,
    events: Sender<Event>,
}

/// Set once the manager thread has finished: every worker is gone.
#[derive(Default)]
struct Stopped {
    done: Mutex<bool>,
    changed: Condvar,
}

/// How [`Executor::shutdown`] proceeds.
///
/// The default waits for the work already submitted, like
/// `executor.shutdown(wait=True)` in Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// Block until every worker has exited.
    pub wait: bool,
    /// Cancel the tasks that have not started.
    pub cancel_futures: bool,
    /// Kill the workers at once (their whole process groups); running and
    /// pending tasks fail with [`Error::ShutDown`].
    pub kill_workers: bool,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            wait: true,
            cancel_futures: false,
            kill_workers: false,
        }
    }
}

impl Executor {
    /// Builds an executor. Workers start on demand, when tasks arrive.
    ///
    /// Fails with [`Error::Config`] for an invalid configuration, such as
    /// `max_workers(0)`, and with [`Error::DuplicateTask`] when two tasks of
    /// the program share an id (a bug to fix, said before any submission).
    pub fn new(config: Config) -> Result<Executor, Error> {
        config.validate()?;
        crate::task::no_duplicates()?;
        #[cfg(feature = "nats")]
        if let crate::cluster::BackendKind::Nats { url, queue } = &config.backend.kind {
            let (url, queue) = (url.clone(), queue.clone());
            return crate::nats::client::start(config, url, queue);
        }
        depth::check()?;
        crate::host::process::prepare_ipc()?;
        Executor::start(config, ProcessBackend::new())
    }

    /// Starts the manager thread over `backend`.
    pub(crate) fn start<B: Backend>(config: Config, backend: B) -> Result<Executor, Error> {
        Executor::start_with(config, move |config, events, events_tx, shared| {
            manager::run(config, backend, events, events_tx, shared);
        })
    }

    /// Starts an executor whose manager thread runs `manage`: the local
    /// manager, or a cluster's client.
    pub(crate) fn start_with(
        config: Config,
        manage: impl FnOnce(Config, Receiver<Event>, Sender<Event>, Arc<Shared>) + Send + 'static,
    ) -> Result<Executor, Error> {
        let (events_tx, events) = crossbeam_channel::unbounded();
        let stopped = Arc::new(Stopped::default());
        let shared = Arc::new(Shared::default());
        let manager_config = config.clone();
        let manager_events = events_tx.clone();
        let manager_stopped = Arc::clone(&stopped);
        let manager_shared = Arc::clone(&shared);
        let manager = std::thread::Builder::new()
            .name("loky-manager".to_owned())
            .spawn(move || {
                manage(manager_config, events, manager_events, manager_shared);
                *manager_stopped
                    .done
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = true;
                manager_stopped.changed.notify_all();
            })
            .map_err(|e| {
                Error::Spawn(crate::SpawnError::io(
                    "could not start the manager thread",
                    e,
                ))
            })?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Executor {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                max_workers: AtomicUsize::new(config.max_workers),
                config,
                shared,
                gate: Mutex::new(Gate {
                    open: true,
                    events: events_tx,
                }),
                next_job: AtomicU64::new(0),
                stopped,
                manager_thread: manager.thread().id(),
                wait_on_drop: AtomicBool::new(true),
            }),
        })
    }

    /// The configuration this executor runs with: as built, with the
    /// current `max_workers` after a [`resize`](Self::resize).
    pub fn config(&self) -> Config {
        self.inner.config.clone().max_workers(self.max_workers())
    }

    /// How many workers this executor may run: as configured, or as last
    /// [`resize`](Self::resize)d.
    ///
    /// ```
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
    /// assert_eq!(executor.max_workers(), 2);
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn max_workers(&self) -> usize {
        self.inner.max_workers.load(Ordering::Relaxed)
    }

    /// How long an idle worker is kept before it exits, if not forever:
    /// [`Config::idle_timeout`], or [`REUSABLE_IDLE_TIMEOUT`](crate::REUSABLE_IDLE_TIMEOUT)
    /// for the reusable executor when none was set.
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        self.inner.config.idle_limit()
    }

    /// The idle workers on offer to submitters, for the manager's tests.
    #[cfg(test)]
    pub(crate) fn lending(&self) -> &crate::manager::lend::Lending {
        &self.inner.shared.lending
    }

    /// This executor's id, unique in this process. The reusable executor
    /// gets a new id each time it is replaced.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Changes the number of workers. Growing starts workers as tasks
    /// need them; shrinking retires surplus workers as soon as they are
    /// idle (idle ones at once), and the survivors keep their pids. No
    /// task is lost either way.
    ///
    /// A cluster executor (`Backend::nats`) has no size of its own: it
    /// fails with [`Error::Config`]; start or stop agents instead.
    pub fn resize(&self, max_workers: usize) -> Result<(), Error> {
        crate::config::check_max_workers(max_workers)?;
        if self.inner.config.backend.is_cluster() {
            return Err(Error::Config(
                "a cluster's size is its agents' workers: start or stop agents \
                 (LOKY_AGENT_WORKERS sets each one's)"
                    .to_owned(),
            ));
        }
        let gate = self.inner.open_gate()?;
        self.inner.max_workers.store(max_workers, Ordering::Relaxed);
        let _ = gate.events.send(Event::Resize(max_workers));
        Ok(())
    }

    /// Starts every worker now instead of on demand, and waits until they
    /// have all connected (or failed to: then the error says why).
    ///
    /// From a done-callback it starts them without waiting.
    pub fn start_workers(&self) -> Result<(), Error> {
        self.inner.ask(Event::StartWorkers)?.unwrap_or(Ok(()))
    }

    /// What the executor has done so far, and its workers now (as its
    /// manager last published them: true from a done-callback too).
    pub fn stats(&self) -> Stats {
        if self.inner.shared.lending.told_later() {
            // Calls lent and delivered wait for the manager's next step:
            // the next snapshot counts them.
            let gate = self
                .inner
                .gate
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = gate.events.send(Event::Refresh);
        }
        self.inner.shared.stats()
    }

    /// Why the executor is broken (a worker initializer failed again and
    /// again, or an internal error), if it is. A broken executor fails
    /// every task with [`Error::Broken`]; the reusable executor replaces it.
    pub fn broken(&self) -> Option<String> {
        self.inner.shared.broken()
    }

    /// Submits `task(args)` and returns its future.
    ///
    /// After [`shutdown`](Self::shutdown) this fails and hands the
    /// arguments back. Every other failure, including arguments that
    /// cannot be serialized, is reported by the future.
    ///
    /// ```
    /// #[loky::task]
    /// fn add(a: u64, b: u64) -> u64 {
    ///     a + b
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
    /// let future = executor.submit(add, (2, 3))?; // several arguments: a tuple
    /// assert_eq!(future.result()?, 5);
    ///
    /// executor.shutdown(loky::Shutdown::default());
    /// let refused = executor.submit(add, (4, 5)).unwrap_err();
    /// assert!(matches!(refused.reason, loky::Error::ShutDown));
    /// assert_eq!(refused.args, (4, 5)); // handed back
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit<T: Task>(
        &self,
        task: T,
        args: T::Args,
    ) -> Result<Future<T::Output>, SubmitError<T::Args>> {
        self.submit_with(task, args, CallOptions::new())
    }

    /// Like [`submit`](Self::submit), with a limit on how long the task may
    /// run once a worker starts it. At expiry the worker is killed (with
    /// every process it started) and replaced, and the future fails with
    /// [`Error::TaskTimeout`]. Tasks the worker had not started run elsewhere.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[loky::task]
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(1))?;
    /// let stuck = executor.submit_timeout(nap, 60_000, Duration::from_millis(100))?;
    /// assert!(matches!(stuck.result(), Err(loky::Error::TaskTimeout { .. })));
    /// // Its worker was killed and replaced: the executor goes on.
    /// assert_eq!(executor.submit(nap, 1)?.result()?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit_timeout<T: Task>(
        &self,
        task: T,
        args: T::Args,
        timeout: Duration,
    ) -> Result<Future<T::Output>, SubmitError<T::Args>> {
        self.submit_with(task, args, CallOptions::new().timeout(timeout))
    }

    /// Like [`submit`](Self::submit), with per-call settings: a timeout,
    /// retries.
    ///
    /// ```
    /// # #[loky::task] fn flaky(x: u64) -> u64 { x }
    /// # fn main() -> Result<(), loky::Error> {
    /// use loky::CallOptions;
    /// use std::time::Duration;
    ///
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
    /// let options = CallOptions::new().retries(2).timeout(Duration::from_secs(60));
    /// let future = executor.submit_with(flaky, 7, options).map_err(|refused| refused.reason)?;
    /// assert_eq!(future.result()?, 7);
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit_with<T: Task>(
        &self,
        task: T,
        args: T::Args,
        options: CallOptions,
    ) -> Result<Future<T::Output>, SubmitError<T::Args>> {
        let _ = task;
        let (encoded, regions) = loky_worker::shared_bytes::collect(|| {
            crate::task::registered(T::ID).and_then(|()| job::encode_call_args(T::ID, &args))
        });
        match self.submit_encoded(
            T::ID,
            CallKind::Single,
            (encoded, regions),
            options,
            job::decode_single,
        ) {
            Ok(future) => Ok(future),
            Err(reason) => Err(SubmitError { args, reason }),
        }
    }

    /// Runs `task` on every input, lazily and in order: see [`Map`].
    ///
    /// ```
    /// #[loky::task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
    /// // One `Result` per input, in input order; nothing runs until iterated.
    /// let squares: Vec<u64> = executor.map(square, 1..=4).collect::<Result<_, _>>()?;
    /// assert_eq!(squares, [1, 4, 9, 16]);
    ///
    /// // Ten inputs per call; results as they finish, with their input's index.
    /// for (index, result) in executor.map(square, 0..100).chunksize(10).unordered() {
    ///     assert_eq!(result?, (index * index) as u64);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn map<T, I>(&self, task: T, inputs: I) -> Map<T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Map::new(self.clone(), task, inputs.into_iter())
    }

    /// Runs `task` on every input, lazily, and yields `(index, result)` as
    /// results finish: see [`MapUnordered`]. Shorthand for
    /// `self.map(task, inputs).unordered()`.
    pub fn map_unordered<T, I>(&self, task: T, inputs: I) -> MapUnordered<T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.map(task, inputs).unordered()
    }

    /// Stops accepting tasks and shuts the pool down as `how` says.
    ///
    /// Calling it again is harmless, and may strengthen the first request
    /// (for example to kill the workers). With `wait`, it returns once every
    /// worker process has exited; from a done-callback it never waits,
    /// since the callback runs on the thread that would have to finish.
    ///
    /// ```
    /// use loky::{Config, Error, Executor, Shutdown};
    ///
    /// #[loky::task]
    /// fn nap(ms: u64) {
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    /// }
    ///
    /// # fn main() -> Result<(), Error> {
    /// // The default: finish the work submitted, then wait for the workers.
    /// let executor = Executor::new(Config::new().max_workers(2))?;
    /// let future = executor.submit(nap, 10)?;
    /// executor.shutdown(Shutdown::default());
    /// assert!(future.done() && executor.is_stopped());
    ///
    /// // Or stop now: cancel what has not started, kill what runs.
    /// let executor = Executor::new(Config::new().max_workers(1))?;
    /// let slow = executor.submit(nap, 60_000)?;
    /// let quick = executor.submit(nap, 1)?;
    /// executor.shutdown(Shutdown { wait: true, cancel_futures: true, kill_workers: true });
    /// assert!(matches!(slow.result(), Err(Error::ShutDown | Error::Cancelled { .. })));
    /// assert!(matches!(quick.result(), Err(Error::Cancelled { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn shutdown(&self, how: Shutdown) {
        self.inner.shutdown(how);
    }

    /// Sends SIGTERM to every worker's process group and shuts down without
    /// waiting, as Python 3.14's `terminate_workers`: pending tasks are
    /// cancelled, running ones fail with [`Error::ShutDown`]. A worker still
    /// alive a second later is killed.
    pub fn terminate_workers(&self) {
        self.inner.force_shutdown(libc::SIGTERM);
    }

    /// Kills every worker's process group with SIGKILL and shuts down
    /// without waiting, as Python 3.14's `kill_workers`: pending tasks are
    /// cancelled, running ones fail with [`Error::ShutDown`].
    pub fn kill_workers(&self) {
        self.inner.force_shutdown(libc::SIGKILL);
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutdown(&self) -> bool {
        !self
            .inner
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }

    /// Whether the pool has finished shutting down: no worker is left.
    pub fn is_stopped(&self) -> bool {
        *self
            .inner
            .stopped
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The process ids of the workers alive now (including starting ones),
    /// as the manager last published them. Empty for a cluster executor,
    /// whose workers are on other hosts: its `stats().workers` counts the
    /// agents' workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner.shared.pids()
    }

    /// Drops this handle; if it was the last one, the executor finishes
    /// its submitted work and shuts down in the background.
    pub(crate) fn release(self) {
        self.inner.wait_on_drop.store(false, Ordering::Relaxed);
    }

    /// Queues already-encoded arguments. `Err` only when shut down.
    pub(crate) fn submit_encoded<R: Send + 'static>(
        &self,
        task: &'static str,
        kind: CallKind,
        (encoded, regions): (Result<Payload, Error>, Vec<IpcSharedMemory>),
        options: CallOptions,
        decode: Decode<R>,
    ) -> Result<Future<R>, Error> {
        // One message carries at most `MAX_DESCRIPTORS` regions.
        let carried = regions.len()
            + usize::from(matches!(
                encoded,
                Ok(loky_worker::protocol::Payload::Shared(_))
            ));
        let args = match encoded {
            Ok(_) if carried > loky_worker::protocol::MAX_DESCRIPTORS => {
                Err(Error::Serialization {
                    task,
                    stage: loky_worker::protocol::Stage::EncodeArgs,
                    message: format!(
                        "a call carries at most {} shared regions (distinct SharedBytes and \
                         large arguments), this one {carried}",
                        loky_worker::protocol::MAX_DESCRIPTORS
                    ),
                })
            }
            other => other,
        };
        if kind == CallKind::Single {
            let spin = self.inner.config.spin_wait;
            self.inner.shared.lending.await_offer(spin);
        }
        let gate = self.inner.open_gate()?;
        let args = match args {
            Ok(args) => args,
            Err(error) => return Ok(Future::failed(task, error)),
        };
        let (future, state) = Future::new(task);
        if !self.inner.config.backend.is_cluster() {
            // A cluster's answers take a network round trip: waiting
            // callers sleep at once there.
            state.spin_for(self.inner.config.spin_wait);
        }
        let id = self.inner.next_job.fetch_add(1, Ordering::Relaxed);
        let events = gate.events.clone();
        state.on_cancel(Box::new(move || {
            // If the manager is gone, so is the worker.
            let _ = events.send(Event::Cancel(id));
        }));
        let job = Job {
            id,
            kind,
            args,
            timeout: options.timeout,
            retries: options.retries,
            attempts: Vec::new(),
            completion: Arc::new(Typed {
                state,
                decode,
                shared: Arc::clone(&self.inner.shared),
            }),
            pieces: job::Pieces::default(),
            regions,
        };
        // Straight to an idle worker, if the manager lent one.
        let Some(job) = self.inner.shared.lending.send(job, &gate.events) else {
            return Ok(future);
        };
        if let Err(crossbeam_channel::SendError(Event::Submit(job))) =
            gate.events.send(Event::Submit(job))
        {
            // Unreachable while the gate is open: the manager runs until a
            // shutdown request. Fail the future rather than lose it.
            job.completion.fail(Error::ShutDown);
        }
        Ok(future)
    }
}

impl Inner {
    fn send(&self, event: Event) -> Result<(), ()> {
        let gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        gate.events.send(event).map_err(|_| ())
    }

    /// The gate, locked, if submissions are still accepted.
    fn open_gate(&self) -> Result<MutexGuard<'_, Gate>, Error> {
        let gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if gate.open {
            Ok(gate)
        } else {
            Err(Error::ShutDown)
        }
    }

    /// Sends the manager a request and waits for its answer. From a
    /// done-callback (on the manager thread, or the results thread settling
    /// futures) the request is sent but not waited for: `Ok(None)`. `Err`
    /// if the manager is gone.
    fn ask<T>(&self, request: impl FnOnce(Sender<T>) -> Event) -> Result<Option<T>, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(request(tx)).map_err(|()| Error::ShutDown)?;
        if std::thread::current().id() == self.manager_thread || manager::settling() {
            return Ok(None);
        }
        rx.recv().map(Some).map_err(|_| Error::ShutDown)
    }

    fn shutdown(&self, how: Shutdown) {
        let request = ShutdownRequest {
            cancel_futures: how.cancel_futures,
            kill: how.kill_workers.then_some(libc::SIGKILL),
        };
        self.shutdown_with(how.wait, request);
    }

    /// Python 3.14's `_force_shutdown`: cancel what has not started, signal
    /// every worker's process group, do not wait.
    fn force_shutdown(&self, signal: i32) {
        let request = ShutdownRequest {
            cancel_futures: true,
            kill: Some(signal),
        };
        self.shutdown_with(false, request);
    }

    fn shutdown_with(&self, wait: bool, request: ShutdownRequest) {
        {
            let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
            gate.open = false;
            let _ = gate.events.send(Event::Shutdown(request));
        }
        // Never from a thread the manager waits for: its own, or a link
        // thread running done-callbacks.
        if wait && std::thread::current().id() != self.manager_thread && !manager::settling() {
            let mut done = self
                .stopped
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while !*done {
                done = self
                    .stopped
                    .changed
                    .wait(done)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown(Shutdown {
            wait: self.wait_on_drop.load(Ordering::Relaxed),
            ..Shutdown::default()
        });
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("id", &self.id())
            .field("max_workers", &self.max_workers())
            .field("stats", &self.stats())
            .finish()
    }
}
