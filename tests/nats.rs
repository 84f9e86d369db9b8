//! A cluster for real (feature `nats`): a `nats-server -js` on a loopback
//! port started for each test, agents that are this test binary started
//! again with `LOKY_AGENT`, and a client executor. Results, crashes on an
//! agent, timeouts, cancellation, a killed agent, a killed server, an
//! oversized payload. Every wait is bounded.

mod common;

use common::BOUND;
use loky::{Backend, Config, Error, Executor, ExitReason};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[loky::task]
fn square(x: u64) -> u64 {
    x * x
}

#[loky::task]
fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[loky::task]
fn panics() -> u8 {
    panic!("a panic on an agent")
}

#[loky::task]
fn segfaults() -> u8 {
    // SAFETY: none: this is the crash under test.
    unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
    0
}

#[loky::task]
fn exits(code: i32) -> u8 {
    std::process::exit(code)
}

#[loky::task]
fn echo(data: Vec<u8>) -> usize {
    data.len()
}

/// Appends a line to `path`: proof that it ran.
#[loky::task]
fn touch(path: PathBuf) {
    std::fs::write(path, "ran").unwrap();
}

/// A `nats-server -js` on a free loopback port, killed and reaped on drop.
struct Server {
    child: Child,
    url: String,
    _store: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = std::env::temp_dir().join(format!("loky-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on the PATH (.ci/run installs it)");
        let server = Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _store: TempDir(store),
        };
        let ready = common::eventually(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(ready, "nats-server did not listen within 10 s");
        server
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// This test binary as an agent with `workers` workers, killed (with its
/// workers, through their parent-death signal) and reaped on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(server: &Server, workers: usize) -> Agent {
        Agent::start_with(server, workers, None)
    }

    /// An agent that commits `fault` (`LOKY_AGENT_FAULT`).
    fn start_with(server: &Server, workers: usize, fault: Option<&str>) -> Agent {
        let mut command = Command::new(std::env::current_exe().unwrap());
        if let Some(fault) = fault {
            command.env("LOKY_AGENT_FAULT", fault);
        }
        let child = command
            .env("LOKY_AGENT", &server.url)
            .env("LOKY_AGENT_WORKERS", workers.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Agent { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(server: &Server) -> Executor {
    Executor::new(Config::new().backend(Backend::nats(&server.url))).unwrap()
}

/// The error inside `Error::Remote`, checking that it names a host.
fn remote(error: Error) -> Error {
    match error {
        Error::Remote { host, error } => {
            assert!(!host.is_empty());
            *error
        }
        other => panic!("expected an error from a host, got {other:?}"),
    }
}

#[test]
fn submit_and_map_give_correct_ordered_results() {
    let server = Server::start();
    let _agents = [Agent::start(&server, 2), Agent::start(&server, 2)];
    let executor = client(&server);
    let future = executor.submit(square, 7).unwrap();
    assert_eq!(future.result_timeout(BOUND).unwrap(), 49);
    assert!(
        matches!(executor.resize(4), Err(Error::Config(_))),
        "a cluster has no size of its own"
    );
    assert!(executor.worker_pids().is_empty());
    assert!(
        common::eventually(BOUND, || executor.stats().workers == 4),
        "two agents of two workers"
    );
    let squares: Vec<u64> = executor
        .map(square, 0..1000u64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let single: Vec<u64> = executor
        .map(square, 0..50u64)
        .chunksize(1)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(single[49], 49 * 49);
}

#[test]
fn crashes_on_an_agent_are_precise() {
    let server = Server::start();
    let _agent = Agent::start(&server, 2);
    let executor = client(&server);
    let panicked = executor.submit(panics, ()).unwrap().result_timeout(BOUND);
    match remote(panicked.unwrap_err()) {
        Error::Panicked { panic, pid, .. } => {
            assert_eq!(panic.message, "a panic on an agent");
            assert!(pid > 0);
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    let died = executor
        .submit(segfaults, ())
        .unwrap()
        .result_timeout(BOUND);
    match remote(died.unwrap_err()) {
        Error::WorkerDied { reason, .. } => assert_eq!(reason.signal_name(), Some("SIGSEGV")),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    let exited = executor.submit(exits, 3).unwrap().result_timeout(BOUND);
    match remote(exited.unwrap_err()) {
        Error::WorkerDied { reason, .. } => assert_eq!(reason, ExitReason::Code(3)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // The agent's pool healed.
    assert_eq!(
        executor
            .submit(square, 5)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        25
    );
}

#[test]
fn a_per_task_timeout_is_enforced_on_the_agent() {
    let server = Server::start();
    let _agent = Agent::start(&server, 1);
    let executor = client(&server);
    let started = Instant::now();
    let result = executor
        .submit_timeout(sleep_ms, 20_000, Duration::from_millis(300))
        .unwrap()
        .result_timeout(BOUND);
    match remote(result.unwrap_err()) {
        Error::TaskTimeout { timeout, .. } => assert_eq!(timeout, Duration::from_millis(300)),
        other => panic!("expected TaskTimeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn cancelled_calls_never_run_and_running_ones_are_stopped() {
    let server = Server::start();
    let _agent = Agent::start(&server, 1);
    let executor = client(&server);
    let running = executor.submit(sleep_ms, 20_000).unwrap();
    assert!(
        common::eventually(BOUND, || running.running()),
        "never started"
    );
    let path = std::env::temp_dir().join(format!("loky-nats-cancel-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let queued = executor.submit(touch, path.clone()).unwrap();
    assert!(!queued.running());
    assert!(queued.cancel(), "a queued call can be cancelled");
    assert!(matches!(
        queued.result_timeout(BOUND),
        Err(Error::Cancelled { .. })
    ));
    assert!(running.cancel(), "a running call is stopped");
    // The agent's only worker is free again: the next call runs at once.
    let started = Instant::now();
    assert_eq!(
        executor
            .submit(square, 3)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        9
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the cancelled call kept the worker"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!path.exists(), "a call cancelled before it started ran");
}

#[test]
fn a_killed_agent_fails_its_running_call_as_host_lost_and_the_rest_finish() {
    let server = Server::start();
    let mut first = Agent::start(&server, 1);
    let _second = Agent::start(&server, 1);
    let executor = client(&server);
    let long: Vec<_> = (0..2)
        .map(|_| executor.submit(sleep_ms, 3_000).unwrap())
        .collect();
    assert!(
        common::eventually(BOUND, || long.iter().all(|f| f.running())),
        "both agents did not start a call"
    );
    let queued: Vec<_> = (0..4)
        .map(|x| executor.submit(square, x).unwrap())
        .collect();
    let killed_at = Instant::now();
    first.kill();
    // The killed agent's call fails first, long before the other's 3 s.
    let first_done = loky::wait(&long, Some(BOUND), loky::ReturnWhen::FirstCompleted);
    let noticed = killed_at.elapsed();
    assert_eq!(first_done.done.len(), 1, "{first_done:?}");
    let [lost, survivor]: [loky::Future<u32>; 2] = long.try_into().unwrap();
    let (lost, survivor) = if first_done.done == [0] {
        (lost, survivor)
    } else {
        (survivor, lost)
    };
    match lost.result_timeout(BOUND) {
        Err(Error::HostLost { task, host, .. }) => {
            assert_eq!(task, "nats::sleep_ms");
            assert!(!host.is_empty());
        }
        other => panic!("expected HostLost, got {other:?}"),
    }
    assert!(
        noticed < Duration::from_millis(1500),
        "host lost only after {noticed:?}"
    );
    assert!(
        survivor.result_timeout(BOUND).is_ok(),
        "the other agent's call finishes"
    );
    for (x, future) in (0u64..).zip(queued) {
        assert_eq!(future.result_timeout(BOUND).unwrap(), x * x);
    }
}

#[test]
fn a_killed_server_fails_pending_calls_without_a_hang() {
    let mut server = Server::start();
    let _agent = Agent::start(&server, 1);
    let executor = client(&server);
    let pending = executor.submit(sleep_ms, 20_000).unwrap();
    assert!(common::eventually(BOUND, || pending.running()));
    let killed_at = Instant::now();
    server.kill();
    match pending.result_timeout(BOUND) {
        Err(Error::BrokerLost { url, .. }) => assert_eq!(url, server.url),
        // The agent's silence may be noticed first: as clear.
        Err(Error::HostLost { .. }) => {}
        other => panic!("expected BrokerLost, got {other:?}"),
    }
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    let after = executor.submit(square, 2).unwrap().result_timeout(BOUND);
    assert!(matches!(after, Err(Error::BrokerLost { .. })), "{after:?}");
}

#[test]
fn an_oversized_payload_is_a_clear_error() {
    let server = Server::start();
    let executor = client(&server);
    let result = executor
        .submit(echo, vec![0u8; 4 << 20])
        .unwrap()
        .result_timeout(BOUND);
    match result {
        Err(Error::PayloadTooLarge { size, max, .. }) => assert!(size > max),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
}

#[test]
fn an_unreachable_server_is_an_error_when_the_executor_is_built() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result =
        Executor::new(Config::new().backend(Backend::nats(format!("nats://127.0.0.1:{port}"))));
    match result {
        Err(Error::Config(message)) => assert!(message.contains("cannot reach"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn an_agent_of_another_protocol_version_refuses_clearly() {
    let server = Server::start();
    let _agent = Agent::start_with(&server, 1, Some("version:999"));
    let executor = client(&server);
    let result = executor.submit(square, 2).unwrap().result_timeout(BOUND);
    match remote(result.unwrap_err()) {
        Error::Spawn(loky::SpawnError::ProtocolMismatch { ours, theirs, .. }) => {
            assert_eq!(theirs, 999);
            assert_ne!(ours, 999);
        }
        other => panic!("expected ProtocolMismatch, got {other:?}"),
    }
}

#[test]
fn a_task_the_agent_does_not_know_is_a_clear_error() {
    let server = Server::start();
    let _agent = Agent::start_with(&server, 1, Some("forget:nats::square"));
    let executor = client(&server);
    let result = executor.submit(square, 2).unwrap().result_timeout(BOUND);
    match remote(result.unwrap_err()) {
        Error::UnknownTask { task, .. } => assert_eq!(task, "nats::square"),
        other => panic!("expected UnknownTask, got {other:?}"),
    }
    // Other tasks still run there.
    assert_eq!(
        executor
            .submit(echo, vec![1, 2])
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        2
    );
}
