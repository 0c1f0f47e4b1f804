//! Per-link TCP fault proxies: one proxy for every ordered pair of nodes (`from` dials `to`
//! through it, with `dedupd --peer-dial`), so a test can cut any link in one direction: the
//! partitions of the real-process fault suite.
//!
//! A link is `Up` (bytes flow), `Down` (open connections are cut and new ones are closed at once:
//! the dialler sees a refused/reset connection) or `Blackhole` (connections are accepted and held
//! but nothing is forwarded: the dialler's calls time out, like a dropped route). Raft calls from
//! `from` to `to` and their replies use the `from -> to` link only, so cutting it alone is a
//! one-way partition: `to` can still call `from`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    Down,
    Blackhole,
}

/// One direction of one link: accepts on `address` and forwards to the target node.
pub struct LinkProxy {
    pub address: String,
    state: watch::Sender<LinkState>,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Binds `listener` (already bound, so its port is held) and forwards to `target`.
    pub fn start(listener: std::net::TcpListener, target: String) -> LinkProxy {
        let address = listener.local_addr().expect("proxy address").to_string();
        listener.set_nonblocking(true).expect("non-blocking proxy listener");
        let listener = TcpListener::from_std(listener).expect("tokio proxy listener");
        let (state, watcher) = watch::channel(LinkState::Up);
        let task = tokio::spawn(accept_loop(listener, target, watcher));
        LinkProxy { address, state, task }
    }

    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }

    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: String, state: watch::Receiver<LinkState>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut state = state.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let current = *state.borrow_and_update();
            match current {
                LinkState::Down => drop(inbound),
                LinkState::Blackhole => hold_until_change(inbound, &mut state).await,
                LinkState::Up => forward(inbound, &target, &mut state).await,
            }
        });
    }
}

/// Keeps a connection open and silent until the link changes, then closes it.
async fn hold_until_change(inbound: TcpStream, state: &mut watch::Receiver<LinkState>) {
    let _ = state.changed().await;
    drop(inbound);
}

/// Copies bytes both ways until either side closes or the link stops being `Up`.
async fn forward(mut inbound: TcpStream, target: &str, state: &mut watch::Receiver<LinkState>) {
    let Ok(Ok(mut outbound)) = tokio::time::timeout(PROXY_CONNECT_TIMEOUT, TcpStream::connect(target)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = async {
            while state.changed().await.is_ok() {
                if *state.borrow() != LinkState::Up {
                    break;
                }
            }
        } => {}
    }
    let _ = inbound.shutdown().await;
    let _ = outbound.shutdown().await;
}

/// The proxies of a cluster, by `(from, to)`.
#[derive(Default)]
pub struct LinkProxies {
    links: BTreeMap<(u64, u64), LinkProxy>,
}

impl LinkProxies {
    pub fn insert(&mut self, from: u64, to: u64, proxy: LinkProxy) {
        self.links.insert((from, to), proxy);
    }

    /// `ID=ADDRESS` pairs `from` must dial its peers at (`--peer-dial`).
    pub fn dial_flag(&self, from: u64) -> String {
        self.links
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|((_, to), proxy)| format!("{to}={}", proxy.address))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets the link `from -> to` (one direction).
    pub fn set(&self, from: u64, to: u64, state: LinkState) {
        self.links.get(&(from, to)).unwrap_or_else(|| panic!("no link {from} -> {to}")).set(state);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: u64, b: u64, state: LinkState) {
        self.set(a, b, state);
        self.set(b, a, state);
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: u64, state: LinkState) {
        for (from, to) in self.links.keys().copied().collect::<Vec<_>>() {
            if from == node || to == node {
                self.set(from, to, state);
            }
        }
    }

    /// Every link up.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.set(LinkState::Up);
        }
    }

    /// Links not up, as `from->to`, for logs.
    pub fn describe(&self) -> String {
        let cut: Vec<String> = self
            .links
            .iter()
            .filter(|(_, proxy)| proxy.state() != LinkState::Up)
            .map(|((from, to), proxy)| format!("{from}->{to}:{:?}", proxy.state()))
            .collect();
        if cut.is_empty() {
            "all links up".to_string()
        } else {
            cut.join(" ")
        }
    }
}
