//! A cluster on one machine: starts a `nats-server -js` on a free loopback
//! port and two agents (this very program, started again with
//! `LOKY_AGENT`), then runs tasks on them through a cluster executor, shows
//! a crash on an agent, and stops everything.
//!
//! Needs `nats-server` on the PATH (Debian: `apt install nats-server`).
//!
//! `cargo run --release --features nats --example cluster`
//!
//! On real hosts, start agents with the launcher you have, each with the
//! same program and variables: a systemd unit (`Environment=LOKY_AGENT=...`),
//! a Slurm job step (`srun --export=ALL,LOKY_AGENT=... ./program`), a
//! Kubernetes Deployment (an `env:` entry), or plain `ssh host env
//! LOKY_AGENT=... ./program`.

use loky::{Backend, Config, Error, Executor};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Says where it ran.
#[loky::task]
fn whereabouts(x: u64) -> (u64, u32) {
    (x * x, std::process::id())
}

/// Crashes its worker.
#[loky::task]
fn crash() {
    std::process::abort();
}

/// Kills and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[loky::main]
fn main() -> Result<(), Error> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let store = std::env::temp_dir().join(format!("loky-cluster-example-{port}"));
    let server = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("nats-server on the PATH (apt install nats-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let agents: Vec<Reaped> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().expect("this program"))
                .env("LOKY_AGENT", &url)
                .env("LOKY_AGENT_WORKERS", "2")
                .spawn()
                .map(Reaped)
                .expect("an agent")
        })
        .collect();

    let executor = Executor::new(Config::new().backend(Backend::nats(&url)))?;
    let results: Vec<(u64, u32)> = executor
        .map(whereabouts, 0..200)
        .collect::<Result<_, _>>()?;
    let mut workers: Vec<u32> = results.iter().map(|&(_, pid)| pid).collect();
    workers.sort_unstable();
    workers.dedup();
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(x, &(y, _))| y == (x * x) as u64)
    );
    println!("200 squares from {} workers on 2 agents", workers.len());

    match executor.submit(crash, ())?.result() {
        Err(error @ Error::Remote { .. }) => println!("a crash on an agent: {error}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    println!(
        "and the cluster carries on: 7² = {}",
        executor.submit(whereabouts, 7)?.result()?.0
    );

    drop(executor);
    drop(agents);
    drop(server);
    let _ = std::fs::remove_dir_all(store);
    Ok(())
}
