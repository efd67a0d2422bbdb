//! The two versions of the lifecycle an object may export: 0.1 (`init`, `deliver`,
//! `view-changed`, `snapshot`) and 0.2 (the same plus `deliver-batch`). The replica
//! calls through [`Lifecycle`] and need not care which one it has, except that
//! only a 0.2 object can take a batch.

use super::bindings::Object as Object01;
use super::bindings::ObjectIndices as ObjectIndices01;
use super::bindings_0_2::Object as Object02;
use super::bindings_0_2::ObjectIndices as ObjectIndices02;
use super::replica::ReplicaState;
use super::{Event, LIFECYCLE_INTERFACE_0_2, View};
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

pub use super::bindings_0_2::exports::liveobjects::object0_2_0::lifecycle::{
    BatchedEvent, EventBatch, Rejection,
};

/// Where a loaded component's lifecycle functions are, per version.
pub(crate) enum LifecycleIndices {
    V01(ObjectIndices01),
    V02(ObjectIndices02),
}

impl LifecycleIndices {
    /// Look up the exports of `interface` (one of the two lifecycle names).
    pub(crate) fn new(
        interface: &str,
        instance_pre: &InstancePre<ReplicaState>,
    ) -> wasmtime::Result<Self> {
        Ok(if interface == LIFECYCLE_INTERFACE_0_2 {
            LifecycleIndices::V02(ObjectIndices02::new(instance_pre)?)
        } else {
            LifecycleIndices::V01(ObjectIndices01::new(instance_pre)?)
        })
    }

    pub(crate) fn load(
        &self,
        store: &mut Store<ReplicaState>,
        instance: &Instance,
    ) -> wasmtime::Result<Lifecycle> {
        Ok(match self {
            LifecycleIndices::V01(indices) => Lifecycle::V01(indices.load(store, instance)?),
            LifecycleIndices::V02(indices) => Lifecycle::V02(indices.load(store, instance)?),
        })
    }
}

/// An instance's lifecycle functions.
pub(crate) enum Lifecycle {
    V01(Object01),
    V02(Object02),
}

impl Lifecycle {
    pub(crate) fn init(
        &self,
        store: &mut Store<ReplicaState>,
        snapshot: Option<&[u8]>,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Lifecycle::V01(o) => o
                .liveobjects_object0_1_0_lifecycle()
                .call_init(store, snapshot),
            Lifecycle::V02(o) => o
                .liveobjects_object0_2_0_lifecycle()
                .call_init(store, snapshot),
        }
    }

    pub(crate) fn deliver(
        &self,
        store: &mut Store<ReplicaState>,
        event: &Event,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Lifecycle::V01(o) => o
                .liveobjects_object0_1_0_lifecycle()
                .call_deliver(store, event),
            Lifecycle::V02(o) => o
                .liveobjects_object0_2_0_lifecycle()
                .call_deliver(store, event),
        }
    }

    pub(crate) fn view_changed(
        &self,
        store: &mut Store<ReplicaState>,
        view: &View,
    ) -> wasmtime::Result<()> {
        match self {
            Lifecycle::V01(o) => o
                .liveobjects_object0_1_0_lifecycle()
                .call_view_changed(store, view),
            Lifecycle::V02(o) => o
                .liveobjects_object0_2_0_lifecycle()
                .call_view_changed(store, view),
        }
    }

    pub(crate) fn snapshot(&self, store: &mut Store<ReplicaState>) -> wasmtime::Result<Vec<u8>> {
        match self {
            Lifecycle::V01(o) => o.liveobjects_object0_1_0_lifecycle().call_snapshot(store),
            Lifecycle::V02(o) => o.liveobjects_object0_2_0_lifecycle().call_snapshot(store),
        }
    }

    /// `deliver-batch`; `None` for a 0.1 object.
    pub(crate) fn deliver_batch(
        &self,
        store: &mut Store<ReplicaState>,
        batch: &EventBatch,
    ) -> Option<wasmtime::Result<Vec<Rejection>>> {
        match self {
            Lifecycle::V01(_) => None,
            Lifecycle::V02(o) => Some(
                o.liveobjects_object0_2_0_lifecycle()
                    .call_deliver_batch(store, batch),
            ),
        }
    }
}

/// Pack events into the batch `deliver-batch` takes: each sender once, the
/// payloads back to back. `None` if the payloads do not fit the `u32` offsets (the
/// caller's byte cap keeps batches far below that).
pub(crate) fn pack(events: &[Event]) -> Option<EventBatch> {
    let mut senders: Vec<String> = Vec::new();
    let mut packed = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.iter().map(|e| e.payload.len()).sum());
    let mut last: Option<(&str, u32)> = None;
    for event in events {
        let sender = match last {
            Some((name, index)) if name == event.sender => index,
            _ => {
                let index = match senders.iter().position(|s| *s == event.sender) {
                    Some(i) => i,
                    None => {
                        senders.push(event.sender.clone());
                        senders.len() - 1
                    }
                };
                let index = u32::try_from(index).ok()?;
                last = Some((&event.sender, index));
                index
            }
        };
        payloads.extend_from_slice(&event.payload);
        packed.push(BatchedEvent {
            sender,
            seq: event.seq,
            timestamp_ms: event.timestamp_ms,
            payload_end: u32::try_from(payloads.len()).ok()?,
        });
    }
    Some(EventBatch {
        senders,
        events: packed,
        payloads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sender: &str, seq: u64, payload: &[u8]) -> Event {
        Event {
            sender: sender.into(),
            seq,
            timestamp_ms: 1000 + seq,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn pack_names_each_sender_once_and_ends_each_payload() {
        let events = [
            event("a", 1, b"xy"),
            event("b", 1, b""),
            event("a", 2, b"z"),
            event("a", 3, b"uvw"),
        ];
        let batch = pack(&events).unwrap();
        assert_eq!(batch.senders, ["a", "b"]);
        assert_eq!(batch.payloads, b"xyzuvw");
        let shape: Vec<(u32, u64, u64, u32)> = batch
            .events
            .iter()
            .map(|e| (e.sender, e.seq, e.timestamp_ms, e.payload_end))
            .collect();
        assert_eq!(
            shape,
            [
                (0, 1, 1001, 2),
                (1, 1, 1001, 2),
                (0, 2, 1002, 3),
                (0, 3, 1003, 6)
            ]
        );
    }
}
