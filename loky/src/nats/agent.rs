//! An agent: this program started with `LOKY_AGENT=url`. It serves the
//! queue's calls with a local pool, taking one only when a worker is free:
//! say it started, acknowledge, run it (its pool retrying a worker death
//! within the budget the call carries), send the outcome to its client. It
//! says it is alive every `HEARTBEAT`, and kills a call its client cancels.
//!
//! A call the server delivers again (an agent took it and never
//! acknowledged it: it died, or its acknowledgement was lost) may have
//! started elsewhere: the agent starts it only once its client says so
//! ([`GoAhead::Go`]); told to skip it, it acknowledges it unrun; with no
//! answer in time, it leaves it to the server.

use super::wire::to_remote;
use super::{
    BROKER_GRACE, DELIVER_AGAIN_AFTER, GO_AHEAD_TIMEOUT, HEARTBEAT, cancel_subject,
    heartbeat_subject,
};
use crate::config::Config;
use crate::error::Error;
use crate::executor::Executor;
use crate::future::Future;
use crate::job::{Encoded, Piece};
use crate::options::CallOptions;
use async_nats::jetstream;
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use loky_worker::protocol::remote::{
    AgentSays, CancelCall, ENV_AGENT_QUEUE, ENV_AGENT_WORKERS, GoAhead, HEADER_CALL, HEADER_KIND,
    HEADER_REPLY, HEADER_RETRIES, HEADER_TASK, HEADER_TIMEOUT_MS, HEADER_VERSION, Heartbeat,
    Refusal, RemoteOutcome, RemotePiece,
};
use loky_worker::protocol::{self, CallKind, PROTOCOL_VERSION};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

inventory::submit! {
    loky_worker::entry::AgentEntry(run)
}

/// How many cancellations of calls not seen yet an agent remembers.
const REMEMBERED_CANCELS: usize = 10_000;

/// Deliveries after which a call whose client has nobody listening any
/// more is dropped: by then it has been unheard for longer than a client
/// waits for a lost server before it fails its calls (`BROKER_GRACE`), so
/// nobody awaits it.
const UNHEARD_DELIVERIES: i64 =
    2 + (BROKER_GRACE.as_millis() / DELIVER_AGAIN_AFTER.as_millis()) as i64;

/// Runs this process as an agent of the server at `url`; the exit code.
fn run(url: String) -> i32 {
    let workers = std::env::var(ENV_AGENT_WORKERS)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(crate::cpu_count);
    let queue = std::env::var(ENV_AGENT_QUEUE).unwrap_or_else(|_| "loky".to_owned());
    let executor = match Executor::new(Config::new().max_workers(workers)) {
        Ok(executor) => executor,
        Err(error) => {
            eprintln!("loky agent: cannot start its pool: {error}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loky agent: cannot start its runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(serve(&url, &queue, executor, workers)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("loky agent {}: {error}", std::process::id());
            1
        }
    }
}

/// What a local call gives back, still encoded.
enum Raw {
    Single { pid: u32, bytes: Vec<u8> },
    Chunk(Vec<RemotePiece>),
}

/// Keeps a local call's outcome encoded, for the wire.
fn raw(_task: &'static str, pid: u32, encoded: Encoded<'_>) -> Result<Raw, Error> {
    Ok(match encoded {
        Encoded::Single(bytes) => Raw::Single {
            pid,
            bytes: bytes.to_vec(),
        },
        Encoded::Chunk(pieces) => Raw::Chunk(
            pieces
                .into_iter()
                .map(|piece| match piece {
                    Piece::Items {
                        pid, skip, bytes, ..
                    } => RemotePiece::Items {
                        pid,
                        skip: skip as u64,
                        bytes,
                    },
                    Piece::Failed(error) => RemotePiece::Failed(to_remote(&error)),
                })
                .collect(),
        ),
    })
}

/// Test faults: this agent dies as if killed.
fn die() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort()
}

/// A call in the agent: its client's reply subject and the call's id.
type Key = (String, u64);

struct Agent {
    client: async_nats::Client,
    executor: Executor,
    host: String,
    id: String,
    /// Outcomes to send, from done-callbacks.
    said: mpsc::UnboundedSender<(Key, AgentSays)>,
    /// Calls delivered again whose client said to start them.
    cleared: mpsc::UnboundedSender<(jetstream::Message, OwnedSemaphorePermit)>,
    running: HashMap<Key, Future<Raw>>,
    /// Calls cancelled before this agent saw them, oldest first.
    cancelled: HashSet<Key>,
    cancelled_order: VecDeque<Key>,
}

async fn serve(url: &str, queue: &str, executor: Executor, workers: usize) -> Result<(), String> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("cannot reach the NATS server at {url}: {e}"))?;
    let js = jetstream::new(client.clone());
    let consumer = super::work_queue(&js, queue).await?;
    let mut cancels = client
        .subscribe(cancel_subject(queue))
        .await
        .map_err(|e| e.to_string())?;
    let host = super::host_name();
    let (said, mut said_rx) = mpsc::unbounded_channel();
    let (cleared, mut cleared_rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        cleared,
        client: client.clone(),
        executor,
        id: format!("{host}-{}", std::process::id()),
        host,
        said,
        running: HashMap::new(),
        cancelled: HashSet::new(),
        cancelled_order: VecDeque::new(),
    };
    // Fetches a call whenever a worker is free: the permit travels with the
    // call and is released when it is over.
    let slots = Arc::new(Semaphore::new(workers));
    let (taken_tx, mut taken) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            // One call per free worker: wait for one, take all that are free.
            let Ok(first) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let mut permits = vec![first];
            while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                permits.push(permit);
            }
            let fetched = consumer
                .fetch()
                .max_messages(permits.len())
                .expires(Duration::from_millis(500))
                .messages()
                .await;
            match fetched {
                Ok(mut batch) => {
                    while let Some(next) = batch.next().await {
                        match next {
                            Ok(message) => {
                                let Some(permit) = permits.pop() else { break };
                                if taken_tx.send((message, permit)).is_err() {
                                    return;
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "fetching a call failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                break;
                            }
                        }
                    }
                    // Permits of calls that did not come are free again.
                }
                Err(error) => {
                    tracing::warn!(%error, "fetching calls failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let mut beat = tokio::time::interval(HEARTBEAT);
    let beats = heartbeat_subject(queue);
    loop {
        tokio::select! {
            Some((message, permit)) = taken.recv() => agent.take(message, permit, false).await,
            Some((message, permit)) = cleared_rx.recv() => agent.take(message, permit, true).await,
            Some(message) = cancels.next() => agent.on_cancel(&message.payload),
            Some((key, says)) = said_rx.recv() => {
                agent.running.remove(&key);
                agent.say(&key.0, &says).await;
            }
            _ = beat.tick() => {
                let heartbeat = Heartbeat {
                    agent: agent.id.clone(),
                    host: agent.host.clone(),
                    slots: u32::try_from(workers).unwrap_or(u32::MAX),
                    running: agent.running.keys().cloned().collect(),
                };
                if let Ok(bytes) = protocol::encode(&heartbeat) {
                    let _ = client.publish(beats.clone(), bytes.into()).await;
                }
            }
        }
    }
}

impl Agent {
    async fn say(&self, reply: &str, says: &AgentSays) {
        if let Ok(bytes) = protocol::encode(says) {
            let _ = self.client.publish(reply.to_owned(), bytes.into()).await;
        }
    }

    /// Takes a fetched call: check, say it started, acknowledge, run it.
    /// A call delivered again is first cleared with its client (`ask`),
    /// then taken again with `cleared`.
    async fn take(
        &mut self,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
        cleared: bool,
    ) {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let reply = header(HEADER_REPLY);
        let call = header(HEADER_CALL).and_then(|c| c.parse::<u64>().ok());
        let (Some(reply), Some(call)) = (reply, call) else {
            tracing::warn!("a call without a reply subject or id: dropped");
            let _ = message.ack().await;
            return;
        };
        let task = header(HEADER_TASK).unwrap_or_default();
        if loky_worker::fault::agent_dies_before_started(&task) {
            die();
        }
        let key = (reply.clone(), call);
        if self.cancelled.remove(&key) {
            let _ = message.ack().await;
            return; // cancelled before it reached this agent: it never runs
        }
        let refuse = |reason| AgentSays::Refused {
            call,
            host: self.host.clone(),
            reason,
        };
        let ours = loky_worker::fault::agent_version(PROTOCOL_VERSION);
        let version = header(HEADER_VERSION).and_then(|v| v.parse::<u32>().ok());
        if version != Some(ours) {
            let refusal = refuse(Refusal::Version {
                ours,
                theirs: version.unwrap_or(0),
            });
            self.say(&reply, &refusal).await;
            let _ = message.ack().await;
            return;
        }
        // Delivered again: another agent may have started it.
        if !cleared && message.info().is_ok_and(|info| info.delivered > 1) {
            self.ask(message, permit, reply, call);
            return;
        }
        let entry = match loky_worker::registry::lookup(&task).entry() {
            Ok(entry) if !loky_worker::fault::agent_forgets(&task) => entry,
            _ => {
                self.say(&reply, &refuse(Refusal::UnknownTask)).await;
                let _ = message.ack().await;
                return;
            }
        };
        let kind = match header(HEADER_KIND).as_deref() {
            Some("chunk") => CallKind::Chunk,
            _ => CallKind::Single,
        };
        let timeout = header(HEADER_TIMEOUT_MS)
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_millis);
        // A worker that dies under the call is this pool's to retry, as on
        // one machine (never a timeout, cancel or panic), with what is left
        // of the call's budget; the client retries only lost hosts.
        let retries = header(HEADER_RETRIES)
            .and_then(|r| r.parse::<u32>().ok())
            .unwrap_or(0);
        // Said before the acknowledgement, on the same connection: if this
        // agent dies in between, its client has heard of the start and
        // reports the host lost, and the copy the server delivers again
        // elsewhere never starts (its agent asks the client first).
        // Acknowledged first, a call would be lost without a word.
        let started = AgentSays::Started {
            call,
            host: self.host.clone(),
            agent: self.id.clone(),
        };
        self.say(&reply, &started).await;
        let dies = loky_worker::fault::agent_dies_after_started(&task);
        if dies {
            // The start reaches the server, the acknowledgement never.
            let _ = self.client.flush().await;
        } else if let Err(error) = message.ack().await {
            tracing::warn!(%error, "acknowledging a call failed: the server may deliver it again");
        }
        let submitted = self.executor.submit_encoded(
            entry.id(),
            kind,
            (
                crate::job::pack_args(entry.id(), message.payload.to_vec()),
                Vec::new(),
            ),
            CallOptions {
                timeout,
                retries: Some(retries),
            },
            raw,
        );
        let host = self.host.clone();
        match submitted {
            Ok(future) => {
                let said = self.said.clone();
                let done_key = key.clone();
                future.add_done_callback(move |result| {
                    if dies {
                        die();
                    }
                    let outcome = match result {
                        Ok(Raw::Single { pid, bytes }) => RemoteOutcome::Returned {
                            pid: *pid,
                            bytes: bytes.clone(),
                        },
                        Ok(Raw::Chunk(pieces)) => RemoteOutcome::Chunk(pieces.clone()),
                        Err(error) => RemoteOutcome::Failed(to_remote(error)),
                    };
                    let done = AgentSays::Done {
                        call: done_key.1,
                        host,
                        outcome,
                    };
                    let _ = said.send((done_key, done));
                    drop(permit);
                });
                self.running.insert(key, future);
            }
            Err(error) => {
                let done = AgentSays::Done {
                    call,
                    host,
                    outcome: RemoteOutcome::Failed(to_remote(&error)),
                };
                self.say(&reply, &done).await;
            }
        }
    }

    /// Asks the client of a call delivered again whether to start it (in a
    /// task of its own, so that heartbeats and other calls go on): told to,
    /// it comes back to `take` through `cleared`; told to skip it, it is
    /// acknowledged unrun; otherwise it goes back to the server, which
    /// delivers it again shortly. Dropped only once its client has long
    /// had nobody listening.
    fn ask(
        &self,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
        reply: String,
        call: u64,
    ) {
        let request = AgentSays::MayStart {
            call,
            host: self.host.clone(),
            agent: self.id.clone(),
        };
        let client = self.client.clone();
        let cleared = self.cleared.clone();
        tokio::spawn(async move {
            let delivered = message.info().map_or(0, |info| info.delivered);
            let asked = match protocol::encode(&request) {
                Ok(bytes) => {
                    tokio::time::timeout(GO_AHEAD_TIMEOUT, client.request(reply, bytes.into()))
                        .await
                }
                Err(_) => return,
            };
            let again = AckKind::Nak(Some(DELIVER_AGAIN_AFTER));
            let verdict = match asked {
                Ok(Ok(answer)) => match protocol::decode::<GoAhead>(&answer.payload) {
                    Ok(GoAhead::Go) => {
                        let _ = cleared.send((message, permit));
                        return;
                    }
                    Ok(GoAhead::Skip) => AckKind::Ack,
                    Ok(GoAhead::NotYet) | Err(_) => again,
                },
                Ok(Err(error))
                    if error.kind() == async_nats::RequestErrorKind::NoResponders
                        && delivered > UNHEARD_DELIVERIES =>
                {
                    tracing::warn!(call, "dropping a call whose client is gone");
                    AckKind::Term
                }
                Ok(Err(_)) | Err(_) => again,
            };
            if let Err(error) = message.ack_with(verdict).await {
                tracing::warn!(%error, "answering the server about a call delivered again failed");
            }
            drop(permit);
        });
    }

    /// A client cancelled a call: kill it if it runs here, else remember
    /// it, in case it reaches this agent later.
    fn on_cancel(&mut self, payload: &[u8]) {
        let Ok(CancelCall { reply, call }) = protocol::decode(payload) else {
            return;
        };
        let key = (reply, call);
        if let Some(future) = self.running.get(&key) {
            future.cancel();
            return;
        }
        if self.cancelled.insert(key.clone()) {
            self.cancelled_order.push_back(key);
            if self.cancelled_order.len() > REMEMBERED_CANCELS
                && let Some(oldest) = self.cancelled_order.pop_front()
            {
                self.cancelled.remove(&oldest);
            }
        }
    }
}
