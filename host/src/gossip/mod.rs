//! The `gossip` driver: self-managing objects over SWIM membership, Cyclon peer
//! sampling and push-pull aggregation (QuickSilver's GO, `DESIGN.md` section 7).
//!
//! - [`core`]: the protocol as a sans-IO state machine ([`GossipNode`]).
//! - [`sampling`]: Cyclon partial views (bounded, no full membership needed).
//! - [`net`]: the tokio/UDP shell that runs a node on a real socket.
//!
//! Gossip objects are *aggregates* (world `aggregate-object` in `wit/object.wit`):
//! `census` (live hosts), `average` and `max` in `objects/`. Each host runs every
//! aggregate it has joined over the whole gossip domain: they describe the system
//! (how many hosts are up, their average load), not a subset of it.
//!
//! What is wired to the other drivers: a gossip node's SWIM member list and Cyclon
//! view are available through [`GossipNode::swim_members`] and
//! [`GossipNode::view`]; `lo gossip` prints membership changes. The mesh driver does
//! not yet take seeds from them (it takes seeds from the directory record).
//!
//! Security: gossip datagrams are not authenticated yet. A datagram is bounded,
//! version-checked and must come from the address it names, so a forger off-path
//! cannot impersonate a host, but an on-path attacker can lie about aggregates.

pub mod core;
pub mod net;
pub mod sampling;
pub mod sim;

pub use self::core::{
    DatagramError, Estimate, Event, GossipConfig, GossipNode, GossipStats, Share, Transmit, Wire,
};
pub use self::sampling::{Entry, Sampler};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A gossip host: its UDP address and a boot number that grows each time the
/// host restarts (or SWIM renews it), so a restarted host wins over its old self.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostId {
    /// Where it receives datagrams.
    pub addr: SocketAddr,
    /// Boot number; 0 only for a seed known by address alone.
    pub boot: u64,
}

impl foca::Identity for HostId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(HostId {
            addr: self.addr,
            boot: self.boot.wrapping_add(1),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}
