//! Process harness shared by the tests that run `lo` as real processes: a private
//! home directory per test, and daemons killed when dropped.
#![allow(dead_code)] // Each test module uses its own part of the harness.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Poll `check` every 100 ms until it holds; fail the test after `secs` seconds.
pub fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `call` (an `lo call` that adds) every 25 ms or so until `stop` (at most
/// 2,000 times, within two minutes): how many were acknowledged. A steady
/// flow, not a flood: other tests share the machine.
pub fn call_repeatedly(
    mut call: Command,
    label: String,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut acknowledged = 0;
        for _ in 0..2_000 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            let out = call.output().unwrap();
            if out.status.success() {
                acknowledged += 1;
            } else {
                eprintln!("{label}: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        acknowledged
    })
}

/// A private HOME (config, data, cache) for `lo` processes.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `lo` with this home and none of the caller's `LO_*` settings.
    pub fn lo(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lo"));
        cmd.env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env_remove("LO_DIRECTORY")
            .env_remove("LO_ROOT_KEY")
            .env_remove("LO_CONTROL")
            .env("RUST_BACKTRACE", "0");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.lo().args(args).output().expect("lo runs")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lo {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Run and require exit code 1; returns stderr.
    /// [`Self::ok`] for owned arguments (e.g. from [`DirectoryProcess::args`]).
    pub fn ok_owned(&self, args: Vec<String>) -> String {
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// [`Self::fails`] for owned arguments.
    pub fn fails_owned(&self, args: Vec<String>) -> String {
        self.fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "lo {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// `lo keygen --out FILE`; returns the public key.
    pub fn keygen(&self, file: &str) -> String {
        self.keygen_with(file, &[])
    }

    /// `lo keygen --out FILE --name NAME`; returns the public key.
    pub fn keygen_named(&self, file: &str, name: &str) -> String {
        self.keygen_with(file, &["--name", name])
    }

    fn keygen_with(&self, file: &str, extra: &[&str]) -> String {
        let path = self.path(file);
        let mut args = vec!["keygen", "--out", path.to_str().unwrap()];
        args.extend(extra);
        let out = self.ok(&args);
        out.lines()
            .find_map(|l| l.strip_prefix("public key "))
            .expect("keygen prints the public key")
            .to_string()
    }
}

/// A child process killed (SIGKILL) when dropped; `lines` are its first stdout lines.
pub struct Daemon {
    pub child: Child,
    pub lines: Vec<String>,
}

impl Daemon {
    /// Spawn `cmd` and read stdout until a line starting with each of `wait_for` was
    /// printed; the rest of stdout is drained so the process never writes into a
    /// closed pipe.
    pub fn start(mut cmd: Command, wait_for: &[&str]) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = Vec::new();
        while !wait_for
            .iter()
            .all(|w| lines.iter().any(|l: &String| l.starts_with(w)))
        {
            lines.push(
                reader
                    .next()
                    .expect("daemon printed its startup lines")
                    .unwrap(),
            );
        }
        std::thread::spawn(move || for _ in reader {});
        Daemon { child, lines }
    }

    /// The rest of the first startup line beginning with `prefix`.
    pub fn value(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap()
            .to_string()
    }

    pub fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `lo directory serve` child process, killed when dropped.
pub struct DirectoryProcess {
    pub daemon: Daemon,
    pub addr: String,
    pub root: String,
}

impl DirectoryProcess {
    /// A test directory: any key may create a top-level zone.
    pub fn start(home: &Home, root_key: &Path, db: &Path) -> Self {
        Self::start_with(home, root_key, db, &["--registration", "open"])
    }

    /// With `extra` arguments to `lo directory serve`.
    pub fn start_with(home: &Home, root_key: &Path, db: &Path, extra: &[&str]) -> Self {
        let mut cmd = home.lo();
        cmd.args([
            "directory",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-blob-bytes",
            "1000000",
        ])
        .arg("--root-key")
        .arg(root_key)
        .arg("--db")
        .arg(db)
        .args(extra);
        let daemon = Daemon::start(cmd, &["directory listening on ", "root key "]);
        DirectoryProcess {
            addr: daemon.value("directory listening on "),
            root: daemon.value("root key "),
            daemon,
        }
    }

    /// `args` followed by the flags that point `lo` at this directory.
    pub fn args(&self, args: &[&str]) -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain([
                "--directory".into(),
                self.addr.clone(),
                "--root".into(),
                self.root.clone(),
            ])
            .collect()
    }

    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }
}
