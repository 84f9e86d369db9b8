//! How many threads the libraries inside a worker may start: without a
//! limit, every worker of a numeric library starts one thread per core and
//! the machine runs `workers x cores` threads (joblib and Python loky limit
//! them the same way).

use std::ffi::{OsStr, OsString};

/// The variables that the usual thread pools read at start: OpenMP,
/// OpenBLAS, MKL, Accelerate, numexpr, BLIS, rayon and tokio.
pub const THREAD_LIMIT_VARS: &[&str] = &[
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "TOKIO_WORKER_THREADS",
];

/// How the worker's thread pools are limited: see
/// [`Config::worker_threads`](crate::Config::worker_threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThreadLimit {
    /// The usable CPUs shared among the workers, at least 1 each.
    Share,
    /// This many threads per pool.
    Exactly(usize),
    /// Leave the variables alone.
    Off,
}

/// The variables to set in a new worker: each of [`THREAD_LIMIT_VARS`] that
/// neither the parent's environment (`inherited`) nor the executor's
/// configuration (`configured`) sets already.
pub(crate) fn worker_env(
    limit: ThreadLimit,
    cpus: usize,
    max_workers: usize,
    configured: &[(OsString, OsString)],
    inherited: impl Fn(&str) -> bool,
) -> Vec<(&'static str, String)> {
    let threads = match limit {
        ThreadLimit::Off => return Vec::new(),
        ThreadLimit::Exactly(threads) => threads.max(1),
        ThreadLimit::Share => (cpus / max_workers.max(1)).max(1),
    };
    THREAD_LIMIT_VARS
        .iter()
        .filter(|&&var| !inherited(var) && !configured.iter().any(|(k, _)| k == OsStr::new(var)))
        .map(|&var| (var, threads.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(env: &[(&str, String)], var: &str) -> Option<String> {
        env.iter().find(|(k, _)| *k == var).map(|(_, v)| v.clone())
    }

    #[test]
    fn cpus_are_shared_among_workers_at_least_one_each() {
        for (cpus, workers, expected) in [(8, 2, "4"), (8, 3, "2"), (2, 8, "1"), (1, 1, "1")] {
            let env = worker_env(ThreadLimit::Share, cpus, workers, &[], |_| false);
            assert_eq!(env.len(), THREAD_LIMIT_VARS.len());
            for var in THREAD_LIMIT_VARS {
                assert_eq!(
                    value_of(&env, var).as_deref(),
                    Some(expected),
                    "{cpus}/{workers}"
                );
            }
        }
    }

    #[test]
    fn what_the_user_set_is_left_alone() {
        let configured = [("OMP_NUM_THREADS".into(), "7".into())];
        let env = worker_env(ThreadLimit::Share, 8, 2, &configured, |var| {
            var == "RAYON_NUM_THREADS"
        });
        assert_eq!(value_of(&env, "OMP_NUM_THREADS"), None, "set in the config");
        assert_eq!(value_of(&env, "RAYON_NUM_THREADS"), None, "inherited");
        assert_eq!(value_of(&env, "MKL_NUM_THREADS").as_deref(), Some("4"));
    }

    #[test]
    fn an_explicit_limit_and_opting_out() {
        let env = worker_env(ThreadLimit::Exactly(3), 8, 2, &[], |_| false);
        assert_eq!(value_of(&env, "OPENBLAS_NUM_THREADS").as_deref(), Some("3"));
        let env = worker_env(ThreadLimit::Exactly(0), 8, 2, &[], |_| false);
        assert_eq!(value_of(&env, "OPENBLAS_NUM_THREADS").as_deref(), Some("1"));
        assert!(worker_env(ThreadLimit::Off, 8, 2, &[], |_| false).is_empty());
    }
}
