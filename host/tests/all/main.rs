//! The host's integration tests, in one binary (as wasmtime's `tests/all`): one
//! link of wasmtime and the host instead of one per file. Each module was a test
//! binary of its own; run one with `cargo test --release --test all -- MODULE::`.

mod common;

mod browser;
mod cli;
mod directory;
mod divergence;
mod docs;
mod gossip_processes;
mod gossip_simulation;
mod http;
mod join;
mod json;
mod mesh_quic;
mod mesh_simulation;
mod node;
mod qsm_fuzz;
mod qsm_namespaces;
mod qsm_processes;
mod qsm_simulation;
mod replay;
mod upgrade;
mod vsync_objects;
mod vsync_processes;
mod vsync_simulation;
