//! Task markers in the worker's output, for a parent that labels each line
//! of it with the worker and the task ([`ENV_LABEL_OUTPUT`]). The markers
//! go through the same descriptors as the task's own output, so every line,
//! whoever wrote it (Rust, C, the panic handler), is attributed exactly.

use crate::protocol::{ENV_LABEL_OUTPUT, TASK_MARKER};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static LABELLED: AtomicBool = AtomicBool::new(false);

/// Reads whether the parent labels this worker's output.
pub(crate) fn install() {
    if std::env::var_os(ENV_LABEL_OUTPUT).is_some_and(|v| v == "1") {
        LABELLED.store(true, Ordering::Relaxed);
    }
}

/// Marks on both streams that the worker now runs `task` (`None`: none).
pub(crate) fn running(task: Option<&str>) {
    if !LABELLED.load(Ordering::Relaxed) {
        return;
    }
    let mut marker = TASK_MARKER.to_vec();
    marker.extend_from_slice(task.unwrap_or("").as_bytes());
    marker.push(b'\n');
    // What the task printed without a newline is flushed first, so that it
    // lands before the marker; a closed stream is no reason to stop.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.flush();
    let _ = stdout.write_all(&marker);
    let _ = stdout.flush();
    let _ = std::io::stderr().lock().write_all(&marker);
}
