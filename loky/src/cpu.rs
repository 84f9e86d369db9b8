//! How many CPUs this process may use.

/// The number of CPUs this process can use: the OS's count limited by the
/// affinity mask and the cgroup quota (as `std::thread::available_parallelism`
/// reads them), and by the `LOKY_MAX_CPU_COUNT` environment variable. At
/// least 1.
pub fn cpu_count() -> usize {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = std::env::var("LOKY_MAX_CPU_COUNT")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(usize::MAX);
    usable.min(cap).max(1)
}
