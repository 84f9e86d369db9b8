//! Tasks on many hosts through NATS JetStream (feature `nats`).
//!
//! **Agents.** On each host, run your own program with `LOKY_AGENT` set to
//! the server's URL: it becomes an agent before `main` (as workers do) and
//! serves calls with an ordinary local pool of `LOKY_AGENT_WORKERS` workers
//! (default: its CPUs), so crashes, timeouts, kills, memory recycling and
//! process groups work as on one machine. `LOKY_AGENT_QUEUE` names the
//! queue it serves (default `loky`).
//!
//! ```sh
//! # plain ssh; a systemd unit, a Slurm job step (srun) or a Kubernetes
//! # Deployment runs the same command with the same variables
//! LOKY_AGENT=nats://broker:4222 LOKY_AGENT_WORKERS=8 ./my-program
//! ```
//!
//! **Clients.** `Executor::new(Config::new().backend(Backend::nats(url)))`
//! gives the same executor, futures, `map`, `wait`, `as_completed`,
//! callbacks and `.await`. `task.spawn(args)` (the reusable executor)
//! stays on this machine unless `LOKY_BACKEND` (see
//! [`ENV_BACKEND`](crate::ENV_BACKEND)) names a server:
//! `LOKY_BACKEND=nats://broker:4222` (or `...#queue`). Calls go to a
//! JetStream work queue
//! (`loky.<queue>.calls`); an agent takes one only when it has a free
//! worker, says it started it, acknowledges it, runs it and sends the
//! outcome back to the client. A call an agent took and never acknowledged
//! (it died) is delivered again elsewhere by the server; the agent that gets
//! it asks the client first, and runs it only if the client heard of no
//! start of it, so a started call never runs twice. A call that never
//! started runs elsewhere.
//!
//! **Errors.** A task's failure on a host is `Error::Remote { host, error }`,
//! with `error` what it would have been locally (`WorkerDied` with the pid
//! and signal, `Panicked`...). A host that goes silent for a second fails
//! its started calls with `Error::HostLost`; an unreachable server fails
//! pending calls with `Error::BrokerLost`; arguments over the server's
//! message size fail with `Error::PayloadTooLarge`. `SharedBytes` cannot
//! travel to other hosts.
//!
//! **Retries.** `Config::retries`, `CallOptions::retries` and
//! `Map::retries` mean here what they mean on one machine: a call runs
//! again only after a death nobody asked for, never after a panic, a serde
//! error, a timeout, a cancel or a shutdown. Two deaths qualify:
//!
//! - its host is lost: the client, once it declares the host lost (and not
//!   before, so the call never runs twice at once), publishes the call again
//!   under a new attempt id (at the back of the queue); whatever the lost
//!   host still says of the old attempt is ignored, and if it comes back
//!   its heartbeat's old attempts are cancelled there. A chunk runs again
//!   whole. Out of budget: `HostLost { earlier, .. }`, each lost host an
//!   `Attempt` with `ExitReason::HostLost`.
//! - its worker dies on an agent: that agent's own pool retries it, as on
//!   one machine (each element of a chunk with its own budget), with what
//!   the lost hosts left of the budget (header `Loky-Retries`). Out of
//!   budget: `Remote { error: WorkerDied { earlier, .. }, .. }`, the lost
//!   hosts first, then the agent's dead workers with its host.
//!
//! The agent's own retries are not reported until the call ends, so a host
//! lost after it retried a call locally counts as one attempt.

pub(crate) mod agent;
pub(crate) mod client;
mod wire;

use async_nats::jetstream;
use std::time::Duration;

/// How long a call may stay delivered to an agent and unacknowledged
/// before the server delivers it elsewhere (the agent died between the
/// fetch and the acknowledgement). The agent that gets it then starts it
/// only with its client's go-ahead.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// How long an agent waits for its client's go-ahead to start a call the
/// server delivered again; unanswered by then, it leaves the call to the
/// server.
const GO_AHEAD_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a go-ahead given to one agent keeps the client from giving
/// another agent one for the same attempt: far longer than an agent takes
/// from the answer to its start.
const GO_AHEAD_HELD: Duration = ACK_WAIT;
/// How soon the server delivers again a call an agent left to it (no
/// go-ahead yet, or no answer).
const DELIVER_AGAIN_AFTER: Duration = Duration::from_millis(500);
/// How often agents say they are alive.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// A host silent this long is lost.
const HOST_SILENCE: Duration = Duration::from_millis(1000);
/// How long a client tolerates a lost connection before it fails its
/// pending calls.
const BROKER_GRACE: Duration = Duration::from_millis(1500);

fn calls_subject(queue: &str) -> String {
    format!("loky.{queue}.calls")
}

fn heartbeat_subject(queue: &str) -> String {
    format!("loky.{queue}.heartbeat")
}

fn cancel_subject(queue: &str) -> String {
    format!("loky.{queue}.cancel")
}

/// The queue's stream and its agents' shared pull consumer, created if
/// missing.
async fn work_queue(
    js: &jetstream::Context,
    queue: &str,
) -> Result<jetstream::consumer::PullConsumer, String> {
    let config = jetstream::stream::Config {
        name: format!("LOKY_{queue}"),
        subjects: vec![calls_subject(queue)],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    };
    // Agents and clients starting together race to create the stream: the
    // losers see it exist a moment later.
    let mut attempts = 0;
    let stream = loop {
        attempts += 1;
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => break stream,
            Err(_) if attempts < 5 => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(error) => return Err(format!("creating the stream of queue `{queue}`: {error}")),
        }
    };
    let consumer = jetstream::consumer::pull::Config {
        durable_name: Some("agents".to_owned()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        ..Default::default()
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        match stream
            .get_or_create_consumer("agents", consumer.clone())
            .await
        {
            Ok(consumer) => return Ok(consumer),
            Err(_) if attempts < 5 => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(error) => {
                return Err(format!(
                    "creating the agents' consumer of queue `{queue}`: {error}"
                ));
            }
        }
    }
}

/// This host's name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned())
}
