//! Per-call settings: how long a call may run, how often it is retried.

use std::time::Duration;

/// Settings for one submission: see [`Executor::submit_with`].
///
/// ```
/// use std::time::Duration;
///
/// let options = loky::CallOptions::new()
///     .timeout(Duration::from_secs(5))
///     .retries(2);
/// # let _ = options;
/// ```
///
/// [`Executor::submit_with`]: crate::Executor::submit_with
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: Option<u32>,
}

impl CallOptions {
    /// No timeout, and the executor's retries (none by default).
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// Limits how long the call may run once a worker starts it: see
    /// [`Executor::submit_timeout`](crate::Executor::submit_timeout).
    pub fn timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the call again, on another worker, if its worker dies while
    /// running it (or, on a cluster, its host is lost), up to `retries`
    /// more times: see
    /// [`Config::retries`](crate::Config::retries). Overrides the
    /// executor's setting for this call.
    pub fn retries(mut self, retries: u32) -> CallOptions {
        self.retries = Some(retries);
        self
    }
}
