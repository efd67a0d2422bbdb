//! Test-only gossip aggregate: a maximum that misbehaves when asked to.
//!
//! - `contribute(9.0, _)` loops forever (CPU limit);
//! - `contribute(2.0, _)` allocates without bound (memory limit);
//! - `contribute(3.0, _)` returns a 1 MiB state (state size cap);
//! - `contribute(4.0, _)` panics (a trap);
//! - merging a state whose value is exactly -1 panics (a poisoned state a hostile
//!   peer could send);
//! - merging anything *into* a state of value 8 (`merge(a, _)` with `a` = 8) loops
//!   forever, and a state of 8 merged into another is ignored: a host whose own
//!   contribution is 8 spends a whole call's CPU limit on every share it receives
//!   (CPU use that grows with the traffic, not once per epoch), while its peers
//!   keep their own states and stay well;
//! - a node's default input, 1, is an ordinary number: the object misbehaves only
//!   once a host sets one of the values above;
//! - anything else behaves like `max`.

use liveobjects_guest::aggregate::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct HostileMax {
    value: f64,
    padding: Vec<u8>,
}

impl Aggregate for HostileMax {
    fn contribute(input: f64, _seed: u64) -> Self {
        if input == 9.0 {
            let mut spins: u64 = 0;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        if input == 2.0 {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if input == 4.0 {
            panic!("contribute was asked to panic");
        }
        let padding = if input == 3.0 {
            vec![0; 1 << 20]
        } else {
            Vec::new()
        };
        HostileMax {
            value: input,
            padding,
        }
    }

    fn merge(a: Self, b: Self) -> Self {
        if a.value == -1.0 || b.value == -1.0 {
            panic!("merge met a poisoned state");
        }
        if a.value == 8.0 {
            let mut spins: u64 = 0;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        if b.value == 8.0 {
            return a;
        }
        HostileMax {
            value: a.value.max(b.value),
            padding: Vec::new(),
        }
    }

    fn estimate(&self) -> f64 {
        self.value
    }
}

liveobjects_guest::export_aggregate!(HostileMax);
