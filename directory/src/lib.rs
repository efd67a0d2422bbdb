//! The liveobjects directory: a signed, DNS-like tree of names that binds each live
//! object to its type, the content hash of its logic, its driver and its access
//! policy (see `DESIGN.md` section 4).
//!
//! Not built yet: this crate holds the place in the workspace layout until the
//! directory issue lands. It exports nothing.
#![deny(missing_docs)]
