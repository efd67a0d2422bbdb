//! The directory end to end with real processes on loopback: `lo directory serve` in
//! one process, `lo keygen / zone / publish / ls / resolve / fetch` in others.

use crate::common;

use common::{DirectoryProcess, Home};

#[test]
fn publish_resolve_list_fetch_and_republish_across_processes() {
    let home = Home::new();
    home.keygen("root.key");
    let alice = home.ok(&["keygen"]);
    assert!(alice.contains("public key "));
    let bob = home.keygen("bob.key");
    let server = DirectoryProcess::start(&home, &home.path("root.key"), &home.path("dir.redb"));
    let at = [
        "--directory",
        server.addr.as_str(),
        "--root",
        server.root.as_str(),
    ];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(at.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run_ok = |args: Vec<String>| home.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run_fail =
        |args: Vec<String>| home.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let out = run_ok(with(&["zone", "create", "lo://acme/"]));
    assert!(out.contains("zone lo://acme/ created"), "{out}");

    let chat = liveobjects_objects::CHAT;
    let out = run_ok(with(&[
        "publish",
        chat,
        "--name",
        "lo://acme/rooms/lobby",
        "--driver",
        "mesh",
        "--reliability",
        "total-order",
        "--policy",
        "open",
    ]));
    assert!(
        out.contains("published lo://acme/rooms/lobby version 1"),
        "{out}"
    );

    let out = run_ok(with(&["resolve", "lo://acme/rooms/lobby"]));
    assert!(out.contains("version      1"), "{out}");
    assert!(
        out.contains("liveobjects:chat/chat@0.1.0 replicated-state total-order open"),
        "{out}"
    );
    assert!(out.contains("-> lo://acme/ owned by"), "{out}");
    assert!(out.contains("verified     yes"), "{out}");

    let out = run_ok(with(&["ls", "lo://acme/"]));
    assert!(out.contains("lo://acme/rooms/"), "{out}");
    let out = run_ok(with(&["ls", "lo://acme/rooms/"]));
    let row = out
        .lines()
        .find(|l| l.starts_with("lo://acme/rooms/lobby"))
        .expect(&out);
    assert!(row.contains("mesh") && row.contains(" 1 "), "{row}");

    let fetched = home.path("fetched.wasm");
    run_ok(with(&[
        "fetch",
        "lo://acme/rooms/lobby",
        "-o",
        fetched.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(chat).unwrap()
    );

    let out = run_ok(with(&["publish", chat, "--name", "lo://acme/rooms/lobby"]));
    assert!(out.contains("version 2"), "{out}");
    let out = run_ok(with(&["resolve", "lo://acme/rooms/lobby"]));
    assert!(out.contains("version      2"), "{out}");

    // Delegation: bob owns lo://acme/games/, alice no longer writes there.
    run_ok(with(&[
        "zone",
        "delegate",
        "lo://acme/games/",
        "--to",
        &bob,
    ]));
    let bob_key = home.path("bob.key");
    let out = run_ok(with(&[
        "publish",
        liveobjects_objects::COUNTER,
        "--name",
        "lo://acme/games/score",
        "--key",
        bob_key.to_str().unwrap(),
    ]));
    assert!(out.contains("version 1"), "{out}");
    let err = run_fail(with(&["publish", chat, "--name", "lo://acme/games/hijack"]));
    assert!(
        err.contains("owned by") && err.contains("not the zone owner"),
        "{err}"
    );
    let out = run_ok(with(&["resolve", "lo://acme/games/score"]));
    assert!(out.contains("-> lo://acme/games/ owned by"), "{out}");

    // A bad component is refused before anything is sent.
    let junk = home.path("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let err = run_fail(with(&[
        "publish",
        junk.to_str().unwrap(),
        "--name",
        "lo://acme/junk",
    ]));
    assert!(err.contains("is not a WebAssembly component"), "{err}");
    let err = run_fail(with(&["resolve", "lo://acme/junk"]));
    assert!(err.contains("no object named lo://acme/junk"), "{err}");

    // A client trusting another root refuses the server itself: it does not hold
    // the root key the client pins.
    let other = home.keygen("other.key");
    let err = home.fails(&[
        "resolve",
        "lo://acme/rooms/lobby",
        "--directory",
        &server.addr,
        "--root",
        &other,
    ]);
    assert!(
        err.contains("presented key") && err.contains("not the pinned"),
        "{err}"
    );
}

#[test]
fn acknowledged_publishes_survive_a_kill_9_mid_burst() {
    use liveobjects_directory::client::{Client, Resolver};
    use liveobjects_directory::keys::Identity;
    use liveobjects_directory::record::{ObjectRecord, Signed};
    use std::sync::{Arc, Mutex};

    let home = Home::new();
    home.keygen("root.key");
    home.keygen("acme.key");
    let acme = Arc::new(Identity::load(&home.path("acme.key")).unwrap());
    let db = home.path("dir.redb");
    let mut server = DirectoryProcess::start(&home, &home.path("root.key"), &db);
    let root: liveobjects_directory::keys::PublicKey = server.root.parse().unwrap();
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let logic = b"burst logic".to_vec();
    let record = |n: usize| {
        let now = liveobjects_directory::server::unix_now();
        ObjectRecord::new(
            &format!("lo://acme/burst/o{n}"),
            1,
            b"burst logic",
            now,
            3600,
        )
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    rt.block_on(async {
        let client = Client::connect(addr, root).await.unwrap();
        client.create_zone("lo://acme/", &acme).await.unwrap();
        client
            .publish(Signed::sign(&record(0), &acme), Some(logic.clone()))
            .await
            .unwrap();
        acked.lock().unwrap().push(0);
        let client = Arc::new(client);
        // Four concurrent publishers, 1,000 publishes at most, 60 s at most.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut tasks = Vec::new();
        for worker in 0..4usize {
            let (client, acme, acked) = (client.clone(), acme.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..250usize {
                    if std::time::Instant::now() > deadline {
                        break;
                    }
                    let n = 1 + worker * 250 + i;
                    match client.publish(Signed::sign(&record(n), &acme), None).await {
                        Ok(()) => acked.lock().unwrap().push(n),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Kill the server once some publishes were acknowledged, while others fly.
        let wait_until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while acked.lock().unwrap().len() < 60 {
            assert!(
                std::time::Instant::now() < wait_until,
                "only {} publishes acknowledged in 30 s",
                acked.lock().unwrap().len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 60 && acked.len() < 1001,
        "acked {}",
        acked.len()
    );

    // Restart on the same database: it opens, and every acknowledged publish is there.
    let server = DirectoryProcess::start(&home, &home.path("root.key"), &db);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    rt.block_on(async {
        let resolver = Resolver::new(Client::connect(addr, root).await.unwrap(), root, None);
        for n in &acked {
            let name = format!("lo://acme/burst/o{n}");
            let v = resolver
                .resolve(&name)
                .await
                .unwrap_or_else(|e| panic!("acknowledged {name} lost after kill -9: {e}"));
            assert_eq!(v.record.version, 1);
        }
        let listing = resolver.list("lo://acme/burst/").await.unwrap();
        assert!(listing.records.len() >= acked.len());
    });
}

/// `lo directory serve` is closed to new top-level zones by default: a key other
/// than the root's is refused with what to do; the operator (the root key)
/// creates zones; `--registration keys:KEY` admits that key too.
#[test]
fn registration_is_closed_by_default_and_opens_to_listed_keys() {
    let home = Home::new();
    home.keygen("root.key");
    let acme = home.keygen("acme.key");
    let acme_key = home.path("acme.key");
    let root_key = home.path("root.key");
    let closed = DirectoryProcess::start_with(&home, &root_key, &home.path("closed.redb"), &[]);
    let create = |directory: &DirectoryProcess, zone: &str, key: &std::path::Path| {
        directory.args(&["zone", "create", zone, "--key", key.to_str().unwrap()])
    };
    let err = home.fails_owned(create(&closed, "lo://acme/", &acme_key));
    assert!(
        err.contains("does not let key") && err.contains("registration is closed"),
        "{err}"
    );
    home.ok_owned(create(&closed, "lo://operator/", &root_key));
    let invited = DirectoryProcess::start_with(
        &home,
        &root_key,
        &home.path("invited.redb"),
        &["--registration", &format!("keys:{acme}")],
    );
    home.ok_owned(create(&invited, "lo://acme/", &acme_key));
    let out = home.run(&[
        "directory",
        "serve",
        "--root-key",
        root_key.to_str().unwrap(),
        "--registration",
        "everyone",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a registration policy"),
        "{err}"
    );
}

/// A `lo directory serve --secondary-of` child: its address and the key clients
/// pin it by.
fn start_mirror(home: &Home, primary: &DirectoryProcess, name: &str) -> (common::Daemon, String) {
    home.keygen(&format!("{name}.key"));
    let mut cmd = home.lo();
    cmd.args([
        "directory",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--refresh",
        "1",
    ])
    .args(["--secondary-of", &primary.addr, "--root", &primary.root])
    .arg("--key")
    .arg(home.path(&format!("{name}.key")))
    .arg("--db")
    .arg(home.path(&format!("{name}.redb")));
    let daemon = common::Daemon::start(cmd, &["directory listening on ", "mirror key "]);
    let line = daemon.value("mirror key ");
    let target = line
        .split("--directory ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .expect("the mirror prints KEY@ADDR for its clients")
        .to_string();
    (daemon, target)
}

#[test]
fn a_primary_and_two_mirror_processes_serve_fail_over_and_go_stale_without_it() {
    let home = Home::new();
    home.keygen("root.key");
    home.keygen("acme.key");
    let acme_key = home.path("acme.key");
    let acme = acme_key.to_str().unwrap();
    // Statements valid for 16 s (re-signed with 8 s left; failing over from the
    // frozen primary takes 3 s): the test watches one expire.
    let mut primary = DirectoryProcess::start_with(
        &home,
        &home.path("root.key"),
        &home.path("primary.redb"),
        &["--registration", "open", "--freshness", "16"],
    );
    home.ok_owned(primary.args(&["zone", "create", "lo://acme/", "--key", acme]));
    let root = primary.root.clone();
    let primary_addr = primary.addr.clone();
    let publish = |directory: &str, version: &str| {
        let args = [
            "publish",
            liveobjects_objects::CHAT,
            "--name",
            "lo://acme/rooms/lobby",
            "--key",
            acme,
            "--version",
            version,
            "--directory",
            directory,
            "--root",
            &root,
        ];
        home.run(&args)
    };
    let out = publish(&primary_addr, "1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_m1, m1) = start_mirror(&home, &primary, "m1");
    let (_m2, m2) = start_mirror(&home, &primary, "m2");
    let resolve = |directory: &str| {
        home.run(&[
            "resolve",
            "lo://acme/rooms/lobby",
            "--directory",
            directory,
            "--root",
            &root,
        ])
    };
    for mirror in [&m1, &m2] {
        common::eventually(20, "the mirror serves the record", || {
            let out = resolve(mirror);
            let text = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && text.contains("version      1")
                && text.contains("verified     yes")
        });
    }
    // The logic comes through a mirror too, checked by hash.
    let fetched = home.path("fetched.wasm");
    home.ok(&[
        "fetch",
        "lo://acme/rooms/lobby",
        "--out",
        fetched.to_str().unwrap(),
        "--directory",
        &m1,
        "--root",
        &root,
    ]);
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(liveobjects_objects::CHAT).unwrap()
    );
    // A publish sent to a mirror is refused, naming the primary.
    let out = publish(&m1, "2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("read-only mirror") && err.contains(&primary_addr),
        "{err}"
    );
    // Version 2 on the primary reaches both mirrors.
    let out = publish(&primary_addr, "2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for mirror in [&m1, &m2] {
        common::eventually(20, "the mirror serves version 2", || {
            String::from_utf8_lossy(&resolve(mirror).stdout).contains("version      2")
        });
    }

    // The primary freezes (SIGSTOP: it takes packets and answers nothing); a
    // client given the primary first fails over to a mirror after the handshake
    // times out.
    let all = format!("{primary_addr},{m1},{m2}");
    // The shell's own `kill` (a builtin): a fresh machine may lack /bin/kill.
    let pid = primary.daemon.child.id();
    let stopped = std::process::Command::new("sh")
        .args(["-c", &format!("kill -STOP {pid}")])
        .status()
        .unwrap();
    assert!(stopped.success());
    let out = resolve(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("version      2"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without their primary (killed now) the mirrors' last statement expires
    // (within 16 s), and even a client that never resolved anything refuses them.
    primary.kill9();
    std::thread::sleep(std::time::Duration::from_secs(17));
    let stranger = Home::new();
    let out = stranger.run(&[
        "resolve",
        "lo://acme/rooms/lobby",
        "--directory",
        &m2,
        "--root",
        &root,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("freshness statement") && err.contains("expired"),
        "{err}"
    );
}

#[test]
fn a_zone_key_rolls_over_with_a_grace_period_and_an_old_key_is_revoked_across_restarts() {
    let home = Home::new();
    home.keygen("root.key");
    let a = home.keygen("a.key");
    let b = home.keygen("b.key");
    let c = home.keygen("c.key");
    let key = |name: &str| home.path(name).to_str().unwrap().to_string();
    let db = home.path("dir.redb");
    let mut server = DirectoryProcess::start(&home, &home.path("root.key"), &db);
    let run = |server: &DirectoryProcess, args: &[&str]| {
        let args = server.args(args);
        home.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).to_string();
    let publish = |server: &DirectoryProcess, name: &str, version: &str, by: &str| {
        run(
            server,
            &[
                "publish",
                liveobjects_objects::CHAT,
                "--name",
                name,
                "--version",
                version,
                "--key",
                &key(by),
            ],
        )
    };
    let resolves = |server: &DirectoryProcess, name: &str| {
        let out = run(server, &["resolve", name]);
        (out.status.success(), stderr(&out))
    };
    assert!(
        run(
            &server,
            &["zone", "create", "lo://acme/", "--key", &key("a.key")]
        )
        .status
        .success()
    );
    assert!(
        publish(&server, "lo://acme/old", "1", "a.key")
            .status
            .success()
    );

    // A hands the zone to B; A keeps signing for 6 s.
    let out = run(
        &server,
        &[
            "zone",
            "rollover",
            "lo://acme/",
            "--to",
            &b,
            "--grace",
            "6",
            "--key",
            &key("a.key"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rolled_at = std::time::Instant::now();
    assert!(
        resolves(&server, "lo://acme/old").0,
        "A's record verifies in the grace period"
    );
    assert!(
        publish(&server, "lo://acme/new", "1", "b.key")
            .status
            .success()
    );
    let out = publish(&server, "lo://acme/late", "1", "a.key");
    assert!(
        out.status.success(),
        "A may still publish in grace: {}",
        stderr(&out)
    );
    // A stranger's key may not roll the zone over.
    let out = run(
        &server,
        &[
            "zone",
            "rollover",
            "lo://acme/",
            "--to",
            &c,
            "--key",
            &key("c.key"),
        ],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("not signed by its owner"),
        "{}",
        stderr(&out)
    );

    // Across a restart, after the grace period: A's records and writes are refused.
    server.kill9();
    let mut server = DirectoryProcess::start(&home, &home.path("root.key"), &db);
    let left = std::time::Duration::from_secs(7).saturating_sub(rolled_at.elapsed());
    std::thread::sleep(left);
    let (ok, err) = resolves(&server, "lo://acme/old");
    assert!(
        !ok && err.contains(&format!("signed by {a}")) && err.contains(&format!("owned by {b}")),
        "{err}"
    );
    let out = publish(&server, "lo://acme/old", "2", "a.key");
    assert!(
        !out.status.success() && stderr(&out).contains("grace period is over"),
        "{}",
        stderr(&out)
    );
    assert!(resolves(&server, "lo://acme/new").0);

    // B hands over to C with a day's grace, then B is revoked: refused at once.
    let out = run(
        &server,
        &[
            "zone",
            "rollover",
            "lo://acme/",
            "--to",
            &c,
            "--key",
            &key("b.key"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        resolves(&server, "lo://acme/new").0,
        "B's record verifies in its grace period"
    );
    let out = run(
        &server,
        &[
            "zone",
            "revoke",
            "lo://acme/",
            "--old",
            &b,
            "--key",
            &key("c.key"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    server.kill9();
    let server = DirectoryProcess::start(&home, &home.path("root.key"), &db);
    let (ok, err) = resolves(&server, "lo://acme/new");
    assert!(!ok && err.contains(&format!("signed by {b}")), "{err}");
    // Republished by C, it verifies again.
    assert!(
        publish(&server, "lo://acme/new", "2", "c.key")
            .status
            .success()
    );
    assert!(resolves(&server, "lo://acme/new").0);
}
