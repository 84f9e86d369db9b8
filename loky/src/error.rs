//! The public error type: every way a task, a worker or the executor can fail.

use loky_worker::protocol::{Failure, RemotePanic, Stage};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Why a task's future failed, or why the executor refused work.
///
/// Each variant carries what a user needs to act: which task, which worker
/// process, which exit code or signal, which serialization stage.
///
/// ```
/// use loky::{Error, ExitReason};
///
/// #[loky::task]
/// fn risky(what: String) -> u32 {
///     match what.as_str() {
///         "panic" => panic!("bad input"),
///         "exit" => std::process::exit(3),
///         _ => 7,
///     }
/// }
///
/// # fn main() -> Result<(), Error> {
/// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
/// for what in ["fine", "panic", "exit"] {
///     match executor.submit(risky, what.to_owned())?.result() {
///         Ok(value) => assert_eq!((what, value), ("fine", 7)),
///         // A panic: the message and where; the worker survives.
///         Err(Error::Panicked { panic, .. }) => {
///             assert_eq!((what, panic.message.as_str()), ("panic", "bad input"))
///         }
///         // The worker died: its pid, and the exit code or signal.
///         Err(Error::WorkerDied { pid, reason, .. }) => {
///             assert_eq!((what, reason), ("exit", ExitReason::Code(3)));
///             assert!(reason.signal_name().is_none(), "worker {pid} {reason}");
///         }
///         // Timeouts, cancellation, shutdown, serialization...
///         Err(other) => return Err(other),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked in the worker. The worker survived.
    #[error("task `{task}` panicked in worker {pid}: {panic}")]
    Panicked {
        /// The task's id.
        task: &'static str,
        /// The worker's process id.
        pid: u32,
        /// The panic's message, location and (with `RUST_BACKTRACE`) backtrace.
        panic: RemotePanic,
    },
    /// The worker process died while running the task: it exited, aborted,
    /// crashed or was killed. With retries (see
    /// [`Config::retries`](crate::Config::retries)), this is the last
    /// attempt and `earlier` lists the others.
    #[error(
        "worker {pid} running task `{task}` {reason}{}",
        Attempt::list(earlier)
    )]
    WorkerDied {
        /// The task's id.
        task: &'static str,
        /// The worker's process id.
        pid: u32,
        /// How the process ended.
        reason: ExitReason,
        /// The earlier attempts, whose workers died too (or, on a cluster,
        /// whose hosts were lost), oldest first; empty unless the task was
        /// retried.
        earlier: Vec<Attempt>,
    },
    /// Encoding or decoding the arguments or the result failed (or panicked).
    #[error("task `{task}`: serialization failed {stage}: {message}")]
    Serialization {
        /// The task's id.
        task: &'static str,
        /// Which data, on which side.
        stage: Stage,
        /// The serde error's message.
        message: String,
    },
    /// The worker has no task registered under this id (its binary differs
    /// from the parent's, or the task was not made with `#[loky::task]`).
    #[error("task `{task}` is not registered{}", unknown_where(*.pid))]
    UnknownTask {
        /// The task's id.
        task: &'static str,
        /// The worker that did not know it, if a worker was asked.
        pid: Option<u32>,
    },
    /// Several tasks are registered under this id; none is run.
    #[error("task id `{task}` is registered more than once (at {}); give each a distinct \
             `#[loky::task(id = \"...\")]`", .locations.join(", "))]
    DuplicateTask {
        /// The task's id.
        task: &'static str,
        /// Where each registration is.
        locations: Vec<String>,
    },
    /// Your wait ran out: waiting for a result (`result_timeout`, a `wait` or
    /// `as_completed` deadline) took longer than allowed. The task itself
    /// goes on; compare [`Error::TaskTimeout`], where the task was stopped.
    #[error("timed out after {waited:?} waiting for a result")]
    WaitTimeout {
        /// How long was waited.
        waited: Duration,
    },
    /// The task ran out of time: it ran longer than the timeout it was
    /// submitted with (`submit_timeout`, `Map::timeout`), and its worker
    /// (with every process it started) was killed and replaced. Compare
    /// [`Error::WaitTimeout`], where only the wait ended.
    #[error("task `{task}` ran longer than its timeout of {timeout:?}: worker {pid} was killed")]
    TaskTimeout {
        /// The task's id.
        task: &'static str,
        /// The worker that was killed.
        pid: u32,
        /// The task's timeout.
        timeout: Duration,
    },
    /// The task was cancelled: before it started, or while it ran (then its
    /// worker was killed).
    #[error("task `{task}` was cancelled")]
    Cancelled {
        /// The task's id.
        task: &'static str,
    },
    /// The executor was shut down before the task could finish.
    #[error("the executor has been shut down")]
    ShutDown,
    /// The executor cannot run tasks any more.
    #[error("the executor is broken: {reason}")]
    Broken {
        /// Why.
        reason: String,
    },
    /// No worker could be started to run the task.
    #[error("could not start a worker: {0}")]
    Spawn(#[from] SpawnError),
    /// The executor's configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The input iterator given to `map` panicked.
    #[error("the input iterator of `map` panicked: {message}")]
    InputPanicked {
        /// The panic message.
        message: String,
    },
    /// A task of a cluster (feature `nats`) failed on another host: `error`
    /// is what it would have been here (`WorkerDied`, `Panicked`...).
    #[error("on host {host}: {error}")]
    Remote {
        /// The agent's host name.
        host: String,
        /// The error there.
        error: Box<Error>,
    },
    /// The host running the task went silent (its agent sent no heartbeat):
    /// the host, its network or its agent died. The task may have run in
    /// part; nothing more is known. Distinct from a task's own crash, which
    /// is `Remote { WorkerDied }`. With retries (see
    /// [`Config::retries`](crate::Config::retries)), this is the last
    /// attempt and `earlier` lists the others.
    #[error(
        "host {host} went silent for {silent_for:?} while it ran task `{task}`{}",
        Attempt::list(earlier)
    )]
    HostLost {
        /// The task's id.
        task: &'static str,
        /// The agent's host name.
        host: String,
        /// How long it had been silent.
        silent_for: Duration,
        /// The earlier attempts (hosts lost, workers that died on a host),
        /// oldest first; empty unless the task was retried.
        earlier: Vec<Attempt>,
    },
    /// The cluster's NATS server cannot be reached (or went away): the task
    /// may or may not have run.
    #[error("task `{task}`: the NATS server at {url} is unreachable: {reason}")]
    BrokerLost {
        /// The task's id.
        task: &'static str,
        /// The server's URL.
        url: String,
        /// What the client saw.
        reason: String,
    },
    /// The encoded arguments are larger than the cluster's server accepts
    /// in one message.
    #[error(
        "task `{task}`: its arguments take {size} bytes, more than the {max} bytes the NATS server accepts in a message"
    )]
    PayloadTooLarge {
        /// The task's id.
        task: &'static str,
        /// Their size, encoded.
        size: usize,
        /// The server's maximum.
        max: usize,
    },
}

fn unknown_where(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!(" in worker {pid}"),
        None => ": only a function with `#[loky::task]` is registered \
                 (a hand-written `Task` implementation is not)"
            .to_owned(),
    }
}

impl Error {
    /// `self` with `attempts` listed before its own earlier attempts, if
    /// it is a death or a lost host (here or on a host); else `self`.
    pub(crate) fn after_attempts(mut self, mut attempts: Vec<Attempt>) -> Error {
        let mut error = &mut self;
        while let Error::Remote { error: inner, .. } = error {
            error = inner;
        }
        if let Error::WorkerDied { earlier, .. } | Error::HostLost { earlier, .. } = error {
            attempts.append(earlier);
            *earlier = attempts;
        }
        self
    }

    /// The error for a failure that a worker reported and survived.
    pub(crate) fn from_failure(task: &'static str, pid: Option<u32>, failure: Failure) -> Error {
        match failure {
            Failure::Panicked(panic) => Error::Panicked {
                task,
                pid: pid.unwrap_or(0),
                panic,
            },
            Failure::Serde { stage, message } => Error::Serialization {
                task,
                stage,
                message,
            },
            Failure::UnknownTask => Error::UnknownTask { task, pid },
            Failure::DuplicateTask { locations } => Error::DuplicateTask { task, locations },
        }
    }
}

/// Why a worker could not be started.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The operating system refused to start the process.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The worker process ended before it completed its handshake.
    #[error("worker {pid} {reason} before completing its handshake")]
    ExitedEarly {
        /// The worker's process id.
        pid: u32,
        /// How it ended.
        reason: ExitReason,
    },
    /// The worker did not complete its handshake in time; it was killed.
    #[error("worker {pid} did not complete its handshake within {timeout:?}")]
    HandshakeTimeout {
        /// The worker's process id.
        pid: u32,
        /// The configured limit.
        timeout: Duration,
    },
    /// The worker speaks another protocol version.
    #[error("worker {pid} speaks protocol version {theirs}, this process {ours}")]
    ProtocolMismatch {
        /// The worker's process id.
        pid: u32,
        /// Our version.
        ours: u32,
        /// The worker's version.
        theirs: u32,
    },
    /// The handshake failed otherwise: a wrong secret, a process that is not
    /// the one we started, a message that could not be read.
    #[error("worker {pid}: bad handshake: {message}")]
    Handshake {
        /// The worker's process id.
        pid: u32,
        /// What was wrong.
        message: String,
    },
}

impl SpawnError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> SpawnError {
        SpawnError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// One attempt at a task whose worker died, or, on a cluster, whose host
/// was lost: see [`Error::WorkerDied`] and [`Error::HostLost`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// The worker's process id; 0 if unknown (its host was lost).
    pub pid: u32,
    /// How it ended: [`ExitReason::HostLost`] if its host went silent.
    pub reason: ExitReason,
    /// The host it ran on, on a cluster (feature `nats`); `None` on this
    /// machine.
    pub host: Option<String>,
}

impl Attempt {
    /// A worker of this machine died running the task.
    pub(crate) fn died(pid: u32, reason: ExitReason) -> Attempt {
        Attempt {
            pid,
            reason,
            host: None,
        }
    }

    /// `host` went silent for `silent_for` while it ran the task.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn lost(host: String, silent_for: Duration) -> Attempt {
        Attempt {
            pid: 0,
            reason: ExitReason::HostLost { silent_for },
            host: Some(host),
        }
    }

    /// `earlier` as the tail of an error message.
    fn list(earlier: &[Attempt]) -> String {
        if earlier.is_empty() {
            return String::new();
        }
        let attempts: Vec<String> = earlier.iter().map(Attempt::to_string).collect();
        format!(
            ", after {} earlier attempt{}: {}",
            earlier.len(),
            if earlier.len() == 1 { "" } else { "s" },
            attempts.join("; ")
        )
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.reason) {
            (Some(host), ExitReason::HostLost { silent_for }) => {
                write!(f, "host {host} went silent for {silent_for:?}")
            }
            (Some(host), reason) => write!(f, "worker {} on host {host} {reason}", self.pid),
            (None, reason) => write!(f, "worker {} {reason}", self.pid),
        }
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// It exited with this code (`std::process::exit`, or returning).
    Code(i32),
    /// A signal killed it.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// It exited, but its status was collected by someone else: the
    /// program ignores SIGCHLD (so the kernel discards it), or another
    /// thread waited for any child. Never a made-up code.
    Unknown,
    /// On a cluster (in an [`Attempt`]): the host running it went silent
    /// for this long, so how its worker ended is not known.
    HostLost {
        /// How long it had been silent when it was declared lost.
        silent_for: Duration,
    },
}

impl ExitReason {
    /// Reads a reaped process's status.
    pub(crate) fn from_status(status: std::process::ExitStatus) -> ExitReason {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitReason::Code(code),
            (None, Some(signal)) => ExitReason::Signal {
                signal,
                core_dumped: status.core_dumped(),
            },
            (None, None) => ExitReason::Code(status.into_raw()),
        }
    }

    /// The signal's name, such as `SIGSEGV`, for a death by signal.
    pub fn signal_name(&self) -> Option<&'static str> {
        match self {
            ExitReason::Signal { signal, .. } => signal_info(*signal).map(|(name, _)| name),
            ExitReason::Code(_) | ExitReason::Unknown | ExitReason::HostLost { .. } => None,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitReason::Code(code) => write!(f, "exited with code {code}"),
            ExitReason::Unknown => f.write_str(
                "exited; its exit status is unknown (reaped elsewhere: SIGCHLD is \
                 ignored, or another thread waited for it)",
            ),
            ExitReason::HostLost { silent_for } => {
                write!(f, "was lost with its host (silent for {silent_for:?})")
            }
            ExitReason::Signal {
                signal,
                core_dumped,
            } => {
                match signal_info(signal) {
                    Some((name, meaning)) => write!(f, "was killed by signal {name} ({meaning})")?,
                    None => write!(f, "was killed by signal {signal}")?,
                }
                if core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
        }
    }
}

/// The name and meaning of a signal number.
fn signal_info(signal: i32) -> Option<(&'static str, &'static str)> {
    Some(match signal {
        libc::SIGHUP => ("SIGHUP", "hangup"),
        libc::SIGINT => ("SIGINT", "interrupt"),
        libc::SIGQUIT => ("SIGQUIT", "quit"),
        libc::SIGILL => ("SIGILL", "illegal instruction"),
        libc::SIGTRAP => ("SIGTRAP", "trace trap"),
        libc::SIGABRT => ("SIGABRT", "aborted"),
        libc::SIGBUS => ("SIGBUS", "bus error"),
        libc::SIGFPE => ("SIGFPE", "arithmetic exception"),
        libc::SIGKILL => ("SIGKILL", "killed"),
        libc::SIGUSR1 => ("SIGUSR1", "user signal 1"),
        libc::SIGSEGV => ("SIGSEGV", "segmentation fault"),
        libc::SIGUSR2 => ("SIGUSR2", "user signal 2"),
        libc::SIGPIPE => ("SIGPIPE", "broken pipe"),
        libc::SIGALRM => ("SIGALRM", "alarm clock"),
        libc::SIGTERM => ("SIGTERM", "terminated"),
        libc::SIGXCPU => ("SIGXCPU", "CPU time limit exceeded"),
        libc::SIGXFSZ => ("SIGXFSZ", "file size limit exceeded"),
        libc::SIGSYS => ("SIGSYS", "bad system call"),
        _ => return None,
    })
}

/// A refused submission: the reason, and the arguments handed back.
///
/// Its `Debug` does not print the arguments, so `submit(..).unwrap()` and
/// `?` into `Box<dyn Error>` or `anyhow` work whatever their type.
#[derive(thiserror::Error)]
#[error("{reason}")]
pub struct SubmitError<A> {
    /// The arguments that were not submitted.
    pub args: A,
    /// Why: the executor is shut down or broken.
    pub reason: Error,
}

impl<A> fmt::Debug for SubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<A> From<SubmitError<A>> for Error {
    fn from(error: SubmitError<A>) -> Error {
        error.reason
    }
}
