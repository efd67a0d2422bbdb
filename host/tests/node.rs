//! Real processes on loopback: a directory server and three `lo node` daemons join a
//! chat room by name; posts from all reach all; a node killed with SIGKILL leaves
//! the view and, restarted, rejoins with the state.

mod common;

use common::{Daemon, Home};
use std::time::{Duration, Instant};

const ROOM: &str = "lo://acme/rooms/lobby";

fn start_node(home: &Home, n: usize, directory: &str, root: &str) -> (Daemon, String) {
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
    .arg(&control);
    let daemon = Daemon::start(cmd, &["node listening on ", "control socket "]);
    let listening = daemon.value("node listening on ");
    let (addr, key) = listening.split_once(" key ").unwrap();
    let seed = format!("{key}@{addr}");
    (daemon, seed)
}

fn control(home: &Home, n: usize) -> String {
    home.path(&format!("n{n}.sock"))
        .to_str()
        .unwrap()
        .to_string()
}

fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(home: &Home, n: usize) -> Option<u64> {
    let out = home.run(&["call", ROOM, "count", "--control", &control(home, n)]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn members(home: &Home, n: usize) -> usize {
    let out = home.run(&["status", "--control", &control(home, n)]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with(ROOM))
        .and_then(|l| l.split("driver mesh  ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn nodes_join_by_name_stay_in_step_and_survive_a_kill_9() {
    let home = Home::new();
    for key in ["root", "acme", "n1", "n2", "n3"] {
        home.ok(&[
            "keygen",
            "--out",
            home.path(&format!("{key}.key")).to_str().unwrap(),
        ]);
    }
    let mut cmd = home.lo();
    cmd.args(["directory", "serve", "--listen", "127.0.0.1:0"])
        .arg("--root-key")
        .arg(home.path("root.key"))
        .arg("--db")
        .arg(home.path("dir.redb"));
    let directory = Daemon::start(cmd, &["directory listening on ", "root key "]);
    let dir_addr = directory.value("directory listening on ");
    let root = directory.value("root key ");
    let acme_key = home.path("acme.key");
    let acme: &str = acme_key.to_str().unwrap();
    let at = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain([
                "--directory".into(),
                dir_addr.clone(),
                "--root".into(),
                root.clone(),
            ])
            .collect()
    };
    let run = |args: Vec<String>| home.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    run(at(&["zone", "create", "lo://acme/", "--key", acme]));

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
    let history = |n: usize| {
        home.ok(&[
            "call",
            ROOM,
            "history",
            "100",
            "--control",
            &control(&home, n),
        ])
    };
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
