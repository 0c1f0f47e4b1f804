//! The nemesis: a seeded schedule of faults, one at a time, each held for a while and then
//! undone, until the fault phase ends; then everything heals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dedup_cluster::raft_types::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::cluster::SimCluster;
use crate::cluster::NODES;
use crate::net::LinkQuality;
use crate::workload::Workload;

/// The fault kinds, by the names the summary uses.
pub const FAULT_KINDS: [&str; 14] = [
    "sim-partition-minority",
    "sim-partition-leader",
    "sim-partition-oneway",
    "sim-partition-ring",
    "sim-loss",
    "sim-delay",
    "sim-crash-leader",
    "sim-crash-follower",
    "sim-crash-all",
    "sim-crash-after-complete",
    "sim-clock-jump-forward",
    "sim-clock-jump-backward",
    "sim-snapshot-trigger",
    "sim-lagging-follower",
];

/// Which faults a schedule draws from, and how often (relative weights by kind).
#[derive(Debug, Clone)]
pub struct FaultMix {
    pub weights: BTreeMap<&'static str, u32>,
}

impl Default for FaultMix {
    /// Every kind equally likely.
    fn default() -> Self {
        FaultMix { weights: FAULT_KINDS.iter().map(|kind| (*kind, 1)).collect() }
    }
}

impl FaultMix {
    /// Only `kinds`, equally likely.
    pub fn only(kinds: &[&'static str]) -> FaultMix {
        FaultMix { weights: kinds.iter().map(|kind| (*kind, 1)).collect() }
    }

    fn draw(&self, rng: &mut StdRng) -> &'static str {
        let total: u32 = self.weights.values().sum();
        let mut pick = rng.gen_range(0..total.max(1));
        for (kind, weight) in &self.weights {
            if pick < *weight {
                return kind;
            }
            pick -= weight;
        }
        FAULT_KINDS[0]
    }
}

pub struct Nemesis {
    pub cluster: Arc<SimCluster>,
    pub workload: Arc<Workload>,
    pub rng: StdRng,
    pub mix: FaultMix,
    /// Faults applied, by kind (only those that really happened).
    pub applied: BTreeMap<&'static str, u64>,
    /// Errors restarting nodes (a node that cannot start again is a finding).
    pub errors: Vec<String>,
}

impl Nemesis {
    async fn sleep_ms(&mut self, min: u64, max: u64) {
        let ms = self.rng.gen_range(min..=max);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn note(&mut self, kind: &'static str) {
        *self.applied.entry(kind).or_default() += 1;
    }

    fn random_node(&mut self) -> NodeId {
        NODES[self.rng.gen_range(0..NODES.len())]
    }

    fn others(id: NodeId) -> Vec<NodeId> {
        NODES.iter().copied().filter(|n| *n != id).collect()
    }

    async fn restart(&mut self, id: NodeId) {
        if let Err(error) = self.cluster.start(id).await {
            self.errors.push(error);
        }
    }

    async fn restart_all(&mut self) {
        for id in self.cluster.down() {
            self.restart(id).await;
        }
    }

    fn isolate(&self, id: NodeId) {
        for other in Self::others(id) {
            self.cluster.net.cut_both(id, other);
        }
    }

    /// Runs faults until `end`, then heals the network and restarts every node.
    pub async fn run(mut self, end: Instant) -> Self {
        // Let the first leader be elected.
        self.sleep_ms(600, 1_500).await;
        while Instant::now() + Duration::from_millis(500) < end {
            let kind = self.mix.draw(&mut self.rng);
            self.apply(kind).await;
            self.sleep_ms(100, 700).await;
        }
        self.cluster.net.heal();
        self.restart_all().await;
        self
    }

    async fn apply(&mut self, kind: &'static str) {
        let leader = self.cluster.leader();
        match kind {
            "sim-partition-minority" => {
                let id = self.random_node();
                self.isolate(id);
                self.note(kind);
                self.sleep_ms(300, 3_000).await;
                self.cluster.net.heal();
            }
            "sim-partition-leader" => {
                let Some(leader) = leader else { return };
                self.isolate(leader);
                self.note(kind);
                self.sleep_ms(500, 3_500).await;
                self.cluster.net.heal();
            }
            "sim-partition-oneway" => {
                // Involve the leader when there is one: it cannot reach a follower, or a follower
                // cannot answer it (requests land, responses are lost).
                let a = leader.unwrap_or_else(|| self.random_node());
                let others = Self::others(a);
                let b = others[self.rng.gen_range(0..others.len())];
                if self.rng.gen_bool(0.5) {
                    self.cluster.net.cut(a, b);
                } else {
                    self.cluster.net.cut(b, a);
                }
                if self.rng.gen_bool(0.3) {
                    // The other follower too: the leader keeps sending but hears nothing back.
                    let c = others.into_iter().find(|n| *n != b).expect("three nodes");
                    self.cluster.net.cut(c, a);
                }
                self.note(kind);
                self.sleep_ms(300, 3_000).await;
                self.cluster.net.heal();
            }
            "sim-partition-ring" => {
                // `bridge` reaches both others; they cannot reach each other.
                let bridge = leader.filter(|_| self.rng.gen_bool(0.5)).unwrap_or_else(|| self.random_node());
                let others = Self::others(bridge);
                self.cluster.net.cut_both(others[0], others[1]);
                self.note(kind);
                self.sleep_ms(300, 3_000).await;
                self.cluster.net.heal();
            }
            "sim-loss" => {
                let loss = self.rng.gen_range(0.05..0.4);
                self.cluster.net.set_quality(LinkQuality { loss, ..LinkQuality::default() });
                self.note(kind);
                self.sleep_ms(500, 3_000).await;
                self.cluster.net.heal();
            }
            "sim-delay" => {
                let max = self.rng.gen_range(20..400);
                self.cluster.net.set_quality(LinkQuality { delay_ms_min: 1, delay_ms_max: max, loss: 0.0 });
                self.note(kind);
                self.sleep_ms(500, 3_000).await;
                self.cluster.net.heal();
            }
            "sim-crash-leader" => {
                let Some(leader) = leader else { return };
                if self.cluster.crash(leader, &mut self.rng).await {
                    self.note(kind);
                }
                self.sleep_ms(200, 3_000).await;
                self.restart(leader).await;
            }
            "sim-crash-follower" => {
                let id = leader.map(Self::others).and_then(|o| o.choose(&mut self.rng).copied());
                let id = id.unwrap_or_else(|| self.random_node());
                if self.cluster.crash(id, &mut self.rng).await {
                    self.note(kind);
                }
                self.sleep_ms(200, 3_000).await;
                self.restart(id).await;
            }
            "sim-crash-all" => {
                let mut order = NODES.to_vec();
                order.shuffle(&mut self.rng);
                let mut crashed = 0;
                for id in order {
                    crashed += u32::from(self.cluster.crash(id, &mut self.rng).await);
                    self.sleep_ms(0, 30).await;
                }
                if crashed == NODES.len() as u32 {
                    self.note(kind);
                }
                self.sleep_ms(100, 1_500).await;
                self.restart_all().await;
            }
            "sim-crash-after-complete" => {
                // Wait (up to 3 s) for a client to propose a complete to the leader.
                let deadline = Instant::now() + Duration::from_secs(3);
                let target = loop {
                    let (tx, rx) = oneshot::channel();
                    *self.workload.complete_hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
                    let proposed = tokio::time::timeout_at(deadline, rx).await;
                    self.workload.complete_hook.lock().unwrap_or_else(|p| p.into_inner()).take();
                    match proposed {
                        Ok(Ok(target)) if self.cluster.leader() == Some(target) => break Some(target),
                        Ok(Ok(_follower)) => continue,
                        _ => break None,
                    }
                };
                let Some(target) = target else { return };
                // Crash it while the complete is in flight: before, during or after its append,
                // replication, commit or apply.
                self.sleep_ms(0, 20).await;
                if self.cluster.crash(target, &mut self.rng).await {
                    self.note(kind);
                }
                self.sleep_ms(200, 2_000).await;
                self.restart(target).await;
            }
            "sim-clock-jump-forward" | "sim-clock-jump-backward" => {
                let Some(leader) = leader else { return };
                let step = self.rng.gen_range(1_000..=600_000i64);
                let step = if kind == "sim-clock-jump-forward" { step } else { -step };
                self.cluster.clock(leader).jump(step);
                self.note(kind);
            }
            "sim-snapshot-trigger" => {
                let targets = if self.rng.gen_bool(0.5) { NODES.to_vec() } else { vec![self.random_node()] };
                let mut triggered = false;
                for id in targets {
                    if let Some(node) = self.cluster.node(id) {
                        triggered |= node.raft.trigger().snapshot().await.is_ok();
                    }
                }
                if triggered {
                    self.note(kind);
                }
            }
            "sim-lagging-follower" => {
                // A follower cut off (or down) long enough that the leader purges the log it
                // needs, so it catches up by snapshot install.
                let Some(leader) = leader else { return };
                let follower = Self::others(leader)[self.rng.gen_range(0..2)];
                let crash = self.rng.gen_bool(0.5);
                if crash {
                    self.cluster.crash(follower, &mut self.rng).await;
                } else {
                    self.isolate(follower);
                }
                self.note(kind);
                self.sleep_ms(2_000, 4_000).await;
                if let Some(node) = self.cluster.node(leader) {
                    let _ = node.raft.trigger().snapshot().await;
                }
                self.sleep_ms(200, 600).await;
                self.cluster.net.heal();
                self.restart(follower).await;
            }
            other => unreachable!("unknown fault kind {other}"),
        }
    }
}
