//! The liveobjects directory: a signed, DNS-like tree of names that binds each live
//! object to its type, the content hash of its logic, its driver and its access
//! policy (`DESIGN.md` section 4).
//!
//! - [`keys`]: ed25519 identities and key files.
//! - [`name`]: `lo://zone/path/name` names.
//! - [`record`]: object records and zone delegations, signed over their postcard
//!   encoding with a domain tag.
//! - [`verify`]: the client's checks: the signature chain from the trusted root key,
//!   zone ownership, expiry, logic hashes (pure functions, time passed in).
//! - [`fresh`]: freshness statements (the root key's signature over a Merkle tree of
//!   everything a server holds, valid for minutes) and inclusion proofs, so that a
//!   frozen or rolled-back server, or a mirror cut off from its primary, is refused.
//! - [`store`]: the server's redb database (durable, transactional), with a write
//!   serial and change log that mirrors pull incrementally.
//! - [`server`]: the request handler ([`server::Directory`], no sockets) and its QUIC
//!   shell ([`server::Server`]).
//! - [`client`]: QUIC client and the [`client::Resolver`] (`resolve(name) ->
//!   VerifiedRecord`, `fetch_logic`, `list`), which refuses rollbacks across runs.
//!
//! Trust flows only from signatures: the root key signs top-level zone delegations,
//! a zone's owner signs records and sub-zone delegations inside it; the server checks
//! writes, and clients check everything they read, whichever server it came from.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod client;
pub mod fresh;
pub mod keys;
mod mirror;
pub mod name;
pub mod protocol;
pub mod record;
pub mod server;
pub mod store;
pub mod tls;
pub mod verify;
