//! The `mesh` driver: small groups of hosts connected pairwise over QUIC, with total
//! order through a sequencer, failure detection and state transfer to joiners.
//!
//! - [`core`]: the protocol as a sans-IO state machine, tested by a deterministic
//!   simulator over many seeds (`host/tests/mesh_simulation.rs`).
//! - [`net`]: the QUIC transport, mutually authenticated with certificates bound to
//!   the hosts' ed25519 identities; bounded frames and queues.
//! - [`group`]: a host's groups: each object's core and sandboxed replica in one task.
//!
//! Joining by name is in [`crate::join`], the daemon in [`crate::node`]. Not built
//! yet: running guests on a worker pool instead of inside the group task.

pub mod core;
pub mod group;
pub mod net;
