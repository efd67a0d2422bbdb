//! The liveobjects drivers' protocols as sans-IO state machines: events in,
//! actions out, time passed in. This crate depends on neither tokio nor wasmtime,
//! so the compiler keeps the protocols free of sockets, clocks and guest code (as
//! quinn-proto does for quinn); the host (`liveobjects-host`) wraps each in a thin
//! IO shell. The simulators live here too, for the tests and benchmarks, and do not
//! ship inside `lo`.
//!
//! - [`mesh`]: small groups, total order through a sequencer, state transfer.
//! - [`qsm`]: scalable reliable IP multicast over regions and token rings.
//! - [`gossip`]: SWIM membership, Cyclon peer sampling and push-pull aggregates.

pub mod gossip;
pub mod mesh;
pub mod qsm;
