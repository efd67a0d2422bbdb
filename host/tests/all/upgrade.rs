//! Real processes: a counter on three `lo node`s, on the mesh and on vsync
//! (durable), is upgraded live while calls flow, by publishing a new version of
//! its record. Every replica switches at the same event, no acknowledged call is
//! lost or applied twice, a node that joins during the upgrade (it resolved the
//! new version, the group still runs the old one) ends on the new version, an
//! upgrade the new logic refuses is aborted on every replica, and a publish that
//! breaks the interface is refused unless `--breaking`. On vsync, a member killed
//! after the upgrades replays its log across them and agrees again.

use crate::common::{DirectoryProcess, Home, call_repeatedly, eventually};
use crate::node::{
    Driver, control, directory_with_acme_zone, join_at, object_status as status, start_nodes,
    start_on,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const COUNTER: &str = "lo://acme/tests/upgraded";

/// `lo publish LOGIC` over the counter's record (seeded with `seeds`): what it
/// said.
fn publish(
    home: &Home,
    directory: &DirectoryProcess,
    driver: Driver,
    logic: &str,
    seeds: &str,
) -> String {
    publish_signed(home, directory, driver, logic, seeds, "acme.key")
}

/// [`publish`] signed with the key in `key_file`.
fn publish_signed(
    home: &Home,
    directory: &DirectoryProcess,
    driver: Driver,
    logic: &str,
    seeds: &str,
    key_file: &str,
) -> String {
    let out = publish_command(home, directory, driver, logic, seeds, key_file)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `lo publish --watch` running in the background (killed if dropped, as
/// when a test fails).
struct Watching {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// What it printed so far.
    said: String,
}

impl Watching {
    /// What it said, and whether it succeeded, once it exits.
    fn outcome(mut self) -> (bool, String) {
        use std::io::Read as _;
        self.stdout.read_to_string(&mut self.said).unwrap();
        let mut errors = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut errors).unwrap();
        }
        let status = self.child.wait().unwrap();
        (status.success(), format!("{}{errors}", self.said))
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lo publish LOGIC --watch` started in the background, watching the upgrade
/// at node `n`; returns once it said it published.
fn publish_watching(
    home: &Home,
    directory: &DirectoryProcess,
    driver: Driver,
    logic: &str,
    seeds: &str,
    n: usize,
) -> Watching {
    use std::io::BufRead as _;
    let mut child = publish_command(home, directory, driver, logic, seeds, "acme.key")
        .args(["--watch=60", "--control", &control(home, n)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut said = String::new();
    stdout.read_line(&mut said).unwrap();
    let watching = Watching {
        child,
        stdout,
        said,
    };
    if !watching.said.starts_with("published ") {
        let (_, said) = watching.outcome();
        panic!("lo publish --watch did not publish: {said}");
    }
    watching
}

/// The `lo publish` command for LOGIC over the counter's record.
fn publish_command(
    home: &Home,
    directory: &DirectoryProcess,
    driver: Driver,
    logic: &str,
    seeds: &str,
    key_file: &str,
) -> std::process::Command {
    let acme_key = home.path(key_file);
    let seeds = format!("seeds={seeds}");
    let (driver, reliability) = match driver {
        Driver::Mesh => ("mesh", "total-order"),
        Driver::Vsync => ("vsync", "durable"),
    };
    let args = [
        "publish",
        logic,
        "--name",
        COUNTER,
        "--driver",
        driver,
        "--reliability",
        reliability,
        "--driver-opt",
        &seeds,
        "--key",
        acme_key.to_str().unwrap(),
    ];
    let mut command = home.lo();
    command.args(directory.args(&args));
    command
}

fn query(home: &Home, n: usize, method: &str) -> String {
    let out = home.run(&["call", COUNTER, method, "--control", &control(home, n)]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn logic(home: &Home, n: usize) -> String {
    status(home, n, COUNTER)["logic"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Call `add 1` through node `n` until `stop` ([`call_repeatedly`]): how many
/// were acknowledged.
fn adder(home: &Home, n: usize, stop: &Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    let mut call = home.lo();
    call.args(["call", COUNTER, "add", "1", "--control", &control(home, n)]);
    call_repeatedly(call, format!("node {n}"), stop)
}

#[test]
fn a_mesh_counter_is_upgraded_live_under_calls_and_a_refused_upgrade_is_aborted_everywhere() {
    upgrade_under_calls(Driver::Mesh);
}

#[test]
fn a_durable_vsync_counter_is_upgraded_live_under_calls_and_replays_across_upgrades() {
    upgrade_under_calls(Driver::Vsync);
}

fn upgrade_under_calls(driver: Driver) {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    // Node 1 founds the object and orders it: it looks for a newer record every
    // 8 s, so that node 4 joins before the switch (see below).
    let polls = |n: usize| if n == 1 { "8" } else { "1" };
    home.keygen("n4.key");
    let (mut nodes, seeds, ports) = start_nodes(&home, &directory, driver, 4, |n| {
        vec!["--upgrade-poll", polls(n)]
    });
    // Node 1, which founds the object, is its seed.
    let seeds = seeds[0].clone();
    let published = publish(
        &home,
        &directory,
        driver,
        liveobjects_objects::COUNTER,
        &seeds,
    );
    assert!(published.contains("version 1"), "{published}");
    for n in 1..=3 {
        join_at(&home, n, COUNTER, n == 1);
    }
    assert!(
        logic(&home, 1).starts_with("version 1"),
        "{}",
        logic(&home, 1)
    );

    // A new logic that drops the counter's methods is refused at publish.
    let refused = publish(
        &home,
        &directory,
        driver,
        liveobjects_objects::HOSTILE,
        &seeds,
    );
    assert!(
        refused.contains("refusing to publish")
            && refused.contains("removes `add: func(n: s64)`")
            && refused.contains("--breaking"),
        "{refused}"
    );

    // Calls before, during and after the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let adders = [adder(&home, 1, &stop), adder(&home, 3, &stop)];
    thread::sleep(Duration::from_millis(1500));
    // The publisher watches the switch at node 2.
    let publishing = publish_watching(
        &home,
        &directory,
        driver,
        liveobjects_objects::COUNTER_V2,
        &seeds,
        2,
    );
    assert!(publishing.said.contains("version 2"), "{}", publishing.said);
    // A node joins while the group switches.
    // Node 4 resolves version 2 but joins a group still on version 1: it takes
    // version 1's state with version 1's logic, then switches with the others.
    join_at(&home, 4, COUNTER, false);
    // (a vsync joiner may still be catching up from the log when its join
    // returns: its first logic entry names version 1)
    eventually(10, "node 4 knows its logic", || !logic(&home, 4).is_empty());
    assert!(
        logic(&home, 4).starts_with("version 1"),
        "node 4 should join before the switch: {}",
        logic(&home, 4)
    );
    eventually(30, "every replica on version 2", || {
        (1..=4).all(|n| logic(&home, n).starts_with("version 2 since position"))
    });
    let (succeeded, said) = publishing.outcome();
    assert!(
        succeeded
            && said.contains("published lo://acme/tests/upgraded version 2")
            && said.contains("switched live to version 2 on this node (version 2 since position"),
        "{said}"
    );
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let acknowledged: usize = adders.into_iter().map(|a| a.join().unwrap()).sum();
    eventually(30, "every call applied at every replica", || {
        (1..=4).all(|n| query(&home, n, "get") == acknowledged.to_string())
    });
    // One switch, at the same event everywhere, from version 1's state.
    let switched: Vec<String> = (1..=4).map(|n| query(&home, n, "switched-after")).collect();
    assert!(switched.iter().all(|s| *s == switched[0]), "{switched:?}");
    let before: usize = switched[0].parse().unwrap();
    assert!(
        before > 0 && before < acknowledged,
        "calls applied before the switch: {before} of {acknowledged} (some must come after)"
    );
    for n in 1..=4 {
        assert_eq!(query(&home, n, "upgraded-from"), "1", "node {n}");
        assert_eq!(
            query(&home, n, "updates"),
            acknowledged.to_string(),
            "node {n}"
        );
    }
    // Calls through the node (its JSON mapping, the HTTP API's) know the new
    // methods' types.
    let out = home.ok(&[
        "call",
        COUNTER,
        "upgraded-from",
        "--json",
        "--control",
        &control(&home, 2),
    ]);
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    // (a u64 is a JSON string in the mapping)
    assert_eq!(results["results"], serde_json::json!(["1"]), "{out}");
    let lines: Vec<String> = (1..=3).map(|n| logic(&home, n)).collect();
    assert!(
        lines
            .iter()
            .all(|l| *l == lines[0] && l.contains("switched from version 1 to 2")),
        "{lines:?}"
    );

    // Version 2 refuses to take over a negative counter: version 3 (the same
    // logic) is aborted on every replica, which carry on with version 2.
    let below_zero = format!("-{}", acknowledged + 1000);
    home.ok(&[
        "call",
        COUNTER,
        "add",
        &below_zero,
        "--control",
        &control(&home, 2),
    ]);
    let publishing = publish_watching(
        &home,
        &directory,
        driver,
        liveobjects_objects::COUNTER_V2,
        &seeds,
        3,
    );
    eventually(
        30,
        "the upgrade to version 3 aborted at every replica",
        || {
            // An idle object looks for a newer record at its next activity
            // (at whichever node orders it).
            for n in 1..=4 {
                query(&home, n, "get");
            }
            (1..=4).all(|n| logic(&home, n).contains("to version 3"))
        },
    );
    let lines: Vec<String> = (1..=4).map(|n| logic(&home, n)).collect();
    for line in &lines {
        assert!(
            line.starts_with("version 2 since position")
                && line.contains("was aborted on every replica")
                && line.contains("refuses to take over a negative counter"),
            "{line}"
        );
    }
    assert!(lines.iter().all(|l| *l == lines[0]), "{lines:?}");
    // The publisher hears why.
    let (succeeded, said) = publishing.outcome();
    assert!(
        !succeeded
            && said.contains("published lo://acme/tests/upgraded version 3")
            && said.contains(
                "the live upgrade of lo://acme/tests/upgraded to version 3 did not happen"
            )
            && said.contains("refuses to take over a negative counter"),
        "{said}"
    );
    let text = home.ok(&["status", "--control", &control(&home, 1)]);
    assert!(text.contains("logic: version 2"), "{text}");
    // Calls go on under version 2.
    home.ok(&[
        "call",
        COUNTER,
        "add",
        "2000",
        "--control",
        &control(&home, 3),
    ]);
    let expected = "1000";
    eventually(20, "every replica applies calls after the abort", || {
        (1..=4).all(|n| query(&home, n, "get") == expected)
    });
    if driver == Driver::Vsync {
        // A durable member killed now comes back from its disk: its snapshot
        // and log (version 1's events, the switch, version 2's, the abort)
        // bring it to the same state and logic as the others, though it has
        // the newest record (version 3's) loaded when it starts.
        nodes[1].kill9();
        home.ok(&["call", COUNTER, "add", "5", "--control", &control(&home, 3)]);
        let (node, _) = start_on(
            &home,
            &directory,
            driver,
            2,
            &["--upgrade-poll", polls(2)],
            ports[1],
        );
        nodes[1] = node;
        join_at(&home, 2, COUNTER, false);
        eventually(30, "the restarted member agrees again", || {
            query(&home, 2, "get") == "1005" && logic(&home, 2) == lines[0]
        });
        assert_eq!(query(&home, 2, "switched-after"), switched[0]);
        assert_eq!(query(&home, 2, "upgraded-from"), "1");
    }
    drop(nodes);
}

/// A vsync counter founded under the zone's first key, upgraded to a version
/// signed by the key the zone rolled over to: once the old key may no longer
/// sign, a node that joins still replays the log from its first entry (the
/// founder's version, signed by the old key) and ends on the new version with
/// the same state. Its group ran that logic; refusing it would leave a group
/// nobody can join after a key rollover.
#[test]
fn a_vsync_joiner_replays_logic_signed_by_a_zone_key_rolled_over_since() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let successor = home.keygen("successor.key");
    home.keygen("n4.key");
    let (nodes, seeds, _) = start_nodes(&home, &directory, Driver::Vsync, 4, |_| {
        vec!["--upgrade-poll", "1"]
    });
    let published = publish(
        &home,
        &directory,
        Driver::Vsync,
        liveobjects_objects::COUNTER,
        &seeds[0],
    );
    assert!(published.contains("version 1"), "{published}");
    for n in 1..=3 {
        join_at(&home, n, COUNTER, n == 1);
    }
    let add = |n: usize, amount: &str| {
        home.ok(&[
            "call",
            COUNTER,
            "add",
            amount,
            "--control",
            &control(&home, n),
        ]);
    };
    add(2, "5");
    // The zone moves to another key, with 3 s of grace for the old one.
    let acme_key = home.path("acme.key");
    home.ok_owned(directory.args(&[
        "zone",
        "rollover",
        "lo://acme/",
        "--to",
        &successor,
        "--grace",
        "3",
        "--key",
        acme_key.to_str().unwrap(),
    ]));
    let rolled = Instant::now();
    let published = publish_signed(
        &home,
        &directory,
        Driver::Vsync,
        liveobjects_objects::COUNTER_V2,
        &seeds[0],
        "successor.key",
    );
    assert!(published.contains("version 2"), "{published}");
    eventually(30, "every replica on version 2", || {
        add(1, "1");
        (1..=3).all(|n| logic(&home, n).starts_with("version 2 since position"))
    });
    thread::sleep(Duration::from_secs(4).saturating_sub(rolled.elapsed()));
    // The old key may no longer sign for the zone; a joiner replays the
    // group's log from the founder's version all the same.
    join_at(&home, 4, COUNTER, false);
    let expected = query(&home, 1, "get");
    eventually(30, "node 4 catches up on version 2", || {
        logic(&home, 4).starts_with("version 2 since position")
            && query(&home, 4, "get") == expected
    });
    assert_eq!(query(&home, 4, "upgraded-from"), "1");
    assert_eq!(logic(&home, 4), logic(&home, 1));
    drop(nodes);
}
