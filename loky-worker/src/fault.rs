//! Faults a worker can be told to commit, for tests of the parent's
//! defences. Compiled only with the `test-hooks` feature (the test suite
//! enables it); without it, [`ENV_FAULT`] is ignored.
//!
//! `LOKY_WORKER_FAULT` values, all acted on before the handshake except
//! `forget`:
//! - `exit:N`: exit with code N;
//! - `orphan-exit:N`: start `sleep 1000` (in the worker's process group),
//!   write its pid to the file named by [`ENV_FAULT_FILE`], exit with N;
//! - `hang`: never connect;
//! - `version:N`: introduce itself with protocol version N;
//! - `forget:ID`: act as if no task were registered under ID, as a worker
//!   built from other sources would;
//! - `hold:MS`: hold single calls' outcomes back up to MS milliseconds
//!   (instead of `batch::HOLD_AT_MOST`), so that a test can die holding
//!   some;
//! - `exit-after-reply:N`: exit with code N right after putting an outcome
//!   in the board's reply box, before its caller may have taken it;
//! - `panic-after-call`: panic in the worker's own loop (outside any task)
//!   once a call's outcome is sent, held back or in the box.

/// The variable naming the fault.
pub const ENV_FAULT: &str = "LOKY_WORKER_FAULT";
/// Where `orphan-exit` writes the pid of the process it leaves behind.
pub const ENV_FAULT_FILE: &str = "LOKY_WORKER_FAULT_FILE";

/// This worker's fault, read once: some are looked at on every call.
#[cfg(feature = "test-hooks")]
fn fault() -> Option<&'static str> {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var(ENV_FAULT).ok())
        .as_deref()
}

/// Acts on a handshake fault; returns the protocol version to announce.
#[cfg(feature = "test-hooks")]
pub(crate) fn before_handshake(version: u32) -> u32 {
    let Some(fault) = fault() else {
        return version;
    };
    if let Some(code) = fault.strip_prefix("exit:") {
        std::process::exit(code.parse().unwrap_or(1));
    } else if let Some(code) = fault.strip_prefix("orphan-exit:") {
        if let Ok(child) = std::process::Command::new("sleep").arg("1000").spawn() {
            if let Ok(path) = std::env::var(ENV_FAULT_FILE) {
                let _ = std::fs::write(path, child.id().to_string());
            }
            std::mem::forget(child);
        }
        std::process::exit(code.parse().unwrap_or(1));
    } else if fault == "hang" {
        loop {
            std::thread::park();
        }
    } else if let Some(other) = fault.strip_prefix("version:") {
        return other.parse().unwrap_or(0);
    }
    version
}

/// Without the feature: no fault.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn before_handshake(version: u32) -> u32 {
    version
}

/// Whether the `forget:ID` fault hides this task id.
#[cfg(feature = "test-hooks")]
pub(crate) fn forgotten(task: &str) -> bool {
    fault().and_then(|fault| fault.strip_prefix("forget:")) == Some(task)
}

/// Without the feature: no fault.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn forgotten(_task: &str) -> bool {
    false
}

/// How long outcomes are held back at most: `hold:MS`, or `default`.
#[cfg(feature = "test-hooks")]
pub(crate) fn hold_at_most(default: std::time::Duration) -> std::time::Duration {
    fault()
        .and_then(|fault| fault.strip_prefix("hold:")?.parse().ok())
        .map_or(default, std::time::Duration::from_millis)
}

/// Without the feature: no fault.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn hold_at_most(default: std::time::Duration) -> std::time::Duration {
    default
}

/// Acts on the `exit-after-reply:N` fault, once an outcome is in the box.
#[cfg(feature = "test-hooks")]
pub(crate) fn after_reply() {
    if let Some(code) =
        fault().and_then(|fault| fault.strip_prefix("exit-after-reply:")?.parse().ok())
    {
        std::process::exit(code);
    }
}

/// Without the feature: no fault.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn after_reply() {}

/// Acts on the `panic-after-call` fault.
#[cfg(feature = "test-hooks")]
pub(crate) fn after_call() {
    if fault() == Some("panic-after-call") {
        panic!("the panic-after-call fault");
    }
}

/// Without the feature: no fault.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn after_call() {}

/// The variable naming a fault of a cluster agent (feature `nats` of
/// `loky`), one of:
/// - `version:N`: announce protocol version N;
/// - `forget:ID`: act as if no task were registered under ID;
/// - `die-before-started:ID`: abort on taking a call of task ID, before
///   saying it started (the server delivers it again);
/// - `die-after-started:ID`: say a call of task ID started, never
///   acknowledge it, and abort once it is over (so it ran once, and the
///   server delivers it again).
///
/// A variable of its own, so that the agent's local workers do not commit
/// it too.
pub const ENV_AGENT_FAULT: &str = "LOKY_AGENT_FAULT";

/// The protocol version an agent speaks: `version` unless told otherwise.
pub fn agent_version(version: u32) -> u32 {
    agent_fault("version:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(version)
}

/// Whether an agent acts as if `task` were not registered.
pub fn agent_forgets(task: &str) -> bool {
    agent_fault("forget:").is_some_and(|id| id == task)
}

/// Whether an agent aborts on taking a call of `task`, before it says it
/// started.
pub fn agent_dies_before_started(task: &str) -> bool {
    agent_fault("die-before-started:").is_some_and(|id| id == task)
}

/// Whether an agent says a call of `task` started, never acknowledges it,
/// and aborts once it is over.
pub fn agent_dies_after_started(task: &str) -> bool {
    agent_fault("die-after-started:").is_some_and(|id| id == task)
}

#[cfg(feature = "test-hooks")]
fn agent_fault(prefix: &str) -> Option<String> {
    std::env::var(ENV_AGENT_FAULT)
        .ok()?
        .strip_prefix(prefix)
        .map(str::to_owned)
}

#[cfg(not(feature = "test-hooks"))]
fn agent_fault(_prefix: &str) -> Option<String> {
    None
}

/// The variable naming a fault of the parent (the executor's process),
/// one of:
/// - `send-panics-once`: the first message of calls it sends panics in
///   ipc-channel's stead (as when a region cannot be mapped again).
///
/// A variable of its own, so that workers do not commit it.
pub const ENV_PARENT_FAULT: &str = "LOKY_PARENT_FAULT";

/// Whether this send of calls is to panic (once per process).
#[cfg(feature = "test-hooks")]
pub fn parent_send_panics() -> bool {
    // Read once: this is asked on every send.
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    *ARMED.get_or_init(|| {
        std::env::var(ENV_PARENT_FAULT).is_ok_and(|fault| fault == "send-panics-once")
    }) && !DONE.swap(true, std::sync::atomic::Ordering::SeqCst)
}

/// Whether this send of calls is to panic: never without `test-hooks`.
#[cfg(not(feature = "test-hooks"))]
pub fn parent_send_panics() -> bool {
    false
}
