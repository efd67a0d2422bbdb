//! Guests written in Python (componentize-py) and JavaScript (componentize-js) run on
//! the same host through the same WIT, and answer alike: proof that the WIT, not the
//! Rust SDK, is the contract.
//!
//! Needs `componentize-py` (`pip install componentize-py==0.25.1`) and
//! `componentize-js` (`npm install @bytecodealliance/componentize-js@0.23.0`) on
//! PATH; `.ci/run` installs both. Without one its test fails and says so, rather than
//! pass silently.

use liveobjects_host::local::LocalGroup;
use liveobjects_host::runtime::{Limits, ReplicaIdentity, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn build_python_tally() -> PathBuf {
    let root = repo_root();
    let app_dir = root.join("objects/python/tally");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tally-python.wasm");
    let mut build = Command::new("componentize-py");
    build
        .arg("-d")
        .arg(root.join("wit/deps/object-0.1"))
        .arg("-d")
        .arg(app_dir.join("wit"))
        .args([
            "-w",
            "liveobjects:tally/tally-object@0.1.0",
            "componentize",
            "app",
            "-o",
        ])
        .arg(&out)
        .current_dir(&app_dir);
    run_build(build, "pip install componentize-py==0.25.1");
    out
}

fn build_javascript_tally() -> PathBuf {
    let root = repo_root();
    let app_dir = root.join("objects/js/tally");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // componentize-js reads one WIT folder, with the object WIT under deps/.
    let wit = tmp.join("tally-js-wit");
    std::fs::create_dir_all(wit.join("deps/object")).unwrap();
    std::fs::copy(app_dir.join("wit/tally.wit"), wit.join("tally.wit")).unwrap();
    std::fs::copy(
        root.join("wit/deps/object-0.1/object.wit"),
        wit.join("deps/object/object.wit"),
    )
    .unwrap();
    let out = tmp.join("tally-js.wasm");
    let mut build = Command::new("componentize-js");
    build
        .arg(app_dir.join("app.js"))
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", "liveobjects:tally/tally-object@0.1.0"])
        .args([
            "-d",
            "stdio",
            "random",
            "clocks",
            "http",
            "fetch-event",
            "-o",
        ])
        .arg(&out);
    run_build(
        build,
        "npm install @bytecodealliance/componentize-js@0.23.0",
    );
    out
}

/// Run a guest toolchain; a missing one fails the test with how to install it.
fn run_build(mut build: Command, install: &str) {
    let tool = build.get_program().to_string_lossy().to_string();
    let output = match build.env("RUST_BACKTRACE", "0").output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {tool} ({e}); install it with `{install}` (as .ci/run does)"),
    };
    assert!(
        output.status.success(),
        "{tool} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_python_object_replicates_snapshots_and_restores_like_a_rust_one() {
    tally_replicates_snapshots_and_restores(&build_python_tally(), "py");
}

#[test]
fn a_javascript_object_replicates_snapshots_and_restores_like_a_rust_one() {
    tally_replicates_snapshots_and_restores(&build_javascript_tally(), "js");
}

/// The tally's behaviour, whatever language `component` was written in; replicas
/// are named `{prefix}1` and so on.
fn tally_replicates_snapshots_and_restores(component: &Path, prefix: &str) {
    // These components take seconds to compile: use a disk cache, as hosts do; and
    // pooled instance slots, as `lo node` runs them (they have more core instances
    // than a Rust one).
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("compiled")),
        limits: Limits::default(),
        pooled_instances: Some(8),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let logic = runtime.load_file(component).unwrap();
    let names = logic.interface().method_names();
    assert_eq!(
        names,
        ["add", "count", "top"],
        "only the tally interface is callable"
    );

    let members = [format!("{prefix}1"), format!("{prefix}2")];
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut group = LocalGroup::start(&runtime, &logic, "test:tally", &members, None).unwrap();
    let words = ["live", "objects", "live", "wasm", "live", "objects"];
    for (i, word) in words.iter().enumerate() {
        let outcome = group.call(i % 2, "add", &[&format!("{word:?}")]).unwrap();
        assert!(outcome.problems().is_empty(), "{:?}", outcome.problems());
    }
    for i in 0..2 {
        let r = group.replica_mut(i);
        assert_eq!(
            r.call_wave("count", &["\"live\""]).unwrap().results_wave(),
            ["3"]
        );
        assert_eq!(
            r.call_wave("top", &["2"]).unwrap().results_wave(),
            ["[(\"live\", 3), (\"objects\", 2)]"]
        );
    }
    let a = group.replica_mut(0).snapshot().unwrap();
    let b = group.replica_mut(1).snapshot().unwrap();
    assert_eq!(a, b);
    assert_eq!(
        String::from_utf8(a.clone()).unwrap(),
        r#"{"live":3,"objects":2,"wasm":1}"#
    );

    // Restore into a fresh replica and compare answers.
    let mut restored = runtime
        .instantiate(
            &logic,
            ReplicaIdentity::local("test:tally", format!("{prefix}3")),
        )
        .unwrap();
    restored.init(Some(&a)).unwrap();
    assert_eq!(
        restored
            .call_wave("count", &["\"wasm\""])
            .unwrap()
            .results_wave(),
        ["1"]
    );

    // The object's own validation reaches the host as a rejection.
    let bad = liveobjects_host::runtime::Event {
        sender: members[0].into(),
        seq: 99,
        timestamp_ms: 1,
        payload: vec![0xff, 0xfe],
    };
    let delivery = restored.deliver(&bad).unwrap();
    let reason = delivery.rejected.expect("invalid UTF-8 must be rejected");
    assert!(reason.contains("not UTF-8"), "{reason}");
    assert_eq!(
        restored.snapshot().unwrap(),
        a,
        "a rejected event changes nothing"
    );
}
