//! dedup-cluster: the replicated ledger.
//!
//! - [`ledger`]: the pure, deterministic ledger core (no I/O, no clock, no randomness).
//! - [`raft_types`]: what a Raft entry carries and what applying it answers.
//! - [`store`]: the sled-backed Raft log and state machine behind our own engine seam.
//! - [`network`]: the Raft peer transport over tonic.
//! - [`clock`]: the leader's ledger-time stamping (DESIGN §5).
//! - [`proposer`]: the leader-side coalescer that packs concurrent commands into one entry.
//! - [`node`]: starting a Raft node: config, bootstrap from the initial members.
//! - [`bug_zoo`]: known bugs, seeded one at a time in `bug-zoo` builds to prove the suites catch them.

pub mod bug_zoo;
pub mod clock;
pub mod codec;
pub mod ledger;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod raft_types;
pub mod store;
