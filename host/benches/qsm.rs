//! qsm benchmark: throughput of one sender to 1, 4 and 8 receivers, 64 B and 1 KiB
//! events, and with 1,000 objects per host, on loopback and across network
//! namespaces (a bridge), against, measured in the same run on the same sockets:
//! - raw UDP multicast of the same bytes, one datagram per message (what an
//!   application writing its own multicast would do) and batched into datagrams of
//!   qsm's size (the physical limit of this machine), with no reliability: lost
//!   datagrams are counted, not repaired;
//! - NATS (nats-server, Debian package) with one subscriber per receiver.
//!
//! Each host is a thread with the real qsm core and its UDP sockets; the membership
//! service's messages go over in-process channels (the data path is what is
//! measured). Events are counted as the core delivers them (no guest code).
//! See `host/benches/README.md`. Run: `cargo bench -p liveobjects-host --bench qsm`
//! (`-- --quick` for a short run, `-- --no-netns` to skip the namespaces).

use bytes::Bytes;
use liveobjects_host::qsm::net::DataSockets;
use liveobjects_protocols::qsm::core::{Output, QsmConfig, QsmHost};
use liveobjects_protocols::qsm::membership::{
    FromMembership, Membership, MembershipConfig, ToMembership,
};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[path = "common/nats.rs"]
mod nats_client;
#[path = "common/report.rs"]
mod report;
use nats_client::{Nats, nats_server};

/// Where each host of a run lives.
#[derive(Clone)]
enum Place {
    /// Everyone on `lo`.
    Loopback,
    /// Host `i` in namespace `{tag}-{i}` with address 198.18.1.{i + 1}.
    Namespaces(String),
}

impl Place {
    fn data(&self, i: usize) -> SocketAddr {
        match self {
            Place::Loopback => "127.0.0.1:0".parse().unwrap(),
            Place::Namespaces(_) => format!("198.18.1.{}:0", i + 1).parse().unwrap(),
        }
    }

    /// Move the calling thread into host `i`'s namespace.
    fn enter(&self, i: usize) {
        if let Place::Namespaces(tag) = self {
            let file =
                std::fs::File::open(format!("/var/run/netns/{tag}-{i}")).expect("namespace exists");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
        }
    }
}

struct Netns {
    tag: String,
    hosts: usize,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Netns {
    /// `hosts` namespaces on a bridge, or `None` if this machine cannot (not root,
    /// no iproute2).
    fn create(tag: &str, hosts: usize) -> Option<Netns> {
        if rustix::process::geteuid().as_raw() != 0 {
            return None;
        }
        let net = Netns {
            tag: tag.to_string(),
            hosts,
        };
        net.teardown();
        let br = format!("{tag}-br");
        let mut ok = ip(&["netns", "add", &br])
            && ip(&[
                "-n",
                &br,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ])
            && ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let ns = format!("{tag}-{i}");
            ok = ok
                && ip(&["netns", "add", &ns])
                && ip(&[
                    "-n",
                    &br,
                    "link",
                    "add",
                    &format!("vb{i}"),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("vh{i}"),
                ])
                && ip(&["-n", &br, "link", "set", &format!("vh{i}"), "netns", &ns])
                && ip(&[
                    "-n",
                    &br,
                    "link",
                    "set",
                    &format!("vb{i}"),
                    "master",
                    "br0",
                    "up",
                ])
                && ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("198.18.1.{}/24", i + 1),
                    "dev",
                    &format!("vh{i}"),
                ])
                && ip(&["-n", &ns, "link", "set", &format!("vh{i}"), "up"])
                && ip(&[
                    "-n",
                    &ns,
                    "route",
                    "add",
                    "224.0.0.0/4",
                    "dev",
                    &format!("vh{i}"),
                ]);
        }
        ok.then_some(net)
    }

    fn teardown(&self) {
        for i in 0..self.hosts.max(9) {
            ip(&["netns", "del", &format!("{}-{i}", self.tag)]);
        }
        ip(&["netns", "del", &format!("{}-br", self.tag)]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What a run measured: per receiver, messages per second (averaged), and how
/// many messages the receivers lost (raw only; qsm repairs).
struct Measured {
    rate: f64,
    lost: f64,
}

/// One sender (host 0) and `receivers` hosts; `objects` objects every host joins;
/// the sender multicasts `messages` events of `size` bytes round-robin over them.
fn qsm_run(
    place: &Place,
    receivers: usize,
    objects: usize,
    size: usize,
    messages: u64,
) -> Option<Measured> {
    let hosts = receivers + 1;
    // A port and domain per row: a row's late datagrams (the hosts of the same
    // namespaces had the same addresses) must not reach the next row's hosts. A
    // CI smoke run once timed out joining the second netns row.
    static ROW: AtomicU64 = AtomicU64::new(0);
    let row = ROW.fetch_add(1, Ordering::Relaxed);
    let port = 47_900 + ((u64::from(std::process::id()) + row * 11) % 90) as u16;
    let membership_config = MembershipConfig {
        domain: port as u32,
        group_port: port,
        heartbeat_timeout: 30_000_000,
        ..MembershipConfig::default()
    };
    let (to_service, mut service_rx) = mpsc::unbounded_channel::<(u32, ToMembership)>();
    let mut host_txs = Vec::new();
    let mut host_rxs = Vec::new();
    for _ in 0..hosts {
        let (tx, rx) = mpsc::unbounded_channel::<FromMembership<u32>>();
        host_txs.push(tx);
        host_rxs.push(Some(rx));
    }
    let done = Arc::new(AtomicBool::new(false));
    let delivered: Arc<Vec<AtomicU64>> = Arc::new((0..hosts).map(|_| AtomicU64::new(0)).collect());
    let ready = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // The membership service: in-process, reliable channels.
    let service_done = done.clone();
    let service = std::thread::spawn(move || {
        let mut core: Membership<u32> = Membership::new(membership_config, [1; 32], 0);
        while !service_done.load(Ordering::Relaxed) {
            let now = started.elapsed().as_micros() as u64;
            while let Ok((id, m)) = service_rx.try_recv() {
                core.handle(now, &id, m);
            }
            core.handle_timeout(now);
            while let Some((id, m)) = core.poll_transmit() {
                let _ = host_txs[id as usize].send(m);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let names: Arc<Vec<String>> =
        Arc::new((0..objects).map(|o| format!("lo://bench/o{o}")).collect());
    let mut threads = Vec::new();
    for i in 0..hosts {
        let place = place.clone();
        let to_service = to_service.clone();
        let mut rx = host_rxs[i].take().unwrap();
        let (done, delivered, ready, go, names) = (
            done.clone(),
            delivered.clone(),
            ready.clone(),
            go.clone(),
            names.clone(),
        );
        threads.push(std::thread::spawn(move || {
            place.enter(i);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (mut sockets, multicast) = DataSockets::bind(place.data(i), None).unwrap();
                assert!(multicast, "multicast works here");
                let now = || started.elapsed().as_micros() as u64;
                let mut core: QsmHost<u32> =
                    QsmHost::new(QsmConfig::default(), sockets.local_addr(), true, now());
                for n in names.iter() {
                    core.join(n);
                }
                let mut objects: Vec<u32> = Vec::new();
                let mut sent = 0u64;
                let mut joined = false;
                let mut next = 0usize;
                let payload = Bytes::from(vec![7u8; size]);
                while !done.load(Ordering::Relaxed) {
                    // Pump.
                    loop {
                        let mut progressed = false;
                        while let Some(d) = core.poll_transmit() {
                            progressed = true;
                            sockets.send(d.to, &d.bytes);
                        }
                        while let Some(m) = core.poll_membership() {
                            progressed = true;
                            let _ = to_service.send((i as u32, m));
                        }
                        let mut credits: Vec<(u32, usize)> = Vec::new();
                        while let Some(o) = core.poll_output() {
                            progressed = true;
                            match o {
                                Output::Deliver { object, sender, .. } => {
                                    if sender != core.me() {
                                        delivered[i].fetch_add(1, Ordering::Relaxed);
                                    }
                                    match credits.last_mut() {
                                        Some((o, n)) if *o == object => *n += 1,
                                        _ => credits.push((object, 1)),
                                    }
                                }
                                Output::JoinGroup(g) => sockets.join_group(g).unwrap(),
                                Output::LeaveGroup(g) => sockets.leave_group(g),
                                _ => {}
                            }
                        }
                        for (o, n) in credits {
                            core.delivered(now(), o, n);
                        }
                        if !joined
                            && names
                                .iter()
                                .all(|n| core.object_num(n).is_some_and(|o| core.is_member(o)))
                        {
                            joined = true;
                            objects = names.iter().map(|n| core.object_num(n).unwrap()).collect();
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                        if i == 0 && go.load(Ordering::Relaxed) {
                            let mut pushed = 0;
                            while sent < messages && pushed < 256 {
                                let o = objects[next % objects.len()];
                                if !core.has_room(o) {
                                    break;
                                }
                                core.multicast(now(), o, 0, payload.clone()).unwrap();
                                next += 1;
                                sent += 1;
                                pushed += 1;
                                progressed = true;
                            }
                        }
                        if !progressed {
                            break;
                        }
                    }
                    let deadline = started + Duration::from_micros(core.poll_timeout());
                    let deadline = deadline.min(Instant::now() + Duration::from_millis(5));
                    tokio::select! {
                        _ = sockets.readable() => {
                            let t = now();
                            sockets.receive(16, |d| core.handle_datagram(t, d));
                        }
                        Some(m) = rx.recv() => core.handle_membership(now(), m),
                        _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(now()),
                    }
                }
                if std::env::var_os("QSM_BENCH_DEBUG").is_some() {
                    eprintln!(
                        "host {i}: {:?} send drops {}",
                        core.stats(),
                        sockets.send_drops
                    );
                }
            });
        }));
    }
    let join_deadline = Instant::now() + Duration::from_secs(30);
    while ready.load(Ordering::Relaxed) < hosts as u64 {
        if Instant::now() >= join_deadline {
            eprintln!(
                "qsm bench: {} of {hosts} hosts joined within 30 s (port {port})",
                ready.load(Ordering::Relaxed)
            );
            done.store(true, Ordering::Relaxed);
            for t in threads {
                t.join().unwrap();
            }
            service.join().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let start = Instant::now();
    go.store(true, Ordering::Relaxed);
    let limit = Duration::from_secs(120);
    let limit = std::env::var("QSM_BENCH_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(limit);
    let deadline = Instant::now() + limit;
    let mut complete = true;
    while !(1..hosts).all(|r| delivered[r].load(Ordering::Relaxed) >= messages) {
        if Instant::now() > deadline {
            complete = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    service.join().unwrap();
    let counts: Vec<u64> = delivered
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .collect();
    assert!(
        complete,
        "not every receiver got the {messages} events in {limit:?}: {counts:?}"
    );
    Some(Measured {
        rate: messages as f64 / elapsed,
        lost: 0.0,
    })
}

/// Raw UDP multicast of the same bytes: `per_datagram` messages of `size` bytes in
/// each datagram, sent as fast as the socket takes them; receivers count what
/// arrives until the sender is done and the network has drained.
fn raw_run(
    place: &Place,
    receivers: usize,
    size: usize,
    per_datagram: usize,
    messages: u64,
) -> Measured {
    let port = 47_990 + (std::process::id() % 9) as u16;
    let group: SocketAddr = format!("239.255.77.1:{port}").parse().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..receivers).map(|_| AtomicU64::new(0)).collect());
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..receivers).map(|_| AtomicU64::new(0)).collect());
    let ready = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let mut threads = Vec::new();
    for r in 0..receivers {
        let place = place.clone();
        let (done, counts, last, ready) =
            (done.clone(), counts.clone(), last.clone(), ready.clone());
        threads.push(std::thread::spawn(move || {
            place.enter(r + 1);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (mut sockets, _) = DataSockets::bind(place.data(r + 1), None).unwrap();
                sockets.join_group(group).unwrap();
                ready.fetch_add(1, Ordering::Relaxed);
                while !done.load(Ordering::Relaxed) {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(5), sockets.readable()).await;
                    let mut got = 0u64;
                    sockets.receive(16, |d| got += (d.len() / size.max(1)).max(1) as u64);
                    if got > 0 {
                        counts[r].fetch_add(got, Ordering::Relaxed);
                        last[r].store(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                }
            });
        }));
    }
    while ready.load(Ordering::Relaxed) < receivers as u64 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let sender_place = place.clone();
    let start_us = origin.elapsed().as_micros() as u64;
    std::thread::spawn(move || {
        sender_place.enter(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut sockets, _) = DataSockets::bind(sender_place.data(0), None).unwrap();
            let datagram = vec![7u8; size * per_datagram];
            let mut sent = 0u64;
            while sent < messages {
                let before = sockets.send_drops;
                sockets.send(group, &datagram);
                if sockets.send_drops > before {
                    // The socket buffer is full: wait for room, like a real sender.
                    tokio::task::yield_now().await;
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                sent += per_datagram as u64;
            }
        });
    })
    .join()
    .unwrap();
    // Let what is in flight arrive.
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let mut rate = 0.0;
    let mut lost = 0.0;
    for r in 0..receivers {
        let got = counts[r].load(Ordering::Relaxed);
        let end = last[r].load(Ordering::Relaxed).max(start_us + 1);
        rate += got as f64 / ((end - start_us) as f64 / 1e6);
        lost += messages.saturating_sub(got) as f64 / messages as f64;
    }
    Measured {
        rate: rate / receivers as f64,
        lost: lost / receivers as f64,
    }
}

/// NATS with one subscriber per receiver (loopback only); `objects` subjects.
async fn nats_run(port: u16, receivers: usize, objects: usize, size: usize, messages: u64) -> f64 {
    let mut subs = Vec::new();
    for _ in 0..receivers {
        let mut s = Nats::connect(port).await;
        s.subscribe_to(if objects > 1 { "bench.*" } else { "bench" })
            .await;
        subs.push(s);
    }
    let mut publisher = Nats::connect(port).await;
    let frames: Vec<Vec<u8>> = if objects > 1 {
        (0..objects)
            .map(|o| Nats::publish_frame_to(&format!("bench.{o}"), size))
            .collect()
    } else {
        vec![Nats::publish_frame(size)]
    };
    let start = Instant::now();
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                for _ in 0..messages {
                    s.next_message().await;
                }
            })
        })
        .collect();
    let mut batch = Vec::with_capacity(64 * 1024);
    for m in 0..messages as usize {
        batch.extend_from_slice(&frames[m % frames.len()]);
        if batch.len() >= 32 * 1024 {
            publisher.send(&batch).await;
            batch.clear();
        }
    }
    publisher.send(&batch).await;
    for t in tasks {
        t.await.unwrap();
    }
    messages as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let netns = !args.iter().any(|a| a == "--no-netns");
    let messages: u64 = if quick { 20_000 } else { 200_000 };
    let datagram = QsmConfig::default().max_datagram;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nats = rt.block_on(nats_server());
    if nats.is_none() {
        println!(
            "(nats-server is not installed: `apt-get install nats-server`; its column stays empty)"
        );
    }
    let mut places = vec![("loopback", Place::Loopback, None)];
    if netns {
        match Netns::create("lqb", 9) {
            Some(n) => places.push(("netns", Place::Namespaces(n.tag.clone()), Some(n))),
            None => println!("(not root or no iproute2: the namespace rows are skipped)"),
        }
    }
    println!();
    println!(
        "liveobjects qsm benchmark: {messages} events per row, one sender, msgs/s per receiver \
         (raw: one datagram per message, and batched into {datagram}-byte datagrams; raw loses what it loses)"
    );
    println!(
        "{:<9} {:>4} {:>7} {:>6} {:>11} {:>9} {:>11} {:>11} {:>7} {:>11} {:>8} {:>9} {:>9}",
        "where",
        "rcv",
        "objects",
        "size",
        "qsm msg/s",
        "qsm MB/s",
        "raw msg/s",
        "batch msg/s",
        "loss",
        "nats msg/s",
        "/raw",
        "/batched",
        "/nats"
    );
    let mut report = report::Report::create("qsm");
    for (label, place, _guard) in &places {
        let only: Option<(usize, usize, usize)> = std::env::var("QSM_BENCH_ROW").ok().map(|r| {
            let v: Vec<usize> = r.split(',').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1], v[2])
        });
        let rows: Vec<(usize, usize, usize)> = if let Some(row) = only {
            vec![row]
        } else if quick {
            vec![(1, 1, 64), (4, 1, 64), (4, 1000, 64), (4, 1, 1024)]
        } else {
            vec![
                (1, 1, 64),
                (4, 1, 64),
                (8, 1, 64),
                (1, 1, 1024),
                (4, 1, 1024),
                (8, 1, 1024),
                (4, 1000, 64),
                (8, 1000, 64),
            ]
        };
        for (receivers, objects, size) in rows {
            if std::env::var_os("QSM_BENCH_NETNS_ONLY").is_some()
                && matches!(place, Place::Loopback)
            {
                continue;
            }
            // A row whose hosts do not all join within 30 s is run again, and says
            // so, up to three times: seen in every local CI run after the full test
            // suite (a row or two per run), never with the bench alone. Why is an
            // open question for the speed issue.
            let ours = (0..3)
                .find_map(|attempt| {
                    if attempt > 0 {
                        println!(
                            "({label} row with {receivers} receivers: not every host joined; run again)"
                        );
                    }
                    qsm_run(place, receivers, objects, size, messages)
                })
                .unwrap_or_else(|| {
                    panic!("{label}: not every host joined in 3 attempts ({receivers} receivers)")
                });
            let raw = raw_run(place, receivers, size, 1, messages);
            let per = (datagram / (size + 24)).max(1);
            // Enough datagrams to time (small messages fill few).
            let batched = raw_run(
                place,
                receivers,
                size,
                per,
                messages.max(4_000 * per as u64),
            );
            let peer = match (&nats, place) {
                (Some(s), Place::Loopback) => {
                    Some(rt.block_on(nats_run(s.1, receivers, objects, size, messages)))
                }
                _ => None,
            };
            println!(
                "{:<9} {:>4} {:>7} {:>6} {:>11.0} {:>9.1} {:>11.0} {:>11.0} {:>6.1}% {:>11} {:>8.2} {:>9.2} {:>9}",
                label,
                receivers,
                objects,
                size,
                ours.rate,
                ours.rate * size as f64 / 1e6,
                raw.rate,
                batched.rate,
                100.0 * raw.lost.max(batched.lost),
                peer.map(|p| format!("{p:.0}")).unwrap_or_default(),
                ours.rate / raw.rate,
                ours.rate / batched.rate,
                peer.map(|p| format!("{:.2}", ours.rate / p))
                    .unwrap_or_default(),
            );
            let row = |peer: &str| {
                serde_json::json!({"where": label, "receivers": receivers, "objects": objects,
                                   "size": size, "against": peer})
            };
            report.row(
                row("nats"),
                ours.rate,
                peer.map(|p| ("nats", p)),
                "msgs/s per receiver",
            );
            report.row(
                row("raw"),
                ours.rate,
                Some(("raw multicast", raw.rate)),
                "msgs/s per receiver",
            );
            report.row(
                row("batched"),
                ours.rate,
                Some(("batched raw multicast", batched.rate)),
                "msgs/s per receiver",
            );
            let _ = ours.lost;
        }
    }
}
