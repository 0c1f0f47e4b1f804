//! The storage seam: the few operations the Raft log and the state machine need from an
//! embedded key-value engine. Only this file knows sled, so the engine can be replaced without
//! touching the log or state-machine logic (openraft and Databend both moved off sled).

use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::OnceLock;

/// Independent key spaces. Writes are atomic within one space; a flush covers all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Raft log entries keyed by big-endian index.
    RaftLog,
    /// Vote, committed log id, last purged log id.
    RaftMeta,
    /// Ledger records and the state machine's own metadata (applied log id, membership, time),
    /// in one space so that one apply is one atomic write.
    Ledger,
}

/// One atomic write: `Some(value)` inserts, `None` removes.
pub type WriteBatch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

pub trait Engine: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// Applies every change of `batch` or none of them (also across a crash).
    fn write(&self, space: Space, batch: WriteBatch) -> io::Result<()>;
    /// Up to `limit` pairs with keys in `(from, to)`, in key order.
    fn scan(
        &self,
        space: Space,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    fn last(&self, space: Space) -> io::Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Makes every write issued before the call durable. Blocking: call it off the async workers.
    fn flush(&self) -> io::Result<()>;
    /// Bytes the engine occupies on disk.
    fn size_on_disk(&self) -> io::Result<u64>;
}

/// sled settings, passed explicitly rather than relying on defaults.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// zstd level of sled's page compression; 0: off. Measured with incompressible keys and outcomes
/// (32 + 64 random bytes): level 1 held ~1,080 bytes per record after 1M records and snapshots
/// but wrote batches at ~1/3 of the uncompressed rate (4.1k vs 12.2k records/s), while sled's
/// space amplification stayed: off, for throughput (issue 4 note). Fixed, because a database
/// must be reopened with the setting it was created with.
const SLED_COMPRESSION_LEVEL: i32 = 0;
/// sled's background `sync_all` period; durability of acknowledged writes comes from our own
/// explicit flushes, this only bounds metadata lag.
const SLED_FLUSH_EVERY_MS: u64 = 500;

pub struct SledEngine {
    db: sled::Db,
    raft_log: sled::Tree,
    raft_meta: sled::Tree,
    ledger: sled::Tree,
}

/// The first error any sled engine of this process returned (`dedupd` has one engine).
///
/// Fail-stop reports it: when an apply fails, openraft's core may quit on a consequence instead
/// ("when Write Apply(...): channel closed", the state-machine worker having ended), and the
/// operator would not learn that the disk was full (found by `tests/tests/store_full.rs`).
static FIRST_ERROR: OnceLock<String> = OnceLock::new();

fn to_io(error: sled::Error) -> io::Error {
    let error = match error {
        sled::Error::Io(error) => error,
        other => io::Error::other(other.to_string()),
    };
    let _ = FIRST_ERROR.set(error.to_string());
    error
}

impl SledEngine {
    /// The first error a sled engine of this process returned, if any (see `FIRST_ERROR`).
    pub fn first_error() -> Option<String> {
        FIRST_ERROR.get().cloned()
    }

    /// Opens (or creates) the one sled database of this process under `dir`.
    pub fn open(dir: &Path) -> io::Result<SledEngine> {
        discard_torn_writes(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .use_compression(SLED_COMPRESSION_LEVEL > 0)
            .compression_factor(SLED_COMPRESSION_LEVEL.max(1))
            .open()
            .map_err(to_io)?;
        let raft_log = db.open_tree("raft_log").map_err(to_io)?;
        let raft_meta = db.open_tree("raft_meta").map_err(to_io)?;
        let ledger = db.open_tree("ledger").map_err(to_io)?;
        Ok(SledEngine { db, raft_log, raft_meta, ledger })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        match space {
            Space::RaftLog => &self.raft_log,
            Space::RaftMeta => &self.raft_meta,
            Space::Ledger => &self.ledger,
        }
    }
}

/// sled 0.34 writes `conf` on a database's first open with two plain writes (settings, then
/// checksum), no rename and no fsync; a crash between them leaves a `conf` that fails to parse
/// on every later open ("Read corrupted data"), so the node could never start again. sled
/// creates `db` only after `conf` is complete, so a folder with `conf` but no `db` has never
/// held data: remove the torn `conf` and let sled start the folder afresh.
///
/// sled also writes its own page-cache snapshot as `snap.<lsn>.generating`, fsyncs it and only
/// then renames it to `snap.<lsn>`; but when it opens it picks the greatest `snap.*` name,
/// `.generating` included, so a kill mid-write leaves a file it then reads as corrupt, forever.
/// A `.generating` file was never committed: remove it, and sled recovers from its previous
/// snapshot and its log (found by `tests/tests/store_crash.rs`).
fn discard_torn_writes(dir: &Path) -> io::Result<()> {
    let conf = dir.join("conf");
    if conf.exists() && !dir.join("db").exists() {
        tracing::warn!(path = %conf.display(), "discarding sled settings of a first open that never completed");
        std::fs::remove_file(&conf)?;
    }
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with("snap.") && name.ends_with(".generating") {
                tracing::warn!(path = %path.display(), "discarding an interrupted sled page-cache snapshot");
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Operations of a write per step of epoch collection after it (see `collect_replaced_pages`).
const WRITE_OPS_PER_COLLECT_STEP: usize = 256;

/// Frees what sled replaced during a write of `ops` operations.
///
/// sled 0.34 copies a page on every change and hands the old copy to crossbeam-epoch's default
/// collector, which frees garbage only in small steps (8 bags of 64 objects) taken now and then
/// when a thread pins. A write of thousands of operations makes garbage faster than those steps
/// free it, so it piles up for good: 1M random keys written 4,096 per batch grew a process to
/// 4-5 GiB, 2M sorted keys (a snapshot install) to 2.1-2.3 GiB. One step per 256 operations
/// after each write kept them under 300 MiB (`examples/sled_garbage.rs`; docs/architecture.md,
/// "sled's garbage").
fn collect_replaced_pages(ops: usize) {
    for _ in 0..=ops / WRITE_OPS_PER_COLLECT_STEP {
        crossbeam_epoch::pin().flush();
    }
}

impl Engine for SledEngine {
    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.tree(space).get(key).map_err(to_io)?.map(|v| v.to_vec()))
    }

    fn write(&self, space: Space, batch: WriteBatch) -> io::Result<()> {
        let ops = batch.len();
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        let written = self.tree(space).apply_batch(sled_batch).map_err(to_io);
        collect_replaced_pages(ops);
        written
    }

    fn scan(
        &self,
        space: Space,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.tree(space).range::<Vec<u8>, _>((from, to)).take(limit) {
            let (key, value) = item.map_err(to_io)?;
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, space: Space) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.tree(space).last().map_err(to_io)?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn flush(&self) -> io::Result<()> {
        // sled's flush is Db-wide: it covers all three spaces.
        self.db.flush().map_err(to_io).map(|_| ())
    }

    fn size_on_disk(&self) -> io::Result<u64> {
        self.db.size_on_disk().map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `dir` again once the previous handle's background flusher has let go of sled's
    /// file lock (it can outlive the handle by a moment).
    fn reopen(dir: &Path) -> io::Result<SledEngine> {
        for _ in 0..50 {
            match SledEngine::open(dir) {
                Err(error) if error.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                other => return other,
            }
        }
        SledEngine::open(dir)
    }

    #[test]
    fn a_first_open_killed_after_writing_half_the_settings_opens_afresh() {
        let dir = tempfile::tempdir().unwrap();
        // What a kill between sled's two writes of `conf` leaves: settings, no checksum, no db.
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("conf"), "segment_size: 524288\nuse_compression: false\nversion: 0.34\n")
            .unwrap();
        let engine = SledEngine::open(dir.path()).expect("a torn first open must not block the node forever");
        engine.write(Space::Ledger, vec![(b"k".to_vec(), Some(b"v".to_vec()))]).unwrap();
        engine.flush().unwrap();
        drop(engine);
        // A database that did hold data is opened as it is, never discarded.
        let engine = reopen(dir.path()).unwrap();
        assert_eq!(engine.get(Space::Ledger, b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn an_interrupted_page_cache_snapshot_does_not_block_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        engine.write(Space::RaftLog, vec![(b"entry".to_vec(), Some(b"durable".to_vec()))]).unwrap();
        engine.flush().unwrap();
        drop(engine);
        // What a kill while sled writes its page-cache snapshot leaves behind.
        std::fs::write(dir.path().join("snap.FFFFFFFFFFFFFFF0.generating"), b"").unwrap();
        let engine = reopen(dir.path()).expect("an unfinished sled snapshot must not block the node");
        assert_eq!(engine.get(Space::RaftLog, b"entry").unwrap(), Some(b"durable".to_vec()));
    }
}
