//! The results thread: one per executor, it reads the executor's one
//! result channel, on which every worker reports under its tag
//! (`protocol::Report`), and passes each message on to that worker's
//! listener; then `Closed` once the worker has exited and everything it
//! sent is read.
//!
//! A blocking read of one channel: no readiness set, and one receive
//! buffer at a time. Whose message it is travels in the message; when it
//! was the last one is told by the parent itself: once a worker has exited,
//! `Report::Exited` is sent on the same channel (by the exits thread while
//! this thread waits for reports, else by a short-lived thread), and is
//! therefore read after everything the worker sent before dying.
//! So `Closed` is exact, even while something the worker started still
//! holds the channel.
//!
//! For one worker `Ready` comes before its messages (it sends none before
//! its setup, which follows `Ready`) and `Closed` after them: a worker that
//! exits before its `Ready` is told gets its `Closed` from the handshake
//! thread, right after the `Ready`.
//!
//! What the thread cannot read is contained: a message whose tag is read
//! but not the rest closes that worker's link alone (reported `Closed`,
//! its later messages dropped); a message that cannot be read at all, or
//! the channel failing, ends the thread, which reports every link closed
//! (the manager kills and replaces those workers), and the backend starts
//! a new one for the next spawn.

use super::super::{Calls, Notify, SendError, WorkerEvent};
use super::contained;
use crate::error::SpawnError;
use ipc_channel::ipc::{IpcReceiver, IpcSender};
use loky_worker::protocol::{FromWorker, Link as Place, Outcome, Readable, Report, ToWorker};
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// How long dropping the backend waits for its threads to end: they end
/// at once unless a done-callback still runs on the results thread.
pub(super) const FINISH: Duration = Duration::from_secs(1);

/// How many reads in a row may find the channel closed before it is taken
/// as closed for good. The backend holds a sender until it sends `Stop`,
/// so each is a worker that died in the middle of a message (which workers
/// avoid: see `Reporter`); many in a row mean something else is wrong.
const CUT_SHORT: u32 = 64;

/// One worker's link, as the results thread knows it.
struct Link {
    pid: u32,
    notify: Arc<Notify>,
    /// Its `Ready` was told: `Closed` may follow.
    ready: bool,
    /// It exited, and all it sent was read: `Closed` waits for `Ready`.
    exited: bool,
    /// False once it was reported closed: what it still sends is dropped.
    open: bool,
}

/// The links of one results thread, by tag.
struct Links {
    table: Mutex<Table>,
    next: AtomicU64,
    /// What the parent's own reports carry, which no worker knows: a
    /// worker (or what it started) cannot stop the thread or close
    /// another worker's link.
    key: u64,
    /// The thread waits for the next report: nothing is queued but what
    /// it is about to read.
    waiting: AtomicBool,
}

struct Table {
    links: HashMap<u64, Link>,
    /// False once the thread is gone: a link that gets ready afterwards is
    /// closed at once.
    alive: bool,
}

impl Links {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The results thread of one backend; dropping this stops it and waits a
/// moment for it to end.
pub(super) struct Results {
    sender: IpcSender<Report>,
    links: Arc<Links>,
    /// Disconnected once the thread has let go of the channel.
    finished: mpsc::Receiver<()>,
}

impl Results {
    /// Starts the thread.
    pub(super) fn start() -> std::io::Result<Results> {
        let (sender, receiver) = ipc_channel::ipc::channel::<Report>()?;
        let links = Arc::new(Links {
            table: Mutex::new(Table {
                links: HashMap::new(),
                alive: true,
            }),
            next: AtomicU64::new(0),
            key: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                Instant::now(),
            ),
            waiting: AtomicBool::new(false),
        });
        let thread_links = Arc::clone(&links);
        let (done, finished) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("loky-results".to_owned())
            .spawn(move || {
                run(receiver, &thread_links);
                drop(done);
            })?;
        Ok(Results {
            sender,
            links,
            finished,
        })
    }

    /// Whether the thread still reads (a new one is needed if not).
    pub(super) fn alive(&self) -> bool {
        self.links.table().alive
    }

    /// Files worker `pid`'s listener under a new tag, before it can report.
    pub(super) fn register(&self, pid: u32, notify: Arc<Notify>) -> Registration {
        let tag = self.links.next.fetch_add(1, Ordering::Relaxed);
        let link = Link {
            pid,
            notify,
            ready: false,
            exited: false,
            open: true,
        };
        self.links.table().links.insert(tag, link);
        Registration {
            tag,
            links: Arc::clone(&self.links),
            sender: self.sender.clone(),
            exit: Arc::new(AtomicU8::new(UNSENT)),
        }
    }
}

impl Drop for Results {
    fn drop(&mut self) {
        let _ = self.sender.send(Report::Stop {
            key: self.links.key,
        });
        let _ = self.finished.recv_timeout(FINISH);
    }
}

/// A worker's place on the results thread, for the threads that see it
/// connect and exit.
#[derive(Clone)]
pub(super) struct Registration {
    tag: u64,
    links: Arc<Links>,
    sender: IpcSender<Report>,
    /// Where the report of its exit stands: [`UNSENT`], [`SENDING`] or
    /// [`SENT`].
    exit: Arc<AtomicU8>,
}

/// The exit report is not on the channel: never sent, or its sending
/// failed (no thread to send it, or the send itself).
const UNSENT: u8 = 0;
/// A thread is sending it (the channel may be full for a while).
const SENDING: u8 = 1;
/// It is on the channel: the results thread reads it, and closes the link,
/// once it has read what the worker sent before it; or, if the thread
/// ends first, closes every link then.
const SENT: u8 = 2;

impl Registration {
    /// The handshake succeeded: tells the listener `Ready` with `calls`,
    /// which give the worker its place on the channel with its setup.
    /// False once nobody listens.
    pub(super) fn ready(
        &self,
        calls: ipc_channel::ipc::IpcSender<ToWorker>,
        notify: &Notify,
    ) -> bool {
        let place = Place {
            results: self.sender.clone(),
            tag: self.tag,
        };
        let calls = Calls::new(move |message| {
            let message = match message {
                ToWorker::Setup(mut setup) => {
                    setup.link = Some(place.clone());
                    ToWorker::Setup(setup)
                }
                other => other,
            };
            // ipc-channel panics when it cannot map a region again to send
            // it (out of address space): a failed send, never a panic in
            // the submitter or the manager.
            panic::catch_unwind(AssertUnwindSafe(|| {
                if matches!(message, ToWorker::Calls(_)) && loky_worker::fault::parent_send_panics()
                {
                    panic!("fault: the send panics");
                }
                calls.send(message)
            }))
            .map_err(|payload| {
                flush_serialization_state();
                SendError::Unsendable(loky_worker::panic::payload_message(&*payload))
            })?
            .map_err(|e| SendError::Gone(e.to_string()))
        });
        let open = notify(WorkerEvent::Ready(Ok(calls)));
        self.told_ready(open);
        open
    }

    /// The listener was told `Ready` (or may have been: its handshake
    /// thread panicked after connecting): `Closed` may follow, and does at
    /// once if the worker exited already or the thread is gone.
    pub(super) fn told_ready(&self, open: bool) {
        let closed = {
            let mut table = self.links.table();
            let alive = table.alive;
            match table.links.get_mut(&self.tag) {
                Some(link) if link.exited || !alive => table.links.remove(&self.tag),
                Some(link) => {
                    link.ready = true;
                    link.open &= open;
                    None
                }
                None => None,
            }
        };
        if let Some(link) = closed {
            close(link);
        }
    }

    /// The handshake failed: tells the listener why; nothing follows.
    pub(super) fn failed(&self, error: SpawnError, notify: &Notify) {
        self.forget();
        notify(WorkerEvent::Ready(Err(error)));
    }

    /// Nothing will be told of this worker any more.
    pub(super) fn forget(&self) {
        self.links.table().links.remove(&self.tag);
    }

    /// The worker has exited: once what it sent is read, its link closes.
    /// Sends `Report::Exited` behind the worker's last message: from here
    /// while the results thread waits for reports (it reads what is queued,
    /// so the send does not wait on a done-callback), else from a thread of
    /// its own: the channel may be full while the results thread runs a
    /// slow done-callback, and the exits thread must go on reporting deaths
    /// meanwhile. With no thread to be had, sent from here: late rather
    /// than never.
    pub(super) fn exited(&self) {
        self.tell_exit(true);
    }

    /// The worker exited a while ago and its link is still open: sends the
    /// exit report again if sending it failed, else does nothing (see
    /// `WorkerHandle::retell_exit`). Never blocks: with no thread to be
    /// had, it is left for the next time.
    pub(super) fn retell_exit(&self) {
        self.tell_exit(false);
    }

    /// Sends the exit report unless it is sent or being sent; `inline`:
    /// from this thread if no other can be started.
    fn tell_exit(&self, inline: bool) {
        if !self.start_telling() {
            return;
        }
        if inline && self.links.waiting.load(Ordering::Acquire) {
            (self.sending())();
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("loky-exited".to_owned())
            .stack_size(64 * 1024)
            .spawn(self.sending());
        // If it failed, the sending was dropped unrun: unsent again.
        if spawned.is_err() && inline && self.start_telling() {
            (self.sending())();
        }
    }

    /// Whether this caller is the one to send the exit report now.
    fn start_telling(&self) -> bool {
        self.exit
            .compare_exchange(UNSENT, SENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Sends the exit report when run; leaves it sent, or unsent if that
    /// failed, panicked or never ran.
    fn sending(&self) -> impl FnOnce() + Send + 'static {
        let report = Report::Exited {
            key: self.links.key,
            tag: self.tag,
        };
        let sender = self.sender.clone();
        let tell = Tell(Arc::clone(&self.exit), UNSENT);
        move || {
            // The whole guard, not just its field, moves in.
            let mut tell = tell;
            if sender.send(report).is_ok() {
                tell.1 = SENT;
            }
        }
    }
}

/// Where the exit report stands, stored when this drops: whatever ends its
/// sending (a panic too) leaves it sent or to be sent again, never sending.
struct Tell(Arc<AtomicU8>, u8);

impl Drop for Tell {
    fn drop(&mut self) {
        self.0.store(self.1, Ordering::Release);
    }
}

/// After a send that panicked halfway through encoding: ipc-channel keeps
/// the regions and channels it had collected for that message in this
/// thread, and would send them with the thread's next message. A message
/// of nothing on a channel nobody reads takes them, and drops them.
fn flush_serialization_state() {
    contained(|| {
        if let Ok((sender, receiver)) = ipc_channel::ipc::channel::<()>() {
            let _ = sender.send(());
            drop(receiver);
        }
    });
}

/// Reports `link` closed, if it is not yet. Taken out of the table
/// already, it is told nowhere else: a panic telling it is contained here.
fn close(mut link: Link) {
    if std::mem::replace(&mut link.open, false) {
        let told = panic::catch_unwind(AssertUnwindSafe(|| (link.notify)(WorkerEvent::Closed)));
        if let Err(payload) = told {
            let message = loky_worker::panic::payload_message(&*payload);
            tracing::error!(
                pid = link.pid,
                message,
                "telling a worker's link closed panicked"
            );
        }
    }
}

/// Reads until told to stop or the channel fails; then reports every
/// ready link closed (the others are closed as they get ready).
fn run(receiver: IpcReceiver<Report>, links: &Links) {
    let read = panic::catch_unwind(AssertUnwindSafe(|| read(&receiver, links)));
    drop(receiver);
    if let Err(payload) = read {
        let message = loky_worker::panic::payload_message(&*payload);
        tracing::error!(
            message,
            "the results thread panicked: its workers are replaced"
        );
    }
    let ready: Vec<Link> = {
        let mut table = links.table();
        table.alive = false;
        let tags: Vec<u64> = table
            .links
            .iter()
            .filter(|(_, link)| link.ready)
            .map(|(tag, _)| *tag)
            .collect();
        tags.iter()
            .filter_map(|tag| table.links.remove(tag))
            .collect()
    };
    for link in ready {
        // The manager kills the worker if it does not exit by itself.
        close(link);
    }
}

fn read(receiver: &IpcReceiver<Report>, links: &Links) {
    // Reads that found the channel closed, in a row.
    let mut cut_short = 0;
    loop {
        links.waiting.store(true, Ordering::Release);
        let report = receiver.recv();
        links.waiting.store(false, Ordering::Release);
        if report.is_ok() {
            cut_short = 0;
        }
        if !pass(report, links, &mut cut_short) {
            return;
        }
    }
}

/// Passes one report on; false if the thread must stop.
fn pass(report: Result<Report, ipc_channel::IpcError>, links: &Links, cut_short: &mut u32) -> bool {
    {
        match report {
            Ok(Report::From { tag, message }) => from(links, tag, message),
            Ok(Report::Exited { key, tag }) if key == links.key => {
                let closed = {
                    let mut table = links.table();
                    match table.links.get_mut(&tag) {
                        Some(link) if link.ready => table.links.remove(&tag),
                        Some(link) => {
                            link.exited = true;
                            None
                        }
                        None => None,
                    }
                };
                if let Some(link) = closed {
                    close(link);
                }
            }
            Ok(Report::Stop { key }) if key == links.key => return false,
            Ok(Report::Exited { .. } | Report::Stop { .. }) => {
                tracing::error!("a worker sent a report only the parent may send: ignored");
            }
            // The backend holds a sender, so the channel stays open: a
            // message too large for one fragment was cut short by its
            // sender's death (ipc-channel reads the rest from a channel of
            // its own, which then closes). Lost, and whose is unknown; the
            // death tells the rest (its outcomes held back are on its
            // board). Only a channel that keeps reading closed is closed.
            Err(ipc_channel::IpcError::Disconnected) if *cut_short < CUT_SHORT => {
                *cut_short += 1;
                tracing::warn!("a worker died in the middle of a message: the message is lost");
            }
            Err(ipc_channel::IpcError::Disconnected) => {
                tracing::error!("the results channel closed: every worker is replaced");
                return false;
            }
            Err(error) => {
                // Whose it was is unknown: every link closes, so that no
                // worker's outcome is silently lost.
                tracing::error!(%error, "unreadable report on the results channel: every worker is replaced");
                return false;
            }
        }
    }
    true
}

/// Passes worker `tag`'s message on, unless its link is closed; closes it
/// if the message cannot be read, nobody listens, or passing it panics.
fn from(links: &Links, tag: u64, message: Readable<FromWorker>) {
    let (pid, notify) = match links.table().links.get(&tag) {
        Some(link) if link.open => (link.pid, Arc::clone(&link.notify)),
        _ => return,
    };
    let passed = panic::catch_unwind(AssertUnwindSafe(|| match message {
        // Logs are this thread's to emit, never the manager's.
        Readable::Read(FromWorker::Log(record)) => {
            crate::worker_logs::emit(pid, &record);
            true
        }
        Readable::Read(message) => notify(WorkerEvent::Message(settle(message))),
        Readable::Unreadable(error) => {
            tracing::error!(pid, %error, "unreadable message from worker");
            false
        }
    }));
    let close_it = match passed {
        Ok(open) => !open,
        Err(payload) => {
            let message = loky_worker::panic::payload_message(&*payload);
            tracing::error!(pid, message, "passing a worker's message on panicked");
            true
        }
    };
    if close_it {
        let closed = links.table().links.get_mut(&tag).map(|link| {
            // Told once: `close` below, not again at its exit.
            std::mem::replace(&mut link.open, false)
        });
        if closed == Some(true) {
            contained(|| notify(WorkerEvent::Closed));
        }
    }
}

/// A result as it waits for the manager and its taker: small regions are
/// copied out here, off the manager thread (`Payload::settle`).
fn settle(message: FromWorker) -> FromWorker {
    match message {
        FromWorker::Done {
            seq,
            outcome: Outcome::Returned(payload),
        } => FromWorker::Done {
            seq,
            outcome: Outcome::Returned(payload.settle()),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loky_worker::protocol::{RetireReason, Setup};
    use std::sync::mpsc::Receiver;

    /// What a listener heard, as text; the `Calls` of its `Ready`.
    struct Heard {
        said: Receiver<String>,
        calls: Arc<Mutex<Option<Calls>>>,
    }

    fn listener() -> (Arc<Notify>, Heard) {
        let (tx, said) = mpsc::channel();
        let tx = Mutex::new(tx);
        let calls = Arc::new(Mutex::new(None));
        let kept = Arc::clone(&calls);
        let notify: Notify = Box::new(move |event| {
            let heard = match event {
                WorkerEvent::Message(FromWorker::Retire(RetireReason::MemoryLeak {
                    rss, ..
                })) => {
                    format!("retire {rss}")
                }
                WorkerEvent::Message(_) => "message".to_owned(),
                WorkerEvent::Closed => "closed".to_owned(),
                WorkerEvent::Ready(Ok(calls)) => {
                    *kept.lock().unwrap() = Some(calls);
                    "ready".to_owned()
                }
                WorkerEvent::Ready(Err(error)) => format!("failed: {error}"),
                WorkerEvent::Exited => "exited".to_owned(),
            };
            tx.lock().unwrap().send(heard).is_ok()
        });
        (Arc::new(notify), Heard { said, calls })
    }

    impl Heard {
        fn next(&self) -> String {
            self.said
                .recv_timeout(Duration::from_secs(30))
                .expect("heard in time")
        }

        fn nothing_more(&self) {
            let more = self.said.recv_timeout(Duration::from_millis(50)).ok();
            assert_eq!(more, None);
        }
    }

    /// A worker as the results thread sees it: its registration, where it
    /// reports, and what its listener hears.
    struct FakeWorker {
        registration: Registration,
        notify: Arc<Notify>,
        heard: Heard,
        place: Place,
    }

    fn worker(results: &Results, pid: u32) -> FakeWorker {
        let (notify, heard) = listener();
        let registration = results.register(pid, Arc::clone(&notify));
        let place = Place {
            results: registration.sender.clone(),
            tag: registration.tag,
        };
        FakeWorker {
            registration,
            notify,
            heard,
            place,
        }
    }

    impl FakeWorker {
        fn ready(&self) {
            let (calls, _) = ipc_channel::ipc::channel::<ToWorker>().unwrap();
            self.registration.ready(calls, &self.notify);
        }

        fn retire(&self, rss: u64) {
            let reason = RetireReason::MemoryLeak { rss, reference: 0 };
            let report = Report::From {
                tag: self.place.tag,
                message: Readable::Read(FromWorker::Retire(reason)),
            };
            self.place.results.send(report).unwrap();
        }
    }

    /// Two workers whose `Ready` was heard.
    fn two_ready(results: &Results) -> (FakeWorker, FakeWorker) {
        let a = worker(results, 1);
        let b = worker(results, 2);
        a.ready();
        b.ready();
        assert_eq!(a.heard.next(), "ready");
        assert_eq!(b.heard.next(), "ready");
        (a, b)
    }

    #[test]
    fn each_worker_s_messages_come_in_order_then_its_closing_after_its_exit() {
        let results = Results::start().unwrap();
        let (a, b) = two_ready(&results);
        for n in 0..3 {
            a.retire(n);
            b.retire(10 + n);
        }
        a.registration.exited();
        for n in 0..3 {
            assert_eq!(a.heard.next(), format!("retire {n}"));
        }
        assert_eq!(a.heard.next(), "closed");
        // Something a dead worker left behind reports under its tag: dropped.
        a.retire(99);
        for n in 0..3 {
            assert_eq!(b.heard.next(), format!("retire {}", 10 + n));
        }
        b.heard.nothing_more();
        b.registration.exited();
        assert_eq!(b.heard.next(), "closed");
        a.heard.nothing_more();
    }

    /// Waits until the exit report of `registration` is no longer being
    /// sent, and says where it stands.
    fn exit_settled(registration: &Registration) -> u8 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let state = registration.exit.load(Ordering::Acquire);
            if state != SENDING {
                return state;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_exit_report_whose_sending_failed_is_sent_again_and_only_then() {
        let results = Results::start().unwrap();
        let (a, b) = two_ready(&results);
        // The same registration, reporting on a channel nobody reads: the
        // send fails.
        let (dead_end, gone) = ipc_channel::ipc::channel::<Report>().unwrap();
        drop(gone);
        let failing = Registration {
            sender: dead_end,
            ..a.registration.clone()
        };
        failing.exited();
        assert_eq!(exit_settled(&failing), UNSENT);
        a.heard.nothing_more();
        // Asked again (`WorkerHandle::retell_exit`): sent, and the link
        // closes.
        a.registration.retell_exit();
        assert_eq!(a.heard.next(), "closed");
        assert_eq!(exit_settled(&a.registration), SENT);
        // Once sent, asking again sends nothing: b's report is never sent
        // twice either.
        b.registration.exited();
        assert_eq!(b.heard.next(), "closed");
        b.registration.retell_exit();
        assert_eq!(exit_settled(&b.registration), SENT);
        a.heard.nothing_more();
        b.heard.nothing_more();
    }

    #[test]
    fn a_sending_that_never_ran_or_panicked_leaves_the_report_to_send_again() {
        let results = Results::start().unwrap();
        let (a, _b) = two_ready(&results);
        // As when no thread could be started: the sending is dropped unrun.
        assert!(a.registration.start_telling());
        drop(a.registration.sending());
        assert_eq!(a.registration.exit.load(Ordering::Acquire), UNSENT);
        // As when the send panics.
        assert!(a.registration.start_telling());
        let tell = Tell(Arc::clone(&a.registration.exit), UNSENT);
        let panicked = panic::catch_unwind(AssertUnwindSafe(move || {
            let _tell = tell;
            panic!("in the send");
        }));
        assert!(panicked.is_err());
        assert_eq!(a.registration.exit.load(Ordering::Acquire), UNSENT);
        a.heard.nothing_more();
        a.registration.retell_exit();
        assert_eq!(a.heard.next(), "closed");
    }

    #[test]
    fn reports_only_the_parent_may_send_are_ignored_from_anyone_else() {
        let results = Results::start().unwrap();
        let (a, b) = two_ready(&results);
        let wrong = results.links.key.wrapping_add(1);
        a.place
            .results
            .send(Report::Exited {
                key: wrong,
                tag: b.place.tag,
            })
            .unwrap();
        a.place.results.send(Report::Stop { key: wrong }).unwrap();
        // Read after both, and the thread still reads: nothing closed.
        b.retire(3);
        assert_eq!(b.heard.next(), "retire 3");
        a.retire(4);
        assert_eq!(a.heard.next(), "retire 4");
        assert!(results.alive());
        a.heard.nothing_more();
        b.heard.nothing_more();
    }

    #[test]
    fn a_worker_that_exits_before_its_ready_is_closed_right_after_it() {
        let results = Results::start().unwrap();
        let a = worker(&results, 1);
        a.registration.exited();
        // Wait until the results thread has read the exit.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !results
            .links
            .table()
            .links
            .get(&a.place.tag)
            .unwrap()
            .exited
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        a.heard.nothing_more();
        a.ready();
        assert_eq!(a.heard.next(), "ready");
        assert_eq!(a.heard.next(), "closed");
        a.heard.nothing_more();
    }

    #[test]
    fn a_failed_handshake_is_told_once_and_nothing_after_it() {
        let results = Results::start().unwrap();
        let a = worker(&results, 1);
        let error = SpawnError::Handshake {
            pid: 1,
            message: "wrong secret".to_owned(),
        };
        a.registration.failed(error, &a.notify);
        assert!(a.heard.next().starts_with("failed"));
        a.registration.exited();
        a.heard.nothing_more();
        assert!(results.links.table().links.is_empty());
    }

    #[test]
    fn an_unreadable_message_closes_its_worker_s_link_alone() {
        let results = Results::start().unwrap();
        let (a, b) = two_ready(&results);
        // `Report::From` (variant 0) with a's tag, then no `FromWorker`
        // has variant 200.
        let garbage = a.place.results.clone().to_opaque().to::<(u32, u64, u32)>();
        garbage.send((0, a.place.tag, 200)).unwrap();
        assert_eq!(a.heard.next(), "closed");
        a.retire(1);
        b.retire(2);
        assert_eq!(b.heard.next(), "retire 2");
        // Not closed twice at its exit either: once the thread has read
        // the exit (the link is gone from its table), nothing more came.
        a.registration.exited();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while results.links.table().links.contains_key(&a.place.tag) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        a.heard.nothing_more();
        assert!(results.alive());
    }

    #[test]
    fn a_report_nobody_can_read_closes_every_link_and_the_backend_sees_the_thread_gone() {
        let results = Results::start().unwrap();
        let a = worker(&results, 1);
        let b = worker(&results, 2);
        let late = worker(&results, 3);
        a.ready();
        b.ready();
        assert_eq!(a.heard.next(), "ready");
        assert_eq!(b.heard.next(), "ready");
        // No `Report` has variant 7.
        let garbage = a.place.results.clone().to_opaque().to::<(u32, u64)>();
        garbage.send((7, 0)).unwrap();
        assert_eq!(a.heard.next(), "closed");
        assert_eq!(b.heard.next(), "closed");
        assert!(!results.alive());
        // A worker whose handshake ends afterwards is closed right after
        // its `Ready`, and the manager replaces it.
        late.ready();
        assert_eq!(late.heard.next(), "ready");
        assert_eq!(late.heard.next(), "closed");
    }

    #[test]
    fn the_setup_a_worker_gets_says_where_it_reports() {
        let results = Results::start().unwrap();
        let a = worker(&results, 1);
        let (calls, worker_end) = ipc_channel::ipc::channel::<ToWorker>().unwrap();
        a.registration.ready(calls, &a.notify);
        assert_eq!(a.heard.next(), "ready");
        let calls = a.heard.calls.lock().unwrap().take().unwrap();
        let setup = Setup {
            board: ipc_channel::ipc::IpcSharedMemory::from_byte(0, 8),
            spin: Duration::ZERO,
            link: None,
        };
        calls.send(ToWorker::Setup(setup)).unwrap();
        let Ok(ToWorker::Setup(setup)) = worker_end.recv() else {
            panic!("a setup");
        };
        let place = setup.link.expect("filled in");
        assert_eq!(place.tag, a.place.tag);
        // Reporting there reaches this worker's listener.
        let reason = RetireReason::MemoryLeak {
            rss: 5,
            reference: 0,
        };
        let report = Report::From {
            tag: place.tag,
            message: Readable::Read(FromWorker::Retire(reason)),
        };
        place.results.send(report).unwrap();
        assert_eq!(a.heard.next(), "retire 5");
    }
}
