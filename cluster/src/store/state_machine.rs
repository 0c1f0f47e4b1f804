//! The ledger state machine on the storage engine (openraft `RaftStateMachine`).
//!
//! Every `apply` call becomes one atomic engine write carrying the changed records, the applied
//! log id, the membership and the ledger time, so the stored state is always the state after
//! some whole number of applied entries. It is not flushed here: the next log flush (Db-wide)
//! persists it, and `build_snapshot` flushes before any log can be purged (research P-4).
//!
//! Snapshots are a point-in-time dump of the ledger space, written to a file (never to a sled
//! value: large values are not synced by sled). The point is fixed between two applies, but the
//! dump itself runs beside later applies, which keep a [`SnapshotJournal`] of the values they
//! overwrite, so applies never wait for a dump of the whole ledger. The state digest
//! ([`LedgerReader::state_digest`]) reads the ledger at a point the same way.
//!
//! The ledger space holds, by key prefix (everything in it travels in snapshots and is the same
//! on every replica that applied the same index):
//! - `r`: records ([`record_storage_key`]);
//! - `x`: the index by retention deadline (purge candidates);
//! - `h/<namespace>`: purge horizons;
//! - `c/<namespace>`: [`NamespaceCounts`] of the namespace's records; `m/record_counts`: their sum;
//! - `a`: the audit trail of operator commands, keyed by log index and slot (big-endian);
//!   `m/audit_count`: how many entries it holds;
//! - `m/applied`, `m/membership`, `m/ledger_time`: what was applied.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::io::Write;
use std::ops::Bound;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;

use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::StorageIOError;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use super::engine::Engine;
use super::engine::Space;
use super::engine::WriteBatch;
use super::log::blocking_io;
use super::snapshot_bytes::SnapshotBodyBytes;
use crate::codec;
use crate::ledger::apply_entry;
use crate::ledger::limits::AUDIT_ENTRIES_MAX;
use crate::ledger::limits::PURGE_PER_ENTRY_MAX;
use crate::ledger::AuditEntry;
use crate::ledger::Command;
use crate::ledger::LedgerState;
use crate::ledger::LedgerTime;
use crate::ledger::Record;
use crate::ledger::RecordKey;
use crate::ledger::RecordStateFilter;
use crate::raft_types::*;

/// Prefix of record keys in the ledger space.
pub(super) const RECORD_PREFIX: u8 = b'r';
pub(super) const META_APPLIED: &[u8] = b"m/applied";
const META_MEMBERSHIP: &[u8] = b"m/membership";
/// An install under way: the last log id of the snapshot being installed. Written before the
/// install's first ledger write and removed by its last; a node that finds it when it opens
/// finishes the install from the snapshot file (`StateMachineStore::new`).
pub(super) const META_INSTALLING: &[u8] = b"m/installing";
/// Snapshot pairs per write of an install: one sled batch holds every replaced page version
/// until it ends, so a single batch of a million-record ledger took ~13 GB of RSS.
pub(super) const INSTALL_CHUNK_PAIRS: usize = 4_096;
pub(super) const META_LEDGER_TIME: &[u8] = b"m/ledger_time";
/// The sum of every namespace's [`NamespaceCounts`].
pub(super) const META_TOTAL_COUNTS: &[u8] = b"m/record_counts";
/// How many entries the audit trail holds (at most AUDIT_ENTRIES_MAX).
const META_AUDIT_COUNT: &[u8] = b"m/audit_count";
/// Prefix of the audit trail: `a`, log index (8 bytes), slot (2 bytes), big-endian, so that the
/// trail lists in log order and its oldest entry comes first.
pub(super) const AUDIT_PREFIX: u8 = b'a';
pub(super) const SNAPSHOT_FILE: &str = "current.snap";
/// Pairs a snapshot dump (or a digest) reads per engine scan: bounds each read, not the dump.
const SNAPSHOT_SCAN_CHUNK: usize = 4096;

/// `RECORD_PREFIX, namespace length, namespace, key`: unambiguous because the namespace length
/// (at most 64) is explicit.
pub fn record_storage_key(key: &RecordKey) -> Vec<u8> {
    let mut out = namespace_records_prefix(&key.namespace);
    out.extend_from_slice(&key.key);
    out
}

/// The prefix every record key of `namespace` starts with, and no other.
pub(super) fn namespace_records_prefix(namespace: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + namespace.len());
    out.push(RECORD_PREFIX);
    out.push(u8::try_from(namespace.len()).expect("namespace length is validated to at most 64"));
    out.extend_from_slice(namespace.as_bytes());
    out
}

pub(super) fn audit_storage_key(log_index: u64, slot: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    out.push(AUDIT_PREFIX);
    out.extend_from_slice(&log_index.to_be_bytes());
    out.extend_from_slice(&slot.to_be_bytes());
    out
}

pub(super) fn counts_key(namespace: &str) -> Vec<u8> {
    let mut out = b"c/".to_vec();
    out.extend_from_slice(namespace.as_bytes());
    out
}

/// Records of one namespace (or of the whole ledger) by state, and the bytes their encoded
/// values take. Kept by every apply in the ledger space, so it is exact as of the applied index,
/// the same on every replica, and travels in snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceCounts {
    pub claimed: u64,
    pub completed: u64,
    pub available: u64,
    /// Encoded bytes of the records' values (not their keys, not the deadline index).
    pub record_bytes: u64,
}

impl NamespaceCounts {
    pub fn records(&self) -> u64 {
        self.claimed + self.completed + self.available
    }

    fn of_state(&mut self, state: RecordStateFilter) -> &mut u64 {
        match state {
            RecordStateFilter::Claimed => &mut self.claimed,
            RecordStateFilter::Completed => &mut self.completed,
            RecordStateFilter::Available => &mut self.available,
        }
    }

    /// Counts one stored record in.
    pub(super) fn add(&mut self, state: RecordStateFilter, bytes: u64) {
        *self.of_state(state) += 1;
        self.record_bytes += bytes;
    }

    /// Counts one stored record out. Counts never go below zero: a count that would is a bug
    /// (debug builds stop) or a database written before counts were kept (they stay at zero).
    pub(super) fn remove(&mut self, state: RecordStateFilter, bytes: u64) {
        let count = self.of_state(state);
        debug_assert!(*count >= 1, "{state:?} count below zero");
        *count = count.saturating_sub(1);
        debug_assert!(self.record_bytes >= bytes, "record bytes below zero");
        self.record_bytes = self.record_bytes.saturating_sub(bytes);
    }
}

pub(super) fn read_counts(engine: &dyn Engine, key: &[u8]) -> io::Result<NamespaceCounts> {
    match engine.get(Space::Ledger, key)? {
        Some(bytes) => codec::decode(&bytes).map_err(io::Error::other),
        None => Ok(NamespaceCounts::default()),
    }
}

/// Told about every record an apply wrote, after the write, on the state machine's task.
/// Keep it cheap: it runs between applies. Used to keep a cache (the hot tier) coherent.
pub trait ApplyObserver: Send + Sync + 'static {
    /// Records written by one apply call, in key order; `None`: the record was purged.
    fn records_applied(&self, records: &mut dyn Iterator<Item = (&RecordKey, Option<&Record>)>);
    /// The whole ledger was replaced (snapshot installed): forget everything.
    fn ledger_replaced(&self);
}

/// Prefix of the deadline index: `x`, retention deadline (big-endian ms), namespace, a 0 byte,
/// key. The 0 byte ends the namespace (it holds only `[A-Za-z0-9._-]`), so index keys of one
/// deadline sort as `RecordKey`s do: the scan meets purge candidates in the core's order.
const EXPIRY_PREFIX: u8 = b'x';

/// The index key of `key`'s record with retention deadline `deadline`; with no key, the
/// greatest index key of that deadline (an upper bound for scans).
fn expiry_index_key(deadline: LedgerTime, key: Option<&RecordKey>) -> Vec<u8> {
    let mut out = vec![EXPIRY_PREFIX];
    out.extend_from_slice(&deadline.as_ms().to_be_bytes());
    match key {
        Some(key) => {
            out.extend_from_slice(key.namespace.as_bytes());
            out.push(0);
            out.extend_from_slice(&key.key);
        }
        None => out.push(0xff),
    }
    out
}

fn parse_expiry_index_key(bytes: &[u8]) -> io::Result<(LedgerTime, RecordKey)> {
    let corrupt = || io::Error::other(format!("malformed deadline index key {bytes:?}"));
    let deadline = bytes.get(1..9).ok_or_else(corrupt)?;
    let deadline = LedgerTime(u64::from_be_bytes(deadline.try_into().expect("8 bytes")));
    let rest = &bytes[9..];
    let end = rest.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
    let namespace = String::from_utf8(rest[..end].to_vec()).map_err(|_| corrupt())?;
    Ok((deadline, RecordKey { namespace, key: rest[end + 1..].to_vec() }))
}

fn horizon_key(namespace: &str) -> Vec<u8> {
    let mut out = b"h/".to_vec();
    out.extend_from_slice(namespace.as_bytes());
    out
}

fn read_horizon(engine: &dyn Engine, namespace: &str) -> io::Result<LedgerTime> {
    match engine.get(Space::Ledger, &horizon_key(namespace))? {
        Some(bytes) => codec::decode(&bytes).map_err(io::Error::other),
        None => Ok(LedgerTime(0)),
    }
}

/// What the state machine has applied, published after every apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppliedState {
    pub log_index: u64,
    pub ledger_time: LedgerTime,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("storage I/O: {0}")]
    Io(#[from] io::Error),
    #[error("stored record is unreadable: {0}")]
    Corrupt(#[from] codec::CodecError),
}

/// A cheap, cloneable read handle on the local state machine for the services.
///
/// Its reads are blocking engine reads: call the scanning ones (listings, stats, the digest)
/// off the async workers.
#[derive(Clone)]
pub struct LedgerReader {
    pub(super) engine: Arc<dyn Engine>,
    pub(super) applied: watch::Receiver<AppliedState>,
    /// To pin a point of the ledger for the state digest, as a snapshot does.
    pub(super) journals: Arc<JournalRegistry>,
}

impl LedgerReader {
    /// The last applied index and ledger time. Read it *before* a record to know the least
    /// index the record reflects.
    pub fn applied(&self) -> AppliedState {
        *self.applied.borrow()
    }

    /// The earliest retention deadline in the purge index, if any record waits to be purged.
    /// A hint for proposing purge-only entries: the state machine decides what is purged.
    pub fn earliest_retention_deadline(&self) -> io::Result<Option<LedgerTime>> {
        let first = self.engine.scan(
            Space::Ledger,
            Bound::Included(vec![EXPIRY_PREFIX]),
            Bound::Excluded(vec![EXPIRY_PREFIX + 1]),
            1,
        )?;
        match first.first() {
            Some((index_key, _)) => Ok(Some(parse_expiry_index_key(index_key)?.0)),
            None => Ok(None),
        }
    }

    /// Follows the applied index (for waiting until a read index is applied).
    pub fn watch_applied(&self) -> watch::Receiver<AppliedState> {
        self.applied.clone()
    }

    pub fn record(&self, key: &RecordKey) -> Result<Option<Record>, ReadError> {
        match self.engine.get(Space::Ledger, &record_storage_key(key))? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Records of `namespace` whose retention ended at or before this time may have been
    /// purged (0: none purged yet).
    pub fn purge_horizon(&self, namespace: &str) -> io::Result<LedgerTime> {
        read_horizon(self.engine.as_ref(), namespace)
    }

    pub fn size_on_disk(&self) -> io::Result<u64> {
        self.engine.size_on_disk()
    }
}

pub struct StateMachineStore {
    engine: Arc<dyn Engine>,
    snapshot_file: SnapshotFile,
    applied: watch::Sender<AppliedState>,
    snapshots_built: u64,
    observer: Option<Arc<dyn ApplyObserver>>,
    /// Journals of the point-in-time reads still running (snapshot dumps, digests).
    journals: Arc<JournalRegistry>,
}

/// The values a running point-in-time read (a snapshot dump, a digest) must see instead of what
/// the engine holds now: for each ledger-space key written since its point, its value at that
/// point (`None`: absent). Only the first write after the point records a key, so the journal
/// holds at most one entry per key written during the read. Ordered, so that a streaming read
/// can take the journaled keys of each scanned range in turn.
#[derive(Default)]
pub struct SnapshotJournal {
    before: Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl SnapshotJournal {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
        self.before.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The journals of the point-in-time reads still running, shared by the state machine (which
/// writes) and its readers (which pin points for digests).
///
/// Every ledger-space write happens under this lock, journaling included, and a point is pinned
/// under it: so a point always falls between two whole writes, and each write is journaled for
/// every read pinned before it (a finished or dropped read drops its journal, which is
/// forgotten at the next write).
#[derive(Default)]
pub struct JournalRegistry {
    journals: Mutex<Vec<Weak<SnapshotJournal>>>,
}

impl JournalRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<SnapshotJournal>>> {
        self.journals.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fixes a point of the ledger space: the returned journal collects, from now until it is
    /// dropped, the values later writes replace.
    pub(super) fn pin(&self) -> Arc<SnapshotJournal> {
        let journal = Arc::new(SnapshotJournal::default());
        self.lock().push(Arc::downgrade(&journal));
        journal
    }

    /// The one way the ledger space is written: first gives every running point-in-time read
    /// the values this write replaces (once per key), then writes.
    pub(super) fn write_ledger(&self, engine: &dyn Engine, write: WriteBatch) -> io::Result<()> {
        let mut journals = self.lock();
        journals.retain(|journal| journal.strong_count() > 0);
        for journal in journals.iter().filter_map(Weak::upgrade) {
            let mut before = journal.lock();
            for (key, _) in &write {
                if !before.contains_key(key) {
                    before.insert(key.clone(), engine.get(Space::Ledger, key)?);
                }
            }
        }
        engine.write(Space::Ledger, write)
    }

    #[cfg(test)]
    fn running(&self) -> usize {
        let mut journals = self.lock();
        journals.retain(|journal| journal.strong_count() > 0);
        journals.len()
    }
}

impl StateMachineStore {
    pub fn new(
        engine: Arc<dyn Engine>,
        snapshot_dir: PathBuf,
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> io::Result<StateMachineStore> {
        std::fs::create_dir_all(&snapshot_dir)?;
        // Temporary files of writes a crash interrupted were never the snapshot: remove them.
        for entry in std::fs::read_dir(&snapshot_dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with("current.tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        let (applied, _) = watch::channel(AppliedState::default());
        let snapshot_file = SnapshotFile::new(snapshot_dir.join(SNAPSHOT_FILE));
        let store = StateMachineStore {
            engine,
            snapshot_file,
            applied,
            snapshots_built: 0,
            observer,
            journals: Arc::default(),
        };
        store.finish_interrupted_install()?;
        let initial = store.read_applied_state()?;
        store.applied.send_replace(initial);
        Ok(store)
    }

    pub fn reader(&self) -> LedgerReader {
        LedgerReader { engine: self.engine.clone(), applied: self.applied.subscribe(), journals: self.journals.clone() }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.engine.get(Space::Ledger, key)? {
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(io::Error::other),
            None => Ok(None),
        }
    }

    /// Makes the ledger space the snapshot's, `INSTALL_CHUNK_PAIRS` pairs per write, then sets
    /// the applied log id and membership and removes the install marker in one last write.
    /// Pairs come in key order, so each write also removes the keys the ledger holds between the
    /// previous chunk's last key and this chunk's that the snapshot does not. Blocking.
    fn replace_ledger(&self, meta: &SnapshotMeta, body: &SnapshotBodyBytes) -> io::Result<()> {
        let engine = self.engine.as_ref();
        let mut decoder = BodyDecoder::new(body.reader())?;
        let mut after: Bound<Vec<u8>> = Bound::Unbounded;
        loop {
            let mut chunk = Vec::with_capacity(INSTALL_CHUNK_PAIRS);
            while chunk.len() < INSTALL_CHUNK_PAIRS {
                match decoder.next_pair()? {
                    Some(pair) => chunk.push(pair),
                    None => break,
                }
            }
            let last_chunk = chunk.len() < INSTALL_CHUNK_PAIRS;
            let upto = match (last_chunk, chunk.last()) {
                (false, Some((key, _))) => Bound::Included(key.clone()),
                _ => Bound::Unbounded,
            };
            let kept: BTreeSet<&[u8]> = chunk.iter().map(|(key, _)| key.as_slice()).collect();
            let mut write: WriteBatch = Vec::with_capacity(chunk.len());
            let mut from = after.clone();
            loop {
                let present = engine.scan(Space::Ledger, from, upto.clone(), INSTALL_CHUNK_PAIRS)?;
                let Some((last_present, _)) = present.last() else { break };
                from = Bound::Excluded(last_present.clone());
                let full = present.len() == INSTALL_CHUNK_PAIRS;
                write.extend(
                    present
                        .into_iter()
                        .filter(|(key, _)| key != META_INSTALLING && !kept.contains(key.as_slice()))
                        .map(|(key, _)| (key, None)),
                );
                if !full {
                    break;
                }
            }
            let next_after = chunk.last().map(|(key, _)| Bound::Excluded(key.clone()));
            write.extend(chunk.into_iter().filter(|(key, _)| key != META_INSTALLING).map(|(k, v)| (k, Some(v))));
            self.journals.write_ledger(engine, write)?;
            engine.flush()?;
            if last_chunk {
                break;
            }
            after = next_after.unwrap_or(Bound::Unbounded);
        }
        self.journals.write_ledger(
            engine,
            vec![
                meta_pair(META_APPLIED, &meta.last_log_id)?,
                meta_pair(META_MEMBERSHIP, &meta.last_membership)?,
                (META_INSTALLING.to_vec(), None),
            ],
        )?;
        engine.flush()
    }

    /// An install a crash interrupted (its marker is still there): finishes it from the snapshot
    /// file if the file was written, else removes the marker (the ledger was not touched yet).
    fn finish_interrupted_install(&self) -> io::Result<()> {
        let Some(target) = self.read_meta::<Option<LogId>>(META_INSTALLING)? else {
            return Ok(());
        };
        let dir = self.snapshot_path().parent().unwrap_or(Path::new("."));
        match super::open_snapshot_file(dir)? {
            Some(reader) if reader.meta.last_log_id >= target => {
                let meta = reader.meta.clone();
                tracing::warn!(snapshot = ?meta.last_log_id, "finishing a snapshot install a crash interrupted");
                self.replace_ledger(&meta, &reader.into_body())
            }
            _ => {
                tracing::warn!(snapshot = ?target, "a snapshot install was interrupted before it wrote anything; dropped");
                self.journals.write_ledger(self.engine.as_ref(), vec![(META_INSTALLING.to_vec(), None)])?;
                self.engine.flush()
            }
        }
    }

    fn read_applied_state(&self) -> io::Result<AppliedState> {
        let applied: Option<LogId> = self.read_meta::<Option<LogId>>(META_APPLIED)?.flatten();
        let ledger_time: LedgerTime = self.read_meta(META_LEDGER_TIME)?.unwrap_or_default();
        Ok(AppliedState { log_index: applied.map_or(0, |id| id.index), ledger_time })
    }

    fn snapshot_path(&self) -> &Path {
        &self.snapshot_file.path
    }
}

/// The snapshot file, and the last log id of what it holds. openraft 0.9 builds snapshots in a
/// task of their own, so a build may finish while a newer snapshot from the leader is being
/// installed: every write of the file goes through [`SnapshotFile::replace_if_newer`], one at a
/// time, and a build that finishes late never replaces a newer file. (Before, both wrote the
/// same temporary file: one rename failed and stopped the node, or a file held one snapshot's
/// meta with the other's body; found by the simulation, `tests/sim`.)
#[derive(Clone)]
struct SnapshotFile {
    path: PathBuf,
    /// `None` until this process writes the file: what an earlier process left is never newer
    /// than what this one applies (the file is written only after the state it holds is
    /// durable), so any write of this process may replace it.
    current: Arc<std::sync::Mutex<Option<LogId>>>,
}

impl SnapshotFile {
    fn new(path: PathBuf) -> SnapshotFile {
        SnapshotFile { path, current: Arc::default() }
    }

    /// Writes the snapshot `meta` describes, unless the file already holds a newer one; returns
    /// its body as a window of the file written (`None`: not written). Blocking. `write_body`
    /// writes the body, `body_len` bytes, in whatever parts it is held: the file is
    /// `codec::encode(&(meta, body))` without joining them first.
    fn replace_with_snapshot(
        &self,
        meta: &SnapshotMeta,
        body_len: u64,
        write_body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Option<SnapshotBodyBytes>> {
        let body_len_usize = usize::try_from(body_len).map_err(io::Error::other)?;
        let mut head = codec::encode(meta).map_err(io::Error::other)?;
        head = postcard::to_extend(&body_len_usize, head).map_err(io::Error::other)?;
        let body_offset = head.len() as u64;
        let written = self.replace_if_newer(meta.last_log_id, |file| {
            file.write_all(&head)?;
            write_body(file)
        })?;
        Ok(written.map(|file| SnapshotBodyBytes::file_window(file, body_offset, body_len)))
    }

    /// Writes the file with `write` (the snapshot up to `last_log_id`) unless it already holds
    /// a newer one. Returns the file written, open (it stays this snapshot when a newer one
    /// replaces the path), or `None` if it did not write. Blocking.
    fn replace_if_newer(
        &self,
        last_log_id: Option<LogId>,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Option<std::fs::File>> {
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.is_some() && *current > last_log_id {
            return Ok(None);
        }
        let file = write_file_durably(&self.path, write)?;
        *current = last_log_id;
        Ok(Some(file))
    }
}

/// What the engine holds for one record, as far as the derived state (deadline index, counts)
/// is concerned.
#[derive(Debug, Clone, Copy)]
struct StoredShape {
    /// The record's key in the deadline index.
    deadline: Option<LedgerTime>,
    state: RecordStateFilter,
    /// Encoded value bytes.
    bytes: u64,
}

/// The ledger as one apply call sees it. Everything the pure core may ask about is loaded
/// before it runs (so storage errors surface here, not inside it): the records an entry's
/// commands name, the records whose retention ended by the entry's time (from the deadline
/// index), and their namespaces' purge horizons. Writes stay in memory until the call's one
/// atomic engine write, and so does what the records' changes imply: the deadline index, the
/// record counts and the audit trail's bound, worked out in [`ApplyBatch::writes`].
struct ApplyBatch<'a> {
    engine: &'a dyn Engine,
    /// Current records by key (`None`: no record), as of the entries applied so far.
    records: BTreeMap<RecordKey, Option<Record>>,
    /// What the engine holds for each loaded key (`None`: no record).
    stored: BTreeMap<RecordKey, Option<StoredShape>>,
    /// Keys written (or removed) by this call.
    written: BTreeSet<RecordKey>,
    /// Index entries read from the engine: candidates for purging.
    expiry_candidates: BTreeSet<(LedgerTime, RecordKey)>,
    horizons: BTreeMap<String, LedgerTime>,
    written_horizons: BTreeSet<String>,
    /// Audit entries appended by this call, in log order. The trail is cut back to
    /// AUDIT_ENTRIES_MAX when the call is written: nothing reads it during an apply.
    audit: Vec<AuditEntry>,
    time: LedgerTime,
}

impl<'a> ApplyBatch<'a> {
    fn new(engine: &'a dyn Engine, time: LedgerTime) -> ApplyBatch<'a> {
        ApplyBatch {
            engine,
            records: BTreeMap::new(),
            stored: BTreeMap::new(),
            written: BTreeSet::new(),
            expiry_candidates: BTreeSet::new(),
            horizons: BTreeMap::new(),
            written_horizons: BTreeSet::new(),
            audit: Vec::new(),
            time,
        }
    }

    fn load_record(&mut self, key: &RecordKey) -> io::Result<()> {
        if self.records.contains_key(key) {
            return Ok(());
        }
        let (stored, shape) = match self.engine.get(Space::Ledger, &record_storage_key(key))? {
            Some(bytes) => {
                let record = codec::decode::<Record>(&bytes).map_err(io::Error::other)?;
                let shape = StoredShape {
                    deadline: record.retained_until(),
                    state: record.state_kind(),
                    bytes: bytes.len() as u64,
                };
                (Some(record), Some(shape))
            }
            None => (None, None),
        };
        self.stored.insert(key.clone(), shape);
        self.records.insert(key.clone(), stored);
        Ok(())
    }

    fn load_horizon(&mut self, namespace: &str) -> io::Result<()> {
        if !self.horizons.contains_key(namespace) {
            let horizon = read_horizon(self.engine, namespace)?;
            self.horizons.insert(namespace.to_string(), horizon);
        }
        Ok(())
    }

    /// Loads what applying one entry at ledger time `now` may touch.
    fn load(&mut self, commands: &[Command], now: LedgerTime) -> io::Result<()> {
        for command in commands {
            self.load_record(command.key())?;
        }
        // Index entries superseded in this call may hide up to `written.len()` live ones.
        let limit = PURGE_PER_ENTRY_MAX + self.written.len();
        let until = Bound::Included(expiry_index_key(now, None));
        for (index_key, _) in self.engine.scan(Space::Ledger, Bound::Included(vec![EXPIRY_PREFIX]), until, limit)? {
            let (deadline, key) = parse_expiry_index_key(&index_key)?;
            self.load_record(&key)?;
            self.load_horizon(&key.namespace)?;
            self.expiry_candidates.insert((deadline, key));
        }
        // Records written earlier in this call may expire in this entry.
        let written_expiring: Vec<String> = self
            .written
            .iter()
            .filter(|key| self.records[*key].as_ref().and_then(Record::retained_until).is_some_and(|d| d <= now))
            .map(|key| key.namespace.clone())
            .collect();
        for namespace in written_expiring {
            self.load_horizon(&namespace)?;
        }
        Ok(())
    }

    /// The call's one engine write: the records it changed, the deadline index and the record
    /// counts in step with them, its horizons and its audit entries (cut back to
    /// AUDIT_ENTRIES_MAX). Reads the engine for the counts and the trail, which only applies
    /// write: every replica reads the same values at the same index.
    fn writes(&self) -> io::Result<WriteBatch> {
        let mut writes = Vec::with_capacity(2 * self.written.len() + self.written_horizons.len() + 3);
        // Per namespace touched: its counts as stored, and as they become.
        let mut counts: BTreeMap<&str, (NamespaceCounts, NamespaceCounts)> = BTreeMap::new();
        let mut total = read_counts(self.engine, META_TOTAL_COUNTS)?;
        let total_before = total;
        for key in &self.written {
            let record = self.records[key].as_ref();
            let storage_key = record_storage_key(key);
            let encoded = match record {
                Some(record) => Some(codec::encode(record).map_err(io::Error::other)?),
                None => None,
            };
            let old = self.stored.get(key).copied().flatten();
            // Keep the deadline index in step with the record.
            let old_deadline = old.and_then(|shape| shape.deadline);
            let new_deadline = record.and_then(Record::retained_until);
            if old_deadline != new_deadline {
                if let Some(old) = old_deadline {
                    writes.push((expiry_index_key(old, Some(key)), None));
                }
                if let Some(new) = new_deadline {
                    writes.push((expiry_index_key(new, Some(key)), Some(Vec::new())));
                }
            }
            // And the counts.
            let (_, namespace) = match counts.entry(&key.namespace) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    let stored = read_counts(self.engine, &counts_key(&key.namespace))?;
                    entry.insert((stored, stored))
                }
            };
            if let Some(old) = old {
                namespace.remove(old.state, old.bytes);
                total.remove(old.state, old.bytes);
            }
            if let (Some(record), Some(encoded)) = (record, &encoded) {
                namespace.add(record.state_kind(), encoded.len() as u64);
                total.add(record.state_kind(), encoded.len() as u64);
            }
            writes.push((storage_key, encoded));
        }
        for (namespace, (before, counts)) in counts {
            if counts == before {
                continue;
            }
            // A namespace without records leaves no counts behind.
            let value = if counts == NamespaceCounts::default() {
                None
            } else {
                Some(codec::encode(&counts).map_err(io::Error::other)?)
            };
            writes.push((counts_key(namespace), value));
        }
        if total != total_before {
            writes.push(meta_pair(META_TOTAL_COUNTS, &total)?);
        }
        for namespace in &self.written_horizons {
            writes.push(meta_pair(&horizon_key(namespace), &self.horizons[namespace])?);
        }
        self.audit_writes(&mut writes)?;
        Ok(writes)
    }

    /// Appends this call's audit entries and drops the oldest beyond AUDIT_ENTRIES_MAX: first
    /// the engine's oldest (smallest log position, first in key order), then, if this call
    /// appended more than the limit, its own earliest.
    fn audit_writes(&self, writes: &mut WriteBatch) -> io::Result<()> {
        if self.audit.is_empty() {
            return Ok(());
        }
        let stored: u64 = match self.engine.get(Space::Ledger, META_AUDIT_COUNT)? {
            Some(bytes) => codec::decode(&bytes).map_err(io::Error::other)?,
            None => 0,
        };
        let appended = self.audit.len() as u64;
        let excess = (stored + appended).saturating_sub(AUDIT_ENTRIES_MAX as u64);
        let drop_stored = excess.min(stored);
        if drop_stored > 0 {
            let oldest = self.engine.scan(
                Space::Ledger,
                Bound::Included(vec![AUDIT_PREFIX]),
                Bound::Excluded(vec![AUDIT_PREFIX + 1]),
                drop_stored as usize,
            )?;
            if oldest.len() as u64 != drop_stored {
                return Err(io::Error::other(format!(
                    "the audit trail holds {} entries, its count says {stored}",
                    oldest.len()
                )));
            }
            writes.extend(oldest.into_iter().map(|(key, _)| (key, None)));
        }
        let drop_appended = (excess - drop_stored) as usize;
        for entry in &self.audit[drop_appended..] {
            let value = codec::encode(entry).map_err(io::Error::other)?;
            writes.push((audit_storage_key(entry.log_index, entry.slot), Some(value)));
        }
        writes.push(meta_pair(META_AUDIT_COUNT, &(stored + appended - excess))?);
        Ok(())
    }
}

impl LedgerState for ApplyBatch<'_> {
    fn record(&self, key: &RecordKey) -> Option<Record> {
        self.records.get(key).expect("apply loads every key a command names before applying it").clone()
    }

    fn put_record(&mut self, key: &RecordKey, record: Record) {
        self.records.insert(key.clone(), Some(record));
        self.written.insert(key.clone());
    }

    fn remove_record(&mut self, key: &RecordKey) {
        self.records.insert(key.clone(), None);
        self.written.insert(key.clone());
    }

    fn expired(&self, now: LedgerTime, limit: usize) -> Vec<RecordKey> {
        // Candidates from the engine's index that still hold, plus records written in this
        // call: the same set the index will hold after the call, so every replica agrees.
        let mut expired: BTreeSet<(LedgerTime, &RecordKey)> = BTreeSet::new();
        let current = |key: &RecordKey| self.records.get(key).and_then(|r| r.as_ref()).and_then(Record::retained_until);
        for (deadline, key) in &self.expiry_candidates {
            if current(key) == Some(*deadline) && *deadline <= now {
                expired.insert((*deadline, key));
            }
        }
        for key in &self.written {
            if let Some(deadline) = current(key).filter(|d| *d <= now) {
                expired.insert((deadline, key));
            }
        }
        expired.into_iter().take(limit).map(|(_, key)| key.clone()).collect()
    }

    fn purge_horizon(&self, namespace: &str) -> LedgerTime {
        self.horizons.get(namespace).copied().expect("apply loads the horizon of every purge candidate")
    }

    fn set_purge_horizon(&mut self, namespace: &str, horizon: LedgerTime) {
        self.horizons.insert(namespace.to_string(), horizon);
        self.written_horizons.insert(namespace.to_string());
    }

    fn ledger_time(&self) -> LedgerTime {
        self.time
    }

    fn set_ledger_time(&mut self, time: LedgerTime) {
        self.time = time;
    }

    fn append_audit(&mut self, entry: AuditEntry) {
        self.audit.push(entry);
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let read = || -> io::Result<(Option<LogId>, StoredMembership)> {
            let mut applied = self.read_meta::<Option<LogId>>(META_APPLIED)?.flatten();
            if crate::bug_zoo::active(crate::bug_zoo::Bug::ApplyTwiceOnReplay) {
                // Claims every entry still in the log unapplied, so openraft applies them again.
                let last_purged = match self.engine.get(Space::RaftMeta, b"last_purged")? {
                    Some(bytes) => Some(codec::decode::<LogId>(&bytes).map_err(io::Error::other)?),
                    None => None,
                };
                applied = applied.min(last_purged);
            }
            Ok((applied, self.read_meta(META_MEMBERSHIP)?.unwrap_or_default()))
        };
        read().map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryResults>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let start_time = self.applied.borrow().ledger_time;
        let mut batch = ApplyBatch::new(self.engine.as_ref(), start_time);
        let mut answers = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        for entry in entries {
            last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => answers.push(EntryResults::default()),
                EntryPayload::Normal(ledger_entry) => {
                    let entry_time = if crate::bug_zoo::active(crate::bug_zoo::Bug::LocalClockApply) {
                        LedgerTime(
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64),
                        )
                    } else {
                        ledger_entry.time
                    };
                    let now = entry_time.max(batch.time);
                    if let Err(error) = batch.load(&ledger_entry.commands, crate::ledger::purge_time(now)) {
                        tracing::error!(%error, "reading ledger records failed; the node stops (fail-stop)");
                        return Err(StorageIOError::apply(entry.log_id, &error).into());
                    }
                    let results = apply_entry(&mut batch, entry.log_id.index, entry_time, &ledger_entry.commands);
                    answers.push(EntryResults { results, ledger_time: batch.time });
                }
                EntryPayload::Membership(config) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), config));
                    answers.push(EntryResults::default());
                }
            }
        }
        let Some(last_applied) = last_applied else {
            return Ok(answers);
        };
        let ledger_time = batch.time;
        let write = (|| -> io::Result<()> {
            let mut write = batch.writes()?;
            write.push(meta_pair(META_APPLIED, &Some(last_applied))?);
            write.push(meta_pair(META_LEDGER_TIME, &ledger_time)?);
            if let Some(membership) = &membership {
                write.push(meta_pair(META_MEMBERSHIP, membership)?);
            }
            self.journals.write_ledger(self.engine.as_ref(), write)
        })();
        if let Err(error) = write {
            tracing::error!(%error, "writing applied state failed; the node stops (fail-stop)");
            return Err(StorageIOError::apply(last_applied, &error).into());
        }
        if let Some(observer) = &self.observer {
            let mut written = batch.written.iter().map(|key| (key, batch.records[key].as_ref()));
            observer.records_applied(&mut written);
        }
        self.applied.send_replace(AppliedState { log_index: last_applied.index, ledger_time });
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs between applies: this is the snapshot point. The dump runs later, beside applies
        // that journal what they overwrite from here on.
        self.snapshots_built += 1;
        let journal = self.journals.pin();
        let meta = (|| -> io::Result<_> {
            let applied = self.read_meta::<Option<LogId>>(META_APPLIED)?.flatten();
            let membership: StoredMembership = self.read_meta(META_MEMBERSHIP)?.unwrap_or_default();
            Ok((applied, membership))
        })();
        SnapshotBuilder {
            engine: self.engine.clone(),
            snapshot_file: self.snapshot_file.clone(),
            sequence: self.snapshots_built,
            dump: meta.map(|(applied, membership)| (journal, applied, membership)),
        }
    }

    /// A body from the leader goes to an unnamed file in the snapshot folder, not to memory: at
    /// 10M records it is about 1 GB.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBodyBytes>, StorageError> {
        let path = temporary_path(self.snapshot_path());
        let body = blocking_io(move || SnapshotBodyBytes::receiving_at(&path))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(body))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotBodyBytes>,
    ) -> Result<(), StorageError> {
        let signature = Some(meta.signature());
        let pairs = check_body(&snapshot).map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let install = || -> io::Result<AppliedState> {
            // From the marker on, a crash leaves a ledger part old, part new: the node finishes
            // the install from the snapshot file when it opens, so the file is written first.
            self.journals.write_ledger(self.engine.as_ref(), vec![meta_pair(META_INSTALLING, &meta.last_log_id)?])?;
            self.engine.flush()?;
            self.snapshot_file.replace_with_snapshot(meta, snapshot.len(), |file| {
                io::copy(&mut snapshot.reader(), file).map(|_| ())
            })?;
            self.replace_ledger(meta, &snapshot)?;
            self.read_applied_state()
        };
        let applied = install().map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        tracing::info!(
            index = applied.log_index,
            bytes = snapshot.len(),
            pairs,
            "installed a snapshot from the leader; the ledger was replaced"
        );
        if let Some(observer) = &self.observer {
            observer.ledger_replaced();
        }
        self.applied.send_replace(applied);
        Ok(())
    }

    /// The snapshot file's meta, and its body as a window of the file: openraft asks for this when
    /// it starts (it wants only the meta) and to send the snapshot (a chunk at a time).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let dir = self.snapshot_path().parent().unwrap_or(Path::new("."));
        let opened = super::open_snapshot_file(dir).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(opened.map(|reader| {
            let meta = reader.meta.clone();
            Snapshot { meta, snapshot: Box::new(reader.into_body()) }
        }))
    }
}

fn meta_pair<T: Serialize>(key: &[u8], value: &T) -> io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    Ok((key.to_vec(), Some(codec::encode(value).map_err(io::Error::other)?)))
}

/// zstd level of snapshot bodies: a completed record (32-byte key, 64-byte outcome) and its
/// purge-index entry took ~155 bytes plain, ~60 compressed at level 1.
const SNAPSHOT_ZSTD_LEVEL: i32 = 1;
/// The first bytes of a zstd frame; a body without them is plain (written before compression).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Encodes a snapshot body pair by pair, compressing as it goes into `W`: a build holds one scan
/// chunk and the compressed pairs, not the ledger's pairs and their plain encoding besides
/// (about 250 + 155 bytes a record). The body is the zstd compression of
/// `codec::encode(&SnapshotBody)`, as every reader (`decode_body`, older builds) expects, in two
/// frames that decoders read on across: the head (the version byte and the pair count, postcard's
/// length prefix of `pairs`), known only at the end, then the pairs, written to `W`.
pub(super) struct BodyEncoder<W: Write> {
    pairs: zstd::stream::write::Encoder<'static, W>,
    count: usize,
    scratch: Vec<u8>,
}

impl<W: Write> BodyEncoder<W> {
    pub(super) fn new(pairs: W) -> io::Result<BodyEncoder<W>> {
        Ok(BodyEncoder {
            pairs: zstd::stream::write::Encoder::new(pairs, SNAPSHOT_ZSTD_LEVEL)?,
            count: 0,
            scratch: Vec::new(),
        })
    }

    /// Adds one ledger pair; pairs must come in key order (as `for_each_pair_at_point` gives them).
    pub(super) fn push(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        self.scratch =
            postcard::to_extend(&(key, value), std::mem::take(&mut self.scratch)).map_err(io::Error::other)?;
        self.pairs.write_all(&self.scratch)?;
        self.count += 1;
        Ok(())
    }

    /// The head frame, which goes before what was written to `W`, and `W` itself.
    pub(super) fn finish(self) -> io::Result<(Vec<u8>, W)> {
        let pairs = self.pairs.finish()?;
        let head = postcard::to_extend(&self.count, vec![codec::FORMAT_VERSION]).map_err(io::Error::other)?;
        Ok((zstd::encode_all(head.as_slice(), SNAPSHOT_ZSTD_LEVEL)?, pairs))
    }
}

/// Reads a snapshot body (zstd-compressed or plain, as `decode_body` accepts) pair by pair,
/// holding one pair at a time.
pub(super) struct BodyDecoder<'a> {
    input: Box<dyn io::Read + 'a>,
    remaining: u64,
    previous: Option<Vec<u8>>,
}

impl<'a> BodyDecoder<'a> {
    pub(super) fn new(body: impl io::Read + 'a) -> io::Result<BodyDecoder<'a>> {
        let mut body = io::BufReader::new(body);
        let compressed = io::BufRead::fill_buf(&mut body)?.starts_with(&ZSTD_MAGIC);
        let mut input: Box<dyn io::Read + 'a> =
            if compressed { Box::new(zstd::stream::read::Decoder::with_buffer(body)?) } else { Box::new(body) };
        let mut version = [0u8];
        input.read_exact(&mut version)?;
        if version[0] != codec::FORMAT_VERSION {
            return Err(io::Error::other(format!("snapshot body format version {} is not supported", version[0])));
        }
        let remaining = read_varint(&mut input)?;
        Ok(BodyDecoder { input, remaining, previous: None })
    }

    /// The next pair; keys must ascend strictly (a body is written in key order).
    pub(super) fn next_pair(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let key = read_bytes(&mut self.input)?;
        let value = read_bytes(&mut self.input)?;
        if self.previous.as_ref().is_some_and(|previous| *previous >= key) {
            return Err(io::Error::other("snapshot body keys are not in ascending order"));
        }
        self.previous = Some(key.clone());
        self.remaining -= 1;
        Ok(Some((key, value)))
    }
}

/// A postcard varint (LEB128, at most 10 bytes for a u64).
fn read_varint(input: &mut dyn io::Read) -> io::Result<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let mut byte = [0u8];
        input.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(io::Error::other("a snapshot body length is longer than ten bytes"))
}

/// Postcard bytes: a varint length, then the bytes (at most one engine value).
fn read_bytes(input: &mut dyn io::Read) -> io::Result<Vec<u8>> {
    let len = read_varint(input)?;
    if len > SNAPSHOT_PAIR_PART_BYTES_MAX {
        return Err(io::Error::other(format!(
            "a snapshot body key or value of {len} bytes is over the limit of {SNAPSHOT_PAIR_PART_BYTES_MAX}"
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Bound on one key or value of a snapshot body, so a corrupt length cannot ask for gigabytes:
/// far above any ledger record (`limits`) or metadata value.
const SNAPSHOT_PAIR_PART_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Decodes a whole body without keeping it, before an install writes anything: the number of
/// pairs, or why it is not a snapshot body. Blocking.
fn check_body(body: &SnapshotBodyBytes) -> io::Result<u64> {
    let mut decoder = BodyDecoder::new(body.reader())?;
    let mut pairs = 0;
    while decoder.next_pair()?.is_some() {
        pairs += 1;
    }
    let mut rest = [0u8];
    if decoder.input.read(&mut rest)? != 0 {
        return Err(io::Error::other("the snapshot body has bytes after its last pair"));
    }
    Ok(pairs)
}

pub(super) fn decode_body(bytes: &[u8]) -> io::Result<SnapshotBody> {
    let plain;
    let bytes = if bytes.starts_with(&ZSTD_MAGIC) {
        plain = zstd::decode_all(bytes)?;
        plain.as_slice()
    } else {
        bytes
    };
    codec::decode(bytes).map_err(io::Error::other)
}

/// The snapshot payload: every pair of the ledger space at the snapshot point.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotBody {
    pub(super) pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What a builder dumps: the journal of its snapshot point and the point's applied log id and
/// membership.
type Dump = io::Result<(Arc<SnapshotJournal>, Option<LogId>, StoredMembership)>;

/// Gives `visit` every ledger-space pair as of the journal's point, in key order, holding at
/// most one scan chunk (and the journal) in memory. Scans the engine in chunks while applies go
/// on; for the key range each chunk covers, a key the journal holds is taken from the journal
/// (its value at the point, or absent), any other key was not written since the point, so the
/// engine's value is the point's. A key written after the scan passed its range had its point
/// value when it was scanned; a point key removed before the scan reached it is in the journal,
/// because writes journal before they write. `visit` runs with no lock held, so applies go on
/// (and may even be issued by `visit`).
pub(super) fn for_each_pair_at_point(
    engine: &dyn Engine,
    journal: &SnapshotJournal,
    mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let mut from: Bound<Vec<u8>> = Bound::Unbounded;
    loop {
        let chunk = engine.scan(Space::Ledger, from.clone(), Bound::Unbounded, SNAPSHOT_SCAN_CHUNK)?;
        // The range this pass covers: up to the chunk's last key, or all the rest at the end.
        let end = chunk.last().map(|(key, _)| key.clone());
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = {
            let before = journal.lock();
            let to = end.clone().map_or(Bound::Unbounded, Bound::Included);
            let journaled = before
                .range::<Vec<u8>, _>((from, to))
                .filter_map(|(key, value)| value.as_ref().map(|value| (key.clone(), value.clone())));
            let unwritten: Vec<_> = chunk.into_iter().filter(|(key, _)| !before.contains_key(key)).collect();
            journaled.chain(unwritten).collect()
        };
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in pairs {
            visit(key, value)?;
        }
        match end {
            Some(last) => from = Bound::Excluded(last),
            None => return Ok(()),
        }
    }
}

pub struct SnapshotBuilder {
    engine: Arc<dyn Engine>,
    snapshot_file: SnapshotFile,
    sequence: u64,
    dump: Dump,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let dump = std::mem::replace(&mut self.dump, Err(io::Error::other("snapshot already built")));
        let (journal, last_log_id, last_membership) = dump.map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.sequence),
            None => format!("0-0-{}", self.sequence),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let engine = self.engine.clone();
        let snapshot_file = self.snapshot_file.clone();
        let write_meta = meta.clone();
        let body = blocking_io(move || -> io::Result<SnapshotBodyBytes> {
            // The state machine must be durable up to the snapshot point before openraft may
            // purge the logs the snapshot replaces.
            engine.flush()?;
            let mut encoder = BodyEncoder::new(Vec::new())?;
            for_each_pair_at_point(engine.as_ref(), &journal, |key, value| encoder.push(&key, &value))?;
            drop(journal); // applies stop journaling for this build
            let (head, pairs) = encoder.finish()?;
            let body_len = (head.len() + pairs.len()) as u64;
            let written = snapshot_file.replace_with_snapshot(&write_meta, body_len, |file| {
                file.write_all(&head)?;
                file.write_all(&pairs)
            })?;
            // openraft keeps only the meta of what a build returns: hand back the file written
            // rather than a second, joined copy of the compressed body.
            Ok(written.unwrap_or_else(|| {
                tracing::info!(snapshot = ?write_meta.last_log_id, "a newer snapshot was installed meanwhile; kept it");
                let mut body = head;
                body.extend_from_slice(&pairs);
                SnapshotBodyBytes::in_memory(body)
            }))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(body) })
    }
}

/// A name beside `path` for a file on its way to becoming `path` (or, for a body being received,
/// for a moment). Opening the store removes what a crash left under such names. Each is a name
/// of its own: a process that has not quite ended (or a test harness's previous instance of
/// this node) may still be writing one.
fn temporary_path(path: &Path) -> PathBuf {
    static NAMES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_extension(format!("tmp.{}.{n}", std::process::id()))
}

/// Writes the file `write` produces to `path` so that after a crash the file is either the old
/// one or the new one.
/// Returns the file written, open for reading.
fn write_file_durably(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<std::fs::File> {
    let dir = path.parent().ok_or_else(|| io::Error::other("snapshot path has no directory"))?;
    let temporary = temporary_path(path);
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&temporary)?;
    let mut writer = std::io::BufWriter::new(file);
    write(&mut writer)?;
    let file = writer.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod snapshot_file_tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    #[test]
    fn a_late_build_never_replaces_a_newer_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(dir.path().join(SNAPSHOT_FILE));
        assert!(file.replace_if_newer(log_id(10), |w| w.write_all(b"built at 10")).unwrap().is_some());
        // An install of 282 lands while a build of 140 is still running...
        assert!(file.clone().replace_if_newer(log_id(282), |w| w.write_all(b"installed 282")).unwrap().is_some());
        // ...and the build finishing later keeps its hands off the file.
        assert!(file.replace_if_newer(log_id(140), |w| w.write_all(b"built at 140")).unwrap().is_none());
        assert_eq!(std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap(), b"installed 282");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_writers_each_leave_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(dir.path().join(SNAPSHOT_FILE));
        let writers: Vec<_> = (1..=8u64)
            .map(|index| {
                let file = file.clone();
                std::thread::spawn(move || {
                    file.replace_if_newer(log_id(index), |w| w.write_all(&vec![index as u8; 64 * 1024]))
                        .unwrap()
                        .is_some()
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let bytes = std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap();
        assert_eq!(bytes.len(), 64 * 1024);
        assert!(bytes.iter().all(|b| *b == 8), "the newest snapshot, whole");
    }

    #[test]
    fn interrupted_temporary_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot_dir = dir.path().join("snapshot");
        std::fs::create_dir_all(&snapshot_dir).unwrap();
        std::fs::write(snapshot_dir.join("current.tmp.123.0"), b"torn").unwrap();
        let engine: Arc<dyn Engine> = Arc::new(super::super::SledEngine::open(&dir.path().join("sled")).unwrap());
        let _store = StateMachineStore::new(engine, snapshot_dir.clone(), None).unwrap();
        assert_eq!(std::fs::read_dir(&snapshot_dir).unwrap().count(), 0);
    }
}

#[cfg(test)]
mod snapshot_dump_tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:06}").into_bytes()
    }

    /// Every ledger-space pair as of the journal's snapshot point, in key order.
    fn dump_at_point(engine: &dyn Engine, journal: &SnapshotJournal) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut pairs = Vec::new();
        for_each_pair_at_point(engine, journal, |key, value| {
            pairs.push((key, value));
            Ok(())
        })?;
        Ok(pairs)
    }

    /// The body a build streams is, once decompressed, byte for byte the encoding of the whole
    /// pair list (what builds before streaming wrote and every reader expects), empty or not.
    #[test]
    fn a_streamed_body_is_the_encoding_of_the_whole_pair_list() {
        for count in [0u32, 1, 3 * SNAPSHOT_SCAN_CHUNK as u32 + 17] {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> =
                (0..count).map(|i| (key(i), vec![i as u8; (i % 300) as usize])).collect();
            let mut encoder = BodyEncoder::new(Vec::new()).unwrap();
            for (key, value) in &pairs {
                encoder.push(key, value).unwrap();
            }
            let (mut body, pairs_frame) = encoder.finish().unwrap();
            body.extend_from_slice(&pairs_frame);
            let whole = codec::encode(&SnapshotBody { pairs: pairs.clone() }).unwrap();
            assert_eq!(zstd::decode_all(body.as_slice()).unwrap(), whole, "{count} pairs");
            assert_eq!(decode_body(&body).unwrap().pairs, pairs, "{count} pairs");
            // The pair-by-pair decoder reads the same pairs from the streamed and the plain body.
            for source in [body.as_slice(), whole.as_slice()] {
                let mut decoder = BodyDecoder::new(source).unwrap();
                let mut read = Vec::new();
                while let Some(pair) = decoder.next_pair().unwrap() {
                    read.push(pair);
                }
                assert_eq!(read, pairs, "{count} pairs");
                assert_eq!(check_body(&SnapshotBodyBytes::in_memory(source.to_vec())).unwrap(), u64::from(count));
            }
        }
    }

    /// An install checks the whole body before it writes anything: keys out of order, another
    /// format version, a cut-short body or bytes after the last pair are refused.
    #[test]
    fn a_body_that_is_not_a_snapshot_body_is_refused_before_an_install_writes() {
        let body = |pairs: Vec<(Vec<u8>, Vec<u8>)>| codec::encode(&SnapshotBody { pairs }).unwrap();
        let ordered = body(vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
        assert_eq!(check_body(&SnapshotBodyBytes::in_memory(ordered.clone())).unwrap(), 2);
        let unordered = body(vec![(b"b".to_vec(), b"1".to_vec()), (b"a".to_vec(), b"2".to_vec())]);
        let mut other_version = ordered.clone();
        other_version[0] = codec::FORMAT_VERSION.wrapping_add(1);
        let cut_short = ordered[..ordered.len() - 1].to_vec();
        let mut trailing = ordered.clone();
        trailing.push(0);
        for (name, bad) in
            [("unordered", unordered), ("version", other_version), ("cut short", cut_short), ("trailing", trailing)]
        {
            assert!(check_body(&SnapshotBodyBytes::in_memory(bad)).is_err(), "{name}");
        }
    }

    /// The snapshot file written as head and body is `codec::encode(&(meta, body))`.
    #[test]
    fn a_snapshot_file_written_in_parts_decodes_as_meta_and_body() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(dir.path().join(SNAPSHOT_FILE));
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 70_000)),
            last_membership: StoredMembership::default(),
            snapshot_id: "3-70000-1".into(),
        };
        let body = vec![7u8; 200_000];
        let (head, rest) = body.split_at(1_000);
        let written = file.replace_with_snapshot(&meta, body.len() as u64, |w| {
            w.write_all(head)?;
            w.write_all(rest)
        });
        let window = written.unwrap().expect("written");
        let bytes = std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap();
        assert_eq!(bytes, codec::encode(&(&meta, &body)).unwrap());
        assert_eq!(window.into_bytes().unwrap(), body, "the returned window is the body written");
    }

    /// Writes made after the snapshot point, before and during the chunked scan, never show in
    /// the dump: it is the ledger as it was at the point.
    #[test]
    fn a_dump_is_the_ledger_at_its_point_whatever_is_written_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(super::super::SledEngine::open(&dir.path().join("sled")).unwrap());
        let keys = 3 * SNAPSHOT_SCAN_CHUNK as u32 + 17;
        let journals = JournalRegistry::default();
        journals.write_ledger(engine.as_ref(), (0..keys).map(|i| (key(i), Some(b"v0".to_vec()))).collect()).unwrap();
        let expected = engine.scan(Space::Ledger, Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap();

        let journal = journals.pin();
        // After the point: overwrite, remove and insert across every chunk.
        let mut write: WriteBatch = Vec::new();
        for i in (0..keys).step_by(97) {
            write.push((key(i), Some(b"v1".to_vec())));
            write.push((key(i + 1), None));
        }
        write.push((key(keys + 5), Some(b"new".to_vec())));
        journals.write_ledger(engine.as_ref(), write).unwrap();
        // A second write of a journaled key keeps the point's value.
        journals.write_ledger(engine.as_ref(), vec![(key(0), Some(b"v2".to_vec()))]).unwrap();

        assert_eq!(dump_at_point(engine.as_ref(), &journal).unwrap(), expected);

        // A finished dump's journal is dropped and forgotten.
        drop(journal);
        journals.write_ledger(engine.as_ref(), vec![(key(1), Some(b"v3".to_vec()))]).unwrap();
        assert_eq!(journals.running(), 0);
    }

    /// Writes issued while the streaming read is between chunks (removals ahead of the scan,
    /// inserts behind and ahead of it, overwrites) never show: it streams the point's ledger.
    #[test]
    fn a_streamed_read_is_the_ledger_at_its_point_with_writes_between_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(super::super::SledEngine::open(&dir.path().join("sled")).unwrap());
        let keys = 3 * SNAPSHOT_SCAN_CHUNK as u32 + 17;
        let journals = JournalRegistry::default();
        journals
            .write_ledger(engine.as_ref(), (0..keys).map(|i| (key(2 * i), Some(b"v0".to_vec()))).collect())
            .unwrap();
        let expected = engine.scan(Space::Ledger, Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap();

        let journal = journals.pin();
        let mut seen = Vec::new();
        let mut round = 0u32;
        for_each_pair_at_point(engine.as_ref(), &journal, |key_bytes, value| {
            seen.push((key_bytes, value));
            if seen.len() % SNAPSHOT_SCAN_CHUNK == 0 {
                round += 1;
                let at = seen.len() as u32;
                let write = vec![
                    // Behind the scan: overwritten and inserted.
                    (key(2 * (at - 10)), Some(b"late".to_vec())),
                    (key(2 * (at - 10) + 1), Some(b"new".to_vec())),
                    // Ahead of it: removed, overwritten, inserted.
                    (key(2 * (at + 10)), None),
                    (key(2 * (at + 11)), Some(b"late".to_vec())),
                    (key(2 * (at + 12) + 1), Some(b"new".to_vec())),
                    (key(2 * keys + round), Some(b"past the end".to_vec())),
                ];
                journals.write_ledger(engine.as_ref(), write)?;
            }
            Ok(())
        })
        .unwrap();
        assert!(round >= 3, "writes between chunks");
        assert_eq!(seen, expected);
    }
}
