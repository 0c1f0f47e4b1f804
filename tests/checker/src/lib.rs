//! dedup-checker: records client operations against dedup-ledger as a JSON-lines history and
//! judges the history against the safety rules of DESIGN §4.
//!
//! Recording: share one [`HistoryWriter`] between the clients of a run; call
//! [`HistoryWriter::invoke`] before sending a call and exactly one of [`HistoryWriter::ok`],
//! [`HistoryWriter::fail`] (the status proves no effect: a state-machine rejection such as FENCED
//! or an INVALID_ARGUMENT) or [`HistoryWriter::info`] (timeout, UNAVAILABLE, connection lost:
//! maybe applied) when it returns. After the run, read every key back from every node with
//! [`Call::final_read`].
//!
//! Judging: [`check`] splits the history per `(namespace, key)` and counts violations per
//! [`Rule`]. Only `ok` answers are evidence; `fail` did not happen; `info` (and invokes never
//! answered) may or may not have happened, and can excuse but never cause a violation. Real-time
//! order ("answered before the other was sent") is read from `time_ns`, so all events of one
//! history must come from one clock.
//!
//! - `double_claims`: a claim granted at ledger time T while an earlier grant was certainly live
//!   at T, or two grants certainly live at one moment, or a token not greater than one granted
//!   before it (in ledger order, or answered before it was sent), or one token granted twice
//!   (also across keys). A grant is certainly live from its ledger time until its lease deadline,
//!   as moved by acknowledged extends (and repeated CLAIMED answers to the same request id),
//!   cut at the first acknowledged complete/release of its token, at the earliest moment an
//!   ambiguous complete/release of its token could have applied, and at the earliest deadline an
//!   ambiguous extend could have set (extends set `now + lease_ms` and may shorten a lease).
//!   "The earliest moment an ambiguous call could have applied" is the largest ledger time
//!   acknowledged before it was sent (ledger time is non-decreasing in log order).
//! - `stale_completes_accepted`: a complete accepted (not replayed) with token t at ledger time
//!   Tc while a grant with a larger token was granted at or before Tc, or answered before the
//!   complete was sent.
//! - `changed_outcomes`: two different (token, outcome) pairs seen as completed for one key
//!   (accepted completes, COMPLETED answers, reads); also a completed key granted again or
//!   answered IN_PROGRESS (by ledger time after the first acknowledged completion, or to a claim
//!   sent after a completion was acknowledged). The checker assumes nothing is purged during a
//!   run: use a retention longer than the run.
//! - `lost_completions`: an accepted complete whose (token, outcome) is not what the last final
//!   read of some node shows. Ambiguous completes are not required; if one shows with another
//!   outcome under its token, that is a `phantom_outcomes`.
//! - `phantom_outcomes`: a (token, outcome) seen as completed (COMPLETED answer or read) that no
//!   complete of the key carried, counting only completes that did not fail and were sent before
//!   the observation was answered.
//! - `replica_divergence`: final reads of one key at the same applied index that disagree on
//!   state, token or outcome.
//!
//! ```
//! use dedup_checker::{check, Answer, Call, HistoryWriter, ReadState, Rule};
//!
//! let history = HistoryWriter::in_memory();
//! let claim = history.invoke(1, "ns", "k", Call::claim("client-1", 1_000));
//! history.ok(claim, Answer::claimed(41, 2_000, 1, 1_000));
//! let complete = history.invoke(1, "ns", "k", Call::complete(41, "c1:o:1"));
//! history.ok(complete, Answer::completed(1_500));
//! for node in 1..=3 {
//!     let read = history.invoke(9, "ns", "k", Call::final_read());
//!     history.ok(read, Answer::read(node, ReadState::Completed, Some(41), Some("c1:o:1"), 60));
//! }
//! let report = check(&history.events().unwrap());
//! assert!(report.is_valid(), "{report}");
//! assert_eq!(report.count(Rule::LostCompletions), 0);
//! ```

mod check;
mod history;
pub mod summary;

pub use check::check;
pub use check::Counts;
pub use check::Report;
pub use check::Rule;
pub use check::Stats;
pub use check::Violation;
pub use history::read_history;
pub use history::read_history_file;
pub use history::write_history;
pub use history::Answer;
pub use history::Body;
pub use history::Call;
pub use history::ClaimAnswer;
pub use history::Event;
pub use history::EventType;
pub use history::Failure;
pub use history::Func;
pub use history::HistoryError;
pub use history::HistoryWriter;
pub use history::Indeterminate;
pub use history::ReadAnswer;
pub use history::ReadState;

/// Reads a history file and checks it.
pub fn check_file(path: impl AsRef<std::path::Path>) -> Result<Report, HistoryError> {
    Ok(check(&read_history_file(path)?))
}
