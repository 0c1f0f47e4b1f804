//! The JSON-lines format: round trips, the exact shape of lines, the writer's guarantees.

use std::collections::HashMap;
use std::sync::Arc;

use dedup_checker::read_history;
use dedup_checker::read_history_file;
use dedup_checker::write_history;
use dedup_checker::Answer;
use dedup_checker::Body;
use dedup_checker::Call;
use dedup_checker::ClaimAnswer;
use dedup_checker::Event;
use dedup_checker::EventType;
use dedup_checker::Func;
use dedup_checker::HistoryError;
use dedup_checker::HistoryWriter;
use dedup_checker::ReadState;

/// One event of every shape.
fn every_kind_of_event(writer: &HistoryWriter<Vec<u8>>) {
    let claim = writer.invoke(1, "ns", "k", Call::claim_with_id("c1", 2_000, "r1"));
    writer.ok(claim, Answer::claimed(41, 3_000, 1, 1_000));
    let busy = writer.invoke(2, "ns", "k", Call::claim("c2", 2_000));
    writer.ok(busy, Answer::in_progress("c1", 3_000, Some(1_100)));
    let extend = writer.invoke(1, "ns", "k", Call::extend(41, 2_000));
    writer.ok(extend, Answer::extended(3_200, 1_200));
    let stale = writer.invoke(3, "ns", "k", Call::release(7));
    writer.fail(stale, "FENCED");
    let complete = writer.invoke(1, "ns", "k", Call::complete(41, "c1:o:1"));
    writer.ok(complete, Answer::Complete { completed_at_ms: 1_300, replayed: true, late: true, ledger_time_ms: 1_350 });
    let duplicate = writer.invoke(2, "ns", "k", Call::claim("c2", 2_000));
    writer.ok(duplicate, Answer::already_completed(41, "c1:o:1", 1_300, None));
    let release = writer.invoke(1, "ns", "k2", Call::release(43));
    writer.ok(release, Answer::Release { ledger_time_ms: 1_400, replayed: true });
    let lost = writer.invoke(2, "ns", "k2", Call::complete(43, "c2:o:7"));
    writer.info(lost, "status: Unavailable, NOT_LEADER");
    let get = writer.invoke(4, "ns", "k", Call::read());
    writer.ok(get, Answer::read(2, ReadState::Completed, Some(41), Some("c1:o:1"), 77));
    let last = writer.invoke(4, "ns", "k", Call::final_read());
    writer.ok(last, Answer::read(3, ReadState::None, None, None, 80));
    writer.invoke(5, "ns", "k2", Call::claim("c5", 2_000));
}

#[test]
fn json_lines_round_trip() {
    let writer = HistoryWriter::in_memory().with_logical_clock();
    every_kind_of_event(&writer);
    let text = writer.json_lines();
    let events = writer.events().unwrap();
    assert_eq!(events.len(), 21);
    assert_eq!(text.lines().count(), 21);

    let mut again = Vec::new();
    write_history(&mut again, &events).unwrap();
    assert_eq!(String::from_utf8(again).unwrap(), text);
    assert_eq!(read_history(text.as_bytes()).unwrap(), events);
    for (line, event) in text.lines().zip(&events) {
        assert_eq!(&Event::from_json(line).unwrap(), event);
        assert_eq!(event.to_json().unwrap(), line);
    }

    // The final flag of the invoke is carried onto the answer.
    let Body::Ok(Answer::Read(read)) = &events[19].body else { panic!("{:?}", events[19]) };
    assert!(read.is_final);
    let Body::Ok(Answer::Read(read)) = &events[17].body else { panic!("{:?}", events[17]) };
    assert!(!read.is_final);
}

#[test]
fn lines_have_the_documented_shape() {
    let writer = HistoryWriter::in_memory().with_logical_clock();
    every_kind_of_event(&writer);
    let lines: Vec<serde_json::Value> =
        writer.json_lines().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let expect = |index: usize, json: serde_json::Value| {
        assert_eq!(lines[index], json, "line {index}");
    };
    expect(
        0,
        serde_json::json!({"op": 1, "process": 1, "namespace": "ns", "key": "k", "time_ns": 1, "type": "invoke",
            "f": "claim", "owner": "c1", "lease_ms": 2000, "request_id": "r1"}),
    );
    expect(
        1,
        serde_json::json!({"op": 1, "process": 1, "namespace": "ns", "key": "k", "time_ns": 2, "type": "ok",
            "f": "claim", "answer": "claimed", "token": 41, "lease_deadline_ms": 3000, "attempt": 1,
            "ledger_time_ms": 1000}),
    );
    expect(
        3,
        serde_json::json!({"op": 2, "process": 2, "namespace": "ns", "key": "k", "time_ns": 4, "type": "ok",
            "f": "claim", "answer": "in_progress", "owner": "c1", "lease_deadline_ms": 3000, "ledger_time_ms": 1100}),
    );
    expect(
        7,
        serde_json::json!({"op": 4, "process": 3, "namespace": "ns", "key": "k", "time_ns": 8, "type": "fail",
            "f": "release", "reason": "FENCED"}),
    );
    expect(
        9,
        serde_json::json!({"op": 5, "process": 1, "namespace": "ns", "key": "k", "time_ns": 10, "type": "ok",
            "f": "complete", "completed_at_ms": 1300, "replayed": true, "late": true, "ledger_time_ms": 1350}),
    );
    expect(
        15,
        serde_json::json!({"op": 8, "process": 2, "namespace": "ns", "key": "k2", "time_ns": 16, "type": "info",
            "f": "complete", "error": "status: Unavailable, NOT_LEADER"}),
    );
    expect(
        18,
        serde_json::json!({"op": 10, "process": 4, "namespace": "ns", "key": "k", "time_ns": 19, "type": "invoke",
            "f": "read", "final": true}),
    );
    expect(
        19,
        serde_json::json!({"op": 10, "process": 4, "namespace": "ns", "key": "k", "time_ns": 20, "type": "ok",
            "f": "read", "node": 3, "state": "none", "applied_index": 80, "final": true}),
    );
}

#[test]
fn hand_written_lines_parse() {
    let text = r#"
{"op": 17, "process": 3, "type": "invoke", "f": "claim", "namespace": "ns", "key": "k", "time_ns": 5, "owner": "w3", "lease_ms": 1500}
{"op": 17, "process": 3, "type": "ok", "f": "claim", "namespace": "ns", "key": "k", "time_ns": 9, "answer": "completed", "token": 12, "outcome": "w1:o:4", "completed_at_ms": 999, "run": "extra fields are ignored"}
{"op": 18, "process": 3, "type": "invoke", "f": "complete", "namespace": "ns", "key": "k", "time_ns": 11, "token": 12, "outcome": "w3:o:18"}
{"op": 18, "process": 3, "type": "ok", "f": "complete", "namespace": "ns", "key": "k", "time_ns": 12, "completed_at_ms": 999, "ledger_time_ms": 1200}
"#;
    let events = read_history(text.as_bytes()).unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0].event_type(), EventType::Invoke);
    assert_eq!(events[0].f(), Func::Claim);
    assert_eq!(events[0].body, Body::Invoke(Call::Claim { owner: "w3".into(), lease_ms: 1500, request_id: None }));
    assert_eq!(
        events[1].body,
        Body::Ok(Answer::Claim(ClaimAnswer::Completed {
            token: 12,
            outcome: "w1:o:4".into(),
            completed_at_ms: 999,
            ledger_time_ms: None
        }))
    );
    // `replayed` and `late` default to false.
    assert_eq!(
        events[3].body,
        Body::Ok(Answer::Complete { completed_at_ms: 999, replayed: false, late: false, ledger_time_ms: 1200 })
    );
}

#[test]
fn a_bad_line_names_its_number() {
    let text = "{\"op\": 1, \"process\": 1, \"type\": \"invoke\", \"f\": \"read\", \"namespace\": \"n\", \"key\": \"k\", \"time_ns\": 1}\n{\"op\": 2}\n";
    match read_history(text.as_bytes()) {
        Err(HistoryError::Json { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected a JSON error on line 2, got {other:?}"),
    }
}

#[test]
fn file_round_trip() {
    let path = std::env::temp_dir().join(format!("dedup-checker-{}-history.jsonl", std::process::id()));
    let writer = HistoryWriter::create(&path).unwrap();
    let op = writer.invoke(1, "ns", "k", Call::claim("c1", 1_000));
    writer.ok(op, Answer::claimed(5, 2_000, 1, 1_000));
    writer.finish().unwrap();
    let events = read_history_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].body, Body::Ok(Answer::claimed(5, 2_000, 1, 1_000)));
    assert!(events[0].time_ns <= events[1].time_ns);
}

#[test]
fn misuse_is_reported_by_finish() {
    let writer = HistoryWriter::in_memory();
    writer.ok(42, Answer::released(1));
    assert!(matches!(writer.finish(), Err(HistoryError::UnknownOp(42))));

    let writer = HistoryWriter::in_memory();
    let op = writer.invoke(1, "ns", "k", Call::release(3));
    writer.ok(op, Answer::extended(5, 1));
    assert!(matches!(writer.finish(), Err(HistoryError::WrongAnswer { op: 1, .. })));
}

#[test]
fn the_writer_is_shared_between_threads() {
    let writer = Arc::new(HistoryWriter::in_memory());
    let threads: Vec<_> = (0..4u64)
        .map(|process| {
            let writer = Arc::clone(&writer);
            std::thread::spawn(move || {
                for n in 0..50u64 {
                    let op = writer.invoke(process, "ns", &format!("k{n}"), Call::release(n));
                    if n % 2 == 0 {
                        writer.ok(op, Answer::released(n));
                    } else {
                        writer.info(op, "timeout");
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let events = writer.events().unwrap();
    assert_eq!(events.len(), 400);
    // Op ids are unique per invoke, every completion follows its invoke, times never go back.
    let mut invoked: HashMap<u64, u64> = HashMap::new();
    let mut last_time = 0;
    for event in &events {
        assert!(event.time_ns >= last_time);
        last_time = event.time_ns;
        match event.event_type() {
            EventType::Invoke => assert!(invoked.insert(event.op, event.process).is_none()),
            _ => assert_eq!(invoked.get(&event.op), Some(&event.process)),
        }
    }
    assert_eq!(invoked.len(), 200);
    assert!(dedup_checker::check(&events).is_valid());
}
