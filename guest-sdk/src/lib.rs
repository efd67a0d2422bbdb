//! Write liveobjects live objects in Rust.
//!
//! A live object is a replicated state machine whose logic runs as a WebAssembly
//! component on every host that joins it (see `wit/object.wit` for the contract).
//! This crate hides the contract's lifecycle glue: an object states its **state** (a
//! struct), its **events** (an enum), how an event changes the state
//! ([`LiveObject::apply`]), and its **natural methods** (a WIT interface of its own,
//! implemented with `wit-bindgen` as usual). Snapshots and event payloads are encoded
//! with serde + postcard.
//!
//! ```ignore
//! use liveobjects_guest::{EventContext, LiveObject};
//! use serde::{Deserialize, Serialize};
//!
//! wit_bindgen::generate!({ inline: r#"
//!     package liveobjects:counter@0.1.0;
//!     interface counter {
//!         add: func(n: s64);
//!         get: func() -> s64;
//!     }
//!     world counter-object { export counter; }
//! "# });
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { value: i64 }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Event { Add(i64) }
//!
//! impl LiveObject for Counter {
//!     type Event = Event;
//!     fn apply(&mut self, event: Event, _ctx: &EventContext) -> Result<(), String> {
//!         match event { Event::Add(n) => self.value = self.value.wrapping_add(n) }
//!         Ok(())
//!     }
//! }
//!
//! // Update methods multicast an event; queries read the local replica.
//! impl exports::liveobjects::counter::counter::Guest for Counter {
//!     fn add(n: i64) { Counter::emit(&Event::Add(n)) }
//!     fn get() -> i64 { Counter::read(|c| c.value) }
//! }
//!
//! liveobjects_guest::export_object!(Counter);
//! export!(Counter);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to publish or run with `lo call`.
#![deny(missing_docs)]

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::cell::RefCell;

/// Gossip aggregate objects (counts, averages, extremes).
pub mod aggregate;

#[doc(hidden)]
pub mod __private {
    //! Glue used by [`export_object!`](crate::export_object); not a stable API.
    wit_bindgen::generate!({
        path: "../wit",
        world: "liveobjects:object/object@0.3.0",
        // 0.3 exports 0.2's lifecycle and imports 0.1's host interface and types:
        // generate those too.
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_lifecycle",
        default_bindings_module: "liveobjects_guest::__private",
    });
    pub use self::exports::liveobjects::object0_2_0::lifecycle::{
        EventBatch, Guest as Lifecycle, Rejection,
    };
    pub use self::exports::liveobjects::object0_3_0::evolve::Guest as Evolve;
    pub use crate::runtime::*;
}

pub use __private::liveobjects::object0_1_0::types::{Event, LogLevel, View};

/// A replicated object: its state, its update events and how an event changes it.
///
/// The state is `Self`. It must be `Default` (the state of a new object) and
/// serde-serializable (its snapshot). Replicas stay identical because every replica
/// applies the same events in the same order, so [`apply`](LiveObject::apply) must
/// depend only on the state, the event and the [`EventContext`].
pub trait LiveObject: Default + Serialize + DeserializeOwned + 'static {
    /// The updates this object multicasts to its replicas.
    type Event: Serialize + DeserializeOwned;

    /// Apply one event to the state. Return `Err` to reject an event (for example a
    /// transfer that would overdraw an account); the state must then be unchanged.
    fn apply(&mut self, event: Self::Event, ctx: &EventContext) -> Result<(), String>;

    /// The membership of the object's group changed. Default: ignore.
    fn view_changed(&mut self, _view: &View) {}

    /// A live upgrade to this version of the object: build the state from
    /// `snapshot`, which the logic of record version `from_version` took (its
    /// postcard encoding of *its* state type). Decode the old type and convert it
    /// when the state's shape changed; return `Err` to refuse the upgrade (it is
    /// then aborted on every replica and the old version carries on). Default: the
    /// snapshot decodes as `Self` unchanged.
    fn migrate(from_version: u64, snapshot: &[u8]) -> Result<Self, String> {
        postcard::from_bytes::<Self>(snapshot).map_err(|e| {
            format!(
                "the state of version {from_version} ({} bytes) does not decode as this \
                 version's: {e}; implement LiveObject::migrate to convert it",
                snapshot.len()
            )
        })
    }

    /// Multicast `event` to every replica (including this one). Call this from
    /// update methods; the state changes when the event is delivered.
    fn emit(event: &Self::Event) {
        let payload = postcard::to_allocvec(event).expect("postcard encoding to a Vec cannot fail");
        __private::liveobjects::object0_1_0::host::multicast(&payload);
    }

    /// Read this replica's current state. Call this from query methods.
    fn read<R>(f: impl FnOnce(&Self) -> R) -> R {
        runtime::with_state(f)
    }
}

/// Where and when an event was sent: the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    /// The member that multicast the event.
    pub sender: String,
    /// The sender's sequence number for this object (1, 2, 3, ...).
    pub seq: u64,
    /// The sender's clock when it sent the event, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// This replica's host identity.
pub fn self_id() -> String {
    __private::liveobjects::object0_1_0::host::self_id()
}

/// The current membership view.
pub fn view() -> View {
    __private::liveobjects::object0_1_0::host::current_view()
}

/// Tell local applications watching this object that something changed.
/// Notifications are local to this replica and not replicated.
pub fn notify(topic: &str, detail: &str) {
    __private::liveobjects::object0_1_0::host::notify(topic, detail)
}

/// Write a line to the host's log.
pub fn log(level: LogLevel, message: &str) {
    __private::liveobjects::object0_1_0::host::log(level, message)
}

#[doc(hidden)]
pub mod runtime {
    //! The generic lifecycle implementation behind [`export_object!`](crate::export_object).
    use super::*;
    use crate::__private::{EventBatch, Rejection};

    thread_local! {
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// Run `f` on the current state. Panics (a trap the host reports) if called before
    /// `init`, which the host never does.
    pub fn with_state<T: LiveObject, R>(f: impl FnOnce(&T) -> R) -> R {
        STATE.with_borrow(|state| {
            let state = state
                .as_ref()
                .and_then(|s| s.downcast_ref::<T>())
                .expect("object state used before init");
            f(state)
        })
    }

    fn with_state_mut<T: LiveObject, R>(f: impl FnOnce(&mut T) -> R) -> R {
        STATE.with_borrow_mut(|state| {
            let state = state
                .as_mut()
                .and_then(|s| s.downcast_mut::<T>())
                .expect("object state used before init");
            f(state)
        })
    }

    /// `lifecycle.init`: decode the snapshot or start from `T::default()`.
    pub fn init<T: LiveObject>(snapshot: Option<Vec<u8>>) -> Result<(), String> {
        let state = match snapshot {
            None => T::default(),
            Some(bytes) => postcard::from_bytes::<T>(&bytes)
                .map_err(|e| format!("snapshot of {} bytes does not decode: {e}", bytes.len()))?,
        };
        STATE.with_borrow_mut(|s| *s = Some(Box::new(state)));
        Ok(())
    }

    /// `lifecycle.deliver`: decode the payload and apply it. An undecodable payload
    /// or an event the object rejects leaves the state unchanged.
    pub fn deliver<T: LiveObject>(event: Event) -> Result<(), String> {
        let decoded = postcard::from_bytes::<T::Event>(&event.payload).map_err(|e| {
            format!(
                "event {} from {} ({} bytes) does not decode: {e}",
                event.seq,
                event.sender,
                event.payload.len()
            )
        })?;
        let ctx = EventContext {
            sender: event.sender,
            seq: event.seq,
            timestamp_ms: event.timestamp_ms,
        };
        with_state_mut::<T, _>(|state| state.apply(decoded, &ctx))
    }

    /// `lifecycle.deliver-batch`: apply each event as [`deliver`] would, without
    /// allocating per event (one context per sender, payloads decoded in place).
    pub fn deliver_batch<T: LiveObject>(batch: EventBatch) -> Vec<Rejection> {
        let EventBatch {
            senders,
            events,
            payloads,
        } = batch;
        let mut contexts: Vec<EventContext> = senders
            .into_iter()
            .map(|sender| EventContext {
                sender,
                seq: 0,
                timestamp_ms: 0,
            })
            .collect();
        let mut rejections = Vec::new();
        let mut start = 0usize;
        with_state_mut::<T, _>(|state| {
            for (index, event) in (0u32..).zip(&events) {
                let end = event.payload_end as usize;
                let payload = payloads.get(start..end);
                start = end;
                let outcome = match (payload, contexts.get_mut(event.sender as usize)) {
                    (Some(payload), Some(ctx)) => {
                        ctx.seq = event.seq;
                        ctx.timestamp_ms = event.timestamp_ms;
                        match postcard::from_bytes::<T::Event>(payload) {
                            Ok(decoded) => state.apply(decoded, ctx),
                            Err(e) => Err(format!(
                                "event {} from {} ({} bytes) does not decode: {e}",
                                event.seq,
                                ctx.sender,
                                payload.len()
                            )),
                        }
                    }
                    _ => Err(format!(
                        "event {index} of the batch names a sender or payload outside it"
                    )),
                };
                if let Err(reason) = outcome {
                    rejections.push(Rejection { index, reason });
                }
            }
        });
        rejections
    }

    /// `lifecycle.view-changed`.
    pub fn view_changed<T: LiveObject>(view: View) {
        with_state_mut::<T, _>(|state| state.view_changed(&view))
    }

    /// `evolve.migrate`: [`LiveObject::migrate`], encoded as a snapshot.
    pub fn migrate<T: LiveObject>(from_version: u64, snapshot: Vec<u8>) -> Result<Vec<u8>, String> {
        let state = T::migrate(from_version, &snapshot)?;
        Ok(postcard::to_allocvec(&state).expect("postcard encoding to a Vec cannot fail"))
    }

    /// `lifecycle.snapshot`: postcard encoding of the state.
    pub fn snapshot<T: LiveObject>() -> Vec<u8> {
        with_state::<T, _>(|state| {
            postcard::to_allocvec(state).expect("postcard encoding to a Vec cannot fail")
        })
    }
}

/// Export the liveobjects world, version 0.3 (the lifecycle: `init`, `deliver`,
/// `deliver-batch`, `view-changed`, `snapshot`; and `migrate`, for live upgrades)
/// for a type that implements [`LiveObject`]. Use it once per object crate, next to
/// the `export!` of the object's own `wit-bindgen` world.
#[macro_export]
macro_rules! export_object {
    ($ty:ty) => {
        const _: () = {
            struct LiveObjectLifecycle;
            impl $crate::__private::Lifecycle for LiveObjectLifecycle {
                fn init(snapshot: Option<Vec<u8>>) -> Result<(), String> {
                    $crate::__private::init::<$ty>(snapshot)
                }
                fn deliver(event: $crate::Event) -> Result<(), String> {
                    $crate::__private::deliver::<$ty>(event)
                }
                fn deliver_batch(
                    batch: $crate::__private::EventBatch,
                ) -> Vec<$crate::__private::Rejection> {
                    $crate::__private::deliver_batch::<$ty>(batch)
                }
                fn view_changed(view: $crate::View) {
                    $crate::__private::view_changed::<$ty>(view)
                }
                fn snapshot() -> Vec<u8> {
                    $crate::__private::snapshot::<$ty>()
                }
            }
            impl $crate::__private::Evolve for LiveObjectLifecycle {
                fn migrate(from_version: u64, snapshot: Vec<u8>) -> Result<Vec<u8>, String> {
                    $crate::__private::migrate::<$ty>(from_version, snapshot)
                }
            }
            $crate::__private::export_lifecycle!(LiveObjectLifecycle with_types_in $crate::__private);
        };
    };
}
