//! How many CPUs this process may use: the OS's count, limited by the
//! affinity mask, the cgroup CPU quota and `LOKY_MAX_CPU_COUNT`, as Python
//! loky's `cpu_count`.

use std::path::{Path, PathBuf};

/// Environment variable capping [`cpu_count`].
pub const ENV_MAX_CPU_COUNT: &str = "LOKY_MAX_CPU_COUNT";

/// The number of CPUs this process can use: the minimum of the OS's count
/// of online CPUs, the CPUs in its affinity mask, its cgroup's CPU quota
/// (cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`,
/// rounded up; found through `/proc/self/cgroup`) and
/// [`LOKY_MAX_CPU_COUNT`](ENV_MAX_CPU_COUNT). At least 1.
pub fn cpu_count() -> usize {
    let limits = [
        os_count(),
        affinity_count(),
        cgroup_quota(Path::new("/sys/fs/cgroup"), &read("/proc/self/cgroup")),
        env_cap(),
    ];
    limits.into_iter().flatten().min().unwrap_or(1).max(1)
}

/// Like [`cpu_count`], counting physical cores rather than hardware
/// threads: a CPU-bound pool gains nothing from hyper-threads.
pub fn physical_cpu_count() -> usize {
    let physical = sysinfo::System::physical_core_count().unwrap_or(usize::MAX);
    cpu_count().min(physical).max(1)
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn os_count() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).ok().filter(|&n| n > 0)
}

fn affinity_count() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most `size_of(set)` bytes to it.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    // SAFETY: `set` was filled in above.
    let count = unsafe { libc::CPU_COUNT(&set) };
    usize::try_from(count).ok().filter(|&n| n > 0)
}

fn env_cap() -> Option<usize> {
    std::env::var(ENV_MAX_CPU_COUNT)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

/// The CPU quota of this process's cgroup, rounded up, if it has one.
///
/// `root` is where cgroups are mounted and `self_cgroup` the text of
/// `/proc/self/cgroup`. A cgroup v2 line (`0::/path`) points at
/// `root/path/cpu.max`; a v1 line whose controllers include `cpu`
/// (`4:cpu,cpuacct:/path`) at `root/<controllers>/path/cpu.cfs_*_us`. Every
/// ancestor up to the mount's root is read too (the tightest quota wins),
/// which also covers containers, where the path in `/proc/self/cgroup` is
/// the host's and the mount shows only the container's own cgroup.
pub(crate) fn cgroup_quota(root: &Path, self_cgroup: &str) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut consider = |quota: Option<usize>| {
        if let Some(q) = quota {
            best = Some(best.map_or(q, |b| b.min(q)));
        }
    };
    for line in self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            for dir in ancestors(&[root.to_owned(), root.join("unified")], path) {
                consider(v2_quota(&dir));
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            let mounts = [
                root.join(controllers),
                root.join("cpu"),
                root.join("cpu,cpuacct"),
            ];
            for dir in ancestors(&mounts, path) {
                consider(v1_quota(&dir));
            }
        }
    }
    best
}

/// `mount/path` and each of its parents up to `mount`, for each mount.
fn ancestors(mounts: &[PathBuf], path: &str) -> Vec<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    let mut dirs = Vec::new();
    for mount in mounts {
        let mut dir = Some(relative);
        while let Some(current) = dir {
            dirs.push(mount.join(current));
            dir = current.parent();
        }
    }
    dirs
}

/// cgroup v2: `cpu.max` holds `QUOTA PERIOD`, or `max PERIOD`.
fn v2_quota(dir: &Path) -> Option<usize> {
    let text = read(dir.join("cpu.max"));
    let mut fields = text.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next().unwrap_or("100000").parse().ok()?;
    rounded_up(quota, period)
}

/// cgroup v1: `cpu.cfs_quota_us` (-1 for none) over `cpu.cfs_period_us`.
fn v1_quota(dir: &Path) -> Option<usize> {
    let quota: f64 = read(dir.join("cpu.cfs_quota_us")).trim().parse().ok()?;
    let period: f64 = read(dir.join("cpu.cfs_period_us")).trim().parse().ok()?;
    rounded_up(quota, period)
}

fn rounded_up(quota: f64, period: f64) -> Option<usize> {
    if quota <= 0.0 || period <= 0.0 {
        return None;
    }
    Some(((quota / period).ceil() as usize).max(1))
}

#[cfg(test)]
mod tests {
    //! Fake cgroup trees in temporary directories.

    use super::*;

    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> FakeRoot {
            let dir =
                std::env::temp_dir().join(format!("loky-cgroup-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeRoot(dir)
        }

        fn write(&self, path: &str, text: &str) {
            let path = self.0.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn cgroup_v2_quota_is_rounded_up() {
        let root = FakeRoot::new("v2");
        root.write("user.slice/job/cpu.max", "150000 100000\n");
        assert_eq!(cgroup_quota(&root.0, "0::/user.slice/job\n"), Some(2));
        root.write("user.slice/job/cpu.max", "50000 100000\n");
        assert_eq!(cgroup_quota(&root.0, "0::/user.slice/job\n"), Some(1));
    }

    #[test]
    fn cgroup_v2_max_means_unlimited() {
        let root = FakeRoot::new("v2max");
        root.write("job/cpu.max", "max 100000\n");
        assert_eq!(cgroup_quota(&root.0, "0::/job\n"), None);
    }

    #[test]
    fn the_tightest_ancestor_wins() {
        let root = FakeRoot::new("nested");
        root.write("outer/cpu.max", "300000 100000\n");
        root.write("outer/inner/cpu.max", "max 100000\n");
        assert_eq!(cgroup_quota(&root.0, "0::/outer/inner\n"), Some(3));
    }

    #[test]
    fn cgroup_v1_quota_and_period() {
        let root = FakeRoot::new("v1");
        root.write("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n");
        root.write("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
        let cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(cgroup_quota(&root.0, cgroup), Some(3));
    }

    #[test]
    fn cgroup_v1_minus_one_means_unlimited() {
        let root = FakeRoot::new("v1none");
        root.write("cpu/cpu.cfs_quota_us", "-1\n");
        root.write("cpu/cpu.cfs_period_us", "100000\n");
        assert_eq!(cgroup_quota(&root.0, "3:cpu:/\n"), None);
    }

    #[test]
    fn inside_a_container_the_mount_root_holds_the_quota() {
        // /proc/self/cgroup names the host's path, which the container's
        // mount does not have: the mount's root is read instead.
        let root = FakeRoot::new("container");
        root.write("cpu.max", "200000 100000\n");
        assert_eq!(cgroup_quota(&root.0, "0::/kubepods/pod1/abc\n"), Some(2));
    }

    #[test]
    fn no_cgroup_no_limit() {
        let root = FakeRoot::new("empty");
        assert_eq!(cgroup_quota(&root.0, ""), None);
        assert_eq!(cgroup_quota(&root.0, "garbage\n"), None);
    }

    #[test]
    fn counts_are_positive_and_consistent() {
        let count = cpu_count();
        assert!(count >= 1);
        assert!(count <= os_count().unwrap());
        assert!(count <= affinity_count().unwrap());
        assert!(physical_cpu_count() >= 1 && physical_cpu_count() <= count);
    }
}
