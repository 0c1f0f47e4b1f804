//! The Raft log store on the storage engine (openraft `RaftLogStorage`).
//!
//! Durability rules (DESIGN §7, research openraft-sled.md §4):
//! - `save_vote` and `truncate` return only after a flush.
//! - `append` makes entries readable at once and reports them durable (the callback) only after
//!   a flush. One flusher task serves all appends: every append waiting when a flush starts is
//!   covered by it, so a burst of appends costs one flush.
//! - `purge` writes `last_purged` before deleting anything, so a crash in between leaves entries
//!   openraft ignores rather than a hole it cannot explain.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageIOError;
use tokio::sync::mpsc;

use super::engine::Engine;
use super::engine::Space;
use crate::codec;
use crate::metrics;
use crate::raft_types::*;

const META_VOTE: &[u8] = b"vote";
const META_COMMITTED: &[u8] = b"committed";
const META_LAST_PURGED: &[u8] = b"last_purged";
/// Log entries removed per engine write while purging: bounds one write's size.
const PURGE_CHUNK_ENTRIES: usize = 4096;

/// An append waiting for the flush that makes it durable, and when openraft handed it over.
type FlushRequest = (LogFlushed<TypeConfig>, Instant);

#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    flush_requests: mpsc::UnboundedSender<FlushRequest>,
    flushes: Arc<AtomicU64>,
    /// The last committed log index openraft told this store (0: none yet).
    committed: Arc<AtomicU64>,
}

fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

/// Runs blocking storage work (a flush, a snapshot file) off the async workers.
pub(super) async fn blocking_io<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
}

/// One engine flush off the async workers, timed (including the wait for a blocking thread).
async fn timed_flush(engine: Arc<dyn Engine>) -> io::Result<()> {
    let started = Instant::now();
    let result = blocking_io(move || engine.flush()).await;
    metrics::log().flush.observe(started.elapsed());
    result
}

impl LogStore {
    /// Must be called inside a tokio runtime: it starts the flusher task.
    pub fn new(engine: Arc<dyn Engine>) -> LogStore {
        let (flush_requests, pending) = mpsc::unbounded_channel();
        let flushes = Arc::new(AtomicU64::new(0));
        tokio::spawn(run_flusher(engine.clone(), pending, flushes.clone()));
        LogStore { engine, flush_requests, flushes, committed: Arc::default() }
    }

    /// The storage engine under this store (shared with the state machine), for a final flush.
    pub fn engine(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }

    /// The last committed log index this node knows (openraft's `save_committed`), for status.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// Flushes this store has made since it opened (appends, votes, truncations, purges).
    pub fn flush_counter(&self) -> Arc<AtomicU64> {
        self.flushes.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.engine.get(Space::RaftMeta, key)? {
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(io::Error::other),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        write_meta(self.engine.as_ref(), key, value)
    }

    async fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        timed_flush(self.engine.clone()).await
    }

    fn entries_in(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> io::Result<Vec<Entry>> {
        let pairs = self.engine.scan(Space::RaftLog, from, to, usize::MAX)?;
        pairs.iter().map(|(_, value)| codec::decode::<Entry>(value).map_err(io::Error::other)).collect()
    }

    /// The index of the first or the last entry in the log, if any.
    fn end_index(&self, last: bool) -> io::Result<Option<u64>> {
        let pair = if last {
            self.engine.last(Space::RaftLog)?
        } else {
            self.engine.scan(Space::RaftLog, Bound::Unbounded, Bound::Unbounded, 1)?.pop()
        };
        match pair {
            Some((key, _)) => {
                let bytes: [u8; 8] =
                    key.as_slice().try_into().map_err(|_| io::Error::other("a Raft log key is not 8 bytes"))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
            None => Ok(None),
        }
    }

    /// Removes the entries with index in `first..=last`, `PURGE_CHUNK_ENTRIES` keys per write,
    /// from the low end (`HighFirst`: from the high end). Reads no entry: Raft log indexes are
    /// contiguous and removing an absent key does nothing, so memory stays one chunk of keys
    /// however large the entries (scanning them to find the keys once held up to 4 096 entries
    /// of up to 96 KiB each).
    fn remove_indexes(&self, first: u64, last: u64, order: RemoveOrder) -> io::Result<()> {
        let chunk = PURGE_CHUNK_ENTRIES as u64;
        let mut remaining = (first <= last).then_some((first, last));
        while let Some((low, high)) = remaining {
            let (from, to) = match order {
                RemoveOrder::LowFirst => {
                    let to = high.min(low.saturating_add(chunk - 1));
                    remaining = (to < high).then(|| (to + 1, high));
                    (low, to)
                }
                RemoveOrder::HighFirst => {
                    let from = low.max(high.saturating_sub(chunk - 1));
                    remaining = (from > low).then(|| (low, from - 1));
                    (from, high)
                }
            };
            self.engine.write(Space::RaftLog, (from..=to).map(|index| (index_key(index), None)).collect())?;
        }
        Ok(())
    }
}

/// Which end of a range of log entries goes first. A crash keeps a prefix of the writes, so a
/// purge goes from the low end and a truncation from the high end: either way the entries left
/// stay contiguous.
#[derive(Debug, Clone, Copy)]
enum RemoveOrder {
    LowFirst,
    HighFirst,
}

fn write_meta<T: serde::Serialize>(engine: &dyn Engine, key: &[u8], value: &T) -> io::Result<()> {
    let bytes = codec::encode(value).map_err(io::Error::other)?;
    engine.write(Space::RaftMeta, vec![(key.to_vec(), Some(bytes))])
}

/// Stores and flushes a vote on an engine that no log store has open (a restore). Blocking.
pub(super) fn save_vote_offline(engine: &dyn Engine, vote: &Vote) -> io::Result<()> {
    write_meta(engine, META_VOTE, vote)?;
    engine.flush()
}

/// Completes append callbacks in groups: one flush for every append queued before it started.
async fn run_flusher(
    engine: Arc<dyn Engine>,
    mut pending: mpsc::UnboundedReceiver<FlushRequest>,
    flushes: Arc<AtomicU64>,
) {
    while let Some(first) = pending.recv().await {
        let mut group = vec![first];
        while let Ok(next) = pending.try_recv() {
            group.push(next);
        }
        flushes.fetch_add(1, Ordering::Relaxed);
        let result = timed_flush(engine.clone()).await;
        if let Err(error) = &result {
            tracing::error!(%error, "flushing the Raft log failed; the node stops (fail-stop)");
        }
        for (callback, appended) in group {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            callback.log_io_completed(outcome);
            metrics::log().append.observe(appended.elapsed());
        }
    }
}

fn bound_key(bound: Bound<&u64>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(index) => Bound::Included(index_key(*index)),
        Bound::Excluded(index) => Bound::Excluded(index_key(*index)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries_in(bound_key(range.start_bound()), bound_key(range.end_bound()))
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = || -> io::Result<LogState<TypeConfig>> {
            let last_purged_log_id: Option<LogId> = self.read_meta(META_LAST_PURGED)?;
            let last_entry = match self.engine.last(Space::RaftLog)? {
                Some((_, bytes)) => Some(codec::decode::<Entry>(&bytes).map_err(io::Error::other)?.log_id),
                None => None,
            };
            Ok(LogState { last_purged_log_id, last_log_id: last_entry.or(last_purged_log_id) })
        };
        read().map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(META_VOTE, vote).map_err(|e| StorageIOError::write_vote(&e))?;
        // A vote forgotten in a crash would let this node vote twice in one term.
        self.flush().await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(META_VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // No flush: losing it only means re-committing on restart; it rides on the next flush.
        self.committed.store(committed.map_or(0, |id| id.index), Ordering::Relaxed);
        self.write_meta(META_COMMITTED, &committed).map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self.read_meta(META_COMMITTED).map_err(|e| StorageIOError::read(&e))?;
        let committed = committed.flatten();
        self.committed.fetch_max(committed.map_or(0, |id| id.index), Ordering::Relaxed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let appended = Instant::now();
        let mut batch = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.push((index_key(entry.log_id.index), Some(bytes)));
        }
        if let Err(error) = self.engine.write(Space::RaftLog, batch) {
            tracing::error!(%error, "writing Raft log entries failed; the node stops (fail-stop)");
            callback.log_io_completed(Err(io::Error::new(error.kind(), error.to_string())));
            return Err(StorageIOError::write_logs(&error).into());
        }
        if crate::bug_zoo::active(crate::bug_zoo::Bug::AckBeforeFlush) {
            callback.log_io_completed(Ok(()));
            metrics::log().append.observe(appended.elapsed());
            return Ok(());
        }
        // Readable now; durable once the flusher's next flush finishes.
        if let Err(returned) = self.flush_requests.send((callback, appended)) {
            let (callback, _) = returned.0;
            callback.log_io_completed(Err(io::Error::other("the log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let removed = match self.end_index(true) {
            Ok(Some(last)) if last >= log_id.index => self.remove_indexes(log_id.index, last, RemoveOrder::HighFirst),
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        removed.map_err(|e| StorageIOError::write_logs(&e))?;
        // A truncated entry resurrected by a crash could be applied later: flush first.
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // `last_purged` goes first: after a crash the log state still explains the missing head.
        self.write_meta(META_LAST_PURGED, &log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        let removed = match self.end_index(false) {
            Ok(Some(first)) if first <= log_id.index => self.remove_indexes(first, log_id.index, RemoveOrder::LowFirst),
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        removed.map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::SledEngine;
    use super::super::fault_tests::FailingEngine;
    use super::super::inspect_tests::block_on;
    use super::*;

    fn indexes(engine: &dyn Engine) -> Vec<u64> {
        let pairs = engine.scan(Space::RaftLog, Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap();
        pairs.iter().map(|(key, _)| u64::from_be_bytes(key.as_slice().try_into().unwrap())).collect()
    }

    /// Purging and truncating remove exactly the asked indexes across several chunks, and the
    /// first write of a truncation takes the highest chunk (a crash keeps the log contiguous).
    #[test]
    fn removing_a_range_takes_exactly_its_indexes_chunk_by_chunk_from_the_right_end() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let entries = 3 * PURGE_CHUNK_ENTRIES as u64 + 10;
        engine.write(Space::RaftLog, (1..=entries).map(|i| (index_key(i), Some(vec![7u8; 100]))).collect()).unwrap();
        block_on(async {
            let store = LogStore::new(engine.clone());
            assert_eq!(store.end_index(false).unwrap(), Some(1));
            assert_eq!(store.end_index(true).unwrap(), Some(entries));

            let purge_to = PURGE_CHUNK_ENTRIES as u64 + 5;
            store.remove_indexes(1, purge_to, RemoveOrder::LowFirst).unwrap();
            assert_eq!(indexes(engine.as_ref()), (purge_to + 1..=entries).collect::<Vec<_>>());

            // A truncation cut short after its first write leaves no hole.
            let truncate_from = purge_to + 20;
            let partial =
                LogStore { engine: Arc::new(FailingEngine::after_writes(engine.clone(), 1)), ..store.clone() };
            assert!(partial.remove_indexes(truncate_from, entries, RemoveOrder::HighFirst).is_err());
            let left = indexes(engine.as_ref());
            assert_eq!(left, (purge_to + 1..=*left.last().unwrap()).collect::<Vec<_>>(), "contiguous");
            assert!(*left.last().unwrap() < entries);

            store.remove_indexes(truncate_from, entries, RemoveOrder::HighFirst).unwrap();
            assert_eq!(indexes(engine.as_ref()), (purge_to + 1..truncate_from).collect::<Vec<_>>());
            // Absent indexes are no work and no error.
            store.remove_indexes(1, purge_to, RemoveOrder::LowFirst).unwrap();
            assert_eq!(store.end_index(false).unwrap(), Some(purge_to + 1));
        });
    }
}
