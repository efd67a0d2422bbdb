//! Helpers shared by the integration tests in `tests/tests/`.
#![deny(missing_docs)]

use liveobjects_host::runtime::{Limits, Logic, Runtime, RuntimeConfig};
use std::path::Path;
use std::sync::Arc;

pub use liveobjects_objects as objects;

/// A runtime with default limits and no disk cache (each test compiles what it uses).
pub fn runtime() -> Runtime {
    runtime_with(Limits::default())
}

/// A runtime with the given limits and no disk cache.
pub fn runtime_with(limits: Limits) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        limits,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts")
}

/// Load a built object by path (see [`objects`]).
pub fn load(runtime: &Runtime, path: &str) -> Arc<Logic> {
    runtime
        .load_file(Path::new(path))
        .unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

/// A fixed, steadily increasing event clock for reproducible tests.
pub fn fixed_clock(start_ms: u64) -> liveobjects_host::local::TimeSource {
    let mut now = start_ms;
    Box::new(move || {
        now += 7;
        now
    })
}

/// A small deterministic generator (an LCG), so every run replays the same workload.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next 31-bit value.
    pub fn next_u31(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}
