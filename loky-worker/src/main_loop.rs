//! The worker's life: connect to the parent, introduce itself, then receive a
//! call, look its task up by id, run it, send the outcome; until told to stop
//! or until the parent goes away.

use crate::invoke;
use crate::memory::MemoryWatch;
use crate::protocol::{
    self, Bootstrap, Call, CallKind, ChunkItem, ENV_FAULT, EXIT_HANDSHAKE_FAILED,
    EXIT_PROTOCOL_ERROR, Failure, FromWorker, Hello, Outcome, PROTOCOL_VERSION, Payload, Stage,
    ToWorker,
};
use crate::registry;
use ipc_channel::IpcError;
use ipc_channel::ipc::{self, IpcSender};
use serde_bytes::ByteBuf;

/// Runs a worker connected to the parent's one-shot server `server`, and
/// returns the process exit code.
pub fn run(server: String, secret: u64) -> i32 {
    let (calls, results) = match handshake(server, secret) {
        Ok(link) => link,
        Err(error) => {
            eprintln!(
                "loky worker {}: handshake failed: {error}",
                std::process::id()
            );
            return EXIT_HANDSHAKE_FAILED;
        }
    };
    let mut memory = MemoryWatch::from_env();
    let mut retiring = false;
    loop {
        match calls.recv() {
            Ok(ToWorker::Call(call)) => {
                let id = call.id;
                let outcome = execute(call);
                if results.send(FromWorker::Done { id, outcome }).is_err() {
                    // The parent is gone: nobody is left to serve.
                    return 0;
                }
                if !retiring {
                    if let Some(reason) = memory.after_task() {
                        // Keep serving until the parent says stop.
                        retiring = results.send(FromWorker::Retire(reason)).is_ok();
                    }
                }
            }
            Ok(ToWorker::Shutdown) | Err(IpcError::Disconnected) => return 0,
            Err(error) => {
                eprintln!("loky worker {}: bad message: {error}", std::process::id());
                return EXIT_PROTOCOL_ERROR;
            }
        }
    }
}

type Link = (ipc::IpcReceiver<ToWorker>, IpcSender<FromWorker>);

fn handshake(server: String, secret: u64) -> Result<Link, String> {
    let mut version = PROTOCOL_VERSION;
    if let Ok(fault) = std::env::var(ENV_FAULT) {
        if let Some(code) = fault.strip_prefix("exit:") {
            std::process::exit(code.parse().unwrap_or(1));
        } else if fault == "hang" {
            loop {
                std::thread::park();
            }
        } else if let Some(other) = fault.strip_prefix("version:") {
            version = other.parse().unwrap_or(0);
        }
    }
    let bootstrap = IpcSender::<Bootstrap>::connect(server).map_err(|e| e.to_string())?;
    let (calls_tx, calls_rx) = ipc::channel().map_err(|e| e.to_string())?;
    let (results_tx, results_rx) = ipc::channel().map_err(|e| e.to_string())?;
    // The parent's ends move into the message: this process keeps none of
    // them, so the parent's receiver closes exactly when this process dies.
    bootstrap
        .send(Bootstrap::Hello(Hello {
            version,
            secret,
            pid: std::process::id(),
            calls: calls_tx,
            results: results_rx,
        }))
        .map_err(|e| e.to_string())?;
    Ok((calls_rx, results_tx))
}

/// Runs one call (or chunk) and says what became of it.
fn execute(call: Call) -> Outcome {
    if forgotten(&call.task) {
        return Outcome::Failed(Failure::UnknownTask);
    }
    let entry = match registry::lookup(&call.task).entry() {
        Ok(entry) => entry,
        Err(failure) => return Outcome::Failed(failure),
    };
    let args = call.args.bytes();
    let encoded = match call.kind {
        CallKind::Single => entry.invoke(args),
        CallKind::Chunk => run_chunk(|one| entry.invoke(one), args),
    };
    match encoded {
        Ok(bytes) => Outcome::Returned(Payload::pack_result(bytes)),
        Err(failure) => Outcome::Failed(failure),
    }
}

/// Whether the `forget:ID` fault hides this task id.
fn forgotten(task: &str) -> bool {
    static FORGOTTEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    FORGOTTEN
        .get_or_init(|| {
            let fault = std::env::var(ENV_FAULT).ok()?;
            fault.strip_prefix("forget:").map(str::to_owned)
        })
        .as_deref()
        == Some(task)
}

/// Runs every element of a chunk; one element's failure is its own.
fn run_chunk(
    invoke: impl Fn(&[u8]) -> Result<Vec<u8>, Failure>,
    args: &[u8],
) -> Result<Vec<u8>, Failure> {
    let elements: Vec<ByteBuf> = invoke::serde_stage(Stage::DecodeArgs, || protocol::decode(args))?;
    let items: Vec<ChunkItem> = elements
        .iter()
        .map(|one| match invoke(one) {
            Ok(bytes) => ChunkItem::Returned(bytes),
            Err(failure) => ChunkItem::Failed(failure),
        })
        .collect();
    invoke::serde_stage(Stage::EncodeResult, || protocol::encode(&items))
}
