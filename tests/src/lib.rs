//! Harness for multi-process tests: real `dedupd` processes on loopback, each with its own data
//! folder, that a test can kill with SIGKILL and restart.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use dedup_proto::v1::admin_client::AdminClient;
use dedup_proto::v1::NodeStatusRequest;
use dedup_proto::v1::NodeStatusResponse;

/// How long a cluster may take to elect a leader (elections take about 1-2 s; slack for busy CI).
pub const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Path of a binary of this workspace, built by `cargo build --bins` (the test command does it).
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("{}_BIN", name.to_uppercase())) {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps; binaries in target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile> directory");
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} is missing: build the binaries first (`cargo build --bins`)", path.display());
    path
}

/// Ports that were free a moment ago (bound and released).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

pub mod docker;
pub mod proxy;
pub mod schedule;
pub mod workload;

use proxy::LinkProxies;
use proxy::LinkProxy;

/// How a test cluster is started.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `dedupd` flags every node starts with.
    pub args: Vec<String>,
    /// Put a [`LinkProxy`] on every ordered pair of nodes, so links can be cut.
    pub proxies: bool,
    /// Extra environment of every `dedupd` (e.g. `DEDUP_BUG_ZOO` in a bug-zoo build).
    pub env: Vec<(String, String)>,
    /// Nodes that keep their data in a given folder (e.g. a size-limited mount) instead of one
    /// under the cluster's temporary root. Each folder must exist; it is emptied before each
    /// start attempt, never removed. Its log file is still `<folder>.log`, next to it.
    pub data_dirs: BTreeMap<u64, PathBuf>,
    /// Give every node a Prometheus endpoint (`--metrics-listen`) on a free port of its own;
    /// see [`Node::metrics_address`].
    pub metrics: bool,
}

pub struct Node {
    pub id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    /// `HOST:PORT` of the node's metrics endpoint, when started with [`ClusterOptions::metrics`].
    pub metrics_address: Option<String>,
    /// Flags of this node only, after the cluster's (e.g. `--join` of a node added later).
    pub extra_args: Vec<String>,
    /// `--peers` of this node when it is not the cluster's (a node added by [`Cluster::add_node`]).
    peers: Option<String>,
    process: Option<Child>,
}

/// A three-node cluster of real `dedupd` processes.
pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    peers: String,
    options: ClusterOptions,
    /// The per-link proxies, when started with [`ClusterOptions::proxies`].
    pub links: Option<LinkProxies>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Starts three nodes and waits until one of them leads.
    pub async fn start() -> Cluster {
        Cluster::start_with(&[]).await
    }

    /// Like [`Cluster::start`], every node with the extra `dedupd` flags `args`.
    ///
    /// Ports are picked free and released before `dedupd` binds them, so a test running in
    /// parallel can take one first; a node that exits at start is retried on fresh ports.
    pub async fn start_with(args: &[&str]) -> Cluster {
        Cluster::start_with_data_dirs(args, &BTreeMap::new()).await
    }

    /// Like [`Cluster::start_with`], but node `id` of `data_dirs` keeps its data in the given
    /// folder (e.g. a size-limited mount) instead of one under the cluster's temporary root. The
    /// folder must exist; it is emptied before each start attempt, never removed. Its log file is
    /// still `<folder>.log`, next to it (outside a mount at `<folder>`).
    pub async fn start_with_data_dirs(args: &[&str], data_dirs: &BTreeMap<u64, PathBuf>) -> Cluster {
        Cluster::start_options(ClusterOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            data_dirs: data_dirs.clone(),
            ..Default::default()
        })
        .await
    }

    /// Starts three nodes as `options` say and waits until one of them leads.
    pub async fn start_options(options: ClusterOptions) -> Cluster {
        const START_ATTEMPTS: usize = 3;
        for attempt in 1..=START_ATTEMPTS {
            for dir in options.data_dirs.values() {
                for entry in std::fs::read_dir(dir).expect("a given data folder must exist") {
                    let path = entry.expect("data folder entry").path();
                    let removed =
                        if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                    removed.expect("emptying a given data folder");
                }
            }
            let mut cluster = Cluster::spawn(options.clone());
            // A node that cannot bind its port exits at once.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let exited: Vec<u64> = (1..=3).filter(|id| !cluster.is_running(*id)).collect();
            if exited.is_empty() {
                let leader = cluster.wait_for_leader(None).await;
                cluster.wait_until_all_follow(leader).await;
                if (1..=3).all(|id| cluster.is_running(id)) {
                    return cluster;
                }
            }
            eprintln!("cluster start attempt {attempt} failed (a node exited):\n{}", cluster.all_logs());
        }
        panic!("could not start a three-node cluster in {START_ATTEMPTS} attempts");
    }

    fn spawn(options: ClusterOptions) -> Cluster {
        let root = tempfile::tempdir().expect("temporary directory");
        let ports = free_ports(if options.metrics { 6 } else { 3 });
        let nodes: BTreeMap<u64, Node> = (1..=3u64)
            .map(|id| {
                let node = Node {
                    id,
                    address: format!("127.0.0.1:{}", ports[id as usize - 1]),
                    data_dir: options
                        .data_dirs
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| root.path().join(format!("node-{id}"))),
                    metrics_address: options.metrics.then(|| format!("127.0.0.1:{}", ports[id as usize + 2])),
                    extra_args: Vec::new(),
                    peers: None,
                    process: None,
                };
                (id, node)
            })
            .collect();
        let peers = nodes.values().map(|n| format!("{}={}", n.id, n.address)).collect::<Vec<_>>().join(",");
        let links = options.proxies.then(|| {
            let mut links = LinkProxies::default();
            for from in 1..=3u64 {
                for to in (1..=3u64).filter(|to| *to != from) {
                    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
                    links.insert(from, to, LinkProxy::start(listener, nodes[&to].address.clone()));
                }
            }
            links
        });
        let mut cluster = Cluster { nodes, peers, options, links, _root: root };
        for id in 1..=3 {
            cluster.start_node(id);
        }
        cluster
    }

    /// Waits until every running node names `leader` as its leader, so that a follower can
    /// forward from the first call on.
    pub async fn wait_until_all_follow(&mut self, leader: u64) {
        let deadline = Instant::now() + LEADER_WAIT;
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            while self.is_running(id) {
                if self.status(id).await.is_ok_and(|s| s.leader_id == leader) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {id} does not follow leader {leader}:\n{}", self.all_logs());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.address.clone()).collect()
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.nodes[&id].address.clone()
    }

    /// The `--peers` flag the three nodes start with (`1=HOST:PORT,2=...,3=...`).
    pub fn peers(&self) -> &str {
        &self.peers
    }

    /// Starts an extra node `id` (beyond the three) on a free port, with a pristine data folder
    /// of its own, `--peers` naming the cluster's nodes and itself, the cluster's flags, then
    /// `args` (e.g. `--join`, to wait for `dedupctl member add`). Returns its address. From then
    /// on it is one of [`Cluster::nodes`]: [`Cluster::kill_node`], [`Cluster::start_node`] (with
    /// the same flags), its log, its status.
    pub fn add_node(&mut self, id: u64, args: &[&str]) -> String {
        let address = self.define_node(id, args);
        self.start_node(id);
        address
    }

    /// Like [`Cluster::add_node`], but does not start the node: it gets its address (a port free
    /// a moment ago), data folder and flags; [`Cluster::start_node`] starts it.
    pub fn define_node(&mut self, id: u64, args: &[&str]) -> String {
        assert!(!self.nodes.contains_key(&id), "node {id} already exists");
        assert!(self.links.is_none(), "add_node does not put proxies on the new node's links");
        let address = format!("127.0.0.1:{}", free_ports(1)[0]);
        let node = Node {
            id,
            address: address.clone(),
            data_dir: self._root.path().join(format!("node-{id}")),
            metrics_address: None,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            peers: Some(format!("{},{id}={address}", self.peers)),
            process: None,
        };
        self.nodes.insert(id, node);
        address
    }

    /// Starts (or restarts) a node with its existing data folder.
    pub fn start_node(&mut self, id: u64) {
        let dial: Vec<String> =
            self.links.as_ref().map(|links| vec!["--peer-dial".to_string(), links.dial_flag(id)]).unwrap_or_default();
        let (args, env) = (&self.options.args, &self.options.env);
        let node = self.nodes.get_mut(&id).expect("node id");
        assert!(node.process.is_none(), "node {id} is already running");
        let peers = node.peers.clone().unwrap_or_else(|| self.peers.clone());
        let metrics: Vec<&str> =
            node.metrics_address.as_deref().map(|address| vec!["--metrics-listen", address]).unwrap_or_default();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.with_extension("log"))
            .expect("node log file");
        let child = Command::new(workspace_binary("dedupd"))
            .args(["--node-id", &id.to_string(), "--listen", &node.address, "--peers", &peers])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(args)
            .args(&node.extra_args)
            .args(&dial)
            .args(&metrics)
            .env("DEDUP_LOG", "info,openraft=warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn dedupd");
        node.process = Some(child);
    }

    /// SIGKILL: no shutdown path runs, unflushed state is lost.
    pub fn kill_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node id");
        let mut child = node.process.take().unwrap_or_else(|| panic!("node {id} is not running"));
        child.kill().expect("SIGKILL dedupd");
        child.wait().expect("reap dedupd");
    }

    /// SIGSTOP: the process stays alive but does nothing (a GC pause, a stalled VM).
    pub fn pause_node(&mut self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// SIGCONT after [`Cluster::pause_node`].
    pub fn resume_node(&mut self, id: u64) {
        self.signal(id, "-CONT");
    }

    /// SIGTERM: the node shuts down in order by itself. Reap it with [`Cluster::wait_exit`].
    pub fn terminate_node(&mut self, id: u64) {
        self.signal(id, "-TERM");
    }

    fn signal(&mut self, id: u64, signal: &str) {
        let node = self.nodes.get_mut(&id).expect("node id");
        let pid = node.process.as_ref().unwrap_or_else(|| panic!("node {id} is not running")).id();
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        let node = self.nodes.get_mut(&id).expect("node id");
        match node.process.as_mut() {
            Some(child) => child.try_wait().expect("poll dedupd").is_none(),
            None => false,
        }
    }

    /// Waits up to `within` for node `id` to exit by itself. On exit the process is reaped (the
    /// node can be started again) and its exit status returned; `None` if it still runs.
    pub async fn wait_exit(&mut self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let node = self.nodes.get_mut(&id).expect("node id");
        loop {
            let child = node.process.as_mut().unwrap_or_else(|| panic!("node {id} is not running"));
            if let Some(status) = child.try_wait().expect("poll dedupd") {
                node.process = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The whole log (stdout and stderr) of a node, across its restarts.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.nodes[&id].data_dir.with_extension("log")).unwrap_or_default()
    }

    /// The last lines of a node's log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.nodes[&id].data_dir.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub async fn status(&self, id: u64) -> Result<NodeStatusResponse, String> {
        node_status(&self.nodes[&id].address).await
    }

    /// Nodes whose process ended by itself (not killed by the test): a crash or a fail-stop.
    pub fn exited_by_themselves(&mut self) -> Vec<u64> {
        self.nodes
            .values_mut()
            .filter_map(|node| {
                let exited =
                    node.process.as_mut().is_some_and(|child| child.try_wait().expect("poll dedupd").is_some());
                exited.then_some(node.id)
            })
            .collect()
    }

    /// How many lines of node `id`'s log (over all its runs) contain `text`.
    pub fn log_count(&self, id: u64, text: &str) -> usize {
        std::fs::read_to_string(self.nodes[&id].data_dir.with_extension("log"))
            .map_or(0, |log| log.lines().filter(|line| line.contains(text)).count())
    }

    /// Whether node `id`'s log shows a Rust panic (an assertion stopped it).
    pub fn panicked(&self, id: u64) -> bool {
        std::fs::read_to_string(self.nodes[&id].data_dir.with_extension("log"))
            .is_ok_and(|log| log.contains("panicked at"))
    }

    /// Like [`Cluster::wait_for_leader`], but gives up after `within` instead of panicking.
    pub async fn try_wait_for_leader(&mut self, not: Option<u64>, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                if Some(id) == not || !self.is_running(id) {
                    continue;
                }
                if self.status(id).await.is_ok_and(|status| status.role == "leader") {
                    return Some(id);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a running node other than `not` reports itself leader, and returns its id.
    pub async fn wait_for_leader(&mut self, not: Option<u64>) -> u64 {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                if Some(id) == not || !self.is_running(id) {
                    continue;
                }
                if let Ok(status) = self.status(id).await {
                    if status.role == "leader" {
                        return id;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {LEADER_WAIT:?}:\n{}", self.all_logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(status) = self.status(id).await {
                if status.applied_index >= index {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node {id} did not apply index {index} within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn all_logs(&self) -> String {
        self.nodes.keys().map(|id| format!("--- node {id} ---\n{}", self.log_tail(*id))).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.process.take() {
                // A paused process must be resumed to die promptly on some systems.
                let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub async fn node_status(address: &str) -> Result<NodeStatusResponse, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2));
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    AdminClient::new(channel).node_status(NodeStatusRequest {}).await.map(|r| r.into_inner()).map_err(|e| e.to_string())
}

/// Bound of one [`dedupctl`] run (its own deadlines are shorter; this only catches a hang).
pub const DEDUPCTL_WAIT: Duration = Duration::from_secs(90);

/// Runs `dedupctl --endpoints ENDPOINTS ARGS` as a process without blocking the runtime, and
/// returns its exit code (-1: killed by a signal), stdout and stderr. Panics if it runs longer
/// than [`DEDUPCTL_WAIT`] (the process is killed).
pub async fn dedupctl(endpoints: &[String], args: &[&str]) -> (i32, String, String) {
    let run = tokio::process::Command::new(workspace_binary("dedupctl"))
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEDUPCTL_WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("dedupctl {args:?} ran longer than {DEDUPCTL_WAIT:?}"))
        .expect("run dedupctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Raw gRPC access to one node's ledger API, for tests that pin the wire contract.
pub async fn ledger(address: &str) -> dedup_proto::v1::ledger_client::LedgerClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        // Loopback connects are quick, but a burst of hundreds of them on a loaded two-core
        // machine can overflow the accept backlog and wait for a SYN retransmit (1 s).
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    dedup_proto::v1::ledger_client::LedgerClient::new(channel)
}

/// The `google.rpc.ErrorInfo` reason of an error status ("" when it has none).
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

/// An `ErrorInfo` metadata value of an error status.
pub fn error_metadata(status: &tonic::Status, key: &str) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_details_error_info().and_then(|info| info.metadata.get(key).cloned())
}
