//! Runtime benchmark: events per second through a guest's `deliver` against the same
//! counter written in native Rust, measured in the same run, plus method-call and
//! instantiation costs. Prints a table; see `host/benches/README.md`.
//!
//! Run: `cargo bench -p liveobjects-host --bench runtime` (add `-- --quick` for a
//! shorter run).

use liveobjects_host::runtime::{Event, ReplicaIdentity, Runtime, RuntimeConfig};
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
    println!();
    println!(
        "guest deliver throughput is 1/{:.0} of native ({:.0} vs {:.0} events/s); \
         the cache loads {:.0}x faster than compiling",
        guest / native,
        1.0 / guest,
        1.0 / native,
        cold / cached
    );
}
