//! Real processes: two `lo node`s keep flight recordings of a mesh object
//! (`--record`) while one of its events makes the replicas diverge on purpose.
//! `lo replay`, in processes of its own and from a copy of the recordings moved
//! elsewhere (as to another machine), re-executes each replica with a state digest
//! checked after every event, and `--diff` names the event where they part. A
//! torn recording is refused with its path unless `--truncated-ok`.

use crate::common::{Home, eventually};
use crate::node::{control, directory_with_acme_zone, join_at, publish_mesh, start_node_with};
use std::path::{Path, PathBuf};

const OBJECT: &str = "lo://acme/tests/recorded";

fn events_applied(home: &Home, n: usize) -> u64 {
    crate::node::object_status(home, n, OBJECT)["events_applied"]
        .as_u64()
        .unwrap_or(0)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The one replica folder under a recording root.
fn replica_folder(root: &Path) -> PathBuf {
    let folders: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.ends_with("logic"))
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    folders[0].clone()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn nodes_record_and_lo_replay_re_executes_and_diffs_their_replicas() {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let mut nodes = Vec::new();
    let mut seed = String::new();
    for n in 1..=2 {
        let dir = home.path(&format!("rec{n}"));
        let (node, node_seed) = start_node_with(
            &home,
            n,
            &directory.addr,
            &directory.root,
            &[
                "--record",
                dir.to_str().unwrap(),
                "--record-digest-every",
                "1",
            ],
            &["recording replicas under "],
        );
        if n == 1 {
            seed = node_seed;
        }
        nodes.push(node);
    }
    publish_mesh(
        &home,
        &directory,
        OBJECT,
        liveobjects_objects::HOSTILE,
        &seed,
    );
    join_at(&home, 1, OBJECT, true);
    join_at(&home, 2, OBJECT, false);
    for n in 1..=3 {
        home.ok(&[
            "call",
            OBJECT,
            "add",
            &n.to_string(),
            "--control",
            &control(&home, 1),
        ]);
    }
    home.ok(&["call", OBJECT, "diverge", "--control", &control(&home, 2)]);
    home.ok(&["call", OBJECT, "add", "10", "--control", &control(&home, 1)]);
    eventually(20, "both replicas applied the five events", || {
        events_applied(&home, 1) == 5 && events_applied(&home, 2) == 5
    });
    let totals: Vec<String> = (1..=2)
        .map(|n| {
            home.ok(&["call", OBJECT, "total", "--control", &control(&home, n)])
                .trim()
                .to_string()
        })
        .collect();
    assert_ne!(
        totals[0], totals[1],
        "the planted divergence did not diverge"
    );
    // A crash: what was flushed (at every state digest) is what replays.
    for node in &mut nodes {
        node.kill9();
    }

    // Replay elsewhere, as on another machine: the copy carries the logic.
    let moved = home.path("moved");
    for n in 1..=2 {
        copy_tree(
            &home.path(&format!("rec{n}")),
            &moved.join(format!("rec{n}")),
        );
    }
    let replicas: Vec<PathBuf> = (1..=2)
        .map(|n| replica_folder(&moved.join(format!("rec{n}"))))
        .collect();
    for (replica, total) in replicas.iter().zip(&totals) {
        let out = home.ok(&["replay", replica.to_str().unwrap(), "--query", "total"]);
        assert!(
            out.contains("replayed 5 events") && out.contains("5 state digests matched"),
            "{out}"
        );
        let last_total = out
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("total = "))
            .unwrap_or_else(|| panic!("no query results in:\n{out}"));
        assert_eq!(last_total, total, "{out}");
    }
    // Stepping to an event, with the state printed at each.
    let out = home.ok(&[
        "replay",
        replicas[0].to_str().unwrap(),
        "--until",
        "2",
        "--state",
        "--query",
        "total",
    ]);
    assert!(out.contains("replayed 2 events"), "{out}");
    assert!(
        out.contains("total = 3") && !out.contains("total = 6"),
        "{out}"
    );
    assert!(out.matches("sha256").count() >= 2, "{out}");

    let out = home.run(&[
        "replay",
        replicas[0].to_str().unwrap(),
        "--diff",
        replicas[1].to_str().unwrap(),
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("part at the event from")
            && said.contains("after agreeing on 3 common events"),
        "{said}"
    );
    let out = home.run(&[
        "replay",
        replicas[0].to_str().unwrap(),
        "--diff",
        replicas[0].to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("agree on all 5 events"),
        "{}",
        text(&out)
    );

    // Without the logic beside it, the error says how to give it.
    let alone = home.path("alone");
    copy_tree(&replicas[0], &alone);
    let err = home.fails(&["replay", alone.to_str().unwrap()]);
    assert!(err.contains("--logic"), "{err}");
    let out = home.ok(&[
        "replay",
        alone.to_str().unwrap(),
        "--logic",
        liveobjects_objects::HOSTILE,
        "--quiet",
    ]);
    assert!(out.contains("replayed 5 events"), "{out}");

    // A torn last frame: refused with the file named, or replayed up to it.
    let segment = std::fs::read_dir(&alone)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "lorec"))
        .max()
        .unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    std::fs::write(&segment, &bytes[..bytes.len() - 3]).unwrap();
    let err = home.fails(&[
        "replay",
        alone.to_str().unwrap(),
        "--logic",
        liveobjects_objects::HOSTILE,
    ]);
    assert!(
        err.contains("truncated") && err.contains(segment.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    let out = home.ok(&[
        "replay",
        alone.to_str().unwrap(),
        "--logic",
        liveobjects_objects::HOSTILE,
        "--truncated-ok",
        "--quiet",
    ]);
    assert!(out.contains("torn last frame was left out"), "{out}");
}
