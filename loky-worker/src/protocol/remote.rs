//! The wire shapes of a cluster (feature `nats` of `loky`): calls published
//! to a work queue, what agents say back to the client that submitted them,
//! and their heartbeats. Payloads are the same postcard bytes as between a
//! parent and its workers.

use super::{RemotePanic, Stage};
use serde::{Deserialize, Serialize};

/// Header: the protocol version of the client that published the call.
pub const HEADER_VERSION: &str = "Loky-Version";
/// Header: the task's registered id.
pub const HEADER_TASK: &str = "Loky-Task";
/// Header: the call's id, unique for its client; each attempt at a
/// submitted call (see [`HEADER_RETRIES`]) has its own.
pub const HEADER_CALL: &str = "Loky-Call";
/// Header: `single` or `chunk`.
pub const HEADER_KIND: &str = "Loky-Kind";
/// Header: the per-call timeout in milliseconds, if any.
pub const HEADER_TIMEOUT_MS: &str = "Loky-Timeout-Ms";
/// Header: the subject where the client listens for what agents say.
pub const HEADER_REPLY: &str = "Loky-Reply";
/// Header: how many more times the agent's pool may run the call when its
/// worker dies running it (what is left of the call's retry budget).
pub const HEADER_RETRIES: &str = "Loky-Retries";

/// Environment variable that makes the user's binary an agent: the URL of
/// the NATS server (`nats://host:4222`).
pub const ENV_AGENT: &str = "LOKY_AGENT";
/// Environment variable: the agent's number of workers (default: its CPUs).
pub const ENV_AGENT_WORKERS: &str = "LOKY_AGENT_WORKERS";
/// Environment variable: the queue an agent serves (default `loky`).
pub const ENV_AGENT_QUEUE: &str = "LOKY_AGENT_QUEUE";

/// What an agent says to the client of a call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum AgentSays {
    /// The agent took the call and runs it now.
    Started {
        /// The call's id.
        call: u64,
        /// The agent's host name.
        host: String,
        /// The agent's id (unique per agent process).
        agent: String,
    },
    /// The call is over.
    Done {
        /// The call's id.
        call: u64,
        /// The agent's host name.
        host: String,
        /// What became of it.
        outcome: RemoteOutcome,
    },
    /// The agent refused the call without running it.
    Refused {
        /// The call's id.
        call: u64,
        /// The agent's host name.
        host: String,
        /// Why.
        reason: Refusal,
    },
    /// A request (its answer: [`GoAhead`]): the server delivered the call
    /// to this agent again, and the agent starts it only if the client
    /// says so.
    MayStart {
        /// The call's id.
        call: u64,
        /// The agent's host name.
        host: String,
        /// The agent's id.
        agent: String,
    },
}

/// The client's answer to [`AgentSays::MayStart`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAhead {
    /// Nobody started the call and the client awaits it: start it now.
    Go,
    /// Some agent started the call, or the client no longer awaits it:
    /// acknowledge it and never run it.
    Skip,
    /// Another agent was just told to go: leave the call to the server,
    /// which delivers it again shortly.
    NotYet,
}

/// Why an agent refused a call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The client speaks another protocol version.
    Version {
        /// The agent's.
        ours: u32,
        /// The client's.
        theirs: u32,
    },
    /// The agent's binary has no task by that id.
    UnknownTask,
    /// The call's headers were malformed.
    Malformed(String),
}

/// The outcome of a call an agent ran.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum RemoteOutcome {
    /// A single call returned: its postcard-encoded result, and the worker.
    Returned {
        /// The worker's pid on the agent's host.
        pid: u32,
        /// The encoded result.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// A chunk's element outcomes, in order.
    Chunk(Vec<RemotePiece>),
    /// The call failed.
    Failed(RemoteError),
}

/// Outcomes of consecutive elements of a chunk.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum RemotePiece {
    /// Encoded chunk items from worker `pid`, of which the first `skip`
    /// are duplicates to ignore.
    Items {
        /// The worker's pid.
        pid: u32,
        /// Duplicates at the start.
        skip: u64,
        /// Encoded `ChunkItem`s.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// One element failed in the agent's view.
    Failed(RemoteError),
}

/// An error of a call on an agent, as it travels.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum RemoteError {
    /// The task panicked.
    Panicked {
        /// The worker's pid.
        pid: u32,
        /// The panic.
        panic: RemotePanic,
    },
    /// The worker died running it.
    WorkerDied {
        /// The worker's pid.
        pid: u32,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// Whether it dumped core.
        core_dumped: bool,
        /// The agent's earlier attempts, whose workers died too, oldest
        /// first.
        earlier: Vec<RemoteDeath>,
    },
    /// Serialization failed.
    Serde {
        /// The worker's pid, if on a worker.
        pid: Option<u32>,
        /// Where.
        stage: Stage,
        /// The message.
        message: String,
    },
    /// It ran past its timeout and was killed.
    TimedOut {
        /// The worker's pid.
        pid: u32,
        /// The limit, in milliseconds.
        timeout_ms: u64,
    },
    /// It was cancelled on the agent.
    Cancelled,
    /// Anything else, as text.
    Other(String),
}

/// A worker of an agent that died running a call, retried there.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RemoteDeath {
    /// The worker's pid.
    pub pid: u32,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
}

/// An agent's heartbeat, published on the queue's heartbeat subject.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The agent's id.
    pub agent: String,
    /// Its host name.
    pub host: String,
    /// Its number of workers.
    pub slots: u32,
    /// The calls it runs now: (reply subject, call id).
    pub running: Vec<(String, u64)>,
}

/// A request to cancel a call, broadcast to every agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CancelCall {
    /// The client's reply subject.
    pub reply: String,
    /// The call's id.
    pub call: u64,
}
