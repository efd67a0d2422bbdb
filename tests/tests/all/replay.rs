//! Determinism: replicas fed the same events end in byte-identical states, and a
//! snapshot restores a replica that answers every query the same way.

use liveobjects_host::local::LocalGroup;
use liveobjects_host::runtime::{Event, Replica, ReplicaIdentity, Runtime};
use liveobjects_tests::{Lcg, fixed_clock, load, objects, runtime};

/// Drive `calls` random updates from random members; return every event delivered.
fn drive(group: &mut LocalGroup, object: &str, calls: usize, seed: u64) -> Vec<Event> {
    let mut rng = Lcg(seed);
    let mut events = Vec::new();
    let members = group.replicas().len() as u64;
    for i in 0..calls {
        let who = (rng.next_u31() % members) as usize;
        let (method, arg) = match object {
            "counter" => ("add", format!("{}", rng.next_u31() as i64 - (1 << 30))),
            "chat" => (
                "post",
                format!("\"message {i} with value {}\"", rng.next_u31()),
            ),
            "register" => match rng.next_u31() % 4 {
                0 => ("set", format!("integer({})", rng.next_u31())),
                1 => ("set", format!("text(\"v{i}\")")),
                2 => ("set", "bytes([1, 2, 3])".to_string()),
                _ => (
                    "compare-and-set",
                    format!("{} float(1.5)", rng.next_u31() % 8),
                ),
            },
            other => panic!("no workload for {other}"),
        };
        let words: Vec<&str> = if method == "compare-and-set" {
            arg.splitn(2, ' ').collect()
        } else {
            vec![arg.as_str()]
        };
        let outcome = group.call(who, method, &words).expect("call succeeds");
        assert!(
            outcome.deliveries.iter().all(|d| d.outcome.is_ok()),
            "no replica may fail: {:?}",
            outcome.problems()
        );
        events.extend(outcome.events);
    }
    events
}

fn snapshots(group: &mut LocalGroup) -> Vec<Vec<u8>> {
    (0..group.replicas().len())
        .map(|i| group.replica_mut(i).snapshot().expect("snapshot"))
        .collect()
}

fn queries(object: &str) -> Vec<(&'static str, Vec<&'static str>)> {
    match object {
        "counter" => vec![("get", vec![]), ("updates", vec![])],
        "chat" => vec![("history", vec!["1000"]), ("count", vec![])],
        "register" => vec![("get", vec![]), ("get-entry", vec![])],
        other => panic!("no queries for {other}"),
    }
}

fn query_all(replica: &mut Replica, object: &str) -> Vec<String> {
    queries(object)
        .into_iter()
        .flat_map(|(method, args)| {
            replica
                .call_wave(method, &args)
                .expect("query succeeds")
                .results_wave()
        })
        .collect()
}

fn object_path(object: &str) -> &'static str {
    match object {
        "counter" => objects::COUNTER,
        "chat" => objects::CHAT,
        "register" => objects::REGISTER,
        other => panic!("unknown object {other}"),
    }
}

fn group_of(runtime: &Runtime, object: &str, members: &[&str]) -> LocalGroup {
    let logic = load(runtime, object_path(object));
    let mut group =
        LocalGroup::start(runtime, &logic, &format!("test:{object}"), members, None).unwrap();
    group.set_time_source(fixed_clock(1_700_000_000_000));
    group
}

#[test]
fn replicas_fed_the_same_events_have_byte_identical_snapshots() {
    let runtime = runtime();
    for object in ["counter", "chat", "register"] {
        let mut group = group_of(&runtime, object, &["a", "b", "c"]);
        let events = drive(&mut group, object, 300, 42);
        assert_eq!(events.len(), 300, "{object}: one event per update call");
        let snaps = snapshots(&mut group);
        assert!(!snaps[0].is_empty());
        assert_eq!(snaps[0], snaps[1], "{object}: replicas a and b differ");
        assert_eq!(snaps[0], snaps[2], "{object}: replicas a and c differ");
        let answers: Vec<Vec<String>> = (0..3)
            .map(|i| query_all(group.replica_mut(i), object))
            .collect();
        assert_eq!(answers[0], answers[1]);
        assert_eq!(answers[0], answers[2]);
    }
}

#[test]
fn counter_replicas_apply_every_event_exactly_once() {
    let runtime = runtime();
    let mut group = group_of(&runtime, "counter", &["a", "b"]);
    let mut expected: i64 = 0;
    for i in 0..200i64 {
        group
            .call((i % 2) as usize, "add", &[&i.to_string()])
            .unwrap();
        expected += i;
    }
    for i in 0..2 {
        let r = group.replica_mut(i);
        assert_eq!(
            r.call_wave("get", &[]).unwrap().results_wave(),
            [expected.to_string()]
        );
        assert_eq!(r.call_wave("updates", &[]).unwrap().results_wave(), ["200"]);
        assert_eq!(r.stats().events_applied, 200);
    }
}

#[test]
fn a_replica_in_another_runtime_replaying_the_events_reaches_the_same_snapshot() {
    let first = runtime();
    let second = runtime();
    for object in ["counter", "chat", "register"] {
        let mut group = group_of(&first, object, &["a", "b"]);
        let events = drive(&mut group, object, 200, 7);
        let expected = group.replica_mut(0).snapshot().unwrap();

        let logic = load(&second, object_path(object));
        let mut replica = second
            .instantiate(
                &logic,
                ReplicaIdentity::local(format!("test:{object}"), "z"),
            )
            .unwrap();
        replica.init(None).unwrap();
        for event in &events {
            replica.deliver(event).unwrap();
        }
        assert_eq!(replica.snapshot().unwrap(), expected, "{object}");
    }
}

#[test]
fn restoring_a_snapshot_gives_the_same_answers_and_the_same_future() {
    let runtime = runtime();
    for object in ["counter", "chat", "register"] {
        let mut group = group_of(&runtime, object, &["a", "b"]);
        drive(&mut group, object, 150, 99);
        let snapshot = group.replica_mut(0).snapshot().unwrap();
        let before = query_all(group.replica_mut(0), object);

        let logic = load(&runtime, object_path(object));
        let mut restored = runtime
            .instantiate(
                &logic,
                ReplicaIdentity::local(format!("test:{object}"), "late"),
            )
            .unwrap();
        restored.init(Some(&snapshot)).unwrap();
        assert_eq!(query_all(&mut restored, object), before, "{object}");
        assert_eq!(restored.snapshot().unwrap(), snapshot, "{object}");

        // The same later events keep the restored replica identical to the originals.
        let later = drive(&mut group, object, 50, 1234);
        for event in &later {
            restored.deliver(event).unwrap();
        }
        assert_eq!(
            restored.snapshot().unwrap(),
            group.replica_mut(1).snapshot().unwrap(),
            "{object}"
        );
    }
}

#[test]
fn a_corrupt_snapshot_is_refused_with_the_objects_reason() {
    let runtime = runtime();
    let logic = load(&runtime, objects::CHAT);
    let mut replica = runtime
        .instantiate(&logic, ReplicaIdentity::local("test:chat", "a"))
        .unwrap();
    let err = replica.init(Some(&[0xff; 7])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("refused to start from its snapshot"),
        "{text}"
    );
    assert!(text.contains("does not decode"), "{text}");
    // The replica can still start cleanly afterwards.
    replica.init(None).unwrap();
    assert_eq!(
        replica.call_wave("count", &[]).unwrap().results_wave(),
        ["0"]
    );
}

#[test]
fn chat_history_carries_sender_and_event_time() {
    let runtime = runtime();
    let mut group = group_of(&runtime, "chat", &["alice", "bob"]);
    group.call(0, "post", &["\"hi from alice\""]).unwrap();
    group.call(1, "post", &["\"hi from bob\""]).unwrap();
    let history = group.replica_mut(1).call_wave("history", &["10"]).unwrap();
    let text = &history.results_wave()[0];
    assert!(text.contains("sender: \"alice\""), "{text}");
    assert!(text.contains("sender: \"bob\""), "{text}");
    // fixed_clock steps by 7 ms from 1_700_000_000_000.
    assert!(text.contains("timestamp-ms: 1700000000007"), "{text}");
    assert!(text.contains("timestamp-ms: 1700000000014"), "{text}");
    let refused = group
        .replica_mut(0)
        .call_wave("post", &["\"   \""])
        .unwrap();
    assert_eq!(refused.results_wave(), ["err(\"message is empty\")"]);
    assert!(
        refused.multicasts.is_empty(),
        "a refused post sends nothing"
    );
}
