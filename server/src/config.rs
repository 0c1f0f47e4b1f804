//! `dedupd` settings: each is a flag with a `DEDUP_*` environment variable twin, and may also be
//! given in a TOML config file (`--config FILE`) under the flag's name. A flag on the command
//! line wins over its environment variable, which wins over the file, which wins over the
//! default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::CommandFactory;
use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dedupd",
    version,
    about = "One node of a dedup-ledger cluster (client, admin and Raft gRPC on one port).",
    after_help = "Restoring a stopped node's data folder from a backup: `dedupd restore --help`."
)]
pub struct Config {
    /// This node's id (1, 2, ...): a member of --peers. Or use --node-id-from-hostname.
    #[arg(long, env = "DEDUP_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: Option<u64>,

    /// Take the node id from this host's name `NAME-ORDINAL` (a StatefulSet pod): id =
    /// ORDINAL + 1, so every pod runs the same command.
    #[arg(long, env = "DEDUP_NODE_ID_FROM_HOSTNAME", conflicts_with = "node_id")]
    pub node_id_from_hostname: bool,

    /// Where to listen for gRPC (client, admin and Raft peers share it), HOST:PORT.
    #[arg(long, env = "DEDUP_LISTEN", default_value = "127.0.0.1:7101")]
    pub listen: String,

    /// The initial members and the HOST:PORT each is reached at: `1=HOST:PORT,2=HOST:PORT,...`.
    /// A fresh cluster forms from these by itself; a node with data rejoins with it.
    #[arg(long, env = "DEDUP_PEERS", value_parser = parse_peers)]
    pub peers: Option<Peers>,

    /// Peers by stable name instead of --peers: HOST:PORT with `{ordinal}` in it, e.g.
    /// `dedup-{ordinal}.dedup-peers.prod.svc.cluster.local:7101` (a headless Service). Node N
    /// is reached at ordinal N-1. Needs --initial-members.
    #[arg(long, env = "DEDUP_PEER_PATTERN", conflicts_with = "peers")]
    pub peer_pattern: Option<String>,

    /// With --peer-pattern: the first membership is nodes 1..=N (ordinals 0..N-1). It must
    /// never change after the cluster formed; a node with a higher id (a scaled-up pod) joins
    /// as with --join and waits for `dedupctl member add`.
    #[arg(long, env = "DEDUP_INITIAL_MEMBERS", requires = "peer_pattern", value_parser = clap::value_parser!(u64).range(1..=INITIAL_MEMBERS_MAX))]
    pub initial_members: Option<u64>,

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

    /// Election timeout of node 1 in milliseconds; node N adds (N-1) x 100 ms. Must exceed
    /// three heartbeats; above 200 the first election after a leader crash wins at once.
    #[arg(long, env = "DEDUP_ELECTION_TIMEOUT_MS", default_value_t = dedup_cluster::node::ELECTION_TIMEOUT_BASE_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(100..=60_000))]
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

    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`), HOST:PORT. Unset: no
    /// metrics endpoint.
    #[arg(long, env = "DEDUP_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `dedup_cluster=debug,info`.
    #[arg(long, env = "DEDUP_LOG", default_value = "info,openraft=warn")]
    pub log: String,

    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// collectors.
    #[arg(long, env = "DEDUP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Join a running cluster instead of forming one: a pristine node started with --join waits
    /// until the leader adds it (`dedupctl member add`, which prints the flags to use). Ignored
    /// by a node that already has data.
    #[arg(long, env = "DEDUP_JOIN")]
    pub join: bool,

    /// On SIGTERM or Ctrl-C: how long in-flight calls may take to finish after the node stops
    /// taking new ones (and, on a leader, after it handed leadership over), in milliseconds.
    #[arg(long, env = "DEDUP_SHUTDOWN_GRACE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,

    /// A TOML file of settings, keyed by flag name (`node-id = 1`, `peers = "1=..."`). Flags and
    /// DEDUP_* variables override it.
    #[arg(long, env = "DEDUP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Largest first membership --initial-members may name (Raft clusters are 3 or 5 voters).
pub const INITIAL_MEMBERS_MAX: u64 = 9;

/// Who this node is and whom it starts with, from --node-id / --node-id-from-hostname and
/// --peers / --peer-pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: u64,
    /// The first membership (and this node, when it joins later): id -> HOST:PORT.
    pub peers: BTreeMap<u64, String>,
    /// Wait to be added instead of forming a cluster (--join, or an id beyond
    /// --initial-members).
    pub join: bool,
}

/// The id of a StatefulSet pod named `NAME-ORDINAL`: ORDINAL + 1.
pub fn node_id_from_hostname(hostname: &str) -> Result<u64, String> {
    let hostname = hostname.trim();
    // A pod's hostname is its name; a FQDN would carry the service after the first dot.
    let name = hostname.split('.').next().unwrap_or(hostname);
    let ordinal = name
        .rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse::<u64>().ok())
        .ok_or_else(|| format!("hostname {hostname:?} does not end in -ORDINAL (a StatefulSet pod name)"))?;
    ordinal.checked_add(1).ok_or_else(|| format!("hostname {hostname:?}: ordinal too large"))
}

/// This machine's host name: the kernel's, else `$HOSTNAME`.
pub(crate) fn hostname() -> Result<String, String> {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        if !name.trim().is_empty() {
            return Ok(name.trim().to_string());
        }
    }
    std::env::var("HOSTNAME")
        .map_err(|_| "cannot read this host's name (/proc/sys/kernel/hostname, $HOSTNAME)".to_string())
}

/// The address of node `id` under `pattern` (`{ordinal}` = id - 1).
pub fn pattern_address(pattern: &str, id: u64) -> Result<String, String> {
    if !pattern.contains("{ordinal}") {
        return Err(format!("--peer-pattern {pattern:?} has no {{ordinal}}"));
    }
    let address = pattern.replace("{ordinal}", &(id - 1).to_string());
    check_address(&address).map_err(|e| format!("--peer-pattern: {e}"))?;
    Ok(address)
}

impl Config {
    /// Resolves the node id and first membership; a hostname is read only with
    /// --node-id-from-hostname.
    pub fn identity(&self) -> Result<Identity, String> {
        self.identity_with(hostname)
    }

    fn identity_with(&self, hostname: impl FnOnce() -> Result<String, String>) -> Result<Identity, String> {
        let node_id = match self.node_id {
            Some(id) => id,
            None if self.node_id_from_hostname => node_id_from_hostname(&hostname()?)?,
            None => return Err("--node-id is required (or --node-id-from-hostname in a StatefulSet)".to_string()),
        };
        let mut join = self.join;
        let peers = match (&self.peers, &self.peer_pattern, self.initial_members) {
            (Some(peers), _, _) => peers.0.clone(),
            (None, Some(pattern), Some(members)) => {
                let mut peers = BTreeMap::new();
                for id in 1..=members {
                    peers.insert(id, pattern_address(pattern, id)?);
                }
                if let std::collections::btree_map::Entry::Vacant(entry) = peers.entry(node_id) {
                    // A pod beyond the first membership: it joins when an operator adds it.
                    entry.insert(pattern_address(pattern, node_id)?);
                    join = true;
                }
                peers
            }
            (None, Some(_), None) => return Err("--peer-pattern needs --initial-members N".to_string()),
            (None, None, _) => return Err("--peers is required (or --peer-pattern with --initial-members)".to_string()),
        };
        if !peers.contains_key(&node_id) {
            return Err(format!("node id {node_id} is not in --peers (ids: {:?})", peers.keys().collect::<Vec<_>>()));
        }
        if let Some(id) = self.peer_dial.0.keys().find(|id| !peers.contains_key(id)) {
            return Err(format!("--peer-dial names node {id}, which is not in --peers"));
        }
        Ok(Identity { node_id, peers, join })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Largest config file read (a settings file, not data).
pub const CONFIG_FILE_BYTES_MAX: u64 = 64 * 1024;

impl Config {
    /// Parses the command line and environment, filling settings neither gives from the
    /// `--config` file (if any). Errors are clap errors (usage, exit 2), naming the file.
    pub fn load_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let first = Config::try_parse_from(&args);
        let path = match &first {
            Ok(config) => config.config.clone(),
            // Required settings may come from the file: find --config without clap's checks.
            Err(_) => config_path_of(&args),
        };
        let Some(path) = path else { return first };
        let extra = file_args(&path, &args).map_err(|message| {
            Config::command()
                .error(clap::error::ErrorKind::InvalidValue, format!("--config {}: {message}", path.display()))
        })?;
        Config::try_parse_from(args.iter().cloned().chain(extra))
    }
}

fn config_path_of(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1).map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("DEDUP_CONFIG").map(PathBuf::from)
}

/// `--name=value` arguments for the file's settings that neither the command line nor the
/// environment sets. Unknown names are an error: a typo must not pass silently.
fn file_args(path: &std::path::Path, args: &[std::ffi::OsString]) -> Result<Vec<std::ffi::OsString>, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > CONFIG_FILE_BYTES_MAX {
        return Err(format!("the file is {size} bytes; the limit is {CONFIG_FILE_BYTES_MAX} (CONFIG_FILE_BYTES_MAX)"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let command = Config::command();
    let given: Vec<String> = args.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let mut extra = Vec::new();
    for (name, value) in table {
        let flag = name.replace('_', "-");
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(flag.as_str())) else {
            return Err(format!("unknown setting {name:?} (settings are the long flag names of `dedupd --help`)"));
        };
        if flag == "config" {
            return Err("a config file cannot name another config file".to_string());
        }
        let on_command_line = given.iter().any(|g| *g == format!("--{flag}") || g.starts_with(&format!("--{flag}=")));
        let in_environment = arg.get_env().is_some_and(|env| std::env::var_os(env).is_some());
        if on_command_line || in_environment {
            continue;
        }
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(true) if !arg.get_action().takes_values() => {
                extra.push(format!("--{flag}").into());
                continue;
            }
            toml::Value::Boolean(false) if !arg.get_action().takes_values() => continue,
            toml::Value::Boolean(flag_value) => flag_value.to_string(),
            other => {
                return Err(format!("setting {name:?} is a {}; give a string, number or boolean", other.type_str()))
            }
        };
        extra.push(format!("--{flag}={text}").into());
    }
    Ok(extra)
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

/// `HOST:PORT` with a non-empty host and a numeric port.
pub fn check_address(address: &str) -> Result<(), String> {
    if address.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        return Err(format!("address {address:?} is not HOST:PORT"));
    }
    Ok(())
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
        check_address(address).map_err(|e| format!("peer {id}: {e}"))?;
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
        self.identity()?;
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
        let config = Config::try_parse_from(["dedupd", "--peers", "1=127.0.0.1:7101", "--data-dir", "/tmp/x"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--node-id is required"));
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

    #[test]
    fn a_config_file_fills_what_flags_and_env_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedupd.toml");
        std::fs::write(
            &path,
            "node-id = 2\npeers = \"1=127.0.0.1:7101,2=127.0.0.1:7102\"\ndata_dir = \"/data\"\nheartbeat-ms = 50\njoin = true\n",
        )
        .unwrap();
        let config = Config::load_from(["dedupd", "--config", path.to_str().unwrap(), "--heartbeat-ms", "70"]).unwrap();
        assert_eq!(config.node_id, Some(2));
        assert_eq!(config.data_dir, PathBuf::from("/data"));
        assert_eq!(config.heartbeat_ms, 70, "the command line wins over the file");
        assert!(config.join);
        config.validate().unwrap();
    }

    #[test]
    fn a_config_file_with_an_unknown_or_bad_setting_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "node-id = 1\nheartbeat = 5\n").unwrap();
        let error = Config::load_from(["dedupd", "--config", path.to_str().unwrap()]).unwrap_err().to_string();
        assert!(error.contains("unknown setting \"heartbeat\""), "{error}");
        std::fs::write(&path, "peers = [1, 2]\n").unwrap();
        let error = Config::load_from(["dedupd", "--config", path.to_str().unwrap()]).unwrap_err().to_string();
        assert!(error.contains("give a string, number or boolean"), "{error}");
        std::fs::write(&path, "heartbeat-ms = 1\nnode-id = 1\npeers = \"1=a:1\"\ndata-dir = \"/d\"\n").unwrap();
        let error = Config::load_from(["dedupd", "--config", path.to_str().unwrap()]).unwrap_err().to_string();
        assert!(error.contains("heartbeat-ms"), "a value outside its range names the flag: {error}");
    }

    #[test]
    fn statefulset_pods_take_their_id_from_the_hostname_and_peers_from_the_pattern() {
        assert_eq!(node_id_from_hostname("dedup-ledger-0"), Ok(1));
        assert_eq!(node_id_from_hostname("dedup-ledger-2.dedup-peers.ns.svc"), Ok(3));
        assert!(node_id_from_hostname("dedup").unwrap_err().contains("-ORDINAL"));
        let args = [
            "dedupd",
            "--node-id-from-hostname",
            "--peer-pattern",
            "db-{ordinal}.db-peers:7101",
            "--initial-members",
            "3",
            "--data-dir",
            "/d",
        ];
        let config = Config::try_parse_from(args).unwrap();
        let identity = config.identity_with(|| Ok("db-1".to_string())).unwrap();
        assert_eq!(identity.node_id, 2);
        assert_eq!(identity.peers.len(), 3);
        assert_eq!(identity.peers[&1], "db-0.db-peers:7101");
        assert!(!identity.join);
        // A scaled-up pod is not in the first membership: it joins, at its pattern address.
        let identity = config.identity_with(|| Ok("db-3".to_string())).unwrap();
        assert_eq!((identity.node_id, identity.join), (4, true));
        assert_eq!(identity.peers[&4], "db-3.db-peers:7101");
        assert_eq!(identity.peers.len(), 4);
        // Misuse is refused with the flag named.
        let no_members =
            Config::try_parse_from(["dedupd", "--node-id", "1", "--peer-pattern", "a-{ordinal}:1", "--data-dir", "/d"]);
        assert!(no_members.unwrap().identity().unwrap_err().contains("--initial-members"));
        let no_ordinal = Config::try_parse_from([
            "dedupd",
            "--node-id",
            "1",
            "--peer-pattern",
            "a:1",
            "--initial-members",
            "1",
            "--data-dir",
            "/d",
        ]);
        assert!(no_ordinal.unwrap().identity().unwrap_err().contains("{ordinal}"));
        assert!(Config::try_parse_from([
            "dedupd",
            "--node-id",
            "1",
            "--node-id-from-hostname",
            "--peers",
            "1=a:1",
            "--data-dir",
            "/d"
        ])
        .is_err());
    }
}
