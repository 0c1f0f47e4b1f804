//! Operator reads of the local ledger (`dedupctl`: key list, namespace stats, audit trail, state
//! hash per node). Local reads of one replica: each says which applied index it reflects.

use std::io;
use std::ops::Bound;

use sha2::Digest;
use sha2::Sha256;

use super::engine::Engine;
use super::engine::Space;
use super::state_machine::audit_storage_key;
use super::state_machine::counts_key;
use super::state_machine::for_each_pair_at_point;
use super::state_machine::namespace_records_prefix;
use super::state_machine::read_counts;
use super::state_machine::AppliedState;
use super::state_machine::LedgerReader;
use super::state_machine::NamespaceCounts;
use super::state_machine::SnapshotJournal;
use super::state_machine::AUDIT_PREFIX;
use super::state_machine::META_APPLIED;
use super::state_machine::META_LEDGER_TIME;
use super::state_machine::META_TOTAL_COUNTS;
use crate::codec;
use crate::ledger::limits::KEY_LIST_SCAN_FACTOR;
use crate::ledger::validate_audit_page;
use crate::ledger::validate_key_list;
use crate::ledger::validate_namespace;
use crate::ledger::AuditEntry;
use crate::ledger::LedgerTime;
use crate::ledger::LimitViolation;
use crate::ledger::Record;
use crate::ledger::RecordKey;
use crate::ledger::RecordState;
use crate::ledger::RecordStateFilter;
use crate::raft_types::LogId;

/// Records a listing or a stats scan decodes per engine read: bounds the memory of one read
/// (records hold outcomes of up to OUTCOME_BYTES_MAX), not the scan.
const RECORD_SCAN_CHUNK: usize = 256;

/// What [`LedgerReader::namespace_stats`] found.
#[derive(Debug, Clone)]
pub struct NamespaceStats {
    /// Exact as of the applied index the counts were read at (at least `applied`).
    pub counts: NamespaceCounts,
    /// The earliest `created_at` of the namespace's records holding a live claim (CLAIMED with
    /// `lease_deadline` after `applied.ledger_time`) among the records scanned; `None`: none.
    pub oldest_live_claim_created_at: Option<LedgerTime>,
    /// Whether the scan reached every record of the namespace within its budget; if not,
    /// `oldest_live_claim_created_at` covers only the first `scan_budget` records in key order.
    pub scanned_all: bool,
    pub purge_horizon: LedgerTime,
    /// The earliest retention deadline in the purge index over the WHOLE ledger, not only this
    /// namespace: the index is ordered by deadline first, so one namespace's earliest would need
    /// a scan of the index. Tells when the next purge is due.
    pub earliest_retention_deadline: Option<LedgerTime>,
    /// Read before anything else: the stats reflect at least this index.
    pub applied: AppliedState,
}

/// One page of [`LedgerReader::list_records`].
#[derive(Debug, Clone)]
pub struct RecordPage {
    /// In key byte order.
    pub records: Vec<(RecordKey, Record)>,
    /// Pass as `after_key` to go on; `None`: the listing is complete. A page may be short (even
    /// empty) and still have a next one, when a filtered scan reached its bound.
    pub next_after_key: Option<Vec<u8>>,
    /// Read before the scan: the page reflects at least this index.
    pub applied: AppliedState,
}

/// A digest of the whole ledger space at one applied index ([`LedgerReader::state_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDigest {
    /// The index (and ledger time) the digest is of, exactly.
    pub applied: AppliedState,
    pub sha256: [u8; 32],
    /// Key-value pairs hashed.
    pub pairs: u64,
}

fn invalid(violation: LimitViolation) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, violation)
}

/// The least key greater than every key that starts with `prefix`; `None`: there is none.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn decode_record(bytes: &[u8]) -> io::Result<Record> {
    codec::decode(bytes).map_err(io::Error::other)
}

impl LedgerReader {
    /// The namespace's records by state and their bytes, exact as of the applied index.
    pub fn namespace_counts(&self, namespace: &str) -> io::Result<NamespaceCounts> {
        validate_namespace(namespace).map_err(invalid)?;
        read_counts(self.engine.as_ref(), &counts_key(namespace))
    }

    /// Every namespace's counts summed, exact as of the applied index.
    pub fn total_counts(&self) -> io::Result<NamespaceCounts> {
        read_counts(self.engine.as_ref(), META_TOTAL_COUNTS)
    }

    /// Counts, purge state and the oldest live claim of `namespace`, scanning at most
    /// `scan_budget` of its records (in key order) for the oldest live claim.
    pub fn namespace_stats(&self, namespace: &str, scan_budget: usize) -> io::Result<NamespaceStats> {
        validate_namespace(namespace).map_err(invalid)?;
        let applied = self.applied();
        let counts = self.namespace_counts(namespace)?;
        let prefix = namespace_records_prefix(namespace);
        let to = prefix_end(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        let mut from = Bound::Included(prefix);
        let mut scanned = 0;
        let mut oldest_live_claim_created_at: Option<LedgerTime> = None;
        let scanned_all = loop {
            let want = RECORD_SCAN_CHUNK.min(scan_budget - scanned);
            if want == 0 {
                // Out of budget: complete only if nothing is left.
                break self.engine.scan(Space::Ledger, from, to, 1)?.is_empty();
            }
            let chunk = self.engine.scan(Space::Ledger, from, to.clone(), want)?;
            scanned += chunk.len();
            let Some((last, _)) = chunk.last() else { break true };
            from = Bound::Excluded(last.clone());
            let reached_end = chunk.len() < want;
            for (_, bytes) in chunk {
                let record = decode_record(&bytes)?;
                if let RecordState::Claimed { lease_deadline, .. } = record.state {
                    if lease_deadline > applied.ledger_time {
                        let oldest = oldest_live_claim_created_at.get_or_insert(record.created_at);
                        *oldest = (*oldest).min(record.created_at);
                    }
                }
            }
            if reached_end {
                break true;
            }
        };
        Ok(NamespaceStats {
            counts,
            oldest_live_claim_created_at,
            scanned_all,
            purge_horizon: self.purge_horizon(namespace)?,
            earliest_retention_deadline: self.earliest_retention_deadline()?,
            applied,
        })
    }

    /// Up to `limit` (1..=KEY_LIST_PAGE_MAX) records of `namespace` whose key starts with
    /// `key_prefix` and whose state is `state` (any, if `None`), after `after_key`, in key byte
    /// order. Examines at most `KEY_LIST_SCAN_FACTOR * limit` records: a page of a rare state
    /// may come back short with `next_after_key` set, to be continued from there.
    pub fn list_records(
        &self,
        namespace: &str,
        key_prefix: &[u8],
        state: Option<RecordStateFilter>,
        after_key: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<RecordPage> {
        validate_key_list(namespace, key_prefix, limit).map_err(invalid)?;
        let applied = self.applied();
        let namespace_prefix = namespace_records_prefix(namespace);
        let mut prefix = namespace_prefix.clone();
        prefix.extend_from_slice(key_prefix);
        let to = prefix_end(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        let mut from = match after_key {
            Some(after) => {
                let mut after_storage_key = namespace_prefix.clone();
                after_storage_key.extend_from_slice(after);
                if after_storage_key >= prefix {
                    Bound::Excluded(after_storage_key)
                } else {
                    Bound::Included(prefix)
                }
            }
            None => Bound::Included(prefix),
        };
        let scan_budget = limit.saturating_mul(KEY_LIST_SCAN_FACTOR);
        let mut scanned = 0;
        let mut records = Vec::new();
        let key_of = |storage_key: &[u8]| storage_key[namespace_prefix.len()..].to_vec();
        loop {
            // Unfiltered, every record scanned is returned: read no more than the page needs.
            let page_left = limit - records.len();
            let chunk_size = if state.is_none() { page_left } else { RECORD_SCAN_CHUNK };
            let want = chunk_size.min(scan_budget - scanned);
            let chunk = self.engine.scan(Space::Ledger, from, to.clone(), want)?;
            scanned += chunk.len();
            let reached_end = chunk.len() < want;
            let last = chunk.last().map(|(storage_key, _)| storage_key.clone());
            for (storage_key, bytes) in chunk {
                let record = decode_record(&bytes)?;
                if state.is_none_or(|state| state.matches(&record)) {
                    let key = RecordKey { namespace: namespace.to_string(), key: key_of(&storage_key) };
                    records.push((key, record));
                    if records.len() == limit {
                        let next_after_key = Some(key_of(&storage_key));
                        return Ok(RecordPage { records, next_after_key, applied });
                    }
                }
            }
            if reached_end {
                return Ok(RecordPage { records, next_after_key: None, applied });
            }
            let last = last.expect("a chunk that did not reach the end is not empty");
            if scanned >= scan_budget {
                return Ok(RecordPage { records, next_after_key: Some(key_of(&last)), applied });
            }
            from = Bound::Excluded(last);
        }
    }

    /// Up to `limit` (1..=AUDIT_PAGE_MAX) entries of the audit trail, oldest first, after the
    /// log position `after` (`(log_index, slot)`; from the oldest kept if `None`).
    pub fn audit(&self, after: Option<(u64, u16)>, limit: usize) -> io::Result<Vec<AuditEntry>> {
        validate_audit_page(limit).map_err(invalid)?;
        let from = match after {
            Some((log_index, slot)) => Bound::Excluded(audit_storage_key(log_index, slot)),
            None => Bound::Included(vec![AUDIT_PREFIX]),
        };
        let entries = self.engine.scan(Space::Ledger, from, Bound::Excluded(vec![AUDIT_PREFIX + 1]), limit)?;
        entries.into_iter().map(|(_, bytes)| codec::decode(&bytes).map_err(io::Error::other)).collect()
    }

    /// SHA-256 over every pair of the ledger space (records, indexes, counts, horizons, audit
    /// trail, and the applied log id, membership and ledger time), in key order, each as the
    /// key's length (u64 big-endian), the key, the value's length, the value, at ONE applied
    /// index. Replicas that applied the same index hold the same pairs, whether they applied
    /// the entries or installed a snapshot (DESIGN §4 rule 5), so their digests are equal.
    ///
    /// Pins a point between two applies as a snapshot does and streams the ledger as of that
    /// point, chunk by chunk, while applies go on: memory is one scan chunk plus the values the
    /// applies meanwhile overwrite. Blocking, and reads the whole ledger: call it off the async
    /// workers.
    pub fn state_digest(&self) -> io::Result<StateDigest> {
        let journal = self.journals.pin();
        digest_at_point(self.engine.as_ref(), &journal)
    }
}

/// The digest of the ledger space as of the journal's point (see [`LedgerReader::state_digest`]).
pub(super) fn digest_at_point(engine: &dyn Engine, journal: &SnapshotJournal) -> io::Result<StateDigest> {
    let mut hasher = Sha256::new();
    let mut pairs: u64 = 0;
    let mut applied: Option<LogId> = None;
    let mut ledger_time = LedgerTime::default();
    for_each_pair_at_point(engine, journal, |key, value| {
        // The pinned point's own applied index: the digest is of exactly that index.
        if key == META_APPLIED {
            applied = codec::decode::<Option<LogId>>(&value).map_err(io::Error::other)?;
        } else if key == META_LEDGER_TIME {
            ledger_time = codec::decode(&value).map_err(io::Error::other)?;
        }
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(&key);
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(&value);
        pairs += 1;
        Ok(())
    })?;
    Ok(StateDigest {
        applied: AppliedState { log_index: applied.map_or(0, |id| id.index), ledger_time },
        sha256: hasher.finalize().into(),
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_least_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff, 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
