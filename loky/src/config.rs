//! The executor's configuration.

use crate::error::Error;
use std::ffi::OsString;
use std::time::Duration;

/// How an [`Executor`](crate::Executor) runs its workers.
///
/// ```
/// let config = loky::Config::new().max_workers(2);
/// assert_eq!(config.get_max_workers(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    max_workers: usize,
    handshake_timeout: Duration,
    prefetch: usize,
    env: Vec<(OsString, OsString)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_workers: crate::cpu_count(),
            handshake_timeout: Duration::from_secs(20),
            prefetch: 1,
            env: Vec::new(),
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
    /// tasks better. Default 1.
    pub fn prefetch(mut self, prefetch: usize) -> Config {
        self.prefetch = prefetch;
        self
    }

    /// Sets an environment variable in every worker.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Config {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The configured number of workers.
    pub fn get_max_workers(&self) -> usize {
        self.max_workers
    }

    pub(crate) fn get_handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    pub(crate) fn get_prefetch(&self) -> usize {
        self.prefetch
    }

    pub(crate) fn get_env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// Checks the configuration, as the executor does when it is built.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.max_workers == 0 {
            return Err(Error::Config(
                "max_workers must be at least 1 (it is 0)".to_owned(),
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(Error::Config(
                "handshake_timeout must be longer than zero".to_owned(),
            ));
        }
        Ok(())
    }
}
