//! A cluster for real (feature `nats`): a `nats-server -js` on a loopback
//! port started for each test, agents that are this test binary started
//! again with `LOKY_AGENT`, and a client executor. Results, crashes on an
//! agent, timeouts, cancellation, a killed agent, a killed server, an
//! oversized payload; retries of calls lost with their host (killed,
//! stopped and resumed) and of calls whose worker died on an agent; calls
//! the server delivers again after their agent died, started (never run
//! again) or not (run elsewhere once). Every wait is bounded.

mod common;

use common::BOUND;
use loky::{Backend, CallOptions, Config, Error, Executor, ExitReason};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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

/// Squares `x` after two seconds: long enough to kill its agent under it.
#[loky::task]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(2));
    x * x
}

/// Exits its worker the first time (when it creates `marker`), returns 7
/// the next.
#[loky::task]
fn exits_once(marker: PathBuf) -> u8 {
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_ok();
    if first {
        std::process::exit(3);
    }
    7
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

/// Appends a line to `path`: each run leaves one.
#[loky::task]
fn record_run(path: PathBuf) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(b"ran\n").unwrap();
}

/// How many times `record_run(path)` ran.
fn runs(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |runs| runs.lines().count())
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server -js` on a free loopback port, killed and reaped on drop.
struct Server {
    child: Child,
    url: String,
    /// Its monitoring port.
    monitor: u16,
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
        let port = free_port();
        let monitor = free_port();
        let store = std::env::temp_dir().join(format!("loky-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on the PATH (.ci/run installs it)");
        let server = Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            monitor,
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

    /// How many messages the server's streams hold (calls published and
    /// not acknowledged), from its monitoring endpoint.
    fn messages(&self) -> Option<u64> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.monitor)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let after = &response[response.find("\"messages\":")? + "\"messages\":".len()..];
        let digits: String = after
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
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

    /// Whether the agent process has exited (it is then reaped).
    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the agent process alone:
    /// its workers run on.
    fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
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

/// Submits `slow_square(7)` with `retries` to an agent of one worker, and
/// once it runs there starts a second agent and waits until the client
/// hears of both: the first agent and the future.
fn running_on_the_first_of_two(
    server: &Server,
    executor: &Executor,
    retries: u32,
) -> (Agent, Agent, loky::Future<u64>) {
    let first = Agent::start(server, 1);
    let future = executor
        .submit_with(slow_square, 7, CallOptions::new().retries(retries))
        .unwrap();
    assert!(
        common::eventually(BOUND, || future.running()),
        "never started"
    );
    let second = Agent::start(server, 1);
    assert!(
        common::eventually(BOUND, || executor.stats().workers == 2),
        "the second agent was not heard of"
    );
    (first, second, future)
}

#[test]
fn a_call_whose_agent_is_killed_runs_again_elsewhere_with_retries() {
    let server = Server::start();
    let executor = client(&server);
    let (mut first, _second, future) = running_on_the_first_of_two(&server, &executor, 1);
    let killed_at = Instant::now();
    first.kill();
    assert_eq!(future.result_timeout(BOUND).unwrap(), 49);
    // Lost after a second of silence, then two seconds on the other agent.
    let took = killed_at.elapsed();
    assert!(took > Duration::from_secs(2), "ran again for only {took:?}");
}

#[test]
fn a_call_out_of_retries_fails_as_host_lost_listing_the_lost_hosts() {
    let server = Server::start();
    let executor = client(&server);
    let (mut first, mut second, future) = running_on_the_first_of_two(&server, &executor, 1);
    first.kill();
    // Declared lost (the client forgets the agent) and started again on
    // the second.
    assert!(
        common::eventually(BOUND, || executor.stats().workers == 1 && future.running()),
        "not run again after its host was lost"
    );
    second.kill();
    match future.result_timeout(BOUND) {
        Err(error @ Error::HostLost { .. }) => {
            let Error::HostLost { host, earlier, .. } = &error else {
                unreachable!()
            };
            assert_eq!(earlier.len(), 1, "{error}");
            assert_eq!(earlier[0].host.as_ref(), Some(host));
            assert!(
                matches!(earlier[0].reason, ExitReason::HostLost { silent_for }
                    if silent_for >= Duration::from_secs(1)),
                "{error}"
            );
            assert!(
                error.to_string().contains("after 1 earlier attempt: host"),
                "{error}"
            );
        }
        other => panic!("expected HostLost, got {other:?}"),
    }
}

#[test]
fn a_lost_host_that_comes_back_does_not_settle_the_retried_call() {
    let server = Server::start();
    let executor = client(&server);
    let first = Agent::start(&server, 1);
    let future = executor
        .submit_with(sleep_ms, 3_000, CallOptions::new().retries(1))
        .unwrap();
    let settled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&settled);
    future.add_done_callback(move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(
        common::eventually(BOUND, || future.running()),
        "never started"
    );
    let second = Agent::start(&server, 1);
    assert!(common::eventually(BOUND, || executor.stats().workers == 2));
    // The first agent stops talking; its worker goes on sleeping.
    first.signal(libc::SIGSTOP);
    assert!(
        common::eventually(BOUND, || executor.stats().workers == 1),
        "the stopped agent was not declared lost"
    );
    // Back while the call runs again on the second: what it says of its
    // own attempt (cancelled, or done) must not settle the future.
    first.signal(libc::SIGCONT);
    let pid = future.result_timeout(BOUND).unwrap();
    assert_eq!(
        parent_of(pid),
        second.child.id(),
        "the result is not the second agent's"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(settled.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The first agent serves again.
    drop(second);
    assert_eq!(
        executor
            .submit(square, 4)
            .unwrap()
            .result_timeout(BOUND)
            .unwrap(),
        16
    );
}

#[test]
fn a_worker_death_on_an_agent_is_retried_there_within_the_budget() {
    let server = Server::start();
    let _agent = Agent::start(&server, 1);
    let executor = client(&server);
    let dir = TempDir(std::env::temp_dir().join(format!("loky-nats-once-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let once = executor
        .submit_with(
            exits_once,
            dir.0.join("marker"),
            CallOptions::new().retries(1),
        )
        .unwrap()
        .result_timeout(BOUND);
    assert_eq!(once.unwrap(), 7);
    // Out of budget: the last death, after the earlier one on that host.
    let always = executor
        .submit_with(exits, 3, CallOptions::new().retries(1))
        .unwrap()
        .result_timeout(BOUND);
    let Err(Error::Remote { host, error }) = always else {
        panic!("expected a death on a host, got {always:?}")
    };
    match *error {
        Error::WorkerDied {
            reason, earlier, ..
        } => {
            assert_eq!(reason, ExitReason::Code(3));
            assert_eq!(earlier.len(), 1);
            assert_eq!(earlier[0].reason, ExitReason::Code(3));
            assert_eq!(earlier[0].host.as_ref(), Some(&host));
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

/// The parent of process `pid`, from `/proc`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // `pid (comm) state ppid ...`; comm may hold spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

/// `record_run` submitted with `retries` to an agent that says it started
/// it, runs it, and dies before its acknowledgement reaches the server; a
/// second agent, started once the first is declared lost, gets the call
/// again from the server. Returns
/// the outcome and how many times it ran, once the server holds no call.
fn started_then_unacknowledged(retries: u32) -> (Result<(), Error>, usize) {
    let server = Server::start();
    let executor = client(&server);
    let dir = TempDir(std::env::temp_dir().join(format!(
        "loky-nats-unacked-{}-{retries}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("runs");
    let mut first = Agent::start_with(&server, 1, Some("die-after-started:nats::record_run"));
    let future = executor
        .submit_with(
            record_run,
            path.clone(),
            CallOptions::new().retries(retries),
        )
        .unwrap();
    assert!(
        common::eventually(BOUND, || first.exited()),
        "the agent did not die after the call"
    );
    assert_eq!(runs(&path), 1, "the first agent did not run it");
    assert!(
        common::eventually(BOUND, || future.running()),
        "its start was not heard"
    );
    // Declared lost (failed, or published again): the cancel of the lost
    // attempt went out. An agent started now has not heard it, and gets
    // the lost attempt's message when its `ack_wait` runs out.
    assert!(
        common::eventually(BOUND, || !future.running()),
        "its host was not declared lost"
    );
    let _second = Agent::start(&server, 1);
    // Its worker warm before the server's copy comes (at `ack_wait`), so
    // that a copy it started would run at once.
    let warm = executor.submit(square, 3).unwrap().result_timeout(BOUND);
    assert_eq!(warm.unwrap(), 9);
    let outcome = future.result_timeout(BOUND);
    // The server delivered the unacknowledged call again (after `ack_wait`)
    // and the second agent acknowledged it, run or not.
    assert!(
        common::eventually(BOUND, || server.messages() == Some(0)),
        "the call delivered again was never acknowledged"
    );
    std::thread::sleep(Duration::from_millis(300));
    (outcome, runs(&path))
}

#[test]
fn a_started_call_whose_agent_died_before_acknowledging_it_never_runs_again() {
    let (outcome, runs) = started_then_unacknowledged(0);
    match outcome {
        Err(Error::HostLost { task, earlier, .. }) => {
            assert_eq!(task, "nats::record_run");
            assert!(earlier.is_empty());
        }
        other => panic!("expected HostLost, got {other:?}"),
    }
    assert_eq!(runs, 1, "the copy the server delivered again ran");
}

#[test]
fn a_started_call_whose_agent_died_before_acknowledging_it_is_retried_once() {
    // The lost host's attempt is published again under a new id and runs
    // on the second agent; the server's copy of the lost attempt does not.
    let (outcome, runs) = started_then_unacknowledged(1);
    outcome.unwrap();
    assert_eq!(runs, 2, "one run per attempt");
}

#[test]
fn a_call_whose_agent_died_before_starting_it_runs_elsewhere_once() {
    let server = Server::start();
    let executor = client(&server);
    let dir =
        TempDir(std::env::temp_dir().join(format!("loky-nats-unstarted-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("runs");
    let mut first = Agent::start_with(&server, 1, Some("die-before-started:nats::record_run"));
    let future = executor.submit(record_run, path.clone()).unwrap();
    assert!(
        common::eventually(BOUND, || first.exited()),
        "the agent did not die on taking the call"
    );
    assert!(!future.running());
    let _second = Agent::start(&server, 1);
    future.result_timeout(BOUND).unwrap();
    assert!(
        common::eventually(BOUND, || server.messages() == Some(0)),
        "the call was not acknowledged"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(runs(&path), 1);
}

/// The pid of the process that started this worker.
#[loky::task]
fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

/// Run by `task_spawn_goes_where_loky_backend_says` in a child process
/// with `LOKY_BACKEND` set: `spawn` reaches an agent, not a local worker.
#[test]
fn spawn_child_role() {
    if std::env::var_os("LOKY_TEST_SPAWN_CHILD").is_none() {
        return;
    }
    let parent = parent_pid.spawn(()).result_timeout(BOUND).unwrap();
    assert_ne!(parent, std::process::id(), "ran in a local worker");
}

#[test]
fn task_spawn_goes_where_loky_backend_says() {
    let server = Server::start();
    let _agent = Agent::start(&server, 1);
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "spawn_child_role", "--nocapture"])
        .env("LOKY_TEST_SPAWN_CHILD", "1")
        .env(loky::ENV_BACKEND, &server.url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // A value that is neither `local` nor a URL is refused clearly.
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "spawn_child_role", "--nocapture"])
        .env("LOKY_TEST_SPAWN_CHILD", "1")
        .env(loky::ENV_BACKEND, "carrier-pigeon")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success());
    assert!(
        printed.contains("LOKY_BACKEND=carrier-pigeon: expected `local` or a nats:// URL"),
        "{printed}"
    );
}
