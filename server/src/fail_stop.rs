//! Fail-stop (DESIGN §4.6): a node whose storage failed stops rather than serve from state it
//! can no longer trust. The process exits with [`FAIL_STOP_EXIT_CODE`] so that a supervisor
//! sees a failure, not a clean stop.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use dedup_cluster::raft_types::Raft;

/// `EX_IOERR` from sysexits.h.
pub const FAIL_STOP_EXIT_CODE: i32 = 74;

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Logs why and exits at once.
pub fn stop(reason: &str) -> ! {
    tracing::error!(reason, "fail-stop: storage failed; the node stops instead of serving");
    eprintln!("dedupd: fail-stop: {reason}");
    std::process::exit(FAIL_STOP_EXIT_CODE)
}

/// Marks an orderly shutdown, after which a stopped Raft is expected.
pub fn begin_shutdown() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
}

/// Watches Raft: if it stops on its own (a fatal storage error), the process stops too.
pub fn watch(raft: Raft) {
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
