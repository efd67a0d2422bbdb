//! The `qsm` driver: scalable reliable IP multicast for many objects per host,
//! after QuickSilver's QSM (`DESIGN.md` section 7).
//!
//! Hosts that joined the same set of objects form a *region*; each region has one
//! multicast address, so a host in thousands of objects runs a few protocols, not
//! thousands. Events travel on per-sender streams into regions, batched into large
//! datagrams, paced by a rate the receivers' reports steer, and repaired peer to
//! peer along token rings of about 25 hosts (a tree of rings beyond that).
//!
//! The sans-IO protocol is in `liveobjects_protocols::qsm` (re-exported here but
//! for its simulator): [`wire`] (datagrams, sealing, replay window), [`membership`]
//! (the membership service), [`core`] (one host's protocol for all its objects),
//! [`stream`] and [`ring`] (stream buffers, the tree of rings).
//!
//! - [`net`]: UDP data sockets and QUIC control frames.
//! - [`service`]: the membership service's shell (QUIC, authorization).
//! - [`driver`]: a host's driver: the core on its own thread, replicas in tasks.
pub mod driver;
pub mod net;
pub mod node_driver;
pub mod service;
mod thread;

pub use liveobjects_protocols::qsm::{core, membership, ring, stream, wire};
