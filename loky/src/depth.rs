//! Nesting: a task may build an executor inside its worker, down to a
//! limit. The user's process is at depth 0, its workers at 1, theirs at 2.

use crate::error::Error;
use loky_worker::protocol::ENV_DEPTH;

/// Environment variable setting the deepest level at which workers may
/// still be started (default 10, as the recursion limit Python loky
/// applies).
pub const ENV_MAX_DEPTH: &str = "LOKY_MAX_DEPTH";
/// The default of [`ENV_MAX_DEPTH`].
pub const DEFAULT_MAX_DEPTH: usize = 10;

/// How deep this process is: 0 unless it is a worker.
pub(crate) fn current() -> usize {
    read(ENV_DEPTH).unwrap_or(0)
}

fn max() -> usize {
    read(ENV_MAX_DEPTH).unwrap_or(DEFAULT_MAX_DEPTH)
}

fn read(key: &str) -> Option<usize> {
    std::env::var(key).ok()?.trim().parse().ok()
}

/// Refuses to build an executor whose workers would be too deep.
pub(crate) fn check() -> Result<(), Error> {
    let (depth, max) = (current(), max());
    if depth >= max {
        return Err(Error::Config(format!(
            "executors nested too deep: this process is a worker at depth {depth} and \
             {ENV_MAX_DEPTH} is {max}"
        )));
    }
    Ok(())
}
