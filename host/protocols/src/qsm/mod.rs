//! qsm's sans-IO protocol (after QuickSilver's QSM): the wire format, the
//! membership service, one host's protocol for all its objects, stream buffers,
//! the tree of token rings, and a deterministic simulator of a whole domain. The
//! sockets, threads and replicas around them are in `liveobjects_host::qsm`.
//!
//! - [`wire`]: datagrams: header, AES-256-GCM sealing with region-derived keys,
//!   replay window, bounded decoding.
//! - [`membership`]: the membership service: object views, regions, routes,
//!   failure detection.
//! - [`core`]: one host's protocol for all its objects.
//! - [`stream`], [`ring`]: stream buffers and the tree of rings.
//! - [`sim`]: a deterministic simulator of a whole domain.

pub mod core;
pub mod membership;
pub mod ring;
pub mod sim;
pub mod stream;
pub mod wire;
