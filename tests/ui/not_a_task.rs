fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let executor = loky::Executor::new(loky::Config::new()).unwrap();
    let _ = executor.submit(square, 3);
    let _ = executor.submit(|x: u64| x + 1, 3);
}
