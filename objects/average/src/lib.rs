//! `average`: the mean of a number every host measures (e.g. its load average), as
//! a gossip aggregate.
//!
//! Each host contributes `(priority, value)` with a pseudo-random priority per
//! epoch; the state keeps the [`K`] entries of lowest priority (a uniform random
//! sample of the hosts, without replacement). Merging is a union truncated to the
//! `K` lowest priorities: commutative, associative and idempotent, so gossip may
//! deliver a contribution many times. With at most `K` hosts the mean is exact;
//! above that it is the mean of a uniform sample of `K` hosts, whose standard error
//! is the hosts' standard deviation divided by `sqrt(K)`.
//! Non-finite inputs are not counted.

use liveobjects_guest::aggregate::{Aggregate, uniform_hash};
use serde::{Deserialize, Serialize};

/// How many samples a state keeps: 128 * 16 bytes = 2 KiB per gossip message.
const K: usize = 128;

#[derive(Serialize, Deserialize)]
struct Average {
    /// Ascending by priority, distinct priorities, at most `K`.
    sample: Vec<(u64, f64)>,
}

impl Aggregate for Average {
    fn contribute(input: f64, seed: u64) -> Self {
        let sample = if input.is_finite() {
            vec![(uniform_hash(seed), input)]
        } else {
            Vec::new()
        };
        Average { sample }
    }

    fn merge(a: Self, b: Self) -> Self {
        let mut sample: Vec<(u64, f64)> = a
            .sample
            .into_iter()
            .chain(b.sample)
            .filter(|(_, value)| value.is_finite())
            .collect();
        // Ties on priority keep the larger value, so the result does not depend on
        // which side an entry came from.
        sample.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(y.1.total_cmp(&x.1)));
        sample.dedup_by_key(|entry| entry.0);
        sample.truncate(K);
        Average { sample }
    }

    fn estimate(&self) -> f64 {
        if self.sample.is_empty() {
            return f64::NAN;
        }
        let sum: f64 = self.sample.iter().map(|(_, value)| value).sum();
        sum / self.sample.len() as f64
    }
}

liveobjects_guest::export_aggregate!(Average);
