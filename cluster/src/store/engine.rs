//! The storage seam: the few operations the Raft log and the state machine need from an
//! embedded key-value engine. Only this file knows sled, so the engine can be replaced without
//! touching the log or state-machine logic (openraft and Databend both moved off sled).

use std::io;
use std::ops::Bound;
use std::path::Path;

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
/// sled's background `sync_all` period; durability of acknowledged writes comes from our own
/// explicit flushes, this only bounds metadata lag.
const SLED_FLUSH_EVERY_MS: u64 = 500;

pub struct SledEngine {
    db: sled::Db,
    raft_log: sled::Tree,
    raft_meta: sled::Tree,
    ledger: sled::Tree,
}

fn to_io(error: sled::Error) -> io::Error {
    match error {
        sled::Error::Io(error) => error,
        other => io::Error::other(other.to_string()),
    }
}

impl SledEngine {
    /// Opens (or creates) the one sled database of this process under `dir`.
    pub fn open(dir: &Path) -> io::Result<SledEngine> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .use_compression(false)
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

impl Engine for SledEngine {
    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.tree(space).get(key).map_err(to_io)?.map(|v| v.to_vec()))
    }

    fn write(&self, space: Space, batch: WriteBatch) -> io::Result<()> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.tree(space).apply_batch(sled_batch).map_err(to_io)
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
