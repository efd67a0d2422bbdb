//! Builds every crate of the `objects/` workspace for `wasm32-wasip2` with a nested
//! `cargo build`, the way wasmtime's `test-programs-artifacts` crate does, so that a
//! plain `cargo build` / `cargo test` of the root workspace produces the components.
//!
//! The nested build uses its own target directory (`target/wasm-objects`) so it never
//! waits on the lock of the outer build.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Components built from `objects/`: (constant name, crate name, shipped to users?).
const OBJECTS: &[(&str, &str, bool)] = &[
    ("COUNTER", "counter", true),
    ("REGISTER", "register", true),
    ("CHAT", "chat", true),
    ("TICKER", "ticker", true),
    ("CENSUS", "census", true),
    ("AVERAGE", "average", true),
    ("MAX", "max", true),
    ("LEDGER", "ledger", true),
    ("CARDTABLE", "cardtable", true),
    ("DOC", "doc", true),
    ("HOSTILE", "hostile", false),
    ("HOSTILE_AGGREGATE", "hostile_aggregate", false),
    ("STRANGER", "stranger", false),
    ("LEGACY_COUNTER", "legacy_counter", false),
    ("COUNTER_V2", "counter_v2", false),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let objects_dir = manifest_dir.parent().unwrap().to_path_buf();
    let repo_dir = objects_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out (or one level deeper with
    // --target); put the guests next to the profile directories.
    let target_dir = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent())
        .and_then(|profile| profile.parent())
        .map(|t| t.join("wasm-objects"))
        .unwrap_or_else(|| out_dir.join("wasm-objects"));

    for watched in [
        objects_dir.join("Cargo.toml"),
        objects_dir.join("Cargo.lock"),
        objects_dir.join("counter"),
        objects_dir.join("register"),
        objects_dir.join("chat"),
        objects_dir.join("ticker"),
        objects_dir.join("census"),
        objects_dir.join("average"),
        objects_dir.join("max"),
        objects_dir.join("ledger"),
        objects_dir.join("cardtable"),
        objects_dir.join("doc"),
        objects_dir.join("testing"),
        repo_dir.join("guest-sdk"),
        repo_dir.join("wit"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target=wasm32-wasip2")
        .arg("--manifest-path")
        .arg(objects_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&objects_dir);
    // Flags meant for the host build (e.g. -C target-cpu=native) must not leak into
    // the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("failed to run cargo for the objects");
    if !status.success() {
        panic!(
            "building the objects in {} for wasm32-wasip2 failed ({status}).\n\
             Is the target installed? Run: rustup target add wasm32-wasip2",
            objects_dir.display()
        );
    }

    let built = target_dir.join("wasm32-wasip2").join("release");
    let mut generated = String::new();
    for (constant, krate, shipped) in OBJECTS {
        let path = built.join(format!("{krate}.wasm"));
        assert!(
            path.exists(),
            "expected component {} after the build",
            path.display()
        );
        let visibility = if *shipped {
            "shipped object"
        } else {
            "test-only object"
        };
        writeln!(
            generated,
            "/// Path of the `{krate}` component ({visibility}).\n\
             pub const {constant}: &str = {path:?};"
        )
        .unwrap();
        if *shipped {
            writeln!(
                generated,
                "/// Bytes of the `{krate}` component.\n\
                 pub const {constant}_BYTES: &[u8] = include_bytes!({path:?});"
            )
            .unwrap();
        }
    }
    std::fs::write(Path::new(&out_dir).join("objects.rs"), generated).unwrap();
}
