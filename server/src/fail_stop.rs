//! Fail-stop (DESIGN §4.6): a node whose storage failed stops rather than serve from state it
//! can no longer trust. The process exits with [`FAIL_STOP_EXIT_CODE`] so that a supervisor
//! sees a failure, not a clean stop.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use dedup_cluster::raft_types::Raft;

/// `EX_IOERR` from sysexits.h.
pub const FAIL_STOP_EXIT_CODE: i32 = 74;

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
/// Set by the first [`stop`]: a second caller (Raft's watcher and the engine's at once) waits
/// for the first one's exit instead of racing it.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// How often [`watch`] looks for an error of the storage engine.
const ENGINE_ERROR_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// How a full disk (ENOSPC) or an exhausted quota (EDQUOT) reads in an error. The error reaches
/// [`stop`] only as text (openraft keeps the message of an `io::Error`, not its kind), so it is
/// recognised by text.
const DISK_FULL_TEXTS: [&str; 3] = ["No space left on device", "os error 28", "Disk quota exceeded"];

fn is_disk_full(reason: &str) -> bool {
    DISK_FULL_TEXTS.iter().any(|text| reason.contains(text))
}

/// Logs why and exits at once.
///
/// A full disk is the storage failure an operator meets most and can fix, so it is named as such
/// with what to do (found by `tests/tests/store_full.rs`: before, the only words were openraft's
/// "Raft stopped: when Write Logs: ... No space left on device (os error 28)").
pub fn stop(reason: &str) -> ! {
    if STOPPING.swap(true, Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    // openraft may stop on a consequence of the storage error rather than on the error itself
    // ("channel closed"): name the first error the engine met as well.
    let reason = match dedup_cluster::store::SledEngine::first_error() {
        Some(first) if !reason.contains(&first) => format!("{reason}; first storage error: {first}"),
        _ => reason.to_string(),
    };
    let reason = reason.as_str();
    if is_disk_full(reason) {
        tracing::error!(reason, "fail-stop: disk full; the node stops instead of serving");
        eprintln!(
            "dedupd: fail-stop: disk full: the node stopped instead of serving ({reason}). Free space on the \
             volume of --data-dir, then restart the node with the same --data-dir: it catches up from its peers."
        );
    } else {
        tracing::error!(reason, "fail-stop: storage failed; the node stops instead of serving");
        eprintln!("dedupd: fail-stop: {reason}");
    }
    std::process::exit(FAIL_STOP_EXIT_CODE)
}

/// Marks an orderly shutdown, after which a stopped Raft is expected.
pub fn begin_shutdown() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
}

/// Watches Raft: if it stops on its own (a fatal storage error), the process stops too.
///
/// It also watches the storage engine itself: the first error sled returns stops the process
/// even if Raft does not stop. On a full disk a follower's state-machine worker failed an apply
/// and ended, but openraft's core never noticed (it learns of a dead worker only when it next
/// hands it work): the node stayed up for good, neither serving nor stopping, while the others
/// went on (found by `tests/tests/store_full.rs`, about one run in twenty).
pub fn watch(raft: Raft) {
    tokio::spawn(async move {
        loop {
            if let Some(error) = dedup_cluster::store::SledEngine::first_error() {
                if !SHUTTING_DOWN.load(Ordering::SeqCst) {
                    stop(&format!("storage error: {error}"));
                }
                return;
            }
            tokio::time::sleep(ENGINE_ERROR_POLL).await;
        }
    });
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        loop {
            let fatal = metrics.borrow().running_state.clone().err();
            if let Some(fatal) = fatal {
                if !SHUTTING_DOWN.load(Ordering::SeqCst) {
                    stop(&format!("Raft stopped: {fatal}"));
                }
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_in_what_openraft_reports() {
        assert!(is_disk_full(
            "Raft stopped: when Write Logs: std::io::error::Error: No space left on device (os error 28)"
        ));
        assert!(is_disk_full("reading record ns/k: Disk quota exceeded (os error 122)"));
        assert!(!is_disk_full("Raft stopped: when Read Vote: Input/output error (os error 5)"));
    }
}
