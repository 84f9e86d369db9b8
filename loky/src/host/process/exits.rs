//! The exits thread: one per executor, it watches every worker process
//! through a pidfd in one `epoll` set and reports `Exited` when a process
//! has exited. A pidfd never reaps (the manager does, through
//! `WorkerHandle::reap`), and it names the process itself, never a reused
//! pid.
//!
//! Where a pidfd cannot be had (a kernel before 5.3, no descriptors left),
//! that worker gets a thread of its own that waits with `waitid(WNOWAIT)`,
//! as every worker did before; so does every worker still watched if the
//! set itself fails.

use super::super::{Notify, WorkerEvent};
use super::contained;
use rustix::event::epoll;
use rustix::fd::OwnedFd;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

/// The key of the eventfd that tells the thread to stop.
const STOP: u64 = u64::MAX;

/// One watched process: its pid (for the fallback), pidfd and listener.
struct Watched {
    pid: u32,
    pidfd: OwnedFd,
    notify: Arc<Notify>,
}

/// What the spawner and the exits thread share.
struct Set {
    epoll: OwnedFd,
    watched: Mutex<Watching>,
    next: AtomicU64,
}

struct Watching {
    processes: HashMap<u64, Watched>,
    /// The thread stopped watching (its epoll failed): every process goes
    /// to a thread of its own.
    ended: bool,
}

impl Set {
    fn watched(&self) -> std::sync::MutexGuard<'_, Watching> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The exits thread of one backend, if it could be started; it stops
/// when this is dropped.
pub(super) struct Exits {
    set: Option<Arc<Set>>,
    stop: Option<OwnedFd>,
    /// Disconnected once the thread has let go of the set.
    finished: Option<mpsc::Receiver<()>>,
}

impl Exits {
    /// Starts the thread; on failure every worker gets its own `waitid`
    /// thread instead.
    pub(super) fn start() -> Exits {
        match start() {
            Ok((set, stop, finished)) => Exits {
                set: Some(set),
                stop: Some(stop),
                finished: Some(finished),
            },
            Err(error) => {
                tracing::warn!(%error, "no exits thread: one waitid thread per worker instead");
                Exits {
                    set: None,
                    stop: None,
                    finished: None,
                }
            }
        }
    }

    /// Reports `Exited` to `notify` once process `pid` has exited; `Err`
    /// only if neither a pidfd nor a thread could watch it.
    pub(super) fn watch(&self, pid: u32, notify: Arc<Notify>) -> std::io::Result<()> {
        let Some(set) = &self.set else {
            return wait_alone(pid, notify);
        };
        let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else {
            return wait_alone(pid, notify);
        };
        let pidfd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(pidfd) => pidfd,
            Err(error) => {
                tracing::debug!(pid, %error, "no pidfd: a waitid thread watches this worker");
                return wait_alone(pid, notify);
            }
        };
        let key = set.next.fetch_add(1, Ordering::Relaxed);
        // In the table before the set can report it.
        let mut watched = set.watched();
        if watched.ended {
            drop(watched);
            return wait_alone(pid, notify);
        }
        let added = epoll::add(
            &set.epoll,
            &pidfd,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN,
        );
        if let Err(error) = added {
            drop(watched);
            tracing::debug!(pid, %error, "pidfd not watched: a waitid thread watches this worker");
            return wait_alone(pid, notify);
        }
        watched
            .processes
            .insert(key, Watched { pid, pidfd, notify });
        Ok(())
    }
}

impl Drop for Exits {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            let _ = rustix::io::write(stop, &1u64.to_ne_bytes());
        }
        if let Some(finished) = &self.finished {
            let _ = finished.recv_timeout(super::results::FINISH);
        }
    }
}

#[allow(clippy::type_complexity)]
fn start() -> std::io::Result<(Arc<Set>, OwnedFd, mpsc::Receiver<()>)> {
    use rustix::event::{EventfdFlags, eventfd};
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let stop = eventfd(0, EventfdFlags::CLOEXEC)?;
    epoll::add(
        &epoll,
        &stop,
        epoll::EventData::new_u64(STOP),
        epoll::EventFlags::IN,
    )?;
    let set = Arc::new(Set {
        epoll,
        watched: Mutex::new(Watching {
            processes: HashMap::new(),
            ended: false,
        }),
        next: AtomicU64::new(0),
    });
    let thread_set = Arc::clone(&set);
    let (done, finished) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("loky-exits".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            let ran = panic::catch_unwind(AssertUnwindSafe(|| run(&thread_set)));
            let why = match ran {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(format!("its epoll failed: {error}")),
                Err(payload) => Some(format!(
                    "it panicked: {}",
                    contained(|| loky_worker::panic::payload_message(&*payload))
                        .unwrap_or_default()
                )),
            };
            if let Some(why) = why {
                hand_over(&thread_set, &why);
            }
            drop(thread_set);
            drop(done);
        })?;
    Ok((set, stop, finished))
}

/// Reports each exit until told to stop; `Err` if the set fails.
fn run(set: &Set) -> rustix::io::Result<()> {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(32);
    loop {
        events.clear();
        let waited = epoll::wait(
            &set.epoll,
            rustix::buffer::spare_capacity(&mut events),
            None,
        );
        match waited {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(error) => return Err(error),
        }
        for event in &events {
            let key = event.data.u64();
            if key == STOP {
                return Ok(());
            }
            let Some(exited) = set.watched().processes.remove(&key) else {
                continue;
            };
            let _ = epoll::delete(&set.epoll, &exited.pidfd);
            report(exited.pid, &exited.notify);
        }
    }
}

/// The exits thread ended (`why`) with processes still watched: each gets
/// a thread of its own, and later ones too (`Watching::ended`), so that no
/// death goes unreported.
fn hand_over(set: &Set, why: &str) {
    contained(|| {
        tracing::error!(
            why,
            "the exits thread ended: a waitid thread per worker instead"
        )
    });
    let left: Vec<Watched> = {
        let mut watched = set.watched();
        watched.ended = true;
        watched.processes.drain().map(|(_, w)| w).collect()
    };
    for Watched { pid, notify, .. } in left {
        if let Err(error) = wait_alone(pid, Arc::clone(&notify)) {
            contained(
                || tracing::error!(pid, %error, "nothing can watch this worker: reported exited"),
            );
            report(pid, &notify);
        }
    }
}

/// Tells `notify` its process exited; a panic there (or in logging it, or
/// in dropping its payload) is the listener's, and must not stop the watch
/// of the others.
fn report(pid: u32, notify: &Notify) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| notify(WorkerEvent::Exited))) {
        contained(move || {
            let message = loky_worker::panic::payload_message(&*payload);
            tracing::error!(pid, message, "reporting a worker's exit panicked");
        });
    }
}

/// Watches `pid` from a thread of its own.
fn wait_alone(pid: u32, notify: Arc<Notify>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("loky-exit-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            wait_exit_no_reap(pid);
            report(pid, &notify);
        })
        .map(drop)
}

/// Blocks until `pid` has exited, without reaping it (`WNOWAIT` leaves it
/// for the manager). Returns at once if it is not our child any more
/// (reaped elsewhere).
fn wait_exit_no_reap(pid: u32) {
    use rustix::process::{Pid, WaitId, WaitIdOptions};
    let Some(pid) = Pid::from_raw(pid as i32) else {
        return;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(WaitId::Pid(pid), options) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::mpsc;
    use std::time::Duration;

    fn listener() -> (Arc<Notify>, mpsc::Receiver<u32>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let notify: Notify = Box::new(move |event| {
            assert!(matches!(event, WorkerEvent::Exited));
            tx.lock().unwrap().send(0).is_ok()
        });
        (Arc::new(notify), rx)
    }

    #[test]
    fn each_exit_is_reported_once_by_one_thread_and_nothing_is_reaped() {
        let exits = Exits::start();
        assert!(exits.set.is_some(), "this kernel has pidfds");
        let mut children = Vec::new();
        let mut heard = Vec::new();
        // Long enough that none exits before all three are watched, even
        // on a loaded machine.
        for pause in ["1.5", "1", "1.2"] {
            let child = Command::new("sleep").arg(pause).spawn().unwrap();
            let (notify, rx) = listener();
            exits.watch(child.id(), notify).unwrap();
            children.push(child);
            heard.push(rx);
        }
        // Watched through pidfds, not threads of their own.
        assert_eq!(exits.set.as_ref().unwrap().watched().processes.len(), 3);
        for (child, rx) in children.iter_mut().zip(&heard) {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("exit reported");
            // Not reaped by the watch: the status is still ours.
            assert!(child.wait().unwrap().success());
        }
        std::thread::sleep(Duration::from_millis(50));
        for rx in &heard {
            assert!(rx.try_recv().is_err(), "reported twice");
        }
        assert!(exits.set.as_ref().unwrap().watched().processes.is_empty());
    }

    /// A panic payload whose drop panics too.
    struct Bomb;

    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("dropping the payload");
        }
    }

    #[test]
    fn a_listener_s_panic_even_one_that_panics_again_stops_no_other_watch() {
        let exits = Exits::start();
        let first = Command::new("sleep").arg("0.2").spawn().unwrap();
        let panicking: Notify = Box::new(|_| std::panic::panic_any(Bomb));
        exits.watch(first.id(), Arc::new(panicking)).unwrap();
        let mut second = Command::new("sleep").arg("1").spawn().unwrap();
        let (notify, rx) = listener();
        exits.watch(second.id(), notify).unwrap();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the other exit reported");
        assert!(second.wait().unwrap().success());
        // Still the one thread over pidfds.
        assert!(!exits.set.as_ref().unwrap().watched().ended);
        let mut first = first;
        assert!(first.wait().unwrap().success());
    }

    #[test]
    fn a_worker_without_a_pidfd_gets_its_own_thread() {
        let exits = Exits {
            set: None,
            stop: None,
            finished: None,
        };
        let mut child = Command::new("sleep").arg("0.05").spawn().unwrap();
        let (notify, rx) = listener();
        exits.watch(child.id(), notify).unwrap();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("exit reported");
        assert!(child.wait().unwrap().success());
    }
}
