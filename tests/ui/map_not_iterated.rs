//! A map that is built and never iterated does nothing: the compiler says so.
#![deny(unused_must_use)]

#[loky::task]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let executor = loky::Executor::new(loky::Config::new()).unwrap();
    executor.map(square, 0..10);
    executor.map_unordered(square, 0..10);
}
