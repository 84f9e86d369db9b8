//! # loky: a robust, reusable process-pool executor
//!
//! Run functions in worker processes when threads are not enough: code that
//! may crash, leak, hang or must be killed, libraries that are not
//! thread-safe, hard memory isolation. Modelled on Python's `loky` and
//! `concurrent.futures.ProcessPoolExecutor`.
//!
//! ```
//! #[loky::task]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! # fn main() -> Result<(), loky::Error> {
//! let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
//! assert_eq!(executor.submit(square, 7)?.result()?, 49);
//! let squares: Vec<u64> = executor.map(square, 0..5).collect::<Result<_, _>>()?;
//! assert_eq!(squares, [0, 1, 4, 9, 16]);
//! assert_eq!(square.call(3), 9); // in this process
//! # Ok(())
//! # }
//! ```
//!
//! - `#[loky::task]` registers a function under a stable id (its module path
//!   and name) so that workers can find it.
//! - Workers are this very binary, started again; they never run `main`
//!   (see `#[loky::main]`), and work under `cargo test`, in examples,
//!   benches and doctests.
//! - A worker that dies (panic-free exit, abort, segfault, SIGKILL) fails
//!   the task it ran with [`Error::WorkerDied`], naming the pid, the exit
//!   code or signal and the task; it is replaced, and the tasks it had not
//!   started run elsewhere.
#![deny(missing_debug_implementations)]

// Lets `#[loky::task]` expand inside this crate's own unit tests.
extern crate self as loky;

mod chunk_results;
mod cluster;
mod config;
mod cpu;
mod depth;
mod error;
mod executor;
mod future;
mod host;
mod job;
mod manager;
mod map;
mod map_unordered;
mod message;
#[cfg(feature = "nats")]
pub mod nats;
mod options;
#[cfg(feature = "progress")]
mod progress;
mod reusable;
mod shared;
mod stats;
#[cfg(feature = "stream")]
pub mod stream;
mod task;
mod threads;
mod wait;
mod worker_logs;

/// Plain-value casts for [`SharedSlice`]: implement [`bytemuck::Pod`] on
/// your own `#[repr(C)]` types to share them.
pub use bytemuck;
pub use cluster::{Backend, ENV_BACKEND};
pub use config::{Config, DEFAULT_LEAK_THRESHOLD, ENV_LEAK_THRESHOLD, REUSABLE_IDLE_TIMEOUT};
pub use cpu::{ENV_MAX_CPU_COUNT, cpu_count, physical_cpu_count};
pub use depth::{DEFAULT_MAX_DEPTH, ENV_MAX_DEPTH};
pub use error::{Attempt, Error, ExitReason, SpawnError, SubmitError};
pub use executor::{Executor, Shutdown};
pub use future::Future;
/// The progress-bar crate that [`Progress`] draws with, re-exported so that
/// `progress_with` takes the same `ProgressBar` type.
#[cfg(feature = "progress")]
pub use indicatif;
pub use loky_worker::protocol::{RemotePanic, Stage};
/// # Example
///
/// ```
/// # #[loky::task] fn checksum(data: loky::SharedBytes) -> u64 {
/// #     data.iter().map(|&b| u64::from(b)).sum()
/// # }
/// # fn main() -> Result<(), loky::Error> {
/// let table = loky::SharedBytes::new(&vec![1u8; 1 << 20]).expect("a shared region");
/// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
/// // Four tasks, one copy of the table.
/// let sums: Vec<u64> = executor
///     .map(checksum, std::iter::repeat_n(table.clone(), 4))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(sums, [1 << 20; 4]);
/// # Ok(())
/// # }
/// ```
pub use loky_worker::shared_bytes::SharedBytes;
/// # Example
///
/// ```
/// # #[loky::task] fn row_sum(matrix: loky::SharedSlice<f64>, row: usize) -> f64 {
/// #     matrix[row * 1000..(row + 1) * 1000].iter().sum()
/// # }
/// # fn main() -> Result<(), loky::Error> {
/// // A 1000 x 1000 matrix, shared once, read in place by every task.
/// let values: Vec<f64> = (0..1_000_000).map(|i| (i % 1000) as f64).collect();
/// let matrix = loky::SharedSlice::new(&values).expect("a shared region");
/// let executor = loky::Executor::new(loky::Config::new().max_workers(2))?;
/// let sums: Vec<f64> = executor
///     .map(row_sum, (0..1000).map(|row| (matrix.clone(), row)))
///     .collect::<Result<_, _>>()?;
/// assert!(sums.iter().all(|&sum| sum == 499_500.0));
/// # Ok(())
/// # }
/// ```
pub use loky_worker::shared_slice::SharedSlice;
pub use map::Map;
pub use map_unordered::MapUnordered;
pub use message::Message;
pub use options::CallOptions;
#[cfg(feature = "progress")]
pub use progress::Progress;
pub use reusable::{Reuse, get_reusable_executor, get_reusable_executor_with};
pub use stats::{Stats, WorkerExits};
pub use task::Task;
pub use threads::THREAD_LIMIT_VARS;
pub use wait::{AsCompleted, ReturnWhen, WaitResult, as_completed, wait};
pub use worker_logs::WORKER_LOG_TARGET;

/// Registers a free function as a task that workers can run.
///
/// ```
/// #[loky::task]
/// fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
/// assert_eq!(add.call((2, 3)), 5);
/// ```
///
/// The function becomes a unit struct of the same name that implements
/// [`Task`]: `add.call((2, 3))` runs it here, `add.spawn((2, 3))` on the
/// reusable executor, `executor.submit(add, (2, 3))` on an executor. Its id
/// is `module_path!()::add`; `#[loky::task(id = "...")]` sets another.
/// Arguments and the result must be serde types, taken by value.
///
/// # The task's name is taken
///
/// Since the task is a unit struct, its name is a pattern wherever it is in
/// scope: `let count = 3;` beside a task named `count` does not bind a new
/// variable, it tries to match `3` against the struct, and fails to compile
/// (error E0308: "`count` is interpreted as a unit struct, not a new
/// binding"). The same goes for a field pattern such as
/// `Error::WorkerDied { pid, .. }` beside a task named `pid`.
///
/// ```compile_fail,E0308
/// #[loky::task]
/// fn count(items: Vec<u32>) -> usize {
///     items.len()
/// }
///
/// fn main() {
///     let count = 3; // error: `count` is interpreted as a unit struct
///     assert_eq!(count, 3);
/// }
/// ```
///
/// Rename the binding or the task (tasks read well as verbs: `count_items`),
/// or put tasks in a module of their own and name them by path:
///
/// ```
/// mod tasks {
///     #[loky::task]
///     pub fn count(items: Vec<u32>) -> usize {
///         items.len()
///     }
/// }
///
/// fn main() {
///     let count = 3; // a new variable: the task is `tasks::count`
///     assert_eq!(tasks::count.call(vec![7; count]), 3);
/// }
/// ```
pub use loky_macros::task;

/// Wraps `fn main` so that a worker process never runs it.
///
/// On Linux workers take over before `main` anyway; the attribute makes
/// that explicit and portable.
///
/// ```
/// #[loky::main]
/// fn main() {
///     // Only the parent process gets here.
/// }
/// ```
pub use loky_macros::main;

#[doc(hidden)]
pub mod __private {
    //! What `#[loky::task]` and `#[loky::main]` expand to. Not public API.

    use crate::{Future, Message, Task};
    use loky_worker::protocol::{Failure, Packing, Payload};

    pub use inventory;
    pub use loky_worker::entry::main_entry;
    pub use loky_worker::registry::TaskEntry;

    /// Runs one call of `T` on encoded arguments, in a worker.
    pub fn invoke<T: Task>(args: &[u8], packing: Packing) -> Result<Payload, Failure> {
        loky_worker::invoke::run(
            T::Args::decode,
            |args| T::default().call(args),
            |result| result.encode(packing),
            args,
        )
    }

    /// Runs one element of a chunk of `T`, in a worker.
    pub fn invoke_into<T: Task>(args: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        loky_worker::invoke::run_into(
            T::Args::decode,
            |args| T::default().call(args),
            |result, out| result.encode_into(out),
            args,
            out,
        )
    }

    /// `task.spawn(args)`.
    pub fn spawn<T: Task>(task: T, args: T::Args) -> Future<T::Output> {
        crate::reusable::spawn(task, args)
    }
}

/// The README's examples, compiled and run as doctests so that they stay
/// true. `loky/README.md` is a link to the workspace's README, and `cargo
/// package` puts the README at the root of the packaged crate: the same path
/// works in both.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
