//! Parked CheckAndClaim calls (`wait_ms`): an in-flight duplicate waits on the node it reached
//! until an apply touches its key (it completed, or was released) or the holder's lease may have
//! lapsed, then claims again. Bounded per node and per key; a slot is freed when its call ends,
//! including when the client goes away (the call's future is dropped).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use dedup_cluster::ledger::LimitViolation;
use dedup_cluster::ledger::RecordKey;
use tokio::sync::Notify;

/// Calls one node may hold parked at once.
pub const WAITERS_PER_NODE_MAX: usize = 4096;
/// Calls that may wait on one key at once.
pub const WAITERS_PER_KEY_MAX: usize = 64;

#[derive(Default)]
struct Registry {
    /// Per key: the wake-up signal and how many calls wait on it.
    keys: HashMap<RecordKey, (Arc<Notify>, usize)>,
    parked: usize,
}

/// The parked calls of this node, by key.
#[derive(Clone, Default)]
pub struct Waiters {
    registry: Arc<Mutex<Registry>>,
    /// Set when the node shuts down: parked calls answer what they have (IN_PROGRESS) at once
    /// instead of holding the shutdown's grace period.
    closing: Arc<std::sync::atomic::AtomicBool>,
}

/// A parked call's place; freed on drop.
pub struct WaitSlot {
    registry: Arc<Mutex<Registry>>,
    key: RecordKey,
    /// Wakes at every apply that writes the key. Take `notified()` (and `enable` it) before
    /// looking at the key, so a wake in between is not lost.
    pub notify: Arc<Notify>,
}

impl Waiters {
    /// Takes a slot for a call waiting on `key`, or refuses with WAITERS_FULL naming the cap.
    pub fn park(&self, key: &RecordKey) -> Result<WaitSlot, LimitViolation> {
        let full = |message: String| LimitViolation { reason: "WAITERS_FULL".to_string(), message };
        let mut registry = self.registry.lock().expect("waiters lock");
        if registry.parked >= WAITERS_PER_NODE_MAX {
            return Err(full(format!(
                "{} calls already wait on this node; the limit is {WAITERS_PER_NODE_MAX} (WAITERS_PER_NODE_MAX)",
                registry.parked
            )));
        }
        let (notify, parked) = registry.keys.entry(key.clone()).or_insert_with(|| (Arc::new(Notify::new()), 0));
        if *parked >= WAITERS_PER_KEY_MAX {
            return Err(full(format!(
                "{parked} calls already wait on key {key}; the limit is {WAITERS_PER_KEY_MAX} (WAITERS_PER_KEY_MAX)"
            )));
        }
        *parked += 1;
        let notify = notify.clone();
        registry.parked += 1;
        Ok(WaitSlot { registry: self.registry.clone(), key: key.clone(), notify })
    }

    /// Wakes every call waiting on `key` (an apply wrote it).
    pub fn wake(&self, key: &RecordKey) {
        if let Some((notify, _)) = self.registry.lock().expect("waiters lock").keys.get(key) {
            notify.notify_waiters();
        }
    }

    /// Wakes every parked call (the ledger was replaced by a snapshot).
    pub fn wake_all(&self) {
        for (notify, _) in self.registry.lock().expect("waiters lock").keys.values() {
            notify.notify_waiters();
        }
    }

    /// Ends every wait: parked calls answer at once, and later ones do not wait.
    pub fn close(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake_all();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Calls parked on this node now.
    pub fn parked(&self) -> usize {
        self.registry.lock().expect("waiters lock").parked
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut registry = self.registry.lock().expect("waiters lock");
        registry.parked -= 1;
        let last = match registry.keys.get_mut(&self.key) {
            Some((_, parked)) => {
                *parked -= 1;
                *parked == 0
            }
            None => false,
        };
        if last {
            registry.keys.remove(&self.key);
        }
    }
}

/// What this node does after each apply: keep the hot tier coherent and wake the calls parked
/// on the keys the apply wrote.
pub struct NodeObserver {
    pub hot_tier: crate::hot_tier::HotTier,
    pub waiters: Waiters,
}

impl dedup_cluster::store::ApplyObserver for NodeObserver {
    fn records_applied(&self, records: &mut dyn Iterator<Item = (&RecordKey, Option<&dedup_cluster::ledger::Record>)>) {
        for (key, record) in records {
            self.hot_tier.observe(key, record);
            self.waiters.wake(key);
        }
    }

    fn ledger_replaced(&self) {
        dedup_cluster::store::ApplyObserver::ledger_replaced(&self.hot_tier);
        self.waiters.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_key_and_slots_are_freed_on_drop() {
        let waiters = Waiters::default();
        let key = RecordKey::new("ns", "hot");
        let slots: Vec<WaitSlot> = (0..WAITERS_PER_KEY_MAX).map(|_| waiters.park(&key).unwrap()).collect();
        let refused = waiters.park(&key).err().expect("the per-key cap");
        assert_eq!(refused.reason, "WAITERS_FULL");
        assert!(refused.message.contains("WAITERS_PER_KEY_MAX"));
        // Another key still has room.
        let other = waiters.park(&RecordKey::new("ns", "cold")).unwrap();
        assert_eq!(waiters.parked(), WAITERS_PER_KEY_MAX + 1);
        drop(slots);
        drop(other);
        assert_eq!(waiters.parked(), 0, "a dropped call frees its slot");
        assert!(waiters.park(&key).is_ok());
    }

    #[tokio::test]
    async fn a_wake_of_the_key_reaches_a_registered_waiter() {
        let waiters = Waiters::default();
        let key = RecordKey::new("ns", "k");
        let slot = waiters.park(&key).unwrap();
        let notified = slot.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // The wake comes after registration and before the await: it must not be lost.
        waiters.wake(&key);
        tokio::time::timeout(std::time::Duration::from_secs(1), notified).await.expect("woken");
    }
}
