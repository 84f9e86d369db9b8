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
//!
//! Looking only pays when the two sides run on two CPUs. The kernel may put
//! them on one: a message over a socket wakes its reader on the writer's
//! CPU, and two threads that keep running are never moved apart. They then
//! take turns, and a round trip costs twice as much. So a worker about to
//! look for its caller's next call first steps off its caller's CPU
//! ([`step_aside`]); a caller's thread is the user's, and stays where it is.

use std::cell::Cell;
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

/// A worker steps aside only after a call that took less than this (from
/// its start to its reply): the round trips it speeds up are exchanges of
/// short calls, and after a long call the CPU it would move to may be
/// another busy worker's, which would then share it (measured: gaps of
/// 2-5 ms between 20 ms calls of a CPU-bound map on 2 CPUs).
pub const STEP_ASIDE_AFTER: Duration = Duration::from_millis(1);

/// At most one step aside per this much time: should the kernel keep
/// putting the worker back, it costs two system calls a millisecond.
const STEP_ASIDE_EVERY: Duration = Duration::from_millis(1);

thread_local! {
    /// When this thread last stepped aside.
    static STEPPED_ASIDE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Set if its affinity could not be restored once: it never steps
    /// aside again.
    static NEVER_AGAIN: Cell<bool> = const { Cell::new(false) };
}

/// The CPU this thread runs on.
#[cfg(target_os = "linux")]
pub fn current_cpu() -> usize {
    rustix::thread::sched_getcpu()
}

/// The CPU this thread runs on: unknown here.
#[cfg(not(target_os = "linux"))]
pub fn current_cpu() -> usize {
    usize::MAX
}

/// Moves this thread off CPU `from` if it runs there and may run on
/// another: narrows its CPU affinity to the others, which moves it at once,
/// then restores it as it was. Returns whether it moved.
#[cfg(target_os = "linux")]
pub fn step_aside(from: usize) -> bool {
    use rustix::thread::{sched_getaffinity, sched_setaffinity};
    if current_cpu() != from || NEVER_AGAIN.get() {
        return false;
    }
    let now = Instant::now();
    if STEPPED_ASIDE
        .get()
        .is_some_and(|last| now.duration_since(last) < STEP_ASIDE_EVERY)
    {
        return false;
    }
    STEPPED_ASIDE.set(Some(now));
    let Ok(allowed) = sched_getaffinity(None) else {
        return false;
    };
    if allowed.count() < 2 || !allowed.is_set(from) {
        return false;
    }
    let mut elsewhere = allowed;
    elsewhere.unset(from);
    if sched_setaffinity(None, &elsewhere).is_err() {
        return false;
    }
    // Restored at once: the thread stays where it was moved, and may be
    // moved anywhere it was allowed before. Should that fail (twice), it
    // keeps off one CPU, and never narrows its affinity again.
    if sched_setaffinity(None, &allowed).is_err() && sched_setaffinity(None, &allowed).is_err() {
        NEVER_AGAIN.set(true);
        eprintln!(
            "loky worker {}: could not restore its CPU affinity after stepping off CPU {from}",
            std::process::id()
        );
    }
    true
}

/// Never moves: no affinity here.
#[cfg(not(target_os = "linux"))]
pub fn step_aside(_from: usize) -> bool {
    false
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

    #[cfg(target_os = "linux")]
    #[test]
    fn steps_aside_from_its_cpu_and_keeps_its_affinity() {
        use rustix::thread::{sched_getaffinity, sched_getcpu};
        let allowed = sched_getaffinity(None).unwrap();
        // Each try on a thread of its own (the rate limit is per thread):
        // (moved, from, after, affinity as before).
        let tries: Vec<_> = (0..20)
            .map(|_| {
                std::thread::spawn(move || {
                    let from = sched_getcpu();
                    let moved = step_aside(from);
                    let after = sched_getcpu();
                    (
                        moved,
                        from,
                        after,
                        sched_getaffinity(None).unwrap() == allowed,
                    )
                })
                .join()
                .unwrap()
            })
            .collect();
        assert!(tries.iter().all(|t| t.3), "affinity restored: {tries:?}");
        if allowed.count() >= 2 {
            assert!(
                tries
                    .iter()
                    .any(|&(moved, from, after, _)| moved && after != from),
                "{tries:?}"
            );
        } else {
            assert!(tries.iter().all(|t| !t.0), "{tries:?}");
        }
        // Elsewhere already: nothing to do.
        assert!(!step_aside(usize::MAX));
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
