//! Hostile gossip aggregates: every misbehaviour of an aggregate's code is stopped
//! with an error naming the object, the instance is replaced, the node's state is
//! unchanged, and other objects on the same node carry on.

use liveobjects_host::gossip::{Event, GossipConfig, GossipNode, HostId, Share, Wire};
use liveobjects_host::runtime::{
    AggregateError, AggregateInstance, Limits, LoadError, SharedAggregate,
};
use liveobjects_tests::{objects, runtime, runtime_with};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

fn hostile() -> AggregateInstance {
    let runtime = runtime_with(Limits {
        fuel_per_call: 50_000_000,
        memory_bytes: 16 << 20,
        ..Limits::default()
    });
    runtime
        .load_aggregate_file(Path::new(objects::HOSTILE_AGGREGATE))
        .unwrap()
        .instantiate()
        .unwrap()
}

/// The peer every test datagram comes from.
fn peer() -> HostId {
    HostId {
        addr: SocketAddr::from(([127, 0, 0, 1], 2)),
        boot: 1,
    }
}

/// A node without SWIM running `objects` (name, code, input).
fn node_with(objects: Vec<(&str, AggregateInstance, f64)>) -> GossipNode {
    let me = HostId {
        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        boot: 1,
    };
    let now = Instant::now();
    let mut config = GossipConfig::lan(2);
    config.swim = None;
    let mut node = GossipNode::new(me, config, 1, now);
    for (name, code, input) in objects {
        node.add_aggregate(name, SharedAggregate::new(code), input, now);
    }
    node
}

/// An exchange answer from [`peer`] carrying `shares` (object, epoch, state).
fn exchange(shares: Vec<(&str, u64, Vec<u8>)>) -> Vec<u8> {
    let shares = shares
        .into_iter()
        .map(|(object, epoch, state)| Share {
            object: object.into(),
            epoch,
            state,
        })
        .collect();
    liveobjects_host::gossip::core::encode(
        &Wire::Exchange {
            from: peer(),
            reply: true,
            shares,
        },
        None,
    )
}

fn max_instance() -> AggregateInstance {
    runtime()
        .load_aggregate_file(Path::new(objects::MAX))
        .unwrap()
        .instantiate()
        .unwrap()
}

fn trap_message(err: AggregateError) -> String {
    match err {
        AggregateError::Trap {
            object, message, ..
        } => {
            assert!(
                object.contains("hostile_aggregate"),
                "error must name the object: {object}"
            );
            message
        }
        other => panic!("expected a trap, got: {other}"),
    }
}

#[test]
fn an_endless_loop_hits_the_cpu_limit_and_the_instance_recovers() {
    let mut code = hostile();
    let message = trap_message(code.contribute(9.0, 0).unwrap_err());
    assert!(message.contains("CPU limit"), "{message}");
    let state = code.contribute(5.0, 0).expect("a fresh instance answers");
    assert_eq!(code.estimate(&state).unwrap(), 5.0);
    // A node's default input is an ordinary number.
    let ordinary = code.contribute(1.0, 0).unwrap();
    assert_eq!(code.estimate(&ordinary).unwrap(), 1.0);
    // A merge into a state of 8 loops too; a state of 8 merged into another is
    // ignored.
    let greedy = code.contribute(8.0, 0).unwrap();
    let message = trap_message(code.merge(&greedy, &state).unwrap_err());
    assert!(message.contains("CPU limit"), "{message}");
    let merged = code
        .merge(&state, &greedy)
        .expect("a fresh instance answers");
    assert_eq!(code.estimate(&merged).unwrap(), 5.0);
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let mut code = hostile();
    let message = trap_message(code.contribute(2.0, 0).unwrap_err());
    assert!(message.contains("memory limit"), "{message}");
    assert!(code.contribute(5.0, 0).is_ok());
}

#[test]
fn an_oversized_state_is_refused() {
    let mut code = hostile();
    let err = code.contribute(3.0, 0).unwrap_err();
    assert!(matches!(err, AggregateError::TooLarge { .. }), "{err}");
}

#[test]
fn a_panic_is_a_trap_and_the_next_call_works() {
    let mut code = hostile();
    trap_message(code.contribute(4.0, 0).unwrap_err());
    let a = code.contribute(5.0, 0).unwrap();
    let b = code.contribute(6.0, 0).unwrap();
    let merged = code.merge(&a, &b).unwrap();
    assert_eq!(code.estimate(&merged).unwrap(), 6.0);
}

#[test]
fn garbage_states_are_refused_by_the_object() {
    let runtime = runtime();
    let census = runtime
        .load_aggregate_file(Path::new(objects::CENSUS))
        .unwrap();
    let mut code = census.instantiate().unwrap();
    let good = code.contribute(1.0, 42).unwrap();
    let err = code.merge(&good, &[0xff; 40]).unwrap_err();
    assert!(matches!(err, AggregateError::Refused { .. }), "{err}");
}

#[test]
fn a_poisoned_state_from_a_peer_leaves_the_node_and_its_other_objects_working() {
    let mut code = hostile();
    let poisoned = code.contribute(-1.0, 0).unwrap();
    let mut max_code = max_instance();
    let peer_max = max_code.contribute(77.0, 0).unwrap();
    let mut node = node_with(vec![("hostile", code, 5.0), ("max", max_code, 10.0)]);
    let datagram = exchange(vec![("hostile", 0, poisoned), ("max", 0, peer_max)]);
    node.handle_datagram(peer().addr, &datagram, Instant::now())
        .unwrap();

    let mut failures = Vec::new();
    while let Some(event) = node.poll_event() {
        if let Event::AggregateFailed { object, error } = event {
            failures.push((object, error));
        }
    }
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "hostile");
    assert!(failures[0].1.contains("merge"), "{}", failures[0].1);
    assert_eq!(node.current("hostile").unwrap().value, 5.0, "state changed");
    assert_eq!(
        node.current("max").unwrap().value,
        77.0,
        "the other object stopped"
    );
}

#[test]
fn objects_of_the_wrong_world_are_refused_with_a_clear_error() {
    let runtime = runtime();
    let err = runtime
        .load_aggregate_file(Path::new(objects::COUNTER))
        .unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("liveobjects:object/aggregate@0.1.0"),
        "{err}"
    );
    let err = runtime.load_file(Path::new(objects::CENSUS)).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
}

#[test]
fn a_peer_cannot_drag_a_node_to_an_absurd_epoch_or_with_a_garbage_state() {
    let mut code = max_instance();
    let good = code.contribute(50.0, 0).unwrap();
    let mut node = node_with(vec![("max", code, 10.0)]);
    let push = |epoch: u64, state: Vec<u8>| exchange(vec![("max", epoch, state)]);
    let (peer, now) = (peer(), Instant::now());
    node.handle_datagram(peer.addr, &push(u64::MAX, good.clone()), now)
        .unwrap();
    assert_eq!(node.current("max").unwrap().epoch, 0, "jumped to u64::MAX");
    node.handle_datagram(peer.addr, &push(1, vec![0xff; 9]), now)
        .unwrap();
    assert_eq!(
        node.current("max").unwrap().epoch,
        0,
        "a garbage state moved it"
    );
    assert!(matches!(
        node.poll_event(),
        Some(Event::AggregateFailed { .. })
    ));
    node.handle_datagram(peer.addr, &push(1, good), now)
        .unwrap();
    let current = node.current("max").unwrap();
    assert_eq!((current.epoch, current.value), (1, 50.0));
    assert_eq!(
        node.poll_event(),
        Some(Event::Estimate {
            object: "max".into(),
            epoch: 0,
            value: 10.0
        })
    );
}
