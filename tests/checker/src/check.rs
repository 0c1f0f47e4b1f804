//! Judges a history against the safety rules of DESIGN §4.
//!
//! The history splits per `(namespace, key)`; each rule is checked on one key's operations, except
//! the cluster-wide token uniqueness. Only acknowledged answers (`ok`) are evidence of what
//! happened; a `fail` did not take effect; an `info` (or an invoke never answered) may or may not
//! have taken effect, so it can excuse a suspicious observation but never cause a violation.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::history::Answer;
use crate::history::Body;
use crate::history::Call;
use crate::history::ClaimAnswer;
use crate::history::Event;
use crate::history::ReadAnswer;
use crate::history::ReadState;

/// The safety rules, by the names the reports and the compass use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Two claims of one key live at the same ledger time, or tokens not strictly increasing
    /// (DESIGN §4.1, §4.2).
    DoubleClaims,
    /// A complete accepted from a token older than one already granted (§4.3).
    StaleCompletesAccepted,
    /// A key completed with two different (token, outcome) pairs, or a completed key claimed
    /// again or answered IN_PROGRESS (§4.3).
    ChangedOutcomes,
    /// An acknowledged completion missing from the read-back after the run (§4.4).
    LostCompletions,
    /// An outcome observed that no complete carried (§4.3).
    PhantomOutcomes,
    /// Final reads at the same applied index disagree (§4.5).
    ReplicaDivergence,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::DoubleClaims,
        Rule::StaleCompletesAccepted,
        Rule::ChangedOutcomes,
        Rule::LostCompletions,
        Rule::PhantomOutcomes,
        Rule::ReplicaDivergence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::DoubleClaims => "double_claims",
            Rule::StaleCompletesAccepted => "stale_completes_accepted",
            Rule::ChangedOutcomes => "changed_outcomes",
            Rule::LostCompletions => "lost_completions",
            Rule::PhantomOutcomes => "phantom_outcomes",
            Rule::ReplicaDivergence => "replica_divergence",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Violations per rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub double_claims: usize,
    pub stale_completes_accepted: usize,
    pub changed_outcomes: usize,
    pub lost_completions: usize,
    pub phantom_outcomes: usize,
    pub replica_divergence: usize,
}

impl Counts {
    pub fn get(&self, rule: Rule) -> usize {
        match rule {
            Rule::DoubleClaims => self.double_claims,
            Rule::StaleCompletesAccepted => self.stale_completes_accepted,
            Rule::ChangedOutcomes => self.changed_outcomes,
            Rule::LostCompletions => self.lost_completions,
            Rule::PhantomOutcomes => self.phantom_outcomes,
            Rule::ReplicaDivergence => self.replica_divergence,
        }
    }

    fn slot(&mut self, rule: Rule) -> &mut usize {
        match rule {
            Rule::DoubleClaims => &mut self.double_claims,
            Rule::StaleCompletesAccepted => &mut self.stale_completes_accepted,
            Rule::ChangedOutcomes => &mut self.changed_outcomes,
            Rule::LostCompletions => &mut self.lost_completions,
            Rule::PhantomOutcomes => &mut self.phantom_outcomes,
            Rule::ReplicaDivergence => &mut self.replica_divergence,
        }
    }

    pub fn total(&self) -> usize {
        Rule::ALL.iter().map(|rule| self.get(*rule)).sum()
    }
}

/// One violation: the rule, the key, the operations involved and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: Rule,
    pub namespace: String,
    pub key: String,
    /// Op ids of the operations that show it.
    pub ops: Vec<u64>,
    pub description: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: Vec<String> = self.ops.iter().map(u64::to_string).collect();
        write!(f, "[{}] {}/{} (ops {}): {}", self.rule, self.namespace, self.key, ops.join(", "), self.description)
    }
}

/// Figures about the history itself, for non-vacuity checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub events: usize,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Invoked but never answered (counted as info by the rules).
    pub unanswered: usize,
    pub keys: usize,
    /// Distinct claims granted (CLAIMED answers, repeats of one claim request merged).
    pub grants: usize,
    /// Distinct acknowledged (key, token, outcome) completions.
    pub acked_completions: usize,
    pub final_reads: usize,
    /// Acknowledged completions of keys that no final read covered (not judged by
    /// `lost_completions`).
    pub unverified_completions: usize,
}

/// The verdict on a history.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub counts: Counts,
    pub violations: Vec<Violation>,
    /// Malformed history (a completion without its invoke, a completion of the wrong call, ...):
    /// such a history cannot be judged, so it is not valid.
    pub problems: Vec<String>,
    pub stats: Stats,
}

impl Report {
    /// No violation of any rule and a well-formed history.
    pub fn is_valid(&self) -> bool {
        self.counts.total() == 0 && self.problems.is_empty()
    }

    pub fn count(&self, rule: Rule) -> usize {
        self.counts.get(rule)
    }

    pub fn violations_of(&self, rule: Rule) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |violation| violation.rule == rule)
    }

    /// One line: every rule with its count.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> =
            Rule::ALL.iter().map(|rule| format!("{} {}", rule.name(), self.counts.get(*rule))).collect();
        if !self.problems.is_empty() {
            parts.push(format!("history_problems {}", self.problems.len()));
        }
        parts.join(", ")
    }

    fn add(&mut self, rule: Rule, namespace: &str, key: &str, ops: impl IntoIterator<Item = u64>, description: String) {
        let ops: BTreeSet<u64> = ops.into_iter().collect();
        *self.counts.slot(rule) += 1;
        self.violations.push(Violation {
            rule,
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            ops: ops.into_iter().collect(),
            description,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        for violation in &self.violations {
            writeln!(f, "{violation}")?;
        }
        for problem in &self.problems {
            writeln!(f, "[history] {problem}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Operations: invokes paired with their completions.

#[derive(Clone, Copy)]
enum Res<'a> {
    /// Never answered: maybe applied.
    Pending,
    Ok(&'a Answer, u64),
    Fail,
    /// Maybe applied.
    Info,
}

struct Op<'a> {
    id: u64,
    namespace: &'a str,
    key: &'a str,
    call: &'a Call,
    invoke_ns: u64,
    res: Res<'a>,
}

impl<'a> Op<'a> {
    /// The call did not definitely fail: it took effect (ok) or may have (info, unanswered).
    fn may_have_applied(&self) -> bool {
        !matches!(self.res, Res::Fail)
    }

    fn ambiguous(&self) -> bool {
        matches!(self.res, Res::Pending | Res::Info)
    }

    fn ok(&self) -> Option<(&'a Answer, u64)> {
        match self.res {
            Res::Ok(answer, ns) => Some((answer, ns)),
            _ => None,
        }
    }

    /// A read answer, with `final` taken from the invoke as well.
    fn read(&self) -> Option<(ReadAnswer, u64)> {
        match (self.call, self.ok()) {
            (Call::Read { is_final }, Some((Answer::Read(read), ns))) => {
                let mut read = read.clone();
                read.is_final |= *is_final;
                Some((read, ns))
            }
            _ => None,
        }
    }
}

fn pair_events<'a>(events: &'a [Event], report: &mut Report) -> Vec<Op<'a>> {
    let mut ops: Vec<Op<'a>> = Vec::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    for event in events {
        match &event.body {
            Body::Invoke(call) => {
                if by_id.contains_key(&event.op) {
                    report.problems.push(format!("op {} invoked twice", event.op));
                    continue;
                }
                by_id.insert(event.op, ops.len());
                ops.push(Op {
                    id: event.op,
                    namespace: &event.namespace,
                    key: &event.key,
                    call,
                    invoke_ns: event.time_ns,
                    res: Res::Pending,
                });
            }
            body => {
                let Some(&index) = by_id.get(&event.op) else {
                    report.problems.push(format!("op {}: {:?} without an invoke", event.op, event.event_type()));
                    continue;
                };
                let op = &mut ops[index];
                if !matches!(op.res, Res::Pending) {
                    report.problems.push(format!("op {} completed twice", event.op));
                    continue;
                }
                if op.namespace != event.namespace || op.key != event.key {
                    report.problems.push(format!("op {}: completion names another key than its invoke", event.op));
                    continue;
                }
                if op.call.f() != event.f() {
                    report.problems.push(format!(
                        "op {}: invoked as {} but completed as {}",
                        event.op,
                        op.call.f().name(),
                        event.f().name()
                    ));
                    continue;
                }
                op.res = match body {
                    Body::Ok(answer) => Res::Ok(answer, event.time_ns),
                    Body::Fail(_) => Res::Fail,
                    Body::Info(_) => Res::Info,
                    Body::Invoke(_) => unreachable!("handled above"),
                };
            }
        }
    }
    ops
}

/// The least ledger time an operation invoked at a given moment can be applied at: ledger time is
/// non-decreasing in log order, and an operation invoked after another was acknowledged is
/// appended after it.
struct LedgerFloor {
    /// (time the answer arrived, largest ledger time acknowledged up to then), by arrival.
    points: Vec<(u64, u64)>,
}

impl LedgerFloor {
    fn new(ops: &[Op<'_>]) -> Self {
        let mut points: Vec<(u64, u64)> = ops
            .iter()
            .filter_map(|op| op.ok().and_then(|(answer, ns)| answer.ledger_time_ms().map(|time| (ns, time))))
            .collect();
        points.sort_unstable();
        let mut max = 0;
        for point in &mut points {
            max = max.max(point.1);
            point.1 = max;
        }
        LedgerFloor { points }
    }

    fn at(&self, invoke_ns: u64) -> u64 {
        let before = self.points.partition_point(|(ns, _)| *ns < invoke_ns);
        if before == 0 {
            0
        } else {
            self.points[before - 1].1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checker.

/// Judges a history (events in any order of ops; each op's invoke before its completion).
pub fn check(events: &[Event]) -> Report {
    let mut report = Report::default();
    let ops = pair_events(events, &mut report);
    let floor = LedgerFloor::new(&ops);

    let mut keys: BTreeMap<(&str, &str), Vec<&Op<'_>>> = BTreeMap::new();
    for op in &ops {
        keys.entry((op.namespace, op.key)).or_default().push(op);
    }

    report.stats.events = events.len();
    report.stats.ops = ops.len();
    for op in &ops {
        match op.res {
            Res::Pending => report.stats.unanswered += 1,
            Res::Ok(..) => report.stats.ok += 1,
            Res::Fail => report.stats.fail += 1,
            Res::Info => report.stats.info += 1,
        }
    }
    report.stats.keys = keys.len();

    // token -> the first key that was granted it.
    let mut token_owner: BTreeMap<u64, ((&str, &str), Vec<u64>)> = BTreeMap::new();
    for (&(namespace, key), key_ops) in &keys {
        let checker = KeyChecker { namespace, key, ops: key_ops, floor: &floor };
        let grants = checker.grants();
        report.stats.grants += grants.len();
        checker.double_claims(&grants, &mut report);
        checker.stale_completes(&grants, &mut report);
        checker.changed_outcomes(&mut report);
        checker.phantom_outcomes(&mut report);
        checker.final_reads(&mut report);
        checker.replica_divergence(&mut report);

        for grant in &grants {
            match token_owner.get(&grant.token) {
                Some((other, other_ops)) if *other != (namespace, key) => {
                    let description = format!(
                        "token {} was granted for {}/{} (ops {:?}) and again for this key",
                        grant.token, other.0, other.1, other_ops
                    );
                    let ops: Vec<u64> = grant.ops.iter().chain(other_ops).copied().collect();
                    report.add(Rule::DoubleClaims, namespace, key, ops, description);
                }
                Some(_) => {}
                None => {
                    token_owner.insert(grant.token, ((namespace, key), grant.ops.clone()));
                }
            }
        }
    }
    report
}

/// One claim as granted by CLAIMED answers (repeats of the same claim request merged).
struct Grant<'a> {
    token: u64,
    time: u64,
    deadline: u64,
    owner: &'a str,
    request_id: Option<&'a str>,
    ops: Vec<u64>,
    /// Earliest arrival of a CLAIMED answer for it.
    first_ok_ns: u64,
    /// Invoke time of the call that first got it.
    invoke_ns: u64,
    /// Acknowledged lease changes: extends and repeated CLAIMED answers.
    renewals: Vec<Renewal>,
    /// Intervals of ledger time over which the claim was certainly live.
    live: Vec<(u64, u64)>,
}

/// An acknowledged lease change: from `time` on the lease runs to `deadline`.
#[derive(Clone, Copy, Debug)]
struct Renewal {
    time: u64,
    deadline: u64,
    invoke_ns: u64,
    ok_ns: u64,
}

/// An extend that may have been applied: at the earliest at `earliest` (ledger time), setting the
/// deadline to its apply time plus `lease_ms` (which may shorten the lease).
#[derive(Clone, Copy, Debug)]
struct MaybeExtend {
    earliest: u64,
    lease_ms: u64,
}

struct KeyChecker<'k, 'a> {
    namespace: &'a str,
    key: &'a str,
    ops: &'k [&'k Op<'a>],
    floor: &'k LedgerFloor,
}

fn overlap(a: &[(u64, u64)], b: &[(u64, u64)]) -> Option<(u64, u64)> {
    for &(a0, a1) in a {
        for &(b0, b1) in b {
            let (start, end) = (a0.max(b0), a1.min(b1));
            if start < end {
                return Some((start, end));
            }
        }
    }
    None
}

fn describe_view(read: &ReadAnswer) -> String {
    let state = match read.state {
        ReadState::None => "none",
        ReadState::Claimed => "claimed",
        ReadState::Completed => "completed",
        ReadState::Available => "available",
    };
    let mut text = state.to_owned();
    if let Some(token) = read.token {
        text.push_str(&format!(" token {token}"));
    }
    if let Some(outcome) = &read.outcome {
        text.push_str(&format!(" outcome {outcome:?}"));
    }
    if let Some(digest) = &read.digest {
        text.push_str(&format!(" digest {digest}"));
    }
    text
}

impl<'a> KeyChecker<'_, 'a> {
    fn grants(&self) -> Vec<Grant<'a>> {
        let mut answers: Vec<(u64, u64, u64, u64, u64, &Op<'a>)> = Vec::new();
        for op in self.ops {
            if let Some((Answer::Claim(ClaimAnswer::Claimed { token, lease_deadline_ms, ledger_time_ms, .. }), ns)) =
                op.ok()
            {
                answers.push((*ledger_time_ms, *token, *lease_deadline_ms, ns, op.invoke_ns, op));
            }
        }
        answers.sort_by_key(|(time, token, _, ns, _, op)| (*time, *token, *ns, op.id));

        let mut grants: Vec<Grant<'a>> = Vec::new();
        for (time, token, deadline, ok_ns, invoke_ns, op) in answers {
            let Call::Claim { owner, request_id, .. } = op.call else { continue };
            let repeat = grants.iter_mut().find(|grant| {
                grant.token == token
                    && grant.owner == owner.as_str()
                    && request_id.is_some()
                    && grant.request_id == request_id.as_deref()
            });
            match repeat {
                Some(grant) => {
                    // The same claim request answered again: the claim is (still) live from here.
                    grant.ops.push(op.id);
                    grant.first_ok_ns = grant.first_ok_ns.min(ok_ns);
                    grant.renewals.push(Renewal { time, deadline, invoke_ns, ok_ns });
                }
                None => grants.push(Grant {
                    token,
                    time,
                    deadline,
                    owner,
                    request_id: request_id.as_deref(),
                    ops: vec![op.id],
                    first_ok_ns: ok_ns,
                    invoke_ns,
                    renewals: Vec::new(),
                    live: Vec::new(),
                }),
            }
        }

        for grant in &mut grants {
            let mut maybe = Vec::new();
            for op in self.ops {
                let Call::Extend { token, lease_ms } = op.call else { continue };
                if *token != grant.token {
                    continue;
                }
                match op.res {
                    Res::Ok(Answer::Extend { lease_deadline_ms, ledger_time_ms }, ok_ns) => {
                        grant.renewals.push(Renewal {
                            time: *ledger_time_ms,
                            deadline: *lease_deadline_ms,
                            invoke_ns: op.invoke_ns,
                            ok_ns,
                        });
                    }
                    Res::Pending | Res::Info => maybe.push(MaybeExtend {
                        earliest: self.floor.at(op.invoke_ns).max(grant.time),
                        lease_ms: *lease_ms,
                    }),
                    _ => {}
                }
            }
            grant.renewals.sort_by_key(|renewal| (renewal.time, renewal.ok_ns));
            let end = self.earliest_end(grant.token);
            grant.live = live_intervals(grant.time, grant.deadline, &grant.renewals, &maybe, end);
        }
        grants
    }

    /// The earliest ledger time at which the claim with `token` may have stopped being live
    /// because it was completed or released: acknowledged ends at their ledger time, and ambiguous
    /// completes and releases at the earliest time they could have been applied.
    fn earliest_end(&self, token: u64) -> u64 {
        let mut end = u64::MAX;
        for op in self.ops {
            let ends_token = match op.call {
                Call::Complete { token: t, .. } | Call::Release { token: t } => *t == token,
                _ => false,
            };
            if ends_token && op.ambiguous() {
                end = end.min(self.floor.at(op.invoke_ns));
            }
            match (op.call, op.ok()) {
                (
                    Call::Complete { token: t, .. },
                    Some((Answer::Complete { completed_at_ms, ledger_time_ms, .. }, _)),
                ) if *t == token => {
                    end = end.min(*completed_at_ms).min(*ledger_time_ms);
                }
                (Call::Release { token: t }, Some((Answer::Release { ledger_time_ms, .. }, _))) if *t == token => {
                    end = end.min(*ledger_time_ms);
                }
                (_, Some((Answer::Claim(ClaimAnswer::Completed { token: t, completed_at_ms, .. }), _)))
                    if *t == token =>
                {
                    end = end.min(*completed_at_ms);
                }
                (_, Some((Answer::Read(read), _)))
                    if read.token == Some(token)
                        && matches!(read.state, ReadState::Completed | ReadState::Available) =>
                {
                    if let Some(time) = read.ledger_time_ms {
                        end = end.min(time);
                    }
                }
                _ => {}
            }
        }
        end
    }

    /// `double_claims`: live intervals of two grants intersect, or a grant's token is not greater
    /// than the token of a grant before it (in ledger order, or in real time: answered before the
    /// other was invoked). At most one violation per grant.
    fn double_claims(&self, grants: &[Grant<'_>], report: &mut Report) {
        for (j, later) in grants.iter().enumerate() {
            let mut reasons: Vec<String> = Vec::new();
            let mut ops: Vec<u64> = later.ops.clone();
            for (i, earlier) in grants.iter().enumerate() {
                if i == j {
                    continue;
                }
                let before_in_ledger = i < j;
                // Answered before the later one was sent (equal tokens are left to the ledger
                // order, so that one pair is reported once).
                let before_in_real_time = earlier.first_ok_ns < later.invoke_ns && later.token < earlier.token;
                if (before_in_ledger && later.token <= earlier.token) || before_in_real_time {
                    let order = if before_in_ledger { "granted earlier in ledger time" } else { "acknowledged before" };
                    reasons.push(format!(
                        "token {} (granted at {}) is not greater than token {} {} (at {})",
                        later.token, later.time, earlier.token, order, earlier.time
                    ));
                    ops.extend(&earlier.ops);
                } else if before_in_ledger {
                    let at_grant = earlier.live.iter().find(|(start, end)| *start <= later.time && later.time < *end);
                    if let Some((start, end)) = at_grant {
                        reasons.push(format!(
                            "token {} was granted at {} while token {} (granted at {}, lease to {}) was live over [{}, {})",
                            later.token, later.time, earlier.token, earlier.time, earlier.deadline, start, end
                        ));
                        ops.extend(&earlier.ops);
                    } else if let Some((start, end)) = overlap(&earlier.live, &later.live) {
                        reasons.push(format!(
                            "token {} (granted at {}, lease to {}) and token {} (granted at {}) were both live over [{}, {})",
                            earlier.token, earlier.time, earlier.deadline, later.token, later.time, start, end
                        ));
                        ops.extend(&earlier.ops);
                    }
                }
            }
            if !reasons.is_empty() {
                report.add(Rule::DoubleClaims, self.namespace, self.key, ops, reasons.join("; "));
            }
        }
    }

    /// `stale_completes_accepted`: an accepted (not replayed) complete whose token is older than a
    /// claim granted at or before its ledger time, or acknowledged before it was sent.
    fn stale_completes(&self, grants: &[Grant<'_>], report: &mut Report) {
        for op in self.ops {
            let (Call::Complete { token, .. }, Some((Answer::Complete { replayed: false, ledger_time_ms, .. }, _))) =
                (op.call, op.ok())
            else {
                continue;
            };
            let newer: Vec<&Grant<'_>> = grants
                .iter()
                .filter(|grant| {
                    grant.token > *token && (grant.time <= *ledger_time_ms || grant.first_ok_ns < op.invoke_ns)
                })
                .collect();
            if newer.is_empty() {
                continue;
            }
            let tokens: Vec<String> =
                newer.iter().map(|grant| format!("token {} at {}", grant.token, grant.time)).collect();
            let description = format!(
                "complete with token {} accepted at {} after a newer claim was granted ({})",
                token,
                ledger_time_ms,
                tokens.join(", ")
            );
            let ops = std::iter::once(op.id).chain(newer.iter().flat_map(|grant| grant.ops.iter().copied()));
            report.add(Rule::StaleCompletesAccepted, self.namespace, self.key, ops, description);
        }
    }

    /// Every (token, outcome) observed as stored: accepted completes, COMPLETED answers, reads.
    /// Items: (token, outcome, op, answer arrival, whether it is an accepted complete).
    fn observed_completions(&self) -> Vec<(u64, &'a str, u64, u64, bool)> {
        let mut seen = Vec::new();
        for op in self.ops {
            match (op.call, op.ok()) {
                (Call::Complete { token, outcome }, Some((Answer::Complete { .. }, ns))) => {
                    seen.push((*token, outcome.as_str(), op.id, ns, true));
                }
                (_, Some((Answer::Claim(ClaimAnswer::Completed { token, outcome, .. }), ns))) => {
                    seen.push((*token, outcome.as_str(), op.id, ns, false));
                }
                (_, Some((Answer::Read(read), ns))) if read.state == ReadState::Completed => {
                    if let (Some(token), Some(outcome)) = (read.token, read.outcome.as_deref()) {
                        seen.push((token, outcome, op.id, ns, false));
                    }
                }
                _ => {}
            }
        }
        seen
    }

    /// `changed_outcomes`: more than one (token, outcome) pair observed as completed; and a key
    /// claimed again or answered IN_PROGRESS after it was observed completed (no purge is assumed
    /// within a run: retention must outlast it).
    fn changed_outcomes(&self, report: &mut Report) {
        let mut pairs: BTreeMap<(u64, &str), Vec<u64>> = BTreeMap::new();
        for (token, outcome, op, _, _) in self.observed_completions() {
            pairs.entry((token, outcome)).or_default().push(op);
        }
        if pairs.len() > 1 {
            let listed: Vec<String> = pairs
                .iter()
                .map(|((token, outcome), ops)| format!("token {token} outcome {outcome:?} (ops {ops:?})"))
                .collect();
            let ops = pairs.values().flatten().copied();
            report.add(
                Rule::ChangedOutcomes,
                self.namespace,
                self.key,
                ops,
                format!("completed with different outcomes: {}", listed.join("; ")),
            );
        }

        // Completed is final: the first acknowledged completion, in ledger time and in real time.
        let mut completed_at: Option<(u64, u64)> = None;
        let mut completed_seen_ns: Option<(u64, u64)> = None;
        for op in self.ops {
            let at = match op.ok() {
                Some((Answer::Complete { completed_at_ms, ledger_time_ms, .. }, ns)) => {
                    Some(((*completed_at_ms).min(*ledger_time_ms), ns))
                }
                Some((Answer::Claim(ClaimAnswer::Completed { completed_at_ms, .. }), ns)) => {
                    Some((*completed_at_ms, ns))
                }
                _ => None,
            };
            if let Some((time, ns)) = at {
                if completed_at.is_none_or(|(earliest, _)| time < earliest) {
                    completed_at = Some((time, op.id));
                }
                if completed_seen_ns.is_none_or(|(earliest, _)| ns < earliest) {
                    completed_seen_ns = Some((ns, op.id));
                }
            }
        }
        for op in self.ops {
            let (answer, what, time) = match op.ok() {
                Some((Answer::Claim(ClaimAnswer::Claimed { token, ledger_time_ms, .. }), _)) => {
                    (op, format!("granted token {token}"), Some(*ledger_time_ms))
                }
                Some((Answer::Claim(ClaimAnswer::InProgress { ledger_time_ms, .. }), _)) => {
                    (op, "answered IN_PROGRESS".to_owned(), *ledger_time_ms)
                }
                _ => continue,
            };
            if let (Some((done, done_op)), Some(time)) = (completed_at, time) {
                if time > done {
                    report.add(
                        Rule::ChangedOutcomes,
                        self.namespace,
                        self.key,
                        [answer.id, done_op],
                        format!("a claim was {what} at {time}, after the key was completed at {done}"),
                    );
                    continue;
                }
            }
            if let Some((done_ns, done_op)) = completed_seen_ns {
                if done_ns < answer.invoke_ns {
                    report.add(
                        Rule::ChangedOutcomes,
                        self.namespace,
                        self.key,
                        [answer.id, done_op],
                        format!("a claim sent after op {done_op} had seen the key completed was {what}"),
                    );
                }
            }
        }
    }

    /// `phantom_outcomes`: a stored outcome (COMPLETED answer or read) that no complete of this
    /// key carried with that token, among completes that did not fail and were sent before the
    /// observation arrived. One violation per (token, outcome).
    fn phantom_outcomes(&self, report: &mut Report) {
        let mut phantoms: BTreeMap<(u64, &str), Vec<u64>> = BTreeMap::new();
        for (token, outcome, op, ns, from_complete) in self.observed_completions() {
            if from_complete {
                continue;
            }
            let carried = self.ops.iter().any(|carrier| {
                carrier.may_have_applied()
                    && carrier.invoke_ns <= ns
                    && matches!(carrier.call, Call::Complete { token: t, outcome: o } if *t == token && o == outcome)
            });
            if !carried {
                phantoms.entry((token, outcome)).or_default().push(op);
            }
        }
        for ((token, outcome), ops) in phantoms {
            report.add(
                Rule::PhantomOutcomes,
                self.namespace,
                self.key,
                ops,
                format!("outcome {outcome:?} with token {token} was observed but no complete sent before carried it"),
            );
        }
    }

    /// The last final read of each node (highest applied index, then latest answer).
    fn last_final_reads(&self) -> BTreeMap<u64, (ReadAnswer, u64)> {
        let mut last: BTreeMap<u64, (ReadAnswer, u64, u64)> = BTreeMap::new();
        for op in self.ops {
            let Some((read, ns)) = op.read() else { continue };
            if !read.is_final {
                continue;
            }
            let newer = last
                .get(&read.node)
                .is_none_or(|(seen, seen_ns, _)| (read.applied_index, ns) >= (seen.applied_index, *seen_ns));
            if newer {
                last.insert(read.node, (read, ns, op.id));
            }
        }
        last.into_iter().map(|(node, (read, _, op))| (node, (read, op))).collect()
    }

    /// `lost_completions`: an accepted complete that the last final read of some node does not
    /// show as completed with its token and outcome. One violation per (token, outcome).
    fn final_reads(&self, report: &mut Report) {
        let mut acked: BTreeMap<(u64, &str), Vec<u64>> = BTreeMap::new();
        for op in self.ops {
            if let (Call::Complete { token, outcome }, Some((Answer::Complete { .. }, _))) = (op.call, op.ok()) {
                acked.entry((*token, outcome.as_str())).or_default().push(op.id);
            }
        }
        report.stats.acked_completions += acked.len();
        let reads = self.last_final_reads();
        report.stats.final_reads += self.ops.iter().filter(|op| op.read().is_some_and(|(r, _)| r.is_final)).count();
        if reads.is_empty() {
            report.stats.unverified_completions += acked.len();
            return;
        }
        for ((token, outcome), ops) in acked {
            let missing: Vec<(u64, &ReadAnswer, u64)> = reads
                .iter()
                .filter(|(_, (read, _))| {
                    !(read.state == ReadState::Completed
                        && read.token == Some(token)
                        && read.outcome.as_deref() == Some(outcome))
                })
                .map(|(node, (read, op))| (*node, read, *op))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let nodes: Vec<String> = missing
                .iter()
                .map(|(node, read, _)| {
                    format!("node {node} at index {} shows {}", read.applied_index, describe_view(read))
                })
                .collect();
            let all_ops = ops.iter().copied().chain(missing.iter().map(|(_, _, op)| *op));
            report.add(
                Rule::LostCompletions,
                self.namespace,
                self.key,
                all_ops,
                format!(
                    "accepted completion with token {token} outcome {outcome:?} is missing from the final read-back: {}",
                    nodes.join("; ")
                ),
            );
        }
    }

    /// `replica_divergence`: final reads at the same applied index that disagree on state, token,
    /// outcome or (where every read has one) the record digest. One violation per applied index.
    fn replica_divergence(&self, report: &mut Report) {
        let mut by_index: BTreeMap<u64, Vec<(ReadAnswer, u64)>> = BTreeMap::new();
        for op in self.ops {
            if let Some((read, _)) = op.read() {
                if read.is_final {
                    by_index.entry(read.applied_index).or_default().push((read, op.id));
                }
            }
        }
        for (index, reads) in by_index {
            let views: BTreeSet<(ReadState, Option<u64>, Option<&str>)> =
                reads.iter().map(|(read, _)| (read.state, read.token, read.outcome.as_deref())).collect();
            // Digests count only where every read carries one.
            let digests: BTreeSet<Option<&str>> = reads.iter().map(|(read, _)| read.digest.as_deref()).collect();
            let digests_differ = digests.len() > 1 && !digests.contains(&None);
            if views.len() <= 1 && !digests_differ {
                continue;
            }
            let listed: Vec<String> =
                reads.iter().map(|(read, _)| format!("node {}: {}", read.node, describe_view(read))).collect();
            report.add(
                Rule::ReplicaDivergence,
                self.namespace,
                self.key,
                reads.iter().map(|(_, op)| *op),
                format!("final reads at applied index {index} disagree: {}", listed.join("; ")),
            );
        }
    }
}

/// Ledger-time intervals over which a claim granted at `start` with lease `deadline` was certainly
/// live, given acknowledged renewals (sorted by time), extends that may have been applied, and the
/// earliest time it may have been completed or released (`end`).
///
/// Between two acknowledged renewals the lease runs to the earlier one's deadline, unless an
/// ambiguous extend applied in between shortened it: applied at the earliest possible moment it
/// ends the lease soonest. Renewals at the same ledger time applied in an unknown order unless one
/// was sent after all the others were answered; otherwise the shortest of them counts.
fn live_intervals(
    start: u64,
    deadline: u64,
    renewals: &[Renewal],
    maybe_extends: &[MaybeExtend],
    end: u64,
) -> Vec<(u64, u64)> {
    // (from, deadline) at each acknowledged point, the grant first.
    let mut points: Vec<(u64, u64)> = vec![(start, deadline)];
    let relevant: Vec<&Renewal> = renewals.iter().filter(|renewal| renewal.time >= start).collect();
    for group in relevant.chunk_by(|a, b| a.time == b.time) {
        let last = group.iter().max_by_key(|renewal| renewal.invoke_ns).expect("groups are not empty");
        let ordered = group.iter().all(|other| std::ptr::eq(*other, *last) || other.ok_ns < last.invoke_ns);
        let deadline = if ordered {
            last.deadline
        } else {
            group.iter().map(|renewal| renewal.deadline).min().expect("groups are not empty")
        };
        points.push((group[0].time, deadline));
    }

    let mut intervals: Vec<(u64, u64)> = Vec::new();
    for (index, &(from, deadline)) in points.iter().enumerate() {
        if from >= end {
            break;
        }
        let next = points.get(index + 1).map_or(u64::MAX, |point| point.0);
        let mut until = deadline.min(next).min(end);
        for maybe in maybe_extends {
            until = until.min(maybe.earliest.max(from).saturating_add(maybe.lease_ms));
        }
        if from >= until {
            continue;
        }
        match intervals.last_mut() {
            Some(last) if last.1 == from => last.1 = until,
            _ => intervals.push((from, until)),
        }
    }
    intervals
}
