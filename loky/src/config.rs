//! The executor's configuration.

use crate::error::Error;
use crate::task::Task;
use crate::threads::ThreadLimit;
use std::ffi::OsString;
use std::time::Duration;

/// How an [`Executor`](crate::Executor) runs its workers: a builder, read
/// back through the executor ([`Executor::max_workers`](crate::Executor::max_workers),
/// [`Executor::idle_timeout`](crate::Executor::idle_timeout)).
///
/// ```
/// use std::time::Duration;
///
/// let config = loky::Config::new()
///     .max_workers(2)
///     .idle_timeout(Duration::from_secs(30))
///     .max_tasks_per_child(1000);
/// let executor = loky::Executor::new(config)?;
/// assert_eq!(executor.max_workers(), 2);
/// assert_eq!(executor.idle_timeout(), Some(Duration::from_secs(30)));
/// # Ok::<(), loky::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) max_workers: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) prefetch: Option<usize>,
    pub(crate) env: Vec<(OsString, OsString)>,
    /// `None`: not set (a plain executor keeps idle workers, the reusable
    /// one lets them go after [`REUSABLE_IDLE_TIMEOUT`]).
    idle_timeout: Option<Option<Duration>>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) initializer: Option<Initializer>,
    memory: MemoryLimits,
    threads: ThreadLimit,
    pub(crate) retries: u32,
    forward_logs: bool,
    pub(crate) label_output: bool,
    pub(crate) backend: crate::cluster::Backend,
    pub(crate) spin_wait: Duration,
}

/// A task every worker runs once, before its first task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Initializer {
    pub(crate) task: &'static str,
    /// The arguments, encoded, or why they could not be.
    pub(crate) args: Result<Vec<u8>, String>,
    /// The shared regions its arguments name.
    pub(crate) regions: Regions,
    /// How many workers in a row may fail it before the executor is broken.
    pub(crate) max_failures: usize,
}

/// An initializer's shared regions: equal when their bytes are, shown by
/// their sizes.
#[derive(Clone, Default)]
pub(crate) struct Regions(pub(crate) Vec<ipc_channel::ipc::IpcSharedMemory>);

impl PartialEq for Regions {
    fn eq(&self, other: &Regions) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| **a == **b)
    }
}

impl Eq for Regions {}

impl std::fmt::Debug for Regions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|region| region.len()))
            .finish()
    }
}

/// When a worker that grows is replaced: see [`Config::memory_leak_threshold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryLimits {
    /// Growth of resident memory over the reference, in bytes.
    pub(crate) leak_threshold: Option<u64>,
    /// Absolute resident memory, in bytes.
    pub(crate) rss_cap: Option<u64>,
}

/// How long the reusable executor keeps an idle worker, as in Python loky.
pub const REUSABLE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default memory-leak threshold, as in Python loky: 300 MB.
pub const DEFAULT_LEAK_THRESHOLD: u64 = 300_000_000;
/// Environment variable that overrides the memory-leak threshold, in bytes
/// (`0` turns the check off).
pub const ENV_LEAK_THRESHOLD: &str = "LOKY_MAX_MEMORY_LEAK";

impl Default for Config {
    fn default() -> Self {
        Config {
            max_workers: crate::cpu_count(),
            handshake_timeout: Duration::from_secs(20),
            prefetch: None,
            env: Vec::new(),
            idle_timeout: None,
            max_tasks_per_child: None,
            initializer: None,
            memory: MemoryLimits {
                leak_threshold: Some(DEFAULT_LEAK_THRESHOLD),
                rss_cap: None,
            },
            threads: ThreadLimit::Share,
            retries: 0,
            forward_logs: true,
            label_output: false,
            backend: crate::cluster::Backend::default(),
            spin_wait: loky_worker::spin::DEFAULT_SPIN,
        }
    }
}

impl Config {
    /// The default configuration: one worker per usable CPU.
    pub fn new() -> Config {
        Config::default()
    }

    /// The largest number of worker processes alive at once. Workers start
    /// on demand. Zero is an error when the executor is built.
    pub fn max_workers(mut self, max_workers: usize) -> Config {
        self.max_workers = max_workers;
        self
    }

    /// How long a new worker may take to connect before it is killed and
    /// reported as failed to start. Default 20 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Config {
        self.handshake_timeout = timeout;
        self
    }

    /// How many tasks may wait in a busy worker's queue behind the one it
    /// runs. More keeps workers busy with short tasks; fewer balances long
    /// tasks better. By default it adapts: 1 until tasks were timed, then
    /// as many as take about a millisecond (up to 64), so that short tasks
    /// never wait for the parent. Either way a task waiting behind a busy
    /// worker is taken back when another worker is free.
    pub fn prefetch(mut self, prefetch: usize) -> Config {
        self.prefetch = Some(prefetch);
        self
    }

    /// Sets an environment variable in every worker.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Config {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Limits the thread pools that libraries start inside each worker
    /// (OpenMP, OpenBLAS, MKL, rayon, tokio...: see [`THREAD_LIMIT_VARS`])
    /// to `threads` each (0 counts as 1).
    ///
    /// By default each worker gets its share of the usable CPUs,
    /// `cpu_count() / max_workers` (at least 1), so that `n` workers of a
    /// numeric library do not run `n x cores` threads. A variable that the
    /// parent's environment or [`env`](Self::env) sets is left as it is.
    ///
    /// [`THREAD_LIMIT_VARS`]: crate::THREAD_LIMIT_VARS
    ///
    /// ```
    /// #[loky::task]
    /// fn omp_threads() -> Option<String> {
    ///     std::env::var("OMP_NUM_THREADS").ok()
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let config = loky::Config::new().max_workers(2).worker_threads(1);
    /// let executor = loky::Executor::new(config)?;
    /// # if std::env::var_os("OMP_NUM_THREADS").is_none() {
    /// assert_eq!(executor.submit(omp_threads, ())?.result()?.as_deref(), Some("1"));
    /// # }
    /// # Ok(())
    /// # }
    /// ```
    pub fn worker_threads(mut self, threads: usize) -> Config {
        self.threads = ThreadLimit::Exactly(threads);
        self
    }

    /// Leaves the thread-pool variables of [`worker_threads`](Self::worker_threads)
    /// alone: workers inherit them from this process.
    pub fn no_thread_limit(mut self) -> Config {
        self.threads = ThreadLimit::Off;
        self
    }

    /// Runs a task again, on another worker, when its worker dies while
    /// running it (a crash, an exit, a signal from outside such as the OOM
    /// killer), up to `retries` more times; then it fails with
    /// [`Error::WorkerDied`](crate::Error::WorkerDied) listing every
    /// attempt. Never for a panic or a serialization error, which would
    /// fail again, nor for a timeout, a cancellation or a shutdown. For a
    /// chunk of [`map`](crate::Executor::map), each element has its own
    /// budget. Default 0: a task that crashed its worker usually crashes
    /// again. [`CallOptions::retries`](crate::CallOptions::retries) and
    /// [`Map::retries`](crate::Map::retries) override it.
    ///
    /// On a cluster (feature `nats`) the same budget covers two things. A
    /// call whose host is lost (silent for a second) is published again
    /// and runs on any agent; the final [`Error::HostLost`](crate::Error::HostLost)
    /// lists the lost hosts in `earlier`. It goes out again only once its
    /// host is declared lost, and a late reply from that host is ignored,
    /// so a call never runs twice at once (unless a lost host comes back
    /// with it still running: then it is cancelled there). A worker that
    /// dies under a call on an agent is retried by that agent, as here,
    /// with what the lost hosts left of the budget; the final
    /// `Error::Remote { error: WorkerDied { earlier, .. }, .. }` lists every
    /// attempt with its host. A lost chunk runs again whole; retries an
    /// agent made before its host was lost are not counted.
    ///
    /// ```
    /// # #[loky::task] fn native_call(x: u64) -> u64 { x }
    /// # fn main() -> Result<(), loky::Error> {
    /// let executor = loky::Executor::new(loky::Config::new().max_workers(2).retries(2))?;
    /// match executor.submit(native_call, 7)?.result() {
    ///     Ok(value) => assert_eq!(value, 7),
    ///     // Three workers died under it: each attempt's pid and exit reason.
    ///     Err(loky::Error::WorkerDied { pid, reason, earlier, .. }) => {
    ///         eprintln!("worker {pid} {reason}, after {} earlier attempts", earlier.len())
    ///     }
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn retries(mut self, retries: u32) -> Config {
        self.retries = retries;
        self
    }

    /// Whether the `tracing` events and `log` records of tasks reach this
    /// process. By default they do: each is emitted here under the target
    /// [`WORKER_LOG_TARGET`](crate::WORKER_LOG_TARGET), through `tracing`
    /// if a subscriber wants it, else through `log`, with fields `pid`
    /// (the worker's), `task` and `origin` (the event's own target). A
    /// worker keeps only events as verbose as this process listens to when
    /// it starts, so filtered-out events cost next to nothing.
    ///
    /// ```
    /// #[loky::task]
    /// fn work(x: u64) -> u64 {
    ///     tracing::info!(x, "working"); // reaches this process's subscriber
    ///     x
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// // Install your subscriber first (tracing-subscriber, say): workers
    /// // forward what it listens to. To keep tasks quiet instead:
    /// let config = loky::Config::new().forward_logs(false);
    /// let executor = loky::Executor::new(config)?;
    /// assert_eq!(executor.submit(work, 1)?.result()?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_logs(mut self, forward: bool) -> Config {
        self.forward_logs = forward;
        self
    }

    /// Prefixes each line that a worker writes on stdout or stderr with
    /// `[worker PID TASK] ` (`[worker PID] ` between tasks) before it
    /// reaches this process's stdout or stderr. Exact whoever wrote the
    /// line (Rust, C, the panic handler), and nothing is lost when a worker
    /// crashes: this process reads the streams, and a worker's last lines
    /// are out before its death is reported. Off by default: workers then
    /// write to this process's streams directly.
    ///
    /// ```
    /// #[loky::task]
    /// fn work(x: u64) -> u64 {
    ///     println!("working on {x}"); // "[worker 4242 my_crate::work] working on 1"
    ///     x
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let executor = loky::Executor::new(loky::Config::new().label_output(true))?;
    /// assert_eq!(executor.submit(work, 1)?.result()?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn label_output(mut self, label: bool) -> Config {
        self.label_output = label;
        self
    }

    /// Where tasks run: this machine's worker processes (the default), or
    /// a cluster's agents ([`Backend::nats`](crate::Backend), feature
    /// `nats`), with the same executor, futures and errors.
    pub fn backend(mut self, backend: crate::cluster::Backend) -> Config {
        self.backend = backend;
        self
    }

    /// How long a thread that waits for a worker looks for its answer
    /// before it sleeps: a caller in [`Future::result`](crate::Future::result)
    /// or [`Future::wait_timeout`](crate::Future::wait_timeout), and a
    /// worker between calls. Default 50 µs; at most 10 ms.
    ///
    /// Waking a sleeping thread is most of a short task's round trip (tens
    /// of microseconds on a virtual machine whose idle CPUs halt), so
    /// looking first makes a round trip several times shorter. Looking
    /// costs CPU, at most this long per wait, and yields the CPU to any
    /// thread that needs it; a calling thread whose looks keep missing
    /// (it waits for long tasks) looks only once in 16 waits, until a look
    /// finds its answer again, so its looking does not take CPU from the
    /// workers. A worker about to look for its caller's next call, after a
    /// call shorter than a millisecond, first moves off the CPU that caller
    /// waits on, if its affinity allows another (and leaves its affinity as
    /// it was): two threads looking on one CPU only take turns.
    /// `Duration::ZERO` turns it off: every wait sleeps at once.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[loky::task]
    /// fn double(x: u64) -> u64 {
    ///     2 * x
    /// }
    ///
    /// # fn main() -> Result<(), loky::Error> {
    /// let quiet = loky::Config::new().max_workers(1).spin_wait(Duration::ZERO);
    /// let executor = loky::Executor::new(quiet)?;
    /// assert_eq!(executor.submit(double, 21)?.result()?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn spin_wait(mut self, budget: Duration) -> Config {
        self.spin_wait = budget;
        self
    }

    /// A worker idle for this long exits; workers come back on demand.
    /// By default a plain executor keeps its workers and the reusable
    /// executor lets them go after 10 s, as Python loky does.
    pub fn idle_timeout(mut self, timeout: Duration) -> Config {
        self.idle_timeout = Some(Some(timeout));
        self
    }

    /// Idle workers never exit, even in the reusable executor.
    pub fn no_idle_timeout(mut self) -> Config {
        self.idle_timeout = Some(None);
        self
    }

    /// A worker exits after running this many tasks (a `map` chunk counts
    /// as one) and is replaced, as Python's `max_tasks_per_child`. Zero
    /// means no limit.
    pub fn max_tasks_per_child(mut self, tasks: usize) -> Config {
        self.max_tasks_per_child = (tasks > 0).then_some(tasks);
        self
    }

    /// Every worker runs `task(args)` once, before its first task.
    ///
    /// If it fails (panics, dies, cannot decode its arguments) the worker
    /// is replaced and the failure is logged; after three failures in a
    /// row the executor is broken: every pending and later task fails with
    /// [`Error::Broken`], whose reason carries the last failure (such as
    /// the panic message).
    pub fn initializer<T: Task>(mut self, task: T, args: T::Args) -> Config {
        let _ = task;
        let (args, regions) =
            loky_worker::shared_bytes::collect(|| crate::job::encode_args(T::ID, &args));
        self.initializer = Some(Initializer {
            task: T::ID,
            args: args.map_err(|e| e.to_string()),
            regions: Regions(regions),
            max_failures: 3,
        });
        self
    }

    /// A worker whose resident memory grew by more than `bytes` over its
    /// reference (measured after its first task) first returns freed memory
    /// to the OS (`malloc_trim`); if still over, it finishes cleanly and is
    /// replaced. Checked after a task, at most once a second. Default
    /// 300 MB, as in Python loky; [`ENV_LEAK_THRESHOLD`] overrides it;
    /// `None` turns the check off.
    pub fn memory_leak_threshold(mut self, bytes: Option<u64>) -> Config {
        self.memory.leak_threshold = bytes;
        self
    }

    /// A worker whose resident memory exceeds `bytes` after a task is
    /// replaced, whatever its reference. Off by default.
    pub fn max_rss(mut self, bytes: u64) -> Config {
        self.memory.rss_cap = Some(bytes);
        self
    }

    /// The log level a new worker forwards, numbered as in the protocol.
    pub(crate) fn worker_log_level(&self) -> u8 {
        if self.forward_logs {
            crate::worker_logs::listening_level()
        } else {
            0
        }
    }

    /// The thread-limit variables a new worker gets, on top of
    /// `env`.
    pub(crate) fn thread_limit_env(&self) -> Vec<(&'static str, String)> {
        crate::threads::worker_env(
            self.threads,
            crate::cpu_count(),
            self.max_workers,
            &self.env,
            |var| std::env::var_os(var).is_some(),
        )
    }

    /// How long an idle worker is kept, if not forever.
    pub(crate) fn idle_limit(&self) -> Option<Duration> {
        self.idle_timeout.flatten()
    }

    /// Sets the reusable executor's default idle timeout if none was set.
    pub(crate) fn with_reusable_defaults(mut self) -> Config {
        if self.idle_timeout.is_none() {
            self.idle_timeout = Some(Some(REUSABLE_IDLE_TIMEOUT));
        }
        self
    }

    /// The memory limits, with the environment override applied.
    pub(crate) fn memory_limits(&self) -> MemoryLimits {
        let mut memory = self.memory;
        if let Some(bytes) = std::env::var(ENV_LEAK_THRESHOLD)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            memory.leak_threshold = (bytes > 0).then_some(bytes);
        }
        memory
    }

    /// Whether two configurations differ only in `max_workers`.
    pub(crate) fn same_but_size(&self, other: &Config) -> bool {
        let mut other = other.clone();
        other.max_workers = self.max_workers;
        *self == other
    }

    /// Checks the configuration, as the executor does when it is built.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        check_max_workers(self.max_workers)?;
        if self.handshake_timeout.is_zero() {
            return Err(Error::Config(
                "handshake_timeout must be longer than zero".to_owned(),
            ));
        }
        if self.spin_wait > loky_worker::spin::MAX_SPIN {
            return Err(Error::Config(format!(
                "spin_wait must be at most {:?} (it is {:?}): past that, sleeping costs less",
                loky_worker::spin::MAX_SPIN,
                self.spin_wait
            )));
        }
        if let Some(init) = &self.initializer {
            crate::task::registered(init.task)?;
            // Its arguments may take one more region when sent.
            if init.regions.0.len() >= loky_worker::protocol::MAX_DESCRIPTORS {
                return Err(Error::Config(format!(
                    "the initializer's arguments name {} shared regions; at most {}",
                    init.regions.0.len(),
                    loky_worker::protocol::MAX_DESCRIPTORS - 1
                )));
            }
            if let Err(message) = &init.args {
                return Err(Error::Config(format!(
                    "the initializer's arguments: {message}"
                )));
            }
        }
        Ok(())
    }
}

/// Refuses a pool of no workers.
pub(crate) fn check_max_workers(max_workers: usize) -> Result<(), Error> {
    if max_workers == 0 {
        return Err(Error::Config(
            "max_workers must be at least 1 (it is 0)".to_owned(),
        ));
    }
    Ok(())
}
