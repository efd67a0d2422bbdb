//! Benchmark rows as JSON lines, so runs can be compared by a script: one object
//! per row (`bench`, `row` labels, `ours`, `peer`, `ratio`, `unit`, `peer_name`)
//! in `target/bench/<bench>.json`, which each run of the bench rewrites.

use serde_json::{Value as Json, json};
use std::io::Write;
use std::path::PathBuf;

/// The JSON-lines file of one bench run.
pub struct Report {
    bench: &'static str,
    path: PathBuf,
    file: std::fs::File,
}

impl Report {
    /// Start `target/bench/<bench>.json` afresh (`CARGO_TARGET_DIR` if set).
    pub fn create(bench: &'static str) -> Report {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let dir = target.join("bench");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let dir = dir.canonicalize().unwrap_or(dir);
        let path = dir.join(format!("{bench}.json"));
        let file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Report { bench, path, file }
    }

    /// One row: `row` names it (members, size, ...); `ours` and the peer's
    /// measurement of the same thing in the same run (`None` if the peer could
    /// not run), in `unit` (higher is better unless the unit says otherwise).
    pub fn row(&mut self, row: Json, ours: f64, peer: Option<(&str, f64)>, unit: &str) {
        let line = json!({
            "bench": self.bench,
            "row": row,
            "ours": ours,
            "peer_name": peer.map(|(name, _)| name),
            "peer": peer.map(|(_, value)| value),
            "ratio": peer.map(|(_, value)| ours / value),
            "unit": unit,
        });
        writeln!(self.file, "{line}")
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.path.display()));
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        println!("(rows as JSON lines in {})", self.path.display());
    }
}
