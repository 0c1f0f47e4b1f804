//! The leader-side coalescer (DESIGN §7). openraft 0.9 writes and flushes one log entry per
//! `client_write`, so concurrent commands are packed into one entry: the proposer takes every
//! command already queued (up to [`ENTRY_COMMANDS_MAX`] commands and [`ENTRY_BYTES_MAX`] bytes)
//! into the next entry, stamps it with ledger time and proposes it. While entries are in flight,
//! new commands queue and form the next one, so batches grow with load and a lone request waits
//! for no timer.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::ServerState;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::sync::Semaphore;

use crate::clock::LedgerClock;
use crate::codec;
use crate::ledger::limits::ENTRY_BYTES_MAX;
use crate::ledger::limits::ENTRY_COMMANDS_MAX;
use crate::ledger::Command;
use crate::ledger::CommandResult;
use crate::ledger::LedgerTime;
use crate::raft_types::*;
use crate::store::LedgerReader;

/// Entries proposed and not yet answered. Only full entries (ENTRY_COMMANDS_MAX commands, or
/// ENTRY_BYTES_MAX bytes) overlap: a partly filled entry waits until nothing is in flight,
/// gathering what arrives meanwhile. Measured (`bench/ab.sh`, 2026-12-01): new claims ran
/// 1.16-1.33x faster at 16-256 clients than when partly filled entries overlapped too (those made
/// more, smaller entries: a flush and an AppendEntries round each), while batch claims kept the
/// overlap of full entries (one entry in flight at most measured 0.93x for them).
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4;
/// Commands waiting for an entry. A full queue answers `Overloaded` at once.
pub const PROPOSAL_QUEUE_MAX: usize = 16 * ENTRY_COMMANDS_MAX;

/// How often the leader checks whether expired records wait for a purge. Purging rides on
/// every entry; on an idle ledger nothing else would remove them.
pub const PURGE_TICK: Duration = Duration::from_secs(1);
/// Purge-only entries proposed per tick at most, each purging up to `PURGE_PER_ENTRY_MAX`
/// records: an idle leader removes up to 16 x 64 = 1 024 expired records a second.
pub const PURGE_ENTRIES_PER_TICK: usize = 16;

/// A command that was committed and applied.
#[derive(Debug, Clone)]
pub struct Applied {
    pub result: CommandResult,
    /// Raft index of the entry that carried the command.
    pub log_index: u64,
    /// Ledger time the entry was applied at.
    pub ledger_time: LedgerTime,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("NOT_LEADER: this node is not the leader")]
    NotLeader { leader_id: Option<NodeId>, leader_address: Option<String> },
    /// The entry may still commit later: the caller must treat the outcome as unknown.
    #[error("NO_QUORUM: the entry was not committed within {timeout_ms} ms; its outcome is unknown")]
    Timeout { timeout_ms: u64 },
    #[error("OVERLOADED: {PROPOSAL_QUEUE_MAX} commands are already waiting for the log")]
    Overloaded,
    #[error("SHUTTING_DOWN: the Raft node stopped: {0}")]
    Stopped(String),
    /// Refused before proposing (nothing was written): the leader is handing leadership over.
    #[error("LEADER_TRANSFER: this node is handing leadership to another node; retry shortly")]
    TransferringLeadership,
    #[error(
        "BATCH_TOO_LARGE: the batch is {commands} commands and {bytes} bytes; one entry holds at most \
         {ENTRY_COMMANDS_MAX} commands (ENTRY_COMMANDS_MAX) and {ENTRY_BYTES_MAX} bytes (ENTRY_BYTES_MAX)"
    )]
    GroupTooLarge { commands: usize, bytes: usize },
}

/// Commands that must share one entry (a single command, or a client's batch).
struct Proposal {
    commands: Vec<Command>,
    encoded_bytes: usize,
    reply: oneshot::Sender<Result<Vec<Applied>, ProposeError>>,
}

/// What the proposer has done since the process started.
#[derive(Debug, Default)]
pub struct ProposerStats {
    /// Entries committed and applied that this node proposed.
    pub entries: AtomicU64,
    /// Commands those entries carried.
    pub commands: AtomicU64,
}

/// Hands commands to the coalescer. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
    stats: Arc<ProposerStats>,
    /// True while a leadership transfer holds proposals back (see [`Proposer::hold`]).
    held: Arc<watch::Sender<bool>>,
}

/// While alive, the proposer refuses new commands with
/// [`ProposeError::TransferringLeadership`] instead of writing them: a leadership transfer needs
/// the log to stand still so that its target can catch up and win the vote (followers refuse
/// votes while a leader keeps replicating to them). Dropping it lets proposals through again.
pub struct ProposalHold {
    held: Arc<watch::Sender<bool>>,
}

impl Drop for ProposalHold {
    fn drop(&mut self) {
        self.held.send_replace(false);
    }
}

impl Proposer {
    pub fn start(raft: Raft, clock: Arc<LedgerClock>, reader: LedgerReader, commit_timeout: Duration) -> Proposer {
        let (queue, pending) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        let stats = Arc::new(ProposerStats::default());
        let held = Arc::new(watch::Sender::new(false));
        let holds = held.subscribe();
        tokio::spawn(run(raft.clone(), clock.clone(), reader.clone(), commit_timeout, pending, stats.clone(), holds));
        let proposer = Proposer { queue, stats, held };
        tokio::spawn(purge_ticker(raft, clock, reader, proposer.queue.downgrade()));
        proposer
    }

    pub fn stats(&self) -> &ProposerStats {
        &self.stats
    }

    /// Holds proposals back until the returned guard is dropped. `None` if a hold is already
    /// in place (one leadership transfer at a time).
    pub fn hold(&self) -> Option<ProposalHold> {
        let mut taken = false;
        self.held.send_if_modified(|held| {
            taken = !*held;
            *held = true;
            taken
        });
        taken.then(|| ProposalHold { held: self.held.clone() })
    }

    /// Proposes one command and waits until it is applied (or fails).
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        let mut applied = self.propose_group(vec![command]).await?;
        Ok(applied.pop().expect("one result per command"))
    }

    /// Proposes `commands` in one Raft entry (never split across entries, possibly sharing it
    /// with other proposals) and waits until they are applied: one result per command, in order.
    pub async fn propose_group(&self, commands: Vec<Command>) -> Result<Vec<Applied>, ProposeError> {
        assert!(!commands.is_empty(), "an empty group proposes nothing");
        let encoded_bytes = commands.iter().map(|c| codec::encode(c).map_or(ENTRY_BYTES_MAX, |b| b.len())).sum();
        if commands.len() > ENTRY_COMMANDS_MAX || encoded_bytes > ENTRY_BYTES_MAX {
            return Err(ProposeError::GroupTooLarge { commands: commands.len(), bytes: encoded_bytes });
        }
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Proposal { commands, encoded_bytes, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ProposeError::Stopped("the proposer stopped".to_string()),
        })?;
        answer.await.unwrap_or_else(|_| Err(ProposeError::Stopped("the proposer dropped the command".to_string())))
    }
}

/// On the leader, proposes entries without commands (each purges what expired, DESIGN §7)
/// while the purge index shows a retention deadline at or before the ledger time. Ends when the
/// proposer is dropped.
async fn purge_ticker(raft: Raft, clock: Arc<LedgerClock>, reader: LedgerReader, queue: mpsc::WeakSender<Proposal>) {
    let mut tick = tokio::time::interval(PURGE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for _ in 0..PURGE_ENTRIES_PER_TICK {
            let (term, is_leader) = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                (metrics.current_term, metrics.state == ServerState::Leader)
            };
            if !is_leader {
                break;
            }
            let Ok(Some(deadline)) = reader.earliest_retention_deadline() else { break };
            if deadline > clock.stamp(term, reader.applied().ledger_time) {
                break;
            }
            let Some(queue) = queue.upgrade() else { return };
            let (reply, answer) = oneshot::channel();
            if queue.try_send(Proposal { commands: Vec::new(), encoded_bytes: 0, reply }).is_err() {
                break; // busy: the queued writes purge as they apply
            }
            drop(queue);
            if !matches!(answer.await, Ok(Ok(_))) {
                break;
            }
        }
    }
}

async fn run(
    raft: Raft,
    clock: Arc<LedgerClock>,
    reader: LedgerReader,
    commit_timeout: Duration,
    mut pending: mpsc::Receiver<Proposal>,
    stats: Arc<ProposerStats>,
    held: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    // Entries proposed and not yet answered (the permits taken).
    let in_flight = Arc::new(watch::Sender::new(0usize));
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match pending.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        if *held.borrow() {
            // Answered at once, unwritten: the client retries and finds the new leader.
            let _ = first.reply.send(Err(ProposeError::TransferringLeadership));
            continue;
        }
        let mut entry = EntryBuilder::new(first);
        // Take what is queued, within the entry's limits.
        while !entry.full {
            let Ok(next) = pending.try_recv() else { break };
            carried = entry.add(next);
        }
        // A partly filled entry waits for the log to drain, growing meanwhile.
        let mut drained = in_flight.subscribe();
        while !entry.full && *drained.borrow_and_update() > 0 {
            tokio::select! {
                next = pending.recv() => match next {
                    Some(next) => carried = entry.add(next),
                    None => break,
                },
                changed = drained.changed() => if changed.is_err() { break },
            }
        }
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        if *held.borrow() {
            // A leadership transfer began while the entry waited: it stays unwritten.
            for proposal in entry.proposals {
                let _ = proposal.reply.send(Err(ProposeError::TransferringLeadership));
            }
            continue;
        }
        let counted = InFlight::enter(&in_flight);
        let raft = raft.clone();
        let clock = clock.clone();
        let reader = reader.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            propose_entry(&raft, &clock, &reader, commit_timeout, entry.proposals, &stats).await;
            drop(counted);
            drop(permit);
        });
    }
}

/// One entry counted in flight until dropped, also when its task ends by a panic: a count that
/// never went back to 0 would hold every partly filled entry back for good.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn enter(count: &Arc<watch::Sender<usize>>) -> InFlight {
        count.send_modify(|n| *n += 1);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The proposals of the next entry, within ENTRY_COMMANDS_MAX and ENTRY_BYTES_MAX.
struct EntryBuilder {
    proposals: Vec<Proposal>,
    commands: usize,
    bytes: usize,
    /// Set once a proposal did not fit (or the command limit is reached): propose it now.
    full: bool,
}

impl EntryBuilder {
    fn new(first: Proposal) -> EntryBuilder {
        let mut entry = EntryBuilder { proposals: Vec::new(), commands: 0, bytes: 0, full: false };
        // A single proposal always fits: `propose_group` refused larger groups.
        let refused = entry.add(first);
        debug_assert!(refused.is_none(), "a single proposal fits an entry");
        entry
    }

    /// Adds `next` if it fits; otherwise marks the entry full and hands `next` back.
    fn add(&mut self, next: Proposal) -> Option<Proposal> {
        let fits = self.proposals.is_empty()
            || (self.bytes + next.encoded_bytes <= ENTRY_BYTES_MAX
                && self.commands + next.commands.len() <= ENTRY_COMMANDS_MAX);
        if !fits {
            self.full = true;
            return Some(next);
        }
        self.bytes += next.encoded_bytes;
        self.commands += next.commands.len();
        self.proposals.push(next);
        self.full = self.commands >= ENTRY_COMMANDS_MAX;
        None
    }
}

async fn propose_entry(
    raft: &Raft,
    clock: &LedgerClock,
    reader: &LedgerReader,
    commit_timeout: Duration,
    batch: Vec<Proposal>,
    stats: &ProposerStats,
) {
    // Copy what we need out of the metrics: holding the watch borrow across an await would block
    // RaftCore (research P-11).
    let (term, is_leader, leader_id) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        (metrics.current_term, metrics.state == ServerState::Leader, metrics.current_leader)
    };
    let mut commands = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for proposal in batch {
        replies.push((proposal.commands.len(), proposal.reply));
        commands.extend(proposal.commands);
    }
    if !is_leader {
        let error = not_leader(raft, leader_id);
        for (_, reply) in replies {
            let _ = reply.send(Err(error.clone()));
        }
        return;
    }
    let time = clock.stamp(term, reader.applied().ledger_time);
    let entry = LedgerEntry { time, commands };
    let outcome = tokio::time::timeout(commit_timeout, raft.client_write(entry)).await;
    match outcome {
        Ok(Ok(response)) => {
            let log_index = response.log_id.index;
            let ledger_time = response.data.ledger_time;
            let results = response.data.results;
            let expected: usize = replies.iter().map(|(count, _)| count).sum();
            assert_eq!(results.len(), expected, "one result per command of entry {log_index}");
            stats.entries.fetch_add(1, Ordering::Relaxed);
            stats.commands.fetch_add(results.len() as u64, Ordering::Relaxed);
            let mut results = results.into_iter();
            for (count, reply) in replies {
                let group = results.by_ref().take(count).map(|result| Applied { result, log_index, ledger_time });
                let _ = reply.send(Ok(group.collect()));
            }
        }
        Ok(Err(error)) => {
            let error = match error {
                RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => ProposeError::NotLeader {
                    leader_id: forward.leader_id,
                    leader_address: forward.leader_node.map(|node| node.addr),
                },
                RaftError::APIError(other) => ProposeError::Stopped(other.to_string()),
                RaftError::Fatal(fatal) => ProposeError::Stopped(fatal.to_string()),
            };
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(_elapsed) => {
            let error = ProposeError::Timeout { timeout_ms: commit_timeout.as_millis() as u64 };
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn not_leader(raft: &Raft, leader_id: Option<NodeId>) -> ProposeError {
    let leader_address = leader_id.and_then(|id| {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().get_node(&id).map(|node| node.addr.clone())
    });
    ProposeError::NotLeader { leader_id, leader_address }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::OperatorCommand;
    use crate::ledger::RecordKey;

    /// A proposal of `commands` commands said to encode to `encoded_bytes` bytes.
    fn proposal(commands: usize, encoded_bytes: usize) -> Proposal {
        let command = Command::Forget(OperatorCommand {
            key: RecordKey { namespace: "ns".to_string(), key: b"k".to_vec() },
            reason: "test".to_string(),
            operator: String::new(),
        });
        Proposal { commands: vec![command; commands], encoded_bytes, reply: oneshot::channel().0 }
    }

    #[tokio::test]
    async fn an_entry_leaves_the_in_flight_count_even_when_its_task_panics() {
        let count = Arc::new(watch::Sender::new(0usize));
        let counted = InFlight::enter(&count);
        assert_eq!(*count.borrow(), 1);
        let task = tokio::spawn(async move {
            let _counted = counted;
            panic!("a bug in propose_entry");
        });
        assert!(task.await.is_err(), "the task panicked");
        assert_eq!(*count.borrow(), 0, "partly filled entries are not held back for good");
    }

    #[test]
    fn an_entry_is_full_at_the_command_limit_and_takes_nothing_more() {
        let mut entry = EntryBuilder::new(proposal(ENTRY_COMMANDS_MAX - 2, 100));
        assert!(!entry.full, "room for two more commands");
        assert!(entry.add(proposal(2, 100)).is_none());
        assert!(entry.full, "exactly ENTRY_COMMANDS_MAX commands is full");
        assert_eq!(entry.commands, ENTRY_COMMANDS_MAX);
        let refused = entry.add(proposal(1, 10)).expect("a full entry hands the proposal back");
        assert_eq!(refused.commands.len(), 1);
        assert_eq!((entry.proposals.len(), entry.commands, entry.bytes), (2, ENTRY_COMMANDS_MAX, 200));
    }

    #[test]
    fn a_group_that_would_pass_a_limit_waits_for_the_next_entry_whole() {
        // Commands: a group is never split, so 3 + 254 > 256 hands the whole group back.
        let mut entry = EntryBuilder::new(proposal(3, 30));
        let refused = entry.add(proposal(ENTRY_COMMANDS_MAX - 2, 300)).expect("does not fit");
        assert_eq!(refused.commands.len(), ENTRY_COMMANDS_MAX - 2);
        assert!(entry.full, "an entry that refused a proposal is proposed at once");
        assert_eq!((entry.commands, entry.bytes), (3, 30));
        // Bytes.
        let mut entry = EntryBuilder::new(proposal(1, ENTRY_BYTES_MAX - 10));
        assert!(entry.add(proposal(1, 11)).is_some());
        assert!(entry.full);
        let mut entry = EntryBuilder::new(proposal(1, ENTRY_BYTES_MAX - 10));
        assert!(entry.add(proposal(1, 10)).is_none(), "exactly ENTRY_BYTES_MAX fits");
        assert!(!entry.full, "the byte limit alone marks full only when something is refused");
    }
}
