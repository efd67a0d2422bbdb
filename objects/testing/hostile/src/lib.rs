//! Test-only: an object that misbehaves on request, so tests can check that the host
//! stops it with the right error and keeps its state and the other objects intact.
//! It also records what the (deterministic) clock and random sources return, so tests
//! can check that two replicas see the same values.

use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:hostile@0.1.0;

        interface hostile {
            /// What one `observe` event saw, read twice in a row.
            record observation {
                wall-ns: tuple<u64, u64>,
                monotonic-ns: tuple<u64, u64>,
                random: tuple<list<u8>, list<u8>>,
                event-timestamp-ms: u64,
                /// The membership view id the object saw while applying the event.
                view-id: u64,
            }

            /// A well-behaved update: add to a total.
            add: func(n: s64);
            /// The total.
            total: func() -> s64;
            /// Loop forever in a query.
            spin: func();
            /// Multicast an event whose `deliver` loops forever.
            spin-in-deliver: func();
            /// Allocate (and touch) `mib` MiB in a query; returns how much it held.
            allocate: func(mib: u32) -> u32;
            /// Multicast an event whose `deliver` allocates without bound.
            bomb-in-deliver: func();
            /// Panic in a query.
            panic-now: func();
            /// Multicast one event carrying `bytes` bytes.
            huge-multicast: func(bytes: u32);
            /// Multicast `n` small events in one call.
            many-multicasts: func(n: u32);
            /// Multicast `count` events of `bytes` bytes each in one call.
            blobs: func(bytes: u32, count: u32);
            /// Multicast an event whose `deliver` multicasts `count` events of
            /// `bytes` bytes each (once, at every replica: a burst of host-side
            /// queue memory, not a chain).
            fan-out: func(bytes: u32, count: u32);
            /// Multicast an event whose `deliver` reads the clocks and random twice.
            observe: func();
            /// Everything `observe` events saw at this replica.
            observations: func() -> list<observation>;
            /// Sleep for `ms` milliseconds (the host must refuse to block).
            sleep: func(ms: u64);
            /// Start a chain reaction: multicast an event whose `deliver` multicasts
            /// two more such events, at every replica, without end.
            chain: func();
            /// Chain events this replica applied.
            chained: func() -> u64;
            /// From now on, `snapshot` loops forever whenever the view has more
            /// than one member (so a joiner's state transfer never completes,
            /// while a lone member's status digests still work).
            loop-snapshot-on-join: func();
            /// Multicast `count` events whose `deliver` each spins `iterations`
            /// times (a known, deterministic amount of CPU per event).
            burn: func(iterations: u32, count: u32);
            /// Burn events this replica applied.
            burned: func() -> u64;
            /// One update, two multicasts: add `n`, then an event the object
            /// refuses. A transaction must apply neither.
            add-then-refuse: func(n: s64);
            /// Try to reach outside the sandbox: read a file, list `/`, read the
            /// environment, open a TCP connection. Returns one line per attempt saying
            /// what happened; the host must have denied each.
            probe-authority: func() -> list<string>;
            /// Multicast an event whose `deliver` adds to the total a number
            /// derived from the applying replica's own member id (`self-id`):
            /// replicas diverge on purpose (for divergence and replay tests).
            diverge: func();
            /// Multicast an event that adds 1,000 to the total at the replica
            /// whose `self-id` is `member` only: that one replica diverges.
            corrupt: func(member: string);
        }

        world hostile-object {
            export hostile;
        }
    "#,
});

use exports::liveobjects::hostile::hostile::{Guest, Observation};

#[derive(Serialize, Deserialize, Clone)]
struct Seen {
    wall_ns: (u64, u64),
    monotonic_ns: (u64, u64),
    random: (Vec<u8>, Vec<u8>),
    event_timestamp_ms: u64,
    view_id: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Hostile {
    total: i64,
    seen: Vec<Seen>,
    chained: u64,
    burned: u64,
    burn_sink: u64,
    #[serde(default, serialize_with = "spin_if_joined")]
    loop_snapshot_on_join: bool,
}

/// Serializing the state (`snapshot`) never ends once `loop-snapshot-on-join` was
/// called and a second member is in the view.
fn spin_if_joined<S: serde::Serializer>(flag: &bool, out: S) -> Result<S::Ok, S::Error> {
    if *flag && liveobjects_guest::view().members.len() > 1 {
        spin_forever();
    }
    out.serialize_bool(*flag)
}

#[derive(Serialize, Deserialize)]
enum Event {
    Add(i64),
    Spin,
    Bomb,
    Blob(Vec<u8>),
    Observe,
    Chain(u64),
    Refuse,
    LoopSnapshotOnJoin,
    Burn(u32),
    FanOut { bytes: u32, count: u32 },
    Diverge,
    Corrupt(String),
}

fn spin_forever() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn allocate_without_bound() -> usize {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn random16() -> Vec<u8> {
    let mut buf = vec![0u8; 16];
    getrandom::fill(&mut buf).expect("random source");
    buf
}

impl LiveObject for Hostile {
    type Event = Event;

    fn apply(&mut self, event: Event, ctx: &EventContext) -> Result<(), String> {
        match event {
            Event::Add(n) => self.total = self.total.wrapping_add(n),
            Event::Spin => spin_forever(),
            Event::Bomb => {
                allocate_without_bound();
            }
            Event::Blob(_) => {}
            Event::Refuse => return Err("refused on purpose".to_string()),
            Event::LoopSnapshotOnJoin => self.loop_snapshot_on_join = true,
            Event::Burn(iterations) => {
                // A xorshift chain: no closed form for the optimiser to find.
                let mut x: u64 = self.burned | 1;
                for _ in 0..iterations {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x = std::hint::black_box(x);
                }
                self.burn_sink = x;
                self.burned += 1;
            }
            Event::FanOut { bytes, count } => {
                for _ in 0..count {
                    Hostile::emit(&Event::Blob(vec![9u8; bytes as usize]));
                }
            }
            Event::Diverge => {
                let mark = liveobjects_guest::self_id().bytes().fold(0i64, |sum, b| {
                    sum.wrapping_mul(31).wrapping_add(i64::from(b))
                });
                self.total = self.total.wrapping_add(mark);
            }
            Event::Corrupt(member) => {
                if liveobjects_guest::self_id() == member {
                    self.total = self.total.wrapping_add(1000);
                }
            }
            Event::Chain(generation) => {
                self.chained += 1;
                Hostile::emit(&Event::Chain(generation + 1));
                Hostile::emit(&Event::Chain(generation + 1));
            }
            Event::Observe => {
                let start = Instant::now();
                let wall = (wall_ns(), wall_ns());
                let mono0 = start.elapsed().as_nanos() as u64;
                let mono1 = start.elapsed().as_nanos() as u64;
                self.seen.push(Seen {
                    wall_ns: wall,
                    monotonic_ns: (mono0, mono1),
                    random: (random16(), random16()),
                    event_timestamp_ms: ctx.timestamp_ms,
                    view_id: liveobjects_guest::view().id,
                });
            }
        }
        Ok(())
    }
}

impl Guest for Hostile {
    fn add(n: i64) {
        Hostile::emit(&Event::Add(n));
    }

    fn total() -> i64 {
        Hostile::read(|h| h.total)
    }

    fn spin() {
        spin_forever()
    }

    fn spin_in_deliver() {
        Hostile::emit(&Event::Spin);
    }

    fn allocate(mib: u32) -> u32 {
        let held: Vec<Vec<u8>> = (0..mib).map(|_| vec![1u8; 1 << 20]).collect();
        std::hint::black_box(&held);
        held.len() as u32
    }

    fn bomb_in_deliver() {
        Hostile::emit(&Event::Bomb);
    }

    fn panic_now() {
        panic!("hostile object panics on purpose");
    }

    fn huge_multicast(bytes: u32) {
        Hostile::emit(&Event::Blob(vec![7u8; bytes as usize]));
    }

    fn many_multicasts(n: u32) {
        for i in 0..n {
            Hostile::emit(&Event::Add(i as i64));
        }
    }

    fn blobs(bytes: u32, count: u32) {
        for _ in 0..count {
            Hostile::emit(&Event::Blob(vec![7u8; bytes as usize]));
        }
    }

    fn fan_out(bytes: u32, count: u32) {
        Hostile::emit(&Event::FanOut { bytes, count });
    }

    fn observe() {
        Hostile::emit(&Event::Observe);
    }

    fn sleep(ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    fn chain() {
        Hostile::emit(&Event::Chain(0));
    }

    fn add_then_refuse(n: i64) {
        Hostile::emit(&Event::Add(n));
        Hostile::emit(&Event::Refuse);
    }

    fn burn(iterations: u32, count: u32) {
        for _ in 0..count {
            Hostile::emit(&Event::Burn(iterations));
        }
    }

    fn burned() -> u64 {
        Hostile::read(|h| h.burned)
    }

    fn loop_snapshot_on_join() {
        Hostile::emit(&Event::LoopSnapshotOnJoin);
    }

    fn chained() -> u64 {
        Hostile::read(|h| h.chained)
    }

    fn diverge() {
        Hostile::emit(&Event::Diverge);
    }

    fn corrupt(member: String) {
        Hostile::emit(&Event::Corrupt(member));
    }

    fn probe_authority() -> Vec<String> {
        let mut seen = Vec::new();
        seen.push(match std::fs::read("/etc/passwd") {
            Ok(b) => format!("file: READ {} bytes", b.len()),
            Err(e) => format!("file: denied ({e})"),
        });
        seen.push(match std::fs::read_dir("/") {
            Ok(d) => format!("dir: LISTED {} entries", d.count()),
            Err(e) => format!("dir: denied ({e})"),
        });
        let vars = std::env::vars().count();
        seen.push(if vars == 0 {
            "env: denied (empty)".to_string()
        } else {
            format!("env: READ {vars} variables")
        });
        seen.push(match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => "tcp: CONNECTED".to_string(),
            Err(e) => format!("tcp: denied ({e})"),
        });
        seen
    }

    fn observations() -> Vec<Observation> {
        Hostile::read(|h| {
            h.seen
                .iter()
                .map(|s| Observation {
                    wall_ns: s.wall_ns,
                    monotonic_ns: s.monotonic_ns,
                    random: s.random.clone(),
                    event_timestamp_ms: s.event_timestamp_ms,
                    view_id: s.view_id,
                })
                .collect()
        })
    }
}

liveobjects_guest::export_object!(Hostile);
export!(Hostile);
