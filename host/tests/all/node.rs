//! Real processes on loopback: a directory server and three `lo node` daemons join a
//! chat room by name; posts from all reach all; a node killed with SIGKILL leaves
//! the view and, restarted, rejoins with the state. With gossip on, a joiner whose
//! record seed is dead finds the members through gossip. `--json` output, a
//! rejected update failing its call, and a second `lo join` opening the session.

use crate::common;

use common::{Daemon, DirectoryProcess, Home, eventually};

const ROOM: &str = "lo://acme/rooms/lobby";

fn start_node(home: &Home, n: usize, directory: &str, root: &str) -> (Daemon, String) {
    start_node_with(home, n, directory, root, &[], &[])
}

pub(crate) fn start_node_with(
    home: &Home,
    n: usize,
    directory: &str,
    root: &str,
    extra: &[&str],
    wait_for: &[&str],
) -> (Daemon, String) {
    let mut cmd = home.lo();
    let control = home.path(&format!("n{n}.sock"));
    cmd.args([
        "node",
        "--listen",
        "127.0.0.1:0",
        "--directory",
        directory,
        "--root",
        root,
    ])
    .arg("--key")
    .arg(home.path(&format!("n{n}.key")))
    .arg("--control")
    .arg(&control)
    .args(extra);
    let mut expected = vec!["node listening on ", "control socket "];
    expected.extend(wait_for);
    let daemon = Daemon::start(cmd, &expected);
    let listening = daemon.value("node listening on ");
    let (addr, key) = listening.split_once(" key ").unwrap();
    let seed = format!("{key}@{addr}");
    (daemon, seed)
}

/// The driver a process test runs its object on.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Driver {
    /// `mesh`.
    Mesh,
    /// `vsync`.
    Vsync,
}

/// Start node `n` with `extra` arguments, its vsync endpoint on `vsync_port`
/// (snapshots every 60 positions); returns it and its seed for `driver`.
pub(crate) fn start_on(
    home: &Home,
    directory: &DirectoryProcess,
    driver: Driver,
    n: usize,
    extra: &[&str],
    vsync_port: u16,
) -> (Daemon, String) {
    let vsync = format!("127.0.0.1:{vsync_port}");
    let mut args = vec!["--vsync-listen", &vsync, "--vsync-snapshot-every", "60"];
    args.extend(extra);
    let (node, mesh_seed) = start_node_with(home, n, &directory.addr, &directory.root, &args, &[]);
    let seed = match driver {
        Driver::Mesh => mesh_seed,
        Driver::Vsync => {
            let key = mesh_seed.split_once('@').unwrap().0;
            format!("{key}@{vsync}")
        }
    };
    (node, seed)
}

/// Nodes 1 to `count` for `driver`, node `n` started with `extra(n)`, each
/// with a vsync port of its own: the nodes, their seeds and their vsync ports
/// (to restart a node on, in node order).
pub(crate) fn start_nodes(
    home: &Home,
    directory: &DirectoryProcess,
    driver: Driver,
    count: usize,
    extra: impl Fn(usize) -> Vec<&'static str>,
) -> (Vec<Daemon>, Vec<String>, Vec<u16>) {
    let (mut nodes, mut seeds, mut ports) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=count {
        let port = crate::vsync_processes::free_udp_port();
        let (node, seed) = start_on(home, directory, driver, n, &extra(n), port);
        nodes.push(node);
        seeds.push(seed);
        ports.push(port);
    }
    (nodes, seeds, ports)
}

/// Start node `n` gossiping on a free loopback port, through `gossip_seed` if
/// given. Returns it, its mesh seed (KEY@ADDR) and its gossip address.
fn start_gossip_node(
    home: &Home,
    n: usize,
    directory: &DirectoryProcess,
    gossip_seed: Option<&str>,
) -> (Daemon, String, String) {
    let mut extra = vec!["--gossip", "127.0.0.1:0"];
    if let Some(seed) = gossip_seed {
        extra.extend(["--gossip-seed", seed]);
    }
    let (daemon, seed) = start_node_with(
        home,
        n,
        &directory.addr,
        &directory.root,
        &extra,
        &["gossip on "],
    );
    let gossip = daemon.value("gossip on ");
    (daemon, seed, gossip)
}

pub(crate) fn control(home: &Home, n: usize) -> String {
    home.path(&format!("n{n}.sock"))
        .to_str()
        .unwrap()
        .to_string()
}

fn count(home: &Home, n: usize) -> Option<u64> {
    let out = home.run(&["call", ROOM, "count", "--control", &control(home, n)]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The chat room's last `limit` messages at node `n`.
fn history(home: &Home, n: usize, limit: usize) -> String {
    home.ok(&[
        "call",
        ROOM,
        "history",
        &limit.to_string(),
        "--control",
        &control(home, n),
    ])
}

/// Node `n`'s entry for `name` in `lo status --json` (null if it has none).
pub(crate) fn object_status(home: &Home, n: usize, name: &str) -> serde_json::Value {
    let out = home.run(&["status", "--json", "--control", &control(home, n)]);
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    status["objects"]
        .as_array()
        .and_then(|objects| objects.iter().find(|o| o["name"] == name).cloned())
        .unwrap_or(serde_json::Value::Null)
}

fn members(home: &Home, n: usize) -> usize {
    object_status(home, n, ROOM)["members"]
        .as_array()
        .map_or(0, Vec::len)
}

/// Keys for root, acme and nodes 1-3 (named node1..node3), a directory, and the
/// zone lo://acme/.
pub(crate) fn directory_with_acme_zone(home: &Home) -> DirectoryProcess {
    for key in ["root", "acme", "n1", "n2", "n3"] {
        let path = home.path(&format!("{key}.key"));
        let mut args = vec!["keygen", "--out", path.to_str().unwrap()];
        let name = key.replace('n', "node");
        if key.starts_with('n') {
            args.extend(["--name", &name]);
        }
        let out = home.ok(&args);
        assert_eq!(
            out.contains(&format!("name {name}: ")),
            key.starts_with('n'),
            "{out}"
        );
    }
    let directory = DirectoryProcess::start(home, &home.path("root.key"), &home.path("dir.redb"));
    let acme_key = home.path("acme.key");
    home.ok_owned(directory.args(&[
        "zone",
        "create",
        "lo://acme/",
        "--key",
        acme_key.to_str().unwrap(),
    ]));
    directory
}

#[test]
fn nodes_join_by_name_stay_in_step_and_survive_a_kill_9() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let (dir_addr, root) = (directory.addr.clone(), directory.root.clone());
    let acme_key = home.path("acme.key");
    let acme: &str = acme_key.to_str().unwrap();
    let at = |args: &[&str]| directory.args(args);
    let run = |args: Vec<String>| home.ok_owned(args);

    let (n1, seed) = start_node(&home, 1, &dir_addr, &root);
    run(at(&[
        "publish",
        liveobjects_objects::CHAT,
        "--name",
        ROOM,
        "--reliability",
        "total-order",
        "--driver-opt",
        &format!("seeds={seed}"),
        "--key",
        acme,
    ]));
    let out = home.ok(&[
        "join",
        ROOM,
        "--found",
        "--no-interactive",
        "--control",
        &control(&home, 1),
    ]);
    assert!(out.contains("joined lo://acme/rooms/lobby"), "{out}");
    let (_n2, _) = start_node(&home, 2, &dir_addr, &root);
    let (mut n3, _) = start_node(&home, 3, &dir_addr, &root);
    for n in [2, 3] {
        let out = home.ok(&[
            "join",
            ROOM,
            "--require",
            "total-order",
            "--no-interactive",
            "--control",
            &control(&home, n),
        ]);
        assert!(out.contains("member(s)"), "{out}");
    }
    eventually(20, "three members at node 1", || members(&home, 1) == 3);
    // Every node shows every member by the name it gave itself, with its key's
    // first digits: names travel with the members through the group.
    eventually(20, "three named members everywhere", || {
        (1..=3).all(|n| {
            let members = object_status(&home, n, ROOM)["members"].to_string();
            (1..=3).all(|m| members.contains(&format!("node{m} (")))
        })
    });
    let status: serde_json::Value =
        serde_json::from_str(&home.ok(&["status", "--json", "--control", &control(&home, 2)]))
            .expect("status as JSON");
    assert_eq!(status["node"]["name"], "node2", "{status}");
    let text = home.ok(&["status", "--control", &control(&home, 2)]);
    assert!(text.contains(" name node2"), "{text}");

    for round in 0..5 {
        for n in 1..=3 {
            home.ok(&[
                "call",
                ROOM,
                "post",
                &format!("\"r{round} from n{n}\""),
                "--control",
                &control(&home, n),
            ]);
        }
    }
    eventually(20, "15 messages everywhere", || {
        (1..=3).all(|n| count(&home, n) == Some(15))
    });
    let history = |n: usize| history(&home, n, 100);
    assert_eq!(history(1), history(2));
    assert_eq!(history(1), history(3));

    // SIGKILL node 3 mid-stream: the others exclude it and carry on.
    n3.kill9();
    home.ok(&[
        "call",
        ROOM,
        "post",
        "\"after the crash\"",
        "--control",
        &control(&home, 1),
    ]);
    eventually(20, "node 3 excluded", || {
        members(&home, 1) == 2 && members(&home, 2) == 2
    });
    home.ok(&[
        "call",
        ROOM,
        "post",
        "\"still here\"",
        "--control",
        &control(&home, 2),
    ]);
    eventually(20, "17 messages at 1 and 2", || {
        count(&home, 1) == Some(17) && count(&home, 2) == Some(17)
    });

    // Restart node 3 (same key, new address): it rejoins with the state.
    let (_n3, _) = start_node(&home, 3, &dir_addr, &root);
    home.ok(&[
        "join",
        ROOM,
        "--no-interactive",
        "--control",
        &control(&home, 3),
    ]);
    eventually(20, "node 3 caught up", || count(&home, 3) == Some(17));
    home.ok(&[
        "call",
        ROOM,
        "post",
        "\"welcome back\"",
        "--control",
        &control(&home, 3),
    ]);
    eventually(20, "18 messages everywhere", || {
        (1..=3).all(|n| count(&home, n) == Some(18))
    });
    assert_eq!(history(1), history(3));
    let status = home.ok(&["status", "--control", &control(&home, 1)]);
    assert!(
        status.contains("3 member(s)") && status.contains("sequencer"),
        "{status}"
    );
    drop(n1);
}

#[test]
fn a_joiner_finds_members_through_gossip_when_the_record_seed_is_dead() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let acme_key = home.path("acme.key");
    let acme = acme_key.to_str().unwrap();
    let at = |args: &[&str]| directory.args(args);
    let run = |args: Vec<String>| home.ok_owned(args);

    let (mut n1, seed, first_gossip) = start_gossip_node(&home, 1, &directory, None);
    let (_n2, _, _) = start_gossip_node(&home, 2, &directory, Some(&first_gossip));
    let (_n3, _, _) = start_gossip_node(&home, 3, &directory, Some(&first_gossip));
    // The record names node 1 as its only seed.
    run(at(&[
        "publish",
        liveobjects_objects::CHAT,
        "--name",
        ROOM,
        "--driver-opt",
        &format!("seeds={seed}"),
        "--key",
        acme,
    ]));
    let join = |n: usize, found: bool| {
        let control = control(&home, n);
        let mut args = vec![
            "join",
            ROOM,
            "--no-interactive",
            "--control",
            control.as_str(),
        ];
        if found {
            args.push("--found");
        }
        home.ok(&args)
    };
    join(1, true);
    join(2, false);
    home.ok(&[
        "call",
        ROOM,
        "post",
        "\"before the crash\"",
        "--control",
        &control(&home, 2),
    ]);
    eventually(20, "the post at nodes 1 and 2", || {
        count(&home, 1) == Some(1) && count(&home, 2) == Some(1)
    });
    // Gossip has seen all three hosts.
    eventually(20, "gossip membership at node 3", || {
        home.ok(&["status", "--control", &control(&home, 3)])
            .contains("2 other live host(s)")
    });

    n1.kill9();
    eventually(30, "node 1 excluded at node 2", || members(&home, 2) == 1);
    // Node 3's only record seed is dead; its card-based discovery finds node 2.
    let out = join(3, false);
    assert!(out.contains("2 member(s)"), "{out}");
    eventually(20, "node 3 has the state", || count(&home, 3) == Some(1));
    let status = home.ok(&["status", "--control", &control(&home, 3)]);
    assert!(status.contains("gossip 127.0.0.1:"), "{status}");
}

const CHAIN: &str = "lo://acme/hostile/chain";
const STUCK: &str = "lo://acme/hostile/stuck-snapshot";

/// Publish `name` as a total-order mesh object of `logic` seeded at `seed`.
/// `lo join NAME --no-interactive` through node `n` (`--found` if `found`).
pub(crate) fn join_at(home: &Home, n: usize, name: &str, found: bool) {
    let control = control(home, n);
    let mut args = vec!["join", name, "--no-interactive", "--control", &control];
    if found {
        args.push("--found");
    }
    home.ok(&args);
}

pub(crate) fn publish_mesh(
    home: &Home,
    directory: &DirectoryProcess,
    name: &str,
    logic: &str,
    seed: &str,
) {
    publish_mesh_with(home, directory, name, logic, seed, "total-order");
}

/// [`publish_mesh`] with the record promising `reliability`.
pub(crate) fn publish_mesh_with(
    home: &Home,
    directory: &DirectoryProcess,
    name: &str,
    logic: &str,
    seed: &str,
    reliability: &str,
) {
    let acme_key = home.path("acme.key");
    let seeds = format!("seeds={seed}");
    home.ok_owned(directory.args(&[
        "publish",
        logic,
        "--name",
        name,
        "--reliability",
        reliability,
        "--driver-opt",
        &seeds,
        "--key",
        acme_key.to_str().unwrap(),
    ]));
}

#[test]
fn a_snapshot_that_never_ends_refuses_the_joiner_and_the_member_carries_on() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let (dir_addr, root) = (directory.addr.clone(), directory.root.clone());
    let (_n1, seed) = start_node(&home, 1, &dir_addr, &root);
    let (_n2, _) = start_node(&home, 2, &dir_addr, &root);
    publish_mesh(&home, &directory, ROOM, liveobjects_objects::CHAT, &seed);
    publish_mesh(
        &home,
        &directory,
        STUCK,
        liveobjects_objects::HOSTILE,
        &seed,
    );
    for name in [ROOM, STUCK] {
        join_at(&home, 1, name, true);
    }
    home.ok(&[
        "join",
        ROOM,
        "--no-interactive",
        "--control",
        &control(&home, 2),
    ]);
    home.ok(&["call", STUCK, "add", "5", "--control", &control(&home, 1)]);
    home.ok(&[
        "call",
        STUCK,
        "loop-snapshot-on-join",
        "--control",
        &control(&home, 1),
    ]);

    // The joiner is refused with the reason, naming the object; it does not wait
    // out its seed timeout and then report that nobody answered.
    let started = std::time::Instant::now();
    let out = home.run(&[
        "join",
        STUCK,
        "--no-interactive",
        "--control",
        &control(&home, 2),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the join succeeded: {err}");
    assert!(
        err.contains("refused") && err.contains(STUCK) && err.contains("snapshot"),
        "{err}"
    );
    eprintln!("refused after {:?}: {err}", started.elapsed());
    let status = home.ok(&["status", "--control", &control(&home, 2)]);
    assert!(
        !status.contains(STUCK),
        "node 2 still lists the refused object:\n{status}"
    );

    // The member answers and its other object carries on, at both nodes.
    let took = std::time::Instant::now();
    let status = home.ok(&["status", "--control", &control(&home, 1)]);
    assert!(
        took.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        took.elapsed()
    );
    assert!(status.contains(ROOM), "{status}");
    home.ok(&[
        "call",
        ROOM,
        "post",
        "\"after the refusal\"",
        "--control",
        &control(&home, 1),
    ]);
    eventually(20, "the post at both nodes", || {
        count(&home, 1) == Some(1) && count(&home, 2) == Some(1)
    });
    // The stuck object itself is either still serving at node 1 (its snapshot ran
    // out of fuel, which changes nothing) or quarantined there (it ran past its
    // wall-clock deadline, or its CPU budget): never silently half-working.
    let out = home.run(&["call", STUCK, "total", "--control", &control(&home, 1)]);
    let answer = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        (out.status.success() && answer.contains('5')) || answer.contains("quarantined"),
        "{answer}"
    );
}

/// Resident memory of a process, in bytes (Linux `/proc`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Most memory a node may hold during the storm. An unbounded cascade grew
/// nodes to 4 and 7 GiB within 40 s before the executor; each object may now
/// hold its mailbox (8 MiB) and its group's backlog (32 MiB) at most.
const STORM_RSS_BOUND: u64 = 512 << 20;

#[test]
fn a_chain_reaction_is_quarantined_and_the_chat_beside_it_loses_nothing() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let (dir_addr, root) = (directory.addr.clone(), directory.root.clone());
    let acme_key = home.path("acme.key");
    let acme: &str = acme_key.to_str().unwrap();
    let run = |args: Vec<String>| home.ok_owned(args);

    let mut nodes = Vec::new();
    let mut seed = String::new();
    for n in 1..=3 {
        let (daemon, s) = start_node(&home, n, &dir_addr, &root);
        if n == 1 {
            seed = s;
        }
        nodes.push(daemon);
    }
    // The chain's record lowers its own budget (records may tighten a node's
    // budgets): a node busy with other tests, applying fewer than 1,000 chain
    // events a second, would never exceed the default 2,000 multicasts/s and
    // would instead be stopped much later by its host-memory bound.
    for (name, logic, budget) in [
        (ROOM, liveobjects_objects::CHAT, None),
        (
            CHAIN,
            liveobjects_objects::HOSTILE,
            Some("budget.event-multicasts=200"),
        ),
    ] {
        let mut publish = vec![
            "publish",
            logic,
            "--name",
            name,
            "--reliability",
            "total-order",
        ];
        let seeds = format!("seeds={seed}");
        publish.extend(["--driver-opt", &seeds, "--key", acme]);
        if let Some(budget) = budget {
            publish.extend(["--driver-opt", budget]);
        }
        run(directory.args(&publish));
        for n in 1..=3 {
            let mut args = vec!["join", name, "--no-interactive", "--control"];
            let control = control(&home, n);
            args.push(&control);
            if n == 1 {
                args.push("--found");
            }
            home.ok(&args);
        }
    }
    eventually(20, "three members of the chat at node 1", || {
        members(&home, 1) == 3
    });

    // Every `deliver` of a chain event multicasts two more, at every replica.
    home.ok(&["call", CHAIN, "chain", "--control", &control(&home, 1)]);

    let status_of = |n: usize| {
        let started = std::time::Instant::now();
        let chain = object_status(&home, n, CHAIN);
        (started.elapsed(), chain)
    };
    let mut slowest_status = std::time::Duration::ZERO;
    let mut most_rss = 0u64;
    let mut posts = 0u64;
    let started = std::time::Instant::now();
    let mut quarantined = [false; 3];
    // Bounded: at most 600 rounds (about 50 ms apart) or 60 s, whichever comes
    // first; quarantine is judged over 3 s windows, so fast rounds alone must
    // not end the storm early.
    for round in 0..600 {
        for n in 1..=3 {
            home.ok(&[
                "call",
                ROOM,
                "post",
                &format!("\"storm r{round} n{n}\""),
                "--control",
                &control(&home, n),
            ]);
            posts += 1;
            let (took, chain) = status_of(n);
            slowest_status = slowest_status.max(took);
            assert!(
                took < std::time::Duration::from_secs(1),
                "lo status took {took:?} at node {n} during the storm"
            );
            if chain["quarantined"]
                .as_str()
                .is_some_and(|reason| reason.starts_with("exceeded"))
            {
                quarantined[n - 1] = true;
            }
            let rss = rss_bytes(nodes[n - 1].child.id());
            most_rss = most_rss.max(rss);
            assert!(
                rss < STORM_RSS_BOUND,
                "node {n} holds {} MiB during the storm",
                rss >> 20
            );
        }
        if quarantined.iter().all(|q| *q) && round >= 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the chain reaction was not quarantined everywhere within 60 s: {quarantined:?}"
        );
    }
    assert!(
        quarantined.iter().all(|q| *q),
        "quarantined at nodes 1-3: {quarantined:?}; node 1:\n{}",
        status_of(1).1
    );
    eprintln!(
        "storm: quarantined everywhere after {:?}; slowest lo status {slowest_status:?}; \
         most RSS {} MiB; {posts} chat posts",
        started.elapsed(),
        most_rss >> 20
    );

    // A call on the quarantined object names it and the limit.
    let out = home.run(&["call", CHAIN, "chained", "--control", &control(&home, 2)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(CHAIN)
            && err.contains("quarantined")
            && err.contains("exceeded 200 multicasts/s made while applying events"),
        "{err}"
    );

    // Every chat post made during the storm is applied once, in one order, everywhere.
    eventually(20, "every post everywhere", || {
        (1..=3).all(|n| count(&home, n) == Some(posts))
    });
    let history = |n: usize| history(&home, n, 1000);
    assert_eq!(history(1), history(2));
    assert_eq!(history(1), history(3));
}

const CENSUS: &str = "lo://acme/census";
const LOOPING_AGGREGATE: &str = "lo://acme/hostile/looping-aggregate";
const GREEDY_AGGREGATE: &str = "lo://acme/hostile/greedy-aggregate";

/// The value `lo call NAME estimate` prints at node `n`, if an epoch finished.
fn estimate(home: &Home, n: usize, name: &str) -> Option<f64> {
    let out = home.run(&["call", name, "estimate", "--control", &control(home, n)]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn gossip_aggregates_join_on_nodes_and_run_on_the_executor_beside_a_looping_one() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let acme_key = home.path("acme.key");
    let acme = acme_key.to_str().unwrap();
    let at = |args: &[&str]| directory.args(args);
    let run = |args: Vec<String>| home.ok_owned(args);
    // The greedy one is the hostile code under a record budget of 1 ms of CPU per
    // second. Node 1 gives it 8, so every share node 2 sends it costs node 1 a
    // whole call's fuel limit: CPU that grows with the gossip traffic (one
    // stopped loop per epoch, 2 ms on one machine here and more on another, is
    // under the budget on a fast one). Both start at the default input, 1, which
    // the hostile code treats as an ordinary number: nothing loops before a host
    // asks for it, so the only CPU over the budget is node 1's merges.
    for (logic, name, options) in [
        (liveobjects_objects::CENSUS, CENSUS, &[][..]),
        (
            liveobjects_objects::HOSTILE_AGGREGATE,
            LOOPING_AGGREGATE,
            &[],
        ),
        (
            liveobjects_objects::HOSTILE_AGGREGATE,
            GREEDY_AGGREGATE,
            &["--driver-opt", "budget.cpu-ms=1"],
        ),
    ] {
        let mut args = vec![
            "publish",
            logic,
            "--name",
            name,
            "--driver",
            "gossip",
            "--category",
            "gossip-aggregate",
            "--reliability",
            "best-effort",
            "--key",
            acme,
        ];
        args.extend(options);
        run(at(&args));
    }

    // A node without gossip says which driver it lacks.
    let (_plain, _) = start_node(&home, 3, &directory.addr, &directory.root);
    let out = home.run(&[
        "join",
        CENSUS,
        "--no-interactive",
        "--control",
        &control(&home, 3),
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("does not run the gossip driver"),
        "{err}"
    );

    let (n1, _, seed) = start_gossip_node(&home, 1, &directory, None);
    let (_n2, _, _) = start_gossip_node(&home, 2, &directory, Some(&seed));
    for n in 1..=2 {
        for name in [CENSUS, LOOPING_AGGREGATE] {
            let out = home.ok(&[
                "join",
                name,
                "--no-interactive",
                "--control",
                &control(&home, n),
            ]);
            assert!(out.contains(&format!("joined {name}")), "{out}");
        }
    }
    for (n, input) in [(1, "8"), (2, "7")] {
        home.ok(&[
            "join",
            GREEDY_AGGREGATE,
            "--no-interactive",
            "--control",
            &control(&home, n),
        ]);
        home.ok(&[
            "call",
            GREEDY_AGGREGATE,
            "set-input",
            input,
            "--control",
            &control(&home, n),
        ]);
    }
    // Node 1 gives the looping one 9, which makes each of its contributions loop
    // until its CPU limit stops it, on the executor, from the next epoch on; it
    // then follows the epochs with node 2's state. Node 2 gives it 7 (it then
    // behaves as a maximum).
    for (n, input) in [(1, "9"), (2, "7")] {
        home.ok(&[
            "call",
            LOOPING_AGGREGATE,
            "set-input",
            input,
            "--control",
            &control(&home, n),
        ]);
    }
    let wrong = home.run(&[
        "call",
        CENSUS,
        "set-input",
        "many",
        "--control",
        &control(&home, 1),
    ]);
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("set-input takes a number"),
        "{wrong:?}"
    );

    // The census counts both nodes at both, epoch after epoch, however the other
    // aggregate behaves.
    eventually(60, "the census counts 2 hosts at both nodes", || {
        (1..=2).all(|n| estimate(&home, n, CENSUS) == Some(2.0))
    });
    eventually(
        30,
        "node 1 reports the looping aggregate's failures",
        || {
            home.ok(&["status", "--control", &control(&home, 1)])
            .contains("last failure: aggregate object lo://acme/hostile/looping-aggregate failed during contribute: it exceeded the CPU limit")
        },
    );
    eventually(30, "node 1 quarantines the greedy aggregate", || {
        home.ok(&["status", "--control", &control(&home, 1)])
            .contains("quarantined: exceeded 1 ms of CPU per second")
    });
    let greedy = home.run(&[
        "call",
        GREEDY_AGGREGATE,
        "current",
        "--control",
        &control(&home, 1),
    ]);
    let err = String::from_utf8_lossy(&greedy.stderr);
    assert!(
        err.contains(GREEDY_AGGREGATE) && err.contains("exceeded 1 ms of CPU per second"),
        "{err}"
    );
    // Only the host whose own state makes merges loop is over its budget.
    eventually(30, "node 2's greedy aggregate estimates its own 7", || {
        estimate(&home, 2, GREEDY_AGGREGATE) == Some(7.0)
    });
    let node2 = home.ok(&["status", "--control", &control(&home, 2)]);
    assert!(!node2.contains("quarantined"), "{node2}");
    eventually(30, "both nodes see the maximum node 2 contributes", || {
        (1..=2).all(|n| estimate(&home, n, LOOPING_AGGREGATE) == Some(7.0))
    });
    let took = std::time::Instant::now();
    let status = home.ok(&["status", "--control", &control(&home, 1)]);
    assert!(
        took.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        took.elapsed()
    );
    eprintln!("node 1 with gossip aggregates:\n{status}");
    let census_line = status
        .lines()
        .skip_while(|l| !l.starts_with(CENSUS))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        census_line.contains("driver gossip  2 member(s)") && census_line.contains("estimate 2 "),
        "{status}"
    );
    assert!(
        status.contains("other live host(s)  census 2"),
        "the node's own census: {status}"
    );
    // Still counted after the looping aggregate ran through several epochs.
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(estimate(&home, 2, CENSUS), Some(2.0));
    assert_eq!(estimate(&home, 1, CENSUS), Some(2.0));

    // Leaving takes it off the node; the other aggregate stays.
    home.ok(&["leave", CENSUS, "--control", &control(&home, 2)]);
    let status = home.ok(&["status", "--control", &control(&home, 2)]);
    assert!(
        !status.contains(CENSUS) && status.contains(LOOPING_AGGREGATE),
        "{status}"
    );
    drop(n1);
}

const REGISTER: &str = "lo://acme/registers/r";

/// Run `lo ARGS --json --control NODE1` and parse what it prints.
fn json(home: &Home, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    let control = control(home, 1);
    all.extend(["--json", "--control", &control]);
    let text = home.ok(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("lo {args:?}: {e}:\n{text}"))
}

#[test]
fn json_output_rejected_updates_and_a_second_join_that_opens_the_session() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    // Objects idle for a second hibernate: the calls below wake them.
    let (_n1, seed) = start_node_with(
        &home,
        1,
        &directory.addr,
        &directory.root,
        &["--hibernate-after", "1"],
        &[],
    );
    publish_mesh(
        &home,
        &directory,
        REGISTER,
        liveobjects_objects::REGISTER,
        &seed,
    );
    let joined = json(&home, &["join", REGISTER, "--found", "--no-interactive"]);
    assert_eq!(joined["name"], REGISTER);
    assert_eq!(joined["version"], 1);
    assert_eq!(joined["already"], false);
    // Joining again is not an error: it answers the same, marked as such.
    let again = json(&home, &["join", REGISTER, "--no-interactive"]);
    assert_eq!(again["already"], true, "{again}");
    assert_eq!(again["version"], 1);
    // Unless the record does not give what the joiner requires.
    let out = home.run(&[
        "join",
        REGISTER,
        "--no-interactive",
        "--require",
        "durable",
        "--control",
        &control(&home, 1),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(REGISTER) && err.contains("durable"), "{err}");

    // An update the object rejects fails the call with the object's reason.
    home.ok(&[
        "call",
        REGISTER,
        "set",
        "text(\"a\")",
        "--control",
        &control(&home, 1),
    ]);
    let out = home.run(&[
        "call",
        REGISTER,
        "compare-and-set",
        "7",
        "text(\"b\")",
        "--control",
        &control(&home, 1),
    ]);
    assert!(!out.status.success(), "a rejected update exited 0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(REGISTER)
            && err.contains("rejected the update")
            && err.contains("compare-and-set expected version 7, register is at 1"),
        "{err}"
    );
    // One that it accepts after it still succeeds.
    home.ok(&[
        "call",
        REGISTER,
        "compare-and-set",
        "1",
        "text(\"c\")",
        "--control",
        &control(&home, 1),
    ]);
    let got = json(&home, &["call", REGISTER, "get"]);
    assert_eq!(got, serde_json::json!({"results": [{"text": "c"}]}));

    // Status, listing and record as JSON.
    let status = json(&home, &["status"]);
    let objects = status["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{status}");
    assert_eq!(objects[0]["name"], REGISTER);
    assert_eq!(objects[0]["driver"], "mesh");
    assert_eq!(objects[0]["sequencer"], true);
    assert_eq!(objects[0]["members"].as_array().unwrap().len(), 1);
    assert!(objects[0]["quarantined"].is_null(), "{status}");
    assert!(objects[0]["batches"].is_u64(), "{status}");
    assert!(objects[0]["hibernating"].is_boolean(), "{status}");
    assert!(
        status["node"]["key"].as_str().unwrap().len() >= 32,
        "{status}"
    );
    // Status pages: name order, a prefix, `after` from the previous page's `next`.
    let counters: Vec<String> = (1..=4)
        .map(|i| format!("lo://acme/counters/c{i}"))
        .collect();
    for name in &counters {
        publish_mesh(&home, &directory, name, liveobjects_objects::COUNTER, &seed);
        home.ok(&[
            "join",
            name,
            "--found",
            "--no-interactive",
            "--control",
            &control(&home, 1),
        ]);
    }
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    let first = json(&home, &["status", "--limit", "2"]);
    assert_eq!(names(&first), counters[..2], "{first}");
    assert_eq!(first["total"], 5);
    assert_eq!(first["next"], counters[1].as_str());
    let second = json(&home, &["status", "--limit", "2", "--after", &counters[1]]);
    assert_eq!(names(&second), counters[2..], "{second}");
    let last = json(&home, &["status", "--limit", "2", "--after", &counters[3]]);
    assert_eq!(names(&last), [REGISTER], "{last}");
    assert!(last["next"].is_null(), "{last}");
    let registers = json(&home, &["status", "--prefix", "lo://acme/registers/"]);
    assert_eq!(names(&registers), [REGISTER]);
    assert_eq!(registers["total"], 1);
    let text = home.ok(&["status", "--limit", "3", "--control", &control(&home, 1)]);
    assert!(
        text.contains("(3 shown of 5; more: lo status --after lo://acme/counters/c3, or --all)"),
        "{text}"
    );
    assert!(!text.contains("lo://acme/counters/c4"), "{text}");

    // Idle, the register hibernates (its digest unchanged); a call wakes it with
    // its state.
    let digest =
        json(&home, &["status", "--prefix", REGISTER])["objects"][0]["state_digest"].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let asleep = loop {
        let status = json(&home, &["status", "--prefix", REGISTER]);
        if status["objects"][0]["hibernating"] == true {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not hibernating after 20 s: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(asleep["objects"][0]["state_digest"], digest, "{asleep}");
    let text = home.ok(&[
        "status",
        "--prefix",
        REGISTER,
        "--control",
        &control(&home, 1),
    ]);
    assert!(text.contains("hibernating: idle"), "{text}");
    let got = json(&home, &["call", REGISTER, "get"]);
    assert_eq!(got, serde_json::json!({"results": [{"text": "c"}]}));
    home.ok(&[
        "call",
        REGISTER,
        "compare-and-set",
        "2",
        "text(\"d\")",
        "--control",
        &control(&home, 1),
    ]);
    let got = json(&home, &["call", REGISTER, "get"]);
    assert_eq!(got, serde_json::json!({"results": [{"text": "d"}]}));

    let listing = home.ok_owned(directory.args(&["ls", "lo://acme/registers/", "--json"]));
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(listing["records"][0]["name"], REGISTER, "{listing}");
    assert_eq!(listing["records"][0]["driver"]["name"], "mesh");
    assert_eq!(listing["records"][0]["type"]["reliability"], "total-order");
    let record = home.ok_owned(directory.args(&["resolve", REGISTER, "--json"]));
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["version"], 1);
    assert_eq!(record["verified"], true);
    assert_eq!(record["chain"]["delegations"][0]["zone"], "lo://acme/");

    // `lo join` of a joined object opens its session.
    let mut session = home
        .lo()
        .args(["join", REGISTER, "--control", &control(&home, 1)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    session.stdin.take().unwrap().write_all(b"get\n").unwrap();
    let out = session.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("already joined {REGISTER}")) && text.contains("text(\"d\")"),
        "{text}"
    );
}
