//! Shipped objects on the vsync driver, in one process with real QUIC links and
//! sandboxed replicas: the cardtable's slap race has one winner every replica
//! agrees on; the ledger's refused transfers abort everywhere; a silent member is
//! excluded in bounded time (a group of three keeps it: it is never shrunk to
//! two); an update that multicasts twice commits both or neither; a joiner
//! outside the policy is refused; events multicast while applying count against
//! the memory cap until committed; and the type check refuses durable or
//! total-order objects on drivers that lack them.

use liveobjects_directory::keys::Identity;
use liveobjects_directory::record::{AccessPolicy, ObjectRecord, Reliability};
use liveobjects_host::group::GroupError;
use liveobjects_host::join::{Requirements, check_type};
use liveobjects_host::mesh::net::Peer;
use liveobjects_host::runtime::{Limits, Logic, ReplicaError, Runtime, RuntimeConfig};
use liveobjects_host::vsync::group::GroupConfig;
use liveobjects_host::vsync::host::{VsyncHandle, VsyncJoin, VsyncNode, VsyncSettings};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Host {
    node: VsyncNode,
    _dir: tempfile::TempDir,
}

fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let node = VsyncNode::start(
        &Identity::generate(),
        "127.0.0.1:0".parse().unwrap(),
        VsyncSettings {
            data_dir: dir.path().to_path_buf(),
            group: GroupConfig {
                exclude_after: Duration::from_secs(2),
                ..GroupConfig::default()
            },
            evidence: None,
        },
    )
    .unwrap();
    Host { node, _dir: dir }
}

fn how(seeds: Vec<Peer>, found: bool, policy: AccessPolicy) -> VsyncJoin {
    VsyncJoin {
        seeds,
        found_if_alone: found,
        durable: true,
        policy,
        grant: None,
        evolution: Default::default(),
        check_every: 0,
    }
}

/// Three hosts in one group of `object`.
async fn group_of_three(
    runtime: &Runtime,
    logic: &Arc<Logic>,
    object: &str,
) -> (Vec<Host>, Vec<VsyncHandle>) {
    group_of(3, runtime, logic, object).await
}

async fn group_of(
    size: usize,
    runtime: &Runtime,
    logic: &Arc<Logic>,
    object: &str,
) -> (Vec<Host>, Vec<VsyncHandle>) {
    let hosts: Vec<Host> = (0..size).map(|_| host()).collect();
    let mut handles = vec![
        hosts[0]
            .node
            .join(
                runtime,
                logic,
                object,
                how(vec![], true, AccessPolicy::Open),
            )
            .await
            .unwrap(),
    ];
    for h in &hosts[1..] {
        let seeds = vec![hosts[0].node.me()];
        handles.push(
            h.node
                .join(
                    runtime,
                    logic,
                    object,
                    how(seeds, false, AccessPolicy::Open),
                )
                .await
                .unwrap(),
        );
    }
    (hosts, handles)
}

/// A sandbox runtime and the shipped object at `path`, loaded into it.
fn load(path: &std::path::Path) -> (Runtime, Arc<Logic>) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let logic = runtime.load_file(path).unwrap();
    (runtime, logic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_agrees_on_who_won_each_slap_race() {
    let (runtime, logic) = load(liveobjects_objects::CARDTABLE.as_ref());
    let (_hosts, tables) = group_of_three(&runtime, &logic, "lo://games/table").await;
    let players = ["ann", "ben", "cat"];
    for p in players {
        tables[0].call("sit", &[&format!("{p:?}")]).await.unwrap();
    }
    let mut races = 0;
    for _flip in 0..500 {
        if races == 5 {
            break;
        }
        tables[races % 3].call("flip", &[]).await.unwrap();
        if tables[0].call("slappable", &[]).await.unwrap() != ["true"] {
            continue;
        }
        let round = tables[0].call("round", &[]).await.unwrap()[0].clone();
        // All three players slap the same round at once, each through its host.
        let slaps: Vec<_> = (0..3)
            .map(|i| {
                let table = tables[i].clone();
                let (player, round) = (format!("{:?}", players[i]), round.clone());
                tokio::spawn(async move { table.call("slap", &[&player, &round]).await })
            })
            .collect();
        let mut winners = Vec::new();
        for (i, s) in slaps.into_iter().enumerate() {
            match s.await.unwrap() {
                Ok(_) => winners.push(players[i]),
                Err(GroupError::Aborted { reason, .. }) => {
                    assert!(reason.contains("already won by"), "{reason}");
                }
                Err(e) => panic!("slap failed: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        for t in &tables {
            assert_eq!(
                t.call("winner", &[&round]).await.unwrap(),
                [format!("some({:?})", winners[0])],
                "a replica disagrees on round {round}"
            );
        }
        races += 1;
    }
    assert_eq!(races, 5, "too few slappable rounds in 500 flips");
    let scores: Vec<_> = {
        let mut all = Vec::new();
        for t in &tables {
            all.push(t.call("scores", &[]).await.unwrap());
        }
        all
    };
    assert!(scores.iter().all(|s| *s == scores[0]), "{scores:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdraft_aborts_at_every_replica_and_changes_nothing() {
    let (runtime, logic) = load(liveobjects_objects::LEDGER.as_ref());
    let (_hosts, ledgers) = group_of_three(&runtime, &logic, "lo://bank/books").await;
    // A watcher of the third replica sees each event it applies, and the refused one.
    let mut applied = ledgers[2].replica().applied();
    ledgers[0]
        .call("open", &["\"alice\"", "100"])
        .await
        .unwrap();
    ledgers[1].call("open", &["\"bob\"", "0"]).await.unwrap();
    ledgers[2]
        .call("transfer", &["\"t1\"", "\"alice\"", "\"bob\"", "60"])
        .await
        .unwrap();
    let refused = ledgers[1]
        .call("transfer", &["\"t2\"", "\"alice\"", "\"bob\"", "60"])
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GroupError::Aborted { reason, .. } if reason.contains("no overdrafts")),
        "{refused}"
    );
    assert!(refused.to_string().contains("lo://bank/books"), "{refused}");
    // The caller's replica answered; the third may apply the refusal a moment later.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match tokio::time::timeout(std::time::Duration::from_secs(10), applied.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            _ => break,
        }
    }
    let accepted = seen.iter().filter(|e| e.rejected.is_none()).count();
    assert_eq!(accepted, 3, "two opens and a transfer: {seen:?}");
    assert!(
        seen.iter().any(|e| e
            .rejected
            .as_deref()
            .is_some_and(|r| r.contains("no overdrafts"))),
        "{seen:?}"
    );
    for l in &ledgers {
        assert_eq!(
            l.call("balance", &["\"alice\""]).await.unwrap(),
            ["some(40)"]
        );
        assert_eq!(l.call("balance", &["\"bob\""]).await.unwrap(), ["some(60)"]);
        assert_eq!(l.call("applied", &["\"t2\""]).await.unwrap(), ["false"]);
        assert_eq!(l.call("total", &[]).await.unwrap(), ["100"]);
    }
    // A retry of a committed transfer is refused, not applied twice.
    let again = ledgers[0]
        .call("transfer", &["\"t1\"", "\"alice\"", "\"bob\"", "10"])
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already applied"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_excluded_and_the_rest_carry_on() {
    let (runtime, logic) = load(liveobjects_objects::COUNTER.as_ref());
    let (hosts, counters) = group_of(4, &runtime, &logic, "lo://x/counter").await;
    counters[3].call("add", &["1"]).await.unwrap();
    // Host 3 goes silent without leaving (its endpoint closes, as a crashed
    // host's would).
    let silent = hosts[3].node.me().key;
    hosts[3].node.shutdown().await;
    let started = Instant::now();
    loop {
        let members = counters[0].status().await.unwrap().members;
        if members.len() == 3 && members.iter().all(|m| m.key != silent) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the silent member was not excluded: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "excluded before it could have been silent for long"
    );
    counters[1].call("add", &["2"]).await.unwrap();
    for c in &counters[..3] {
        assert_eq!(c.call("get", &[]).await.unwrap(), ["3"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_keeps_a_silent_member_and_carries_on() {
    let (runtime, logic) = load(liveobjects_objects::COUNTER.as_ref());
    let (hosts, counters) = group_of_three(&runtime, &logic, "lo://x/three").await;
    hosts[2].node.shutdown().await;
    // Well past the exclusion delay (2 s here): two voters would be one
    // failure from a group that can never commit again, so the view stays.
    tokio::time::sleep(Duration::from_secs(5)).await;
    counters[1].call("add", &["2"]).await.unwrap();
    let members = counters[0].status().await.unwrap().members;
    assert_eq!(members.len(), 3, "{members:?}");
    for c in &counters[..2] {
        assert_eq!(c.call("get", &[]).await.unwrap(), ["2"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_outside_the_policy_is_refused_and_gets_no_state() {
    let (runtime, logic) = load(liveobjects_objects::COUNTER.as_ref());
    let founder = host();
    let outsider = host();
    let policy = AccessPolicy::Keys(vec![founder.node.me().key]);
    let counter = founder
        .node
        .join(
            &runtime,
            &logic,
            "lo://x/private",
            how(vec![], true, policy.clone()),
        )
        .await
        .unwrap();
    counter.call("add", &["5"]).await.unwrap();
    let refused = outsider
        .node
        .join(
            &runtime,
            &logic,
            "lo://x/private",
            how(vec![founder.node.me()], false, policy),
        )
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is not among the keys allowed"),
        "{refused}"
    );
    assert_eq!(counter.status().await.unwrap().members.len(), 1);
}

fn record(driver: &str, reliability: Reliability) -> ObjectRecord {
    let mut r = ObjectRecord::new("lo://bank/ledger", 1, b"logic", 0, 60);
    r.driver.name = driver.to_string();
    r.object_type.reliability = reliability;
    r
}

#[test]
fn durable_objects_are_refused_on_drivers_without_durability() {
    let none = Requirements::default();
    for driver in ["mesh", "qsm"] {
        let e = check_type(&record(driver, Reliability::Durable), &none).unwrap_err();
        assert!(
            e.contains("needs durable delivery") && e.contains(driver),
            "{driver}: {e}"
        );
    }
    let e = check_type(&record("qsm", Reliability::TotalOrder), &none).unwrap_err();
    assert!(e.contains("needs total-order delivery"), "{e}");
    assert!(check_type(&record("vsync", Reliability::Durable), &none).is_ok());
    // A joiner that requires durability refuses a record that does not offer it.
    let durable: Requirements = "durable".parse().unwrap();
    let e = check_type(&record("vsync", Reliability::TotalOrder), &durable).unwrap_err();
    assert!(e.contains("you require durable"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_durable_log_is_refused_with_its_file_named() {
    let (runtime, logic) = load(liveobjects_objects::COUNTER.as_ref());
    let h = host();
    let path = h.node.log_path("lo://x/kept");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, vec![0x5Au8; 8192]).unwrap();
    let e = h
        .node
        .join(
            &runtime,
            &logic,
            "lo://x/kept",
            how(vec![], true, AccessPolicy::Open),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(&path.display().to_string()),
        "the error does not name the file: {e}"
    );
}

proptest::proptest! {
    /// Whatever bytes arrive, decoding a vsync frame fails cleanly or succeeds.
    #[test]
    fn vsync_frames_decode_or_fail_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = postcard::from_bytes::<liveobjects_host::vsync::net::VsyncFrame>(&bytes);
    }

    /// A valid frame with one byte changed decodes or fails cleanly too.
    #[test]
    fn flipped_vsync_frames_decode_or_fail_without_panicking(at in 0usize..200, byte in proptest::num::u8::ANY) {
        use liveobjects_host::vsync::group::Rpc;
        use liveobjects_host::vsync::net::{Body, VsyncFrame};
        use liveobjects_host::vsync::types::Command;
        let frame = VsyncFrame {
            from: Peer::new(Identity::from_secret([7; 32]).public(), "127.0.0.1:9".parse().unwrap()),
            group: "lo://x/y".into(),
            id: 42,
            body: Body::Request(Rpc::Writes(vec![Command {
                sender: "me".into(),
                boot: 1,
                seq: 2,
                timestamp_ms: 3,
                payload: vec![1, 2, 3, 4],
                more: vec![vec![5]],
            }])),
        };
        let mut bytes = postcard::to_allocvec(&frame).unwrap();
        let at = at % bytes.len();
        bytes[at] = byte;
        let _ = postcard::from_bytes::<VsyncFrame>(&bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_multicasts_twice_commits_both_or_neither_everywhere() {
    let (runtime, logic) = load(liveobjects_objects::HOSTILE.as_ref());
    let (_hosts, replicas) = group_of_three(&runtime, &logic, "lo://test/atomic").await;
    replicas[0].call("add", &["10"]).await.unwrap();
    // The first payload (add 5) would apply; the second is refused: neither may.
    let err = replicas[1]
        .call("add-then-refuse", &["5"])
        .await
        .expect_err("the second payload is refused, so the transaction aborts");
    match &err {
        GroupError::Aborted { reason, .. } => {
            assert!(reason.contains("refused on purpose"), "{reason}");
            assert!(reason.contains("payload 2 of 2"), "{reason}");
        }
        other => panic!("expected an abort, got {other}"),
    }
    replicas[2].call("add", &["1"]).await.unwrap();
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(
            r.call("total", &[]).await.unwrap(),
            ["11"],
            "replica {i} applied part of an aborted transaction"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_multicast_while_applying_count_against_the_memory_cap_until_committed() {
    let runtime = Runtime::new(RuntimeConfig {
        limits: Limits {
            memory_bytes: 16 << 20,
            ..Limits::default()
        },
        ..RuntimeConfig::default()
    })
    .unwrap();
    let logic = runtime
        .load_file(liveobjects_objects::HOSTILE.as_ref())
        .unwrap();
    let (_hosts, replicas) = group_of(1, &runtime, &logic, "lo://test/fan-out").await;
    replicas[0].call("add", &["1"]).await.unwrap();
    // One event whose `deliver` multicasts 400 events of 60 kB: 24 MB waiting to
    // be committed, well within the cascade queue's count (4,096), past the cap.
    let _ = replicas[0].call("fan-out", &["60000", "400"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        match replicas[0].call("total", &[]).await {
            Err(GroupError::Replica(ReplicaError::Quarantined { reason, .. })) => break reason,
            other => assert!(
                Instant::now() < deadline,
                "not quarantined within 20 s: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reason.contains("exceeded its memory cap of 16 MiB")
            && reason.contains("multicast while applying events"),
        "{reason}"
    );
}
