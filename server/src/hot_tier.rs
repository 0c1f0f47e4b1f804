//! The hot tier: a moka cache of COMPLETED records in front of sled, bounded by a byte budget.
//!
//! A COMPLETED record never changes until it is purged, so any node may answer a duplicate
//! claim from it without a Raft round (DESIGN §6). It is filled when the state machine applies a
//! completion and when a read finds one in sled; it is never the only copy of anything, and it
//! is emptied when a snapshot replaces the ledger. Claimed and available records are not cached:
//! answers about them must come from the leader.
//!
//! Entries are kept compact (the storage key and the record's encoded bytes, two allocations)
//! and decoded on a hit: a cached `Record` struct with its strings cost about four times its
//! payload bytes in real memory, which made the byte budget a poor bound on RSS.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dedup_cluster::codec;
use dedup_cluster::ledger::Record;
use dedup_cluster::ledger::RecordKey;
use dedup_cluster::ledger::RecordState;
use dedup_cluster::store::record_storage_key;
use dedup_cluster::store::ApplyObserver;
use moka::sync::Cache;

/// Default byte budget of the hot tier (`--hot-tier-bytes`): sized for a small pod.
pub const HOT_TIER_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Bytes counted per entry on top of its key and encoded record (moka's own bookkeeping, the
/// allocator's rounding, our Arc headers), so the budget bounds real memory, not only payload
/// bytes. Conservative: a full 256 MiB tier of 32-byte keys and 64-byte outcomes added ~306
/// bytes of RSS per entry against ~551 weighed (docs/architecture.md).
pub const HOT_TIER_ENTRY_OVERHEAD_BYTES: u32 = 400;

#[derive(Debug, Default)]
pub struct HotTierStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

#[derive(Clone)]
pub struct HotTier {
    /// Storage key -> encoded COMPLETED record.
    cache: Cache<Box<[u8]>, Arc<[u8]>>,
    stats: Arc<HotTierStats>,
}

/// The weight of one cached record in bytes.
#[allow(clippy::borrowed_box)] // moka's weigher takes &K
fn weight(key: &Box<[u8]>, record: &Arc<[u8]>) -> u32 {
    u32::try_from(key.len() + record.len()).unwrap_or(u32::MAX).saturating_add(HOT_TIER_ENTRY_OVERHEAD_BYTES)
}

impl HotTier {
    pub fn new(budget_bytes: u64) -> HotTier {
        let cache = Cache::builder().max_capacity(budget_bytes).weigher(weight).build();
        HotTier { cache, stats: Arc::new(HotTierStats::default()) }
    }

    /// The COMPLETED record of `key`, if cached.
    pub fn completed(&self, key: &RecordKey) -> Option<Arc<Record>> {
        let storage_key = record_storage_key(key);
        // An entry that does not decode (it was encoded by this process, so never expected) is
        // treated as a miss: the caller reads sled.
        let found = self.cache.get(storage_key.as_slice()).and_then(|bytes| codec::decode::<Record>(&bytes).ok());
        let counter = if found.is_some() { &self.stats.hits } else { &self.stats.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(Arc::new)
    }

    /// Caches `record` if it is COMPLETED (anything else is not safe to answer from a cache).
    pub fn offer(&self, key: &RecordKey, record: &Record) {
        if matches!(record.state, RecordState::Completed { .. }) {
            if let Ok(bytes) = codec::encode(record) {
                self.cache.insert(record_storage_key(key).into_boxed_slice(), Arc::from(bytes));
            }
        }
    }

    /// Bytes the cached entries weigh (after pending maintenance has run).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn stats(&self) -> &HotTierStats {
        &self.stats
    }
}

impl HotTier {
    /// Keeps the cache coherent with one record an apply wrote (`None`: purged).
    pub fn observe(&self, key: &RecordKey, record: Option<&Record>) {
        match record {
            Some(record) if matches!(record.state, RecordState::Completed { .. }) => self.offer(key, record),
            // Purged: a duplicate of it is no longer answered from the cache.
            _ => self.cache.invalidate(record_storage_key(key).as_slice()),
        }
    }
}

impl ApplyObserver for HotTier {
    fn records_applied(&self, records: &mut dyn Iterator<Item = (&RecordKey, Option<&Record>)>) {
        for (key, record) in records {
            self.observe(key, record);
        }
    }

    fn ledger_replaced(&self) {
        self.cache.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use dedup_cluster::ledger::*;

    use super::*;

    fn record(state: RecordState, payload_bytes: usize) -> Record {
        let state = match state {
            RecordState::Completed { completed_at, retained_until, .. } => RecordState::Completed {
                outcome: Outcome { kind: OutcomeKind::Succeeded, payload: vec![b'x'; payload_bytes] },
                completed_at,
                retained_until,
            },
            other => other,
        };
        Record {
            token: FencingToken(1 << 16),
            attempt: 1,
            owner: "o".into(),
            fingerprint: None,
            created_at: LedgerTime(1),
            retention_ms: 1000,
            previous: None,
            state,
        }
    }

    fn completed(payload_bytes: usize) -> Record {
        let state = RecordState::Completed {
            outcome: Outcome { kind: OutcomeKind::Succeeded, payload: vec![] },
            completed_at: LedgerTime(2),
            retained_until: LedgerTime(3),
        };
        record(state, payload_bytes)
    }

    #[test]
    fn only_completed_records_are_cached() {
        let tier = HotTier::new(1 << 20);
        let claimed =
            record(RecordState::Claimed { lease_deadline: LedgerTime(5), request_id: None, checkpoint: vec![] }, 0);
        tier.offer(&RecordKey::new("ns", "claimed"), &claimed);
        tier.offer(&RecordKey::new("ns", "done"), &completed(10));
        assert!(tier.completed(&RecordKey::new("ns", "claimed")).is_none());
        assert!(tier.completed(&RecordKey::new("ns", "done")).is_some());
        assert_eq!(tier.stats().hits.load(Ordering::Relaxed), 1);
        assert_eq!(tier.stats().misses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_byte_budget_bounds_the_cache() {
        let budget = 64 * 1024;
        let tier = HotTier::new(budget);
        for i in 0..1_000 {
            tier.offer(&RecordKey::new("ns", format!("key-{i}")), &completed(1024));
        }
        assert!(tier.weighted_bytes() <= budget, "{} bytes cached, budget {budget}", tier.weighted_bytes());
        assert!(tier.entries() > 0);
    }

    #[test]
    fn a_replaced_ledger_empties_the_cache() {
        let tier = HotTier::new(1 << 20);
        tier.offer(&RecordKey::new("ns", "done"), &completed(10));
        tier.ledger_replaced();
        assert!(tier.completed(&RecordKey::new("ns", "done")).is_none());
    }
}
