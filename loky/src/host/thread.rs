//! The in-process backend, for the manager's unit tests: a worker is a
//! thread of this process running the real worker loop over channels. It
//! "dies" when the test says so ([`Fake::die`]) or when it is signalled:
//! from then on nothing it sends arrives, and the manager sees `Closed`
//! and `Exited` as from a dead process. The thread itself finishes its
//! current task in the background, unseen. A test can also hold its
//! messages back (a lagging results thread) and say when each of its
//! watchers speaks (`Fake::vanish`, `report_exit`, `release`).

use super::{Backend, Calls, Notify, SendError, WorkerEvent, WorkerHandle};
use crate::config::Config;
use crate::error::{ExitReason, SpawnError};
use loky_worker::main_loop::{self, Inbox, Outbox};
use loky_worker::protocol::{Board, FromWorker, ToWorker};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Starts thread workers; the test keeps a [`Control`].
pub(crate) struct ThreadBackend {
    control: Arc<Control>,
}

/// What a test sees of the workers started so far, and how it steers them.
#[derive(Default)]
pub(crate) struct Control {
    workers: Mutex<Vec<Arc<Fake>>>,
    /// How many of the next spawns fail.
    refuse: AtomicUsize,
    next_pid: AtomicU32,
}

/// One thread worker, as the test sees it.
pub(crate) struct Fake {
    pub(crate) pid: u32,
    notify: Notify,
    /// How it ended, once it did.
    death: Mutex<Option<ExitReason>>,
    /// Messages held back, as by a lagging results thread, while `Some`.
    held: Mutex<Option<Vec<FromWorker>>>,
    /// Its board, once it got it: a thread worker that died, or whose
    /// link lags, must not answer through its reply box either.
    board: std::sync::OnceLock<Board>,
    /// Where the report that closes its link stands.
    closing: Mutex<Closing>,
    /// Sends to it fail while it lives.
    refusing: std::sync::atomic::AtomicBool,
}

/// How a thread worker's link closes after its exit, as the process
/// backend's does: behind a report sent once the exit is seen, which may be
/// lost and is then sent again when the manager asks.
#[derive(Default)]
struct Closing {
    /// `Exited` was told.
    exited: bool,
    /// The report that closes the link is sent (behind held messages).
    sent: bool,
    /// `Closed` was told.
    closed: bool,
    /// How many of the next reports are lost.
    lose: usize,
    /// How many times the manager asked for it again.
    retold: usize,
}

impl Closing {
    /// Sends the report that closes the link, unless it is lost.
    fn send_report(&mut self) {
        match self.lose.checked_sub(1) {
            Some(left) => self.lose = left,
            None => self.sent = true,
        }
    }
}

/// The manager's handle on a thread worker.
pub(crate) struct ThreadWorker {
    fake: Arc<Fake>,
}

impl ThreadBackend {
    pub(crate) fn new() -> (ThreadBackend, Arc<Control>) {
        let control = Arc::new(Control {
            next_pid: AtomicU32::new(1_000_000),
            ..Control::default()
        });
        (
            ThreadBackend {
                control: Arc::clone(&control),
            },
            control,
        )
    }
}

impl Control {
    /// Every worker started so far, oldest first.
    pub(crate) fn workers(&self) -> Vec<Arc<Fake>> {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The next `count` spawns fail as the OS would refuse them.
    pub(crate) fn refuse_spawns(&self, count: usize) {
        self.refuse.store(count, Ordering::SeqCst);
    }
}

impl Fake {
    /// Ends this worker as a process would end with `reason`.
    pub(crate) fn die(&self, reason: ExitReason) {
        let mut death = self.death.lock().unwrap_or_else(PoisonError::into_inner);
        if death.is_some() {
            return;
        }
        *death = Some(reason);
        self.close_box();
        // As a process backend reports it: its exit, then its link closed
        // once what it sent is passed on.
        self.report_exit();
    }

    fn closing(&self) -> std::sync::MutexGuard<'_, Closing> {
        self.closing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `count` reports that close its link after its exit are
    /// lost, as a send that fails.
    pub(crate) fn lose_exit_reports(&self, count: usize) {
        self.closing().lose = count;
    }

    /// From now on sends to it fail (`refuse`), though it lives, as when
    /// its messages cannot be made; or succeed again.
    pub(crate) fn refuse_calls(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// How many times the manager asked for its exit report again.
    pub(crate) fn exit_retold(&self) -> usize {
        self.closing().retold
    }

    /// Its link closes while it lives on, as when the results thread
    /// cannot read what it sent: nothing it sends arrives any more.
    pub(crate) fn close_link(&self) {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closing = self.closing();
        if !std::mem::replace(&mut closing.closed, true) {
            drop(closing);
            drop(held);
            self.close_box();
            (self.notify)(WorkerEvent::Closed);
        }
    }

    /// Tells `Closed` once its exit report is sent and no message is held
    /// in front of it.
    fn catch_up(&self) {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        self.catch_up_behind(&held);
    }

    /// As [`Fake::catch_up`], `held` locked: nothing is released meanwhile.
    fn catch_up_behind(&self, held: &Option<Vec<FromWorker>>) {
        let mut closing = self.closing();
        if closing.sent && !closing.closed && held.is_none() {
            closing.closed = true;
            drop(closing);
            (self.notify)(WorkerEvent::Closed);
        }
    }

    /// From now on its messages are held back, as by a results thread that
    /// lags behind: they arrive with [`Fake::release`].
    pub(crate) fn hold_messages(&self) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(Vec::new());
        self.close_box();
    }

    fn close_box(&self) {
        if let Some(board) = self.board.get() {
            board.close_box();
        }
    }

    /// Ends it as `reason` without a word yet: calls sent to it fail, and
    /// the manager hears nothing until [`Fake::report_exit`] and
    /// [`Fake::release`].
    pub(crate) fn vanish(&self, reason: ExitReason) {
        let mut death = self.death.lock().unwrap_or_else(PoisonError::into_inner);
        death.get_or_insert(reason);
        self.close_box();
    }

    /// Its exits thread speaks: `Exited`, then the report that closes its
    /// link once what it sent is passed on (unless that report is lost).
    pub(crate) fn report_exit(&self) {
        {
            let mut closing = self.closing();
            if std::mem::replace(&mut closing.exited, true) {
                return;
            }
            // Decided here, as a process backend's sending state is: the
            // manager asks again only once this one was lost.
            closing.send_report();
        }
        (self.notify)(WorkerEvent::Exited);
        self.catch_up();
    }

    /// Its link catches up: the held messages, then `Closed` if its exit
    /// report is sent. Passed on without the lock (a done-callback may
    /// reach the worker); what it sends meanwhile is held behind them.
    pub(crate) fn release(&self) {
        loop {
            let batch = {
                let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                match held.as_mut() {
                    Some(batch) if !batch.is_empty() => std::mem::take(batch),
                    _ => {
                        *held = None;
                        self.catch_up_behind(&held);
                        return;
                    }
                }
            };
            for message in batch {
                (self.notify)(WorkerEvent::Message(message));
            }
        }
    }

    /// Whether it has ended.
    pub(crate) fn dead(&self) -> bool {
        self.death
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl Backend for ThreadBackend {
    type Worker = ThreadWorker;

    fn spawn(&mut self, _config: &Config, notify: Notify) -> Result<ThreadWorker, SpawnError> {
        let refused = self
            .control
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return Err(SpawnError::io(
                "could not start a thread worker",
                std::io::Error::from_raw_os_error(libc::EAGAIN),
            ));
        }
        let pid = self.control.next_pid.fetch_add(1, Ordering::Relaxed);
        let fake = Arc::new(Fake {
            pid,
            notify,
            death: Mutex::new(None),
            held: Mutex::new(None),
            board: std::sync::OnceLock::new(),
            closing: Mutex::new(Closing::default()),
            refusing: std::sync::atomic::AtomicBool::new(false),
        });
        let (calls_tx, calls_rx) = crossbeam_channel::unbounded::<ToWorker>();
        let inbox = ThreadInbox {
            calls: calls_rx,
            fake: Arc::clone(&fake),
        };
        let outbox = ThreadOutbox {
            fake: Arc::clone(&fake),
        };
        let ended = Arc::clone(&fake);
        std::thread::Builder::new()
            .name(format!("loky-thread-worker-{pid}"))
            .spawn(move || {
                let code = main_loop::serve(inbox, &outbox, None);
                ended.die(ExitReason::Code(code));
            })
            .map_err(|e| SpawnError::io("could not start a thread worker", e))?;
        let reachable = Arc::clone(&fake);
        let calls = Calls::new(move |message| {
            if reachable.dead() {
                // As a dead process's socket: the send fails.
                return Err(SendError::Gone("the worker is gone".to_owned()));
            }
            if reachable.refusing.load(Ordering::SeqCst) {
                // As a send ipc-channel cannot make (it could not map a
                // region again), the worker alive.
                return Err(SendError::Unsendable("out of address space".to_owned()));
            }
            calls_tx
                .send(message)
                .map_err(|e| SendError::Gone(e.to_string()))
        });
        (fake.notify)(WorkerEvent::Ready(Ok(calls)));
        self.control
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&fake));
        Ok(ThreadWorker { fake })
    }
}

impl WorkerHandle for ThreadWorker {
    fn pid(&self) -> u32 {
        self.fake.pid
    }

    fn signal(&self, signal: i32) {
        self.fake.die(ExitReason::Signal {
            signal,
            core_dumped: false,
        });
    }

    fn abort_handshake(&self) {}

    fn exited(&self) -> bool {
        self.fake.dead()
    }

    fn retell_exit(&self) {
        {
            let mut closing = self.fake.closing();
            if !closing.exited || closing.sent {
                return;
            }
            closing.retold += 1;
            closing.send_report();
        }
        self.fake.catch_up();
    }

    fn reap(self) -> ExitReason {
        self.signal(libc::SIGKILL);
        self.fake
            .death
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expect("dead after SIGKILL")
    }
}

struct ThreadInbox {
    calls: crossbeam_channel::Receiver<ToWorker>,
    fake: Arc<Fake>,
}

impl Inbox for ThreadInbox {
    fn recv(&mut self) -> Result<Option<ToWorker>, String> {
        if self.fake.dead() {
            return Ok(None);
        }
        let message = self.calls.recv().ok();
        if let Some(ToWorker::Setup(setup)) = &message
            && let Ok(board) = Board::from_shared(setup.board.clone())
        {
            let _ = self.fake.board.set(board);
            // Dead or lagging before it had a board: closed now (`die`
            // and `hold_messages` found none to close).
            let lagging = self
                .fake
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
            if self.fake.dead() || lagging {
                self.fake.close_box();
            }
        }
        Ok(message)
    }
}

struct ThreadOutbox {
    fake: Arc<Fake>,
}

impl Outbox for ThreadOutbox {
    fn send(&self, message: FromWorker) -> bool {
        // Under the death lock, so nothing arrives after `Closed`.
        let death = self
            .fake
            .death
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if death.is_some() || self.fake.closing().closed {
            return false;
        }
        let mut held = self
            .fake
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match held.as_mut() {
            Some(held) => {
                held.push(message);
                true
            }
            None => (self.fake.notify)(WorkerEvent::Message(message)),
        }
    }
}
