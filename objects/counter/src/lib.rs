//! `counter`: a replicated integer. `add(n)` is an update (multicast to every
//! replica), `get()` a query of the local replica.

use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:counter@0.1.0;

        /// A replicated 64-bit counter.
        interface counter {
            /// Add `n` (may be negative) on every replica; wraps on overflow.
            add: func(n: s64);
            /// The current value at this replica.
            get: func() -> s64;
            /// How many `add` events this replica has applied.
            updates: func() -> u64;
        }

        world counter-object {
            export counter;
        }
    "#,
});

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
    updates: u64,
}

#[derive(Serialize, Deserialize)]
enum Event {
    Add(i64),
}

impl LiveObject for Counter {
    type Event = Event;

    fn apply(&mut self, event: Event, _ctx: &EventContext) -> Result<(), String> {
        match event {
            Event::Add(n) => self.value = self.value.wrapping_add(n),
        }
        self.updates += 1;
        Ok(())
    }
}

impl exports::liveobjects::counter::counter::Guest for Counter {
    fn add(n: i64) {
        Counter::emit(&Event::Add(n));
    }

    fn get() -> i64 {
        Counter::read(|c| c.value)
    }

    fn updates() -> u64 {
        Counter::read(|c| c.updates)
    }
}

liveobjects_guest::export_object!(Counter);
export!(Counter);
