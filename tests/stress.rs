//! Races and load: workers killing each other, kills right before a
//! shutdown, many bad tasks among good ones, ten threads at once, chains of
//! done-callbacks, a 1 GiB payload.

mod common;

use common::triggers::OnEncode;
use common::{BOUND, eventually, executor, wait_gone};
use loky::{Error, Shutdown};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

#[loky::task]
fn echo(x: u64) -> u64 {
    x
}

#[loky::task]
fn worker_pid() -> u32 {
    std::process::id()
}

#[loky::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Kills process `victim` (another worker), then returns `x`.
#[loky::task]
fn kill_then_echo(victim: u32, x: u64) -> u64 {
    // SAFETY: sends a signal; the victim is a worker of this test's pool.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    x
}

/// Returns a value that cannot be encoded.
#[loky::task]
fn bad_result() -> OnEncode {
    OnEncode(Some(common::triggers::Trigger::SerdeError))
}

#[loky::task]
fn takes_bad_arg(_value: OnEncode) {}

/// The length of `data` and a sample of its bytes.
#[loky::task]
fn fingerprint(data: ByteBuf) -> (usize, u64) {
    (data.len(), sample(&data))
}

/// `len` bytes following a fixed pattern.
#[loky::task]
fn make_bytes(len: usize) -> ByteBuf {
    ByteBuf::from(pattern(len))
}

/// Zeroes (cheap, even in a debug build), with the sampled bytes set.
fn pattern(len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    for (i, byte) in data.iter_mut().enumerate().step_by(4093) {
        *byte = (i % 251) as u8;
    }
    data
}

fn sample(data: &[u8]) -> u64 {
    data.iter().step_by(4093).map(|&b| u64::from(b)).sum()
}

#[test]
fn workers_that_kill_each_other_never_hang_the_pool() {
    let executor = executor(4);
    for round in 0..10 {
        // Fill the pool, then let each task kill some other worker.
        let pids: Vec<u32> = (0..8)
            .map(|_| executor.submit(worker_pid, ()).unwrap())
            .map(|f| f.result_timeout(BOUND).unwrap())
            .collect();
        let futures: Vec<_> = (0..16u64)
            .map(|i| {
                let victim = pids[(i as usize * 7 + round) % pids.len()];
                executor.submit(kill_then_echo, (victim, i)).unwrap()
            })
            .collect();
        for (i, future) in futures.into_iter().enumerate() {
            match future.result_timeout(BOUND) {
                Ok(x) => assert_eq!(x, i as u64),
                Err(Error::WorkerDied { reason, .. }) => {
                    assert_eq!(reason.signal_name(), Some("SIGKILL"));
                }
                Err(other) => panic!("task {i}: {other}"),
            }
        }
    }
    let next = executor.submit(echo, 5).unwrap().result_timeout(BOUND);
    assert_eq!(next.unwrap(), 5);
    assert!(executor.worker_pids().len() <= 4);
}

#[test]
fn a_worker_killed_just_before_shutdown_does_not_hang_it() {
    for _ in 0..5 {
        let executor = executor(2);
        let busy = executor.submit(sleep_ms, 10_000).unwrap();
        let idle = executor.submit(worker_pid, ()).unwrap();
        let idle_pid = idle.result_timeout(BOUND).unwrap();
        assert!(eventually(BOUND, || busy.running()));
        for pid in executor.worker_pids() {
            // SAFETY: sends a signal to one of this test's workers.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let started = Instant::now();
        executor.shutdown(Shutdown::default());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            busy.result_timeout(BOUND),
            Err(Error::WorkerDied { .. })
        ));
        assert!(wait_gone(idle_pid, BOUND));
        assert!(executor.is_stopped());
    }
}

#[test]
fn a_hundred_bad_tasks_among_a_hundred_good_ones_on_one_worker() {
    let executor = executor(1);
    let mut futures = Vec::new();
    for i in 0..100u64 {
        futures.push((i, Some(executor.submit(echo, i).unwrap()), None, None));
        let bad_arg = executor
            .submit(
                takes_bad_arg,
                OnEncode(Some(common::triggers::Trigger::SerdeError)),
            )
            .unwrap();
        let bad = executor.submit(bad_result, ()).unwrap();
        futures.push((i, None, Some(bad_arg), Some(bad)));
    }
    for (i, good, bad_arg, bad) in futures {
        if let Some(good) = good {
            assert_eq!(good.result_timeout(BOUND).unwrap(), i);
        }
        if let Some(bad_arg) = bad_arg {
            assert!(matches!(
                bad_arg.result_timeout(BOUND),
                Err(Error::Serialization {
                    stage: loky::Stage::EncodeArgs,
                    ..
                })
            ));
        }
        if let Some(bad) = bad {
            assert!(matches!(
                bad.result_timeout(BOUND),
                Err(Error::Serialization {
                    stage: loky::Stage::EncodeResult,
                    ..
                })
            ));
        }
    }
}

#[test]
fn ten_threads_submit_map_cancel_and_shut_down_at_once() {
    let executor = executor(2);
    let barrier = Arc::new(Barrier::new(10));
    let threads: Vec<_> = (0..10u64)
        .map(|t| {
            let executor = executor.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for round in 0..20u64 {
                    let x = t * 1000 + round;
                    match t % 4 {
                        0 | 1 => match executor.submit(echo, x) {
                            Ok(future) => match future.result_timeout(BOUND) {
                                Ok(value) => assert_eq!(value, x),
                                Err(error) => assert!(matches!(error, Error::ShutDown)),
                            },
                            Err(refused) => {
                                assert_eq!(refused.args, x);
                                assert!(executor.is_shutdown());
                            }
                        },
                        2 => {
                            for (i, result) in executor.map(echo, x..x + 50).enumerate() {
                                match result {
                                    Ok(value) => assert_eq!(value, x + i as u64),
                                    Err(error) => assert!(matches!(error, Error::ShutDown)),
                                }
                            }
                        }
                        _ => {
                            if let Ok(future) = executor.submit(sleep_ms, 50) {
                                future.cancel();
                                assert!(future.wait_timeout(BOUND));
                            }
                        }
                    }
                    if t == 9 && round == 10 {
                        executor.shutdown(Shutdown {
                            wait: false,
                            ..Shutdown::default()
                        });
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no thread panicked");
    }
    executor.shutdown(Shutdown::default());
    assert!(executor.is_stopped());
}

#[test]
fn done_callbacks_chain_a_hundred_submissions() {
    fn chain(executor: loky::Executor, left: u64, done: mpsc::Sender<u64>, seen: Arc<AtomicUsize>) {
        let next = executor.clone();
        executor
            .submit(echo, left)
            .unwrap()
            .add_done_callback(move |result| {
                let value = *result.as_ref().expect("echo works");
                seen.fetch_add(1, Ordering::SeqCst);
                if value == 0 {
                    let _ = done.send(value);
                } else {
                    chain(next, value - 1, done, seen);
                }
            });
    }
    let executor = executor(2);
    let seen = Arc::new(AtomicUsize::new(0));
    let (done, finished) = mpsc::channel();
    for _ in 0..3 {
        chain(executor.clone(), 99, done.clone(), Arc::clone(&seen));
    }
    for _ in 0..3 {
        assert_eq!(finished.recv_timeout(BOUND).unwrap(), 0);
    }
    assert_eq!(seen.load(Ordering::SeqCst), 300);
}

#[test]
fn a_one_gibibyte_payload_goes_both_ways() {
    const GIB: usize = 1 << 30;
    let executor = executor(1);
    let data = pattern(GIB);
    let expected = sample(&data);
    let (len, got) = executor
        .submit(fingerprint, ByteBuf::from(data))
        .unwrap()
        .result_timeout(Duration::from_secs(120))
        .unwrap();
    assert_eq!((len, got), (GIB, expected));
    let back = executor
        .submit(make_bytes, GIB)
        .unwrap()
        .result_timeout(Duration::from_secs(120))
        .unwrap();
    assert_eq!(back.len(), GIB);
    assert_eq!(sample(&back), expected);
}
