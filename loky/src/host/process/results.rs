//! The results thread: one per executor, it reads every worker's link (the
//! result channel its hello handed over) from one `IpcReceiverSet` and
//! passes each message on, then `Closed` when the channel closes.
//!
//! A handshake thread hands a new link over after the worker's `Ready`: it
//! files the link's listener under a key, then sends the key and the
//! receiver on the control channel, itself a member of the set. So for one
//! worker, `Ready` comes before its messages, and `Closed` after them.
//!
//! What the thread cannot read is contained: a message that does not
//! decode, or a listener that is gone, closes that link alone (reported
//! `Closed`, its later messages dropped until its channel closes); the set
//! failing as a whole (an OS error, a panic in ipc-channel) reports every
//! link closed, and the backend starts a new thread for the next spawn.

use super::super::{Notify, WorkerEvent};
use ipc_channel::ipc::{IpcReceiver, IpcReceiverSet, IpcSelectionResult, IpcSender};
use loky_worker::protocol::{FromWorker, Outcome};
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

/// What the control channel carries: a link's key and its receiver. It
/// never leaves this process.
type Handover = (u64, IpcReceiver<FromWorker>);

/// One worker's link, as the results thread knows it.
struct Link {
    pid: u32,
    notify: Arc<Notify>,
    /// False once it was reported closed: what it still sends is dropped.
    open: bool,
}

/// What handshake threads and the results thread share.
struct Shared {
    /// Links handed over and not yet in the set, by key. Whoever takes a
    /// link out of here reports it (in the set, or closed).
    pending: Mutex<HashMap<u64, Link>>,
    next: AtomicU64,
    /// False once the thread is gone (its set failed, or it panicked).
    alive: AtomicBool,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Link>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The results thread of one backend. It stops once this and every
/// [`Handoff`] are dropped (its control channel closes); dropping this
/// waits a moment for it to close what it holds.
pub(super) struct Results {
    control: Option<IpcSender<Handover>>,
    shared: Arc<Shared>,
    /// Disconnected once the thread has let go of its descriptors.
    finished: mpsc::Receiver<()>,
}

/// How long dropping the backend waits for its threads to end: they end
/// at once unless a done-callback still runs on the results thread.
pub(super) const FINISH: Duration = Duration::from_secs(1);

/// Where a handshake thread hands its link over.
pub(super) struct Handoff {
    control: IpcSender<Handover>,
    shared: Arc<Shared>,
}

impl Results {
    /// Starts the thread.
    pub(super) fn start() -> std::io::Result<Results> {
        let (control, receiver) = ipc_channel::ipc::channel::<Handover>()?;
        let mut set = IpcReceiverSet::new()?;
        let control_id = set.add(receiver)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            alive: AtomicBool::new(true),
        });
        let thread_shared = Arc::clone(&shared);
        let (done, finished) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("loky-results".to_owned())
            .spawn(move || {
                run(set, control_id, &thread_shared);
                drop(done);
            })?;
        Ok(Results {
            control: Some(control),
            shared,
            finished,
        })
    }

    /// Whether the thread still reads (a new one is needed if not).
    pub(super) fn alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Where a spawn's handshake thread will hand its link.
    pub(super) fn handoff(&self) -> Handoff {
        Handoff {
            control: self.control.clone().expect("taken only when dropped"),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Results {
    fn drop(&mut self) {
        drop(self.control.take());
        let _ = self.finished.recv_timeout(FINISH);
    }
}

impl Handoff {
    /// Hands worker `pid`'s link to the results thread: from now on its
    /// messages, then `Closed`, go to `notify`. If the thread is gone, the
    /// link is reported closed at once.
    pub(super) fn hand_over(
        self,
        pid: u32,
        receiver: IpcReceiver<FromWorker>,
        notify: Arc<Notify>,
    ) {
        let key = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let link = Link {
            pid,
            notify,
            open: true,
        };
        self.shared.pending().insert(key, link);
        let sent = panic::catch_unwind(AssertUnwindSafe(|| self.control.send((key, receiver))))
            .unwrap_or_else(|payload| {
                Err(ipc_channel::IpcError::Io(std::io::Error::other(
                    loky_worker::panic::payload_message(&*payload),
                )))
            });
        if let Err(error) = sent {
            // Reported by whoever takes it out first: here, or the thread
            // failing meanwhile.
            if let Some(link) = self.shared.pending().remove(&key) {
                tracing::error!(pid, %error, "could not hand a worker's link to the results thread");
                close(link);
            }
        }
    }
}

/// Reports `link` closed, if it is not yet.
fn close(mut link: Link) {
    if std::mem::replace(&mut link.open, false) {
        let _ = (link.notify)(WorkerEvent::Closed);
    }
}

/// Reads until the control channel closes or the set fails; then reports
/// every link it still holds (and every one on its way) closed.
fn run(set: IpcReceiverSet, control_id: u64, shared: &Shared) {
    let mut links: HashMap<u64, Link> = HashMap::new();
    let mut set = set;
    let read = panic::catch_unwind(AssertUnwindSafe(|| {
        read(&mut set, control_id, shared, &mut links);
    }));
    drop(set);
    shared.alive.store(false, Ordering::Release);
    if let Err(payload) = read {
        let message = loky_worker::panic::payload_message(&*payload);
        tracing::error!(
            message,
            "the results thread panicked: its workers are replaced"
        );
    }
    let pending: Vec<Link> = shared.pending().drain().map(|(_, link)| link).collect();
    for link in links.into_values().chain(pending) {
        // The manager kills the worker if it does not exit by itself.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| close(link)));
    }
}

fn read(
    set: &mut IpcReceiverSet,
    control_id: u64,
    shared: &Shared,
    links: &mut HashMap<u64, Link>,
) {
    loop {
        let selected = match set.select() {
            Ok(selected) => selected,
            Err(error) => {
                tracing::error!(%error, "the results thread's set failed: its workers are replaced");
                return;
            }
        };
        for result in selected {
            match result {
                IpcSelectionResult::MessageReceived(id, message) if id == control_id => {
                    let Ok((key, receiver)) = message.to::<Handover>() else {
                        tracing::error!(
                            "unreadable hand-over on the results thread's control channel"
                        );
                        return;
                    };
                    #[cfg(test)]
                    if key == tests::FAIL {
                        return;
                    }
                    let Some(link) = shared.pending().remove(&key) else {
                        continue;
                    };
                    match set.add(receiver) {
                        Ok(id) => {
                            links.insert(id, link);
                        }
                        Err(error) => {
                            tracing::error!(pid = link.pid, %error, "could not watch a worker's link");
                            close(link);
                        }
                    }
                }
                // Every hand-off is gone: the backend was dropped.
                IpcSelectionResult::ChannelClosed(id) if id == control_id => return,
                IpcSelectionResult::MessageReceived(id, message) => {
                    if let Some(link) = links.get_mut(&id).filter(|link| link.open) {
                        let passed = panic::catch_unwind(AssertUnwindSafe(|| {
                            pass_on(link, message);
                        }));
                        if let Err(payload) = passed {
                            let message = loky_worker::panic::payload_message(&*payload);
                            tracing::error!(
                                pid = link.pid,
                                message,
                                "passing a worker's message on panicked"
                            );
                            link.open = false;
                            let _ = panic::catch_unwind(AssertUnwindSafe(|| {
                                (link.notify)(WorkerEvent::Closed)
                            }));
                        }
                    }
                }
                IpcSelectionResult::ChannelClosed(id) => {
                    if let Some(link) = links.remove(&id) {
                        close(link);
                    }
                }
            }
        }
    }
}

/// Passes one message of an open link on; closes the link if it cannot
/// be read or nobody listens.
fn pass_on(link: &mut Link, message: ipc_channel::ipc::IpcMessage) {
    match message.to::<FromWorker>() {
        // Logs are this thread's to emit, never the manager's.
        Ok(FromWorker::Log(record)) => crate::worker_logs::emit(link.pid, &record),
        Ok(message) => link.open = (link.notify)(WorkerEvent::Message(settle(message))),
        Err(error) => {
            tracing::error!(pid = link.pid, %error, "unreadable message from worker");
            link.open = false;
            let _ = (link.notify)(WorkerEvent::Closed);
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
    use loky_worker::protocol::RetireReason;
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

    /// A hand-over key that makes the thread stop as if its set failed.
    pub(super) const FAIL: u64 = u64::MAX;

    /// What a listener heard, as text.
    fn listener(open: bool) -> (Arc<Notify>, Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let notify: Notify = Box::new(move |event| {
            let heard = match event {
                WorkerEvent::Message(FromWorker::Retire(reason)) => format!("{reason:?}"),
                WorkerEvent::Message(_) => "message".to_owned(),
                WorkerEvent::Closed => "closed".to_owned(),
                WorkerEvent::Ready(_) => "ready".to_owned(),
                WorkerEvent::Exited => "exited".to_owned(),
            };
            let _ = tx.lock().unwrap().send(heard);
            open
        });
        (Arc::new(notify), rx)
    }

    fn heard(rx: &Receiver<String>) -> String {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("heard in time")
    }

    fn nothing_more(rx: &Receiver<String>) {
        assert_eq!(rx.recv_timeout(Duration::from_millis(50)).ok(), None);
    }

    fn link(results: &Results, pid: u32, open: bool) -> (IpcSender<FromWorker>, Receiver<String>) {
        let (tx, rx) = ipc_channel::ipc::channel::<FromWorker>().unwrap();
        let (notify, heard) = listener(open);
        results.handoff().hand_over(pid, rx, notify);
        (tx, heard)
    }

    fn retire(tx: &IpcSender<FromWorker>, bytes: u64) {
        let reason = RetireReason::MemoryLeak {
            rss: bytes,
            reference: 0,
        };
        tx.send(FromWorker::Retire(reason)).unwrap();
    }

    #[test]
    fn each_link_s_messages_arrive_in_order_then_its_closing() {
        let results = Results::start().unwrap();
        let (a, heard_a) = link(&results, 1, true);
        let (b, heard_b) = link(&results, 2, true);
        for n in 0..3 {
            retire(&a, n);
            retire(&b, 10 + n);
        }
        drop(a);
        for n in 0..3 {
            assert!(heard(&heard_a).contains(&n.to_string()));
        }
        assert_eq!(heard(&heard_a), "closed");
        for n in 0..3 {
            assert!(heard(&heard_b).contains(&(10 + n).to_string()));
        }
        nothing_more(&heard_b);
        drop(b);
        assert_eq!(heard(&heard_b), "closed");
        nothing_more(&heard_a);
    }

    #[test]
    fn an_unreadable_message_closes_its_link_alone() {
        let results = Results::start().unwrap();
        // A channel whose messages are not `FromWorker`s.
        let (garbage, rx) = ipc_channel::ipc::channel::<(u64, u64, u64)>().unwrap();
        let (notify, heard_bad) = listener(true);
        results
            .handoff()
            .hand_over(1, rx.to_opaque().to::<FromWorker>(), notify);
        let (good, heard_good) = link(&results, 2, true);
        garbage.send((u64::MAX, u64::MAX, u64::MAX)).unwrap();
        assert_eq!(heard(&heard_bad), "closed");
        // What it sends afterwards is dropped, and it is not closed twice.
        garbage.send((u64::MAX, 0, 0)).unwrap();
        drop(garbage);
        nothing_more(&heard_bad);
        retire(&good, 7);
        assert!(heard(&heard_good).contains('7'));
    }

    #[test]
    fn a_link_nobody_listens_to_any_more_is_dropped_quietly() {
        let results = Results::start().unwrap();
        let (gone, heard_gone) = link(&results, 1, false);
        retire(&gone, 1);
        assert!(heard(&heard_gone).contains('1'));
        retire(&gone, 2);
        drop(gone);
        nothing_more(&heard_gone);
    }

    #[test]
    fn a_failed_thread_closes_every_link_and_the_backend_sees_it_gone() {
        let results = Results::start().unwrap();
        let (_a, heard_a) = link(&results, 1, true);
        let (_b, heard_b) = link(&results, 2, true);
        let late = results.handoff();
        // Both links are in the set before the thread fails.
        retire(&_a, 1);
        retire(&_b, 2);
        assert!(heard(&heard_a).contains('1'));
        assert!(heard(&heard_b).contains('2'));
        let (_, dummy) = ipc_channel::ipc::channel::<FromWorker>().unwrap();
        results
            .control
            .as_ref()
            .unwrap()
            .send((FAIL, dummy))
            .unwrap();
        assert_eq!(heard(&heard_a), "closed");
        assert_eq!(heard(&heard_b), "closed");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while results.alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!results.alive());
        // A link handed over afterwards is reported closed at once.
        let (_c, rx) = ipc_channel::ipc::channel::<FromWorker>().unwrap();
        let (notify, heard_c) = listener(true);
        late.hand_over(3, rx, notify);
        assert_eq!(heard(&heard_c), "closed");
        nothing_more(&heard_a);
    }
}
