//! The `mesh` driver: small groups of hosts connected pairwise over QUIC, with total
//! order through a sequencer, failure detection and state transfer to joiners.
//!
//! - [`core`]: the protocol as a sans-IO state machine (`liveobjects_protocols::mesh`),
//!   tested by a deterministic simulator over many seeds (`host/tests/all/mesh_simulation.rs`).
//! - [`net`]: the QUIC transport, mutually authenticated with certificates bound to
//!   the hosts' ed25519 identities; bounded frames and queues.
//! - [`group`]: a host's groups: each object's core in a task of its own, its
//!   sandboxed replica on the node's object executor.
//! - [`node_driver`]: the mesh as a node's [`Driver`](crate::driver::Driver).
//!
//! Joining by name is in [`crate::join`], the daemon in [`crate::node`].

pub mod group;
pub mod net;
pub mod node_driver;

pub use liveobjects_protocols::mesh as core;
