//! `register`: a replicated variable holding one typed value. `set` and
//! `compare-and-set` are updates; `get`, `get-entry` are queries of the local replica.
//! Writes are applied in delivery order, so with a total-order driver every replica
//! agrees on the last writer.

use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:register@0.1.0;

        /// A replicated variable.
        interface register {
            /// The values a register can hold.
            variant value {
                empty,
                boolean(bool),
                integer(s64),
                float(f64),
                text(string),
                bytes(list<u8>),
            }

            /// The current value and who wrote it.
            record entry {
                value: value,
                /// Number of writes applied so far (0 for a new register).
                version: u64,
                /// Member that wrote the current value (empty for a new register).
                writer: string,
                /// The writer's timestamp for the current value (ms since the epoch).
                written-at-ms: u64,
            }

            /// Replace the value on every replica.
            set: func(v: value);
            /// Replace the value only if, when the write is delivered, the register's
            /// version is still `expected-version`; otherwise the write is rejected on
            /// every replica alike.
            compare-and-set: func(expected-version: u64, v: value);
            /// The current value at this replica.
            get: func() -> value;
            /// The current value with its version, writer and time.
            get-entry: func() -> entry;
        }

        world register-object {
            export register;
        }
    "#,
});

use exports::liveobjects::register::register::{Entry, Guest, Value};

/// Serde mirror of the WIT `value` variant (the generated type has no serde impls).
#[derive(Default, Clone, Serialize, Deserialize)]
enum Stored {
    #[default]
    Empty,
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl From<Value> for Stored {
    fn from(v: Value) -> Self {
        match v {
            Value::Empty => Stored::Empty,
            Value::Boolean(b) => Stored::Boolean(b),
            Value::Integer(i) => Stored::Integer(i),
            Value::Float(f) => Stored::Float(f),
            Value::Text(t) => Stored::Text(t),
            Value::Bytes(b) => Stored::Bytes(b),
        }
    }
}

impl From<Stored> for Value {
    fn from(v: Stored) -> Self {
        match v {
            Stored::Empty => Value::Empty,
            Stored::Boolean(b) => Value::Boolean(b),
            Stored::Integer(i) => Value::Integer(i),
            Stored::Float(f) => Value::Float(f),
            Stored::Text(t) => Value::Text(t),
            Stored::Bytes(b) => Value::Bytes(b),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Register {
    value: Stored,
    version: u64,
    writer: String,
    written_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum Event {
    Set(Stored),
    CompareAndSet {
        expected_version: u64,
        value: Stored,
    },
}

impl LiveObject for Register {
    type Event = Event;

    fn apply(&mut self, event: Event, ctx: &EventContext) -> Result<(), String> {
        let value = match event {
            Event::Set(value) => value,
            Event::CompareAndSet {
                expected_version,
                value,
            } => {
                if expected_version != self.version {
                    return Err(format!(
                        "compare-and-set expected version {expected_version}, register is at {}",
                        self.version
                    ));
                }
                value
            }
        };
        self.value = value;
        self.version += 1;
        self.writer = ctx.sender.clone();
        self.written_at_ms = ctx.timestamp_ms;
        liveobjects_guest::notify("set", &format!("version {}", self.version));
        Ok(())
    }
}

impl Guest for Register {
    fn set(v: Value) {
        Register::emit(&Event::Set(v.into()));
    }

    fn compare_and_set(expected_version: u64, v: Value) {
        Register::emit(&Event::CompareAndSet {
            expected_version,
            value: v.into(),
        });
    }

    fn get() -> Value {
        Register::read(|r| r.value.clone().into())
    }

    fn get_entry() -> Entry {
        Register::read(|r| Entry {
            value: r.value.clone().into(),
            version: r.version,
            writer: r.writer.clone(),
            written_at_ms: r.written_at_ms,
        })
    }
}

liveobjects_guest::export_object!(Register);
export!(Register);
