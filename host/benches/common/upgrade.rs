//! What the mesh and vsync benches share to measure a live upgrade's pause: a
//! source of newer logic armed on cue, and the sandbox's own cost of the switch.

use liveobjects_host::driver::{BoxFuture, Evolution, LogicError, LogicSource, LogicVersion};
use liveobjects_host::runtime::{Logic, ReplicaIdentity, Runtime};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Newer logic for the upgrade-pause rows: version 2 (the same logic) once
/// armed. No directory: the record is a label, the logic loaded already.
pub struct ArmedSource {
    armed: AtomicBool,
    v2: LogicVersion,
}

impl ArmedSource {
    /// A source of `logic` as version 2 on `driver`, and the evolution of a
    /// group that starts on version 1 and looks for newer logic every 20 ms.
    pub fn new(logic: &Arc<Logic>, driver: &str) -> (Arc<ArmedSource>, Evolution) {
        let source = Arc::new(ArmedSource {
            armed: AtomicBool::new(false),
            v2: LogicVersion {
                version: 2,
                record: b"bench record, version 2".to_vec(),
                driver: driver.to_string(),
                logic: logic.clone(),
            },
        });
        let evolution = Evolution {
            version: 1,
            record: b"bench record, version 1".to_vec(),
            source: Some(source.clone()),
            poll_every: Duration::from_millis(20),
        };
        (source, evolution)
    }

    /// From now on, version 2 is there to be found.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }
}

impl LogicSource for ArmedSource {
    fn newer<'a>(
        &'a self,
        _name: &'a str,
        than: u64,
    ) -> BoxFuture<'a, Result<Option<LogicVersion>, LogicError>> {
        let armed = self.armed.load(Ordering::Relaxed);
        let found = (armed && than < self.v2.version).then(|| self.v2.clone());
        Box::pin(async move { Ok(found) })
    }

    fn verify<'a>(
        &'a self,
        _name: &'a str,
        record: &'a [u8],
    ) -> BoxFuture<'a, Result<LogicVersion, LogicError>> {
        let found = if record == self.v2.record {
            Ok(self.v2.clone())
        } else {
            Err(LogicError::Refused("not the bench's record".to_string()))
        };
        Box::pin(async move { found })
    }
}

/// A runtime for the upgrade-pause rows: a 10 MiB state is held twice during
/// a switch (the old state's snapshot and the new instance decoding it), past
/// the default 64 MiB cap once the host's own copy counts; the rows measure
/// the switch, not the cap, so objects get 256 MiB.
pub fn pause_runtime(cache: &std::path::Path) -> Runtime {
    let defaults = liveobjects_host::runtime::RuntimeConfig::default();
    Runtime::new(liveobjects_host::runtime::RuntimeConfig {
        cache_dir: Some(cache.to_path_buf()),
        limits: liveobjects_host::runtime::Limits {
            memory_bytes: 256 << 20,
            ..defaults.limits
        },
        ..defaults
    })
    .unwrap()
}

/// The median of three `Replica::upgrade`s of a lone replica holding
/// `snapshot`: the sandbox's own cost of the switch (snapshot, `migrate`,
/// a fresh instance, `init`).
pub fn lone_switch(runtime: &Runtime, logic: &Arc<Logic>, snapshot: &[u8]) -> Duration {
    let mut took = Vec::new();
    for _ in 0..3 {
        let identity = ReplicaIdentity {
            object: "bench".to_string(),
            member: "lone".to_string(),
        };
        let mut replica = runtime.instantiate(logic, identity).unwrap();
        replica.init(Some(snapshot)).unwrap();
        let t = Instant::now();
        replica.upgrade(logic.clone(), 1, 2).unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    took[1]
}

/// The message and how many posts of it make a chat state of about `state`
/// bytes (messages of up to 4,000 bytes, as WAVE text).
fn posts_for(state: usize) -> (String, usize) {
    let size = state.min(4000);
    (format!("\"{}\"", "x".repeat(size)), state.div_ceil(size))
}

/// Posters filling the chat at once.
const POSTERS: usize = 32;

/// Fill the chat to about `state` bytes ([`posts_for`]), [`POSTERS`] posts in
/// flight: `post(t, text)` is poster `t`'s call.
pub async fn fill_chat<Fut>(state: usize, post: impl Fn(usize, String) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let (text, posts) = posts_for(state);
    let mut posters = Vec::new();
    for t in 0..POSTERS {
        let share = posts / POSTERS + usize::from(t < posts % POSTERS);
        let calls: Vec<Fut> = (0..share).map(|_| post(t, text.clone())).collect();
        posters.push(tokio::spawn(async move {
            for call in calls {
                call.await;
            }
        }));
    }
    for poster in posters {
        poster.await.unwrap();
    }
}

/// One caller's calls, one at a time: 200 before arming `source` (their p50
/// is the first result), then on until `switched` has held for 50 calls (at
/// most 60 s); the second result is the longest any call took after arming.
pub async fn measure_pause(
    source: &ArmedSource,
    mut call: impl AsyncFnMut(),
    switched: impl Fn() -> bool,
) -> (Duration, Duration) {
    let mut before = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        call().await;
        before.push(t.elapsed());
    }
    before.sort();
    source.arm();
    let mut pause = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = 0;
    while after < 50 {
        assert!(
            Instant::now() < deadline,
            "the group did not switch in 60 s"
        );
        let t = Instant::now();
        call().await;
        pause = pause.max(t.elapsed());
        if switched() {
            after += 1;
        }
    }
    (before[before.len() / 2], pause)
}
