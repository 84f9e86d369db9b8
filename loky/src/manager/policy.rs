//! The manager's decisions as pure functions of plain numbers, so that each
//! is tested by a table here rather than by starting processes.

use super::ShutdownRequest;
use loky_worker::protocol::{Claim, SLOTS};
use std::time::Duration;

/// How many calls a worker may hold at once (the running one included)
/// when `queued` jobs wait and `incoming` workers (starting, or that may
/// still be started) will take some: `1 + prefetch` only for jobs those
/// will not take, and never more than the board's slots.
pub(super) fn hold_limit(queued: usize, incoming: usize, prefetch: usize) -> usize {
    if queued > incoming {
        prefetch.saturating_add(1).min(SLOTS - 1)
    } else {
        1
    }
}

/// The deepest automatic prefetch: calls a busy worker may hold behind
/// the running one when calls are short.
pub(super) const MAX_AUTO_PREFETCH: usize = 64;

/// About how much work an automatic prefetch queues behind a running call:
/// enough that a worker never waits for the parent between short calls,
/// little enough that taking calls back for an idle worker stays rare.
pub(super) const PREFETCH_TARGET: Duration = Duration::from_millis(1);

/// How many calls a busy worker may hold behind the running one: the
/// configured number, or, by default, as many as fill [`PREFETCH_TARGET`]
/// at the measured `mean` call time (1 until calls were measured, or when
/// they take longer than the target).
pub(super) fn prefetch_depth(configured: Option<usize>, mean: Option<Duration>) -> usize {
    if let Some(depth) = configured {
        return depth;
    }
    let Some(mean) = mean else { return 1 };
    let fits = PREFETCH_TARGET.as_nanos() / mean.as_nanos().max(1);
    usize::try_from(fits)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_AUTO_PREFETCH)
}

/// The shortest wait between the manager's looks at workers whose calls it
/// may hear of late.
pub(super) const LATE_LOOK_AT_LEAST: Duration = Duration::from_millis(10);

/// How long the manager may sleep, at most, while calls lent and delivered
/// may wait for its next step (`later_open`): a worker its callers keep
/// lending looks busy to it until it hears otherwise, so while some worker
/// looks busy (`some_busy`) and workers retire when `idle`, it looks again
/// once an idle limit (at least [`LATE_LOOK_AT_LEAST`]). Otherwise, never.
pub(super) fn late_look(
    later_open: bool,
    idle: Option<Duration>,
    some_busy: bool,
) -> Option<Duration> {
    idle.filter(|_| later_open && some_busy)
        .map(|idle| idle.max(LATE_LOOK_AT_LEAST))
}

/// The running mean of call times: each new `sample` weighs 1/8.
pub(super) fn mean_call_time(mean: Option<Duration>, sample: Duration) -> Duration {
    match mean {
        None => sample,
        Some(mean) => mean.saturating_mul(7).saturating_add(sample) / 8,
    }
}

/// Which worker takes the next job: among `(id, held)` of those that can,
/// the one holding the fewest (an idle one first); the oldest among equals.
pub(super) fn pick_worker(candidates: impl IntoIterator<Item = (u64, usize)>) -> Option<u64> {
    candidates
        .into_iter()
        .min_by_key(|&(id, held)| (held, id))
        .map(|(id, _)| id)
}

/// Which busy worker gives back a job it has not started, for an idle
/// worker to run: among `(id, waiting)` (jobs behind the running one), the
/// one with the most waiting; none if no job waits anywhere.
pub(super) fn steal_from(busy: impl IntoIterator<Item = (u64, usize)>) -> Option<u64> {
    busy.into_iter()
        .filter(|&(_, waiting)| waiting > 0)
        .max_by_key(|&(id, waiting)| (waiting, std::cmp::Reverse(id)))
        .map(|(id, _)| id)
}

/// How many workers to start now. `live` counts every worker not yet
/// reaped, leaving and dying ones included: `max_workers` bounds the
/// processes that exist, as in Python's pools, so a pool that shrank grows
/// back only as its retired workers exit.
pub(super) fn spawn_count(
    queued: usize,
    starting: usize,
    live: usize,
    max_workers: usize,
    fill_pool: bool,
) -> usize {
    let room = max_workers.saturating_sub(live);
    let wanted = if fill_pool {
        room
    } else {
        queued.saturating_sub(starting)
    };
    wanted.min(room)
}

/// How busy a worker is, for choosing whom to retire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Busy {
    Starting,
    Idle,
    Working,
}

/// Which workers leave when the pool shrinks to `max`: starting and idle
/// ones first, and among equals the newest, so the oldest pids survive.
pub(super) fn shrink_victims(active: &[(u64, Busy)], max: usize) -> Vec<u64> {
    let surplus = active.len().saturating_sub(max);
    let mut order = active.to_vec();
    order.sort_by_key(|&(id, busy)| (busy, std::cmp::Reverse(id)));
    order.into_iter().take(surplus).map(|(id, _)| id).collect()
}

/// What becomes of a call a dead worker held, by its claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    /// It was running: it fails (or, for a chunk, its running element does).
    Blame,
    /// It never started: it runs elsewhere.
    Requeue,
    /// It was taken back already: its future is settled.
    Drop,
}

/// Settles a call of a dead worker by its claim. A worker killed because of
/// another call (`killed_for_another`) does not blame the one it had
/// started meanwhile: that one runs again.
pub(super) fn settle(claim: Claim, killed_for_another: bool) -> Settle {
    match claim {
        Claim::Started if killed_for_another => Settle::Requeue,
        Claim::Started => Settle::Blame,
        Claim::Queued => Settle::Requeue,
        Claim::Revoked | Claim::Gone => Settle::Drop,
    }
}

/// Where a chunk stood when its worker died, in elements of this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChunkSplit {
    /// The element that was running, if one was.
    pub(super) running: Option<usize>,
    /// The first element that never started.
    pub(super) rest: usize,
}

/// `len` elements, `delivered` outcomes known, `started` elements begun.
pub(super) fn chunk_split(len: usize, delivered: usize, started: usize) -> ChunkSplit {
    let delivered = delivered.min(len);
    if started > delivered && delivered < len {
        ChunkSplit {
            running: Some(delivered),
            rest: delivered + 1,
        }
    } else {
        ChunkSplit {
            running: None,
            rest: delivered,
        }
    }
}

/// After `failures` initializer failures in a row: break the executor?
pub(super) fn initializer_breaks(failures: usize, max_failures: usize) -> bool {
    failures >= max_failures
}

impl ShutdownRequest {
    /// The stronger of two requests.
    pub(super) fn merge(self, other: ShutdownRequest) -> ShutdownRequest {
        let kill = match (self.kill, other.kill) {
            (Some(libc::SIGKILL), _) | (_, Some(libc::SIGKILL)) => Some(libc::SIGKILL),
            (Some(signal), _) | (None, Some(signal)) => Some(signal),
            (None, None) => None,
        };
        ShutdownRequest {
            cancel_futures: self.cancel_futures || other.cancel_futures,
            kill,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manager_looks_at_workers_heard_of_late_only_while_it_must() {
        let ms = Duration::from_millis;
        let cases = [
            // (later open, idle limit, some worker looks busy) -> look after
            ((true, Some(ms(100)), true), Some(ms(100))),
            // A zero idle limit must not make it spin.
            ((true, Some(Duration::ZERO), true), Some(LATE_LOOK_AT_LEAST)),
            ((true, Some(ms(100)), false), None),
            ((true, None, true), None),
            ((false, Some(ms(100)), true), None),
        ];
        for ((open, idle, busy), expected) in cases {
            assert_eq!(
                late_look(open, idle, busy),
                expected,
                "{open} {idle:?} {busy}"
            );
        }
    }

    #[test]
    fn automatic_prefetch_fills_about_a_millisecond_of_short_calls() {
        let us = Duration::from_micros;
        for (configured, mean, expected) in [
            (Some(0), Some(us(1)), 0),
            (Some(3), None, 3),
            (Some(usize::MAX), Some(us(1)), usize::MAX),
            (None, None, 1),
            (None, Some(Duration::ZERO), MAX_AUTO_PREFETCH),
            (None, Some(us(10)), MAX_AUTO_PREFETCH),
            (None, Some(us(100)), 10),
            (None, Some(us(400)), 2),
            (None, Some(us(1000)), 1),
            (None, Some(Duration::from_secs(5)), 1),
            (None, Some(Duration::MAX), 1),
        ] {
            assert_eq!(
                prefetch_depth(configured, mean),
                expected,
                "configured {configured:?}, mean {mean:?}"
            );
        }
    }

    #[test]
    fn the_mean_call_time_follows_new_samples() {
        let ms = Duration::from_millis;
        assert_eq!(mean_call_time(None, ms(8)), ms(8));
        assert_eq!(mean_call_time(Some(ms(8)), ms(16)), ms(9));
        assert_eq!(mean_call_time(Some(ms(8)), ms(0)), ms(7));
        assert_eq!(
            mean_call_time(Some(Duration::MAX), Duration::MAX),
            Duration::MAX / 8
        );
        let mut mean = Some(ms(1000));
        for _ in 0..100 {
            mean = Some(mean_call_time(mean, ms(1)));
        }
        assert!(mean.unwrap() < ms(2), "{mean:?}");
    }

    #[test]
    fn hold_limit_prefetches_only_what_incoming_workers_will_not_take() {
        for (queued, incoming, prefetch, expected) in [
            (0, 0, 1, 1),
            (1, 0, 1, 2),
            (3, 3, 1, 1),
            (4, 3, 1, 2),
            (5, 0, 0, 1),
            (5, 0, usize::MAX, SLOTS - 1),
            (5, 0, SLOTS * 2, SLOTS - 1),
        ] {
            assert_eq!(
                hold_limit(queued, incoming, prefetch),
                expected,
                "{queued} queued, {incoming} incoming, prefetch {prefetch}"
            );
        }
    }

    #[test]
    fn an_idle_worker_takes_the_next_job_first() {
        for (candidates, expected) in [
            (vec![], None),
            (vec![(0, 1), (1, 0)], Some(1)),
            (vec![(3, 0), (1, 0)], Some(1)),
            (vec![(0, 2), (1, 1), (2, 2)], Some(1)),
        ] {
            assert_eq!(pick_worker(candidates.clone()), expected, "{candidates:?}");
        }
    }

    #[test]
    fn steal_from_the_worker_with_most_waiting() {
        for (busy, expected) in [
            (vec![], None),
            (vec![(0, 0), (1, 0)], None),
            (vec![(0, 1), (1, 3)], Some(1)),
            (vec![(4, 2), (2, 2)], Some(2)),
        ] {
            assert_eq!(steal_from(busy.clone()), expected, "{busy:?}");
        }
    }

    #[test]
    fn spawn_count_follows_the_queue_within_room() {
        for (queued, starting, live, max, fill, expected) in [
            (0, 0, 0, 4, false, 0),
            (3, 0, 0, 4, false, 3),
            (10, 0, 0, 4, false, 4),
            (10, 2, 2, 4, false, 2),
            (3, 3, 3, 4, false, 0),
            (0, 0, 1, 4, true, 3),
            (0, 0, 5, 4, true, 0),
            // Two retiring workers still exist: no room under max 2.
            (5, 0, 2, 2, false, 0),
            (20, 0, 0, usize::MAX, false, 20),
        ] {
            assert_eq!(
                spawn_count(queued, starting, live, max, fill),
                expected,
                "{queued} queued, {starting} starting, {live} live, max {max}, fill {fill}"
            );
        }
    }

    #[test]
    fn shrinking_retires_starting_then_idle_then_newest() {
        use Busy::*;
        let workers = [
            (0, Working),
            (1, Idle),
            (2, Working),
            (3, Starting),
            (4, Idle),
        ];
        for (max, expected) in [
            (5, vec![]),
            (4, vec![3]),
            (3, vec![3, 4]),
            (2, vec![3, 4, 1]),
            (1, vec![3, 4, 1, 2]),
            (0, vec![3, 4, 1, 2, 0]),
        ] {
            assert_eq!(shrink_victims(&workers, max), expected, "max {max}");
        }
    }

    #[test]
    fn a_dead_workers_calls_are_settled_by_their_claims() {
        for (claim, killed_for_another, expected) in [
            (Claim::Started, false, Settle::Blame),
            (Claim::Started, true, Settle::Requeue),
            (Claim::Queued, false, Settle::Requeue),
            (Claim::Queued, true, Settle::Requeue),
            (Claim::Revoked, false, Settle::Drop),
            (Claim::Gone, false, Settle::Drop),
        ] {
            assert_eq!(settle(claim, killed_for_another), expected, "{claim:?}");
        }
    }

    #[test]
    fn chunk_split_blames_only_the_running_element() {
        for (len, delivered, started, running, rest) in [
            (10, 0, 0, None, 0),
            (10, 0, 1, Some(0), 1),
            (10, 7, 8, Some(7), 8),
            (10, 7, 7, None, 7),
            (10, 10, 10, None, 10),
            (10, 12, 10, None, 10),
        ] {
            assert_eq!(
                chunk_split(len, delivered, started),
                ChunkSplit { running, rest },
                "{len} elements, {delivered} delivered, {started} started"
            );
        }
    }

    #[test]
    fn initializer_breaks_after_max_failures_in_a_row() {
        assert!(!initializer_breaks(2, 3));
        assert!(initializer_breaks(3, 3));
        assert!(initializer_breaks(1, 1));
    }

    #[test]
    fn shutdown_requests_only_strengthen() {
        let plain = ShutdownRequest::default();
        let cancel = ShutdownRequest {
            cancel_futures: true,
            kill: None,
        };
        let term = ShutdownRequest {
            cancel_futures: false,
            kill: Some(libc::SIGTERM),
        };
        let kill = ShutdownRequest {
            cancel_futures: false,
            kill: Some(libc::SIGKILL),
        };
        let merged = |a: ShutdownRequest, b| {
            let m = a.merge(b);
            (m.cancel_futures, m.kill)
        };
        assert_eq!(merged(plain, plain), (false, None));
        assert_eq!(merged(plain, cancel), (true, None));
        assert_eq!(merged(cancel, plain), (true, None));
        assert_eq!(merged(term, plain), (false, Some(libc::SIGTERM)));
        assert_eq!(merged(term, kill), (false, Some(libc::SIGKILL)));
        assert_eq!(merged(kill, term), (false, Some(libc::SIGKILL)));
        assert_eq!(merged(cancel, term), (true, Some(libc::SIGTERM)));
    }
}
