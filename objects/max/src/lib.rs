//! `max`: the largest number any live host reports, as a gossip aggregate. Merging
//! takes the larger value, so it is exact, and a new maximum spreads like a rumour.
//! Non-finite inputs are ignored; with no input at all the estimate is -infinity.

use liveobjects_guest::aggregate::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Max {
    value: Option<f64>,
}

impl Aggregate for Max {
    fn contribute(input: f64, _seed: u64) -> Self {
        Max {
            value: input.is_finite().then_some(input),
        }
    }

    fn merge(a: Self, b: Self) -> Self {
        let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
        let value = match (finite(a.value), finite(b.value)) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        Max { value }
    }

    fn estimate(&self) -> f64 {
        self.value.unwrap_or(f64::NEG_INFINITY)
    }
}

liveobjects_guest::export_aggregate!(Max);
