//! The mesh over real QUIC sockets on loopback: several hosts (in one test process,
//! each with its own endpoint and identity) run sandboxed replicas of the chat object.

use liveobjects_directory::keys::Identity;
use liveobjects_host::group::Admission;
use liveobjects_host::mesh::group::{GroupHandle, MeshNode};
use liveobjects_host::mesh::net::{Body, Frame, Transport};
use liveobjects_host::runtime::{Logic, Runtime, RuntimeConfig};
use liveobjects_protocols::mesh::{Config, Liveness};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOM: &str = "lo://test/rooms/lobby";

fn config() -> Config {
    Config {
        heartbeat: 100,
        suspect_after: 1_500,
        retry: 200,
        liveness: Liveness::PerPeer,
        ..Config::default()
    }
}

fn setup() -> (Runtime, Arc<Logic>) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let logic = runtime
        .load_file(liveobjects_objects::CHAT.as_ref())
        .unwrap();
    (runtime, logic)
}

fn node() -> MeshNode {
    MeshNode::start(
        &Identity::generate(),
        "127.0.0.1:0".parse().unwrap(),
        config(),
    )
    .unwrap()
}

/// Poll `check` until it holds or `secs` pass (then fail with `what`).
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn members(g: &GroupHandle) -> usize {
    match g.status().await {
        Ok(s) if s.member => s.members.len(),
        _ => 0,
    }
}

async fn count(g: &GroupHandle) -> u64 {
    match g.call("count", &[]).await {
        Ok(r) => r[0].parse().unwrap_or(0),
        Err(_) => 0,
    }
}

async fn post_many(g: GroupHandle, who: &'static str, n: usize) {
    for i in 0..n {
        g.call("post", &[&format!("\"{who}-{i}\"")]).await.unwrap();
    }
}

/// Each sender's messages, in the order this replica's history shows them.
fn per_sender_order(history: &str) -> Vec<(String, usize)> {
    history
        .split("text: \"")
        .skip(1)
        .map(|rest| {
            let text = &rest[..rest.find('"').unwrap()];
            let (who, i) = text.rsplit_once('-').unwrap();
            (who.to_string(), i.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_apply_every_event_once_in_one_order() {
    let (runtime, logic) = setup();
    let (a, b, c) = (node(), node(), node());
    let ga = a
        .found(&runtime, &logic, ROOM, Admission::default())
        .unwrap();
    let gb = b
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    let gc = c
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    let groups = [ga.clone(), gb.clone(), gc.clone()];
    eventually(20, "three members", || async {
        for g in &groups {
            if members(g).await != 3 {
                return false;
            }
        }
        true
    })
    .await;

    let writers = [
        tokio::spawn(post_many(ga.clone(), "a", 30)),
        tokio::spawn(post_many(gb.clone(), "b", 30)),
        tokio::spawn(post_many(gc.clone(), "c", 30)),
    ];
    for w in writers {
        w.await.unwrap();
    }
    eventually(20, "90 messages everywhere", || async {
        for g in &groups {
            if count(g).await != 90 {
                return false;
            }
        }
        true
    })
    .await;

    let snapshots = [
        ga.snapshot().await.unwrap(),
        gb.snapshot().await.unwrap(),
        gc.snapshot().await.unwrap(),
    ];
    assert_eq!(snapshots[0], snapshots[1]);
    assert_eq!(snapshots[0], snapshots[2]);
    let history = ga.call("history", &["100"]).await.unwrap()[0].clone();
    let order = per_sender_order(&history);
    assert_eq!(order.len(), 90);
    for who in ["a", "b", "c"] {
        let seq: Vec<usize> = order
            .iter()
            .filter(|(w, _)| w == who)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(
            seq,
            (0..30).collect::<Vec<_>>(),
            "{who}'s messages lost, repeated or reordered"
        );
    }
    // The sender field is the host's identity key, authenticated by QUIC.
    assert!(history.contains(&format!("sender: \"{}\"", b.me().key)));
    for n in [a, b, c] {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_state_and_every_later_event() {
    let (runtime, logic) = setup();
    let (a, b) = (node(), node());
    let ga = a
        .found(&runtime, &logic, ROOM, Admission::default())
        .unwrap();
    let gb = b
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    eventually(20, "two members", || async { members(&gb).await == 2 }).await;
    let burst = tokio::spawn(post_many(ga.clone(), "a", 60));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Join mid-burst, through the non-sequencer member.
    let c = node();
    let gc = c
        .join(&runtime, &logic, ROOM, b.me(), Admission::default())
        .unwrap();
    burst.await.unwrap();
    post_many(gb.clone(), "b", 10).await;
    eventually(20, "70 messages at the joiner", || async {
        count(&gc).await == 70
    })
    .await;
    eventually(20, "70 messages everywhere", || async {
        count(&ga).await == 70 && count(&gb).await == 70
    })
    .await;
    assert_eq!(gc.snapshot().await.unwrap(), ga.snapshot().await.unwrap());
    for n in [a, b, c] {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_leaves_the_view_and_the_others_carry_on() {
    let (runtime, logic) = setup();
    let (a, b, c) = (node(), node(), node());
    let ga = a
        .found(&runtime, &logic, ROOM, Admission::default())
        .unwrap();
    let gb = b
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    let _gc = c
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    eventually(20, "three members", || async { members(&gb).await == 3 }).await;
    post_many(ga.clone(), "a", 5).await;
    c.shutdown();
    let stopped = Instant::now();
    eventually(20, "c excluded", || async {
        members(&ga).await == 2 && members(&gb).await == 2
    })
    .await;
    let detection = stopped.elapsed();
    assert!(detection < Duration::from_secs(20));
    post_many(gb.clone(), "b", 5).await;
    eventually(10, "10 messages at a and b", || async {
        count(&ga).await == 10 && count(&gb).await == 10
    })
    .await;
    assert_eq!(ga.snapshot().await.unwrap(), gb.snapshot().await.unwrap());
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_is_excluded_at_once_not_after_the_suspect_timeout() {
    let (runtime, logic) = setup();
    // A minute's suspect timeout: within the test's 10 s only the leaver's own
    // word can exclude it.
    let slow_to_suspect = || {
        MeshNode::start(
            &Identity::generate(),
            "127.0.0.1:0".parse().unwrap(),
            Config {
                suspect_after: 60_000,
                ..config()
            },
        )
        .unwrap()
    };
    let (a, b, c) = (slow_to_suspect(), slow_to_suspect(), slow_to_suspect());
    let ga = a
        .found(&runtime, &logic, ROOM, Admission::default())
        .unwrap();
    let gb = b
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    let _gc = c
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    eventually(20, "three members", || async {
        members(&ga).await == 3 && members(&gb).await == 3
    })
    .await;
    c.leave(ROOM).await;
    eventually(10, "c excluded on its leave", || async {
        members(&ga).await == 2 && members(&gb).await == 2
    })
    .await;
    post_many(gb.clone(), "b", 5).await;
    eventually(10, "5 messages at a and b", || async {
        count(&ga).await == 5 && count(&gb).await == 5
    })
    .await;
    for n in [a, b, c] {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_cost_one_heartbeat_per_peer_not_one_per_group() {
    const GROUPS: usize = 20;
    let (runtime, logic) = setup();
    let (a, b) = (node(), node());
    let mut pairs = Vec::new();
    for i in 0..GROUPS {
        let object = format!("{ROOM}-{i}");
        let ga = a
            .found(&runtime, &logic, &object, Admission::default())
            .unwrap();
        let gb = b
            .join(&runtime, &logic, &object, a.me(), Admission::default())
            .unwrap();
        pairs.push((ga, gb));
    }
    eventually(30, "two members in every group", || async {
        for (ga, gb) in &pairs {
            if members(ga).await != 2 || members(gb).await != 2 {
                return false;
            }
        }
        true
    })
    .await;
    // Let the joins' last acknowledgements go out.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (sent_a, sent_b, since) = (a.frames_sent(), b.frames_sent(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let periods = since.elapsed().as_millis() as u64 / config().heartbeat;
    let (idle_a, idle_b) = (a.frames_sent() - sent_a, b.frames_sent() - sent_b);
    // One heartbeat per period to the one peer, whatever the number of groups
    // (a heartbeat per group, as before, would be GROUPS times as many).
    for (host, idle) in [("a", idle_a), ("b", idle_b)] {
        assert!(
            idle <= periods + 2,
            "{host} sent {idle} frames in {periods} heartbeat periods with {GROUPS} idle groups"
        );
        assert!(
            idle >= periods / 4,
            "{host} sent only {idle} frames in {periods} periods: its heartbeats stopped"
        );
    }
    // And the groups are alive: an event still goes through.
    pairs[7].0.call("post", &["\"still here\""]).await.unwrap();
    eventually(10, "the event at b", || async {
        count(&pairs[7].1).await == 1
    })
    .await;
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_impersonating_a_member_is_cut_off_and_the_group_is_unaffected() {
    let (runtime, logic) = setup();
    let (a, b) = (node(), node());
    let ga = a
        .found(&runtime, &logic, ROOM, Admission::default())
        .unwrap();
    let gb = b
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    eventually(20, "two members", || async { members(&gb).await == 2 }).await;

    // Mallory has her own (valid) identity but claims to be b in her frames.
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let mallory: std::sync::Arc<Transport> =
        Transport::start(&Identity::generate(), "127.0.0.1:0".parse().unwrap(), tx).unwrap();
    let forged = Frame {
        from: b.me(),
        body: Body::Group {
            object: ROOM.to_string(),
            message: Box::new(liveobjects_protocols::mesh::Message::Submit {
                seq: 1,
                timestamp_ms: 0,
                payload: vec![0, 4, b'e', b'v', b'i', b'l'],
            }),
            grant: None,
        },
    };
    for _ in 0..5 {
        mallory.send(a.me(), &forged);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    post_many(gb.clone(), "b", 3).await;
    eventually(10, "3 messages at a", || async { count(&ga).await == 3 }).await;
    let history = ga.call("history", &["10"]).await.unwrap()[0].clone();
    assert!(
        !history.contains("evil"),
        "a forged frame was applied: {history}"
    );
    mallory.close();
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_malformed_or_oversized_frames_is_cut_off_and_the_group_is_unaffected() {
    let (runtime, logic) = setup();
    let (a, b) = (node(), node());
    let ga = a
        .found(&runtime, &logic, ROOM, Admission::default())
        .unwrap();
    let gb = b
        .join(&runtime, &logic, ROOM, a.me(), Admission::default())
        .unwrap();
    eventually(20, "two members", || async { members(&gb).await == 2 }).await;

    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let mallory: std::sync::Arc<Transport> =
        Transport::start(&Identity::generate(), "127.0.0.1:0".parse().unwrap(), tx).unwrap();
    // A frame that does not decode, and from another peer a length far over the limit.
    let mut garbage = 64u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 64]);
    mallory.send_raw_for_tests(a.me(), garbage);
    let mallory2: std::sync::Arc<Transport> = Transport::start(
        &Identity::generate(),
        "127.0.0.1:0".parse().unwrap(),
        tokio::sync::mpsc::channel(16).0,
    )
    .unwrap();
    mallory2.send_raw_for_tests(a.me(), u32::MAX.to_be_bytes().to_vec());
    tokio::time::sleep(Duration::from_millis(500)).await;

    post_many(gb.clone(), "b", 3).await;
    post_many(ga.clone(), "a", 3).await;
    eventually(10, "6 messages at a and b", || async {
        count(&ga).await == 6 && count(&gb).await == 6
    })
    .await;
    assert_eq!(ga.snapshot().await.unwrap(), gb.snapshot().await.unwrap());
    mallory.close();
    mallory2.close();
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_larger_than_a_read_chunk_arrive_whole() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let logic = runtime
        .load_file(liveobjects_objects::HOSTILE.as_ref())
        .unwrap();
    let (a, b) = (node(), node());
    let ga = a
        .found(&runtime, &logic, "test:big", Admission::default())
        .unwrap();
    let gb = b
        .join(&runtime, &logic, "test:big", a.me(), Admission::default())
        .unwrap();
    eventually(20, "two members", || async { members(&gb).await == 2 }).await;
    // 60,000-byte events: each frame is read in several pieces.
    for _ in 0..3 {
        gb.call("huge-multicast", &["60000"]).await.unwrap();
    }
    eventually(20, "three big events at both members", || async {
        let applied =
            |g: GroupHandle| async move { g.status().await.map(|s| s.events_applied).unwrap_or(0) };
        applied(ga.clone()).await == 3 && applied(gb.clone()).await == 3
    })
    .await;
    assert_eq!(ga.snapshot().await.unwrap(), gb.snapshot().await.unwrap());
    for n in [a, b] {
        n.shutdown();
    }
}
