//! Batched delivery (contract 0.2's `deliver-batch`): whatever the batch
//! boundaries, every event ends exactly as it would delivered alone, and objects
//! built for 0.1 keep working.

use liveobjects_host::local::LocalGroup;
use liveobjects_host::runtime::{
    Delivery, Event, LIFECYCLE_INTERFACE, LIFECYCLE_INTERFACE_0_2, Limits, Replica, ReplicaError,
    ReplicaIdentity, Runtime,
};
use liveobjects_tests::{Lcg, fixed_clock, load, objects, runtime, runtime_with};

/// Method calls: a name and its WAVE arguments.
type Calls<'a> = Vec<(&'a str, Vec<String>)>;

/// Events made by calling `calls` on a one-member group of `path`: what a driver
/// would deliver.
fn events_from(runtime: &Runtime, path: &str, calls: &Calls) -> Vec<Event> {
    let logic = load(runtime, path);
    let mut group = LocalGroup::start(runtime, &logic, "test:batch", &["maker"], None).unwrap();
    group.set_time_source(fixed_clock(1_800_000_000_000));
    let mut events = Vec::new();
    for (method, args) in calls {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let outcome = group
            .call(0, method, &args)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        events.extend(outcome.events);
    }
    events
}

fn replica(runtime: &Runtime, path: &str, member: &str) -> Replica {
    let logic = load(runtime, path);
    let mut replica = runtime
        .instantiate(&logic, ReplicaIdentity::local("test:batch", member))
        .unwrap();
    replica.init(None).unwrap();
    replica
}

/// What a delivery's outcome is, in a form two replicas can compare.
fn outcome(result: &Result<Delivery, ReplicaError>) -> String {
    match result {
        Ok(d) => format!("ok rejected={:?}", d.rejected),
        Err(e) => format!("error {e}"),
    }
}

/// Every multicast of a run of deliveries, in order.
fn multicasts(results: &[Result<Delivery, ReplicaError>]) -> Vec<Vec<u8>> {
    results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(|d| d.multicasts.clone())
        .collect()
}

/// Deliver `events` to `one` event by event and to `batched` in batches of random
/// sizes (1 to 300); both must agree on every event, every multicast and the
/// final snapshot.
fn agree(one: &mut Replica, batched: &mut Replica, events: &[Event], seed: u64) {
    let singles: Vec<_> = events.iter().map(|e| one.deliver(e)).collect();
    let mut rng = Lcg(seed);
    let mut batches = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let take = (1 + rng.next_u31() as usize % 300).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        batches.extend(batched.deliver_batch(chunk));
        rest = tail;
    }
    assert_eq!(batches.len(), events.len(), "one outcome per event");
    for (i, (a, b)) in singles.iter().zip(&batches).enumerate() {
        assert_eq!(outcome(a), outcome(b), "event {i}");
    }
    assert_eq!(multicasts(&singles), multicasts(&batches));
    let (a, b) = (one.stats(), batched.stats());
    assert_eq!(
        (a.events_applied, a.events_rejected, a.state_changes),
        (b.events_applied, b.events_rejected, b.state_changes)
    );
    assert_eq!(one.snapshot().unwrap(), batched.snapshot().unwrap());
}

/// A payload no object's postcard decoder accepts (an enum tag far past any
/// variant), sent from a sender of its own.
fn garbage(seq: u64) -> Event {
    Event {
        sender: "garbage".into(),
        seq,
        timestamp_ms: 1_800_000_000_000 + seq,
        payload: vec![0xff, 0xff, 0xff, 0x0f],
    }
}

#[test]
fn shipped_objects_end_alike_one_by_one_and_in_batches() {
    let runtime = runtime();
    let mut rng = Lcg(7);
    let workloads: [(&str, Calls); 3] = [
        (
            objects::COUNTER,
            (0..2000)
                .map(|_| {
                    (
                        "add",
                        vec![format!("{}", rng.next_u31() as i64 - (1 << 31))],
                    )
                })
                .collect(),
        ),
        (
            objects::CHAT,
            (0..600)
                .map(|i| ("post", vec![format!("\"message {i}\"")]))
                .collect(),
        ),
        (
            objects::REGISTER,
            (0..900)
                .map(|i| match i % 3 {
                    0 => ("set", vec![format!("integer({i})")]),
                    1 => ("set", vec![format!("text(\"v{i}\")")]),
                    _ => (
                        "compare-and-set",
                        vec![format!("{}", i % 7), "float(1.5)".to_string()],
                    ),
                })
                .collect(),
        ),
    ];
    for (path, calls) in workloads {
        let mut events = events_from(&runtime, path, &calls);
        // Rejections too: garbage every 97 events.
        for i in (0..events.len()).step_by(97).rev() {
            events.insert(i, garbage(i as u64 + 1));
        }
        let mut one = replica(&runtime, path, "one");
        let mut batched = replica(&runtime, path, "batched");
        assert!(batched.batching(), "{path} is built for 0.2");
        agree(&mut one, &mut batched, &events, 11);
        assert!(batched.batching(), "{path}: nothing made it stop batching");
        assert!(
            batched.stats().batches >= (events.len() / 300) as u64,
            "{path}: events went in batches ({:?})",
            batched.stats()
        );
        assert!(
            batched.stats().events_rejected >= (events.len() / 97) as u64,
            "{path}: the garbage was rejected"
        );
    }
}

#[test]
fn a_batch_whose_guest_reads_the_clock_is_redone_one_by_one() {
    let runtime = runtime();
    let mut calls: Calls = Vec::new();
    for i in 0..40 {
        calls.push(("add", vec![i.to_string()]));
        if i % 10 == 3 {
            calls.push(("observe", vec![]));
        }
    }
    let events = events_from(&runtime, objects::HOSTILE, &calls);
    let mut one = replica(&runtime, objects::HOSTILE, "one");
    let mut batched = replica(&runtime, objects::HOSTILE, "batched");
    assert!(batched.batching());
    agree(&mut one, &mut batched, &events, 3);
    // The observations (clock and random per event) are the same, and batching
    // is off from the first batch that read them.
    let a = one.call_wave("observations", &[]).unwrap().results_wave();
    let b = batched
        .call_wave("observations", &[])
        .unwrap()
        .results_wave();
    assert_eq!(a, b);
    assert!(a[0].contains("event-timestamp-ms"), "{}", a[0]);
    assert!(
        !batched.batching(),
        "an object that reads the clock stops batching"
    );
    assert!(batched.stats().recoveries >= 1);
}

#[test]
fn a_batch_past_one_calls_fuel_is_redone_and_each_event_keeps_its_own_limit() {
    // Each `burn(150_000)` event takes well under this budget; 40 of them in one
    // batch take several times it. A `spin-in-deliver` event among them runs out
    // alone, as it would delivered by itself.
    let limits = Limits {
        fuel_per_call: 20_000_000,
        ..Limits::default()
    };
    let runtime = runtime_with(limits);
    let mut calls: Calls = vec![("burn", vec!["150000".into(), "20".into()])];
    calls.push(("spin-in-deliver", vec![]));
    calls.push(("burn", vec!["150000".into(), "20".into()]));
    calls.push(("fan-out", vec!["16".into(), "5".into()]));
    calls.push(("add", vec!["5".into()]));
    let events = events_from(&runtime, objects::HOSTILE, &calls);
    // 20 + 1 + 20 burns and spin, the fan-out and its 5 blobs, the add.
    assert_eq!(events.len(), 48);
    let mut one = replica(&runtime, objects::HOSTILE, "one");
    let mut batched = replica(&runtime, objects::HOSTILE, "batched");
    let singles: Vec<_> = events.iter().map(|e| one.deliver(e)).collect();
    let batches = batched.deliver_batch(&events);
    for (i, (a, b)) in singles.iter().zip(&batches).enumerate() {
        assert_eq!(outcome(a), outcome(b), "event {i}");
    }
    assert!(
        outcome(&batches[20]).contains("CPU limit"),
        "{}",
        outcome(&batches[20])
    );
    assert_eq!(
        batches.iter().filter(|r| r.is_err()).count(),
        1,
        "only the spinning event is refused"
    );
    assert_eq!(multicasts(&singles), multicasts(&batches));
    assert_eq!(multicasts(&batches).len(), 5, "the fan-out's five blobs");
    assert_eq!(one.snapshot().unwrap(), batched.snapshot().unwrap());
    let burned = batched.call_wave("burned", &[]).unwrap().results_wave();
    assert_eq!(burned, ["40"]);
    assert!(
        !batched.batching(),
        "events this heavy are delivered one by one"
    );
}

#[test]
fn an_object_built_for_0_1_keeps_working_beside_0_2_ones() {
    let runtime = runtime();
    let legacy = load(&runtime, objects::LEGACY_COUNTER);
    let current = load(&runtime, objects::COUNTER);
    assert_eq!(legacy.interface().lifecycle, Some(LIFECYCLE_INTERFACE));
    assert_eq!(current.interface().lifecycle, Some(LIFECYCLE_INTERFACE_0_2));
    assert_eq!(
        legacy.interface().method_names(),
        current.interface().method_names(),
        "the legacy counter offers the shipped counter's methods"
    );
    // Replicated through a group: every member applies every update.
    let mut group =
        LocalGroup::start(&runtime, &legacy, "test:legacy", &["a", "b", "c"], None).unwrap();
    let mut events = Vec::new();
    for n in 1..=100 {
        let outcome = group.call(n % 3, "add", &[&n.to_string()]).unwrap();
        assert!(outcome.problems().is_empty(), "{:?}", outcome.problems());
        events.extend(outcome.events);
    }
    for i in 0..3 {
        let got = group.replica_mut(i).call_wave("get", &[]).unwrap();
        assert_eq!(got.results_wave(), ["5050"], "replica {i}");
    }
    // A batch reaches a 0.1 object as one `deliver` per event, with the same end.
    let mut one = replica(&runtime, objects::LEGACY_COUNTER, "one");
    let mut batched = replica(&runtime, objects::LEGACY_COUNTER, "batched");
    assert!(!batched.batching());
    events.insert(50, garbage(1));
    agree(&mut one, &mut batched, &events, 5);
    assert_eq!(batched.stats().events_rejected, 1);
    let snapshot = batched.snapshot().unwrap();
    let mut restored = runtime
        .instantiate(&legacy, ReplicaIdentity::local("test:legacy", "late"))
        .unwrap();
    restored.init(Some(&snapshot)).unwrap();
    let got = restored.call_wave("get", &[]).unwrap().results_wave();
    assert_eq!(got, ["5050"]);
}

#[test]
fn a_rollback_replays_logged_batches_to_the_same_state() {
    // Batches are logged as batches; a trap afterwards rebuilds the replica from
    // its checkpoint and replays them. The state must be what one by one gives.
    let runtime = runtime();
    let calls: Calls = (0..600).map(|i| ("add", vec![i.to_string()])).collect();
    let events = events_from(&runtime, objects::HOSTILE, &calls);
    let spin = events_from(
        &runtime,
        objects::HOSTILE,
        &vec![("spin-in-deliver", vec![])],
    );
    let mut one = replica(&runtime, objects::HOSTILE, "one");
    let mut batched = replica(&runtime, objects::HOSTILE, "batched");
    for event in &events {
        one.deliver(event).unwrap();
    }
    for run in events.chunks(100) {
        for outcome in batched.deliver_batch(run) {
            outcome.unwrap();
        }
    }
    assert_eq!(batched.stats().batches, 6);
    for replica in [&mut one, &mut batched] {
        let refused = replica.deliver(&spin[0]).unwrap_err();
        assert!(refused.to_string().contains("CPU limit"), "{refused}");
        assert_eq!(replica.stats().recoveries, 1, "rolled back once");
    }
    assert_eq!(one.snapshot().unwrap(), batched.snapshot().unwrap());
    let total = batched.call_wave("total", &[]).unwrap().results_wave();
    assert_eq!(total, [(0..600).sum::<i64>().to_string()]);
    assert!(
        batched.batching(),
        "a refused single event does not stop batching"
    );
}

#[test]
fn a_hibernated_replica_wakes_to_the_state_and_view_it_slept_with() {
    // Hibernation keeps a replica's state as its snapshot and drops the sandbox;
    // woken by the next event, it must go on exactly as one that never slept,
    // including the view its guest sees.
    let runtime = runtime();
    let mut calls: Calls = (0..30).map(|i| ("add", vec![i.to_string()])).collect();
    calls.push(("observe", vec![]));
    let events = events_from(&runtime, objects::HOSTILE, &calls);
    let (before, after) = events.split_at(20);
    let mut awake = replica(&runtime, objects::HOSTILE, "awake");
    let mut sleepy = replica(&runtime, objects::HOSTILE, "sleepy");
    let view = liveobjects_host::runtime::View {
        id: 7,
        members: vec!["awake".into(), "sleepy".into()],
    };
    for r in [&mut awake, &mut sleepy] {
        r.view_changed(&view).unwrap();
        for outcome in r.deliver_batch(before) {
            outcome.unwrap();
        }
    }
    let snapshot = sleepy.snapshot().unwrap();
    assert!(sleepy.hibernate(), "an idle, healthy replica hibernates");
    assert!(sleepy.hibernating());
    assert_eq!(sleepy.memory().sandbox, 0, "its sandbox is given back");
    assert_eq!(sleepy.snapshot().unwrap(), snapshot, "read without waking");
    assert!(sleepy.hibernating());
    for r in [&mut awake, &mut sleepy] {
        for outcome in r.deliver_batch(after) {
            outcome.unwrap();
        }
    }
    assert!(!sleepy.hibernating(), "an event wakes it");
    assert_eq!(awake.snapshot().unwrap(), sleepy.snapshot().unwrap());
    let seen = sleepy
        .call_wave("observations", &[])
        .unwrap()
        .results_wave();
    assert!(seen[0].contains("view-id: 7"), "{}", seen[0]);
    assert_eq!(
        seen,
        awake.call_wave("observations", &[]).unwrap().results_wave()
    );
    assert_eq!(sleepy.stats().hibernations, 1);
    // The observing event's batch was redone one by one on both; waking is not
    // a recovery.
    assert_eq!(sleepy.stats().recoveries, awake.stats().recoveries);
}
