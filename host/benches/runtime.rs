//! Runtime benchmark: events per second through a guest's `deliver` against the same
//! counter written in native Rust, measured in the same run, plus method-call and
//! instantiation costs. Prints a table; see `host/benches/README.md`.
//!
//! Run: `cargo bench -p liveobjects-host --bench runtime` (add `-- --quick` for a
//! shorter run).

#[path = "common/report.rs"]
mod report;
use liveobjects_host::runtime::{Event, MAX_BATCH_EVENTS, ReplicaIdentity, Runtime, RuntimeConfig};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

/// The counter object's state and event, exactly as in `objects/counter`.
#[derive(Default, Serialize, Deserialize)]
struct NativeCounter {
    value: i64,
    updates: u64,
}

#[derive(Serialize, Deserialize)]
enum CounterEvent {
    Add(i64),
}

impl NativeCounter {
    /// What the guest does per event: decode the postcard payload, apply it.
    fn deliver(&mut self, event: &Event) -> Result<(), String> {
        let CounterEvent::Add(n) =
            postcard::from_bytes(&event.payload).map_err(|e| e.to_string())?;
        self.value = self.value.wrapping_add(n);
        self.updates += 1;
        Ok(())
    }
}

/// 32 bytes of event data: 8-byte sender, 8-byte seq, 8-byte timestamp, 8-byte payload.
fn events(count: usize) -> Vec<Event> {
    // Add(2^45): zigzag 2^46 needs 47 bits, 7 varint bytes, plus 1 tag byte.
    let n: i64 = 1 << 45;
    let payload = postcard::to_allocvec(&CounterEvent::Add(n)).unwrap();
    assert_eq!(payload.len(), 8);
    (0..count)
        .map(|i| Event {
            sender: "bench-01".to_string(),
            seq: i as u64 + 1,
            timestamp_ms: 1_700_000_000_000 + i as u64,
            payload: payload.clone(),
        })
        .collect()
}

/// Median of `rounds` timings of `f`, which performs `ops` operations each time.
fn measure(rounds: usize, ops: usize, mut f: impl FnMut()) -> f64 {
    let mut per_op: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() / ops as f64
        })
        .collect();
    per_op.sort_by(|a, b| a.partial_cmp(b).unwrap());
    per_op[per_op.len() / 2]
}

fn fmt_time(secs: f64) -> String {
    if secs < 1e-6 {
        format!("{:.0} ns", secs * 1e9)
    } else if secs < 1e-3 {
        format!("{:.2} us", secs * 1e6)
    } else {
        format!("{:.2} ms", secs * 1e3)
    }
}

fn main() {
    if let Ok(spec) = std::env::var(isolation::IDLE_CHILD) {
        isolation::idle_child(&spec);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, count) = if quick { (3, 20_000) } else { (7, 100_000) };
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let path = Path::new(liveobjects_objects::COUNTER);
    let events = events(count);

    // Native baseline.
    let native = measure(rounds, count, || {
        let mut c = NativeCounter::default();
        for e in &events {
            c.deliver(black_box(e)).unwrap();
        }
        black_box(c.value);
    });

    // Guest deliver through the full replica path (fuel, clock, seed, log, checkpoints).
    let logic = runtime.load_file(path).unwrap();
    let guest = measure(rounds, count, || {
        let mut r = runtime
            .instantiate(&logic, ReplicaIdentity::local("bench:counter", "m1"))
            .unwrap();
        r.init(None).unwrap();
        for e in &events {
            r.deliver(black_box(e)).unwrap();
        }
    });

    // The same through `deliver-batch` (contract 0.2), as drivers hand over queued
    // events: up to MAX_BATCH_EVENTS per call.
    let batched = measure(rounds, count, || {
        let mut r = runtime
            .instantiate(&logic, ReplicaIdentity::local("bench:counter", "m1"))
            .unwrap();
        r.init(None).unwrap();
        // In runs of at most MAX_BATCH_EVENTS, as drivers hand them over.
        for run in events.chunks(MAX_BATCH_EVENTS) {
            for outcome in r.deliver_batch(black_box(run)) {
                outcome.unwrap();
            }
        }
        assert!(r.stats().batches > 0, "the counter takes batches");
    });
    // The peer: the same export called with wasmtime's typed bindings and nothing
    // else (default engine: no fuel, no deadlines, no rollback log), the batches
    // packed beforehand.
    let bare_wasmtime = bare::deliver_batch(rounds, &bytes_of(path), &events);

    // Method call by name with typed values (a query).
    let mut replica = runtime
        .instantiate(&logic, ReplicaIdentity::local("bench:counter", "m1"))
        .unwrap();
    replica.init(None).unwrap();
    let get = replica.method("get").unwrap();
    let calls = count / 4;
    let query = measure(rounds, calls, || {
        for _ in 0..calls {
            black_box(replica.call(&get, &[]).unwrap());
        }
    });

    // Loading: cold compile vs the compiled cache.
    let bytes = std::fs::read(path).unwrap();
    let uncached = Runtime::new(RuntimeConfig::default()).unwrap();
    let cold = measure(rounds.min(5), 1, || {
        black_box(uncached.load_bytes("counter.wasm", &bytes).unwrap());
    });
    let cached = measure(rounds, 20, || {
        for _ in 0..20 {
            black_box(runtime.load_bytes("counter.wasm", &bytes).unwrap());
        }
    });
    let inst_ops = 200;
    let instantiate = measure(rounds, inst_ops, || {
        for _ in 0..inst_ops {
            let mut r = runtime
                .instantiate(&logic, ReplicaIdentity::local("bench:counter", "m1"))
                .unwrap();
            r.init(None).unwrap();
            black_box(r);
        }
    });

    println!();
    println!("liveobjects runtime benchmark ({count} events of 32 B, median of {rounds} rounds)");
    println!(
        "{:<48} {:>12} {:>14}  compared with",
        "measurement", "per op", "ops/s"
    );
    let row = |name: &str, secs: f64, compared: String| {
        println!(
            "{:<48} {:>12} {:>14.0}  {}",
            name,
            fmt_time(secs),
            1.0 / secs,
            compared
        );
    };
    row(
        "native Rust counter: decode + apply",
        native,
        "(baseline for deliver)".into(),
    );
    row(
        "guest counter: Replica::deliver",
        guest,
        format!("{:.0}x slower than native", guest / native),
    );
    row(
        "guest counter: Replica::deliver_batch",
        batched,
        format!(
            "{:.1}x native, {:.2}x bare wasmtime",
            batched / native,
            batched / bare_wasmtime
        ),
    );
    row(
        "bare wasmtime: typed deliver-batch call",
        bare_wasmtime,
        format!(
            "(baseline for batches) {:.1}x native",
            bare_wasmtime / native
        ),
    );
    row(
        "guest query by name: Replica::call(get)",
        query,
        String::new(),
    );
    row(
        "load component: cold compile",
        cold,
        "(baseline for loading)".into(),
    );
    row(
        "load component: from compiled cache",
        cached,
        format!("{:.0}x faster than compiling", cold / cached),
    );
    row(
        "instantiate + init from cached component",
        instantiate,
        String::new(),
    );
    let mut report = report::Report::create("runtime");
    report.row(
        serde_json::json!({"measure": "counter deliver"}),
        1.0 / guest,
        Some(("native Rust counter", 1.0 / native)),
        "events/s",
    );
    report.row(
        serde_json::json!({"measure": "counter deliver-batch"}),
        1.0 / batched,
        Some(("bare wasmtime typed deliver-batch", 1.0 / bare_wasmtime)),
        "events/s",
    );
    report.row(
        serde_json::json!({"measure": "counter deliver-batch vs native"}),
        1.0 / batched,
        Some(("native Rust counter", 1.0 / native)),
        "events/s",
    );
    report.row(
        serde_json::json!({"measure": "component load"}),
        1.0 / cached,
        Some(("cold compile", 1.0 / cold)),
        "loads/s",
    );
    drop(report);
    println!();
    println!(
        "guest deliver throughput is 1/{:.0} of native ({:.0} vs {:.0} events/s); \
         the cache loads {:.0}x faster than compiling",
        guest / native,
        1.0 / guest,
        1.0 / native,
        cold / cached
    );
    isolation::run(quick, &events);
}

fn bytes_of(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The peer for batched delivery: a bare wasmtime embedding of the same component
/// calling its `deliver-batch` export through typed bindings.
mod bare {
    use super::measure;
    use liveobjects_host::runtime::bindings::liveobjects::object0_1_0::{host, types};
    use liveobjects_host::runtime::bindings_0_2::Object;
    use liveobjects_host::runtime::{BatchedEvent, Event, EventBatch, MAX_BATCH_EVENTS, View};
    use std::hint::black_box;
    use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
    use wasmtime::{Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    struct Bare {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for Bare {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl types::Host for Bare {}

    impl host::Host for Bare {
        fn multicast(&mut self, _payload: Vec<u8>) -> wasmtime::Result<()> {
            Ok(())
        }
        fn self_id(&mut self) -> wasmtime::Result<String> {
            Ok("bench".into())
        }
        fn current_view(&mut self) -> wasmtime::Result<View> {
            Ok(View {
                id: 1,
                members: vec!["bench".into()],
            })
        }
        fn notify(&mut self, _topic: String, _detail: String) -> wasmtime::Result<()> {
            Ok(())
        }
        fn log(&mut self, _level: types::LogLevel, _message: String) -> wasmtime::Result<()> {
            Ok(())
        }
    }

    fn pack(events: &[Event]) -> EventBatch {
        let mut payloads = Vec::new();
        let events = events
            .iter()
            .map(|e| {
                payloads.extend_from_slice(&e.payload);
                BatchedEvent {
                    sender: 0,
                    seq: e.seq,
                    timestamp_ms: e.timestamp_ms,
                    payload_end: payloads.len() as u32,
                }
            })
            .collect();
        EventBatch {
            senders: vec!["bench-01".into()],
            events,
            payloads,
        }
    }

    /// Seconds per event.
    pub fn deliver_batch(rounds: usize, component: &[u8], events: &[Event]) -> f64 {
        let engine = Engine::default();
        let component = Component::new(&engine, component).unwrap();
        let mut linker = Linker::<Bare>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
        Object::add_to_linker::<Bare, HasSelf<Bare>>(&mut linker, |s| s).unwrap();
        let batches: Vec<EventBatch> = events.chunks(MAX_BATCH_EVENTS).map(pack).collect();
        measure(rounds, events.len(), || {
            let mut store = Store::new(
                &engine,
                Bare {
                    wasi: WasiCtx::builder().build(),
                    table: ResourceTable::new(),
                },
            );
            let object = Object::instantiate(&mut store, &component, &linker).unwrap();
            let lifecycle = object.liveobjects_object0_2_0_lifecycle();
            lifecycle.call_init(&mut store, None).unwrap().unwrap();
            for batch in &batches {
                let rejected = lifecycle
                    .call_deliver_batch(&mut store, black_box(batch))
                    .unwrap();
                assert!(rejected.is_empty());
            }
        })
    }
}

/// The executor rows: a fast object's throughput alone and beside a slow object
/// and a chain reaction (ratios measured in this run), and the idle cost of 1,000
/// joined mesh objects.
mod isolation {
    use liveobjects_host::executor::{Full, Job, ObjectRef};
    use liveobjects_host::mesh::group::MeshNode;
    use liveobjects_host::runtime::{Event, Limits, ReplicaIdentity, Runtime, RuntimeConfig};
    use liveobjects_protocols::mesh::{Config as MeshConfig, Liveness};
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    fn submit(object: &ObjectRef, bytes: usize, mut job: Job) {
        loop {
            match object.submit(bytes, job) {
                Ok(()) => return,
                Err(Full(back)) => {
                    job = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    /// Deliver `events` to a fresh counter on the executor; events per second.
    fn fast_counter(runtime: &Runtime, events: &[Event]) -> f64 {
        let logic = runtime
            .load_file(Path::new(liveobjects_objects::COUNTER))
            .unwrap();
        let mut replica = runtime
            .instantiate(&logic, ReplicaIdentity::local("bench:fast", "m1"))
            .unwrap();
        replica.init(None).unwrap();
        let object = runtime
            .executor()
            .spawn(replica, runtime.executor().budgets(), |_| {});
        let (done, finished) = std::sync::mpsc::channel();
        let start = Instant::now();
        let last = events.len() - 1;
        for (i, event) in events.iter().enumerate() {
            let event = event.clone();
            let done = done.clone();
            submit(
                &object,
                event.payload.len() + 64,
                Box::new(move |r| {
                    r.unwrap().deliver(&event).unwrap();
                    if i == last {
                        let _ = done.send(());
                    }
                }),
            );
        }
        finished.recv().unwrap();
        events.len() as f64 / start.elapsed().as_secs_f64()
    }

    fn hostile(runtime: &Runtime, name: &str) -> liveobjects_host::runtime::Replica {
        let logic = runtime
            .load_file(Path::new(liveobjects_objects::HOSTILE))
            .unwrap();
        let mut replica = runtime
            .instantiate(&logic, ReplicaIdentity::local(name, "m1"))
            .unwrap();
        replica.init(None).unwrap();
        replica
    }

    /// A slow object: one call at a time, each spinning until its deadline.
    fn start_slow(runtime: &Arc<Runtime>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
        let object = runtime.executor().spawn(
            hostile(runtime, "bench:slow"),
            runtime.executor().budgets(),
            |_| {},
        );
        std::thread::spawn(move || {
            let mut calls = 0;
            while !stop.load(Ordering::Relaxed) {
                let (tx, rx) = std::sync::mpsc::channel();
                submit(
                    &object,
                    0,
                    Box::new(move |r| {
                        let _ = tx.send(r.map(|r| r.call_wave("spin", &[]).is_err()));
                    }),
                );
                match rx.recv() {
                    Ok(Ok(_)) => calls += 1,
                    _ => break,
                }
            }
            calls
        })
    }

    /// A chain reaction: every event's multicasts are delivered back to it, as
    /// its group would, until the executor quarantines it.
    fn start_chain(runtime: &Arc<Runtime>) -> (ObjectRef, std::thread::JoinHandle<u64>) {
        let mut replica = hostile(runtime, "bench:chain");
        let first = replica.call_wave("chain", &[]).unwrap().multicasts;
        let object = runtime
            .executor()
            .spawn(replica, runtime.executor().budgets(), |_| {});
        let feeding = object.clone();
        let feeder = std::thread::spawn(move || {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<Vec<u8>>>();
            tx.send(first).unwrap();
            let mut seq = 0u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Ok(payloads) = rx.recv_timeout(Duration::from_millis(500)) {
                if feeding.quarantined().is_some() || Instant::now() > deadline {
                    break;
                }
                for payload in payloads {
                    seq += 1;
                    let tx = tx.clone();
                    let event = Event {
                        sender: "bench-01".into(),
                        seq,
                        timestamp_ms: seq,
                        payload,
                    };
                    submit(
                        &feeding,
                        64,
                        Box::new(move |r| {
                            if let Ok(d) = r.and_then(|r| r.deliver(&event)) {
                                let _ = tx.send(d.multicasts);
                            }
                        }),
                    );
                }
            }
            seq
        });
        (object, feeder)
    }

    /// Process CPU time (user + system), from /proc/self/stat.
    fn cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }

    fn rss_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// What an idle measurement reports.
    struct Idle {
        /// Share of a core the process used while idle.
        core_share: f64,
        /// RSS per object (all its replicas in the process together).
        rss_per_object: f64,
        /// Frames the mesh hosts sent per second while idle.
        frames_per_sec: f64,
        /// Objects founded (and joined) per second, logic cached.
        joins_per_sec: f64,
    }

    /// Idle cost of `count` mesh objects: single-member objects on one host
    /// (`pair` None), or objects with two members on two hosts in this process
    /// whose heartbeats are per peer or per group.
    fn idle_objects(
        runtime: &Arc<Runtime>,
        count: usize,
        idle: Duration,
        pair: Option<Liveness>,
    ) -> Idle {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(async {
            let host = |liveness| {
                MeshNode::start(
                    &liveobjects_directory::keys::Identity::generate(),
                    "127.0.0.1:0".parse().unwrap(),
                    MeshConfig {
                        liveness,
                        ..MeshConfig::default()
                    },
                )
                .unwrap()
            };
            let liveness = pair.unwrap_or(Liveness::PerPeer);
            let founder = host(liveness);
            let joiner = pair.map(host);
            let logic = runtime
                .load_file(Path::new(liveobjects_objects::COUNTER))
                .unwrap();
            let before = rss_bytes();
            let mut groups = Vec::new();
            let hibernating = runtime.executor().config().hibernate_after;
            let started = Instant::now();
            for i in 0..count {
                // With hibernation the pool is smaller than the object count: join
                // at most HIBERNATED_POOL objects per hibernation delay, so the
                // earlier ones have given their slots back.
                if let Some(after) = hibernating
                    && i > 0
                    && i % (HIBERNATED_POOL as usize / 4) == 0
                {
                    tokio::time::sleep(after).await;
                }
                let object = format!("bench:idle-{i}");
                groups.push(
                    founder
                        .found(runtime, &logic, &object, Default::default())
                        .unwrap(),
                );
                if let Some(joiner) = &joiner {
                    groups.push(
                        joiner
                            .join(runtime, &logic, &object, founder.me(), Default::default())
                            .unwrap(),
                    );
                }
            }
            let joined_in = started.elapsed();
            let members = if joiner.is_some() { 2 } else { 1 };
            let deadline = Instant::now() + Duration::from_secs(120);
            while groups
                .iter()
                .any(|g| g.status_now().members.len() != members)
            {
                assert!(
                    Instant::now() < deadline,
                    "not every idle object had {members} members after 120 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Hibernating objects go to sleep HIBERNATE_AFTER after their last job.
            let settle = match runtime.executor().config().hibernate_after {
                Some(after) => after * 5 + Duration::from_millis(500),
                None => Duration::from_millis(500),
            };
            tokio::time::sleep(settle).await;
            let rss = rss_bytes().saturating_sub(before) as f64 / count as f64;
            let frames = || founder.frames_sent() + joiner.as_ref().map_or(0, |j| j.frames_sent());
            let (cpu0, frames0, t0) = (cpu_time(), frames(), Instant::now());
            tokio::time::sleep(idle).await;
            let secs = t0.elapsed().as_secs_f64();
            let idle = Idle {
                core_share: (cpu_time() - cpu0).as_secs_f64() / secs,
                rss_per_object: rss,
                frames_per_sec: (frames() - frames0) as f64 / secs,
                joins_per_sec: count as f64 / joined_in.as_secs_f64(),
            };
            drop(groups);
            founder.shutdown();
            if let Some(joiner) = joiner {
                joiner.shutdown();
            }
            idle
        })
    }

    /// How soon the `hibernated` case's objects hibernate (`lo node` waits 60 s).
    const HIBERNATE_AFTER: Duration = Duration::from_millis(200);
    /// Sandbox slots of the `hibernated` case, whatever the object count.
    const HIBERNATED_POOL: u32 = 4096;

    /// Set in a child process that measures only idle objects: `MODE:COUNT:SECS`.
    pub const IDLE_CHILD: &str = "LO_BENCH_IDLE_CHILD";

    /// Measure `count` idle objects for `secs` in a fresh process of this bench
    /// (`mode` is `pooled` or `on-demand` for single-member objects, `per-peer`
    /// or `per-group` for two-member objects with those heartbeats).
    fn idle_in_child(mode: &str, count: usize, secs: u64) -> Idle {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(IDLE_CHILD, format!("{mode}:{count}:{secs}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("idle "))
            .unwrap_or_else(|| {
                panic!(
                    "the idle-objects child ({mode}) printed no result: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let mut numbers = line.split(' ').map(|n| n.parse::<f64>().unwrap());
        Idle {
            core_share: numbers.next().unwrap(),
            rss_per_object: numbers.next().unwrap(),
            frames_per_sec: numbers.next().unwrap(),
            joins_per_sec: numbers.next().unwrap(),
        }
    }

    /// The child's side of [`idle_in_child`].
    pub fn idle_child(spec: &str) {
        let mut parts = spec.split(':');
        let (mode, count, secs) = (
            parts.next().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
            parts.next().unwrap().parse::<u64>().unwrap(),
        );
        let pair = match mode {
            "per-peer" => Some(Liveness::PerPeer),
            "per-group" => Some(Liveness::PerGroup),
            _ => None,
        };
        let runtime = Arc::new(
            Runtime::new(RuntimeConfig {
                // Hibernated objects give their slots back: a pool smaller than
                // the object count must do.
                pooled_instances: match mode {
                    "pooled" => Some(count as u32 + 8),
                    "hibernated" => Some((count as u32 + 8).min(HIBERNATED_POOL)),
                    _ => None,
                },
                executor: liveobjects_host::executor::ExecutorConfig {
                    hibernate_after: (mode == "hibernated").then_some(HIBERNATE_AFTER),
                    ..Default::default()
                },
                ..RuntimeConfig::default()
            })
            .unwrap(),
        );
        let idle = idle_objects(&runtime, count, Duration::from_secs(secs), pair);
        println!(
            "idle {} {} {} {}",
            idle.core_share, idle.rss_per_object, idle.frames_per_sec, idle.joins_per_sec
        );
    }

    pub fn run(quick: bool, events: &[Event]) {
        let runtime = Arc::new(
            Runtime::new(RuntimeConfig {
                limits: Limits {
                    // The slow object spins until its wall-clock deadline.
                    fuel_per_call: u64::MAX / 4,
                    call_deadline: Duration::from_millis(200),
                    ..Limits::default()
                },
                ..RuntimeConfig::default()
            })
            .unwrap(),
        );
        let rounds = if quick { 3 } else { 5 };
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let alone = median(
            (0..rounds)
                .map(|_| fast_counter(&runtime, events))
                .collect(),
        );

        let stop = Arc::new(AtomicBool::new(false));
        let slow = start_slow(&runtime, stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let beside_slow = median(
            (0..rounds)
                .map(|_| fast_counter(&runtime, events))
                .collect(),
        );
        stop.store(true, Ordering::Relaxed);
        let slow_calls = slow.join().unwrap();

        let (chain, feeder) = start_chain(&runtime);
        std::thread::sleep(Duration::from_millis(300));
        let beside_chain = median(
            (0..rounds)
                .map(|_| fast_counter(&runtime, events))
                .collect(),
        );
        let chained = feeder.join().unwrap();
        let quarantine = chain.quarantined();

        let objects = if quick { 200 } else { 1000 };
        let idle = if quick { 2 } else { 5 };
        // Each in a fresh process: the second of two runs in one process reuses
        // the memory the first freed and looked 5x cheaper per object, whichever
        // it was.
        let pooled = idle_in_child("pooled", objects, idle);
        let on_demand = idle_in_child("on-demand", objects, idle);
        let hibernated = idle_in_child("hibernated", objects, idle);
        let per_peer = idle_in_child("per-peer", objects, idle);
        let per_group = idle_in_child("per-group", objects, idle);

        println!();
        println!(
            "executor isolation ({} events of 32 B to a counter, median of {rounds} rounds, {} workers)",
            events.len(),
            liveobjects_host::executor::ExecutorConfig::default().workers
        );
        println!("{:<48} {:>14}  compared with", "measurement", "events/s");
        println!("{:<48} {:>14.0}  (baseline)", "fast object alone", alone);
        println!(
            "{:<48} {:>14.0}  {:.2}x of alone ({slow_calls} calls of 200 ms)",
            "fast object beside a slow one",
            beside_slow,
            beside_slow / alone
        );
        println!(
            "{:<48} {:>14.0}  {:.2}x of alone ({chained} chain events, {})",
            "fast object beside a chain reaction",
            beside_chain,
            beside_chain / alone,
            quarantine
                .map(|q| format!("then quarantined: {q}"))
                .unwrap_or_else(|| "not quarantined".into())
        );
        println!();
        println!("{objects} idle mesh objects (each case in a fresh process)");
        println!(
            "{:<48} {:>12} {:>14} {:>10} {:>10}",
            "case", "core share", "RSS/object", "frames/s", "joins/s"
        );
        for (case, idle) in [
            ("one member, pooled sandboxes", &pooled),
            ("one member, on-demand sandboxes", &on_demand),
            ("one member, pooled, hibernated after 200 ms", &hibernated),
            ("two members, per-peer heartbeats (lo node)", &per_peer),
            ("two members, per-group heartbeats (peer)", &per_group),
        ] {
            println!(
                "{case:<48} {:>11.1}% {:>10.1} KiB {:>10.0} {:>10.0}",
                idle.core_share * 100.0,
                idle.rss_per_object / 1024.0,
                idle.frames_per_sec,
                idle.joins_per_sec
            );
        }
        println!(
            "two members, per-peer against per-group: {:.2}x the core share, {:.3}x the frames",
            per_peer.core_share / per_group.core_share,
            per_peer.frames_per_sec / per_group.frames_per_sec
        );
        let line = format!(
            "{{\"bench\":\"executor\",\"alone\":{alone:.0},\"beside_slow\":{beside_slow:.0},\
             \"beside_chain\":{beside_chain:.0},\"idle_objects\":{objects},\
             \"idle_core_share\":{:.4},\"rss_per_object\":{:.0},\
             \"pooled_core_share\":{:.4},\"pooled_rss_per_object\":{:.0},\
             \"hibernated_core_share\":{:.4},\"hibernated_rss_per_object\":{:.0},\
             \"pair_per_peer_core_share\":{:.4},\"pair_per_peer_frames_per_sec\":{:.0},\
             \"pair_per_group_core_share\":{:.4},\"pair_per_group_frames_per_sec\":{:.0}}}\n",
            on_demand.core_share,
            on_demand.rss_per_object,
            pooled.core_share,
            pooled.rss_per_object,
            hibernated.core_share,
            hibernated.rss_per_object,
            per_peer.core_share,
            per_peer.frames_per_sec,
            per_group.core_share,
            per_group.frames_per_sec,
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
        if std::fs::create_dir_all(&dir).is_ok() {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("executor.jsonl"))
            {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }
}
