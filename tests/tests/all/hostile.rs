//! Hostile guests: each misbehaviour is stopped with an error naming the object and
//! the limit, the misbehaving replica rolls back to its last good state, and other
//! objects on the same host carry on.

use liveobjects_host::local::LocalGroup;
use liveobjects_host::runtime::{Limit, Limits, Replica, ReplicaError, ReplicaIdentity, Runtime};
use liveobjects_tests::{fixed_clock, load, objects, runtime, runtime_with};

const HOSTILE: &str = "test:hostile";

fn hostile_replica(runtime: &Runtime) -> Replica {
    let logic = load(runtime, objects::HOSTILE);
    let mut replica = runtime
        .instantiate(&logic, ReplicaIdentity::local(HOSTILE, "m1"))
        .unwrap();
    replica.init(None).unwrap();
    replica
}

fn hostile_group(runtime: &Runtime, members: &[&str]) -> LocalGroup {
    let logic = load(runtime, objects::HOSTILE);
    let mut group = LocalGroup::start(runtime, &logic, HOSTILE, members, None).unwrap();
    group.set_time_source(fixed_clock(1_800_000_000_000));
    group
}

fn total(replica: &mut Replica) -> String {
    replica.call_wave("total", &[]).unwrap().results_wave()[0].clone()
}

fn expect_limit(err: ReplicaError, want: fn(&Limit) -> bool) -> String {
    let text = err.to_string();
    match &err {
        ReplicaError::LimitExceeded { object, limit, .. } => {
            assert_eq!(object, HOSTILE);
            assert!(want(limit), "wrong limit: {text}");
        }
        other => panic!("expected a limit error, got: {other}"),
    }
    assert!(text.contains(HOSTILE), "error must name the object: {text}");
    text
}

#[test]
fn an_infinite_loop_in_a_query_is_stopped_by_the_cpu_limit_and_state_survives() {
    let runtime = runtime_with(Limits {
        fuel_per_call: 50_000_000,
        ..Limits::default()
    });
    let mut group = hostile_group(&runtime, &["m1"]);
    group.call(0, "add", &["41"]).unwrap();
    let err = group.replica_mut(0).call_wave("spin", &[]).unwrap_err();
    let text = expect_limit(err, |l| matches!(l, Limit::Cpu { fuel: 50_000_000 }));
    assert!(text.contains("CPU limit"), "{text}");
    // Rolled back and usable.
    assert_eq!(total(group.replica_mut(0)), "41");
    group.call(0, "add", &["1"]).unwrap();
    assert_eq!(total(group.replica_mut(0)), "42");
    assert_eq!(group.replicas()[0].stats().recoveries, 1);
}

#[test]
fn an_event_that_loops_forever_is_refused_by_every_replica_alike() {
    let runtime = runtime_with(Limits {
        fuel_per_call: 50_000_000,
        ..Limits::default()
    });
    let mut group = hostile_group(&runtime, &["m1", "m2"]);
    group.call(0, "add", &["5"]).unwrap();
    let outcome = group.call(1, "spin-in-deliver", &[]).unwrap();
    assert_eq!(outcome.events.len(), 1);
    assert_eq!(outcome.deliveries.len(), 2);
    for delivery in outcome.deliveries {
        let err = delivery
            .outcome
            .expect_err("every replica must refuse the event");
        expect_limit(err, |l| matches!(l, Limit::Cpu { .. }));
    }
    group.call(1, "add", &["5"]).unwrap();
    for i in 0..2 {
        assert_eq!(total(group.replica_mut(i)), "10");
        assert_eq!(group.replicas()[i].stats().events_failed, 1);
    }
    let a = group.replica_mut(0).snapshot().unwrap();
    let b = group.replica_mut(1).snapshot().unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_memory_bomb_is_stopped_by_the_memory_limit() {
    let runtime = runtime_with(Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    });
    let mut group = hostile_group(&runtime, &["m1"]);
    group.call(0, "add", &["3"]).unwrap();
    // Within the cap: fine.
    let ok = group.replica_mut(0).call_wave("allocate", &["4"]).unwrap();
    assert_eq!(ok.results_wave(), ["4"]);
    // Beyond it, in a query and in an event.
    let err = group
        .replica_mut(0)
        .call_wave("allocate", &["64"])
        .unwrap_err();
    let text = expect_limit(
        err,
        |l| matches!(l, Limit::Memory { bytes, .. } if *bytes == 16 << 20),
    );
    assert!(text.contains("memory limit"), "{text}");
    let outcome = group.call(0, "bomb-in-deliver", &[]).unwrap();
    let err = outcome
        .deliveries
        .into_iter()
        .next()
        .unwrap()
        .outcome
        .unwrap_err();
    expect_limit(err, |l| matches!(l, Limit::Memory { .. }));
    assert_eq!(total(group.replica_mut(0)), "3");
}

#[test]
fn a_panic_is_reported_with_the_guests_message_and_rolled_back() {
    let runtime = runtime();
    let mut replica = hostile_replica(&runtime);
    let err = replica.call_wave("panic-now", &[]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ReplicaError::Trap { .. }), "{text}");
    assert!(text.contains(HOSTILE), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(text.contains("hostile object panics on purpose"), "{text}");
    assert_eq!(total(&mut replica), "0");
}

#[test]
fn an_oversized_multicast_is_stopped_and_nothing_is_sent() {
    let runtime = runtime();
    let mut replica = hostile_replica(&runtime);
    let limit = runtime.limits().multicast_max_bytes;
    let ok = replica
        .call_wave("huge-multicast", &[&(limit / 2).to_string()])
        .unwrap();
    assert_eq!(ok.multicasts.len(), 1);
    let err = replica
        .call_wave("huge-multicast", &[&(limit * 4).to_string()])
        .unwrap_err();
    let text = expect_limit(err, |l| matches!(l, Limit::MulticastSize { .. }));
    assert!(text.contains("multicast size limit"), "{text}");
}

#[test]
fn a_multicast_flood_is_stopped_by_the_per_call_count() {
    let runtime = runtime_with(Limits {
        multicast_max_per_call: 100,
        ..Limits::default()
    });
    let mut group = hostile_group(&runtime, &["m1"]);
    let within = group.call(0, "many-multicasts", &["100"]).unwrap();
    assert_eq!(within.events.len(), 100);
    let err = group.call(0, "many-multicasts", &["101"]).unwrap_err();
    expect_limit(err, |l| matches!(l, Limit::MulticastCount { limit: 100 }));
    // Nothing of the failed call was delivered: the total is still 0+1+...+99.
    assert_eq!(total(group.replica_mut(0)), "4950");
}

#[test]
fn sleeping_is_refused_instead_of_blocking_the_host() {
    let runtime = runtime();
    let mut replica = hostile_replica(&runtime);
    let started = std::time::Instant::now();
    let err = replica.call_wave("sleep", &["60000"]).unwrap_err();
    // Not a timing assertion on speed: a 60 s sleep that ran would fail this by minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    expect_limit(err, |l| matches!(l, Limit::Blocking));
}

#[test]
fn the_sandbox_grants_no_files_environment_or_network() {
    let runtime = runtime();
    let mut replica = hostile_replica(&runtime);
    let lines = replica
        .call_wave("probe-authority", &[])
        .unwrap()
        .results_wave();
    let text = &lines[0];
    for probe in ["file: denied", "dir: denied", "env: denied", "tcp: denied"] {
        assert!(text.contains(probe), "{probe} missing in {text}");
    }
    assert!(!text.contains("READ") && !text.contains("LISTED") && !text.contains("CONNECTED"));
}

#[test]
fn clock_and_random_read_twice_agree_on_two_replicas() {
    let runtime = runtime();
    let mut group = hostile_group(&runtime, &["m1", "m2"]);
    group.call(0, "observe", &[]).unwrap();
    group.call(1, "observe", &[]).unwrap();
    let a = group
        .replica_mut(0)
        .call_wave("observations", &[])
        .unwrap()
        .results_wave();
    let b = group
        .replica_mut(1)
        .call_wave("observations", &[])
        .unwrap()
        .results_wave();
    assert_eq!(
        a, b,
        "both replicas must observe the same clock and random values"
    );
    let text = &a[0];
    // The wall clock reads the event's timestamp (fixed_clock: start + 7, + 14).
    assert!(
        text.contains("wall-ns: (1800000000007000000, 1800000000007000000)"),
        "{text}"
    );
    assert!(text.contains("event-timestamp-ms: 1800000000014"), "{text}");
    // Random is a real stream: two reads in one event differ, and two events differ.
    let values = wasmtime_random_pairs(text);
    assert_eq!(values.len(), 4, "{text}");
    assert_ne!(values[0], values[1]);
    assert_ne!(values[0], values[2]);
    // And the snapshots (which hold the observations) are byte-identical.
    let sa = group.replica_mut(0).snapshot().unwrap();
    let sb = group.replica_mut(1).snapshot().unwrap();
    assert_eq!(sa, sb);
}

/// Pull the `random: ([..], [..])` byte lists out of the WAVE text.
fn wasmtime_random_pairs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in text.split("random: (").skip(1) {
        let inner = &part[..part.find("]), ").or_else(|| part.find("])")).unwrap() + 1];
        for list in inner.split("], ") {
            out.push(list.trim_matches(|c| c == '[' || c == ']').to_string());
        }
    }
    out
}

#[test]
fn other_objects_keep_running_while_a_hostile_one_misbehaves() {
    let runtime = runtime_with(Limits {
        fuel_per_call: 50_000_000,
        memory_bytes: 16 << 20,
        ..Limits::default()
    });
    let counter_logic = load(&runtime, objects::COUNTER);
    let mut counter =
        LocalGroup::start(&runtime, &counter_logic, "test:counter", &["m1"], None).unwrap();
    let mut hostile = hostile_replica(&runtime);
    for round in 1..=5i64 {
        assert!(hostile.call_wave("spin", &[]).is_err());
        assert!(hostile.call_wave("allocate", &["100"]).is_err());
        assert!(hostile.call_wave("panic-now", &[]).is_err());
        counter.call(0, "add", &["10"]).unwrap();
        assert_eq!(
            counter
                .replica_mut(0)
                .call_wave("get", &[])
                .unwrap()
                .results_wave(),
            [(round * 10).to_string()]
        );
    }
    assert_eq!(hostile.stats().recoveries, 15);
}

#[test]
fn rollback_after_a_trap_restores_state_past_a_checkpoint() {
    let runtime = runtime_with(Limits {
        fuel_per_call: 50_000_000,
        ..Limits::default()
    });
    let mut group = hostile_group(&runtime, &["m1"]);
    // 3 x 1000 events: the replica folds its log into checkpoints along the way.
    for _ in 0..3 {
        group.call(0, "many-multicasts", &["1000"]).unwrap();
    }
    group.call(0, "add", &["7"]).unwrap();
    let before = group.replica_mut(0).snapshot().unwrap();
    assert!(group.replica_mut(0).call_wave("spin", &[]).is_err());
    assert_eq!(group.replica_mut(0).snapshot().unwrap(), before);
    assert_eq!(total(group.replica_mut(0)), (3 * 499_500 + 7).to_string());
}

#[test]
fn rollback_replays_each_entry_with_the_view_it_first_saw() {
    use liveobjects_host::runtime::View;
    let runtime = runtime_with(Limits {
        fuel_per_call: 50_000_000,
        ..Limits::default()
    });
    let mut group = hostile_group(&runtime, &["m1", "m2"]);
    let view = |id: u64| View {
        id,
        members: vec!["m1".into(), "m2".into()],
    };
    assert!(group.change_view(&view(2)).iter().all(|r| r.is_ok()));
    group.call(0, "observe", &[]).unwrap();
    assert!(group.change_view(&view(3)).iter().all(|r| r.is_ok()));
    group.call(1, "observe", &[]).unwrap();
    let before = group.replica_mut(0).snapshot().unwrap();
    let seen = group
        .replica_mut(0)
        .call_wave("observations", &[])
        .unwrap()
        .results_wave();
    assert!(
        seen[0].contains("view-id: 2") && seen[0].contains("view-id: 3"),
        "{}",
        seen[0]
    );
    // A trap forces a rebuild from the checkpoint and a replay of the log.
    assert!(group.replica_mut(0).call_wave("spin", &[]).is_err());
    assert_eq!(group.replica_mut(0).snapshot().unwrap(), before);
    assert_eq!(
        group.replica_mut(0).snapshot().unwrap(),
        group.replica_mut(1).snapshot().unwrap()
    );
}
