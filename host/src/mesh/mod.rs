//! The `mesh` driver: small groups of hosts connected pairwise (QUIC), with total
//! order through a sequencer, failure detection and state transfer to joiners.
//!
//! [`core`] holds the protocol as a sans-IO state machine, tested by a deterministic
//! simulator (`host/tests/mesh_simulation.rs`). The QUIC shell, the node daemon and
//! `lo join` are not built yet.

pub mod core;
