//! A worker process: started by re-executing this very binary, connected
//! through a handshake, watched by its link thread, killed and reaped.
//!
//! Architecture Invariant: only the manager thread starts, kills and reaps
//! worker processes; a link thread only waits for its worker's exit status
//! with `WNOWAIT`, so a pid is never killed after it was reaped (and so
//! never reused under our feet).

mod link;

pub(crate) use link::WorkerEvent;

use crate::config::Config;
use crate::error::SpawnError;
use crate::manager::Event;
use crossbeam_channel::Sender;
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};
use loky_worker::protocol::{Bootstrap, ENV_DEPTH, ENV_MEMORY, ENV_PARENT, ENV_SECRET, ENV_SERVER};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// A worker process that was started and has not been reaped.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    /// The name of the one-shot server its link thread accepts on.
    server: String,
}

/// The program a worker runs: this very binary.
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

/// Starts a worker and its link thread, which reports the handshake and
/// everything after it as `Event::Worker(worker, ..)`.
pub(crate) fn spawn(
    config: &Config,
    secret: u64,
    worker: u64,
    events: Sender<Event>,
) -> Result<Process, SpawnError> {
    let (server, name) = IpcOneShotServer::<Bootstrap>::new()
        .map_err(|e| SpawnError::io("could not create the handshake socket", e))?;
    let mut command = Command::new(worker_program());
    if let Some(arg0) = std::env::args_os().next() {
        command.arg0(arg0);
    }
    command
        .envs(config.get_env().iter().map(|(k, v)| (k, v)))
        .env(ENV_SERVER, &name)
        .env(ENV_SECRET, format!("{secret:x}"))
        .env(ENV_PARENT, std::process::id().to_string())
        .env(ENV_DEPTH, (crate::depth::current() + 1).to_string())
        .env(ENV_MEMORY, {
            let memory = config.get_memory();
            format!(
                "{},{}",
                memory.leak_threshold.unwrap_or(0),
                memory.rss_cap.unwrap_or(0)
            )
        })
        .stdin(Stdio::null())
        // Its own process group, so that killing a worker kills whatever
        // it started too.
        .process_group(0);
    let child = command
        .spawn()
        .map_err(|e| SpawnError::io(format!("could not start {:?}", worker_program()), e))?;
    let pid = child.id();
    let spawned = std::thread::Builder::new()
        .name(format!("loky-link-{pid}"))
        .spawn(move || link::run(worker, pid, secret, server, events));
    let mut process = Process {
        child,
        pid,
        server: name,
    };
    if let Err(error) = spawned {
        process.kill();
        let _ = process.child.wait();
        return Err(SpawnError::io("could not start a link thread", error));
    }
    Ok(process)
}

impl Process {
    /// Kills the worker's whole process group.
    pub(crate) fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Sends `signal` to the worker's whole process group: the worker and
    /// every process it started that did not leave the group.
    pub(crate) fn signal(&self, signal: i32) {
        let group = -(self.pid as libc::pid_t);
        // SAFETY: kill has no memory-safety preconditions. The process is
        // not reaped yet (see the invariant above), so the group is ours.
        unsafe { libc::kill(group, signal) };
    }

    /// Stops the link thread's wait for a handshake that will not come.
    pub(crate) fn abort_handshake(&self) {
        if let Ok(sender) = IpcSender::<Bootstrap>::connect(self.server.clone()) {
            let _ = sender.send(Bootstrap::Abort);
        }
    }
}

/// Blocks until `pid` has exited, without reaping it.
pub(crate) fn wait_exit_no_reap(pid: u32) {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid output buffer for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into `info`; WNOWAIT leaves the child
        // for the manager to reap.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}
