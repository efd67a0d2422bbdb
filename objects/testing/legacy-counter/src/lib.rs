//! Test-only: a counter built against 0.1 of the contract
//! (`wit/deps/object-0.1/object.wit`) with plain `wit-bindgen`, the way objects were
//! built before 0.2 added `deliver-batch`. The host must keep running it.
//!
//! Its natural interface is the shipped counter's, so tests can run both side by
//! side. The state is a little-endian `i64` and an update count; an event's payload
//! is the `i64` to add (8 bytes).

use std::cell::Cell;

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:legacy-counter@0.1.0;

        interface counter {
            add: func(n: s64);
            get: func() -> s64;
            updates: func() -> u64;
        }

        world legacy-counter {
            include liveobjects:object/object@0.1.0;
            export counter;
        }
    "#,
    path: "../../../wit/deps/object-0.1",
    generate_all,
});

use exports::liveobjects::legacy_counter::counter::Guest as Counter;
use exports::liveobjects::object::lifecycle::Guest as Lifecycle;
use liveobjects::object::host;
use liveobjects::object::types::{Event, View};

thread_local! {
    static VALUE: Cell<i64> = const { Cell::new(0) };
    static UPDATES: Cell<u64> = const { Cell::new(0) };
}

struct Legacy;

impl Lifecycle for Legacy {
    fn init(snapshot: Option<Vec<u8>>) -> Result<(), String> {
        let (value, updates) = match snapshot {
            None => (0, 0),
            Some(bytes) => {
                let bytes: [u8; 16] = bytes
                    .try_into()
                    .map_err(|b: Vec<u8>| format!("snapshot of {} bytes, not 16", b.len()))?;
                let (value, updates) = bytes.split_at(8);
                (
                    i64::from_le_bytes(value.try_into().expect("8 bytes")),
                    u64::from_le_bytes(updates.try_into().expect("8 bytes")),
                )
            }
        };
        VALUE.set(value);
        UPDATES.set(updates);
        Ok(())
    }

    fn deliver(event: Event) -> Result<(), String> {
        let n: [u8; 8] = event
            .payload
            .try_into()
            .map_err(|p: Vec<u8>| format!("payload of {} bytes, not 8", p.len()))?;
        VALUE.set(VALUE.get().wrapping_add(i64::from_le_bytes(n)));
        UPDATES.set(UPDATES.get() + 1);
        Ok(())
    }

    fn view_changed(_view: View) {}

    fn snapshot() -> Vec<u8> {
        let mut bytes = VALUE.get().to_le_bytes().to_vec();
        bytes.extend_from_slice(&UPDATES.get().to_le_bytes());
        bytes
    }
}

impl Counter for Legacy {
    fn add(n: i64) {
        host::multicast(&n.to_le_bytes());
    }

    fn get() -> i64 {
        VALUE.get()
    }

    fn updates() -> u64 {
        UPDATES.get()
    }
}

export!(Legacy);
