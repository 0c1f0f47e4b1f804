//! An in-memory storage [`Engine`] with crash semantics.
//!
//! Every write lands in a volatile layer at once (readable at once, like sled); [`Engine::flush`]
//! makes everything written so far durable. [`MemEngine::crash`] is `kill -9` of the process:
//! the engine refuses every later call, and the image it returns holds the durable layer plus a
//! seeded prefix (possibly empty) of the writes issued since the last flush, because sled's
//! background flusher may have persisted some of them in order. A write batch is atomic: it is
//! in the image whole or not at all.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::Mutex;

use dedup_cluster::store::Engine;
use dedup_cluster::store::Space;

type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;
type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

fn slot(space: Space) -> usize {
    match space {
        Space::RaftLog => 0,
        Space::RaftMeta => 1,
        Space::Ledger => 2,
    }
}

fn apply(tree: &mut Tree, batch: &Batch) {
    for (key, value) in batch {
        match value {
            Some(value) => {
                tree.insert(key.clone(), value.clone());
            }
            None => {
                tree.remove(key);
            }
        }
    }
}

#[derive(Default)]
struct Layers {
    /// What reads see: durable plus every write since.
    current: [Tree; 3],
    /// What survives a crash.
    durable: [Tree; 3],
    /// Writes since the last flush, in order.
    pending: Vec<(usize, Batch)>,
    crashed: bool,
    flushes: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct MemEngine {
    layers: Mutex<Layers>,
}

/// What one crash lost.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrashLoss {
    /// Write batches issued since the last flush.
    pub unflushed_batches: usize,
    /// Of those, how many the crash dropped.
    pub dropped_batches: usize,
}

impl MemEngine {
    pub fn new() -> MemEngine {
        MemEngine::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Layers> {
        self.layers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live(&self) -> io::Result<std::sync::MutexGuard<'_, Layers>> {
        let layers = self.lock();
        if layers.crashed {
            return Err(io::Error::other("simulated crash: this engine's process is gone"));
        }
        Ok(layers)
    }

    /// Kills the engine: every later call fails. Returns the engine the next incarnation of the
    /// node opens: the durable layer plus the first `keep` of the unflushed write batches
    /// (`keep` is capped at their number).
    pub fn crash(&self, keep: impl FnOnce(usize) -> usize) -> (MemEngine, CrashLoss) {
        let mut layers = self.lock();
        layers.crashed = true;
        let unflushed = layers.pending.len();
        let kept = keep(unflushed).min(unflushed);
        let mut durable = layers.durable.clone();
        for (space, batch) in &layers.pending[..kept] {
            apply(&mut durable[*space], batch);
        }
        let image = Layers { current: durable.clone(), durable, ..Layers::default() };
        let loss = CrashLoss { unflushed_batches: unflushed, dropped_batches: unflushed - kept };
        (MemEngine { layers: Mutex::new(image) }, loss)
    }

    /// Every pair of `space` as reads see it now (for state digests).
    pub fn dump(&self, space: Space) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.lock().current[slot(space)].iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }
}

impl Engine for MemEngine {
    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.live()?.current[slot(space)].get(key).cloned())
    }

    fn write(&self, space: Space, batch: Batch) -> io::Result<()> {
        let mut layers = self.live()?;
        apply(&mut layers.current[slot(space)], &batch);
        layers.pending.push((slot(space), batch));
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let layers = self.live()?;
        // BTreeMap::range panics on an empty or inverted range; such a range holds nothing.
        let empty = match (&from, &to) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
            | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
            _ => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        Ok(layers.current[slot(space)]
            .range::<Vec<u8>, _>((from, to))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, space: Space) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.live()?.current[slot(space)].iter().next_back().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn flush(&self) -> io::Result<()> {
        let mut layers = self.live()?;
        let pending = std::mem::take(&mut layers.pending);
        for (space, batch) in &pending {
            apply(&mut layers.durable[*space], batch);
        }
        layers.flushes += 1;
        Ok(())
    }

    fn size_on_disk(&self) -> io::Result<u64> {
        let layers = self.live()?;
        Ok(layers.durable.iter().flat_map(|tree| tree.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(engine: &MemEngine, key: &[u8], value: &[u8]) {
        engine.write(Space::Ledger, vec![(key.to_vec(), Some(value.to_vec()))]).unwrap();
    }

    #[test]
    fn a_crash_keeps_flushed_writes_and_a_prefix_of_the_rest() {
        let engine = MemEngine::new();
        put(&engine, b"a", b"1");
        engine.flush().unwrap();
        put(&engine, b"b", b"2");
        engine.write(Space::Ledger, vec![(b"c".to_vec(), Some(b"3".to_vec())), (b"a".to_vec(), None)]).unwrap();
        assert_eq!(engine.get(Space::Ledger, b"c").unwrap(), Some(b"3".to_vec()));

        let (image, loss) = engine.crash(|_| 1);
        assert_eq!((loss.unflushed_batches, loss.dropped_batches), (2, 1));
        assert!(engine.get(Space::Ledger, b"a").is_err(), "a crashed engine serves nothing");
        assert_eq!(image.get(Space::Ledger, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(image.get(Space::Ledger, b"b").unwrap(), Some(b"2".to_vec()));
        // The second batch is atomic: neither its insert nor its remove survived.
        assert_eq!(image.get(Space::Ledger, b"c").unwrap(), None);

        let (image, _) = image.crash(|n| n);
        assert_eq!(image.dump(Space::Ledger).len(), 2);
    }

    #[test]
    fn scans_of_empty_ranges_are_empty() {
        let engine = MemEngine::new();
        put(&engine, b"k", b"v");
        let scan = |from, to| engine.scan(Space::Ledger, from, to, usize::MAX).unwrap().len();
        assert_eq!(scan(Bound::Included(b"z".to_vec()), Bound::Included(b"a".to_vec())), 0);
        assert_eq!(scan(Bound::Excluded(b"k".to_vec()), Bound::Excluded(b"k".to_vec())), 0);
        assert_eq!(scan(Bound::Included(b"k".to_vec()), Bound::Included(b"k".to_vec())), 1);
        assert_eq!(scan(Bound::Unbounded, Bound::Unbounded), 1);
    }
}
