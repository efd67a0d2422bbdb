//! The `qsm` driver: scalable reliable IP multicast for many objects per host,
//! after QuickSilver's QSM (`DESIGN.md` section 7).
//!
//! Hosts that joined the same set of objects form a *region*; each region has one
//! multicast address, so a host in thousands of objects runs a few protocols, not
//! thousands. Events travel on per-sender streams into regions, batched into large
//! datagrams, paced by a rate the receivers' reports steer, and repaired peer to
//! peer along token rings of about 25 hosts (a tree of rings beyond that).
//!
//! - [`wire`]: datagrams: header, AES-256-GCM sealing with region-derived keys,
//!   replay window, bounded decoding.
//! - [`membership`]: the membership service (sans-IO): object views, regions,
//!   routes, failure detection.
//! - [`core`]: one host's protocol for all its objects (sans-IO).
//! - [`stream`], [`ring`]: stream buffers and the tree of rings.
//! - [`sim`]: a deterministic simulator of a whole domain.
//! - [`net`]: UDP data sockets and QUIC control frames.
//! - [`service`]: the membership service's shell (QUIC, authorization).
//! - [`driver`]: a host's driver: the core on its own thread, replicas in tasks.
pub mod core;
pub mod driver;
pub mod membership;
pub mod net;
pub mod node_driver;
pub mod ring;
pub mod service;
pub mod sim;
pub mod stream;
mod thread;
pub mod wire;
