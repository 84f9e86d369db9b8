//! Labelled worker output (`Config::label_output`): each line a worker
//! writes on stdout or stderr is copied to this process's, prefixed with
//! `[worker PID TASK] `. The worker marks where tasks begin and end in the
//! streams themselves (`loky_worker::protocol::TASK_MARKER` lines), so the
//! label is exact whoever wrote the line.

use loky_worker::protocol::TASK_MARKER;
use std::io::{BufRead, BufReader, Read, Write};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which of this process's streams a worker stream is copied to.
#[derive(Clone, Copy)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

/// Starts the thread that copies `from` to `to`, labelled.
pub(super) fn copy(
    pid: u32,
    from: impl Read + Send + 'static,
    to: Stream,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("loky-out-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut from = BufReader::new(from);
            let mut task = String::new();
            let mut line = Vec::new();
            loop {
                line.clear();
                match from.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if let Some(name) = line.strip_prefix(TASK_MARKER) {
                    task = String::from_utf8_lossy(name).trim_end().to_owned();
                    continue;
                }
                let mut labelled = label(pid, &task).into_bytes();
                labelled.extend_from_slice(&line);
                if !labelled.ends_with(b"\n") {
                    labelled.push(b'\n');
                }
                // This process's stream closed: nothing to tell.
                let _ = match to {
                    Stream::Stdout => std::io::stdout().lock().write_all(&labelled),
                    Stream::Stderr => std::io::stderr().lock().write_all(&labelled),
                };
            }
        })
}

/// The prefix of a line a worker wrote while running `task` (empty: none).
fn label(pid: u32, task: &str) -> String {
    if task.is_empty() {
        format!("[worker {pid}] ")
    } else {
        format!("[worker {pid} {task}] ")
    }
}

/// Waits up to `bound` for the copying threads to reach the end of their
/// streams (the worker is dead and its group killed, so they do unless a
/// process escaped the group), so that a worker's output is out before its
/// death is reported. Those still running are left to finish alone.
pub(super) fn drain(threads: Vec<JoinHandle<()>>, bound: Duration) {
    let deadline = Instant::now().checked_add(bound);
    for thread in threads {
        while !thread.is_finished() && deadline.is_none_or(|d| Instant::now() < d) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_name_the_worker_and_the_task_if_any() {
        assert_eq!(super::label(42, ""), "[worker 42] ");
        assert_eq!(super::label(42, "app::square"), "[worker 42 app::square] ");
    }
}
