//! The directory's integration tests, in one binary.

mod fuzz;
mod mirror;
mod server;
