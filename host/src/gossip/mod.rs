//! The `gossip` driver: self-managing objects over SWIM membership, Cyclon peer
//! sampling and push-pull aggregation (QuickSilver's GO, `DESIGN.md` section 7).
//!
//! - [`core`]: the protocol as a sans-IO state machine ([`GossipNode`]), with
//!   [`sampling`] (Cyclon partial views) and [`HostId`], in
//!   `liveobjects-protocols` (its simulator, `liveobjects_protocols::gossip::sim`,
//!   is for tests and benchmarks and does not ship in `lo`).
//! - [`net`]: the tokio/UDP shell that runs a node on a real socket.
//! - [`agent`]: that shell in its own task, driven through a handle.
//! - [`node_driver`]: the driver of `lo node --gossip ADDR`: the agent for
//!   discovery and membership, and aggregates joined with `lo join`, which run on
//!   the object executor (never on the network task).
//!
//! Gossip objects are *aggregates* (world `aggregate-object` in
//! `wit/deps/object-0.1/object.wit`): `census` (live hosts), `average` and `max` in `objects/`. Each host runs every
//! aggregate it has joined over the whole gossip domain: they describe the system
//! (how many hosts are up, their average load), not a subset of it.
//!
//! What is wired to the other drivers: the node daemon (`lo node --gossip ADDR`)
//! runs a gossip agent with SWIM and the node's census, and publishes a *card*
//! ([`crate::node::NodeCard`]: its mesh key and address, the objects it hosts).
//! When none of the seeds a mesh record lists answers a join, the node asks up to 64
//! live gossip hosts for their cards and tries the members hosting the object
//! before it would found a new group; the mesh handshake authenticates whatever key
//! a card names, so a lying card costs a failed attempt, nothing more. `lo status`
//! shows the gossip membership and census. qsm finds members through its membership service
//! instead, and vsync through the seeds its record lists.
//!
//! Security: with a domain secret ([`core::GossipConfig::secret`], `lo gossip
//! --secret`) every datagram carries an HMAC-SHA256 tag and only holders of the
//! secret can speak; whoever holds it is trusted (it can lie about membership and
//! aggregates). Without a secret anyone who can send a UDP datagram to a host can
//! (every message, SWIM's included, must come from the address of the sender it
//! names, but UDP sources can be forged). Answers are bounded to discourage
//! reflection: an exchange is answered with at most 4x its size (or 1,200 bytes),
//! and cards only to known hosts. Replayed datagrams are harmless to aggregates
//! (merges are idempotent, old epochs are ignored) and SWIM tolerates duplicates.

pub mod agent;
pub mod net;
pub mod node_driver;

pub use self::core::{
    Aggregation, DatagramError, Estimate, Event, GossipConfig, GossipStats, Share, Transmit, Wire,
};
pub use liveobjects_protocols::gossip::{Entry, HostId, Sampler, core, sampling};

/// A gossip node whose aggregates run their sandboxed components inline (`lo
/// gossip`, the simulator), or elsewhere ([`core::GossipNode::host_elsewhere`]).
pub type GossipNode = core::GossipNode<crate::runtime::SharedAggregate>;
