//! The OS backend: a worker is this very binary, re-executed, connected
//! through a handshake, watched, killed and reaped.
//!
//! Per spawn, a handshake thread accepts the worker's hello and reports
//! `Ready`; the worker's setup then gives it its place (a tag) on the
//! backend's one result channel, which the backend's one results thread
//! (`results.rs`) reads, passing each message on, then `Closed`. The
//! backend's one exits thread (`exits.rs`) watches the process itself (a
//! pidfd, which leaves it unreaped) and reports `Exited`, then tells the
//! results thread, behind the worker's last message. So a death is seen at
//! once even when something the worker started still holds the channel
//! open, and a pool of any size costs two threads.
//!
//! Architecture Invariant: only the manager thread signals and reaps worker
//! processes, and it reaps only through [`WorkerHandle::reap`], which
//! consumes the handle: a pid is never signalled after it was reaped (and
//! so never reused under our feet).

mod exits;
mod handshake;
mod output;
mod results;

use super::{Backend, Notify, WorkerHandle};
use crate::config::Config;
use crate::error::{ExitReason, SpawnError};
use ipc_channel::ipc::IpcOneShotServer;
use loky_worker::protocol::{
    Bootstrap, ENV_DEPTH, ENV_LABEL_OUTPUT, ENV_LOG_LEVEL, ENV_MEMORY, ENV_PARENT, ENV_SECRET,
    ENV_SERVER,
};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Starts workers as processes.
pub(crate) struct ProcessBackend {
    /// Lets only the workers we started in.
    secret: u64,
    /// The threads that read every worker's link and watch every worker's
    /// exit, started with the first worker (and the results thread again
    /// if it failed).
    results: Option<results::Results>,
    exits: Option<exits::Exits>,
}

impl ProcessBackend {
    pub(crate) fn new() -> ProcessBackend {
        // RandomState is keyed from the OS's randomness: no other process
        // can guess the secret that lets a worker in.
        let secret = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            (std::process::id(), std::time::Instant::now()),
        );
        ProcessBackend {
            secret,
            results: None,
            exits: None,
        }
    }
}

impl Backend for ProcessBackend {
    type Worker = Process;

    fn spawn(&mut self, config: &Config, notify: Notify) -> Result<Process, SpawnError> {
        if !self.results.as_ref().is_some_and(results::Results::alive) {
            let started = results::Results::start()
                .map_err(|e| SpawnError::io("could not start the results thread", e))?;
            self.results = Some(started);
        }
        let results = self.results.as_ref().expect("started above");
        let exits = self.exits.get_or_insert_with(exits::Exits::start);
        spawn(config, self.secret, notify, results, exits)
    }
}

/// A worker process that was started and has not been reaped.
pub(crate) struct Process {
    child: Child,
    pid: u32,
    /// The path of the one-shot server its handshake thread accepts on.
    server: String,
    /// Set before the manager wakes the handshake thread out of `accept`,
    /// so that it reads the failed accept as "given up", not as a broken
    /// handshake.
    aborted: Arc<AtomicBool>,
    /// The threads that copy its labelled output, if it is labelled.
    output: Vec<std::thread::JoinHandle<()>>,
    /// Its place on the results thread, once it has one.
    registration: Option<results::Registration>,
}

/// How long reaping a labelled worker waits for its last output lines.
const OUTPUT_DRAIN: std::time::Duration = std::time::Duration::from_millis(200);

/// The program a worker runs: this very binary.
/// Runs `f` on one of the backend's threads, a panic in it contained (its
/// payload leaked, should dropping it panic again): what follows must run.
fn contained<R>(f: impl FnOnce() -> R) -> Option<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(std::mem::forget)
        .ok()
}

fn worker_program() -> std::path::PathBuf {
    if cfg!(target_os = "linux") {
        // Still this binary's inode even if the file was replaced on disk.
        "/proc/self/exe".into()
    } else {
        std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into())
    }
}

/// Initializes, once per process, what ipc-channel computes lazily and
/// would panic on (forever after, as its `LazyLock` is then poisoned) if it
/// first ran when file descriptors are exhausted: the socket buffer size,
/// which the first send measures with a fresh socket.
pub(crate) fn prepare_ipc() -> Result<(), SpawnError> {
    static PREPARED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if PREPARED.get().is_some() {
        return Ok(());
    }
    let attempt = || -> Result<(), String> {
        let (tx, rx) = ipc_channel::ipc::channel::<u8>().map_err(|e| e.to_string())?;
        match std::panic::catch_unwind(|| tx.send(0)) {
            Ok(Ok(())) => rx.recv().map(drop).map_err(|e| e.to_string()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(payload) => Err(loky_worker::panic::payload_message(&*payload)),
        }
    };
    attempt().map_err(|message| {
        SpawnError::io(
            "could not set up inter-process channels",
            std::io::Error::other(message),
        )
    })?;
    let _ = PREPARED.set(());
    Ok(())
}

/// Starts a worker and its handshake thread, and watches its exit.
fn spawn(
    config: &Config,
    secret: u64,
    notify: Notify,
    results: &results::Results,
    exits: &exits::Exits,
) -> Result<Process, SpawnError> {
    let (server, name) = IpcOneShotServer::<Bootstrap>::new()
        .map_err(|e| SpawnError::io("could not create the handshake socket", e))?;
    let mut command = Command::new(worker_program());
    if let Some(arg0) = std::env::args_os().next() {
        command.arg0(arg0);
    }
    command
        .envs(config.thread_limit_env())
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_SERVER, &name)
        .env(ENV_SECRET, format!("{secret:x}"))
        .env(ENV_PARENT, std::process::id().to_string())
        .env(ENV_DEPTH, (crate::depth::current() + 1).to_string())
        .env(ENV_LOG_LEVEL, config.worker_log_level().to_string())
        .env(ENV_MEMORY, {
            let memory = config.memory_limits();
            format!(
                "{},{}",
                memory.leak_threshold.unwrap_or(0),
                memory.rss_cap.unwrap_or(0)
            )
        })
        .env(
            ENV_LABEL_OUTPUT,
            if config.label_output { "1" } else { "0" },
        )
        .stdin(Stdio::null())
        // Its own process group, so that killing a worker kills whatever
        // it started too.
        .process_group(0);
    if config.label_output {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = command
        .spawn()
        .map_err(|e| SpawnError::io(format!("could not start {:?}", worker_program()), e))?;
    let pid = child.id();
    let mut copies = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        copies.push(output::copy(pid, stdout, output::Stream::Stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        copies.push(output::copy(pid, stderr, output::Stream::Stderr));
    }
    let aborted = Arc::new(AtomicBool::new(false));
    let process = Process {
        child,
        pid,
        server: name,
        aborted: Arc::clone(&aborted),
        output: Vec::new(),
        registration: None,
    };
    let mut process = process;
    for copy in copies {
        match copy {
            Ok(thread) => process.output.push(thread),
            Err(error) => {
                process.abort_handshake();
                let _ = process.reap();
                return Err(SpawnError::io("could not start an output thread", error));
            }
        }
    }
    let notify: Arc<Notify> = Arc::new(notify);
    let registration = results.register(pid, Arc::clone(&notify));
    let hello_notify = Arc::clone(&notify);
    let hello_registration = registration.clone();
    let accepting = std::thread::Builder::new()
        .name(format!("loky-hello-{pid}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            handshake::run(
                pid,
                secret,
                server,
                &aborted,
                hello_notify,
                hello_registration,
            );
        });
    if let Err(error) = accepting {
        registration.forget();
        let _ = process.reap();
        return Err(SpawnError::io("could not start a handshake thread", error));
    }
    // The report that closes its link once all it sent is read goes
    // first, so that its sending overlaps telling `Exited`.
    let exit_registration = registration.clone();
    let on_exit: Notify = Box::new(move |event| {
        // A panic there must not keep `Exited` from being told.
        contained(|| exit_registration.exited());
        notify(event)
    });
    if let Err(error) = exits.watch(pid, Arc::new(on_exit)) {
        registration.forget();
        process.abort_handshake();
        let _ = process.reap();
        return Err(SpawnError::io("could not watch the worker's exit", error));
    }
    process.registration = Some(registration);
    Ok(process)
}

impl WorkerHandle for Process {
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Signals the worker's whole process group: the worker and every
    /// process it started that did not leave the group.
    fn signal(&self, signal: i32) {
        let group = -(self.pid as libc::pid_t);
        // SAFETY: kill has no memory-safety preconditions. The process is
        // not reaped by us yet (`reap` consumes the handle), so the group
        // is ours. (If the program ignores SIGCHLD the kernel reaps it as
        // soon as it exits; its group lives on while anything it started
        // does, and a pid is not reused while it names a live group.)
        unsafe { libc::kill(group, signal) };
    }

    /// Stops the handshake thread's wait for a hello that will not come:
    /// connects to its server and hangs up at once, so that its `accept`
    /// returns with a closed connection.
    ///
    /// A plain socket, not `IpcSender::connect`: that one leaks its socket
    /// when the connect fails, as it does whenever the handshake thread has
    /// already left `accept` (the server is gone). Here the descriptor is
    /// owned and closed on every path, and a refused connect is harmless.
    fn abort_handshake(&self) {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        self.aborted.store(true, Ordering::Release);
        let Ok(address) = SocketAddrUnix::new(self.server.as_str()) else {
            return;
        };
        let Ok(socket) = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        ) else {
            return;
        };
        let _ = rustix::net::connect(&socket, &address);
    }

    fn retell_exit(&self) {
        if let Some(registration) = &self.registration {
            registration.retell_exit();
        }
    }

    fn exited(&self) -> bool {
        use rustix::process::{Pid, WaitId, WaitIdOptions};
        let Some(pid) = Pid::from_raw(self.pid as i32) else {
            return true;
        };
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
        match rustix::process::waitid(WaitId::Pid(pid), options) {
            Ok(status) => status.is_some(),
            // ECHILD: collected elsewhere, so it has exited.
            Err(_) => true,
        }
    }

    /// Kills the process group first (the worker is dead or dying but not
    /// reaped, so the group is still ours), then reaps.
    fn reap(mut self) -> ExitReason {
        self.signal(libc::SIGKILL);
        output::drain(std::mem::take(&mut self.output), OUTPUT_DRAIN);
        match self.child.wait() {
            Ok(status) => ExitReason::from_status(status),
            Err(error) => {
                // ECHILD: someone else collected it, as the kernel does
                // when the program ignores SIGCHLD. Say so; invent nothing.
                tracing::warn!(pid = self.pid, %error, "worker's exit status was reaped elsewhere");
                ExitReason::Unknown
            }
        }
    }
}
