//! Memory-leak protection, as in Python loky: after a task, at most once a
//! second, a worker compares its resident memory with its reference (taken
//! after its first task). Over the threshold it first hands freed memory
//! back to the OS (`malloc_trim`), measures again, and if still over asks to
//! be replaced. An absolute cap works the same way.

use crate::protocol::{ENV_MEMORY, RetireReason};
use std::time::{Duration, Instant};

/// How often, at most, memory is measured.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A worker's memory limits and what it has measured.
#[derive(Debug, Default)]
pub struct MemoryWatch {
    leak_threshold: Option<u64>,
    rss_cap: Option<u64>,
    reference: Option<u64>,
    last_check: Option<Instant>,
}

impl MemoryWatch {
    /// The limits the parent passed in [`ENV_MEMORY`]: `LEAK,CAP` in bytes.
    pub fn from_env() -> MemoryWatch {
        let value = std::env::var(ENV_MEMORY).unwrap_or_default();
        let mut limits = value
            .split(',')
            .map(|v| v.trim().parse::<u64>().ok().filter(|&n| n > 0));
        MemoryWatch {
            leak_threshold: limits.next().flatten(),
            rss_cap: limits.next().flatten(),
            ..MemoryWatch::default()
        }
    }

    /// Called after each task: why this worker should be replaced, if it
    /// should.
    pub fn after_task(&mut self) -> Option<RetireReason> {
        if self.leak_threshold.is_none() && self.rss_cap.is_none() {
            return None;
        }
        let now = Instant::now();
        if self.reference.is_none() {
            self.reference = resident_bytes();
            self.last_check = Some(now);
            return None;
        }
        if self.last_check.is_some_and(|at| now < at + CHECK_INTERVAL) {
            return None;
        }
        self.last_check = Some(now);
        self.over_limit(resident_bytes()?)?;
        release_free_memory();
        self.over_limit(resident_bytes()?)
    }

    fn over_limit(&self, rss: u64) -> Option<RetireReason> {
        if self.rss_cap.is_some_and(|cap| rss > cap) {
            return Some(RetireReason::MemoryCap { rss });
        }
        let reference = self.reference?;
        let threshold = self.leak_threshold?;
        (rss > reference.saturating_add(threshold))
            .then_some(RetireReason::MemoryLeak { rss, reference })
    }
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Hands memory that `free` kept back to the OS.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_task_sets_the_reference_and_growth_is_measured_against_it() {
        let mut watch = MemoryWatch {
            leak_threshold: Some(1),
            ..MemoryWatch::default()
        };
        assert_eq!(watch.after_task(), None);
        let reference = watch.reference.expect("measured");
        assert!(reference > 0);
        assert_eq!(watch.over_limit(reference), None);
        assert_eq!(
            watch.over_limit(reference + 2),
            Some(RetireReason::MemoryLeak {
                rss: reference + 2,
                reference
            })
        );
        // Measured at most once a second.
        assert_eq!(watch.after_task(), None);
    }

    #[test]
    fn the_cap_is_absolute() {
        let watch = MemoryWatch {
            rss_cap: Some(100),
            ..MemoryWatch::default()
        };
        assert_eq!(
            watch.over_limit(101),
            Some(RetireReason::MemoryCap { rss: 101 })
        );
        assert_eq!(watch.over_limit(100), None);
    }

    #[test]
    fn no_limits_means_no_measurement() {
        let mut watch = MemoryWatch::default();
        assert_eq!(watch.after_task(), None);
        assert_eq!(watch.reference, None);
    }
}
