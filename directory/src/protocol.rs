//! The wire protocol between `lo` and a directory server.
//!
//! Each request uses one QUIC bidirectional stream: the client writes a postcard
//! [`Request`] and finishes its side; the server answers with one [`Response`] and
//! finishes. Both sides bound what they read before decoding.

use crate::fresh::{Freshness, Vouched};
use crate::keys::PublicKey;
use crate::record::{Delegation, ObjectRecord, Signed};
use crate::store::Change;
use serde::{Deserialize, Serialize};

/// ALPN protocol name of the directory service.
pub const ALPN: &[u8] = b"liveobjects-directory/3";
/// Largest request without a blob, and the slack added on top of the blob cap.
pub const REQUEST_OVERHEAD: usize = 64 * 1024;
/// Default cap on one logic blob.
pub const DEFAULT_MAX_BLOB_BYTES: usize = 64 << 20;

/// A client's request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Who are you? (root key, limits)
    Hello,
    /// Create a top-level zone owned by `owner`; `proof` is `owner`'s signature over
    /// [`create_zone_message`] (it proves the requester holds the key).
    CreateZone {
        /// The zone, e.g. `lo://acme/`.
        zone: String,
        /// Its owner.
        owner: PublicKey,
        /// Proof of possession.
        proof: Vec<u8>,
    },
    /// Store a delegation signed by the owner of the enclosing zone.
    Delegate(Signed<Delegation>),
    /// Store a record signed by its zone owner, with its logic unless the server
    /// already has it.
    Publish {
        /// The record.
        record: Signed<ObjectRecord>,
        /// The component bytes.
        blob: Option<Vec<u8>>,
    },
    /// The record for a name, with its delegation chain.
    Resolve(String),
    /// A folder's records and sub-folders, with the folder's delegation chain.
    List(String),
    /// Whether the server holds a blob.
    HasBlob([u8; 32]),
    /// A blob's bytes.
    FetchBlob([u8; 32]),
    /// A mirror's pull: the entries written after serial `since` (all of them from
    /// 0), and once they are complete, the freshness statement they add up to.
    /// Anyone may ask, as for a listing: everything a directory holds is signed
    /// and meant to be read by whoever joins its objects.
    Transfer {
        /// The last serial the mirror holds.
        since: u64,
    },
    /// Hand a top-level zone to `to` (the root signs its new delegation), the
    /// current key keeping `grace_secs` to sign in; `proof` is the current owner's
    /// signature over [`rollover_message`].
    RolloverZone {
        /// The zone, e.g. `lo://acme/`.
        zone: String,
        /// Its new owner.
        to: PublicKey,
        /// How long the current key may still sign.
        grace_secs: u64,
        /// The current owner's signature.
        proof: Vec<u8>,
    },
    /// End the grace period of `key` in a top-level zone at once; `proof` is the
    /// current owner's signature over [`revoke_message`].
    RevokeKey {
        /// The zone.
        zone: String,
        /// The key revoked.
        key: PublicKey,
        /// The current owner's signature.
        proof: Vec<u8>,
    },
}

/// The server's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The root key this server's zones chain to.
        root: PublicKey,
        /// Largest blob accepted.
        max_blob_bytes: u64,
    },
    /// A write was stored durably.
    Stored,
    /// A record and its chain.
    Record {
        /// The record.
        record: Signed<ObjectRecord>,
        /// Delegations from the root down to the record's zone.
        chain: Vec<Signed<Delegation>>,
        /// The freshness statement, with proofs for the chain's delegations, then
        /// the record.
        vouched: Option<Box<Vouched>>,
    },
    /// A folder listing.
    Listing {
        /// Sub-folders.
        folders: Vec<String>,
        /// Records directly inside.
        records: Vec<Signed<ObjectRecord>>,
        /// Delegations from the root down to the folder's zone (records below may lie
        /// in deeper zones; resolve them by name to verify those).
        chain: Vec<Signed<Delegation>>,
        /// The freshness statement, with proofs for the chain's delegations, then
        /// the records.
        vouched: Option<Box<Vouched>>,
    },
    /// [`Request::HasBlob`] answer.
    HasBlob(bool),
    /// Blob bytes.
    Blob(Vec<u8>),
    /// Answer to [`Request::Transfer`].
    Transfer {
        /// Entries written after the asked serial, oldest first.
        changes: Vec<Change>,
        /// The serial the mirror holds once it stores them.
        serial: u64,
        /// Whether that is everything up to `statement` (otherwise ask again from
        /// `serial`).
        complete: bool,
        /// The primary's freshness statement at `serial` (when complete).
        statement: Option<Signed<Freshness>>,
    },
    /// The request was refused; nothing was changed.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// What went wrong and what to do.
        message: String,
    },
}

/// Why the server refused a request. Refusals never change stored data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorCode {
    /// The request did not decode or was invalid.
    #[error("malformed request")]
    Malformed,
    /// The request was larger than allowed.
    #[error("request too large")]
    TooLarge,
    /// A signature did not verify.
    #[error("bad signature")]
    BadSignature,
    /// The signer does not own the zone written to.
    #[error("not the zone owner")]
    NotZoneOwner,
    /// No zone contains the name.
    #[error("no such zone")]
    NoSuchZone,
    /// The zone exists already.
    #[error("zone exists")]
    ZoneExists,
    /// Version not above the stored one.
    #[error("stale version")]
    StaleVersion,
    /// Already expired.
    #[error("expired")]
    Expired,
    /// Blob over the cap.
    #[error("blob too large")]
    BlobTooLarge,
    /// Blob does not match the record's hash or size.
    #[error("blob mismatch")]
    BlobMismatch,
    /// No blob given and none stored.
    #[error("blob missing")]
    BlobMissing,
    /// Nothing stored under that name or hash.
    #[error("not found")]
    NotFound,
    /// The server failed (storage); the write did not happen.
    #[error("internal error")]
    Internal,
    /// The server's registration policy does not let this key create a
    /// top-level zone.
    #[error("registration closed")]
    RegistrationClosed,
    /// The server is a mirror: writes go to its primary.
    #[error("read-only mirror")]
    ReadOnly,
    /// The server's database is older than statements it signed before (restored
    /// from a backup): it signs and accepts nothing until its operator decides.
    #[error("database restored from an old backup")]
    Restored,
}

/// The message a zone owner signs to ask for a top-level zone.
pub fn create_zone_message(zone: &str) -> Vec<u8> {
    let mut m = b"liveobjects/v1/create-zone\0".to_vec();
    m.extend_from_slice(zone.as_bytes());
    m
}

/// What a top-level zone's owner signs to hand the zone, at its delegation's
/// `version`, to `to` (the root key and the version make the proof good for that
/// change in that directory only).
pub fn rollover_message(
    root: &PublicKey,
    zone: &str,
    version: u64,
    to: &PublicKey,
    grace_secs: u64,
) -> Vec<u8> {
    let mut m = b"liveobjects/v1/rollover\0".to_vec();
    m.extend_from_slice(
        &postcard::to_allocvec(&(root, zone, version, to, grace_secs)).expect("encodes"),
    );
    m
}

/// What a top-level zone's owner signs to revoke `key` at version `version`.
pub fn revoke_message(root: &PublicKey, zone: &str, version: u64, key: &PublicKey) -> Vec<u8> {
    let mut m = b"liveobjects/v1/revoke\0".to_vec();
    m.extend_from_slice(&postcard::to_allocvec(&(root, zone, version, key)).expect("encodes"));
    m
}

/// Decode a request (bounded by the caller's read limit).
pub fn decode_request(bytes: &[u8]) -> Result<Request, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Decode a response.
pub fn decode_response(bytes: &[u8]) -> Result<Response, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Encode any protocol message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_allocvec(message).expect("encoding to a Vec cannot fail")
}
