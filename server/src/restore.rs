//! `dedupd restore`: writes a stopped node's data folder from a snapshot file, for restoring a
//! whole cluster from a backup (`dedupctl snapshot save`). Run it once per member, each with its
//! own id and an empty data folder, all from the same file, then start the members as usual.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::config::hostname;
use crate::config::node_id_from_hostname;
use crate::config::parse_peers;
use crate::config::Peers;

/// Largest snapshot file a restore reads (it holds the file in memory while it writes).
pub const RESTORE_FILE_BYTES_MAX: u64 = 64 << 30;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dedupd restore",
    about = "Write a stopped node's empty data folder from a snapshot file (a backup taken with \
             `dedupctl snapshot save`). Run it for every member, each with its own --node-id and \
             the same file, then start the members. Writes acknowledged after the snapshot are not \
             in it."
)]
pub struct RestoreArgs {
    /// The snapshot file to restore from, or `-` to read it from standard input (`kubectl exec
    /// -i` into a pod of an image without a shell).
    #[arg(long, value_name = "FILE")]
    pub snapshot: PathBuf,

    /// The node's data folder: must be empty or missing (a `lost+found` in it is ignored), or
    /// see --move-aside.
    #[arg(long, env = "DEDUP_DATA_DIR")]
    pub data_dir: PathBuf,

    /// The id of the node whose folder this is: a member of the snapshot's membership.
    #[arg(long, env = "DEDUP_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: Option<u64>,

    /// Take the node id from this host's name `NAME-ORDINAL` (a StatefulSet pod): id = ORDINAL + 1.
    #[arg(long, env = "DEDUP_NODE_ID_FROM_HOSTNAME", conflicts_with = "node_id")]
    pub node_id_from_hostname: bool,

    /// New addresses of the members, `ID=HOST:PORT,...`, when the cluster is restored where its
    /// old addresses do not reach it. Name every member of the snapshot, and give every member
    /// the same list. Default: keep the snapshot's addresses.
    #[arg(long, value_parser = parse_peers)]
    pub peers: Option<Peers>,

    /// If the data folder holds anything, move it into a new `before-restore-<unix ms>` folder
    /// inside it first (kept, never deleted) instead of refusing. For volumes that cannot be
    /// emptied otherwise (the image has no shell).
    #[arg(long)]
    pub move_aside: bool,
}

/// Restores one node's data folder and prints what it holds.
pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let node_id = match args.node_id {
        Some(id) => id,
        None if args.node_id_from_hostname => {
            node_id_from_hostname(&hostname().map_err(anyhow::Error::msg)?).map_err(anyhow::Error::msg)?
        }
        None => anyhow::bail!("--node-id is required (or --node-id-from-hostname in a StatefulSet)"),
    };
    let bytes = read_snapshot(&args.snapshot)?;
    let addresses = args.peers.as_ref().map(|peers| &peers.0);
    let restored =
        dedup_cluster::store::restore_node(&args.data_dir, node_id, &bytes, addresses, args.move_aside).await?;
    if let Some(aside) = &restored.moved_aside {
        println!("moved what {} held into {}", args.data_dir.display(), aside.display());
    }
    let members: Vec<String> = restored
        .members
        .iter()
        .map(|(id, address)| {
            let role = if restored.voters.contains(id) { "" } else { " (learner)" };
            format!("{id}={address}{role}")
        })
        .collect();
    println!(
        "restored node {node_id} into {}: the ledger after log entry {} (term {}), {} records, ledger time {} ms; \
         members {}",
        args.data_dir.display(),
        restored.last_log_id.index,
        restored.last_log_id.leader_id.term,
        restored.records,
        restored.ledger_time.as_ms(),
        members.join(", ")
    );
    Ok(())
}

fn read_snapshot(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let source: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let mut bytes = Vec::new();
    source.take(RESTORE_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).context("reading the snapshot file")?;
    if bytes.len() as u64 > RESTORE_FILE_BYTES_MAX {
        anyhow::bail!("the snapshot file is larger than {RESTORE_FILE_BYTES_MAX} bytes (RESTORE_FILE_BYTES_MAX)");
    }
    Ok(bytes)
}
