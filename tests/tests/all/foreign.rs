//! A guest written in Python (componentize-py) runs on the same host through the same
//! WIT: proof that the WIT, not the Rust SDK, is the contract.
//!
//! Needs `componentize-py` on PATH (`pip install componentize-py==0.25.1`; `.ci/run`
//! installs it). Without it the test fails and says so, rather than pass silently.

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
    let result = Command::new("componentize-py")
        .arg("-d")
        .arg(root.join("wit"))
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
        .current_dir(&app_dir)
        .env("RUST_BACKTRACE", "0")
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run componentize-py ({e}); install it with \
             `pip install componentize-py==0.25.1` (as .ci/run does)"
        ),
    };
    assert!(
        output.status.success(),
        "componentize-py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

#[test]
fn a_python_object_replicates_snapshots_and_restores_like_a_rust_one() {
    let component = build_python_tally();
    // Python components take seconds to compile: use a disk cache, as hosts do; and
    // pooled instance slots, as `lo node` runs them (a Python component has more
    // core instances than a Rust one).
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("compiled")),
        limits: Limits::default(),
        pooled_instances: Some(8),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let logic = runtime.load_file(&component).unwrap();
    let names = logic.interface().method_names();
    assert_eq!(
        names,
        ["add", "count", "top"],
        "only the tally interface is callable"
    );

    let mut group =
        LocalGroup::start(&runtime, &logic, "test:tally", &["py1", "py2"], None).unwrap();
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
        .instantiate(&logic, ReplicaIdentity::local("test:tally", "py3"))
        .unwrap();
    restored.init(Some(&a)).unwrap();
    assert_eq!(
        restored
            .call_wave("count", &["\"wasm\""])
            .unwrap()
            .results_wave(),
        ["1"]
    );

    // The Python object's own validation reaches the host as a rejection.
    let bad = liveobjects_host::runtime::Event {
        sender: "py1".into(),
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
