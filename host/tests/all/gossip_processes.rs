//! Real processes on loopback: 20 `lo gossip` hosts sharing a domain secret run the
//! shipped `census` (a 21st host with another secret is not counted); a quarter of
//! them are killed with SIGKILL; the census and SWIM follow. And gossip
//! objects published in the directory run by name, and only on the gossip driver.

use crate::common;

use common::{DirectoryProcess, Home};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HOSTS: usize = 20;
const KILLED: usize = 5;
/// 100 ms rounds, 20 rounds per epoch: one census every 2 s.
const ROUND_MS: &str = "100";
const EPOCH_ROUNDS: &str = "20";

struct Host {
    child: Child,
    addr: String,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One JSON line a host printed: (host index, the value).
type Line = (usize, serde_json::Value);

/// The gossip domain's secret in the census test; the intruder has another.
const SECRET: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const OTHER_SECRET: &str = "0202020202020202020202020202020202020202020202020202020202020202";

fn start(home: &Home, index: usize, seed: Option<&str>, lines: mpsc::Sender<Line>) -> Host {
    start_with(
        home,
        index,
        seed,
        &["--object", "census", "--secret", SECRET],
        lines,
    )
}

fn start_with(
    home: &Home,
    index: usize,
    seed: Option<&str>,
    extra: &[&str],
    lines: mpsc::Sender<Line>,
) -> Host {
    let mut cmd = home.lo();
    cmd.args([
        "gossip",
        "--cache-dir",
        home.path("cache").to_str().unwrap(),
        "--json",
        "--input",
        "1",
        "--round-ms",
        ROUND_MS,
        "--epoch-rounds",
        EPOCH_ROUNDS,
        "--expected-hosts",
        "20",
        "--duration",
        "120",
    ]);
    cmd.args(extra);
    if let Some(seed) = seed {
        cmd.args(["--seed", seed]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("lo gossip starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    let listening: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
    assert_eq!(listening["event"], "listening", "{first}");
    let addr = listening["addr"].as_str().unwrap().to_string();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if let Ok(value) = serde_json::from_str(&line)
                && lines.send((index, value)).is_err()
            {
                break;
            }
        }
    });
    Host { child, addr }
}

/// Wait until every host in `hosts` has reported a census of exactly `count`.
fn await_census(
    lines: &mpsc::Receiver<Line>,
    hosts: &[usize],
    count: f64,
    within: Duration,
    downs: &mut Vec<(usize, String)>,
) -> Duration {
    let start = Instant::now();
    let mut reported = [false; HOSTS];
    while hosts.iter().any(|&h| !reported[h]) {
        let left = within.saturating_sub(start.elapsed());
        let (host, value) = lines.recv_timeout(left).unwrap_or_else(|_| {
            let missing: Vec<_> = hosts.iter().filter(|&&h| !reported[h]).collect();
            panic!("hosts {missing:?} did not report a census of {count} within {within:?}")
        });
        let counted = value["value"].as_f64().unwrap_or(0.0);
        assert!(
            value["event"] != "estimate" || counted <= HOSTS as f64,
            "host {host} counted {counted}: the intruder with another secret was counted"
        );
        match value["event"].as_str() {
            Some("estimate")
                if value["object"] == "census" && value["value"].as_f64() == Some(count) =>
            {
                reported[host] = true;
            }
            Some("down") => downs.push((host, value["host"].as_str().unwrap().to_string())),
            _ => {}
        }
    }
    start.elapsed()
}

#[test]
fn census_follows_killed_hosts_and_swim_reports_them_down() {
    let home = Home::new();
    let (sender, lines) = mpsc::channel();
    let mut hosts = vec![start(&home, 0, None, sender.clone())];
    let first = hosts[0].addr.clone();
    for index in 1..HOSTS {
        hosts.push(start(&home, index, Some(&first), sender.clone()));
    }
    // A host with another domain's secret joins through the same seed: it must
    // not be counted (its datagrams do not authenticate).
    let (intruder_lines, _intruder_receiver) = mpsc::channel();
    let _intruder = start_with(
        &home,
        HOSTS,
        Some(&first),
        &["--object", "census", "--secret", OTHER_SECRET],
        intruder_lines,
    );
    let all: Vec<usize> = (0..HOSTS).collect();
    let mut downs = Vec::new();
    let formed = await_census(
        &lines,
        &all,
        HOSTS as f64,
        Duration::from_secs(60),
        &mut downs,
    );
    eprintln!("all {HOSTS} hosts counted {HOSTS} after {formed:?}");

    // Kill the last five (not the seed, which new hosts would need).
    let victims: Vec<String> = hosts[HOSTS - KILLED..]
        .iter()
        .map(|h| h.addr.clone())
        .collect();
    for host in &mut hosts[HOSTS - KILLED..] {
        host.child.kill().unwrap();
        host.child.wait().unwrap();
    }
    let survivors: Vec<usize> = (0..HOSTS - KILLED).collect();
    let followed = await_census(
        &lines,
        &survivors,
        (HOSTS - KILLED) as f64,
        Duration::from_secs(30),
        &mut downs,
    );
    eprintln!("survivors counted {} after {followed:?}", HOSTS - KILLED);

    // SWIM declares every killed host down (suspicion takes a few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    while victims
        .iter()
        .any(|v| !downs.iter().any(|(_, down)| down == v))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((host, value)) = lines.recv_timeout(left) else {
            let missing: Vec<_> = victims
                .iter()
                .filter(|v| !downs.iter().any(|(_, d)| d == *v))
                .collect();
            panic!("SWIM never reported {missing:?} down");
        };
        if value["event"] == "down" {
            downs.push((host, value["host"].as_str().unwrap().to_string()));
        }
    }
    // Nobody alive was reported down (no false positives on a quiet loopback).
    let survivor_addrs: Vec<&String> = hosts[..HOSTS - KILLED].iter().map(|h| &h.addr).collect();
    let false_downs: Vec<_> = downs
        .iter()
        .filter(|(_, d)| survivor_addrs.contains(&d))
        .collect();
    assert!(
        false_downs.is_empty(),
        "live hosts reported down: {false_downs:?}"
    );
}

#[test]
fn a_published_aggregate_runs_by_name_and_only_on_the_gossip_driver() {
    let home = Home::new();
    home.keygen("root.key");
    home.ok(&["keygen"]);
    let server = DirectoryProcess::start(&home, &home.path("root.key"), &home.path("dir.redb"));
    let at = |args: &[&str]| server.args(args);
    let ok = |args: Vec<String>| home.ok_owned(args);
    let fails = |args: Vec<String>| home.fails_owned(args);
    ok(at(&["zone", "create", "lo://demo/"]));
    let census = liveobjects_objects::CENSUS;
    let aggregate = [
        "--category",
        "gossip-aggregate",
        "--reliability",
        "best-effort",
    ];

    let publish = |file: &str, driver: &str| -> Vec<String> {
        let mut args = vec![
            "publish",
            file,
            "--name",
            "lo://demo/census",
            "--driver",
            driver,
        ];
        args.extend(aggregate);
        at(&args)
    };
    let err = fails(publish(census, "mesh"));
    assert!(
        err.contains("gossip-aggregate object, which the mesh driver does not run")
            && err.contains("drivers for it: gossip"),
        "{err}"
    );
    let err = fails(publish(liveobjects_objects::COUNTER, "gossip"));
    assert!(err.contains("liveobjects:object/aggregate@0.1.0"), "{err}");
    let out = ok(publish(census, "gossip"));
    assert!(
        out.contains("published lo://demo/census version 1"),
        "{out}"
    );
    ok(at(&[
        "publish",
        liveobjects_objects::CHAT,
        "--name",
        "lo://demo/lobby",
    ]));

    // A replicated object is not a gossip aggregate.
    let err = fails(at(&[
        "gossip",
        "--object",
        "lo://demo/lobby",
        "--duration",
        "1",
    ]));
    assert!(
        err.contains("cannot run lo://demo/lobby") && err.contains("gossip-aggregate"),
        "{err}"
    );

    // Three hosts run the published census by name and count themselves.
    let (sender, lines) = mpsc::channel();
    let by_name = at(&["--object", "lo://demo/census"]);
    let by_name: Vec<&str> = by_name.iter().map(String::as_str).collect();
    let first = start_with(&home, 0, None, &by_name, sender.clone());
    let seed = first.addr.clone();
    let _hosts = [
        first,
        start_with(&home, 1, Some(&seed), &by_name, sender.clone()),
        start_with(&home, 2, Some(&seed), &by_name, sender.clone()),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut counted = [false; 3];
    while counted.iter().any(|c| !c) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (host, value) = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("not every host counted 3: {counted:?}"));
        if value["event"] == "estimate"
            && value["object"] == "lo://demo/census"
            && value["value"].as_f64() == Some(3.0)
        {
            counted[host] = true;
        }
    }
}
