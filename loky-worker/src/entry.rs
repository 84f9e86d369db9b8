//! How a re-executed binary becomes a worker before the user's `main` runs.
//!
//! A worker is the user's own binary started again with [`ENV_SERVER`] set.
//! On Linux a constructor in `.init_array` notices that variable. Since
//! `inventory` registers tasks from constructors too, in link order, some
//! registrations may not have happened yet when ours runs. So the hook runs
//! every constructor that follows its own entry first, then the worker loop,
//! then exits: the user's `main` (or the test harness, or a bench's `main`)
//! never runs in a worker. This is why workers work under `cargo test`, in
//! examples, benches and doctests, with no special `main` and no dummy test.
//!
//! [`main_entry`] is the portable fallback that `#[loky::main]` calls first
//! thing in `main`, where no constructor took over.

use crate::protocol::remote::ENV_AGENT;
use crate::protocol::{ENV_PARENT, ENV_SECRET, ENV_SERVER, EXIT_HANDSHAKE_FAILED};
use crate::{main_loop, panic};

/// Becomes a worker if this process was started as one; returns otherwise.
///
/// `#[loky::main]` calls this first thing in `main`.
pub fn main_entry() {
    // SAFETY: `#[loky::main]` calls this first thing in `main`, before any
    // user code; the Rust runtime starts no thread before `main`. (A C
    // library's constructor could have started one; none of ours does.)
    if let Some(link) = unsafe { take_link() } {
        std::process::exit(become_worker(link));
    }
    // SAFETY: as above.
    if let Some(url) = unsafe { take_agent() } {
        std::process::exit(become_agent(url));
    }
}

/// How a program becomes an agent of a cluster: `loky` registers one when
/// built with its `nats` feature. Called with the server's URL; returns
/// the exit code.
pub struct AgentEntry(pub fn(String) -> i32);

inventory::collect!(AgentEntry);

/// Reads and removes [`ENV_AGENT`], so that the agent's workers and the
/// processes its tasks start never become agents too; `None` if this
/// process is not an agent.
///
/// # Safety
/// No other thread may read or write the environment meanwhile.
unsafe fn take_agent() -> Option<String> {
    let url = std::env::var(ENV_AGENT).ok()?;
    // SAFETY: the caller guarantees that no other thread touches the
    // environment.
    unsafe { std::env::remove_var(ENV_AGENT) };
    Some(url)
}

/// Runs the registered agent and returns its exit code.
fn become_agent(url: String) -> i32 {
    match inventory::iter::<AgentEntry>.into_iter().next() {
        Some(AgentEntry(run)) => run(url),
        None => {
            eprintln!(
                "loky: {ENV_AGENT} is set, but this program was built without loky's `nats` \
                 feature: it cannot be an agent"
            );
            2
        }
    }
}

/// What the parent passed in the environment.
struct Link {
    server: String,
    secret: Option<String>,
    parent: Option<String>,
}

/// Reads and removes the worker's variables, so that a process a task
/// starts (or a pool it builds) never mistakes them for its own; `None` if
/// this process is not a worker.
///
/// # Safety
/// No other thread may read or write the environment meanwhile.
unsafe fn take_link() -> Option<Link> {
    let server = std::env::var(ENV_SERVER).ok()?;
    let secret = std::env::var(ENV_SECRET).ok();
    let parent = std::env::var(ENV_PARENT).ok();
    // SAFETY: the caller guarantees that no other thread touches the
    // environment.
    unsafe {
        std::env::remove_var(ENV_SERVER);
        std::env::remove_var(ENV_SECRET);
        std::env::remove_var(ENV_PARENT);
    }
    Some(Link {
        server,
        secret,
        parent,
    })
}

/// Runs the worker loop and returns its exit code.
fn become_worker(link: Link) -> i32 {
    let Link {
        server,
        secret,
        parent,
    } = link;
    let Some(secret) = secret.and_then(|s| u64::from_str_radix(&s, 16).ok()) else {
        eprintln!("loky worker: {ENV_SECRET} is missing or malformed");
        return EXIT_HANDSHAKE_FAILED;
    };
    prepare_process(parent.and_then(|p| p.parse().ok()));
    panic::install_hook();
    main_loop::run(server, secret)
}

/// Arms the parent-death signal and restores the signal dispositions that
/// Rust's runtime sets up before `main`, which a worker never reaches.
fn prepare_process(parent: Option<libc::pid_t>) {
    #[cfg(target_os = "linux")]
    {
        // When the parent dies, the kernel sends SIGHUP; its handler kills
        // this worker's whole process group, so the processes a task
        // started die with it instead of living on as orphans.
        let handler: extern "C" fn(libc::c_int) = kill_own_group;
        // SAFETY: the handler only calls kill(2), which is
        // async-signal-safe; prctl with PR_SET_PDEATHSIG only sets a
        // process attribute.
        unsafe {
            libc::signal(libc::SIGHUP, handler as libc::sighandler_t);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP);
        }
        // The parent may have died before the signal was armed.
        // SAFETY: getppid has no preconditions.
        if parent.is_some_and(|parent| unsafe { libc::getppid() } != parent) {
            std::process::exit(0);
        }
    }
    let _ = parent;
    close_inherited_descriptors();
    // SAFETY: ignoring SIGPIPE is what Rust's runtime does before `main`:
    // writing to a closed pipe or socket then fails with EPIPE instead of
    // killing the worker.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Closes every descriptor from 3 up, as Python's `close_fds` does: a
/// worker needs only its standard streams at this point, and anything else
/// was inherited by accident. (ipc-channel clones shared memory with a
/// plain `dup`, which drops close-on-exec: without this, a worker started
/// while the parent held such a clone would keep that region alive for as
/// long as it lives.) Runs before any other constructor of the program.
fn close_inherited_descriptors() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: close_range only closes descriptors; nothing in this
        // process uses any from 3 up yet.
        let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        if closed == 0 {
            return;
        }
    }
    // An older kernel: close what /proc lists (the directory's own
    // descriptor included, which is closed by the iterator anyway).
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let descriptors: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in descriptors {
        // SAFETY: as above; a descriptor already closed gives EBADF.
        unsafe { libc::close(fd) };
    }
}

/// The parent-death signal's handler: SIGKILL to this worker's process
/// group, itself included (a worker leads its own group).
#[cfg(target_os = "linux")]
extern "C" fn kill_own_group(_signal: libc::c_int) {
    // SAFETY: kill is async-signal-safe and has no memory preconditions.
    unsafe { libc::kill(0, libc::SIGKILL) };
}

#[cfg(target_os = "linux")]
mod init_array {
    //! The constructor that turns a re-executed binary into a worker.

    use std::os::raw::{c_char, c_int};

    type InitFn = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char);

    unsafe extern "C" {
        // Defined by every ELF linker (GNU ld, gold, lld, mold) around the
        // executable's `.init_array`.
        static __init_array_start: [InitFn; 0];
        static __init_array_end: [InitFn; 0];
    }

    #[used]
    #[unsafe(link_section = ".init_array")]
    static WORKER_HOOK: InitFn = hook;

    /// glibc calls `.init_array` entries with `argc`, `argv` and `envp`.
    unsafe extern "C" fn hook(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) {
        // SAFETY: before `main` and before every constructor after ours: the
        // Rust runtime has started no thread, and neither have we. (A C
        // library's constructor linked before ours could have; none of
        // loky's dependencies does.) So the variables are taken before any
        // later constructor can start a thread.
        if let Some(link) = unsafe { super::take_link() } {
            // SAFETY: we forward glibc's own arguments, in glibc's order, to
            // the constructors glibc would have called next; since the
            // worker exits below, glibc never calls them a second time.
            unsafe { run_later_constructors(argc, argv, envp) };
            std::process::exit(super::become_worker(link));
        }
        // SAFETY: as for the worker's variables above.
        if let Some(url) = unsafe { super::take_agent() } {
            // SAFETY: as above; the agent exits below too.
            unsafe { run_later_constructors(argc, argv, envp) };
            std::process::exit(super::become_agent(url));
        }
    }

    /// Runs the `.init_array` entries that follow this hook's own entry.
    ///
    /// # Safety
    /// Must be called from [`hook`], with the arguments glibc passed it.
    unsafe fn run_later_constructors(
        argc: c_int,
        argv: *const *const c_char,
        envp: *const *const c_char,
    ) {
        let start = (&raw const __init_array_start).cast::<InitFn>();
        let end = (&raw const __init_array_end).cast::<InitFn>();
        let len = (end as usize - start as usize) / size_of::<InitFn>();
        // SAFETY: the linker defines these two symbols as the bounds of the
        // `.init_array` section, an array of function pointers.
        let all = unsafe { std::slice::from_raw_parts(start, len) };
        let me = hook as *const () as usize;
        let Some(position) = all.iter().position(|f| *f as *const () as usize == me) else {
            return;
        };
        for constructor in &all[position + 1..] {
            let address = *constructor as *const () as usize;
            // Some toolchains pad the array with 0 or -1 sentinels.
            if address != 0 && address != usize::MAX {
                // SAFETY: an `.init_array` entry, called as glibc would.
                unsafe { constructor(argc, argv, envp) };
            }
        }
    }
}
