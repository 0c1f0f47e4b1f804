//! Harness for the container fault suite (`tests/tests/cluster_docker.rs`): three `dedupd`
//! containers of the `dedup-ledger:dev` image (`scripts/build-image.sh`) on a Docker network of
//! their own, each with its data on a named volume. Every node runs the same command: its id
//! from its hostname (`NAME-ORDINAL`), its peers by container name (`--peer-pattern`).
//!
//! The test process reaches node N through a TCP forwarder of its own on 127.0.0.1 that dials
//! the container's current address on the network: a container that is restarted, replaced or
//! reconnected may get another address, the forwarder follows it, and the workload keeps one
//! endpoint per node. A disconnected or paused node is still forwarded to, so clients time out
//! on it as they would on a partitioned host.
//!
//! Everything a cluster creates (network, containers, volumes) is named `ddt-<run id>...` and
//! labelled with the test process's pid; it is removed on drop, and leftovers of a test process
//! that no longer runs are removed when the next cluster starts. Nothing else is touched.

use std::collections::BTreeMap;
use std::net::TcpListener as StdTcpListener;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use dedup_proto::v1::NodeStatusResponse;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node_status;

/// The image the suite runs (`DEDUP_IMAGE` overrides it).
pub const IMAGE_DEFAULT: &str = "dedup-ledger:dev";
/// Prefix of every name the suite creates.
pub const PREFIX: &str = "ddt-";
/// Label on everything the suite creates, and the label with the creating test process's pid.
const LABEL: &str = "dedup-ledger-test=cluster-docker";
const PID_LABEL: &str = "dedup-ledger-test.pid";
/// The port `dedupd` listens on inside a container (client, admin and Raft gRPC).
const GRPC_PORT: u16 = 7101;
/// Bound of one `docker` command (a `docker stop` waits up to its grace period, 25 s).
const DOCKER_WAIT: Duration = Duration::from_secs(60);
/// How long the forwarder waits to connect to a container.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a cluster may take to form, a restarted node to answer, a leader to be elected.
pub const READY_WAIT: Duration = Duration::from_secs(30);

pub fn image() -> String {
    std::env::var("DEDUP_IMAGE").unwrap_or_else(|_| IMAGE_DEFAULT.to_string())
}

/// Why the container suite cannot run here (no Docker engine answers, or the image is missing),
/// or `None` when it can.
pub fn unavailable() -> Option<String> {
    if let Err(why) = docker_sync(&["version", "--format", "{{.Server.Version}}"], Duration::from_secs(20)) {
        return Some(format!("no Docker engine answers (`docker version`: {})", why.trim()));
    }
    let image = image();
    if let Err(why) = docker_sync(&["image", "inspect", "--format", "{{.Id}}", &image], Duration::from_secs(20)) {
        return Some(format!(
            "the image {image} is missing ({}); build it with scripts/build-image.sh (scripts/test.sh does)",
            why.trim()
        ));
    }
    None
}

/// Runs `docker ARGS` and waits at most `within`; stdout on success, else stderr (or why not).
pub fn docker_sync(args: &[&str], within: Duration) -> Result<String, String> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("docker {args:?} ran longer than {within:?}"));
            }
            Err(e) => return Err(format!("docker {args:?}: {e}")),
        }
    }
    let output = child.wait_with_output().map_err(|e| format!("docker {args:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Runs `docker ARGS` without blocking the runtime, bounded by [`DOCKER_WAIT`].
pub async fn docker(args: &[&str]) -> Result<String, String> {
    let run = tokio::process::Command::new("docker").args(args).stdin(Stdio::null()).kill_on_drop(true).output();
    let output = tokio::time::timeout(DOCKER_WAIT, run)
        .await
        .map_err(|_| format!("docker {args:?} ran longer than {DOCKER_WAIT:?}"))?
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Removes what earlier runs of this suite left behind: resources with the suite's prefix and
/// label whose creating test process no longer runs. Never anything else.
pub fn remove_leftovers() {
    let label = format!("label={LABEL}");
    let pid_format = format!("{{{{.Names}}}} {{{{.Label \"{PID_LABEL}\"}}}}");
    let mut removed = Vec::new();
    let stale = |listing: Result<String, String>| -> Vec<String> {
        listing
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (name, pid) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
                let alive = pid.parse::<u32>().is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                (name.starts_with(PREFIX) && !alive).then(|| name.to_string())
            })
            .collect()
    };
    let wait = Duration::from_secs(30);
    for name in stale(docker_sync(&["ps", "-a", "--filter", &label, "--format", &pid_format], wait)) {
        let _ = docker_sync(&["unpause", &name], wait);
        if docker_sync(&["rm", "-f", "-v", &name], wait).is_ok() {
            removed.push(name);
        }
    }
    let name_format = pid_format.replace(".Names", ".Name");
    for name in stale(docker_sync(&["network", "ls", "--filter", &label, "--format", &name_format], wait)) {
        if docker_sync(&["network", "rm", &name], wait).is_ok() {
            removed.push(name);
        }
    }
    for name in stale(docker_sync(&["volume", "ls", "--filter", &label, "--format", &name_format], wait)) {
        if docker_sync(&["volume", "rm", &name], wait).is_ok() {
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        eprintln!("removed leftovers of earlier container test runs: {removed:?}");
    }
}

/// Where a node is, as the nemesis left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    /// Killed or stopped (the container exists, with its volume).
    Down,
    /// `docker pause`: frozen, still on the network.
    Paused,
    /// `docker network disconnect`: running, on no network.
    Disconnected,
}

pub struct Container {
    pub id: u64,
    /// Container name and hostname: `ddt-<run>-<ordinal>`.
    pub name: String,
    /// Its data volume (a wiped node gets a new one).
    pub volume: String,
    /// The forwarder's `127.0.0.1:PORT`: the node's endpoint for the test.
    pub address: String,
    pub state: NodeState,
    target: watch::Sender<Option<String>>,
    forwarder: JoinHandle<()>,
    /// Logs of containers this node ran in before (a wiped node's old container).
    past_logs: String,
    volumes_made: u32,
}

/// Three `dedupd` containers on a network of their own.
pub struct DockerCluster {
    pub run_id: String,
    pub network: String,
    pub nodes: BTreeMap<u64, Container>,
    /// Extra `dedupd` flags of every node.
    args: Vec<String>,
    /// Every volume created, for the cleanup.
    volumes: Vec<String>,
}

impl DockerCluster {
    /// Creates the network, three volumes and containers, and waits until one node leads and
    /// the others follow it. Panics (with the nodes' logs) if the cluster does not form.
    pub async fn start(args: &[String]) -> DockerCluster {
        remove_leftovers();
        let run_id = format!("{:08x}", rand::random::<u32>());
        let network = format!("{PREFIX}{run_id}");
        let pid_label = format!("{PID_LABEL}={}", std::process::id());
        let mut cluster = DockerCluster {
            run_id,
            network: network.clone(),
            nodes: BTreeMap::new(),
            args: args.to_vec(),
            volumes: vec![],
        };
        docker(&["network", "create", "--label", LABEL, "--label", &pid_label, &network])
            .await
            .expect("create the test network");
        for id in 1..=3u64 {
            let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind a forwarder port");
            let address = listener.local_addr().expect("forwarder address").to_string();
            let (target, watcher) = watch::channel(None);
            let forwarder = tokio::spawn(forward_loop(listener, watcher));
            let name = format!("{network}-{}", id - 1);
            let node = Container {
                id,
                name,
                volume: String::new(),
                address,
                state: NodeState::Down,
                target,
                forwarder,
                past_logs: String::new(),
                volumes_made: 0,
            };
            cluster.nodes.insert(id, node);
        }
        for id in 1..=3 {
            cluster.run_fresh(id).await.unwrap_or_else(|e| panic!("start node {id}: {e}"));
        }
        if let Err(why) = cluster.wait_converged(READY_WAIT).await {
            panic!("the cluster did not form: {why}:\n{}", cluster.all_logs().await);
        }
        cluster
    }

    /// Creates a fresh volume for node `id` and runs a new container on it.
    async fn run_fresh(&mut self, id: u64) -> Result<(), String> {
        let pid_label = format!("{PID_LABEL}={}", std::process::id());
        let node = self.nodes.get_mut(&id).expect("node id");
        node.volumes_made += 1;
        node.volume = format!("{}-data-{}", node.name, node.volumes_made);
        self.volumes.push(node.volume.clone());
        docker(&["volume", "create", "--label", LABEL, "--label", &pid_label, &node.volume]).await?;
        let network = self.network.clone();
        let pattern = format!("--peer-pattern={network}-{{ordinal}}:{GRPC_PORT}");
        let volume = format!("{}:/data", node.volume);
        let image = image();
        let mut args: Vec<&str> = vec![
            "run",
            "-d",
            "--name",
            &node.name,
            "--hostname",
            &node.name,
            "--network",
            &network,
            "--label",
            LABEL,
            "--label",
            &pid_label,
            "--volume",
            &volume,
            "--stop-timeout",
            "25",
            "--env",
            "DEDUP_LOG=info,openraft=warn",
            &image,
            "--node-id-from-hostname",
            &pattern,
            "--initial-members=3",
            "--listen=0.0.0.0:7101",
            "--data-dir=/data",
        ];
        args.extend(self.args.iter().map(String::as_str));
        docker(&args).await?;
        self.nodes.get_mut(&id).expect("node id").state = NodeState::Up;
        self.follow_address(id).await
    }

    /// Points node `id`'s forwarder at its container's current address on the network.
    async fn follow_address(&mut self, id: u64) -> Result<(), String> {
        let node = &self.nodes[&id];
        let format = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
        let ip = docker(&["inspect", "-f", format, &node.name]).await?;
        let ip = ip.trim();
        if ip.is_empty() {
            return Err(format!("{} has no address on {}", node.name, self.network));
        }
        node.target.send_replace(Some(format!("{ip}:{GRPC_PORT}")));
        Ok(())
    }

    pub fn name(&self, id: u64) -> &str {
        &self.nodes[&id].name
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.address.clone()).collect()
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.nodes[&id].address.clone()
    }

    pub fn state(&self, id: u64) -> NodeState {
        self.nodes[&id].state
    }

    fn set_state(&mut self, id: u64, state: NodeState) {
        self.nodes.get_mut(&id).expect("node id").state = state;
    }

    /// `docker kill` (SIGKILL): no shutdown path runs.
    pub async fn kill(&mut self, id: u64) -> Result<(), String> {
        docker(&["kill", self.name(id)]).await?;
        self.nodes[&id].target.send_replace(None);
        self.set_state(id, NodeState::Down);
        Ok(())
    }

    /// `docker stop` (SIGTERM, SIGKILL after 25 s): the node shuts down in order.
    pub async fn stop(&mut self, id: u64) -> Result<(), String> {
        docker(&["stop", "-t", "25", self.name(id)]).await?;
        self.nodes[&id].target.send_replace(None);
        self.set_state(id, NodeState::Down);
        Ok(())
    }

    /// `docker start` of a killed or stopped node: the same container, the same volume.
    pub async fn restart(&mut self, id: u64) -> Result<(), String> {
        docker(&["start", self.name(id)]).await?;
        self.set_state(id, NodeState::Up);
        self.follow_address(id).await
    }

    pub async fn pause(&mut self, id: u64) -> Result<(), String> {
        docker(&["pause", self.name(id)]).await?;
        self.set_state(id, NodeState::Paused);
        Ok(())
    }

    pub async fn unpause(&mut self, id: u64) -> Result<(), String> {
        docker(&["unpause", self.name(id)]).await?;
        self.set_state(id, NodeState::Up);
        Ok(())
    }

    /// `docker network disconnect`: the node keeps running, cut off from peers and clients.
    pub async fn disconnect(&mut self, id: u64) -> Result<(), String> {
        let network = self.network.clone();
        docker(&["network", "disconnect", &network, self.name(id)]).await?;
        self.set_state(id, NodeState::Disconnected);
        Ok(())
    }

    /// `docker network connect` after [`DockerCluster::disconnect`] (the address may change).
    pub async fn reconnect(&mut self, id: u64) -> Result<(), String> {
        let network = self.network.clone();
        docker(&["network", "connect", &network, self.name(id)]).await?;
        self.set_state(id, NodeState::Up);
        self.follow_address(id).await
    }

    /// Stops node `id`, removes its container and volume, and runs it again on a fresh volume:
    /// it has no data and must catch up from the leader (by snapshot once the log is purged).
    pub async fn wipe(&mut self, id: u64) -> Result<(), String> {
        let name = self.name(id).to_string();
        docker(&["stop", "-t", "25", &name]).await?;
        let logs = self.container_logs(id).await;
        let old_volume = self.nodes[&id].volume.clone();
        {
            let node = self.nodes.get_mut(&id).expect("node id");
            node.target.send_replace(None);
            node.state = NodeState::Down;
            node.past_logs.push_str(&logs);
            node.past_logs.push_str("\n--- volume wiped, new container ---\n");
        }
        docker(&["rm", "-f", &name]).await?;
        docker(&["volume", "rm", &old_volume]).await?;
        self.run_fresh(id).await
    }

    pub async fn status(&self, id: u64) -> Result<NodeStatusResponse, String> {
        node_status(&self.nodes[&id].address).await
    }

    /// Waits up to `within` until a node that is up (other than `not`) reports itself leader.
    pub async fn try_wait_for_leader(&self, not: Option<u64>, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            for (&id, node) in &self.nodes {
                if Some(id) == not || node.state != NodeState::Up {
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

    /// Waits until every node that is up names `leader` as its leader.
    pub async fn wait_until_all_follow(&self, leader: u64, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        for (&id, node) in &self.nodes {
            if node.state != NodeState::Up {
                continue;
            }
            loop {
                let status = self.status(id).await;
                if status.as_ref().is_ok_and(|s| s.leader_id == leader) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("node {id} does not follow leader {leader} within {within:?}: {status:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Waits until one leader leads every node that is up, in its term, and they all applied
    /// what it had applied when they first agreed. Returns the leader. A deposed leader that
    /// was just reconnected or resumed may still call itself leader for a moment: the leader is
    /// the one of the highest term, and agreement is checked afresh until it holds.
    pub async fn wait_converged(&self, within: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + within;
        let (leader, target) = loop {
            let mut statuses = BTreeMap::new();
            for (&id, node) in &self.nodes {
                if node.state == NodeState::Up {
                    statuses.insert(id, self.status(id).await);
                }
            }
            let leader = statuses
                .values()
                .filter_map(|s| s.as_ref().ok().filter(|s| s.role == "leader"))
                .max_by_key(|s| s.term)
                .map(|s| (s.node_id, s.term, s.applied_index));
            if let Some((leader, term, applied)) = leader {
                let agreed =
                    statuses.values().all(|s| s.as_ref().is_ok_and(|s| s.leader_id == leader && s.term == term));
                if agreed {
                    break (leader, applied);
                }
            }
            let last = statuses
                .iter()
                .map(|(id, s)| match s {
                    Ok(s) => format!("node {id}: {} term {} leader {}", s.role, s.term, s.leader_id),
                    Err(e) => format!("node {id}: {e}"),
                })
                .collect::<Vec<_>>()
                .join("; ");
            if Instant::now() >= deadline {
                return Err(format!("the nodes do not agree on a leader within {within:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for (&id, node) in &self.nodes {
            if node.state != NodeState::Up {
                continue;
            }
            loop {
                let applied = self.status(id).await.map(|s| s.applied_index);
                if applied.as_ref().is_ok_and(|applied| *applied >= target) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("node {id} did not apply index {target} within {within:?}: {applied:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(leader)
    }

    /// Nodes the nemesis left running whose container stopped by itself (a crash, a fail-stop).
    pub async fn exited_by_themselves(&self) -> Vec<u64> {
        let mut exited = Vec::new();
        for (&id, node) in &self.nodes {
            if node.state == NodeState::Down {
                continue;
            }
            let status = docker(&["inspect", "-f", "{{.State.Status}}", &node.name]).await.unwrap_or_default();
            if !matches!(status.trim(), "running" | "paused") {
                exited.push(id);
            }
        }
        exited
    }

    async fn container_logs(&self, id: u64) -> String {
        // `docker logs` writes the container's stdout and stderr to its own; keep both.
        let name = self.name(id).to_string();
        let run = tokio::process::Command::new("docker")
            .args(["logs", &name])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(DOCKER_WAIT, run).await {
            Ok(Ok(output)) => {
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
            }
            _ => String::new(),
        }
    }

    /// Node `id`'s whole log, over all its containers and restarts.
    pub async fn log(&self, id: u64) -> String {
        format!("{}{}", self.nodes[&id].past_logs, self.container_logs(id).await)
    }

    pub async fn log_count(&self, id: u64, text: &str) -> usize {
        self.log(id).await.lines().filter(|line| line.contains(text)).count()
    }

    pub async fn panicked(&self, id: u64) -> bool {
        self.log(id).await.contains("panicked at")
    }

    /// The last lines of every node's log, for failure messages.
    pub async fn all_logs(&self) -> String {
        let mut all = String::new();
        for (&id, node) in &self.nodes {
            let log = self.log(id).await;
            let lines: Vec<&str> = log.lines().collect();
            all.push_str(&format!("--- node {id} ({}, {:?}) ---\n", node.name, node.state));
            all.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            all.push('\n');
        }
        all
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        let wait = Duration::from_secs(30);
        for node in self.nodes.values() {
            node.forwarder.abort();
            if node.state == NodeState::Paused {
                let _ = docker_sync(&["unpause", &node.name], wait);
            }
            let _ = docker_sync(&["rm", "-f", &node.name], wait);
        }
        let _ = docker_sync(&["network", "rm", &self.network], wait);
        for volume in &self.volumes {
            let _ = docker_sync(&["volume", "rm", volume], wait);
        }
    }
}

async fn forward_loop(listener: StdTcpListener, target: watch::Receiver<Option<String>>) {
    listener.set_nonblocking(true).expect("non-blocking forwarder");
    let listener = TcpListener::from_std(listener).expect("tokio forwarder");
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Some(to) = target.borrow().clone() else {
            // The node is down: the caller sees the connection closed at once.
            drop(inbound);
            continue;
        };
        tokio::spawn(forward(inbound, to));
    }
}

async fn forward(mut inbound: TcpStream, to: String) {
    let Ok(Ok(mut outbound)) = tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, TcpStream::connect(&to)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    let _ = inbound.shutdown().await;
    let _ = outbound.shutdown().await;
}
