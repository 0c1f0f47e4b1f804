//! How long sled 0.34 takes to open a database, right after a long run of writes and once more
//! after that. sled writes its page-table snapshot only while it opens a database
//! (`pagecache/snapshot.rs`: `take_fuzzy_snapshot` is unused), so an open replays everything
//! written since the previous open. The figures in bench/profile.md come from:
//!
//! ```text
//! cargo run --release -p dedup-cluster --example sled_reopen -- 2000000
//! ```
//!
//! Writes PAIRS random pairs (41-byte keys, 130-byte values) 256 per batch with a flush after
//! each, as applies do, in a temporary folder with a 64 MiB cache; then opens the database three
//! times, timing each open (the retries while the previous handle lets go of the lock included).

use std::time::Instant;

fn open(dir: &std::path::Path) -> sled::Result<sled::Db> {
    // sled's file lock can outlive a dropped `Db` for a moment (its flusher thread).
    let mut tries = 0;
    loop {
        match sled::Config::new().path(dir).cache_capacity(64 << 20).open() {
            Err(error) if tries < 50 && error.to_string().contains("lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pairs: u64 = std::env::args().nth(1).ok_or("usage: sled_reopen PAIRS")?.parse()?;
    if pairs > 100_000_000 {
        return Err("PAIRS must be at most 100000000".into());
    }
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    {
        let db = open(dir.path())?;
        let tree = db.open_tree("ledger")?;
        let mut written = 0u64;
        while written < pairs {
            let mut writes = sled::Batch::default();
            for _ in 0..256.min(pairs - written) {
                let mut key = b"r/orders/".to_vec();
                key.extend_from_slice(&written.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                key.extend_from_slice(&[7u8; 24]);
                writes.insert(key, vec![(written % 251) as u8; 130]);
                written += 1;
            }
            tree.apply_batch(writes)?;
            db.flush()?;
            for _ in 0..2 {
                crossbeam_epoch::pin().flush();
            }
        }
        println!("wrote {written} pairs in {:.1} s", started.elapsed().as_secs_f64());
    }
    for attempt in 1..=3 {
        let opening = Instant::now();
        let db = open(dir.path())?;
        let took = opening.elapsed().as_secs_f64();
        let first = db.open_tree("ledger")?.first()?.is_some();
        println!("open {attempt}: {took:.2} s (data readable: {first}, {} bytes on disk)", db.size_on_disk()?);
    }
    Ok(())
}
