//! Brief waits without sleeping.
//!
//! A thread that sleeps until a message arrives is woken by the kernel, and
//! waking a thread whose CPU went idle is the dearest step of a round trip:
//! on a virtual machine the idle CPU halts, and the host takes 10-25 µs to
//! run it again, several times what the message itself costs. So a thread
//! that expects its answer within microseconds (a worker between calls, a
//! caller in `Future::result`) first looks for it for a short while, and
//! only then sleeps. It yields the CPU between looks, so that on a machine
//! with few CPUs the thread it waits for, or any other, runs at once.
//!
//! The budget is the executor's `Config::spin_wait`; a worker gets it in
//! its `Setup`. Zero never looks twice.

use std::time::{Duration, Instant};

/// How long a waiting thread looks before it sleeps, unless configured:
/// about two wake-ups of an idle virtual CPU.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The longest budget a configuration may ask for: past this, sleeping
/// costs less than looking.
pub const MAX_SPIN: Duration = Duration::from_millis(10);

/// Looks for `ready` until it holds or `budget` has passed, yielding the
/// CPU between looks; returns whether it holds.
pub fn until(budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    if ready() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    let start = Instant::now();
    loop {
        std::thread::yield_now();
        if ready() {
            return true;
        }
        if start.elapsed() >= budget {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_zero_budget_looks_once() {
        let mut looks = 0;
        assert!(!until(Duration::ZERO, || {
            looks += 1;
            false
        }));
        assert_eq!(looks, 1);
    }

    #[test]
    fn gives_up_after_its_budget() {
        let start = Instant::now();
        assert!(!until(Duration::from_millis(2), || false));
        assert!(start.elapsed() >= Duration::from_millis(2));
    }

    #[test]
    fn sees_what_another_thread_sets() {
        let flag = Arc::new(AtomicBool::new(false));
        let setter = {
            let flag = Arc::clone(&flag);
            std::thread::spawn(move || flag.store(true, Ordering::Release))
        };
        // Long enough for any scheduler to run the setter.
        assert!(until(Duration::from_secs(30), || flag.load(Ordering::Acquire)));
        setter.join().unwrap();
    }
}
