//! The history: one JSON object per line, one line per event.
//!
//! An operation is an `invoke` event followed by at most one completion (`ok`, `fail` or `info`)
//! carrying the same `op` id. An invoke without a completion (the recording process died, the run
//! ended) counts as `info`: maybe applied.
//!
//! ```text
//! {"op":1,"process":3,"namespace":"ns","key":"k","time_ns":10,"type":"invoke","f":"claim","owner":"c3","lease_ms":2000}
//! {"op":1,"process":3,"namespace":"ns","key":"k","time_ns":95,"type":"ok","f":"claim","answer":"claimed","token":41,"lease_deadline_ms":1002000,"attempt":1,"ledger_time_ms":1000000}
//! {"op":2,"process":3,"namespace":"ns","key":"k","time_ns":99,"type":"invoke","f":"complete","token":41,"outcome":"c3:o:2"}
//! {"op":2,"process":3,"namespace":"ns","key":"k","time_ns":180,"type":"info","f":"complete","error":"deadline exceeded"}
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::BufRead;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

/// The call an event belongs to (`"f"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Func {
    Claim,
    Complete,
    Release,
    Extend,
    Read,
}

impl Func {
    pub fn name(self) -> &'static str {
        match self {
            Func::Claim => "claim",
            Func::Complete => "complete",
            Func::Release => "release",
            Func::Extend => "extend",
            Func::Read => "read",
        }
    }
}

/// The kind of an event (`"type"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The call was sent.
    Invoke,
    /// The call was answered; the answer is recorded.
    Ok,
    /// The call definitely did not take effect (a state-machine rejection or a validation error).
    Fail,
    /// Timed out or connection lost: the call may or may not have taken effect.
    Info,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Operation id: the invoke and its completion share it.
    pub op: u64,
    /// The logical client that issued the operation (one operation in flight per process).
    pub process: u64,
    pub namespace: String,
    pub key: String,
    /// Monotonic nanoseconds of the recording process: comparable across all events of one
    /// history, so "returned before invoked" can be decided from it.
    pub time_ns: u64,
    /// `type`, `f` and the fields that depend on them.
    #[serde(flatten)]
    pub body: Body,
}

impl Event {
    pub fn event_type(&self) -> EventType {
        match self.body {
            Body::Invoke(_) => EventType::Invoke,
            Body::Ok(_) => EventType::Ok,
            Body::Fail(_) => EventType::Fail,
            Body::Info(_) => EventType::Info,
        }
    }

    pub fn f(&self) -> Func {
        match &self.body {
            Body::Invoke(call) => call.f(),
            Body::Ok(answer) => answer.f(),
            Body::Fail(failure) => failure.f,
            Body::Info(info) => info.f,
        }
    }

    /// This event as one JSON line (no trailing newline).
    pub fn to_json(&self) -> Result<String, HistoryError> {
        serde_json::to_string(self).map_err(HistoryError::Encode)
    }

    pub fn from_json(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// What an event says, tagged by `"type"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Body {
    Invoke(Call),
    Ok(Answer),
    Fail(Failure),
    Info(Indeterminate),
}

/// The arguments of a call, tagged by `"f"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Call {
    Claim {
        owner: String,
        lease_ms: u64,
        /// `claim_request_id`: a repeated claim with the same owner and id is not a second claim.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Complete {
        token: u64,
        /// The outcome payload. Workloads should make it unique per attempt so that any observed
        /// outcome names the call that wrote it.
        outcome: String,
    },
    Release {
        token: u64,
    },
    Extend {
        token: u64,
        lease_ms: u64,
    },
    /// A `Get`, or a read-back after the run (`final: true`).
    Read {
        #[serde(rename = "final", default, skip_serializing_if = "is_false")]
        is_final: bool,
    },
}

impl Call {
    pub fn f(&self) -> Func {
        match self {
            Call::Claim { .. } => Func::Claim,
            Call::Complete { .. } => Func::Complete,
            Call::Release { .. } => Func::Release,
            Call::Extend { .. } => Func::Extend,
            Call::Read { .. } => Func::Read,
        }
    }

    pub fn claim(owner: impl Into<String>, lease_ms: u64) -> Call {
        Call::Claim { owner: owner.into(), lease_ms, request_id: None }
    }

    pub fn claim_with_id(owner: impl Into<String>, lease_ms: u64, request_id: impl Into<String>) -> Call {
        Call::Claim { owner: owner.into(), lease_ms, request_id: Some(request_id.into()) }
    }

    pub fn complete(token: u64, outcome: impl Into<String>) -> Call {
        Call::Complete { token, outcome: outcome.into() }
    }

    pub fn release(token: u64) -> Call {
        Call::Release { token }
    }

    pub fn extend(token: u64, lease_ms: u64) -> Call {
        Call::Extend { token, lease_ms }
    }

    pub fn read() -> Call {
        Call::Read { is_final: false }
    }

    /// A read of the read-back after the run, the one `lost_completions` and
    /// `replica_divergence` judge.
    pub fn final_read() -> Call {
        Call::Read { is_final: true }
    }
}

/// An answer, tagged by `"f"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Answer {
    Claim(ClaimAnswer),
    Complete {
        completed_at_ms: u64,
        #[serde(default)]
        replayed: bool,
        #[serde(default)]
        late: bool,
        ledger_time_ms: u64,
    },
    Release {
        ledger_time_ms: u64,
        #[serde(default)]
        replayed: bool,
    },
    Extend {
        lease_deadline_ms: u64,
        ledger_time_ms: u64,
    },
    Read(ReadAnswer),
}

impl Answer {
    pub fn f(&self) -> Func {
        match self {
            Answer::Claim(_) => Func::Claim,
            Answer::Complete { .. } => Func::Complete,
            Answer::Release { .. } => Func::Release,
            Answer::Extend { .. } => Func::Extend,
            Answer::Read(_) => Func::Read,
        }
    }

    /// The ledger time the answering node reported, where the answer carries one.
    pub fn ledger_time_ms(&self) -> Option<u64> {
        match self {
            Answer::Claim(ClaimAnswer::Claimed { ledger_time_ms, .. }) => Some(*ledger_time_ms),
            Answer::Claim(ClaimAnswer::InProgress { ledger_time_ms, .. }) => *ledger_time_ms,
            Answer::Claim(ClaimAnswer::Completed { ledger_time_ms, .. }) => *ledger_time_ms,
            Answer::Complete { ledger_time_ms, .. } => Some(*ledger_time_ms),
            Answer::Release { ledger_time_ms, .. } => Some(*ledger_time_ms),
            Answer::Extend { ledger_time_ms, .. } => Some(*ledger_time_ms),
            Answer::Read(read) => read.ledger_time_ms,
        }
    }

    /// A CLAIMED answer.
    pub fn claimed(token: u64, lease_deadline_ms: u64, attempt: u32, ledger_time_ms: u64) -> Answer {
        Answer::Claim(ClaimAnswer::Claimed { token, lease_deadline_ms, attempt, ledger_time_ms })
    }

    /// An IN_PROGRESS answer to a claim.
    pub fn in_progress(owner: impl Into<String>, lease_deadline_ms: u64, ledger_time_ms: Option<u64>) -> Answer {
        Answer::Claim(ClaimAnswer::InProgress { owner: owner.into(), lease_deadline_ms, ledger_time_ms })
    }

    /// A COMPLETED answer to a claim (a duplicate).
    pub fn already_completed(
        token: u64,
        outcome: impl Into<String>,
        completed_at_ms: u64,
        ledger_time_ms: Option<u64>,
    ) -> Answer {
        Answer::Claim(ClaimAnswer::Completed { token, outcome: outcome.into(), completed_at_ms, ledger_time_ms })
    }

    /// A first (not replayed, not late) accepted complete applied at `ledger_time_ms`.
    pub fn completed(ledger_time_ms: u64) -> Answer {
        Answer::Complete { completed_at_ms: ledger_time_ms, replayed: false, late: false, ledger_time_ms }
    }

    pub fn released(ledger_time_ms: u64) -> Answer {
        Answer::Release { ledger_time_ms, replayed: false }
    }

    pub fn extended(lease_deadline_ms: u64, ledger_time_ms: u64) -> Answer {
        Answer::Extend { lease_deadline_ms, ledger_time_ms }
    }

    /// A read answer; `final` is copied from the read invoke by [`HistoryWriter::ok`].
    pub fn read(node: u64, state: ReadState, token: Option<u64>, outcome: Option<&str>, applied_index: u64) -> Answer {
        Answer::Read(ReadAnswer {
            node,
            state,
            token,
            outcome: outcome.map(str::to_owned),
            applied_index,
            is_final: false,
            ledger_time_ms: None,
            digest: None,
        })
    }
}

/// The three answers of `CheckAndClaim`, tagged by `"answer"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ClaimAnswer {
    /// The claim is live over `[ledger_time_ms, lease_deadline_ms)` (until extended, released or
    /// completed).
    Claimed { token: u64, lease_deadline_ms: u64, attempt: u32, ledger_time_ms: u64 },
    InProgress {
        owner: String,
        lease_deadline_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ledger_time_ms: Option<u64>,
    },
    /// A duplicate: the stored outcome and the token that completed the key.
    Completed {
        token: u64,
        outcome: String,
        completed_at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ledger_time_ms: Option<u64>,
    },
}

/// A record state as a read reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadState {
    /// No record (NOT_FOUND).
    None,
    Claimed,
    Completed,
    Available,
}

/// What one node answered to a read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAnswer {
    /// The node that answered.
    pub node: u64,
    pub state: ReadState,
    /// Current (claimed) or last (completed, available) token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The stored outcome payload (completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The Raft index the answering node had applied.
    pub applied_index: u64,
    /// Part of the read-back after the run.
    #[serde(rename = "final", default, skip_serializing_if = "is_false")]
    pub is_final: bool,
    /// Ledger time of `applied_index`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_time_ms: Option<u64>,
    /// A digest of every stored field of the record (attempt, lease, times, owner, checkpoint
    /// ...), when the reader computed one: replicas at the same applied index must agree on it
    /// too, not only on state, token and outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A `fail` event: the call definitely did not take effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub f: Func,
    /// The stable reason string (`FENCED`, `NOT_CLAIMED`, `LEASE_LAPSED`, `OUTCOME_IMMUTABLE`, ...).
    pub reason: String,
}

/// An `info` event: timed out or connection lost; the call may have taken effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indeterminate {
    pub f: Func,
    pub error: String,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Errors of recording, writing and reading histories.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("history line {line}: {source}")]
    Json { line: usize, source: serde_json::Error },
    #[error("encoding a history event: {0}")]
    Encode(serde_json::Error),
    #[error("op {0} was never invoked through this writer")]
    UnknownOp(u64),
    #[error("op {op} was invoked as {invoked:?} but answered as {answered:?}")]
    WrongAnswer { op: u64, invoked: Func, answered: Func },
}

enum Clock {
    Monotonic(Instant),
    /// 1, 2, 3, ...: one tick per recorded event.
    Logical(u64),
    Custom(Box<dyn FnMut() -> u64 + Send>),
}

impl Clock {
    fn now(&mut self) -> u64 {
        match self {
            Clock::Monotonic(start) => u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Clock::Logical(tick) => {
                *tick += 1;
                *tick
            }
            Clock::Custom(clock) => clock(),
        }
    }
}

struct OpenOp {
    process: u64,
    namespace: String,
    key: String,
    f: Func,
    final_read: bool,
}

struct WriterState<W> {
    out: W,
    clock: Clock,
    next_op: u64,
    open: HashMap<u64, OpenOp>,
    /// The first error; recording goes on (best effort) and [`HistoryWriter::finish`] returns it.
    error: Option<HistoryError>,
}

impl<W: Write> WriterState<W> {
    fn write(&mut self, event: &Event) {
        let result = event.to_json().and_then(|mut line| {
            line.push('\n');
            self.out.write_all(line.as_bytes()).map_err(HistoryError::from)
        });
        if let Err(error) = result {
            self.error.get_or_insert(error);
        }
    }

    fn complete(&mut self, op: u64, body: Body) {
        let Some(open) = self.open.remove(&op) else {
            self.error.get_or_insert(HistoryError::UnknownOp(op));
            return;
        };
        let mut body = body;
        let answered = match &mut body {
            Body::Ok(Answer::Read(read)) => {
                read.is_final |= open.final_read;
                Func::Read
            }
            Body::Ok(answer) => answer.f(),
            Body::Fail(failure) => failure.f,
            Body::Info(info) => info.f,
            Body::Invoke(call) => call.f(),
        };
        if answered != open.f {
            self.error.get_or_insert(HistoryError::WrongAnswer { op, invoked: open.f, answered });
            return;
        }
        let event = Event {
            op,
            process: open.process,
            namespace: open.namespace,
            key: open.key,
            time_ns: self.clock.now(),
            body,
        };
        self.write(&event);
    }
}

/// Appends events to a history as JSON lines. Thread-safe: share it (`Arc`) between the client
/// tasks of a run. Op ids are assigned by [`HistoryWriter::invoke`]; times come from the writer's
/// clock, read under its lock, so the lines are in time order.
///
/// Recording never fails the caller: the first error is kept and returned by
/// [`HistoryWriter::finish`] (or [`HistoryWriter::flush`]).
pub struct HistoryWriter<W: Write + Send> {
    state: Mutex<WriterState<W>>,
}

impl HistoryWriter<Vec<u8>> {
    /// A writer that keeps the JSON lines in memory; read them back with
    /// [`HistoryWriter::events`].
    pub fn in_memory() -> Self {
        HistoryWriter::new(Vec::new())
    }

    /// The events written so far.
    pub fn events(&self) -> Result<Vec<Event>, HistoryError> {
        let state = self.lock();
        read_history(state.out.as_slice())
    }

    /// The JSON lines written so far.
    pub fn json_lines(&self) -> String {
        String::from_utf8_lossy(&self.lock().out).into_owned()
    }
}

impl HistoryWriter<BufWriter<File>> {
    /// Creates (or truncates) a history file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, HistoryError> {
        Ok(HistoryWriter::new(BufWriter::new(File::create(path)?)))
    }
}

impl<W: Write + Send> HistoryWriter<W> {
    /// A writer on any sink; times are monotonic nanoseconds since this call.
    pub fn new(out: W) -> Self {
        HistoryWriter {
            state: Mutex::new(WriterState {
                out,
                clock: Clock::Monotonic(Instant::now()),
                next_op: 1,
                open: HashMap::new(),
                error: None,
            }),
        }
    }

    /// Times become 1, 2, 3, ... (one tick per event): deterministic histories for tests.
    pub fn with_logical_clock(self) -> Self {
        self.lock().clock = Clock::Logical(0);
        self
    }

    /// Times come from `clock` (for example a simulator's clock). It must not go backwards.
    pub fn with_clock(self, clock: impl FnMut() -> u64 + Send + 'static) -> Self {
        self.lock().clock = Clock::Custom(Box::new(clock));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState<W>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `process` sends `call` for `(namespace, key)`; returns the new op id.
    pub fn invoke(&self, process: u64, namespace: &str, key: &str, call: Call) -> u64 {
        let mut state = self.lock();
        let op = state.next_op;
        state.next_op += 1;
        let final_read = matches!(call, Call::Read { is_final: true });
        state.open.insert(
            op,
            OpenOp { process, namespace: namespace.to_owned(), key: key.to_owned(), f: call.f(), final_read },
        );
        let time_ns = state.clock.now();
        let event = Event {
            op,
            process,
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            time_ns,
            body: Body::Invoke(call),
        };
        state.write(&event);
        op
    }

    /// Records the answer to `op`. The answer's `f` must match the invoke's.
    pub fn ok(&self, op: u64, answer: Answer) {
        self.lock().complete(op, Body::Ok(answer));
    }

    /// Records that `op` definitely did not take effect, with the error's stable reason.
    pub fn fail(&self, op: u64, reason: impl Into<String>) {
        let mut state = self.lock();
        let f = state.open.get(&op).map(|open| open.f);
        match f {
            Some(f) => state.complete(op, Body::Fail(Failure { f, reason: reason.into() })),
            None => {
                state.error.get_or_insert(HistoryError::UnknownOp(op));
            }
        }
    }

    /// Records that `op` may or may not have taken effect (timeout, connection lost, ...).
    pub fn info(&self, op: u64, error: impl Into<String>) {
        let mut state = self.lock();
        let f = state.open.get(&op).map(|open| open.f);
        match f {
            Some(f) => state.complete(op, Body::Info(Indeterminate { f, error: error.into() })),
            None => {
                state.error.get_or_insert(HistoryError::UnknownOp(op));
            }
        }
    }

    /// Appends a ready-made event as is (its op id and time are the caller's). Later
    /// [`HistoryWriter::invoke`] ids stay above it.
    pub fn append(&self, event: &Event) {
        let mut state = self.lock();
        state.next_op = state.next_op.max(event.op.saturating_add(1));
        state.write(event);
    }

    /// Flushes the sink; returns the first recording error, if any.
    pub fn flush(&self) -> Result<(), HistoryError> {
        let mut state = self.lock();
        if let Err(error) = state.out.flush() {
            state.error.get_or_insert(HistoryError::Io(error));
        }
        match state.error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Flushes and returns the sink, or the first recording error.
    pub fn finish(self) -> Result<W, HistoryError> {
        let mut state = self.state.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.out.flush()?;
        match state.error {
            Some(error) => Err(error),
            None => Ok(state.out),
        }
    }
}

/// Reads a JSON-lines history; blank lines are skipped.
pub fn read_history(reader: impl BufRead) -> Result<Vec<Event>, HistoryError> {
    let mut events = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event = Event::from_json(&line).map_err(|source| HistoryError::Json { line: index + 1, source })?;
        events.push(event);
    }
    Ok(events)
}

/// Reads a JSON-lines history file.
pub fn read_history_file(path: impl AsRef<Path>) -> Result<Vec<Event>, HistoryError> {
    read_history(BufReader::new(File::open(path)?))
}

/// Writes events as JSON lines.
pub fn write_history(mut out: impl Write, events: &[Event]) -> Result<(), HistoryError> {
    for event in events {
        let mut line = event.to_json()?;
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
