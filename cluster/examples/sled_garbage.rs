//! How much memory sled 0.34 keeps after large batch writes, with and without driving
//! crossbeam-epoch's collector after each write (what `SledEngine::write` does). The figures in
//! docs/architecture.md ("sled's garbage") come from:
//!
//! ```text
//! cargo run --release -p dedup-cluster --example sled_garbage -- random 1000000 4096 none
//! cargo run --release -p dedup-cluster --example sled_garbage -- random 1000000 4096 collect
//! cargo run --release -p dedup-cluster --example sled_garbage -- sorted 2000000 4096 none
//! cargo run --release -p dedup-cluster --example sled_garbage -- sorted 2000000 4096 collect
//! ```
//!
//! Arguments: key order (`random` or `sorted`), pairs to write, pairs per batch, and `none` or
//! `collect` (one collection step per 256 operations after each batch). Each batch is flushed,
//! as an install chunk is. Keys look like ledger keys (41 bytes), values like completed records
//! (130 bytes); the database is a temporary folder with a 64 MiB sled cache. Prints the process
//! RSS every 200,000 pairs and at the end.

use std::time::Instant;

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: sled_garbage random|sorted PAIRS BATCH none|collect";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [order, pairs, batch, collect] = args.as_slice() else { return Err(usage.into()) };
    let sorted = match order.as_str() {
        "sorted" => true,
        "random" => false,
        _ => return Err(usage.into()),
    };
    let collect = match collect.as_str() {
        "collect" => true,
        "none" => false,
        _ => return Err(usage.into()),
    };
    let pairs: u64 = pairs.parse()?;
    let batch: u64 = batch.parse()?;
    if batch == 0 || batch > 1_000_000 || pairs > 100_000_000 {
        return Err("BATCH must be 1..=1000000 and PAIRS at most 100000000".into());
    }
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).cache_capacity(64 << 20).open()?;
    let tree = db.open_tree("ledger")?;
    let started = Instant::now();
    let mut written = 0u64;
    while written < pairs {
        let mut writes = sled::Batch::default();
        let this_batch = batch.min(pairs - written);
        for _ in 0..this_batch {
            let id = if sorted { written } else { written.wrapping_mul(0x9E37_79B9_7F4A_7C15) };
            let mut key = b"r/orders/".to_vec();
            key.extend_from_slice(&id.to_be_bytes());
            key.extend_from_slice(&[7u8; 24]);
            writes.insert(key, vec![(written % 251) as u8; 130]);
            written += 1;
        }
        tree.apply_batch(writes)?;
        db.flush()?;
        if collect {
            for _ in 0..=this_batch / 256 {
                crossbeam_epoch::pin().flush();
            }
        }
        if written % 200_000 < this_batch {
            println!("{written} pairs: RSS {} MiB, {:.1} s", rss_mib(), started.elapsed().as_secs_f64());
        }
    }
    println!("done: {written} pairs, RSS {} MiB, {:.1} s", rss_mib(), started.elapsed().as_secs_f64());
    Ok(())
}
