//! Every limit of the ledger, named once. The edge (gRPC service) checks requests against these,
//! and the core checks them again when it applies a command, so that a log entry can never carry
//! a record the rest of the system is not sized for.

/// Namespace length in bytes (`[A-Za-z0-9._-]`, at least one byte).
pub const NAMESPACE_BYTES_MAX: usize = 64;
/// Key length in bytes (any bytes, at least one).
pub const KEY_BYTES_MAX: usize = 512;
/// Owner length in bytes (free text, at least one byte).
pub const OWNER_BYTES_MAX: usize = 128;
/// Fingerprint length in bytes.
pub const FINGERPRINT_BYTES_MAX: usize = 64;
/// `claim_request_id` length in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 64;
/// Outcome payload size in bytes. Kept well under sled's ~128 KiB blob threshold: sled writes
/// larger values to blob files that its flush does not sync (see docs/architecture.md).
pub const OUTCOME_BYTES_MAX: usize = 64 * 1024;
/// Checkpoint size in bytes (ExtendLease, Release).
pub const CHECKPOINT_BYTES_MAX: usize = 4 * 1024;
/// Shortest lease a claim or extension may ask for.
pub const LEASE_MS_MIN: u64 = 100;
/// Longest lease a claim or extension may ask for (1 hour).
pub const LEASE_MS_MAX: u64 = 60 * 60 * 1000;
/// Shortest retention a request may ask for (1 second).
pub const RETENTION_MS_MIN: u64 = 1000;
/// Longest retention a request may ask for (30 days).
pub const RETENTION_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// Retention of a record whose requests named none (24 hours).
pub const RETENTION_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;
/// Longest a CheckAndClaim may wait on an in-flight duplicate (30 s).
pub const WAIT_MS_MAX: u64 = 30_000;
/// Records purged at most while applying one entry: purging is spread over entries so that no
/// apply stalls on a burst of expiries (DESIGN §7).
pub const PURGE_PER_ENTRY_MAX: usize = 64;
/// Items of one CheckAndClaimBatch or CompleteBatch call. A batch is one Raft entry, so it is
/// also bounded by ENTRY_BYTES_MAX.
pub const BATCH_ITEMS_MAX: usize = ENTRY_COMMANDS_MAX;
/// Commands carried by one Raft entry (the leader's coalescer fills entries up to this).
pub const ENTRY_COMMANDS_MAX: usize = 256;
/// Encoded size of one Raft entry's commands. Below sled's unsynced-blob threshold (~128 KiB).
pub const ENTRY_BYTES_MAX: usize = 96 * 1024;
/// Encoded size of one client gRPC message, request or response.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Length in bytes of an operator command's reason (at least one byte: every override says why).
/// An operator command's `operator` is bounded by OWNER_BYTES_MAX.
pub const AUDIT_REASON_BYTES_MAX: usize = 256;
/// Entries the audit trail of operator commands keeps; applying one more drops the oldest (the
/// smallest log position), the same one on every replica. An entry holds the record it
/// replaced, with its outcome payload and checkpoints cut to AUDIT_RECORD_BYTES_KEPT, so the
/// whole trail stays within about 10,000 x 3.5 KiB = 35 MiB.
pub const AUDIT_ENTRIES_MAX: usize = 10_000;
/// Bytes of an outcome payload or checkpoint an audit entry keeps of the record it replaced.
pub const AUDIT_RECORD_BYTES_KEPT: usize = 1024;
/// Audit entries one read returns at most.
pub const AUDIT_PAGE_MAX: usize = 1000;
/// Records one key listing returns at most.
pub const KEY_LIST_PAGE_MAX: usize = 1000;
/// Records a key listing examines per record it may return: a listing filtered by state stops
/// after `KEY_LIST_SCAN_FACTOR * limit` records even if its page is not full, and tells the
/// caller where to go on, so that one call's work stays bounded however rare the state is.
pub const KEY_LIST_SCAN_FACTOR: usize = 64;

/// Upper bound of one command's encoded size: every field at its limit plus framing.
pub const COMMAND_BYTES_MAX: usize = NAMESPACE_BYTES_MAX
    + KEY_BYTES_MAX
    + OWNER_BYTES_MAX
    + FINGERPRINT_BYTES_MAX
    + REQUEST_ID_BYTES_MAX
    + OUTCOME_BYTES_MAX
    + CHECKPOINT_BYTES_MAX
    + 256;

// A command at its limits must fit into one entry, and an entry into one gRPC message.
const _: () = assert!(COMMAND_BYTES_MAX <= ENTRY_BYTES_MAX);
const _: () =
    assert!(NAMESPACE_BYTES_MAX + KEY_BYTES_MAX + AUDIT_REASON_BYTES_MAX + OWNER_BYTES_MAX + 256 <= COMMAND_BYTES_MAX);
const _: () = assert!(ENTRY_BYTES_MAX < 128 * 1024);
const _: () = assert!(ENTRY_BYTES_MAX < GRPC_MESSAGE_BYTES_MAX);
// Fencing tokens pack the command's slot in its entry into 16 bits.
const _: () = assert!(ENTRY_COMMANDS_MAX <= 1 << super::types::TOKEN_SLOT_BITS);
const _: () = assert!(LEASE_MS_MIN > 0 && LEASE_MS_MIN <= LEASE_MS_MAX);
const _: () = assert!(RETENTION_MS_MIN <= RETENTION_MS_DEFAULT && RETENTION_MS_DEFAULT <= RETENTION_MS_MAX);
