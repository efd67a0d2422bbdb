//! The README's quick start, run as a new user would: every shell block of it, with
//! `lo` the binary this build made. Two lines are changed, and say so: the main
//! job's `rustup target add ... && cargo run --release --bin lo --` prefix (the
//! target is installed and the binary built: what remains is `lo demo`), and
//! `bash .ci/run`, which is what runs this test, so it is not run again inside it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap()
}

/// The `sh` code blocks between `## Quick start` and the next `## ` heading.
fn quick_start_blocks(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## Quick start\n")
        .nth(1)
        .expect("the README has a `## Quick start` section");
    let section = section.split("\n## ").next().unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "an unclosed code block in the quick start"
    );
    blocks
}

/// What the test runs for one line of the quick start, or why it does not run it.
fn runnable(line: &str) -> Result<String, &'static str> {
    const MAIN_JOB: &str = "rustup target add wasm32-wasip2 && cargo run --release --bin lo -- ";
    if line.trim() == "bash .ci/run" {
        return Err("`bash .ci/run` is what runs this test");
    }
    Ok(match line.strip_prefix(MAIN_JOB) {
        Some(rest) => format!("lo {rest}"),
        None => line.to_string(),
    })
}

#[test]
fn every_shell_block_of_the_readme_quick_start_runs() {
    let readme = readme();
    let blocks = quick_start_blocks(&readme);
    assert!(blocks.len() >= 3, "{blocks:?}");
    let home = tempfile::tempdir().unwrap();
    // `lo` on PATH is this build's binary.
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_lo"), bin.join("lo")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The user's HOME is the test's own; cargo and rustup keep theirs.
    let real_home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let rustup = std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup"));
    let cargo = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo"));
    let target: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lo-new-target");
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut ran = 0;
    for block in &blocks {
        let mut script = String::from("set -euo pipefail\n");
        for line in block.lines() {
            match runnable(line) {
                Ok(command) => {
                    script.push_str(&command);
                    script.push('\n');
                    ran += 1;
                }
                Err(why) => eprintln!("quick start: not running `{line}`: {why}"),
            }
        }
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(&work)
            .env("PATH", &path)
            .env("HOME", home.path())
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("RUSTUP_HOME", &rustup)
            .env("CARGO_HOME", &cargo)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("LO_CONTROL")
            .env_remove("LO_DIRECTORY")
            .env_remove("LO_ROOT_KEY")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the quick start's block failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // What the blocks promise, beyond exiting 0.
        if script.contains("lo demo") {
            assert!(
                stdout.contains("Done:") && !stdout.contains("DIFFER"),
                "{stdout}"
            );
        }
        if script.contains("lo call hits/hits.wasm get") {
            assert!(stdout.lines().any(|l| l == "5"), "{stdout}");
        }
    }
    assert!(ran >= 6, "only {ran} quick-start lines ran");
}
