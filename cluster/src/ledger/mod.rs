//! The pure ledger core: records, commands and their transitions (DESIGN §2-§5).
//!
//! Nothing here does I/O, reads a clock or draws a random number. The Raft state machine feeds
//! it committed entries with the leader's ledger time; tests feed it directly.

mod apply;
#[cfg(test)]
mod apply_tests;
pub mod limits;
mod types;
mod validate;

pub use apply::apply;
pub use apply::apply_entry;
pub use apply::purge_expired;
pub use apply::purge_time;
pub use apply::LedgerState;
pub use apply::LogPosition;
pub use apply::MemoryLedger;
pub use types::*;
pub use validate::validate_audit_page;
pub use validate::validate_command;
pub use validate::validate_key;
pub use validate::validate_key_list;
pub use validate::validate_namespace;
pub use validate::validate_wait_ms;
