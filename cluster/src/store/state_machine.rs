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
//! overwrite, so applies never wait for a dump of the whole ledger.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::io;
use std::io::Cursor;
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
use crate::codec;
use crate::ledger::apply_entry;
use crate::ledger::limits::PURGE_PER_ENTRY_MAX;
use crate::ledger::Command;
use crate::ledger::LedgerState;
use crate::ledger::LedgerTime;
use crate::ledger::Record;
use crate::ledger::RecordKey;
use crate::raft_types::*;

/// Prefix of record keys in the ledger space.
const RECORD_PREFIX: u8 = b'r';
const META_APPLIED: &[u8] = b"m/applied";
const META_MEMBERSHIP: &[u8] = b"m/membership";
const META_LEDGER_TIME: &[u8] = b"m/ledger_time";
const SNAPSHOT_FILE: &str = "current.snap";
/// Pairs a snapshot dump reads per engine scan: bounds each read, not the dump.
const SNAPSHOT_SCAN_CHUNK: usize = 4096;

/// `RECORD_PREFIX, namespace length, namespace, key`: unambiguous because the namespace length
/// (at most 64) is explicit.
pub fn record_storage_key(key: &RecordKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.namespace.len() + key.key.len());
    out.push(RECORD_PREFIX);
    out.push(u8::try_from(key.namespace.len()).expect("namespace length is validated to at most 64"));
    out.extend_from_slice(key.namespace.as_bytes());
    out.extend_from_slice(&key.key);
    out
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
#[derive(Clone)]
pub struct LedgerReader {
    engine: Arc<dyn Engine>,
    applied: watch::Receiver<AppliedState>,
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
    /// Journals of the snapshot dumps still running (a finished or dropped builder drops its
    /// journal, and it is forgotten at the next write).
    journals: Vec<Weak<SnapshotJournal>>,
}

/// The values a running snapshot dump must see instead of what the engine holds now: for each
/// ledger-space key written since the snapshot point, its value at that point (`None`: absent).
/// Only the first write after the point records a key, so the journal holds at most one entry
/// per key written during the dump.
#[derive(Default)]
pub struct SnapshotJournal {
    before: Mutex<HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl SnapshotJournal {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Option<Vec<u8>>>> {
        self.before.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let store =
            StateMachineStore { engine, snapshot_file, applied, snapshots_built: 0, observer, journals: Vec::new() };
        let initial = store.read_applied_state()?;
        store.applied.send_replace(initial);
        Ok(store)
    }

    pub fn reader(&self) -> LedgerReader {
        LedgerReader { engine: self.engine.clone(), applied: self.applied.subscribe() }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.engine.get(Space::Ledger, key)? {
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(io::Error::other),
            None => Ok(None),
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

/// The one way the ledger space is written: first gives every running snapshot dump the values
/// this write replaces (once per key), then writes.
fn write_ledger(engine: &dyn Engine, journals: &mut Vec<Weak<SnapshotJournal>>, write: WriteBatch) -> io::Result<()> {
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

    /// Writes `bytes` (the snapshot up to `last_log_id`) unless the file already holds a newer
    /// one. Returns whether it wrote. Blocking.
    fn replace_if_newer(&self, last_log_id: Option<LogId>, bytes: &[u8]) -> io::Result<bool> {
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.is_some() && *current > last_log_id {
            return Ok(false);
        }
        write_file_durably(&self.path, bytes)?;
        *current = last_log_id;
        Ok(true)
    }
}

/// The ledger as one apply call sees it. Everything the pure core may ask about is loaded
/// before it runs (so storage errors surface here, not inside it): the records an entry's
/// commands name, the records whose retention ended by the entry's time (from the deadline
/// index), and their namespaces' purge horizons. Writes stay in memory until the call's one
/// atomic engine write.
struct ApplyBatch<'a> {
    engine: &'a dyn Engine,
    /// Current records by key (`None`: no record), as of the entries applied so far.
    records: BTreeMap<RecordKey, Option<Record>>,
    /// The retention deadline each loaded key has in the engine's deadline index.
    stored_deadlines: BTreeMap<RecordKey, Option<LedgerTime>>,
    /// Keys written (or removed) by this call.
    written: BTreeSet<RecordKey>,
    /// Index entries read from the engine: candidates for purging.
    expiry_candidates: BTreeSet<(LedgerTime, RecordKey)>,
    horizons: BTreeMap<String, LedgerTime>,
    written_horizons: BTreeSet<String>,
    time: LedgerTime,
}

impl<'a> ApplyBatch<'a> {
    fn new(engine: &'a dyn Engine, time: LedgerTime) -> ApplyBatch<'a> {
        ApplyBatch {
            engine,
            records: BTreeMap::new(),
            stored_deadlines: BTreeMap::new(),
            written: BTreeSet::new(),
            expiry_candidates: BTreeSet::new(),
            horizons: BTreeMap::new(),
            written_horizons: BTreeSet::new(),
            time,
        }
    }

    fn load_record(&mut self, key: &RecordKey) -> io::Result<()> {
        if self.records.contains_key(key) {
            return Ok(());
        }
        let stored = match self.engine.get(Space::Ledger, &record_storage_key(key))? {
            Some(bytes) => Some(codec::decode::<Record>(&bytes).map_err(io::Error::other)?),
            None => None,
        };
        self.stored_deadlines.insert(key.clone(), stored.as_ref().and_then(Record::retained_until));
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

    fn writes(&self) -> io::Result<WriteBatch> {
        let mut writes = Vec::with_capacity(2 * self.written.len() + self.written_horizons.len() + 3);
        for key in &self.written {
            let record = self.records[key].as_ref();
            let storage_key = record_storage_key(key);
            match record {
                Some(record) => writes.push((storage_key, Some(codec::encode(record).map_err(io::Error::other)?))),
                None => writes.push((storage_key, None)),
            }
            // Keep the deadline index in step with the record.
            let old = self.stored_deadlines.get(key).copied().flatten();
            let new = record.and_then(Record::retained_until);
            if old != new {
                if let Some(old) = old {
                    writes.push((expiry_index_key(old, Some(key)), None));
                }
                if let Some(new) = new {
                    writes.push((expiry_index_key(new, Some(key)), Some(Vec::new())));
                }
            }
        }
        for namespace in &self.written_horizons {
            writes.push(meta_pair(&horizon_key(namespace), &self.horizons[namespace])?);
        }
        Ok(writes)
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
            write_ledger(self.engine.as_ref(), &mut self.journals, write)
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
        let journal = Arc::new(SnapshotJournal::default());
        self.journals.push(Arc::downgrade(&journal));
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let signature = Some(meta.signature());
        let body_bytes = snapshot.into_inner();
        let body_bytes_len = body_bytes.len();
        let body: SnapshotBody =
            decode_body(&body_bytes).map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let install = || -> io::Result<AppliedState> {
            // Replace the whole ledger space in one atomic write: old keys out, snapshot in.
            let existing = self.engine.scan(Space::Ledger, Bound::Unbounded, Bound::Unbounded, usize::MAX)?;
            let mut write: BTreeMap<Vec<u8>, Option<Vec<u8>>> = existing.into_iter().map(|(k, _)| (k, None)).collect();
            for (key, value) in body.pairs {
                write.insert(key, Some(value));
            }
            for (key, value) in
                [meta_pair(META_APPLIED, &meta.last_log_id)?, meta_pair(META_MEMBERSHIP, &meta.last_membership)?]
            {
                write.insert(key, value);
            }
            write_ledger(self.engine.as_ref(), &mut self.journals, write.into_iter().collect())?;
            self.engine.flush()?;
            self.snapshot_file
                .replace_if_newer(meta.last_log_id, &codec::encode(&(meta, &body_bytes)).map_err(io::Error::other)?)?;
            self.read_applied_state()
        };
        let applied = install().map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        tracing::info!(
            index = applied.log_index,
            bytes = body_bytes_len,
            "installed a snapshot from the leader; the ledger was replaced"
        );
        if let Some(observer) = &self.observer {
            observer.ledger_replaced();
        }
        self.applied.send_replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.snapshot_path();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StorageIOError::read_snapshot(None, &error).into()),
        };
        let (meta, body): (SnapshotMeta, Vec<u8>) =
            codec::decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(body)) }))
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

fn encode_body(body: &SnapshotBody) -> io::Result<Vec<u8>> {
    let plain = codec::encode(body).map_err(io::Error::other)?;
    zstd::encode_all(plain.as_slice(), SNAPSHOT_ZSTD_LEVEL)
}

fn decode_body(bytes: &[u8]) -> io::Result<SnapshotBody> {
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
struct SnapshotBody {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What a builder dumps: the journal of its snapshot point and the point's applied log id and
/// membership.
type Dump = io::Result<(Arc<SnapshotJournal>, Option<LogId>, StoredMembership)>;

/// Every ledger-space pair as of the journal's snapshot point, in key order. Scans the engine in
/// chunks while applies go on: a key the journal holds is taken from the journal (its value at
/// the point, or absent), any other key was not written since the point, so the engine's value
/// is the point's. The journal only grows, so checking it again at the end catches keys first
/// written after the scan passed them.
fn dump_at_point(engine: &dyn Engine, journal: &SnapshotJournal) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut pairs = Vec::new();
    let mut from = Bound::Unbounded;
    loop {
        let chunk = engine.scan(Space::Ledger, from, Bound::Unbounded, SNAPSHOT_SCAN_CHUNK)?;
        let Some((last, _)) = chunk.last() else { break };
        from = Bound::Excluded(last.clone());
        let before = journal.lock();
        pairs.extend(chunk.into_iter().filter(|(key, _)| !before.contains_key(key)));
    }
    let before = journal.lock();
    pairs.retain(|(key, _)| !before.contains_key(key));
    pairs.extend(before.iter().filter_map(|(key, value)| value.as_ref().map(|value| (key.clone(), value.clone()))));
    drop(before);
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(pairs)
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
        let body_bytes = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            // The state machine must be durable up to the snapshot point before openraft may
            // purge the logs the snapshot replaces.
            engine.flush()?;
            let pairs = dump_at_point(engine.as_ref(), &journal)?;
            drop(journal); // applies stop journaling for this build
            let body_bytes = encode_body(&SnapshotBody { pairs })?;
            let file_bytes = codec::encode(&(&write_meta, &body_bytes)).map_err(io::Error::other)?;
            if !snapshot_file.replace_if_newer(write_meta.last_log_id, &file_bytes)? {
                tracing::info!(snapshot = ?write_meta.last_log_id, "a newer snapshot was installed meanwhile; kept it");
            }
            Ok(body_bytes)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(body_bytes)) })
    }
}

/// Writes `bytes` to `path` so that after a crash the file is either the old one or the new one.
fn write_file_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("snapshot path has no directory"))?;
    // A name of its own: a process that has not quite ended (or a test harness's previous
    // instance of this node) may still be writing one.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("tmp.{}.{write}", std::process::id()));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
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
        assert!(file.replace_if_newer(log_id(10), b"built at 10").unwrap());
        // An install of 282 lands while a build of 140 is still running...
        assert!(file.clone().replace_if_newer(log_id(282), b"installed 282").unwrap());
        // ...and the build finishing later keeps its hands off the file.
        assert!(!file.replace_if_newer(log_id(140), b"built at 140").unwrap());
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
                std::thread::spawn(move || file.replace_if_newer(log_id(index), &vec![index as u8; 64 * 1024]).unwrap())
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
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:06}").into_bytes()
    }

    /// Writes made after the snapshot point, before and during the chunked scan, never show in
    /// the dump: it is the ledger as it was at the point.
    #[test]
    fn a_dump_is_the_ledger_at_its_point_whatever_is_written_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(super::super::SledEngine::open(&dir.path().join("sled")).unwrap());
        let keys = 3 * SNAPSHOT_SCAN_CHUNK as u32 + 17;
        let mut journals = Vec::new();
        write_ledger(engine.as_ref(), &mut journals, (0..keys).map(|i| (key(i), Some(b"v0".to_vec()))).collect())
            .unwrap();
        let expected = engine.scan(Space::Ledger, Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap();

        let journal = Arc::new(SnapshotJournal::default());
        journals.push(Arc::downgrade(&journal));
        // After the point: overwrite, remove and insert across every chunk.
        let mut write: WriteBatch = Vec::new();
        for i in (0..keys).step_by(97) {
            write.push((key(i), Some(b"v1".to_vec())));
            write.push((key(i + 1), None));
        }
        write.push((key(keys + 5), Some(b"new".to_vec())));
        write_ledger(engine.as_ref(), &mut journals, write).unwrap();
        // A second write of a journaled key keeps the point's value.
        write_ledger(engine.as_ref(), &mut journals, vec![(key(0), Some(b"v2".to_vec()))]).unwrap();

        assert_eq!(dump_at_point(engine.as_ref(), &journal).unwrap(), expected);

        // A finished dump's journal is dropped and forgotten by the next write.
        drop(journal);
        write_ledger(engine.as_ref(), &mut journals, vec![(key(1), Some(b"v3".to_vec()))]).unwrap();
        assert!(journals.is_empty());
    }
}
