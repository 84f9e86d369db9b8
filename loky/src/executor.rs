//! The executor: submit tasks, map over inputs, shut down.

use crate::config::Config;
use crate::error::{Error, SubmitError};
use crate::future::Future;
use crate::job::{self, Decode, Job, Typed};
use crate::manager::{self, Event, ShutdownRequest};
use crate::map::Map;
use crate::task::Task;
use crossbeam_channel::Sender;
use loky_worker::protocol::{CallKind, Payload};
use loky_worker::registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
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
    config: Config,
    /// Open while submissions are accepted. Submitting and shutting down
    /// take this lock, so no job is queued after the shutdown request.
    gate: Mutex<Gate>,
    next_job: AtomicU64,
    stopped: Arc<Stopped>,
    manager_thread: ThreadId,
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
    /// `max_workers(0)`.
    pub fn new(config: Config) -> Result<Executor, Error> {
        config.validate()?;
        crate::process::prepare_ipc()?;
        let (events_tx, events) = crossbeam_channel::unbounded();
        let stopped = Arc::new(Stopped::default());
        let manager_config = config.clone();
        let manager_events = events_tx.clone();
        let manager_stopped = Arc::clone(&stopped);
        let manager = std::thread::Builder::new()
            .name("loky-manager".to_owned())
            .spawn(move || {
                manager::run(manager_config, events, manager_events);
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
        Ok(Executor {
            inner: Arc::new(Inner {
                config,
                gate: Mutex::new(Gate {
                    open: true,
                    events: events_tx,
                }),
                next_job: AtomicU64::new(0),
                stopped,
                manager_thread: manager.thread().id(),
            }),
        })
    }

    /// The configuration this executor was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Submits `task(args)` and returns its future.
    ///
    /// After [`shutdown`](Self::shutdown) this fails and hands the
    /// arguments back. Every other failure, including arguments that
    /// cannot be serialized, is reported by the future.
    pub fn submit<T: Task>(
        &self,
        task: T,
        args: T::Args,
    ) -> Result<Future<T::Output>, SubmitError<T::Args>> {
        self.submit_inner(task, args, None)
    }

    /// Like [`submit`](Self::submit), with a limit on how long the task may
    /// run once a worker starts it. At expiry the worker is killed (with
    /// every process it started) and replaced, and the future fails with
    /// [`Error::TimedOut`]. Tasks the worker had not started run elsewhere.
    pub fn submit_timeout<T: Task>(
        &self,
        task: T,
        args: T::Args,
        timeout: Duration,
    ) -> Result<Future<T::Output>, SubmitError<T::Args>> {
        self.submit_inner(task, args, Some(timeout))
    }

    fn submit_inner<T: Task>(
        &self,
        task: T,
        args: T::Args,
        timeout: Option<Duration>,
    ) -> Result<Future<T::Output>, SubmitError<T::Args>> {
        let _ = task;
        let encoded = registered(T::ID).and_then(|()| job::encode_args(T::ID, &args));
        match self.submit_encoded(
            T::ID,
            CallKind::Single,
            encoded,
            timeout,
            job::decode_single,
        ) {
            Ok(future) => Ok(future),
            Err(reason) => Err(SubmitError { args, reason }),
        }
    }

    /// Runs `task` on every input, lazily and in order: see [`Map`].
    pub fn map<T, I>(&self, task: T, inputs: I) -> Map<T, I::IntoIter>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        Map::new(self.clone(), task, inputs.into_iter())
    }

    /// Stops accepting tasks and shuts the pool down as `how` says.
    ///
    /// Calling it again is harmless, and may strengthen the first request
    /// (for example to kill the workers). With `wait`, it returns once every
    /// worker process has exited; from a done-callback it never waits,
    /// since the callback runs on the thread that would have to finish.
    pub fn shutdown(&self, how: Shutdown) {
        self.inner.shutdown(how);
    }

    /// Sends SIGTERM to every worker's process group and shuts down without
    /// waiting, as Python 3.14's `terminate_workers`: pending tasks are
    /// cancelled, running ones fail with [`Error::ShutDown`]. A worker still
    /// alive a second later is killed.
    pub fn terminate_workers(&self) {
        self.inner.shutdown_with(
            false,
            ShutdownRequest {
                cancel_futures: true,
                kill: Some(libc::SIGTERM),
            },
        );
    }

    /// Kills every worker's process group with SIGKILL and shuts down
    /// without waiting, as Python 3.14's `kill_workers`: pending tasks are
    /// cancelled, running ones fail with [`Error::ShutDown`].
    pub fn kill_workers(&self) {
        self.inner.shutdown_with(
            false,
            ShutdownRequest {
                cancel_futures: true,
                kill: Some(libc::SIGKILL),
            },
        );
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

    /// The process ids of the workers alive now (including starting ones).
    pub fn worker_pids(&self) -> Vec<u32> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.inner.send(Event::Pids(tx)).is_err() {
            return Vec::new();
        }
        rx.recv().unwrap_or_default()
    }

    /// Queues already-encoded arguments. `Err` only when shut down.
    pub(crate) fn submit_encoded<R: Send + 'static>(
        &self,
        task: &'static str,
        kind: CallKind,
        encoded: Result<Vec<u8>, Error>,
        timeout: Option<Duration>,
        decode: Decode<R>,
    ) -> Result<Future<R>, Error> {
        let args = encoded.map(Payload::pack_args);
        let gate = self
            .inner
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !gate.open {
            return Err(Error::ShutDown);
        }
        let args = match args {
            Ok(args) => args,
            Err(error) => return Ok(Future::failed(task, error)),
        };
        let (future, state) = Future::new(task);
        let id = self.inner.next_job.fetch_add(1, Ordering::Relaxed);
        let events = gate.events.clone();
        state.on_cancel_running(Box::new(move || {
            // If the manager is gone, so is the worker.
            let _ = events.send(Event::Cancel(id));
        }));
        let job = Job {
            id,
            kind,
            args,
            timeout,
            completion: Arc::new(Typed { state, decode }),
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

    fn shutdown(&self, how: Shutdown) {
        let request = ShutdownRequest {
            cancel_futures: how.cancel_futures,
            kill: how.kill_workers.then_some(libc::SIGKILL),
        };
        self.shutdown_with(how.wait, request);
    }

    fn shutdown_with(&self, wait: bool, request: ShutdownRequest) {
        {
            let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
            gate.open = false;
            let _ = gate.events.send(Event::Shutdown(request));
        }
        if wait && std::thread::current().id() != self.manager_thread {
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
        self.shutdown(Shutdown::default());
    }
}

/// Checks that exactly one task is registered under `id`.
pub(crate) fn registered(id: &'static str) -> Result<(), Error> {
    registry::lookup(id)
        .entry()
        .map(|_| ())
        .map_err(|failure| Error::from_failure(id, None, failure))
}
