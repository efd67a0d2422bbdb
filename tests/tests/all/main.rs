//! Cross-crate integration tests, in one binary (one link of wasmtime). Run one
//! module with `cargo test --release --test all -p liveobjects-tests -- MODULE::`.

mod bad_input;
mod batch;
mod foreign;
mod hostile;
mod hostile_aggregate;
mod replay;
mod upgrade;
