//! The cluster's figures (feature `nats`): `cargo bench --features nats
//! --bench cluster [-- --json]`. Starts a `nats-server -js` on a loopback
//! port and two agents of two workers (this binary started again with
//! `LOKY_AGENT`), then measures through a cluster executor: the round trip
//! of a no-op call, map throughput, and the time from an agent's death to
//! the `HostLost` error. Medians; one machine, so the network is loopback.

mod report;

use loky::{Backend, Config, Error, Executor};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[loky::task]
fn noop(x: u64) -> u64 {
    x
}

#[loky::task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(url: &str, workers: usize) -> Reaped {
    Command::new(std::env::current_exe().unwrap())
        .env("LOKY_AGENT", url)
        .env("LOKY_AGENT_WORKERS", workers.to_string())
        .stdout(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap()
}

fn main() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = std::env::temp_dir().join(format!("loky-cluster-bench-{port}"));
    let _server = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("nats-server on the PATH");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let mut agents = vec![agent(&url, 2), agent(&url, 2)];
    let executor = Executor::new(Config::new().backend(Backend::nats(&url))).unwrap();
    // Warm up: every agent's workers started.
    let _: Vec<u64> = executor
        .map(noop, 0..100)
        .collect::<Result<_, _>>()
        .unwrap();

    let round_trips: Vec<f64> = (0..300)
        .map(|x| {
            let started = Instant::now();
            executor.submit(noop, x).unwrap().result().unwrap();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let p50 = report::median(round_trips);

    let rate = |chunksize: usize| {
        let n = 10_000u64;
        let started = Instant::now();
        let done = executor
            .map(noop, 0..n)
            .chunksize(chunksize)
            .filter(Result::is_ok)
            .count();
        assert_eq!(done as u64, n);
        n as f64 / started.elapsed().as_secs_f64()
    };
    let cs1 = rate(1);
    let auto = rate(0);

    // An agent dies while running a call: time to `HostLost`.
    let long: Vec<_> = (0..4)
        .map(|_| executor.submit(sleep_ms, 20_000).unwrap())
        .collect();
    while !long.iter().all(|f| f.running()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Instant::now();
    drop(agents.remove(0));
    let first = loky::wait(
        &long,
        Some(Duration::from_secs(30)),
        loky::ReturnWhen::FirstCompleted,
    );
    let host_lost_ms = killed.elapsed().as_secs_f64() * 1e3;
    let mut long = long;
    let lost = long
        .swap_remove(first.done[0])
        .result_timeout(Duration::from_secs(1));
    assert!(matches!(lost, Err(Error::HostLost { .. })), "{lost:?}");

    let rows = [
        (
            "nats_roundtrip_us_p50",
            p50,
            "no-op call through NATS to 2 local agents, median",
        ),
        (
            "nats_map_cs1_tasks_per_s",
            cs1,
            "map of 10 000 no-ops, chunksize 1",
        ),
        (
            "nats_map_auto_tasks_per_s",
            auto,
            "same, automatic chunksize",
        ),
        (
            "nats_host_lost_ms",
            host_lost_ms,
            "agent SIGKILLed mid-call -> HostLost",
        ),
    ];
    report::print(&rows);
    for future in &long {
        future.cancel();
    }
    drop(executor);
    drop(agents);
    let _ = std::fs::remove_dir_all(store);
}
