//! Real processes: three `lo node`s run an object, on the mesh and on vsync,
//! that checks its replicas' states every few positions (`--driver-opt
//! check-every=N`). One replica is corrupted on purpose; the next check finds
//! it, it keeps its evidence, is repaired from the majority by state transfer,
//! and `lo status` says so. Two replicas that differ with no majority stop the
//! object at both, with the reason.

use crate::common::{Home, eventually};
use crate::node::{
    Driver, control, directory_with_acme_zone, join_at, object_status as status, start_nodes,
};

const REPAIRED: &str = "lo://acme/tests/repaired";
const SPLIT: &str = "lo://acme/tests/split";

fn publish_checked(
    home: &Home,
    directory: &crate::common::DirectoryProcess,
    driver: Driver,
    name: &str,
    seed: &str,
    every: u64,
) {
    let acme_key = home.path("acme.key");
    let driver = match driver {
        Driver::Mesh => "mesh",
        Driver::Vsync => "vsync",
    };
    home.ok_owned(directory.args(&[
        "publish",
        liveobjects_objects::HOSTILE,
        "--name",
        name,
        "--driver",
        driver,
        "--reliability",
        "total-order",
        "--driver-opt",
        &format!("seeds={seed}"),
        "--driver-opt",
        &format!("check-every={every}"),
        "--key",
        acme_key.to_str().unwrap(),
    ]));
}

/// `lo call NAME METHOD ARGS` through node `n`.
fn call(home: &Home, n: usize, name: &str, method: &str, args: &[&str]) -> String {
    let control = control(home, n);
    let mut all = vec!["call", name, method];
    all.extend(args);
    all.extend(["--control", &control]);
    home.ok(&all)
}

fn total(home: &Home, n: usize, name: &str) -> String {
    let out = home.run(&["call", name, "total", "--control", &control(home, n)]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn files_named(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, prefix));
        } else if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_corrupted_mesh_replica_is_found_repaired_and_reported_and_a_split_stops_the_object() {
    corrupted_replica_repaired_and_split_stopped(Driver::Mesh);
}

#[test]
fn a_corrupted_vsync_replica_is_found_repaired_and_reported_and_a_split_stops_the_object() {
    corrupted_replica_repaired_and_split_stopped(Driver::Vsync);
}

fn corrupted_replica_repaired_and_split_stopped(driver: Driver) {
    let home = Home::new();
    let directory = directory_with_acme_zone(&home);
    let (_nodes, seeds, _) = start_nodes(&home, &directory, driver, 3, |_| Vec::new());
    let key = |n: usize| seeds[n - 1].split('@').next().unwrap().to_string();
    publish_checked(&home, &directory, driver, REPAIRED, &seeds[0], 4);
    for n in 1..=3 {
        join_at(&home, n, REPAIRED, n == 1);
    }
    for n in 1..=3 {
        call(&home, 1, REPAIRED, "add", &[&n.to_string()]);
    }
    // Node 2's replica alone adds 1,000.
    call(&home, 3, REPAIRED, "corrupt", &[&format!("\"{}\"", key(2))]);
    for n in 4..=12 {
        call(&home, 1, REPAIRED, "add", &[&n.to_string()]);
    }
    let expected = (1..=12).sum::<u64>().to_string();
    eventually(
        30,
        "node 2 repaired and every replica at the majority's total",
        || {
            status(&home, 2, REPAIRED)["divergence"]
                .as_str()
                .is_some_and(|d| d.contains("repaired at position"))
                && (1..=3).all(|n| total(&home, n, REPAIRED) == expected)
        },
    );
    let report = status(&home, 2, REPAIRED);
    let divergence = report["divergence"].as_str().unwrap();
    assert!(
        divergence.contains("diverged at position") && divergence.contains("2 of 3 replicas agree"),
        "{divergence}"
    );
    let text = home.ok(&["status", "--control", &control(&home, 2)]);
    assert!(text.contains("diverged at position"), "{text}");
    for n in [1, 3] {
        let report = status(&home, n, REPAIRED);
        assert!(report["divergence"].is_null(), "node {n}: {report}");
        assert!(
            report["check"]
                .as_str()
                .is_some_and(|c| c.contains("replicas agree")),
            "node {n}: {report}"
        );
    }
    // Its evidence: the report, its own state and the majority's.
    let evidence = files_named(home.dir.path(), "divergence.txt");
    assert_eq!(evidence.len(), 1, "{evidence:?}");
    let said = std::fs::read_to_string(&evidence[0]).unwrap();
    assert!(said.contains("majority sha256"), "{said}");
    let folder = evidence[0].parent().unwrap();
    assert_eq!(files_named(folder, "diverged-at-").len(), 1);
    assert_eq!(files_named(folder, "majority-at-").len(), 1);
    // Calls go on after the repair, at every node.
    home.ok(&[
        "call",
        REPAIRED,
        "add",
        "100",
        "--control",
        &control(&home, 2),
    ]);
    let expected = (100 + (1..=12).sum::<u64>()).to_string();
    eventually(20, "the update after the repair everywhere", || {
        (1..=3).all(|n| total(&home, n, REPAIRED) == expected)
    });

    // Two replicas, each its own state: nobody has a majority, both stop.
    publish_checked(&home, &directory, driver, SPLIT, &seeds[0], 2);
    join_at(&home, 1, SPLIT, true);
    join_at(&home, 2, SPLIT, false);
    home.ok(&["call", SPLIT, "diverge", "--control", &control(&home, 1)]);
    home.ok(&["call", SPLIT, "add", "1", "--control", &control(&home, 1)]);
    eventually(30, "the split object stopped at both nodes", || {
        (1..=2).all(|n| {
            status(&home, n, SPLIT)["quarantined"]
                .as_str()
                .is_some_and(|q| q.contains("no majority"))
        })
    });
    let out = home.run(&["call", SPLIT, "total", "--control", &control(&home, 1)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no majority"),
        "{err}"
    );
    // The other object is untouched.
    home.ok(&[
        "call",
        REPAIRED,
        "add",
        "1",
        "--control",
        &control(&home, 3),
    ]);
}
