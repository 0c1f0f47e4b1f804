//! Hand-made histories: for each rule one that must be flagged and a close one that must pass.

use dedup_checker::check;
use dedup_checker::Answer;
use dedup_checker::Call;
use dedup_checker::HistoryWriter;
use dedup_checker::ReadState;
use dedup_checker::Report;
use dedup_checker::Rule;

const NS: &str = "ns";
const KEY: &str = "k";

/// A history under construction, with a logical clock (each event one tick later).
struct History {
    writer: HistoryWriter<Vec<u8>>,
}

impl History {
    fn new() -> Self {
        History { writer: HistoryWriter::in_memory().with_logical_clock() }
    }

    fn invoke(&self, process: u64, call: Call) -> u64 {
        self.writer.invoke(process, NS, KEY, call)
    }

    /// A claim answered CLAIMED.
    fn claimed(&self, process: u64, token: u64, at: u64, deadline: u64) -> u64 {
        let op = self.invoke(process, Call::claim(format!("c{process}"), deadline - at));
        self.writer.ok(op, Answer::claimed(token, deadline, 1, at));
        op
    }

    /// A complete accepted at `at`.
    fn completed(&self, process: u64, token: u64, outcome: &str, at: u64) -> u64 {
        let op = self.invoke(process, Call::complete(token, outcome));
        self.writer.ok(op, Answer::completed(at));
        op
    }

    /// A complete that timed out: maybe applied.
    fn complete_info(&self, process: u64, token: u64, outcome: &str) -> u64 {
        let op = self.invoke(process, Call::complete(token, outcome));
        self.writer.info(op, "deadline exceeded");
        op
    }

    fn final_read(&self, node: u64, state: ReadState, token: Option<u64>, outcome: Option<&str>, index: u64) {
        let op = self.invoke(100 + node, Call::final_read());
        self.writer.ok(op, Answer::read(node, state, token, outcome, index));
    }

    fn check(&self) -> Report {
        check(&self.writer.events().expect("history parses"))
    }
}

/// `rule` has `count` violations and every other rule none.
#[track_caller]
fn assert_only(report: &Report, rule: Rule, count: usize) {
    assert!(report.problems.is_empty(), "history problems: {report}");
    for other in Rule::ALL {
        let expected = if other == rule { count } else { 0 };
        assert_eq!(report.count(other), expected, "{other} in:\n{report}");
    }
    assert_eq!(report.violations.len(), count, "{report}");
    assert!(!report.is_valid());
}

#[track_caller]
fn assert_valid(report: &Report) {
    assert!(report.is_valid(), "expected a valid history:\n{report}");
}

// ---------------------------------------------------------------------------------------------
// double_claims

#[test]
fn overlapping_claims_are_a_double_claim() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.claimed(2, 20, 1_500, 2_500);
    let report = h.check();
    assert_only(&report, Rule::DoubleClaims, 1);
    assert!(
        report.violations[0]
            .description
            .contains("granted at 1500 while token 10 (granted at 1000, lease to 2000) was live over [1000, 2000)"),
        "{report}"
    );
}

#[test]
fn claim_after_the_lease_lapsed_is_a_takeover() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.claimed(2, 20, 2_000, 3_000);
    assert_valid(&h.check());
}

#[test]
fn claim_after_a_release_is_fine() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let release = h.invoke(1, Call::release(10));
    h.writer.ok(release, Answer::released(1_200));
    h.claimed(2, 20, 1_500, 2_500);
    assert_valid(&h.check());
}

#[test]
fn an_acknowledged_extend_keeps_the_claim_live() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let extend = h.invoke(1, Call::extend(10, 1_200));
    h.writer.ok(extend, Answer::extended(3_000, 1_800));
    h.claimed(2, 20, 2_500, 3_500);
    assert_only(&h.check(), Rule::DoubleClaims, 1);

    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let extend = h.invoke(1, Call::extend(10, 1_200));
    h.writer.ok(extend, Answer::extended(3_000, 1_800));
    h.claimed(2, 20, 3_000, 4_000);
    assert_valid(&h.check());
}

#[test]
fn an_ambiguous_extend_does_not_make_a_double_claim() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let extend = h.invoke(1, Call::extend(10, 1_200));
    h.writer.info(extend, "connection reset");
    h.claimed(2, 20, 2_500, 3_500);
    assert_valid(&h.check());
}

#[test]
fn an_ambiguous_extend_may_have_shortened_the_lease() {
    // Extends set the deadline to (apply time + lease_ms): a timed-out extend with a short lease
    // may have ended the claim at 1100 instead of 1332.
    let h = History::new();
    h.claimed(1, 10, 1_000, 1_332);
    let extend = h.invoke(1, Call::extend(10, 100));
    h.writer.info(extend, "connection reset");
    h.claimed(2, 30, 1_100, 1_200);
    assert_valid(&h.check());

    // ... but not before 1100.
    let h = History::new();
    h.claimed(1, 10, 1_000, 1_332);
    let extend = h.invoke(1, Call::extend(10, 100));
    h.writer.info(extend, "connection reset");
    h.claimed(2, 30, 1_050, 1_200);
    assert_only(&h.check(), Rule::DoubleClaims, 1);
}

#[test]
fn renewals_at_one_ledger_time_apply_in_real_time_order() {
    // A repeated claim request and then an extend, both applied at ledger time 1000: the extend
    // was sent after the repeat was answered, so its deadline (1368) is the one that holds.
    let h = History::new();
    let first = h.invoke(1, Call::claim_with_id("c1", 100, "r1"));
    h.writer.ok(first, Answer::claimed(10, 1_100, 1, 1_000));
    let again = h.invoke(1, Call::claim_with_id("c1", 100, "r1"));
    h.writer.ok(again, Answer::claimed(10, 1_100, 1, 1_000));
    let extend = h.invoke(1, Call::extend(10, 368));
    h.writer.ok(extend, Answer::extended(1_368, 1_000));
    h.claimed(2, 30, 1_100, 1_200);
    assert_only(&h.check(), Rule::DoubleClaims, 1);
}

#[test]
fn tokens_must_increase() {
    let h = History::new();
    h.claimed(1, 20, 1_000, 2_000);
    h.claimed(2, 10, 2_500, 3_500);
    let report = h.check();
    assert_only(&report, Rule::DoubleClaims, 1);
    assert!(report.violations[0].description.contains("not greater"), "{report}");
}

#[test]
fn one_token_granted_to_two_claims() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.claimed(2, 10, 2_500, 3_500);
    assert_only(&h.check(), Rule::DoubleClaims, 1);
}

#[test]
fn one_token_granted_for_two_keys() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let op = h.writer.invoke(2, NS, "other", Call::claim("c2", 1_000));
    h.writer.ok(op, Answer::claimed(10, 2_100, 1, 1_100));
    assert_only(&h.check(), Rule::DoubleClaims, 1);
}

#[test]
fn a_repeated_claim_request_is_the_same_claim() {
    let h = History::new();
    let first = h.invoke(1, Call::claim_with_id("c1", 1_000, "r1"));
    h.writer.ok(first, Answer::claimed(10, 2_000, 1, 1_000));
    let again = h.invoke(1, Call::claim_with_id("c1", 1_000, "r1"));
    h.writer.ok(again, Answer::claimed(10, 2_000, 1, 1_100));
    let report = h.check();
    assert_valid(&report);
    assert_eq!(report.stats.grants, 1);
}

#[test]
fn an_ambiguous_release_may_have_ended_the_claim() {
    // The release timed out before the second claim was answered: it may have been applied
    // right after the first claim, so the second claim may be legitimate.
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let release = h.invoke(1, Call::release(10));
    h.writer.info(release, "deadline exceeded");
    h.claimed(2, 20, 1_500, 2_500);
    assert_valid(&h.check());
}

#[test]
fn an_ambiguous_release_sent_too_late_does_not_excuse() {
    // The release was sent after an answer at ledger time 1600 arrived, so it cannot have been
    // applied before 1600: the first claim was live at 1500 when the second was granted.
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.claimed(2, 20, 1_500, 2_500);
    let other = h.writer.invoke(3, NS, "other", Call::claim("c3", 1_000));
    h.writer.ok(other, Answer::claimed(30, 2_600, 1, 1_600));
    let release = h.invoke(1, Call::release(10));
    h.writer.info(release, "deadline exceeded");
    let report = h.check();
    assert_only(&report, Rule::DoubleClaims, 1);
    assert!(report.violations[0].description.contains("live over [1000, 1600)"), "{report}");
}

// ---------------------------------------------------------------------------------------------
// stale_completes_accepted

#[test]
fn complete_with_an_older_token_after_a_takeover_is_stale() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.claimed(2, 20, 2_100, 3_100);
    h.completed(1, 10, "c1:o", 2_200);
    assert_only(&h.check(), Rule::StaleCompletesAccepted, 1);
}

#[test]
fn complete_with_an_older_token_fenced_is_fine() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.claimed(2, 20, 2_100, 3_100);
    let stale = h.invoke(1, Call::complete(10, "c1:o"));
    h.writer.fail(stale, "FENCED");
    h.completed(2, 20, "c2:o", 2_200);
    assert_valid(&h.check());
}

#[test]
fn late_complete_before_any_takeover_is_fine() {
    // Lease lapsed at 2000, nobody took over, the complete is accepted late; the next claim sees
    // the stored outcome.
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let complete = h.invoke(1, Call::complete(10, "c1:o"));
    h.writer
        .ok(complete, Answer::Complete { completed_at_ms: 2_050, replayed: false, late: true, ledger_time_ms: 2_050 });
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::already_completed(10, "c1:o", 2_050, Some(2_100)));
    assert_valid(&h.check());
}

// ---------------------------------------------------------------------------------------------
// changed_outcomes

#[test]
fn a_different_outcome_for_a_completed_key_is_flagged() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.completed(1, 10, "c1:o:a", 1_500);
    // A duplicate complete with another outcome timed out; it should have been refused.
    h.complete_info(3, 10, "c3:o:b");
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::already_completed(10, "c3:o:b", 1_500, Some(1_600)));
    assert_only(&h.check(), Rule::ChangedOutcomes, 1);
}

#[test]
fn the_same_outcome_seen_again_is_fine() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.completed(1, 10, "c1:o:a", 1_500);
    h.complete_info(3, 10, "c3:o:b");
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::already_completed(10, "c1:o:a", 1_500, Some(1_600)));
    assert_valid(&h.check());
}

#[test]
fn a_completed_key_claimed_again_is_flagged() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.completed(1, 10, "c1:o", 1_500);
    h.claimed(2, 20, 1_600, 2_600);
    let report = h.check();
    assert_only(&report, Rule::ChangedOutcomes, 1);
    assert!(report.violations[0].description.contains("after the key was completed"), "{report}");
}

#[test]
fn a_completed_key_answered_in_progress_is_flagged() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.completed(1, 10, "c1:o", 1_500);
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::in_progress("c1", 2_000, None));
    assert_only(&h.check(), Rule::ChangedOutcomes, 1);

    // Answered IN_PROGRESS while the claim was live, before the complete: fine.
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::in_progress("c1", 2_000, Some(1_200)));
    h.completed(1, 10, "c1:o", 1_500);
    assert_valid(&h.check());
}

// ---------------------------------------------------------------------------------------------
// lost_completions

#[test]
fn an_acknowledged_completion_missing_on_one_node_is_lost() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.completed(1, 10, "c1:o", 1_500);
    h.final_read(1, ReadState::Completed, Some(10), Some("c1:o"), 50);
    h.final_read(2, ReadState::Completed, Some(10), Some("c1:o"), 50);
    h.final_read(3, ReadState::Claimed, Some(10), None, 40);
    let report = h.check();
    assert_only(&report, Rule::LostCompletions, 1);
    assert!(report.violations[0].description.contains("node 3"), "{report}");
}

#[test]
fn an_acknowledged_completion_on_every_node_is_fine() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.completed(1, 10, "c1:o", 1_500);
    h.final_read(1, ReadState::Completed, Some(10), Some("c1:o"), 50);
    h.final_read(2, ReadState::Completed, Some(10), Some("c1:o"), 50);
    h.final_read(3, ReadState::Completed, Some(10), Some("c1:o"), 45);
    let report = h.check();
    assert_valid(&report);
    assert_eq!(report.stats.unverified_completions, 0);
}

#[test]
fn the_last_final_read_of_a_node_counts() {
    // Node 3 was behind at the first read-back attempt and caught up at the second.
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.completed(1, 10, "c1:o", 1_500);
    h.final_read(3, ReadState::Claimed, Some(10), None, 40);
    h.final_read(3, ReadState::Completed, Some(10), Some("c1:o"), 50);
    assert_valid(&h.check());
}

#[test]
fn an_ambiguous_complete_may_or_may_not_be_in_the_read_back() {
    for (state, token, outcome, index) in [
        (ReadState::Claimed, Some(10), None, 40),
        (ReadState::Completed, Some(10), Some("c1:o"), 50),
        (ReadState::Available, Some(10), None, 50),
    ] {
        let h = History::new();
        h.claimed(1, 10, 1_000, 2_000);
        h.complete_info(1, 10, "c1:o");
        for node in 1..=3 {
            h.final_read(node, state, token, outcome, index);
        }
        assert_valid(&h.check());
    }

    // Present but with another outcome: nobody sent that one.
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.complete_info(1, 10, "c1:o");
    for node in 1..=3 {
        h.final_read(node, ReadState::Completed, Some(10), Some("garbage"), 50);
    }
    assert_only(&h.check(), Rule::PhantomOutcomes, 1);
}

// ---------------------------------------------------------------------------------------------
// phantom_outcomes

#[test]
fn an_outcome_nobody_sent_is_a_phantom() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::already_completed(10, "c1:o", 1_500, Some(1_600)));
    assert_only(&h.check(), Rule::PhantomOutcomes, 1);
}

#[test]
fn an_outcome_sent_by_an_ambiguous_complete_is_fine() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.complete_info(1, 10, "c1:o");
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::already_completed(10, "c1:o", 1_500, Some(1_600)));
    assert_valid(&h.check());
}

#[test]
fn an_outcome_sent_by_a_failed_complete_is_a_phantom() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let complete = h.invoke(1, Call::complete(10, "c1:o"));
    h.writer.fail(complete, "NOT_CLAIMED");
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::already_completed(10, "c1:o", 1_500, Some(1_600)));
    assert_only(&h.check(), Rule::PhantomOutcomes, 1);
}

#[test]
fn an_outcome_read_before_it_was_sent_is_a_phantom() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let read = h.invoke(2, Call::read());
    h.writer.ok(read, Answer::read(1, ReadState::Completed, Some(10), Some("c1:o"), 30));
    h.completed(1, 10, "c1:o", 1_500);
    assert_only(&h.check(), Rule::PhantomOutcomes, 1);
}

#[test]
fn an_outcome_with_another_token_is_a_phantom() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.complete_info(1, 10, "c1:o");
    let claim = h.invoke(2, Call::claim("c2", 1_000));
    h.writer.ok(claim, Answer::already_completed(11, "c1:o", 1_500, Some(1_600)));
    assert_only(&h.check(), Rule::PhantomOutcomes, 1);
}

// ---------------------------------------------------------------------------------------------
// replica_divergence

#[test]
fn replicas_disagreeing_at_one_index_diverge() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.complete_info(1, 10, "c1:o");
    h.final_read(1, ReadState::Completed, Some(10), Some("c1:o"), 50);
    h.final_read(2, ReadState::Claimed, Some(10), None, 50);
    h.final_read(3, ReadState::Completed, Some(10), Some("c1:o"), 50);
    assert_only(&h.check(), Rule::ReplicaDivergence, 1);
}

#[test]
fn a_lagging_replica_does_not_diverge() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.complete_info(1, 10, "c1:o");
    h.final_read(1, ReadState::Completed, Some(10), Some("c1:o"), 50);
    h.final_read(2, ReadState::Claimed, Some(10), None, 45);
    h.final_read(3, ReadState::Completed, Some(10), Some("c1:o"), 50);
    assert_valid(&h.check());
}

/// Same state, token and outcome, but a record field the digest covers (say the attempt count or
/// the retention deadline) differs: an entry applied twice on one replica looks like this.
fn final_read_with_digest(h: &History, node: u64, digest: Option<&str>) {
    let op = h.invoke(100 + node, Call::final_read());
    let mut answer = Answer::read(node, ReadState::Completed, Some(10), Some("c1:o"), 50);
    if let Answer::Read(read) = &mut answer {
        read.digest = digest.map(str::to_owned);
    }
    h.writer.ok(op, answer);
}

#[test]
fn replicas_with_different_record_digests_at_one_index_diverge() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.complete_info(1, 10, "c1:o");
    final_read_with_digest(&h, 1, Some("a1"));
    final_read_with_digest(&h, 2, Some("b2"));
    final_read_with_digest(&h, 3, Some("a1"));
    assert_only(&h.check(), Rule::ReplicaDivergence, 1);
}

#[test]
fn equal_digests_or_a_read_without_one_do_not_diverge() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.complete_info(1, 10, "c1:o");
    final_read_with_digest(&h, 1, Some("a1"));
    final_read_with_digest(&h, 2, None);
    final_read_with_digest(&h, 3, Some("a1"));
    assert_valid(&h.check());
}

// ---------------------------------------------------------------------------------------------
// Malformed histories

#[test]
fn an_answer_without_an_invoke_is_a_problem() {
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    let mut events = h.writer.events().unwrap();
    let mut orphan = events[1].clone();
    orphan.op = 99;
    events.push(orphan);
    let report = check(&events);
    assert_eq!(report.counts.total(), 0);
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(!report.is_valid());
}

#[test]
fn an_unanswered_invoke_counts_as_ambiguous() {
    // The recording client died while its release was in flight.
    let h = History::new();
    h.claimed(1, 10, 1_000, 2_000);
    h.invoke(1, Call::release(10));
    h.claimed(2, 20, 1_500, 2_500);
    let report = h.check();
    assert_valid(&report);
    assert_eq!(report.stats.unanswered, 1);
}
