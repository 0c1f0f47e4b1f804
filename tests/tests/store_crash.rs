//! `store-crash` (issue 3): the sled stores under `kill -9`, many cycles.
//!
//! Phase 1. `store-crash-child` runs a one-node cluster on one data folder for the whole phase,
//! with a snapshot every 20 entries, so that snapshots are built and the log head is purged all
//! the time. Each cycle starts the child on that folder; the child first waits until it has
//! applied its whole log and checks every write acknowledged in earlier cycles, then claims and
//! completes fresh keys (16 pairs in flight, so entries carry several commands) and prints an
//! `ack` line after each applied Complete. The test kills it with SIGKILL after a random delay
//! and keeps every whole `ack` line it printed. A final child verifies everything and exits.
//!
//! Kill points are not chosen explicitly: with delays of 20-400 ms after the child is ready, the
//! kill lands wherever the node is at that moment (appending, in the log flush, applying, dumping
//! or writing a snapshot, purging the log head, writing `last_purged`). About one cycle in four
//! instead kills the child 0-30 ms after it starts, while it opens sled, re-applies the committed
//! log tail, restores its leadership or verifies.
//!
//! Phase 2. A restarted single node keeps its committed vote, so the vote is written only when a
//! fresh folder is initialized and the node first elects itself. Several fresh folders are each
//! killed 2-10 ms after the child starts (initialize, membership entry, first vote, blank entry),
//! then reopened, written to, killed, and verified by a final child.
//!
//! What must hold: every child opens the folder without panicking, becomes leader, and finds
//! every acknowledged write, with its token and outcome, and its term, snapshot and purge point
//! never go back between starts (DESIGN §4.4; research openraft-sled.md §4 and P-1, P-3, P-4). The run must show it did real work: many acknowledged keys, snapshots
//! built and the log purged.
//!
//! Lines the child printed before the kill but that the test reads only after it (they were in
//! the pipe) are kept too: the child prints a line only once its write is applied, so each of
//! them is just as acknowledged. A torn last line (no newline) is dropped.
//!
//! The seed fixes delays and cycle kinds (not the OS scheduling):
//! `STORE_CRASH_SEED=<seed> cargo test -p dedup-tests --test store_crash -- --nocapture`.
//! A soak run: `STORE_CRASH_CYCLES=500` (no time budget then).
//! On failure the data folder and each child's stderr are kept under `target/tmp/`.

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use dedup_checker::summary::SuiteSummary;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

/// Cycles that run writes before the kill (`STORE_CRASH_CYCLES` overrides it for soak runs,
/// and then the time budget does not apply).
const WRITE_CYCLES: usize = 30;
/// Chance that a cycle kills during startup instead (on top of the write cycles).
const STARTUP_KILL_PERCENT: u32 = 25;
/// No new cycle starts after this long (the final verification still runs).
const TIME_BUDGET: Duration = Duration::from_secs(40);
/// Fewer write cycles than this within the budget fails the test: it would prove too little.
const WRITE_CYCLES_MIN: usize = 6;
/// Kill delay after the child is ready (write cycles).
const WRITE_KILL_MS: std::ops::RangeInclusive<u64> = 20..=400;
/// Kill delay after spawning (startup cycles).
const STARTUP_KILL_MS: std::ops::RangeInclusive<u64> = 0..=30;
/// How long a child may take to open, elect itself, re-apply and verify.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys of cycle `c` start at `c * KEY_STRIDE`, so no key is ever written twice.
const KEY_STRIDE: u64 = 1_000_000;
/// Keys a child writes at most (well under `KEY_STRIDE`).
const CHILD_MAX_KEYS: u64 = 100_000;
/// Concurrent Claim+Complete pairs in the child: entries then carry several commands.
const CHILD_IN_FLIGHT: u64 = 16;
/// Raft entries between snapshots in the child.
const CHILD_SNAPSHOT_LOGS: u64 = 20;
/// Fresh folders killed while they initialize and first elect themselves (phase 2).
const FRESH_FOLDERS: usize = 12;
/// Kill delay after spawning a child on a fresh folder.
const FRESH_KILL_MS: std::ops::RangeInclusive<u64> = 2..=10;
/// Kill delay after ready of the second child on a fresh folder.
const FRESH_WRITE_KILL_MS: std::ops::RangeInclusive<u64> = 20..=100;
/// The run must acknowledge at least this many keys in total.
const ACKS_MIN: usize = 1_000;

enum Event {
    Line(String),
    /// A last line without its newline: torn by the kill.
    Torn(String),
    Eof,
}

struct Running {
    process: Child,
    events: mpsc::Receiver<Event>,
    stderr_path: PathBuf,
}

/// What the child's `ready` line reported.
#[derive(Debug, Clone, Copy)]
struct Ready {
    verified: usize,
    snapshot: Option<u64>,
    purged: Option<u64>,
    term: u64,
    startup_ms: u64,
}

fn parse_ready(line: &str) -> Option<Ready> {
    let mut fields = line.strip_prefix("ready ")?.split_whitespace().map(|f| f.split_once('=').unwrap_or((f, "")));
    let mut field = |name: &str| {
        let (key, value) = fields.next()?;
        (key == name).then(|| value.to_string())
    };
    let index = |value: String| if value == "-" { Some(None) } else { value.parse().ok().map(Some) };
    let verified = field("verified")?.parse().ok()?;
    let _applied = field("applied")?;
    let _last_log = field("last_log")?;
    let snapshot = index(field("snapshot")?)?;
    let purged = index(field("purged")?)?;
    let term = field("term")?.parse().ok()?;
    let startup_ms = field("startup_ms")?.parse().ok()?;
    Some(Ready { verified, snapshot, purged, term, startup_ms })
}

fn is_ack(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields.len() == 5
        && fields[0] == "ack"
        && fields[1..].iter().enumerate().all(|(i, f)| i == 2 || f.parse::<u64>().is_ok())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Run {
    /// `None` once kept for inspection.
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    binary: PathBuf,
    /// The data folder the cycles run on, and its own list of acknowledged writes.
    folder: String,
    data_dir: PathBuf,
    verify_path: PathBuf,
    acked: usize,
    /// The last `ready` of this folder: term, snapshot and purge point never go back.
    last_ready: Option<Ready>,
    /// Extra environment of every child (`DEDUP_BUG_ZOO` in the bug zoo).
    env: Vec<(String, String)>,
}

impl Run {
    /// Keeps the data for inspection and fails with `message` and the child's stderr.
    fn fail(&mut self, message: String, stderr_path: &Path) -> ! {
        if let Some(root) = self.root.take() {
            let _ = root.keep();
        }
        panic!(
            "[folder {}] {message}\n--- child stderr ({}), last lines ---\n{}\n--- data and logs kept in {} ---",
            self.folder,
            stderr_path.display(),
            tail(stderr_path, 40),
            self.root_path.display()
        );
    }

    /// Runs the next cycles on a new, empty data folder.
    fn use_folder(&mut self, folder: &str) {
        self.folder = folder.to_string();
        self.data_dir = self.root_path.join(folder);
        self.verify_path = self.root_path.join(format!("{folder}.acknowledged"));
        self.acked = 0;
        self.last_ready = None;
    }

    fn spawn(&mut self, cycle: usize, max_keys: u64) -> Running {
        let stderr_path = self.root_path.join(format!("{}-child-{cycle}.stderr", self.folder));
        let stderr = std::fs::File::create(&stderr_path).expect("child stderr file");
        let mut process = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--verify")
            .arg(&self.verify_path)
            .args(["--first-key", &(cycle as u64 * KEY_STRIDE).to_string()])
            .args(["--max-keys", &max_keys.to_string()])
            .args(["--in-flight", &CHILD_IN_FLIGHT.to_string()])
            .args(["--snapshot-logs", &CHILD_SNAPSHOT_LOGS.to_string()])
            .env("DEDUP_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn store-crash-child");
        let stdout = process.stdout.take().expect("child stdout");
        let (sender, events) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                let event = match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => Event::Eof,
                    Ok(_) => match line.strip_suffix('\n') {
                        Some(whole) => Event::Line(whole.to_string()),
                        None => Event::Torn(line),
                    },
                };
                let last = matches!(event, Event::Eof);
                if sender.send(event).is_err() || last {
                    return;
                }
            }
        });
        Running { process, events, stderr_path }
    }

    /// Parses a `ready` line and checks that the child verified every acknowledged write and that
    /// nothing durable went back since the last start on this folder.
    fn check_ready(&mut self, cycle: usize, line: &str, stderr_path: &Path) -> Ready {
        let Some(ready) = parse_ready(line) else {
            self.fail(format!("cycle {cycle}: unreadable ready line {line:?}"), stderr_path);
        };
        if ready.verified != self.acked {
            self.fail(
                format!(
                    "cycle {cycle}: the child verified {} writes, {} were acknowledged",
                    ready.verified, self.acked
                ),
                stderr_path,
            );
        }
        if let Some(before) = self.last_ready {
            // A lost vote (P-1), `last_purged` (P-3) or snapshot would show up as a step back.
            if ready.term < before.term || ready.purged < before.purged || ready.snapshot < before.snapshot {
                self.fail(format!("cycle {cycle}: went back from {before:?} to {ready:?}"), stderr_path);
            }
        }
        self.last_ready = Some(ready);
        ready
    }

    /// Records acknowledged lines in the verify file, for the next child to check.
    fn record_acks(&mut self, acks: &[String]) {
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.verify_path).expect("verify file");
        for ack in acks {
            writeln!(file, "{ack}").expect("write verify file");
        }
        file.flush().expect("flush verify file");
        self.acked += acks.len();
    }
}

/// What one cycle saw.
struct CycleReport {
    ready: Option<Ready>,
    acks: usize,
    acks_after_kill: usize,
    torn: bool,
    lived: Duration,
}

impl CycleReport {
    fn describe(&self, kill_at: KillAt) -> String {
        let kill = match kill_at {
            KillAt::AfterReady(ms) => format!("write, killed {ms} ms after ready"),
            KillAt::AfterSpawn(ms) => format!("startup, killed {ms} ms after spawn"),
        };
        let state = match self.ready {
            Some(r) => format!(
                "verified {} in {} ms startup, term {} snapshot {:?} purged {:?}",
                r.verified, r.startup_ms, r.term, r.snapshot, r.purged
            ),
            None => "killed before ready".to_string(),
        };
        format!(
            "{kill}, lived {:?}): {state}; {} new acks ({} read after the kill)",
            self.lived, self.acks, self.acks_after_kill
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// `ms` after the child reported ready; it must report ready.
    AfterReady(u64),
    /// `ms` after spawning, whatever it is doing.
    AfterSpawn(u64),
}

fn run_cycle(run: &mut Run, cycle: usize, kill_at: KillAt) -> CycleReport {
    let spawned = Instant::now();
    let mut child = run.spawn(cycle, CHILD_MAX_KEYS);
    let mut acks = Vec::new();
    let mut ready = None;
    let mut torn = false;
    let mut deadline = match kill_at {
        KillAt::AfterReady(_) => spawned + READY_TIMEOUT,
        KillAt::AfterSpawn(ms) => spawned + Duration::from_millis(ms),
    };
    // Read until the kill deadline.
    loop {
        let now = Instant::now();
        if now >= deadline {
            if ready.is_none() && matches!(kill_at, KillAt::AfterReady(_)) {
                let _ = child.process.kill();
                let _ = child.process.wait();
                run.fail(
                    format!("cycle {cycle}: the child was not ready within {READY_TIMEOUT:?}"),
                    &child.stderr_path,
                );
            }
            break;
        }
        match child.events.recv_timeout(deadline - now) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Ok(Event::Line(line)) if line.starts_with("ready ") && ready.is_none() => {
                ready = Some(run.check_ready(cycle, &line, &child.stderr_path));
                if let KillAt::AfterReady(ms) = kill_at {
                    deadline = Instant::now() + Duration::from_millis(ms);
                }
            }
            Ok(Event::Line(line)) if is_ack(&line) && ready.is_some() => acks.push(line),
            Ok(Event::Line(line)) => {
                run.fail(format!("cycle {cycle}: unexpected line from the child: {line:?}"), &child.stderr_path)
            }
            Ok(Event::Torn(_)) | Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The child stopped by itself: a panic, a failed verification, a fatal error.
                let status = child.process.wait().expect("reap the child");
                run.record_acks(&acks);
                run.fail(
                    format!(
                        "cycle {cycle}: the child exited by itself with {status} after {:?} (ready: {}, {} acks)",
                        spawned.elapsed(),
                        ready.is_some(),
                        acks.len()
                    ),
                    &child.stderr_path,
                );
            }
        }
    }
    if let Ok(Some(status)) = child.process.try_wait() {
        run.fail(
            format!("cycle {cycle}: the child exited by itself with {status} before the kill"),
            &child.stderr_path,
        );
    }
    child.process.kill().expect("SIGKILL the child");
    child.process.wait().expect("reap the child");
    let lived = spawned.elapsed();
    // Whole lines still in the pipe were printed before the kill: acknowledged as well.
    let before_kill = acks.len();
    loop {
        match child.events.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Line(line)) if is_ack(&line) && ready.is_some() => acks.push(line),
            Ok(Event::Line(line)) if line.starts_with("ready ") && ready.is_none() => {
                // Ready came out just before the kill, with no time left to write.
                ready = Some(run.check_ready(cycle, &line, &child.stderr_path));
            }
            Ok(Event::Line(line)) => {
                run.fail(format!("cycle {cycle}: unexpected line from the child: {line:?}"), &child.stderr_path)
            }
            Ok(Event::Torn(_)) => torn = true,
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                run.fail(format!("cycle {cycle}: the child's stdout stayed open after the kill"), &child.stderr_path)
            }
        }
    }
    run.record_acks(&acks);
    CycleReport { ready, acks: acks.len(), acks_after_kill: acks.len() - before_kill, torn, lived }
}

/// Starts a child that only verifies: it must report ready, then `done`, and exit with success.
fn final_check(run: &mut Run, cycle: usize) -> Ready {
    let mut child = run.spawn(cycle, 0);
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = None;
    let mut done = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match child.events.recv_timeout(left) {
            Ok(Event::Line(line)) if line.starts_with("ready ") && ready.is_none() => {
                ready = Some(run.check_ready(cycle, &line, &child.stderr_path));
            }
            Ok(Event::Line(line)) if line == "done" && ready.is_some() => done = true,
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Event::Line(line)) | Ok(Event::Torn(line)) => {
                let _ = child.process.kill();
                run.fail(format!("final check: unexpected line from the child: {line:?}"), &child.stderr_path)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.process.kill();
                let _ = child.process.wait();
                run.fail(format!("final check: the child did not finish within {READY_TIMEOUT:?}"), &child.stderr_path)
            }
        }
    }
    let status = child.process.wait().expect("reap the child");
    match ready {
        Some(ready) if done && status.success() => ready,
        _ => run.fail(format!("final check: the child exited with {status} (done: {done})"), &child.stderr_path),
    }
}

fn seed() -> u64 {
    match std::env::var("STORE_CRASH_SEED") {
        Ok(text) => text.parse().expect("STORE_CRASH_SEED must be a number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_of_the_stores() {
    let cycles = store_crash_cycles(Vec::new());
    let summary = SuiteSummary { crash_cycles: cycles, ..Default::default() };
    summary.record("store-crash").expect("record the safety summary");
}

/// The bug zoo: a child whose log reports appends durable before they are flushed must lose an
/// acknowledged write to some kill, and the suite must say so.
#[cfg(feature = "bug-zoo")]
#[test]
fn zoo_ack_before_flush() {
    use dedup_cluster::bug_zoo::Bug;
    use dedup_cluster::bug_zoo::BUG_ZOO_ENV;
    let bug = Bug::AckBeforeFlush;
    let env = vec![(BUG_ZOO_ENV.to_string(), bug.name().to_string())];
    let outcome = std::panic::catch_unwind(|| store_crash_cycles(env));
    let message = match &outcome {
        Ok(_) => String::new(),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    // Caught only by what the suite checks: writes acknowledged and then missing, or a child
    // that cannot start again on its folder (its stored log lost entries it had reported
    // durable, and Raft refuses to start); a correct build never does either.
    let caught = message.contains("were acknowledged")
        || message.contains("VERIFY FAILED")
        || message.contains("exited by itself");
    eprintln!("bug zoo: {bug} {}: {message}", if caught { "CAUGHT" } else { "NOT CAUGHT" });
    let summary = SuiteSummary { bugs_seeded: 1, bugs_caught: u64::from(caught), ..Default::default() };
    summary.record("bug-zoo").expect("record the safety summary");
    assert!(caught, "the seeded bug {bug} was not caught by store-crash");
}

/// Runs both phases; returns how many kill cycles ran. Panics (keeping the data) on any loss.
fn store_crash_cycles(env: Vec<(String, String)>) -> u64 {
    let seed = seed();
    println!("store-crash seed {seed} (STORE_CRASH_SEED={seed} to repeat the choices)");
    let mut rng = StdRng::seed_from_u64(seed);
    let root = tempfile::Builder::new()
        .prefix("store-crash-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temporary directory");
    let root_path = root.path().to_path_buf();
    let mut run = Run {
        root: Some(root),
        // Cargo builds the child for this test; STORE_CRASH_CHILD runs another copy (soak runs).
        binary: std::env::var_os("STORE_CRASH_CHILD")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_store-crash-child")), PathBuf::from),
        folder: String::new(),
        data_dir: PathBuf::new(),
        verify_path: PathBuf::new(),
        root_path,
        acked: 0,
        last_ready: None,
        env,
    };
    let (cycles_wanted, budget) = match std::env::var("STORE_CRASH_CYCLES") {
        Ok(text) => (text.parse().expect("STORE_CRASH_CYCLES must be a number"), Duration::MAX),
        Err(_) => (WRITE_CYCLES, TIME_BUDGET),
    };
    let started = Instant::now();

    // Phase 1: one folder, many cycles.
    run.use_folder("node");
    let mut cycle = 0;
    let mut write_cycles = 0;
    let mut startup_kills = 0;
    let mut torn_lines = 0;
    let mut after_kill = 0;
    let mut startup_ms = Vec::new();
    while write_cycles < cycles_wanted && started.elapsed() < budget {
        let startup_kill = cycle > 0 && rng.gen_ratio(STARTUP_KILL_PERCENT, 100);
        let kill_at = if startup_kill {
            KillAt::AfterSpawn(rng.gen_range(STARTUP_KILL_MS))
        } else {
            KillAt::AfterReady(rng.gen_range(WRITE_KILL_MS))
        };
        let report = run_cycle(&mut run, cycle, kill_at);
        if startup_kill {
            startup_kills += 1;
        } else {
            write_cycles += 1;
        }
        torn_lines += usize::from(report.torn);
        after_kill += report.acks_after_kill;
        if let Some(ready) = report.ready {
            startup_ms.push(ready.startup_ms);
        }
        println!("node cycle {cycle:2} ({}", report.describe(kill_at));
        cycle += 1;
    }
    // A last child checks the writes of the last cycle too, writes nothing and exits cleanly.
    let ready = final_check(&mut run, cycle);
    println!(
        "node final check: {} acknowledged writes verified in {} ms startup; snapshot {:?} purged {:?}",
        ready.verified, ready.startup_ms, ready.snapshot, ready.purged
    );
    println!(
        "node: {write_cycles} write cycles + {startup_kills} startup kills in {:?}; {} acks ({after_kill} read after \
         a kill), {torn_lines} torn lines dropped; startup ms {startup_ms:?}",
        started.elapsed(),
        run.acked
    );
    let stderr_path = run.root_path.join(format!("node-child-{cycle}.stderr"));
    if write_cycles < WRITE_CYCLES_MIN {
        run.fail(format!("only {write_cycles} write cycles ran within {budget:?}"), &stderr_path);
    }
    if run.acked < ACKS_MIN {
        run.fail(format!("only {} writes were acknowledged; at least {ACKS_MIN} expected", run.acked), &stderr_path);
    }
    if ready.snapshot.unwrap_or(0) == 0 || ready.purged.unwrap_or(0) == 0 {
        run.fail(
            format!("no snapshot or purge happened (snapshot {:?}, purged {:?})", ready.snapshot, ready.purged),
            &stderr_path,
        );
    }

    // Phase 2: a single node saves its vote only when it first elects itself (a restarted
    // leader keeps its committed vote), so kill fresh folders during initialize and the first
    // election, then reopen them, write and verify.
    for fresh in 0..FRESH_FOLDERS {
        run.use_folder(&format!("fresh-{fresh}"));
        let phase = Instant::now();
        let kill_at = KillAt::AfterSpawn(rng.gen_range(FRESH_KILL_MS));
        let first = run_cycle(&mut run, 0, kill_at);
        let kill_at_second = KillAt::AfterReady(rng.gen_range(FRESH_WRITE_KILL_MS));
        let second = run_cycle(&mut run, 1, kill_at_second);
        let ready = final_check(&mut run, 2);
        // What the kill left: openraft names the stored log and vote when it declines to
        // initialize a folder that has either.
        let second_stderr = std::fs::read_to_string(run.root_path.join(format!("fresh-{fresh}-child-1.stderr")));
        let left = second_stderr
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.split_once("Can not initialize ").map(|(_, state)| state.to_string()))
            .unwrap_or_else(|| "nothing (initialized anew)".to_string());
        println!(
            "fresh-{fresh}: cycle 0 ({}; it left {left}; cycle 1 ({}; final check verified {} in {} ms startup; {:?} \
             in all",
            first.describe(kill_at),
            second.describe(kill_at_second),
            ready.verified,
            ready.startup_ms,
            phase.elapsed()
        );
    }
    println!("store-crash: {:?} in all", started.elapsed());
    (cycle + 2 * FRESH_FOLDERS) as u64
}
