//! Mesh benchmark: events/s and latency for 1, 3 and 5 members on loopback with 64 B
//! and 1 KiB events, and join time with a 1 MiB state; NATS (nats-server, Debian
//! package) measured in the same run as the peer users would pick instead. Then
//! what divergence checks and the flight recorder cost, against the same group
//! without them in the same run. Then how long calls wait while a live upgrade
//! switches a 1 KiB and a 10 MiB state, against the same switch of a lone
//! replica (the sandbox's own cost) in the same run.
//! See `host/benches/README.md`.
//!
//! Run: `cargo bench -p liveobjects-host --bench mesh` (`-- --quick` for a short run).

use liveobjects_directory::keys::Identity;
use liveobjects_host::group::Admission;
use liveobjects_host::mesh::group::{GroupHandle, MeshNode};
use liveobjects_host::runtime::{Logic, Runtime, RuntimeConfig};
use liveobjects_protocols::mesh::{Config, Liveness};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/nats.rs"]
mod nats_client;
#[path = "common/report.rs"]
mod report;
#[path = "common/upgrade.rs"]
mod upgrade;
use nats_client::{Nats, nats_server};

struct Row {
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn wait(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `n` mesh endpoints on loopback.
fn start_nodes(n: usize, config: &Config) -> Vec<MeshNode> {
    (0..n)
        .map(|_| {
            MeshNode::start(
                &Identity::generate(),
                "127.0.0.1:0".parse().unwrap(),
                config.clone(),
            )
            .unwrap()
        })
        .collect()
}

async fn group(
    runtime: &Runtime,
    logic: &Arc<Logic>,
    n: usize,
    check_every: u64,
) -> (Vec<MeshNode>, Vec<GroupHandle>) {
    let config = Config {
        heartbeat: 100,
        suspect_after: 3_000,
        retry: 200,
        liveness: Liveness::PerPeer,
        check_every,
        ..Config::default()
    };
    let nodes = start_nodes(n, &config);
    let mut groups = vec![
        nodes[0]
            .found(runtime, logic, "bench", Admission::default())
            .unwrap(),
    ];
    for node in &nodes[1..] {
        groups.push(
            node.join(runtime, logic, "bench", nodes[0].me(), Admission::default())
                .unwrap(),
        );
    }
    wait("members", 30, async || {
        for g in &groups {
            if g.status().await.map(|s| s.members.len()).unwrap_or(0) != n {
                return false;
            }
        }
        true
    })
    .await;
    (nodes, groups)
}

async fn applied(g: &GroupHandle) -> u64 {
    g.status().await.map(|s| s.events_applied).unwrap_or(0)
}

/// `events` events of `size` bytes from one member (64 calls in flight), until every
/// member applied them; then latency of single calls from a non-sequencer member.
async fn mesh(
    runtime: &Runtime,
    logic: &Arc<Logic>,
    n: usize,
    size: usize,
    events: usize,
    pings: usize,
    check_every: u64,
) -> Row {
    let (nodes, groups) = group(runtime, logic, n, check_every).await;
    // The hostile test object's `huge-multicast` sends one event of about `size` bytes.
    let arg = (size.saturating_sub(3)).to_string();
    let base: Vec<u64> = {
        let mut v = Vec::new();
        for g in &groups {
            v.push(applied(g).await);
        }
        v
    };
    let start = Instant::now();
    let in_flight = 64;
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let g = groups[0].clone();
        let arg = arg.clone();
        let share = events / in_flight + usize::from(t < events % in_flight);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                g.call("huge-multicast", &[&arg]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait("all applied", 120, async || {
        for (g, b) in groups.iter().zip(&base) {
            if applied(g).await < b + events as u64 {
                return false;
            }
        }
        true
    })
    .await;
    let throughput = events as f64 / start.elapsed().as_secs_f64();
    let caller = &groups[n.min(2) - 1];
    let mut latencies = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        caller.call("huge-multicast", &[&arg]).await.unwrap();
        latencies.push(t.elapsed());
    }
    latencies.sort();
    for node in &nodes {
        node.shutdown();
    }
    Row {
        throughput,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

/// Events/s of 3 members, 64 B events, with divergence checks every 1,000 and
/// every 100 positions, and with every replica recording (`lo node --record`),
/// against the same group with neither, in this run.
async fn safety_costs(
    runtime: &Runtime,
    logic: &Arc<Logic>,
    events: usize,
    pings: usize,
    report: &mut report::Report,
) {
    let recordings = tempfile::tempdir().unwrap();
    let mut recording = Runtime::new(RuntimeConfig {
        cache_dir: Some(recordings.path().join("cache")),
        ..Default::default()
    })
    .unwrap();
    recording.set_recording(Some(liveobjects_host::runtime::recorder::RecordSettings {
        dir: recordings.path().join("recordings"),
        budget_bytes: 64 << 20,
        digest_every: 0,
    }));
    let recorded_logic = recording
        .load_file(liveobjects_objects::HOSTILE.as_ref())
        .unwrap();
    let plain = mesh(runtime, logic, 3, 64, events, pings, 0).await;
    println!();
    println!("cost of divergence checks and the flight recorder: 3 members, 64 B, {events} events");
    println!(
        "{:<28} {:>12} {:>9} {:>9} {:>9}",
        "variant", "ev/s", "p50", "p99", "vs plain"
    );
    println!(
        "{:<28} {:>12.0} {:>9} {:>9} {:>9}",
        "neither",
        plain.throughput,
        us(plain.p50),
        us(plain.p99),
        "1.00"
    );
    let variants: [(&str, &Runtime, &Arc<Logic>, u64); 3] = [
        ("checks every 1,000", runtime, logic, 1000),
        ("checks every 100", runtime, logic, 100),
        ("flight recorder", &recording, &recorded_logic, 0),
    ];
    for (name, runtime, logic, check_every) in variants {
        let row = mesh(runtime, logic, 3, 64, events, pings, check_every).await;
        report.row(
            serde_json::json!({"members": 3, "size": 64, "measure": "throughput", "variant": name}),
            row.throughput,
            Some(("same group without", plain.throughput)),
            "events/s",
        );
        println!(
            "{:<28} {:>12.0} {:>9} {:>9} {:>9.2}",
            name,
            row.throughput,
            us(row.p50),
            us(row.p99),
            row.throughput / plain.throughput
        );
    }
}

/// One publisher, `n` subscribers (so `n` receivers, like `n` members).
async fn nats(port: u16, n: usize, size: usize, events: usize, pings: usize) -> Row {
    let mut subs = Vec::new();
    for _ in 0..n {
        let mut s = Nats::connect(port).await;
        s.subscribe().await;
        subs.push(s);
    }
    let mut publisher = Nats::connect(port).await;
    let frame = Nats::publish_frame(size);
    let start = Instant::now();
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                for _ in 0..events {
                    s.next_message().await;
                }
                s
            })
        })
        .collect();
    for _ in 0..events {
        publisher.send(&frame).await;
    }
    let mut subs = Vec::new();
    for r in receivers {
        subs.push(r.await.unwrap());
    }
    let throughput = events as f64 / start.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        publisher.send(&frame).await;
        for s in subs.iter_mut() {
            s.next_message().await;
        }
        latencies.push(t.elapsed());
    }
    latencies.sort();
    Row {
        throughput,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

async fn join_time(runtime: &Runtime, chat: &Arc<Logic>) -> (Duration, usize) {
    let (nodes, groups) = group(runtime, chat, 1, 0).await;
    // About 1 MiB of state: 256 messages of 4,000 bytes.
    let text = format!("\"{}\"", "x".repeat(4000));
    for _ in 0..256 {
        groups[0].call("post", &[&text]).await.unwrap();
    }
    let state = groups[0].snapshot().await.unwrap().len();
    let joiner = MeshNode::start(
        &Identity::generate(),
        "127.0.0.1:0".parse().unwrap(),
        Config {
            liveness: Liveness::PerPeer,
            ..Config::default()
        },
    )
    .unwrap();
    let start = Instant::now();
    let g = joiner
        .join(runtime, chat, "bench", nodes[0].me(), Admission::default())
        .unwrap();
    wait("joined", 60, async || {
        g.status().await.map(|s| s.member).unwrap_or(false)
    })
    .await;
    let took = start.elapsed();
    joiner.shutdown();
    for n in &nodes {
        n.shutdown();
    }
    (took, state)
}

struct PauseRow {
    state: usize,
    /// The longest a call waited from arming the upgrade until calls flowed
    /// again on the new logic.
    pause: Duration,
    /// Calls before the upgrade.
    p50: Duration,
    /// `Replica::upgrade` of a lone replica holding the same state.
    bare: Duration,
}

/// Three members of a chat whose state is about `state` bytes; one member
/// posts a short message at a time, while the sequencer's host finds version 2
/// (the same logic) and the group switches.
async fn upgrade_pause(runtime: &Runtime, chat: &Arc<Logic>, state: usize) -> PauseRow {
    let (source, evolution) = upgrade::ArmedSource::new(chat, "mesh");
    let config = Config {
        liveness: Liveness::PerPeer,
        ..Config::default()
    };
    let nodes = start_nodes(3, &config);
    let budgets = runtime.executor().budgets().clone();
    let mut groups = vec![
        nodes[0]
            .found_with(
                runtime,
                chat,
                "bench",
                Admission::default(),
                &budgets,
                Some(0),
                &evolution,
            )
            .unwrap(),
    ];
    for node in &nodes[1..] {
        groups.push(
            node.join_with(
                runtime,
                chat,
                "bench",
                nodes[0].me(),
                Admission::default(),
                &budgets,
                Some(0),
                &evolution,
            )
            .unwrap(),
        );
    }
    wait("members", 30, async || {
        for g in &groups {
            if !g.status().await.map(|s| s.member).unwrap_or(false) {
                return false;
            }
        }
        true
    })
    .await;
    upgrade::fill_chat(state, |_, text| {
        let g = groups[0].clone();
        async move {
            g.call("post", &[&text]).await.unwrap();
        }
    })
    .await;
    let snapshot = groups[0].snapshot().await.unwrap();
    // Calls from a member that does not order the group, one at a time.
    let caller = &groups[1];
    let switched = || {
        groups.iter().all(|g| {
            g.status_now()
                .logic
                .is_some_and(|l| l.starts_with("version 2"))
        })
    };
    let (p50, pause) = upgrade::measure_pause(
        &source,
        async || caller.call("post", &["\"hi\""]).await.map(drop).unwrap(),
        switched,
    )
    .await;
    for node in &nodes {
        node.shutdown();
    }
    let bare = upgrade::lone_switch(runtime, chat, &snapshot);
    PauseRow {
        state: snapshot.len(),
        pause,
        p50,
        bare,
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (events, pings) = if quick { (2_000, 100) } else { (20_000, 1_000) };
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let hostile = runtime
        .load_file(liveobjects_objects::HOSTILE.as_ref())
        .unwrap();
    let chat = runtime
        .load_file(liveobjects_objects::CHAT.as_ref())
        .unwrap();
    let server = nats_server().await;
    if server.is_none() {
        println!(
            "(nats-server is not installed: `apt-get install nats-server`; the peer column stays empty)"
        );
    }
    println!();
    println!(
        "liveobjects mesh benchmark: loopback, {events} events per row, one sender, latency over {pings} calls"
    );
    println!(
        "{:<9} {:>6} {:>12} {:>9} {:>9} {:>12} {:>9} {:>9} {:>8}",
        "members", "size", "mesh ev/s", "p50", "p99", "nats msg/s", "p50", "p99", "mesh/nats"
    );
    let mut report = report::Report::create("mesh");
    for n in [1usize, 3, 5] {
        for size in [64usize, 1024] {
            let ours = mesh(&runtime, &hostile, n, size, events, pings, 0).await;
            let peer = match &server {
                Some(s) => Some(nats(s.1, n, size, events, pings).await),
                None => None,
            };
            report.row(
                serde_json::json!({"members": n, "size": size, "measure": "throughput"}),
                ours.throughput,
                peer.as_ref().map(|p| ("nats", p.throughput)),
                "events/s",
            );
            report.row(
                serde_json::json!({"members": n, "size": size, "measure": "p99 latency"}),
                ours.p99.as_secs_f64() * 1e6,
                peer.as_ref().map(|p| ("nats", p.p99.as_secs_f64() * 1e6)),
                "us (lower is better)",
            );
            println!(
                "{:<9} {:>6} {:>12.0} {:>9} {:>9} {:>12} {:>9} {:>9} {:>8}",
                n,
                size,
                ours.throughput,
                us(ours.p50),
                us(ours.p99),
                peer.as_ref()
                    .map(|p| format!("{:.0}", p.throughput))
                    .unwrap_or_default(),
                peer.as_ref().map(|p| us(p.p50)).unwrap_or_default(),
                peer.as_ref().map(|p| us(p.p99)).unwrap_or_default(),
                peer.as_ref()
                    .map(|p| format!("{:.2}", ours.throughput / p.throughput))
                    .unwrap_or_default(),
            );
        }
    }
    safety_costs(&runtime, &hostile, events, pings, &mut report).await;
    println!();
    println!("live upgrade pause: 3 members, one caller posting one message at a time");
    println!(
        "{:<10} {:>12} {:>12} {:>14} {:>10}",
        "state", "call p50", "pause", "lone switch", "pause/lone"
    );
    let pause_dir = tempfile::tempdir().unwrap();
    let pause_runtime = upgrade::pause_runtime(pause_dir.path());
    let pause_chat = pause_runtime
        .load_file(liveobjects_objects::CHAT.as_ref())
        .unwrap();
    for state in [1usize << 10, 10 << 20] {
        let row = upgrade_pause(&pause_runtime, &pause_chat, state).await;
        report.row(
            serde_json::json!({"members": 3, "state": row.state, "measure": "upgrade pause"}),
            row.pause.as_secs_f64() * 1e6,
            Some(("lone replica's switch", row.bare.as_secs_f64() * 1e6)),
            "us (lower is better)",
        );
        println!(
            "{:<10} {:>12} {:>12} {:>14} {:>10.2}",
            format!("{} KiB", row.state / 1024),
            us(row.p50),
            us(row.pause),
            us(row.bare),
            row.pause.as_secs_f64() / row.bare.as_secs_f64()
        );
    }
    let (took, state) = join_time(&runtime, &chat).await;
    println!();
    println!(
        "join with state transfer: {:.1} ms for a {} KiB snapshot (logic cached)",
        took.as_secs_f64() * 1e3,
        state / 1024
    );
}
