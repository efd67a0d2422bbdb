//! Real processes on loopback for the qsm driver: a directory, a qsm membership
//! service and `lo node` daemons that join a ticker by name over IP multicast on
//! `lo`. Quotes from every node reach every node in each sender's order (equal
//! digests); a node killed with SIGKILL is dropped and the others go on; it rejoins
//! from a snapshot; a host outside the object's policy is refused; a node that
//! applies events slower than they arrive is back-pressured (throttled, reported)
//! and still applies every event; one whose queued events pass its memory cap is
//! quarantined, and the others still get every event; a joiner runs the logic
//! its group runs, not a newer record it resolved; a counter is upgraded live
//! under calls at a flushed view change, and an upgrade one replica refuses is
//! aborted on every replica.

use crate::common;

use common::{Daemon, DirectoryProcess, Home, eventually};

const TICKER: &str = "lo://acme/markets/ticker";
const PRIVATE: &str = "lo://acme/markets/private";

struct Domain {
    home: Home,
    directory: DirectoryProcess,
    _membership: Daemon,
    membership: String,
}

impl Domain {
    /// Keys, a directory with the zone lo://acme/, and a membership service on a
    /// group port of its own (tests run in parallel).
    fn start(nodes: usize) -> Domain {
        let home = Home::new();
        let mut keys = vec!["root".to_string(), "acme".into(), "ms".into()];
        keys.extend((1..=nodes).map(|n| format!("n{n}")));
        for key in &keys {
            match key.strip_prefix('n') {
                Some(n) => home.keygen_named(&format!("{key}.key"), &format!("node{n}")),
                None => home.keygen(&format!("{key}.key")),
            };
        }
        let directory =
            DirectoryProcess::start(&home, &home.path("root.key"), &home.path("dir.redb"));
        home.ok_owned(directory.args(&[
            "zone",
            "create",
            "lo://acme/",
            "--key",
            home.path("acme.key").to_str().unwrap(),
        ]));
        // A port and domain per test: tests of one binary run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (48_000 + (std::process::id() * 4 + offset) % 8_000).to_string();
        let mut cmd = home.lo();
        cmd.args(directory.args(&[
            "qsm-membership",
            "--listen",
            "127.0.0.1:0",
            "--group-port",
            &port,
            "--domain",
            &port,
            "--failure-timeout-ms",
            "1500",
            "--key",
            home.path("ms.key").to_str().unwrap(),
        ]));
        let membership = Daemon::start(cmd, &["qsm membership listening on "]);
        let listening = membership.value("qsm membership listening on ");
        let (addr, key) = listening.split_once(" key ").unwrap();
        let membership_opt = format!("membership={key}@{addr}");
        Domain {
            home,
            directory,
            _membership: membership,
            membership: membership_opt,
        }
    }

    fn publish(&self, name: &str, policy: &str) {
        self.publish_logic(liveobjects_objects::TICKER, name, policy);
    }

    fn publish_logic(&self, logic: &str, name: &str, policy: &str) {
        self.home.ok_owned(self.directory.args(&[
            "publish",
            logic,
            "--name",
            name,
            "--driver",
            "qsm",
            "--driver-opt",
            &self.membership,
            "--reliability",
            "reliable-fifo",
            "--category",
            "event-stream",
            "--policy",
            policy,
            "--key",
            self.home.path("acme.key").to_str().unwrap(),
        ]));
    }

    fn node(&self, n: usize) -> Daemon {
        self.node_with(n, &[])
    }

    fn node_with(&self, n: usize, extra: &[&str]) -> Daemon {
        let mut cmd = self.home.lo();
        cmd.args(self.directory.args(&["node", "--listen", "127.0.0.1:0"]))
            .args(extra)
            .arg("--key")
            .arg(self.home.path(&format!("n{n}.key")))
            .arg("--control")
            .arg(self.control(n));
        Daemon::start(cmd, &["node listening on ", "control socket "])
    }

    fn control(&self, n: usize) -> String {
        self.home
            .path(&format!("n{n}.sock"))
            .to_str()
            .unwrap()
            .to_string()
    }

    fn lo(&self, n: usize, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        let control = self.control(n);
        all.extend(["--control", &control]);
        self.home.run(&all)
    }

    fn ok(&self, n: usize, args: &[&str]) -> String {
        let out = self.lo(n, args);
        assert!(
            out.status.success(),
            "lo {args:?} on node {n} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Events node `n` applied to `object`, from `lo status --json` (the
    /// executor's metrics, which never wait on the object: a query would queue
    /// behind the events it asks about), and the object's whole entry there.
    fn applied(&self, n: usize, object: &str) -> (u64, serde_json::Value) {
        let status: serde_json::Value =
            serde_json::from_str(&self.ok(n, &["status", "--json"])).expect("status as JSON");
        let entry = status["objects"]
            .as_array()
            .and_then(|objects| objects.iter().find(|o| o["name"] == object).cloned())
            .unwrap_or(serde_json::Value::Null);
        (entry["events_applied"].as_u64().unwrap_or(0), entry)
    }

    fn count(&self, n: usize) -> Option<u64> {
        let out = self.lo(n, &["call", TICKER, "count"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    fn digest(&self, n: usize) -> String {
        self.ok(n, &["call", TICKER, "digest"])
    }

    fn publish_quotes(&self, n: usize, from: i64, count: i64) {
        for i in from..from + count {
            self.ok(
                n,
                &[
                    "call",
                    TICKER,
                    "publish",
                    &format!("\"N{n}\""),
                    &i.to_string(),
                ],
            );
        }
    }
}

#[test]
fn nodes_share_a_ticker_over_multicast_survive_a_kill_9_and_refuse_strangers() {
    let d = Domain::start(4);
    d.publish(TICKER, "open");
    let mut nodes: Vec<Option<Daemon>> = (1..=3).map(|n| Some(d.node(n))).collect();
    for n in 1..=3 {
        let joined = d.ok(
            n,
            &[
                "join",
                TICKER,
                "--no-interactive",
                "--require",
                "reliable-fifo",
            ],
        );
        assert!(joined.starts_with("joined "), "{joined}");
    }
    // Node 2's HTTP events stream (Server-Sent Events) sees every quote it applies.
    let http = nodes[1]
        .as_ref()
        .unwrap()
        .value("http api on ")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut events = std::net::TcpStream::connect(&http).unwrap();
    events
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    std::io::Write::write_all(
        &mut events,
        format!(
            "GET /v1/objects/{}/events HTTP/1.1\r\nHost: {http}\r\n\r\n",
            TICKER.replace(':', "%3A").replace('/', "%2F")
        )
        .as_bytes(),
    )
    .unwrap();
    let mut events = std::io::BufReader::new(events);
    let mut status = String::new();
    std::io::BufRead::read_line(&mut events, &mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    // Every node publishes; every node applies every quote, in each sender's order.
    for n in 1..=3 {
        d.publish_quotes(n, 1, 20);
    }
    let mut per_sender: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut line = String::new();
    while per_sender.values().map(Vec::len).sum::<usize>() < 60 {
        line.clear();
        if std::io::BufRead::read_line(&mut events, &mut line).unwrap() == 0 {
            break;
        }
        if let Some(data) = line.trim().strip_prefix("data: ") {
            let event: serde_json::Value = serde_json::from_str(data).unwrap();
            if event["type"] == "applied" {
                per_sender
                    .entry(event["sender"].as_str().unwrap().to_string())
                    .or_default()
                    .push(event["seq"].as_str().unwrap().parse().unwrap());
            }
        }
    }
    assert_eq!(per_sender.len(), 3, "{per_sender:?}");
    for (sender, seqs) in &per_sender {
        assert_eq!(
            *seqs,
            (1..=20).collect::<Vec<u64>>(),
            "{sender}'s quotes over HTTP"
        );
    }
    eventually(30, "every node applied 60 quotes", || {
        (1..=3).all(|n| d.count(n) == Some(60))
    });
    let digest = d.digest(1);
    assert_eq!(d.digest(2), digest);
    assert_eq!(d.digest(3), digest);

    // lo status shows the qsm region and the ring.
    let status = d.ok(1, &["status"]);
    assert!(status.contains("qsm host "), "{status}");
    assert!(status.contains("region "), "{status}");
    assert!(status.contains("3 host(s), ring of 3"), "{status}");
    assert!(status.contains("multicast"), "{status}");
    assert!(
        status.contains(&format!("{TICKER}  driver qsm")),
        "{status}"
    );
    // Members are shown by the names they gave themselves, learned from the
    // region's view (through the membership service).
    for n in 1..=3 {
        let (_, entry) = d.applied(n, TICKER);
        let members = entry["members"].to_string();
        for m in 1..=3 {
            assert!(
                members.contains(&format!("node{m} (")),
                "node {n}: {members}"
            );
        }
    }

    // Kill node 3: the others go on, and the view drops it.
    nodes[2].as_mut().unwrap().kill9();
    nodes[2] = None;
    d.publish_quotes(1, 21, 10);
    d.publish_quotes(2, 21, 10);
    eventually(30, "nodes 1 and 2 applied 80 quotes", || {
        (1..=2).all(|n| d.count(n) == Some(80))
    });
    eventually(30, "node 3 left the view", || {
        !d.ok(1, &["status"]).contains("3 host(s)")
    });
    assert_eq!(d.digest(1), d.digest(2));

    // Node 3 comes back and rejoins: it starts from a snapshot.
    nodes[2] = Some(d.node(3));
    d.ok(3, &["join", TICKER, "--no-interactive"]);
    eventually(30, "node 3 has the 80 quotes", || d.count(3) == Some(80));
    d.publish_quotes(3, 31, 5);
    eventually(30, "everyone has 85", || {
        (1..=3).all(|n| d.count(n) == Some(85))
    });
    assert_eq!(d.digest(3), d.digest(1));
    assert_eq!(d.digest(2), d.digest(1));

    // An object only nodes 1 and 2 may join: node 4 is refused with a reason.
    let key = |n: usize| -> String {
        let status: serde_json::Value =
            serde_json::from_str(&d.ok(n, &["status", "--json"])).expect("status as JSON");
        status["node"]["key"]
            .as_str()
            .expect("the node's key")
            .to_string()
    };
    d.publish(PRIVATE, &format!("keys:{},{}", key(1), key(2)));
    let _n4 = d.node(4);
    d.ok(1, &["join", PRIVATE, "--no-interactive"]);
    let refused = d.lo(4, &["join", PRIVATE, "--no-interactive"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not allowed to join"), "{stderr}");
}

#[test]
fn a_host_without_multicast_puts_its_region_on_the_overlay_with_the_same_guarantees() {
    let d = Domain::start(3);
    d.publish(TICKER, "open");
    let _n1 = d.node(1);
    let _n2 = d.node(2);
    let _n3 = d.node_with(3, &["--qsm-no-multicast"]);
    for n in 1..=3 {
        d.ok(n, &["join", TICKER, "--no-interactive"]);
    }
    for n in 1..=3 {
        d.publish_quotes(n, 1, 15);
    }
    eventually(30, "every node applied 45 quotes", || {
        (1..=3).all(|n| d.count(n) == Some(45))
    });
    assert_eq!(d.digest(1), d.digest(3));
    assert_eq!(d.digest(2), d.digest(3));
    let status = d.ok(1, &["status"]);
    assert!(status.contains("3 host(s), ring of 3, overlay"), "{status}");
}

const FURNACE: &str = "lo://acme/markets/furnace";

#[test]
fn a_slow_receiver_is_back_pressured_and_skips_nothing() {
    let d = Domain::start(3);
    d.publish_logic(liveobjects_objects::HOSTILE, FURNACE, "open");
    let _n1 = d.node(1);
    let _n2 = d.node(2);
    // Node 3 may spend 5 ms a second on the object (wall time of its jobs),
    // and is never quarantined for it within the test: 20 events of about 2-5
    // ms each (a million loop iterations) take it 8-20 s, the others well under
    // one. (A budget this low bites however loaded the machine is: two events
    // of a second pass it, and a loaded machine only makes events longer.)
    let _n3 = d.node_with(3, &["--budget-cpu-ms", "5", "--budget-grace-ms", "600000"]);
    for n in 1..=3 {
        d.ok(n, &["join", FURNACE, "--no-interactive"]);
    }
    d.ok(1, &["call", FURNACE, "burn", "1000000", "20"]);
    let mut throttled_seen = false;
    let mut behind_seen = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let counts: Vec<u64> = (1..=3)
            .map(|n| {
                let (count, entry) = d.applied(n, FURNACE);
                if n == 3 {
                    // Now, or at any time since (a status polled under load
                    // can miss the moments it is).
                    throttled_seen |= entry["throttled"] == true
                        || entry["times_throttled"].as_u64().is_some_and(|n| n > 0);
                }
                count
            })
            .collect();
        // Events are applied once each: a count never passes 20.
        assert!(counts.iter().all(|c| *c <= 20), "{counts:?}");
        behind_seen |= counts[0] == 20 && counts[2] < 20;
        if counts.iter().all(|c| *c == 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every node applied all 20 events within 120 s: {counts:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // And each replica's own count says so (no event skipped).
    for n in 1..=3 {
        let burned = d.ok(n, &["call", FURNACE, "burned"]);
        assert_eq!(burned.trim(), "20", "node {n}");
    }
    let (_, node3) = d.applied(3, FURNACE);
    assert!(
        behind_seen,
        "node 3 was never behind: its budget did not bite"
    );
    assert!(
        throttled_seen,
        "node 3 was never reported throttled: {node3}"
    );
    assert!(node3["quarantined"].is_null(), "{node3}");
}

#[test]
fn a_receiver_whose_queue_passes_its_memory_cap_is_quarantined_and_the_others_get_everything() {
    let d = Domain::start(3);
    d.publish_logic(liveobjects_objects::HOSTILE, FURNACE, "open");
    let _n1 = d.node(1);
    let _n2 = d.node(2);
    // Node 3 is slow (20 ms of CPU per second, never quarantined for it within
    // the test) and may hold 24 MiB for the object: its sandbox, its mailbox (at
    // most 8 MiB) and the deliveries queued for it by the driver.
    let _n3 = d.node_with(
        3,
        &[
            "--budget-cpu-ms",
            "20",
            "--budget-grace-ms",
            "600000",
            "--memory-mib",
            "24",
        ],
    );
    for n in 1..=3 {
        d.ok(n, &["join", FURNACE, "--no-interactive"]);
    }
    // An update the object rejects fails its call with the object's reason (the
    // event before it in the same call was applied: qsm has no transactions).
    let out = d.lo(2, &["call", FURNACE, "add-then-refuse", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a rejected update exited 0");
    assert!(
        err.contains("rejected the update: refused on purpose"),
        "{err}"
    );
    // 100 events of about 3 ms each hold node 3 back for 10-25 s; 500 events of
    // 60 kB (30 MB) queue behind them, within its delivery credit (8,192 events).
    d.ok(1, &["call", FURNACE, "burn", "1000000", "100"]);
    d.ok(1, &["call", FURNACE, "blobs", "60000", "500"]);
    // Applied events: the add, then 100 burns and 500 blobs (the refused event
    // is not applied).
    const ALL: u64 = 601;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let node3 = loop {
        let counts: Vec<u64> = (1..=2).map(|n| d.applied(n, FURNACE).0).collect();
        let (applied3, node3) = d.applied(3, FURNACE);
        assert!(
            counts.iter().all(|c| *c <= ALL) && applied3 <= ALL,
            "{counts:?} {applied3}"
        );
        if counts.iter().all(|c| *c == ALL)
            && let Some(reason) = node3["quarantined"].as_str()
        {
            break reason.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "within 60 s: nodes 1-2 applied {counts:?} of {ALL}; node 3: {node3}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        node3.starts_with("exceeded its memory cap of 24 MiB")
            && node3.contains("events waiting to be applied"),
        "{node3}"
    );
    // Each of the others applied every event once, in its sender's order.
    for n in 1..=2 {
        assert_eq!(d.ok(n, &["call", FURNACE, "burned"]), "100", "node {n}");
    }
    // A caller at node 3 hears why.
    let out = d.lo(3, &["call", FURNACE, "burned"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "node 3 still answers");
    assert!(
        err.contains(FURNACE) && err.contains("exceeded its memory cap"),
        "{err}"
    );
}

#[test]
fn a_joiner_runs_the_logic_its_group_runs_not_a_newer_record_it_resolved() {
    const COUNTER: &str = "lo://acme/markets/counted";
    let d = Domain::start(2);
    d.publish_logic(liveobjects_objects::COUNTER, COUNTER, "open");
    // No live upgrade here: the nodes never look for newer records.
    let _nodes: Vec<Daemon> = (1..=2)
        .map(|n| d.node_with(n, &["--upgrade-poll", "0"]))
        .collect();
    let joined = d.ok(1, &["join", COUNTER, "--no-interactive"]);
    assert!(joined.starts_with("joined "), "{joined}");
    d.ok(1, &["call", COUNTER, "add", "5"]);
    // Version 2 is published while the group runs version 1.
    d.publish_logic(liveobjects_objects::COUNTER_V2, COUNTER, "open");
    let joined = d.ok(2, &["join", COUNTER, "--no-interactive"]);
    assert!(
        joined.starts_with("joined ") && joined.contains("(record version 2)"),
        "{joined}"
    );
    // Node 2 resolved version 2 but runs version 1, with its group's state.
    for n in 1..=2 {
        let (_, entry) = d.applied(n, COUNTER);
        assert_eq!(entry["logic_version"], 1, "node {n}: {entry}");
        assert!(
            entry["logic"]
                .as_str()
                .is_some_and(|l| l.starts_with("version 1")),
            "node {n}: {entry}"
        );
    }
    d.ok(2, &["call", COUNTER, "add", "2"]);
    eventually(20, "both nodes apply both adds", || {
        (1..=2).all(|n| d.lo(n, &["call", COUNTER, "get"]).stdout.trim_ascii() == b"7")
    });
    // Version 2's new method is not there: the interface is version 1's.
    let out = d.lo(2, &["call", COUNTER, "upgraded-from"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("upgraded-from"),
        "{said}"
    );
}

/// `lo publish NEW --watch` over the counter `name` (watching at node `n`),
/// started in the background.
fn publish_watching(d: &Domain, logic: &str, name: &str, n: usize) -> std::process::Child {
    let mut cmd = d.home.lo();
    cmd.args(d.directory.args(&[
        "publish",
        logic,
        "--name",
        name,
        "--driver",
        "qsm",
        "--driver-opt",
        &d.membership,
        "--reliability",
        "reliable-fifo",
        "--category",
        "event-stream",
        "--key",
        d.home.path("acme.key").to_str().unwrap(),
        "--watch=60",
        "--control",
        &d.control(n),
    ]))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap()
}

/// What a finished `lo publish --watch` said, and whether it succeeded.
fn watched(child: std::process::Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn a_qsm_counter_is_upgraded_live_under_calls_and_a_refused_upgrade_is_aborted_everywhere() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    const COUNTER: &str = "lo://acme/markets/upgraded";
    let d = Domain::start(3);
    d.publish_logic(liveobjects_objects::COUNTER, COUNTER, "open");
    // Node 1 founds the object: the oldest member looks for newer records.
    let _nodes: Vec<Daemon> = (1..=3)
        .map(|n| d.node_with(n, &["--upgrade-poll", "1"]))
        .collect();
    for n in 1..=3 {
        let joined = d.ok(n, &["join", COUNTER, "--no-interactive"]);
        assert!(joined.starts_with("joined "), "{joined}");
    }
    let get = |n: usize, method: &str| {
        String::from_utf8_lossy(&d.lo(n, &["call", COUNTER, method]).stdout)
            .trim()
            .to_string()
    };
    let logic = |n: usize| {
        let (_, entry) = d.applied(n, COUNTER);
        entry["logic"].as_str().unwrap_or_default().to_string()
    };

    // Calls from nodes 1 and 3 before, during and after the upgrade (every
    // 25 ms or so, at most 2,000 each, within two minutes).
    let stop = Arc::new(AtomicBool::new(false));
    let adders: Vec<_> = [1, 3]
        .into_iter()
        .map(|n| {
            let mut call = d.home.lo();
            call.args(["call", COUNTER, "add", "1", "--control", &d.control(n)]);
            common::call_repeatedly(call, format!("node {n}"), &stop)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let publishing = publish_watching(&d, liveobjects_objects::COUNTER_V2, COUNTER, 2);
    eventually(60, "every replica on version 2", || {
        (1..=3).all(|n| logic(n).starts_with("version 2"))
    });
    let (succeeded, said) = watched(publishing);
    assert!(
        succeeded && said.contains("switched live to version 2 on this node"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let acknowledged: usize = adders.into_iter().map(|a| a.join().unwrap()).sum();
    eventually(30, "every call applied at every replica", || {
        (1..=3).all(|n| get(n, "get") == acknowledged.to_string())
    });
    // One switch, after the same events everywhere (a flushed cut: every
    // replica applied exactly the events before every member's marker).
    let switched: Vec<String> = (1..=3).map(|n| get(n, "switched-after")).collect();
    assert!(switched.iter().all(|s| *s == switched[0]), "{switched:?}");
    let before: usize = switched[0].parse().unwrap();
    assert!(
        before > 0 && before < acknowledged,
        "calls applied before the switch: {before} of {acknowledged} (some must come after)"
    );
    for n in 1..=3 {
        assert_eq!(get(n, "upgraded-from"), "1", "node {n}");
        assert_eq!(get(n, "updates"), acknowledged.to_string(), "node {n}");
        let line = logic(n);
        assert!(
            line.contains("switched from version 1 to 2 at the flush"),
            "node {n}: {line}"
        );
    }

    // Version 2 refuses to take over a negative counter: version 3 is aborted
    // on every replica, which carry on with version 2.
    let below_zero = format!("-{}", acknowledged + 1000);
    d.ok(2, &["call", COUNTER, "add", &below_zero]);
    let publishing = publish_watching(&d, liveobjects_objects::COUNTER_V2, COUNTER, 3);
    eventually(
        60,
        "the upgrade to version 3 aborted at every replica",
        || {
            // The oldest member looks for a newer record only while the object is
            // used (an update: queries apply no event).
            d.ok(1, &["call", COUNTER, "add", "0"]);
            (1..=3).all(|n| logic(n).contains("to version 3"))
        },
    );
    for n in 1..=3 {
        let line = logic(n);
        assert!(
            line.starts_with("version 2")
                && line.contains("was aborted on every replica")
                && line.contains("refuses to take over a negative counter"),
            "node {n}: {line}"
        );
    }
    let (succeeded, said) = watched(publishing);
    assert!(
        !succeeded
            && said.contains("to version 3 did not happen")
            && said.contains("refuses to take over a negative counter"),
        "{said}"
    );
    d.ok(3, &["call", COUNTER, "add", "2000"]);
    eventually(20, "every replica applies calls after the abort", || {
        (1..=3).all(|n| get(n, "get") == "1000")
    });
}
