//! The gossip driver's protocol, sans-IO: SWIM membership, Cyclon peer sampling
//! and push-pull aggregation ([`core`]), and a deterministic simulator of many
//! hosts ([`sim`]). Aggregates' code is a parameter ([`core::AggregateCode`]): the
//! host supplies the sandboxed components.

pub mod core;
pub mod sampling;
pub mod sim;

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
            boot: self.boot.checked_add(1)?,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}
