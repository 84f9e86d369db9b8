//! Measures the echo round trip of byte payloads of growing sizes, to place
//! the shared-memory threshold: run it twice and compare.
//!
//! ```sh
//! LOKY_SHARED_MEMORY_THRESHOLD=18446744073709551615 cargo run --release --example threshold  # all inline
//! LOKY_SHARED_MEMORY_THRESHOLD=0 cargo run --release --example threshold                     # all shared
//! ```

use std::time::Instant;

/// Returns its argument.
#[loky::task]
fn echo(data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    data
}

#[loky::main]
fn main() -> Result<(), loky::Error> {
    let executor = loky::Executor::new(loky::Config::new().max_workers(1))?;
    for size in [
        1usize << 10,
        4 << 10,
        16 << 10,
        32 << 10,
        64 << 10,
        128 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
        16 << 20,
        64 << 20,
    ] {
        let data = serde_bytes::ByteBuf::from(vec![1u8; size]);
        let repetitions = if size >= 16 << 20 { 11 } else { 201 };
        let mut samples: Vec<f64> = (0..repetitions)
            .map(|_| {
                let started = Instant::now();
                let back = executor
                    .submit(echo, data.clone())
                    .unwrap()
                    .result()
                    .unwrap();
                assert_eq!(back.len(), size);
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        println!(
            "{:>8} KiB  median round trip {:>9.1} us",
            size >> 10,
            samples[repetitions / 2]
        );
    }
    Ok(())
}
