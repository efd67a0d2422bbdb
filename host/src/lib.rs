//! The liveobjects host: runs live objects (WebAssembly components) in sandboxes and
//! keeps their replicas in step.
//!
//! - [`runtime`]: wasmtime engine, compiled-component cache, sandboxed [`Replica`]s
//!   with memory, CPU and multicast limits, dynamic method calls by name (WAVE text).
//! - [`local`]: the in-process driver: several replicas of one object in one process,
//!   every multicast delivered to all of them in one total order.
//! - [`mesh`]: the mesh driver (QUIC between all members, total order through a
//!   sequencer); [`join`] and [`node`]: joining by name and the host daemon.
//! - [`qsm`]: the qsm driver (IP multicast per region, token-ring repair, rate
//!   control; many objects per host).
//! - [`gossip`]: the gossip driver (SWIM, Cyclon peer sampling, push-pull
//!   aggregates such as the census).
//!
//! - [`executor`]: the object executor every networked driver runs guests on
//!   (worker pool, mailboxes bounded in bytes, budgets, quarantine).
//! - [`driver`]: the one `Driver` trait and the table of drivers; [`group`]: the
//!   vocabulary every driver's objects share (errors, notices, status).
//!
//! - [`http`] and [`json`]: the HTTP+JSON API, the web page and the WIT-to-JSON
//!   mapping; [`references`]: typed references between objects (live documents),
//!   checked by the host.
//!
//! The `lo` binary (`src/main.rs`) is the command-line front end.
//!
//! [`Replica`]: runtime::Replica
#![deny(missing_docs, unsafe_code)]

pub mod driver;
pub mod executor;
pub mod gossip;
pub mod group;
pub mod http;
pub mod join;
pub mod json;
pub mod local;
pub mod mesh;
pub mod node;
pub mod qsm;
pub mod references;
pub mod runtime;
pub mod vsync;
