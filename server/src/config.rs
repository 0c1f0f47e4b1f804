//! `dedupd` flags; each has a `DEDUP_*` environment variable.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dedupd",
    version,
    about = "One node of a dedup-ledger cluster (client, admin and Raft gRPC on one port)."
)]
pub struct Config {
    /// This node's id: a member of --peers.
    #[arg(long, env = "DEDUP_NODE_ID")]
    pub node_id: u64,

    /// Where to listen for gRPC (client, admin and Raft peers share it), HOST:PORT.
    #[arg(long, env = "DEDUP_LISTEN", default_value = "127.0.0.1:7101")]
    pub listen: String,

    /// The initial members and the HOST:PORT each is reached at: `1=HOST:PORT,2=HOST:PORT,...`.
    /// A fresh cluster forms from these by itself; a node with data rejoins with it.
    #[arg(long, env = "DEDUP_PEERS", value_parser = parse_peers)]
    pub peers: Peers,

    /// Addresses this node dials for some peers instead of their --peers / membership address,
    /// `ID=HOST:PORT,...` (a sidecar proxy or NAT between nodes; the fault suites put a proxy on
    /// every link). Clients are still told the membership address. Empty: dial the membership.
    #[arg(long, env = "DEDUP_PEER_DIAL", value_parser = parse_peer_dial, default_value = "")]
    pub peer_dial: Peers,

    /// Where this node keeps its Raft log, ledger and snapshots.
    #[arg(long, env = "DEDUP_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "DEDUP_HEARTBEAT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(20..=5_000))]
    pub heartbeat_ms: u64,

    /// Election timeout of node 1 in milliseconds; node N adds (N-1) x 300 ms. Must exceed
    /// three heartbeats.
    #[arg(long, env = "DEDUP_ELECTION_TIMEOUT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub election_timeout_ms: u64,

    /// How long a write may wait for a quorum before it is answered NO_QUORUM (outcome unknown).
    #[arg(long, env = "DEDUP_COMMIT_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub commit_timeout_ms: u64,

    /// Build a Raft snapshot (and purge the log behind it) after this many entries.
    #[arg(long, env = "DEDUP_SNAPSHOT_LOGS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    pub snapshot_logs: u64,

    /// Byte budget of the hot tier, the in-memory cache of COMPLETED records that answers
    /// duplicate claims without a Raft round.
    #[arg(long, env = "DEDUP_HOT_TIER_BYTES", default_value_t = crate::hot_tier::HOT_TIER_BYTES_DEFAULT, value_parser = clap::value_parser!(u64).range(0..=(1u64 << 40)))]
    pub hot_tier_bytes: u64,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `dedup_cluster=debug,info`.
    #[arg(long, env = "DEDUP_LOG", default_value = "info,openraft=warn")]
    pub log: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<u64, String>);

/// Like [`parse_peers`], but empty is allowed (no overrides).
pub fn parse_peer_dial(text: &str) -> Result<Peers, String> {
    if text.trim().is_empty() {
        return Ok(Peers(BTreeMap::new()));
    }
    parse_peers(text)
}

pub fn parse_peers(text: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item.split_once('=').ok_or_else(|| format!("peer {item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("peer id {id:?} is not a number"))?;
        if id == 0 {
            return Err("peer id 0 is reserved; ids start at 1".to_string());
        }
        let address = address.trim();
        if address.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            return Err(format!("peer {id} address {address:?} is not HOST:PORT"));
        }
        if peers.insert(id, address.to_string()).is_some() {
            return Err(format!("peer id {id} appears twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".to_string());
    }
    Ok(Peers(peers))
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if !self.peers.0.contains_key(&self.node_id) {
            return Err(format!(
                "--node-id {} is not in --peers (ids: {:?})",
                self.node_id,
                self.peers.0.keys().collect::<Vec<_>>()
            ));
        }
        if let Some(id) = self.peer_dial.0.keys().find(|id| !self.peers.0.contains_key(id)) {
            return Err(format!("--peer-dial names node {id}, which is not in --peers"));
        }
        if self.election_timeout_ms < 3 * self.heartbeat_ms {
            return Err(format!(
                "--election-timeout-ms {} must be at least three heartbeats (3 x {})",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_bad_input() {
        let peers = parse_peers("1=127.0.0.1:7101, 2=node-2.dedup:7101,3=[::1]:7103").unwrap();
        assert_eq!(peers.0.len(), 3);
        assert_eq!(peers.0[&2], "node-2.dedup:7101");
        assert!(parse_peers("1=127.0.0.1").unwrap_err().contains("HOST:PORT"));
        assert!(parse_peers("x=127.0.0.1:1").unwrap_err().contains("not a number"));
        assert!(parse_peers("1=a:1,1=b:2").unwrap_err().contains("twice"));
        assert!(parse_peers("0=a:1").unwrap_err().contains("reserved"));
        assert!(parse_peers("").unwrap_err().contains("no peers"));
    }

    #[test]
    fn node_must_be_a_peer() {
        let config =
            Config::try_parse_from(["dedupd", "--node-id", "4", "--peers", "1=127.0.0.1:7101", "--data-dir", "/tmp/x"])
                .unwrap();
        assert!(config.validate().unwrap_err().contains("not in --peers"));
    }

    #[test]
    fn peer_dial_is_optional_and_must_name_peers() {
        let base = ["dedupd", "--node-id", "1", "--peers", "1=127.0.0.1:7101,2=127.0.0.1:7102", "--data-dir", "/x"];
        let config = Config::try_parse_from(base).unwrap();
        assert!(config.peer_dial.0.is_empty());
        let config = Config::try_parse_from(base.iter().copied().chain(["--peer-dial", "2=127.0.0.1:9000"])).unwrap();
        assert_eq!(config.peer_dial.0[&2], "127.0.0.1:9000");
        config.validate().unwrap();
        let config = Config::try_parse_from(base.iter().copied().chain(["--peer-dial", "5=127.0.0.1:9000"])).unwrap();
        assert!(config.validate().unwrap_err().contains("--peer-dial names node 5"));
    }
}
