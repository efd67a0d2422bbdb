//! vsync benchmark: committed commands/s and commit latency for groups of 3 and 5
//! members on loopback (QUIC), 64 B and 1 KiB commands, log in memory and durable
//! (redb, fsynced before every acknowledgement), against a NATS JetStream cluster
//! of the same size measured in the same run (stream with as many replicas as
//! members, memory or file storage; publishes acknowledged by the stream).
//! See `host/benches/README.md`.
//!
//! Throughput: `INFLIGHT` submitters spread over the members, each submitting
//! and waiting for its commit, until the row's count is done. Latency: one
//! submitter on a follower (for NATS, a client of one server), one at a time.
//! Both systems commit through a Raft leader, so a follower's command costs a
//! forward to the leader in both.
//!
//! Then how long calls wait while a live upgrade switches a sandboxed chat's
//! 1 KiB and 10 MiB state, against the same switch of a lone replica in the
//! same run.
//!
//! Run: `cargo bench -p liveobjects-host --bench vsync` (`-- --quick` for a short run).

#[path = "common/report.rs"]
mod report;
#[path = "common/upgrade.rs"]
mod upgrade;
use liveobjects_directory::keys::Identity;
use liveobjects_directory::record::AccessPolicy;
use liveobjects_host::runtime::{Logic, Runtime};
use liveobjects_host::vsync::group::{Group, GroupConfig};
use liveobjects_host::vsync::host::{VsyncJoin, VsyncNode, VsyncSettings};
use liveobjects_host::vsync::machine::{Application, GroupView};
use liveobjects_host::vsync::net::QuicLink;
use liveobjects_host::vsync::store::LogStore;
use liveobjects_host::vsync::types::{Command, Position};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Commands in flight at once in the throughput runs.
const INFLIGHT: usize = 64;

/// The replicated object: counts and folds what it applies (the benchmark
/// measures ordering and durability, not the sandbox; see the runtime bench).
#[derive(Default)]
struct Fold {
    count: u64,
    hash: u64,
}

impl Application for Fold {
    type Logic = ();

    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String> {
        *self = Fold::default();
        if let Some(s) = snapshot {
            self.count = u64::from_le_bytes(s[..8].try_into().map_err(|_| "short")?);
            self.hash = u64::from_le_bytes(s[8..16].try_into().map_err(|_| "short")?);
        }
        Ok(())
    }

    fn apply(&mut self, at: Position, command: &Command) -> Result<(), String> {
        self.count += 1;
        self.hash = self
            .hash
            .rotate_left(5)
            .wrapping_add(at.index ^ u64::from(at.slot) ^ command.payload.len() as u64);
        Ok(())
    }

    fn view(&mut self, _view: &GroupView) {}

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        Ok([self.count.to_le_bytes(), self.hash.to_le_bytes()].concat())
    }
}

struct Row {
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

type BenchGroup = Group<Fold, QuicLink>;

async fn vsync_group(n: usize, durable: bool, dir: &std::path::Path) -> Vec<Arc<BenchGroup>> {
    let config = GroupConfig {
        snapshot_every: 100_000,
        ..GroupConfig::default()
    };
    let mut groups: Vec<Arc<BenchGroup>> = Vec::new();
    for i in 0..n {
        let link = QuicLink::start(&Identity::generate(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let store = if durable {
            LogStore::open(&dir.join(format!("m{i}.redb"))).unwrap()
        } else {
            LogStore::memory()
        };
        let group = Group::start(
            "lo://bench/vsync",
            link.me(),
            Fold::default(),
            store,
            link.clone(),
            config.clone(),
            AccessPolicy::Open,
        )
        .await
        .unwrap();
        let served = group.clone();
        link.serve(
            "lo://bench/vsync",
            Arc::new(move |from, rpc| {
                let g = served.clone();
                Box::pin(async move { g.handle(from, rpc).await })
            }),
        );
        if i == 0 {
            group.found().await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !group.is_leader() {
                assert!(Instant::now() < deadline, "no leader");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            group
                .join(groups[0].me(), None, Duration::from_secs(10))
                .await
                .unwrap();
        }
        groups.push(group);
    }
    groups
}

async fn vsync(n: usize, size: usize, durable: bool, commands: usize, pings: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let groups = vsync_group(n, durable, dir.path()).await;
    let payload = vec![7u8; size];
    // Throughput.
    let left = Arc::new(AtomicUsize::new(commands));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..INFLIGHT {
        let group = groups[w % n].clone();
        let left = left.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                .is_ok()
            {
                group.submit(0, payload.clone()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let throughput = commands as f64 / started.elapsed().as_secs_f64();
    // Latency, from a follower.
    let follower = groups
        .iter()
        .find(|g| !g.is_leader())
        .unwrap_or(&groups[0])
        .clone();
    let mut latencies = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        follower.submit(0, payload.clone()).await.unwrap();
        latencies.push(t.elapsed());
    }
    latencies.sort();
    for g in &groups {
        g.stop().await;
    }
    Row {
        throughput,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

/// A JetStream cluster of `n` nats-server processes on loopback.
struct JetStream {
    servers: Vec<std::process::Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for JetStream {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn jetstream(n: usize) -> Option<JetStream> {
    let dir = tempfile::tempdir().ok()?;
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut servers = Vec::new();
    for i in 0..n {
        let others: Vec<String> = routes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let config = format!(
            "server_name: s{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
             cluster {{ name: bench, listen: 127.0.0.1:{}, routes: [{}] }}\n",
            ports[i],
            dir.path().join(format!("s{i}")).display(),
            routes[i],
            others.join(", ")
        );
        let file = dir.path().join(format!("s{i}.conf"));
        std::fs::write(&file, config).ok()?;
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        servers.push(child);
    }
    let js = JetStream {
        servers,
        ports,
        _dir: dir,
    };
    for p in &js.ports {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", *p)).await.is_err() {
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Some(js)
}

/// A NATS connection that publishes to JetStream and reads acknowledgements.
/// Hand-written like `common/nats.rs` (a few protocol lines; a client crate
/// would cost more build time than the benchmark).
struct JsClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    /// This connection's own reply subjects (`{inbox}.*`): acknowledgements for
    /// other connections never arrive here.
    inbox: String,
}

static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

impl JsClient {
    async fn connect(port: u16) -> JsClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        let inbox = format!("_INBOX.c{}", CONNECTIONS.fetch_add(1, Ordering::SeqCst));
        let mut c = JsClient {
            reader: BufReader::new(r),
            writer: w,
            inbox,
        };
        let mut info = String::new();
        c.reader.read_line(&mut info).await.unwrap();
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {}.* 1\r\n",
            c.inbox
        );
        c.writer.write_all(hello.as_bytes()).await.unwrap();
        c
    }

    /// The reply subject for request `n` of this connection.
    fn reply_to(&self, n: impl std::fmt::Display) -> String {
        format!("{}.{n}", self.inbox)
    }

    async fn publish(&mut self, subject: &str, reply: &str, payload: &[u8]) {
        let mut frame = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.writer.write_all(&frame).await.unwrap();
    }

    /// The next message's body (answering PINGs on the way).
    async fn next(&mut self) -> String {
        loop {
            let mut line = String::new();
            assert!(
                self.reader.read_line(&mut line).await.unwrap() > 0,
                "nats closed the connection"
            );
            if line.starts_with("PING") {
                self.writer.write_all(b"PONG\r\n").await.unwrap();
                continue;
            }
            if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.trim().rsplit(' ').next().unwrap().parse().unwrap();
                let mut body = vec![0u8; len + 2];
                self.reader.read_exact(&mut body).await.unwrap();
                body.truncate(len);
                return String::from_utf8_lossy(&body).to_string();
            }
        }
    }

    /// A JetStream API request; the answer's JSON.
    async fn request(&mut self, subject: &str, body: &str) -> String {
        let reply = self.reply_to("api");
        self.publish(subject, &reply, body.as_bytes()).await;
        tokio::time::timeout(Duration::from_secs(5), self.next())
            .await
            .unwrap_or_else(|_| "{\"error\":\"timeout\"}".into())
    }
}

async fn nats_jetstream(
    js: &JetStream,
    n: usize,
    size: usize,
    durable: bool,
    commands: usize,
    pings: usize,
    stream: &str,
) -> Option<Row> {
    let mut admin = JsClient::connect(js.ports[0]).await;
    let config = format!(
        "{{\"name\":\"{stream}\",\"subjects\":[\"{stream}.in\"],\"storage\":\"{}\",\"num_replicas\":{n}}}",
        if durable { "file" } else { "memory" }
    );
    // The cluster elects its meta leader first; ask until the stream exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = admin
            .request(&format!("$JS.API.STREAM.CREATE.{stream}"), &config)
            .await;
        if !answer.contains("\"error\"") {
            break;
        }
        if Instant::now() > deadline {
            println!("(JetStream stream creation failed: {answer})");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let subject = format!("{stream}.in");
    let payload = vec![7u8; size];
    // Throughput: INFLIGHT publishes outstanding, spread over connections to
    // every server.
    let per_conn = INFLIGHT / n;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let share = commands / n;
    for i in 0..n {
        let port = js.ports[i];
        let subject = subject.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = JsClient::connect(port).await;
            let mut sent = 0;
            let mut acked = 0;
            while acked < share {
                while sent < share && sent - acked < per_conn {
                    let reply = c.reply_to(sent);
                    c.publish(&subject, &reply, &payload).await;
                    sent += 1;
                }
                let ack = tokio::time::timeout(Duration::from_secs(10), c.next())
                    .await
                    .map_err(|_| "it acknowledged nothing for 10 s".to_string())?;
                if ack.contains("\"error\"") {
                    return Err(format!("it refused a publish: {ack}"));
                }
                acked += 1;
            }
            Ok::<(), String>(())
        }));
    }
    // A peer that stalls (this client does not resend an unacknowledged
    // publish, and a stream leader change can drop one) costs its row's
    // comparison, not the whole run.
    for t in tasks {
        if let Err(reason) = t.await.expect("JetStream client task") {
            println!("(JetStream row failed: {reason})");
            return None;
        }
    }
    let throughput = (share * n) as f64 / started.elapsed().as_secs_f64();
    let mut c = JsClient::connect(js.ports[n - 1]).await;
    let mut latencies = Vec::with_capacity(pings);
    for i in 0..pings {
        let t = Instant::now();
        let reply = c.reply_to(i);
        c.publish(&subject, &reply, &payload).await;
        if tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .is_err()
        {
            println!("(JetStream row failed: it acknowledged nothing for 10 s)");
            return None;
        }
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let _ = admin
        .request(&format!("$JS.API.STREAM.DELETE.{stream}"), "")
        .await;
    Some(Row {
        throughput,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    })
}

/// Three members of a sandboxed chat holding about `state` bytes; a follower
/// posts a short message at a time while the leader finds version 2 (the same
/// logic) and the group switches at a logic entry. Returns the state's size,
/// the calls' p50 before, the longest a call waited from arming the upgrade
/// until calls flowed on the new logic, and a lone replica's switch.
async fn upgrade_pause(
    runtime: &Runtime,
    chat: &Arc<Logic>,
    state: usize,
) -> (usize, Duration, Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let (source, evolution) = upgrade::ArmedSource::new(chat, "vsync");
    let mut nodes = Vec::new();
    let mut handles = Vec::new();
    for i in 0..3 {
        let node = VsyncNode::start(
            &Identity::generate(),
            "127.0.0.1:0".parse().unwrap(),
            VsyncSettings {
                data_dir: dir.path().join(format!("m{i}")),
                group: GroupConfig::default(),
                evidence: None,
            },
        )
        .unwrap();
        let how = VsyncJoin {
            seeds: nodes.first().map(VsyncNode::me).into_iter().collect(),
            found_if_alone: i == 0,
            durable: false,
            policy: AccessPolicy::Open,
            grant: None,
            evolution: evolution.clone(),
            check_every: 0,
        };
        handles.push(node.join(runtime, chat, "bench", how).await.unwrap());
        nodes.push(node);
    }
    upgrade::fill_chat(state, |t, text| {
        let h = handles[t % 3].clone();
        async move {
            h.call("post", &[&text]).await.unwrap();
        }
    })
    .await;
    let leader = handles
        .iter()
        .position(|h| h.group().is_leader())
        .expect("a leader");
    let snapshot = handles[leader].snapshot().await.unwrap();
    let caller = &handles[(leader + 1) % 3];
    // (what `lo status` reads: it never waits on the replica)
    let switched = || {
        handles.iter().all(|h| {
            h.report_now()
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
        node.shutdown().await;
    }
    let bare = upgrade::lone_switch(runtime, chat, &snapshot);
    (snapshot.len(), p50, pause, bare)
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (commands, pings) = if quick { (600, 50) } else { (5_000, 500) };
    let has_nats = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok();
    if !has_nats {
        println!(
            "(nats-server is not installed: `apt-get install nats-server`; the peer columns stay empty)"
        );
    }
    println!();
    println!(
        "liveobjects vsync benchmark: loopback, {commands} commands per row with {INFLIGHT} in flight, \
         latency over {pings} one-at-a-time commands from a follower"
    );
    println!(
        "{:<8} {:>6} {:>8} {:>11} {:>9} {:>9} {:>11} {:>9} {:>9} {:>8}",
        "members", "size", "log", "vsync c/s", "p50", "p99", "js msg/s", "p50", "p99", "vsync/js"
    );
    let mut report = report::Report::create("vsync");
    let mut stream_no = 0;
    for n in [3usize, 5] {
        let cluster = if has_nats { jetstream(n).await } else { None };
        for durable in [false, true] {
            for size in [64usize, 1024] {
                let ours = vsync(n, size, durable, commands, pings).await;
                stream_no += 1;
                let peer = match &cluster {
                    Some(js) => {
                        nats_jetstream(
                            js,
                            n,
                            size,
                            durable,
                            commands,
                            pings,
                            &format!("B{stream_no}"),
                        )
                        .await
                    }
                    None => None,
                };
                report.row(
                    serde_json::json!({"members": n, "size": size,
                                       "log": if durable { "durable" } else { "memory" }}),
                    ours.throughput,
                    peer.as_ref().map(|p| ("jetstream", p.throughput)),
                    "commands/s",
                );
                println!(
                    "{:<8} {:>6} {:>8} {:>11.0} {:>9} {:>9} {:>11} {:>9} {:>9} {:>8}",
                    n,
                    size,
                    if durable { "durable" } else { "memory" },
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
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = upgrade::pause_runtime(dir.path());
    let chat = runtime
        .load_file(liveobjects_objects::CHAT.as_ref())
        .unwrap();
    println!();
    println!("live upgrade pause: 3 members, in memory, a follower posting one message at a time");
    println!(
        "{:<10} {:>12} {:>12} {:>14} {:>10}",
        "state", "call p50", "pause", "lone switch", "pause/lone"
    );
    for state in [1usize << 10, 10 << 20] {
        let (bytes, p50, pause, bare) = upgrade_pause(&runtime, &chat, state).await;
        report.row(
            serde_json::json!({"members": 3, "state": bytes, "measure": "upgrade pause"}),
            pause.as_secs_f64() * 1e6,
            Some(("lone replica's switch", bare.as_secs_f64() * 1e6)),
            "us (lower is better)",
        );
        println!(
            "{:<10} {:>12} {:>12} {:>14} {:>10.2}",
            format!("{} KiB", bytes / 1024),
            us(p50),
            us(pause),
            us(bare),
            pause.as_secs_f64() / bare.as_secs_f64()
        );
    }
}
