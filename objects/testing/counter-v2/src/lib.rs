//! Test-only: the next version of the shipped `counter`, for live upgrade tests.
//!
//! Its natural interface is the counter's plus two queries, so publishing it over
//! a counter is not a breaking change. Its state adds what the upgrade saw:
//! `migrate` decodes the counter's state (postcard of `{value, updates}`) and
//! records the record version it came from and how many events the old version
//! had applied, so a test can check that every replica switched at the same
//! event. It refuses to migrate a negative counter, so a test can make an upgrade
//! fail on every replica. It applies the counter's events unchanged (events the
//! old version multicast before the switch are delivered to this one).

use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:counter@0.1.0;

        /// A replicated 64-bit counter, version 2.
        interface counter {
            /// Add `n` (may be negative) on every replica; wraps on overflow.
            add: func(n: s64);
            /// The current value at this replica.
            get: func() -> s64;
            /// How many `add` events this replica has applied.
            updates: func() -> u64;
            /// The record version this state was migrated from (0: never migrated).
            upgraded-from: func() -> u64;
            /// How many events the previous version had applied when this one
            /// took over.
            switched-after: func() -> u64;
        }

        world counter-object {
            export counter;
        }
    "#,
});

/// The shipped counter's state, as its snapshot encodes it.
#[derive(Deserialize)]
struct CounterV1 {
    value: i64,
    updates: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct CounterV2 {
    value: i64,
    updates: u64,
    upgraded_from: u64,
    switched_after: u64,
}

/// The shipped counter's event (same encoding).
#[derive(Serialize, Deserialize)]
enum Event {
    Add(i64),
}

impl LiveObject for CounterV2 {
    type Event = Event;

    fn apply(&mut self, event: Event, _ctx: &EventContext) -> Result<(), String> {
        match event {
            Event::Add(n) => self.value = self.value.wrapping_add(n),
        }
        self.updates += 1;
        Ok(())
    }

    fn migrate(from_version: u64, snapshot: &[u8]) -> Result<Self, String> {
        let old: CounterV1 = postcard::from_bytes(snapshot)
            .map_err(|e| format!("the counter's state does not decode: {e}"))?;
        if old.value < 0 {
            return Err(format!(
                "version 2 refuses to take over a negative counter ({})",
                old.value
            ));
        }
        Ok(CounterV2 {
            value: old.value,
            updates: old.updates,
            upgraded_from: from_version,
            switched_after: old.updates,
        })
    }
}

impl exports::liveobjects::counter::counter::Guest for CounterV2 {
    fn add(n: i64) {
        CounterV2::emit(&Event::Add(n));
    }

    fn get() -> i64 {
        CounterV2::read(|c| c.value)
    }

    fn updates() -> u64 {
        CounterV2::read(|c| c.updates)
    }

    fn upgraded_from() -> u64 {
        CounterV2::read(|c| c.upgraded_from)
    }

    fn switched_after() -> u64 {
        CounterV2::read(|c| c.switched_after)
    }
}

liveobjects_guest::export_object!(CounterV2);
export!(CounterV2);
