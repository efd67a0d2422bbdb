//! The local driver: several replicas of one object inside one process.
//!
//! Every multicast becomes an [`Event`] (sender, per-sender sequence number, sender
//! timestamp) and is delivered to every replica in one total order, the order in
//! which events were sent. This is what `lo call`, `lo run` and `lo demo` use until
//! an object is joined over the network, and what tests use to check that replicas
//! fed the same events stay identical.

use crate::runtime::{
    Delivery, Event, Limit, Logic, Notification, Replica, ReplicaError, ReplicaIdentity, Runtime,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Most events one call may cause, counting events sent while handling events
/// (objects that answer events with more events). Beyond it the call fails with
/// [`Limit::EventCascade`] rather than loop forever; the events delivered until then
/// stay applied, identically on every replica.
pub const MAX_EVENTS_PER_CALL: usize = 100_000;

/// Where event timestamps come from.
pub type TimeSource = Box<dyn FnMut() -> u64 + Send>;

/// The system clock in milliseconds since the Unix epoch.
pub fn system_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What one replica did with one event.
#[derive(Debug)]
pub struct ReplicaDelivery {
    /// Index of the replica in the group.
    pub replica: usize,
    /// The event.
    pub event_seq: u64,
    /// The sender of the event.
    pub event_sender: String,
    /// Applied, rejected (with reason) or failed (trap / limit; the replica rolled back).
    pub outcome: Result<Option<String>, ReplicaError>,
    /// Notifications the replica raised for it.
    pub notifications: Vec<Notification>,
}

/// The result of a method call made through the group.
#[derive(Debug)]
pub struct GroupCall {
    /// The method's results, WAVE text.
    pub results: Vec<String>,
    /// Every event the call caused, in delivery order.
    pub events: Vec<Event>,
    /// What each replica did with each event.
    pub deliveries: Vec<ReplicaDelivery>,
}

impl GroupCall {
    /// Rejections and failures, as text, for display.
    pub fn problems(&self) -> Vec<String> {
        self.deliveries
            .iter()
            .filter_map(|d| match &d.outcome {
                Ok(None) => None,
                Ok(Some(reason)) => Some(format!(
                    "replica {} rejected event {} from {}: {reason}",
                    d.replica, d.event_seq, d.event_sender
                )),
                Err(e) => Some(format!("replica {}: {e}", d.replica)),
            })
            .collect()
    }
}

/// Several replicas of one object, kept in step in-process.
pub struct LocalGroup {
    replicas: Vec<Replica>,
    next_seq: BTreeMap<String, u64>,
    last_timestamp: BTreeMap<String, u64>,
    time: TimeSource,
    delivered: u64,
}

impl LocalGroup {
    /// Start one replica per member, each initialised from `snapshot` (or fresh).
    pub fn start(
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        members: &[&str],
        snapshot: Option<&[u8]>,
    ) -> Result<Self, ReplicaError> {
        let mut replicas = Vec::with_capacity(members.len());
        for member in members {
            let mut replica =
                runtime.instantiate(logic, ReplicaIdentity::local(object, *member))?;
            replica.init(snapshot)?;
            replicas.push(replica);
        }
        Ok(LocalGroup {
            replicas,
            next_seq: BTreeMap::new(),
            last_timestamp: BTreeMap::new(),
            time: Box::new(system_time_ms),
            delivered: 0,
        })
    }

    /// Use another source of event timestamps (tests use a fixed one).
    pub fn set_time_source(&mut self, time: TimeSource) {
        self.time = time;
    }

    /// Continue a member's sequence numbers (after restoring from a snapshot).
    pub fn set_next_seq(&mut self, member: &str, seq: u64) {
        self.next_seq.insert(member.to_string(), seq);
    }

    /// The next sequence number `member` will use.
    pub fn next_seq(&self, member: &str) -> u64 {
        self.next_seq.get(member).copied().unwrap_or(1)
    }

    /// Events delivered so far (each counted once, not once per replica).
    pub fn events_delivered(&self) -> u64 {
        self.delivered
    }

    /// The replicas.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// One replica, mutably (for queries and snapshots).
    pub fn replica_mut(&mut self, index: usize) -> &mut Replica {
        &mut self.replicas[index]
    }

    /// Call `method` on replica `index` with WAVE text arguments; deliver what it
    /// multicasts (and anything sent in reaction) to every replica.
    pub fn call(
        &mut self,
        index: usize,
        method: &str,
        args: &[&str],
    ) -> Result<GroupCall, ReplicaError> {
        let outcome = self.replicas[index].call_wave(method, args)?;
        let results = outcome.results_wave();
        let sender = self.replicas[index].identity().member.clone();
        let mut pending: VecDeque<(String, Vec<u8>)> = outcome
            .multicasts
            .into_iter()
            .map(|p| (sender.clone(), p))
            .collect();
        let mut events = Vec::new();
        let mut deliveries = Vec::new();
        while let Some((sender, payload)) = pending.pop_front() {
            if events.len() >= MAX_EVENTS_PER_CALL {
                return Err(ReplicaError::LimitExceeded {
                    object: self.replicas[index].identity().object.clone(),
                    limit: Limit::EventCascade {
                        limit: MAX_EVENTS_PER_CALL,
                    },
                    during: format!("call `{method}`"),
                });
            }
            let event = self.stamp(&sender, payload);
            for (replica_index, replica) in self.replicas.iter_mut().enumerate() {
                let (outcome, notifications) = match replica.deliver(&event) {
                    Ok(Delivery {
                        rejected,
                        multicasts,
                        notifications,
                    }) => {
                        let member = replica.identity().member.clone();
                        pending.extend(multicasts.into_iter().map(|p| (member.clone(), p)));
                        (Ok(rejected), notifications)
                    }
                    Err(e) => (Err(e), Vec::new()),
                };
                deliveries.push(ReplicaDelivery {
                    replica: replica_index,
                    event_seq: event.seq,
                    event_sender: event.sender.clone(),
                    outcome,
                    notifications,
                });
            }
            self.delivered += 1;
            events.push(event);
        }
        Ok(GroupCall {
            results,
            events,
            deliveries,
        })
    }

    /// Install a new membership view on every replica (what a driver does when members
    /// join or leave). Returns each replica's outcome.
    pub fn change_view(
        &mut self,
        view: &crate::runtime::View,
    ) -> Vec<Result<Delivery, ReplicaError>> {
        self.replicas
            .iter_mut()
            .map(|r| r.view_changed(view))
            .collect()
    }

    /// Deliver an event that came from elsewhere (e.g. replayed from a log) to every
    /// replica, without stamping it.
    pub fn deliver_external(&mut self, event: &Event) -> Vec<Result<Delivery, ReplicaError>> {
        let next = self.next_seq.entry(event.sender.clone()).or_insert(1);
        *next = (*next).max(event.seq + 1);
        self.delivered += 1;
        self.replicas.iter_mut().map(|r| r.deliver(event)).collect()
    }

    fn stamp(&mut self, sender: &str, payload: Vec<u8>) -> Event {
        let seq = self.next_seq.entry(sender.to_string()).or_insert(1);
        let this_seq = *seq;
        *seq += 1;
        // A sender's timestamps never go backwards, even if the wall clock does.
        let now = (self.time)();
        let last = self.last_timestamp.entry(sender.to_string()).or_insert(0);
        *last = (*last).max(now);
        Event {
            sender: sender.to_string(),
            seq: this_seq,
            timestamp_ms: *last,
            payload,
        }
    }
}
