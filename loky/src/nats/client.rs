//! The client of a cluster: the manager thread of an executor whose tasks
//! run on agents. It publishes each call to the queue's stream, and settles
//! its future from what agents say: started, done, refused; or from their
//! silence (`HostLost`, or the call published again while its retry budget
//! lasts) or the server's (`BrokerLost`).
//!
//! Each attempt at a call has its own id on the wire, and only the current
//! attempt's is awaited: what a lost host still says about an earlier one
//! is ignored (its start is answered with a cancel), so a future finishes
//! once, from one attempt.
//!
//! An agent asks before it starts an attempt the server delivered again
//! (`AgentSays::MayStart`): the client says go only if it awaits the
//! attempt, heard of no start of it, and gave no other agent a go-ahead
//! for it within `GO_AHEAD_HELD`. So an attempt whose start was heard never
//! starts again, whatever became of its acknowledgement.

use super::wire::from_remote;
use super::{
    BROKER_GRACE, GO_AHEAD_HELD, HOST_SILENCE, calls_subject, cancel_subject, heartbeat_subject,
};
use crate::config::Config;
use crate::error::{Attempt, Error, SpawnError};
use crate::executor::Executor;
use crate::job::{Claim, Job, Piece, RemoteClaim};
use crate::manager::{Event, ShutdownRequest};
use crate::shared::Shared;
use crate::stats::Stats;
use async_nats::HeaderMap;
use async_nats::jetstream;
use crossbeam_channel::Receiver;
use futures_util::StreamExt;
use loky_worker::protocol::remote::{
    AgentSays, CancelCall, GoAhead, HEADER_CALL, HEADER_KIND, HEADER_REPLY, HEADER_RETRIES,
    HEADER_TASK, HEADER_TIMEOUT_MS, HEADER_VERSION, Heartbeat, Refusal, RemoteOutcome, RemotePiece,
};
use loky_worker::protocol::{self, CallKind, Outcome, PROTOCOL_VERSION, Payload};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long building a cluster executor may take to reach the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long publishing one call may take before the server counts as lost.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Room left in a message for its headers.
const HEADER_ROOM: usize = 1024;

/// Connects to the server at `url` (failing at once if it cannot), then
/// starts the executor whose manager thread is the client.
pub(crate) fn start(config: Config, url: String, queue: String) -> Result<Executor, Error> {
    if queue.is_empty()
        || !queue
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::Config(format!(
            "queue name {queue:?}: use letters, digits, `-` and `_`"
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::Spawn(SpawnError::io(
                "could not start the NATS client's runtime",
                e,
            ))
        })?;
    let (connection_tx, connection) = tokio::sync::mpsc::unbounded_channel();
    let connected = runtime.block_on(async {
        let connecting = async {
            let client = async_nats::ConnectOptions::new()
                .event_callback(move |event| {
                    let connection_tx = connection_tx.clone();
                    async move {
                        let _ = connection_tx.send(event);
                    }
                })
                .connect(url.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let js = jetstream::new(client.clone());
            super::work_queue(&js, &queue).await?;
            Ok::<_, String>((client, js))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
    });
    let (client, js) = connected.map_err(|reason| {
        Error::Config(format!("cannot reach the NATS server at {url}: {reason}"))
    })?;
    let max_payload = client.server_info().max_payload;
    let reply = format!("loky.{queue}.reply.{}", client_id());
    Executor::start_with(config, move |config, events, _events_tx, shared| {
        let (unpublished_tx, unpublished) = tokio::sync::mpsc::unbounded_channel();
        let client = Client {
            unpublished: unpublished_tx,
            url,
            queue,
            client,
            js,
            reply,
            max_payload,
            shared,
            retries: config.retries,
            jobs: HashMap::new(),
            attempts: HashMap::new(),
            next_wire: 1,
            agents: HashMap::new(),
            lost: HashSet::new(),
            disconnected_since: None,
            broker_down: None,
            shutting_down: false,
        };
        runtime.block_on(client.run(events, connection, unpublished));
    })
}

/// A name no other client of the queue has.
fn client_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{}-{nanos}", super::host_name(), std::process::id())
}

struct Client {
    url: String,
    queue: String,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Where agents answer this client.
    reply: String,
    max_payload: usize,
    shared: Arc<Shared>,
    /// The executor's retry budget (`Config::retries`).
    retries: u32,
    /// Calls published and not settled, by job id.
    jobs: HashMap<u64, Pending>,
    /// The job of each attempt awaited, by the attempt's id on the wire.
    attempts: HashMap<u64, u64>,
    /// The wire id of the next attempt.
    next_wire: u64,
    /// Agents heard from, by id.
    agents: HashMap<String, Seen>,
    /// Agents declared lost: if one comes back, whatever it still runs for
    /// this client is cancelled there, until its heartbeat lists none.
    lost: HashSet<String>,
    disconnected_since: Option<Instant>,
    /// Attempts the server did not acknowledge (wire ids), and why.
    unpublished: tokio::sync::mpsc::UnboundedSender<(u64, String)>,
    /// Why the server counts as lost, once it does.
    broker_down: Option<String>,
    shutting_down: bool,
}

struct Pending {
    job: Job,
    /// The current attempt's claim.
    claim: Arc<RemoteClaim>,
    /// The current attempt's id on the wire.
    wire: u64,
    /// The agent that started the current attempt, and its host.
    agent: Option<(String, String)>,
    /// The last agent told it may start the current attempt, delivered
    /// again, and when.
    go_ahead: Option<(String, Instant)>,
}

struct Seen {
    host: String,
    slots: u32,
    last: Instant,
}

impl Client {
    async fn run(
        mut self,
        events: Receiver<Event>,
        mut connection: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
        unpublished: tokio::sync::mpsc::UnboundedReceiver<(u64, String)>,
    ) {
        // The executor's events arrive on a crossbeam channel: a thread
        // carries them into the runtime.
        let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
        let bridge = std::thread::Builder::new()
            .name("loky-nats-events".to_owned())
            .spawn(move || {
                while let Ok(event) = events.recv() {
                    if events_tx.send(event).is_err() {
                        break;
                    }
                }
            });
        if let Err(error) = bridge {
            self.shared
                .set_broken(format!("could not start the NATS client's thread: {error}"));
            return;
        }
        let subscribed = async {
            let replies = self.client.subscribe(self.reply.clone()).await?;
            let beats = self
                .client
                .subscribe(heartbeat_subject(&self.queue))
                .await?;
            Ok::<_, async_nats::SubscribeError>((replies, beats))
        };
        let (mut replies, mut beats) = match subscribed.await {
            Ok(subscriptions) => subscriptions,
            Err(error) => {
                self.shared
                    .set_broken(format!("could not subscribe on the NATS server: {error}"));
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut unpublished = unpublished;
        loop {
            tokio::select! {
                event = events_rx.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => break,
                },
                Some(message) = replies.next() => self.on_reply(message).await,
                Some(message) = beats.next() => self.on_heartbeat(&message.payload).await,
                Some(event) = connection.recv() => self.on_connection(event),
                Some((wire, reason)) = unpublished.recv() => {
                    if let Some(pending) = self.take(wire) {
                        let task = pending.job.task();
                        pending.job.completion.fail(self.broker_lost(task, &reason));
                    }
                }
                _ = tick.tick() => self.on_tick().await,
            }
            if self.shutting_down && self.jobs.is_empty() {
                break;
            }
        }
        // Cancellations still buffered go out, unless the server is gone.
        let _ = tokio::time::timeout(PUBLISH_TIMEOUT, self.client.flush()).await;
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Submit(job) => {
                if self.shutting_down {
                    job.completion.fail(Error::ShutDown);
                } else {
                    self.submit(job).await;
                }
            }
            Event::Shutdown(request) => self.shutdown(request).await,
            // The future was cancelled while an agent held its call (or
            // could still take it): tell every agent.
            Event::Cancel(job) => {
                if let Some(pending) = self.remove(job) {
                    self.cancel(pending.wire).await;
                }
            }
            Event::StartWorkers(answer) => {
                // Agents are started by their hosts, not by the client.
                let _ = answer.send(Ok(()));
            }
            // Local workers only: a cluster lends none and has no links.
            Event::Resize(_)
            | Event::Worker(..)
            | Event::Delivered(..)
            | Event::DeliveredAll(..)
            | Event::LentUnsent { .. }
            | Event::Refresh => {}
            Event::Lent { job, .. } => {
                job.completion.fail(Error::Broken {
                    reason: "a cluster executor was lent a local worker".to_owned(),
                });
            }
        }
    }

    async fn submit(&mut self, job: Job) {
        let task = job.task();
        if let Some(reason) = &self.broker_down {
            job.completion.fail(self.broker_lost(task, reason));
            return;
        }
        if !job.regions.is_empty() {
            job.completion.fail(Error::Config(format!(
                "task `{task}`: SharedBytes cannot travel to another host"
            )));
            return;
        }
        let bytes = job.args.bytes();
        let max = self.max_payload.saturating_sub(HEADER_ROOM);
        if bytes.len() > max {
            job.completion.fail(Error::PayloadTooLarge {
                task,
                size: bytes.len(),
                max,
            });
            return;
        }
        self.publish(job).await;
    }

    /// Publishes an attempt at `job` under a new wire id and claim, unless
    /// its future is cancelled already.
    async fn publish(&mut self, job: Job) {
        let task = job.task();
        if let Some(reason) = &self.broker_down {
            job.completion.fail(self.broker_lost(task, reason));
            return;
        }
        let claim = Arc::new(RemoteClaim::default());
        if !job.completion.attach(Claim::Flag(Arc::clone(&claim))) {
            return; // cancelled already: it never goes out
        }
        let wire = self.next_wire;
        self.next_wire += 1;
        // What the agent's pool may spend on worker deaths: what the lost
        // hosts left of the budget.
        let budget = job.retries.unwrap_or(self.retries);
        let left = budget.saturating_sub(u32::try_from(job.attempts.len()).unwrap_or(u32::MAX));
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_VERSION, PROTOCOL_VERSION.to_string().as_str());
        headers.insert(HEADER_TASK, task);
        headers.insert(HEADER_CALL, wire.to_string().as_str());
        headers.insert(HEADER_RETRIES, left.to_string().as_str());
        let kind = match job.kind {
            CallKind::Single => "single",
            CallKind::Chunk => "chunk",
        };
        headers.insert(HEADER_KIND, kind);
        if let Some(timeout) = job.timeout {
            headers.insert(HEADER_TIMEOUT_MS, timeout.as_millis().to_string().as_str());
        }
        headers.insert(HEADER_REPLY, self.reply.as_str());
        let payload = bytes::Bytes::copy_from_slice(job.args.bytes());
        let published = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            self.js
                .publish_with_headers(calls_subject(&self.queue), headers, payload),
        )
        .await;
        match published {
            Ok(Ok(acknowledged)) => {
                // The server's acknowledgement is awaited beside the next
                // calls, not before them: calls stream out.
                let unpublished = self.unpublished.clone();
                tokio::spawn(async move {
                    let reason = match tokio::time::timeout(PUBLISH_TIMEOUT, acknowledged).await {
                        Ok(Ok(_)) => return,
                        Ok(Err(error)) => error.to_string(),
                        Err(_) => format!("no acknowledgement within {PUBLISH_TIMEOUT:?}"),
                    };
                    let _ = unpublished.send((wire, reason));
                });
                self.attempts.insert(wire, job.id);
                self.jobs.insert(
                    job.id,
                    Pending {
                        job,
                        claim,
                        wire,
                        agent: None,
                        go_ahead: None,
                    },
                );
            }
            Ok(Err(error)) => job
                .completion
                .fail(self.broker_lost(task, &error.to_string())),
            Err(_) => job.completion.fail(self.broker_lost(
                task,
                &format!("publishing the call took over {PUBLISH_TIMEOUT:?}"),
            )),
        }
    }

    async fn shutdown(&mut self, request: ShutdownRequest) {
        self.shutting_down = true;
        if !request.cancel_futures && request.kill.is_none() {
            return;
        }
        let mut cancelled = Vec::new();
        for (&job, pending) in &self.jobs {
            let started = pending.agent.is_some();
            if !started && pending.job.completion.cancel() {
                cancelled.push(job);
            } else if request.kill.is_some() {
                pending.job.completion.fail(Error::ShutDown);
                cancelled.push(job);
            }
        }
        for job in cancelled {
            if let Some(pending) = self.remove(job) {
                self.cancel(pending.wire).await;
            }
        }
    }

    /// The job whose current attempt is `wire`, no longer awaited.
    fn take(&mut self, wire: u64) -> Option<Pending> {
        let job = self.attempts.remove(&wire)?;
        self.jobs.remove(&job)
    }

    /// Job `job`, no longer awaited.
    fn remove(&mut self, job: u64) -> Option<Pending> {
        let pending = self.jobs.remove(&job)?;
        self.attempts.remove(&pending.wire);
        Some(pending)
    }

    /// Tells every agent to drop the attempt `call` (a wire id), or kill
    /// it if it runs it.
    async fn cancel(&self, call: u64) {
        let request = CancelCall {
            reply: self.reply.clone(),
            call,
        };
        if let Ok(bytes) = protocol::encode(&request) {
            let publish = self
                .client
                .publish(cancel_subject(&self.queue), bytes.into());
            let _ = tokio::time::timeout(PUBLISH_TIMEOUT, publish).await;
        }
    }

    async fn on_reply(&mut self, message: async_nats::Message) {
        let says: AgentSays = match protocol::decode(&message.payload) {
            Ok(says) => says,
            Err(error) => {
                tracing::warn!(%error, "unreadable message from an agent");
                return;
            }
        };
        match says {
            AgentSays::Started { call, host, agent } => {
                // A start is a sign of life too: an agent killed before its
                // first heartbeat reached us is still known, so its silence
                // is noticed.
                self.agents.entry(agent.clone()).or_insert_with(|| Seen {
                    host: host.clone(),
                    slots: 0,
                    last: Instant::now(),
                });
                let job = self.attempts.get(&call).copied();
                match job.and_then(|job| self.jobs.get_mut(&job)) {
                    Some(pending) if pending.claim.start() => {
                        pending.agent = Some((agent, host));
                    }
                    // A second start of an attempt: an agent stopped for
                    // over `GO_AHEAD_HELD` between its go-ahead and its
                    // start. A cancel would reach both, so the copy runs to
                    // its ignored end.
                    Some(pending) if pending.agent.is_some() => {
                        tracing::warn!(%host, %agent, call, "a call was delivered twice");
                    }
                    // Cancelled before it started here, or an attempt no
                    // longer awaited (its host was declared lost, or it
                    // settled): stop it there.
                    _ => {
                        if let Some(job) = job {
                            self.remove(job);
                        }
                        self.cancel(call).await;
                    }
                }
            }
            // Only the current attempt of a call settles it: a late word
            // from a host declared lost is ignored.
            AgentSays::Done {
                call,
                host,
                outcome,
            } => {
                if let Some(pending) = self.take(call) {
                    complete(pending.job, &host, outcome);
                }
            }
            AgentSays::Refused { call, host, reason } => {
                let started = self
                    .attempts
                    .get(&call)
                    .and_then(|job| self.jobs.get(job))
                    .is_some_and(|pending| pending.agent.is_some());
                if started {
                    // A copy delivered again to an agent that cannot run
                    // it: the start heard of stands.
                    return;
                }
                if let Some(pending) = self.take(call) {
                    let task = pending.job.task();
                    let error = match reason {
                        Refusal::Version { ours, theirs } => {
                            Error::Spawn(SpawnError::ProtocolMismatch {
                                pid: 0,
                                ours: theirs,
                                theirs: ours,
                            })
                        }
                        Refusal::UnknownTask => Error::UnknownTask { task, pid: None },
                        Refusal::Malformed(reason) => Error::Broken { reason },
                    };
                    pending.job.completion.fail(Error::Remote {
                        host,
                        error: Box::new(error),
                    });
                }
            }
            AgentSays::MayStart { call, agent, .. } => {
                let answer = self.go_ahead(call, agent);
                if let (Some(inbox), Ok(bytes)) = (message.reply, protocol::encode(&answer)) {
                    let publish = self.client.publish(inbox, bytes.into());
                    let _ = tokio::time::timeout(PUBLISH_TIMEOUT, publish).await;
                }
            }
        }
    }

    /// Whether `agent` may start attempt `call`, which the server delivered
    /// to it again: only if this client awaits it, heard of no start of it
    /// (nor took it back), and told no other agent to go within
    /// `GO_AHEAD_HELD` (that one may be starting it).
    fn go_ahead(&mut self, call: u64, agent: String) -> GoAhead {
        let job = self.attempts.get(&call);
        let Some(pending) = job.and_then(|job| self.jobs.get_mut(job)) else {
            return GoAhead::Skip;
        };
        if pending.agent.is_some() || !pending.claim.queued() {
            return GoAhead::Skip;
        }
        let now = Instant::now();
        match &pending.go_ahead {
            Some((other, at)) if *other != agent && now.duration_since(*at) < GO_AHEAD_HELD => {
                GoAhead::NotYet
            }
            _ => {
                pending.go_ahead = Some((agent, now));
                GoAhead::Go
            }
        }
    }

    async fn on_heartbeat(&mut self, payload: &[u8]) {
        let Ok(beat) = protocol::decode::<Heartbeat>(payload) else {
            return;
        };
        if self.lost.contains(&beat.agent) {
            // Back after it was declared lost: its attempts of this
            // client's calls are no longer awaited, and stop there.
            let stale: Vec<u64> = beat
                .running
                .iter()
                .filter(|(reply, call)| *reply == self.reply && !self.attempts.contains_key(call))
                .map(|&(_, call)| call)
                .collect();
            if stale.is_empty() {
                // Nothing old runs there: a plain agent again (a copy the
                // server delivers again is cancelled when it starts).
                self.lost.remove(&beat.agent);
            }
            for call in stale {
                self.cancel(call).await;
            }
        }
        self.agents.insert(
            beat.agent,
            Seen {
                host: beat.host,
                slots: beat.slots,
                last: Instant::now(),
            },
        );
    }

    fn on_connection(&mut self, event: async_nats::Event) {
        match event {
            async_nats::Event::Disconnected => {
                self.disconnected_since.get_or_insert_with(Instant::now);
            }
            async_nats::Event::Connected => {
                self.disconnected_since = None;
                self.broker_down = None;
            }
            _ => {}
        }
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        // Hosts gone silent: their started calls run again while their
        // budget lasts (only now: a call never runs twice at once), or fail.
        let lost: Vec<(String, Seen)> = {
            let silent: Vec<String> = self
                .agents
                .iter()
                .filter(|(_, seen)| now.duration_since(seen.last) > HOST_SILENCE)
                .map(|(agent, _)| agent.clone())
                .collect();
            silent
                .into_iter()
                .filter_map(|agent| self.agents.remove_entry(&agent))
                .collect()
        };
        for (agent, seen) in lost {
            let silent_for = now.duration_since(seen.last);
            tracing::warn!(host = %seen.host, %agent, ?silent_for, "a host went silent");
            let jobs: Vec<u64> = self
                .jobs
                .iter()
                .filter(|(_, p)| p.agent.as_ref().is_some_and(|(a, _)| *a == agent))
                .map(|(&job, _)| job)
                .collect();
            self.lost.insert(agent);
            for job in jobs {
                let Some(mut pending) = self.remove(job) else {
                    continue;
                };
                // Should the host still hear: the lost attempt stops.
                self.cancel(pending.wire).await;
                let task = pending.job.task();
                let attempt = Attempt::lost(seen.host.clone(), silent_for);
                if pending.job.retry(attempt, self.retries) {
                    tracing::info!(host = %seen.host, task, "retrying a task whose host was lost");
                    pending.job.completion.detach();
                    self.publish(pending.job).await;
                } else {
                    let error = pending.job.with_attempts(Error::HostLost {
                        task,
                        host: seen.host.clone(),
                        silent_for,
                        earlier: Vec::new(),
                    });
                    pending.job.completion.fail(error);
                }
            }
        }
        // A server gone too long: every pending call fails.
        if self.broker_down.is_none()
            && self
                .disconnected_since
                .is_some_and(|since| now.duration_since(since) > BROKER_GRACE)
        {
            let reason = format!("disconnected for over {BROKER_GRACE:?}");
            self.attempts.clear();
            for (_, pending) in self.jobs.drain() {
                let task = pending.job.task();
                pending.job.completion.fail(Error::BrokerLost {
                    task,
                    url: self.url.clone(),
                    reason: reason.clone(),
                });
            }
            self.broker_down = Some(reason);
        }
        let running = self.jobs.values().filter(|p| p.agent.is_some()).count();
        let stats = Stats {
            workers: self.agents.values().map(|seen| seen.slots as usize).sum(),
            pending: self.jobs.len() - running,
            running,
            ..Stats::default()
        };
        self.shared.publish(stats, std::iter::empty());
    }

    fn broker_lost(&self, task: &'static str, reason: &str) -> Error {
        Error::BrokerLost {
            task,
            url: self.url.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// Settles a job from its outcome on `host`; a death there lists the
/// hosts lost before it.
fn complete(mut job: Job, host: &str, outcome: RemoteOutcome) {
    let task = job.task();
    match outcome {
        RemoteOutcome::Returned { pid, bytes } => {
            job.completion
                .finish_remote(pid, Outcome::Returned(Payload::Inline(bytes)));
        }
        RemoteOutcome::Chunk(pieces) => {
            let pieces = pieces
                .into_iter()
                .map(|piece| match piece {
                    RemotePiece::Items { pid, skip, bytes } => {
                        Piece::counting(pid, usize::try_from(skip).unwrap_or(usize::MAX), bytes)
                    }
                    RemotePiece::Failed(error) => Piece::Failed(
                        from_remote(task, host, error).after_attempts(job.attempts.clone()),
                    ),
                })
                .collect();
            job.completion.finish_chunk(pieces);
        }
        RemoteOutcome::Failed(error) => {
            let error = job.with_attempts(from_remote(task, host, error));
            job.completion.fail(error);
        }
    }
}
