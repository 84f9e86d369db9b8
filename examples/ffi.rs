//! The main use case: calling a C library that crashes on some inputs.
//!
//! `cargo run --release --example ffi`
//!
//! `parse_record` (examples/ffi/parse.c, built by the root `build.rs`)
//! writes through a NULL pointer on a record with an unknown key and calls
//! `abort()` on a bad value. Called in this process, either bug would kill
//! the program. Called in a `#[loky::task]`, each crash kills one worker and
//! comes back as [`Error::WorkerDied`] with the signal and the worker's pid;
//! the other records are parsed, and the pool carries on.

use loky::{Config, Error, Executor};
use std::collections::BTreeSet;
use std::ffi::c_char;

#[link(name = "loky_ffi_parse", kind = "static")]
unsafe extern "C" {
    /// Parses `key=value` and returns the value. Crashes on bad input.
    fn parse_record(text: *const c_char, len: usize) -> i64;
}

/// Runs the C parser on one record, in a worker process.
#[loky::task]
fn parse(record: String) -> i64 {
    // SAFETY: `record` is alive for the call and `len` is its length in
    // bytes; `parse_record` reads only those bytes and keeps no pointer.
    // It may crash the process: that is what the worker is for.
    unsafe { parse_record(record.as_ptr().cast(), record.len()) }
}

/// What each record should give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Value(i64),
    Signal(&'static str),
}

#[loky::main]
fn main() -> Result<(), Error> {
    let records = [
        ("temperature=21", Expect::Value(21)),
        ("pressure=1013", Expect::Value(1013)),
        ("colour=7", Expect::Signal("SIGSEGV")), // unknown key: NULL write
        ("humidity=40", Expect::Value(40)),
        ("pressure=high", Expect::Signal("SIGABRT")), // not a number: abort()
        ("temperature=19", Expect::Value(19)),
        ("wind=3", Expect::Signal("SIGSEGV")),
        ("humidity", Expect::Signal("SIGABRT")), // no value: abort()
        ("humidity=38", Expect::Value(38)),
    ];
    let executor = Executor::new(Config::new().max_workers(2))?;

    // `map` keeps the input order. A crash fails only its own record: the
    // records a dead worker had not started run on another worker.
    let inputs = records.iter().map(|(record, _)| record.to_string());
    let mut dead_pids = BTreeSet::new();
    for ((record, expect), result) in records.iter().zip(executor.map(parse, inputs)) {
        match (result, expect) {
            (Ok(value), Expect::Value(want)) => {
                println!("{record:<16} -> {value}");
                assert_eq!(value, *want);
            }
            (
                Err(Error::WorkerDied {
                    task, pid, reason, ..
                }),
                Expect::Signal(want),
            ) => {
                println!("{record:<16} -> worker {pid} running {task} {reason}");
                assert_eq!(reason.signal_name(), Some(*want), "{record}");
                assert_ne!(pid, std::process::id(), "a worker crashed, not us");
                assert!(dead_pids.insert(pid), "each crash takes its own worker");
            }
            (other, _) => panic!("{record}: expected {expect:?}, got {other:?}"),
        }
    }

    // The same pool goes on: each dead worker was replaced.
    assert_eq!(
        executor
            .submit(parse, "pressure=990".to_owned())?
            .result()?,
        990
    );
    let stats = executor.stats();
    println!(
        "{} workers crashed, {} started in all; the pool still works",
        stats.exits.crashed, stats.started
    );
    assert_eq!(stats.exits.crashed, 4);
    Ok(())
}
