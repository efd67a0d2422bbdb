//! Live upgrade of one replica (contract 0.3's `migrate`): the new logic takes
//! over the old logic's state through `migrate` and `init`, or refuses it and the
//! replica carries on with the old logic and state untouched.

use liveobjects_host::runtime::{Event, Replica, ReplicaError, ReplicaIdentity, Runtime};
use liveobjects_tests::{load, objects, runtime};

fn counter(runtime: &Runtime, member: &str) -> Replica {
    let logic = load(runtime, objects::COUNTER);
    let mut replica = runtime
        .instantiate(&logic, ReplicaIdentity::local("test:upgrade", member))
        .unwrap();
    replica.init(None).unwrap();
    replica
}

/// The counter's `add(n)` event, as the SDK encodes it (postcard of `Event::Add`).
fn add(seq: u64, n: i64) -> Event {
    let outcome = {
        let runtime = runtime();
        let mut maker = counter(&runtime, "maker");
        maker.call_wave("add", &[&n.to_string()]).unwrap()
    };
    Event {
        sender: "maker".into(),
        seq,
        timestamp_ms: 1_800_000_000_000 + seq,
        payload: outcome.multicasts[0].clone(),
    }
}

fn query(replica: &mut Replica, method: &str) -> String {
    replica.call_wave(method, &[]).unwrap().results_wave()[0].clone()
}

#[test]
fn migrate_takes_over_the_state_and_the_new_logic_applies_the_old_events() {
    let runtime = runtime();
    let v2 = load(&runtime, objects::COUNTER_V2);
    assert!(v2.interface().migrates(), "counter-v2 exports evolve");
    assert_eq!(v2.interface().world(), "liveobjects:object/object@0.3.0");
    let mut replica = counter(&runtime, "a");
    let plus_five = add(1, 5);
    for seq in 1..=3 {
        replica
            .deliver(&Event {
                seq,
                ..plus_five.clone()
            })
            .unwrap();
    }
    replica.upgrade(v2.clone(), 7, 8).unwrap();
    assert_eq!(replica.logic().hash(), v2.hash());
    assert_eq!(query(&mut replica, "get"), "15");
    assert_eq!(query(&mut replica, "upgraded-from"), "7");
    assert_eq!(query(&mut replica, "switched-after"), "3");
    // An event the old logic multicast before the switch, applied by the new one.
    replica
        .deliver(&Event {
            seq: 4,
            ..plus_five
        })
        .unwrap();
    assert_eq!(query(&mut replica, "get"), "20");
    assert_eq!(query(&mut replica, "updates"), "4");

    // Two replicas upgraded at the same point hold the same bytes.
    let mut other = counter(&runtime, "b");
    for seq in 1..=3 {
        other.deliver(&Event { seq, ..add(seq, 5) }).unwrap();
    }
    other.upgrade(v2, 7, 8).unwrap();
    other
        .deliver(&Event {
            seq: 4,
            ..add(4, 5)
        })
        .unwrap();
    assert_eq!(replica.snapshot().unwrap(), other.snapshot().unwrap());
}

#[test]
fn a_refused_migration_leaves_the_old_logic_and_state_in_place() {
    let runtime = runtime();
    let v1 = load(&runtime, objects::COUNTER);
    let v2 = load(&runtime, objects::COUNTER_V2);
    let mut replica = counter(&runtime, "a");
    replica.deliver(&add(1, -4)).unwrap();
    let before = replica.snapshot().unwrap();
    let error = replica.upgrade(v2, 3, 4).unwrap_err();
    assert!(
        matches!(&error, ReplicaError::UpgradeRefused { version: 4, message, .. }
            if message.contains("refuses to take over a negative counter (-4)")),
        "{error}"
    );
    assert_eq!(replica.logic().hash(), v1.hash());
    assert_eq!(replica.snapshot().unwrap(), before);
    assert_eq!(query(&mut replica, "get"), "-4");
    assert!(replica.call_wave("upgraded-from", &[]).is_err());
    replica.deliver(&add(2, 10)).unwrap();
    assert_eq!(query(&mut replica, "get"), "6");
}

#[test]
fn logic_without_migrate_gets_the_old_snapshot_in_init() {
    let runtime = runtime();
    // A republish of the same logic: the SDK's default migrate decodes the state
    // as it is.
    let v1 = load(&runtime, objects::COUNTER);
    let mut replica = counter(&runtime, "a");
    replica.deliver(&add(1, 3)).unwrap();
    let before = replica.snapshot().unwrap();
    replica.upgrade(v1.clone(), 1, 2).unwrap();
    assert_eq!(replica.snapshot().unwrap(), before);
    assert_eq!(query(&mut replica, "get"), "3");

    // The 0.1 counter has no migrate: its init gets the SDK counter's snapshot
    // as is, and refuses it (it takes 16 bytes), so nothing switches.
    let legacy = load(&runtime, objects::LEGACY_COUNTER);
    assert!(!legacy.interface().migrates());
    assert_eq!(
        legacy.interface().world(),
        "liveobjects:object/object@0.1.0"
    );
    match replica.upgrade(legacy, 2, 3) {
        Err(ReplicaError::UpgradeRefused { message, .. }) => assert!(
            message.contains("its init refused the migrated state: snapshot of"),
            "{message}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(replica.logic().hash(), v1.hash());
    assert_eq!(query(&mut replica, "get"), "3");
}
