//! No false alarms: histories produced by a correct reference ledger (DESIGN §2-§5), with lost
//! answers (applied or not), must pass every rule. And with a seeded bug and every answer
//! delivered, the bug must be caught whenever it fired.

use std::collections::BTreeMap;

use dedup_checker::check;
use dedup_checker::Answer;
use dedup_checker::Call;
use dedup_checker::HistoryWriter;
use dedup_checker::ReadState;
use dedup_checker::Rule;
use proptest::prelude::*;

const KEYS: [&str; 2] = ["a", "b"];
const CLIENTS: u64 = 3;

#[derive(Clone, Debug)]
enum Step {
    Advance(u64),
    Claim { client: u64, key: usize, lease_ms: u64, same_request: bool },
    Complete { client: u64, key: usize },
    Release { client: u64, key: usize },
    Extend { client: u64, key: usize, lease_ms: u64 },
    Read { key: usize },
}

/// What the client learns of the answer.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    Answered,
    /// Answered, but applied and answered only after the next operation.
    Delayed,
    LostAfterApply,
    LostBeforeApply,
}

#[derive(Clone, Debug, PartialEq)]
enum Record {
    None,
    Claimed { token: u64, deadline: u64, owner: String, request_id: String },
    Available { token: u64 },
    Completed { token: u64, outcome: String, at: u64 },
}

/// Bugs the checker must catch when seeded.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    None,
    /// Claims ignore the lease: a live claim is taken over.
    IgnoreLease,
    /// Completes accept any token of a claimed key.
    AcceptStaleComplete,
}

struct Ledger {
    now: u64,
    index: u64,
    records: Vec<Record>,
    bug: Bug,
    /// Something the bug made happen (so the test knows a violation is expected).
    bug_fired: bool,
}

/// The result of applying one command.
enum Applied {
    Ok(Answer),
    Fail(&'static str),
}

impl Ledger {
    fn apply(&mut self, key: usize, call: &Call) -> Applied {
        self.index += 1;
        let now = self.now;
        let record = &mut self.records[key];
        match call {
            Call::Claim { owner, lease_ms, request_id } => {
                let request_id = request_id.clone().unwrap_or_default();
                match record.clone() {
                    Record::Claimed { token, deadline, owner: holder, request_id: held } if now < deadline => {
                        if holder == *owner && held == request_id && !request_id.is_empty() {
                            return Applied::Ok(Answer::claimed(token, deadline, 1, now));
                        }
                        if self.bug == Bug::IgnoreLease {
                            self.bug_fired = true;
                        } else {
                            return Applied::Ok(Answer::in_progress(holder, deadline, Some(now)));
                        }
                    }
                    Record::Completed { token, outcome, at } => {
                        return Applied::Ok(Answer::already_completed(token, outcome, at, Some(now)));
                    }
                    _ => {}
                }
                let token = self.index;
                let deadline = now + lease_ms;
                *record = Record::Claimed { token, deadline, owner: owner.clone(), request_id };
                Applied::Ok(Answer::claimed(token, deadline, 1, now))
            }
            Call::Complete { token, outcome } => match record.clone() {
                Record::Claimed { token: current, deadline, .. } if current == *token => {
                    *record = Record::Completed { token: *token, outcome: outcome.clone(), at: now };
                    let late = now >= deadline;
                    Applied::Ok(Answer::Complete { completed_at_ms: now, replayed: false, late, ledger_time_ms: now })
                }
                Record::Claimed { token: current, .. } if self.bug == Bug::AcceptStaleComplete && *token < current => {
                    self.bug_fired = true;
                    *record = Record::Completed { token: *token, outcome: outcome.clone(), at: now };
                    Applied::Ok(Answer::completed(now))
                }
                Record::Completed { token: done, outcome: stored, at } if done == *token && stored == *outcome => {
                    Applied::Ok(Answer::Complete {
                        completed_at_ms: at,
                        replayed: true,
                        late: false,
                        ledger_time_ms: now,
                    })
                }
                Record::Completed { .. } => Applied::Fail("OUTCOME_IMMUTABLE"),
                Record::Claimed { token: current, .. } if *token < current => Applied::Fail("FENCED"),
                _ => Applied::Fail("NOT_CLAIMED"),
            },
            Call::Release { token } => match record.clone() {
                Record::Claimed { token: current, .. } if current == *token => {
                    *record = Record::Available { token: *token };
                    Applied::Ok(Answer::released(now))
                }
                Record::Available { token: last } if last == *token => {
                    Applied::Ok(Answer::Release { ledger_time_ms: now, replayed: true })
                }
                _ => Applied::Fail("NOT_CLAIMED"),
            },
            Call::Extend { token, lease_ms } => match record.clone() {
                Record::Claimed { token: current, deadline, owner, request_id } if current == *token => {
                    if now >= deadline {
                        return Applied::Fail("LEASE_LAPSED");
                    }
                    let deadline = now + lease_ms;
                    *record = Record::Claimed { token: current, deadline, owner, request_id };
                    Applied::Ok(Answer::extended(deadline, now))
                }
                _ => Applied::Fail("NOT_CLAIMED"),
            },
            Call::Read { .. } => {
                self.index -= 1;
                Applied::Ok(self.view(key, 1))
            }
        }
    }

    fn view(&self, key: usize, node: u64) -> Answer {
        let (state, token, outcome) = match &self.records[key] {
            Record::None => (ReadState::None, None, None),
            Record::Claimed { token, .. } => (ReadState::Claimed, Some(*token), None),
            Record::Available { token } => (ReadState::Available, Some(*token), None),
            Record::Completed { token, outcome, .. } => (ReadState::Completed, Some(*token), Some(outcome.as_str())),
        };
        Answer::read(node, state, token, outcome, self.index)
    }
}

fn step() -> impl Strategy<Value = Step> {
    let client = 0..CLIENTS;
    let key = 0..KEYS.len();
    prop_oneof![
        (0u64..1_500).prop_map(Step::Advance),
        (client.clone(), key.clone(), 100u64..1_000, any::<bool>())
            .prop_map(|(client, key, lease_ms, same_request)| { Step::Claim { client, key, lease_ms, same_request } }),
        (client.clone(), key.clone()).prop_map(|(client, key)| Step::Complete { client, key }),
        (client.clone(), key.clone()).prop_map(|(client, key)| Step::Release { client, key }),
        (client, key.clone(), 100u64..1_000).prop_map(|(client, key, lease_ms)| Step::Extend { client, key, lease_ms }),
        key.prop_map(|key| Step::Read { key }),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        5 => Just(Delivery::Answered),
        2 => Just(Delivery::Delayed),
        1 => Just(Delivery::LostAfterApply),
        1 => Just(Delivery::LostBeforeApply),
    ]
}

struct Sent {
    op: u64,
    process: u64,
    key: usize,
    call: Call,
}

/// Applies a sent call (unless lost before) and records what the client learns.
fn execute(
    writer: &HistoryWriter<Vec<u8>>,
    ledger: &mut Ledger,
    tokens: &mut BTreeMap<(u64, usize), u64>,
    sent: Sent,
    delivery: Delivery,
) {
    if matches!(delivery, Delivery::LostBeforeApply) {
        writer.info(sent.op, "deadline exceeded");
        return;
    }
    let applied = ledger.apply(sent.key, &sent.call);
    if matches!(delivery, Delivery::LostAfterApply) {
        writer.info(sent.op, "connection reset");
        return;
    }
    match applied {
        Applied::Ok(answer) => {
            if let Answer::Claim(dedup_checker::ClaimAnswer::Claimed { token, .. }) = &answer {
                tokens.insert((sent.process, sent.key), *token);
            }
            writer.ok(sent.op, answer);
        }
        Applied::Fail(reason) => writer.fail(sent.op, reason),
    }
}

/// Runs the steps against the reference ledger and returns the history (with a final read-back
/// from three nodes) and whether the seeded bug fired.
fn run(steps: &[(Step, Delivery)], bug: Bug) -> (Vec<dedup_checker::Event>, bool) {
    let writer = HistoryWriter::in_memory().with_logical_clock();
    let mut ledger = Ledger { now: 1_000, index: 0, records: vec![Record::None; KEYS.len()], bug, bug_fired: false };
    // What each client believes: its token and request id per key.
    let mut tokens: BTreeMap<(u64, usize), u64> = BTreeMap::new();
    let mut requests: BTreeMap<(u64, usize), u64> = BTreeMap::new();
    let mut delayed: Option<Sent> = None;
    for (n, (step, delivery)) in steps.iter().enumerate() {
        let (process, key, call) = match step {
            Step::Advance(ms) => {
                ledger.now += ms;
                continue;
            }
            Step::Claim { client, key, lease_ms, same_request } => {
                let request = requests.entry((*client, *key)).or_insert(n as u64);
                if !same_request {
                    *request = n as u64;
                }
                (*client, *key, Call::claim_with_id(format!("c{client}"), *lease_ms, format!("r{request}")))
            }
            Step::Complete { client, key } => {
                let token = tokens.get(&(*client, *key)).copied().unwrap_or(0);
                (*client, *key, Call::complete(token, format!("c{client}:o:{n}")))
            }
            Step::Release { client, key } => {
                (*client, *key, Call::release(tokens.get(&(*client, *key)).copied().unwrap_or(0)))
            }
            Step::Extend { client, key, lease_ms } => {
                (*client, *key, Call::extend(tokens.get(&(*client, *key)).copied().unwrap_or(0), *lease_ms))
            }
            Step::Read { key } => (CLIENTS, *key, Call::read()),
        };
        let op = writer.invoke(process, "ns", KEYS[key], call.clone());
        let sent = Sent { op, process, key, call };
        if matches!(delivery, Delivery::Delayed) && delayed.is_none() {
            // Applied and answered after the next operation: the two overlap in real time and
            // apply in the other order than they were sent.
            delayed = Some(sent);
            continue;
        }
        execute(&writer, &mut ledger, &mut tokens, sent, *delivery);
        if let Some(sent) = delayed.take() {
            execute(&writer, &mut ledger, &mut tokens, sent, Delivery::Answered);
        }
    }
    if let Some(sent) = delayed.take() {
        execute(&writer, &mut ledger, &mut tokens, sent, Delivery::Answered);
    }
    for (key, name) in KEYS.iter().enumerate() {
        for node in 1..=3 {
            let op = writer.invoke(CLIENTS + node, "ns", name, Call::final_read());
            writer.ok(op, ledger.view(key, node));
        }
    }
    (writer.events().unwrap(), ledger.bug_fired)
}

/// Cases per property: 512, or `DEDUP_CHECKER_CASES` for a longer search.
fn cases() -> u32 {
    std::env::var("DEDUP_CHECKER_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(512)
}

fn answered_steps() -> impl Strategy<Value = Vec<(Step, Delivery)>> {
    // Sequential: with concurrent renewals at one ledger time the order they applied in (and so
    // the lease) can be unknowable from the history, and the checker then assumes the shorter.
    prop::collection::vec(step().prop_map(|step| (step, Delivery::Answered)), 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn a_correct_ledger_passes(steps in prop::collection::vec((step(), delivery()), 0..60)) {
        let (events, _) = run(&steps, Bug::None);
        let report = check(&events);
        prop_assert!(report.is_valid(), "{}", report);
    }

    /// With every answer delivered, a takeover of a live claim is always visible.
    #[test]
    fn ignoring_the_lease_is_caught(steps in answered_steps()) {
        let (events, fired) = run(&steps, Bug::IgnoreLease);
        let report = check(&events);
        if fired {
            prop_assert!(report.count(Rule::DoubleClaims) > 0, "{}", report);
        } else {
            prop_assert!(report.is_valid(), "{}", report);
        }
    }

    /// With every answer delivered, an accepted stale complete is always visible.
    #[test]
    fn accepting_stale_completes_is_caught(steps in answered_steps()) {
        let (events, fired) = run(&steps, Bug::AcceptStaleComplete);
        let report = check(&events);
        if fired {
            prop_assert!(report.count(Rule::StaleCompletesAccepted) > 0, "{}", report);
        } else {
            prop_assert!(report.is_valid(), "{}", report);
        }
    }
}

/// A fixed schedule where the seeded bugs certainly show.
#[test]
fn seeded_bugs_are_caught_on_a_fixed_schedule() {
    let steps = [
        (Step::Claim { client: 0, key: 0, lease_ms: 500, same_request: false }, Delivery::Answered),
        (Step::Advance(100), Delivery::Answered),
        (Step::Claim { client: 1, key: 0, lease_ms: 500, same_request: false }, Delivery::Answered),
        (Step::Advance(100), Delivery::Answered),
        (Step::Complete { client: 0, key: 0 }, Delivery::Answered),
    ];
    let (events, _) = run(&steps, Bug::None);
    assert!(check(&events).is_valid());

    let (events, fired) = run(&steps, Bug::IgnoreLease);
    assert!(fired);
    let report = check(&events);
    assert_eq!(report.count(Rule::DoubleClaims), 1, "{report}");
    // Client 0's complete is fenced, so nothing else is wrong.
    assert_eq!(report.counts.total(), 1, "{report}");

    let steps_stale = [
        (Step::Claim { client: 0, key: 0, lease_ms: 200, same_request: false }, Delivery::Answered),
        (Step::Advance(300), Delivery::Answered),
        (Step::Claim { client: 1, key: 0, lease_ms: 500, same_request: false }, Delivery::Answered),
        (Step::Complete { client: 0, key: 0 }, Delivery::Answered),
    ];
    let (events, _) = run(&steps_stale, Bug::None);
    assert!(check(&events).is_valid());
    let (events, fired) = run(&steps_stale, Bug::AcceptStaleComplete);
    assert!(fired);
    let report = check(&events);
    assert_eq!(report.count(Rule::StaleCompletesAccepted), 1, "{report}");
    assert_eq!(report.counts.total(), 1, "{report}");
}
