//! The directory server: checks every write, stores it durably, answers lookups.
//!
//! [`Directory`] is the request handler (no sockets: a request in, a response out,
//! time passed in); [`Server`] is the QUIC shell around it.
//!
//! A server is a zone's primary (it holds the root key, checks and stores writes,
//! and signs [freshness statements](crate::fresh)) or a mirror of another server
//! (`lo directory serve --secondary-of`): it pulls the entries written since its
//! last pull, like a DNS zone transfer, checks them against the primary's signed
//! statement, serves them with the primary's statement and refuses writes. A
//! mirror holds no signing key, so clients need not trust it: what it could change
//! would not verify, and if it stops hearing from its primary its answers are
//! refused once the last statement expires.
//!
//! A primary remembers, in a file beside its database, the highest serial it has
//! signed. Started on a database older than that (restored from a backup), it
//! neither signs nor accepts writes until its operator passes
//! `--accept-restored-database`: clients would otherwise take the old contents as
//! fresh.

use crate::fresh::{DEFAULT_VALIDITY_SECS, EntryKey, Freshness, MerkleTree, Vouched, leaf_hash};
use crate::keys::{Identity, PublicKey};
use crate::name::Name;
use crate::protocol::{
    ErrorCode, REQUEST_OVERHEAD, Request, Response, create_zone_message, decode_request, encode,
};
use crate::record::{Delegation, ObjectRecord, Signed};
use crate::store::{Change, Store, StoreError};
use crate::verify::verify_chain;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// Most entries one transfer answer carries.
pub const TRANSFER_CHANGES: usize = 2_000;
/// About the most bytes of entries one transfer answer carries.
pub const TRANSFER_BYTES: usize = 8 << 20;

/// How long a top-level zone created by the root lasts before it must be renewed.
pub const ZONE_LIFETIME_SECS: u64 = 5 * 365 * 24 * 3600;

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Who may create top-level zones on a server (`lo directory serve
/// --registration`): `closed` (only the root key, the operator's: the default),
/// `open` (any key: a test or demo directory), or `keys:KEY,KEY,...` (the root
/// key and these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Registration {
    /// Only the root key.
    #[default]
    Closed,
    /// Any key.
    Open,
    /// The root key and these keys.
    Keys(Vec<PublicKey>),
}

impl Registration {
    fn admits(&self, owner: &PublicKey, root: &PublicKey) -> bool {
        owner == root
            || match self {
                Registration::Closed => false,
                Registration::Open => true,
                Registration::Keys(keys) => keys.contains(owner),
            }
    }
}

impl std::str::FromStr for Registration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "closed" => Ok(Registration::Closed),
            "open" => Ok(Registration::Open),
            _ => {
                let Some(keys) = s.strip_prefix("keys:") else {
                    return Err(format!(
                        "`{s}` is not a registration policy: use closed, open or keys:KEY,KEY,..."
                    ));
                };
                keys.split(',')
                    .map(|k| {
                        k.trim()
                            .parse::<PublicKey>()
                            .map_err(|e| format!("registration key `{k}`: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Registration::Keys)
            }
        }
    }
}

/// Whether a directory takes writes or mirrors another server.
enum Role {
    /// Checks and stores writes; signs top-level zones and freshness statements.
    Primary {
        /// The root identity.
        root: Identity,
    },
    /// Serves what it pulls from `primary`; refuses writes.
    Mirror {
        /// The root key its contents chain to.
        root: PublicKey,
        /// Where writes go.
        primary: SocketAddr,
    },
}

/// The Merkle tree of the store at one serial, with the statement that vouches
/// for it.
struct FreshState {
    serial: u64,
    /// Shared with the next state when only the statement changes (a re-sign).
    contents: Arc<Contents>,
    statement: Option<Signed<Freshness>>,
}

/// The Merkle tree over every entry, and each entry's leaf index.
struct Contents {
    tree: MerkleTree,
    index: HashMap<EntryKey, usize>,
}

/// The request handler: storage plus the root identity (or, on a mirror, the root
/// key and its primary).
pub struct Directory {
    store: Store,
    role: Role,
    registration: Registration,
    max_blob_bytes: usize,
    /// Held for writing across each write's checks and its commit, so two
    /// concurrent writes can never both pass a check (zone free, version newer)
    /// that only one may pass; held for reading while an answer is read with the
    /// freshness tree, so that both are of the same serial.
    writes: RwLock<()>,
    /// Validity of the statements this primary signs.
    validity_secs: u64,
    /// The file holding the highest serial this primary signed (none: not kept).
    high_water: Option<PathBuf>,
    /// Why this primary does not sign or write (its database was restored).
    restored: Option<String>,
    fresh: Mutex<Option<Arc<FreshState>>>,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

fn internal(e: StoreError) -> Response {
    tracing::error!("storage failure: {e}");
    refuse(ErrorCode::Internal, format!("storage failure: {e}"))
}

impl Directory {
    /// A primary over `store`, signing top-level zones and freshness statements
    /// with `root`.
    pub fn new(store: Store, root: Identity, max_blob_bytes: usize) -> Self {
        Self::with_role(store, Role::Primary { root }, max_blob_bytes)
    }

    /// A mirror over `store` of the primary at `primary`, whose contents chain to
    /// `root`: it answers reads and transfers and refuses writes.
    pub fn mirror(
        store: Store,
        root: PublicKey,
        primary: SocketAddr,
        max_blob_bytes: usize,
    ) -> Self {
        Self::with_role(store, Role::Mirror { root, primary }, max_blob_bytes)
    }

    fn with_role(store: Store, role: Role, max_blob_bytes: usize) -> Self {
        Directory {
            store,
            role,
            registration: Registration::default(),
            max_blob_bytes,
            writes: RwLock::new(()),
            validity_secs: DEFAULT_VALIDITY_SECS,
            high_water: None,
            restored: None,
            fresh: Mutex::new(None),
        }
    }

    /// Sign freshness statements valid for `secs` (default
    /// [`DEFAULT_VALIDITY_SECS`]); they are re-signed when half of that is left.
    pub fn with_freshness_validity(mut self, secs: u64) -> Self {
        self.validity_secs = secs.max(2);
        self
    }

    /// Keep the highest signed serial in `path` (beside the database). If it is
    /// above the database's serial, the database was restored from an older
    /// backup: unless `accept_restored`, the primary then neither signs nor
    /// writes; with it, the serial is raised past the file's so that serials never
    /// repeat, and the restored contents are signed as current.
    pub fn with_high_water(
        mut self,
        path: PathBuf,
        accept_restored: bool,
    ) -> Result<Self, StoreError> {
        let signed = read_high_water(&path);
        let serial = self.store.serial()?;
        if let Some(signed) = signed
            && signed > serial
        {
            if accept_restored {
                tracing::warn!(
                    "the database is at serial {serial} but this server signed up to {signed}: \
                     accepting it as restored, continuing from serial {}",
                    signed + 1
                );
                self.store.raise_serial(signed + 1)?;
            } else {
                self.restored = Some(format!(
                    "this directory's database is at serial {serial}, but the server has \
                     signed statements up to serial {signed} ({}): it was restored from an \
                     older backup, so it neither signs nor accepts writes; restore the latest \
                     copy (a mirror holds one), or restart with --accept-restored-database \
                     to serve these contents as current",
                    path.display()
                ));
                tracing::error!("{}", self.restored.as_deref().unwrap_or_default());
            }
        }
        self.high_water = Some(path);
        Ok(self)
    }

    /// Why this primary refuses to sign and write, if it does.
    pub fn restored(&self) -> Option<&str> {
        self.restored.as_deref()
    }

    /// Let `registration` decide who creates top-level zones (default: closed).
    pub fn with_registration(mut self, registration: Registration) -> Self {
        self.registration = registration;
        self
    }

    /// The storage (tests and repair tools).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The root public key.
    pub fn root(&self) -> PublicKey {
        match &self.role {
            Role::Primary { root } => root.public(),
            Role::Mirror { root, .. } => *root,
        }
    }

    /// The root identity, if this is the primary (writes are refused otherwise).
    fn signer(&self) -> Result<&Identity, Response> {
        match &self.role {
            Role::Primary { root } => match &self.restored {
                Some(reason) => Err(refuse(ErrorCode::Restored, reason.clone())),
                None => Ok(root),
            },
            Role::Mirror { primary, .. } => Err(refuse(
                ErrorCode::ReadOnly,
                format!(
                    "this directory server is a read-only mirror of {primary}; send writes \
                     there (--directory {primary})"
                ),
            )),
        }
    }

    /// Largest request this server reads.
    pub fn max_request_bytes(&self) -> usize {
        self.max_blob_bytes + REQUEST_OVERHEAD
    }

    /// Answer one request at Unix time `now`.
    pub fn handle(&self, request: Request, now: u64) -> Response {
        let result = match request {
            Request::Hello => Ok(Response::Hello {
                root: self.root(),
                max_blob_bytes: self.max_blob_bytes as u64,
            }),
            Request::CreateZone { zone, owner, proof } => {
                let _write = self.writes.write().unwrap_or_else(PoisonError::into_inner);
                self.signer()
                    .and_then(|root| self.create_zone(root, &zone, owner, &proof, now))
            }
            Request::Delegate(signed) => {
                let _write = self.writes.write().unwrap_or_else(PoisonError::into_inner);
                self.signer().and_then(|_| self.delegate(signed, now))
            }
            Request::Publish { record, blob } => {
                let _write = self.writes.write().unwrap_or_else(PoisonError::into_inner);
                self.signer().and_then(|_| self.publish(record, blob, now))
            }
            Request::RolloverZone {
                zone,
                to,
                grace_secs,
                proof,
            } => {
                let _write = self.writes.write().unwrap_or_else(PoisonError::into_inner);
                self.signer().and_then(|root| {
                    self.change_top_level_zone(root, &zone, &proof, now, |current| {
                        (
                            crate::protocol::rollover_message(
                                &root.public(),
                                &zone,
                                current.version,
                                &to,
                                grace_secs,
                            ),
                            Ok(current.rolled_over(to, grace_secs, now)),
                        )
                    })
                })
            }
            Request::RevokeKey { zone, key, proof } => {
                let _write = self.writes.write().unwrap_or_else(PoisonError::into_inner);
                self.signer().and_then(|root| {
                    self.change_top_level_zone(root, &zone, &proof, now, |current| {
                        (
                            crate::protocol::revoke_message(
                                &root.public(),
                                &zone,
                                current.version,
                                &key,
                            ),
                            if current.in_grace(&key, now) {
                                Ok(current.revoking(&key, now))
                            } else {
                                Err(refuse(
                                    ErrorCode::Malformed,
                                    format!(
                                        "{key} is not a key in grace in {zone} (owned by {}); \
                                         to replace the owner, roll the zone over with no grace",
                                        current.key
                                    ),
                                ))
                            },
                        )
                    })
                })
            }
            Request::Resolve(name) => self.resolve(&name, now),
            Request::List(folder) => self.list(&folder, now),
            Request::Transfer { since } => self.transfer(since, now),
            Request::HasBlob(hash) => self
                .store
                .has_blob(&hash)
                .map(Response::HasBlob)
                .map_err(internal),
            Request::FetchBlob(hash) => match self.store.get_blob(&hash) {
                Ok(Some(bytes)) => Ok(Response::Blob(bytes)),
                Ok(None) => Err(refuse(
                    ErrorCode::NotFound,
                    format!("no logic with sha256 {}", hex::encode(hash)),
                )),
                Err(e) => Err(internal(e)),
            },
        };
        result.unwrap_or_else(|refusal| refusal)
    }

    /// The owner of the deepest zone enclosing `name`, from the stored (and
    /// re-verified) delegations. `None` if only the root encloses it.
    fn zone_owner(&self, name: &Name, now: u64) -> Result<Option<Delegation>, Response> {
        let chain = self.store.chain_for(name).map_err(internal)?;
        let verified = verify_chain(self.root(), &chain, now).map_err(|e| match e {
            crate::verify::VerifyError::Expired { name: zone, .. } => refuse(
                ErrorCode::Expired,
                format!(
                    "the delegation of zone {zone} has expired; its owner must renew it \
                     (the enclosing zone's owner signs a new version)"
                ),
            ),
            e => refuse(
                ErrorCode::Internal,
                format!("stored delegations for {name} do not verify: {e}"),
            ),
        })?;
        Ok(verified.delegations.last().cloned())
    }

    /// Re-sign a top-level zone's delegation as `change` makes it, if `proof` is
    /// the current owner's signature over the message `change` gives for it.
    fn change_top_level_zone(
        &self,
        root: &Identity,
        zone: &str,
        proof: &[u8],
        now: u64,
        change: impl FnOnce(&Delegation) -> (Vec<u8>, Result<Delegation, Response>),
    ) -> Result<Response, Response> {
        let name = Name::parse(zone).map_err(|e| refuse(ErrorCode::Malformed, e.to_string()))?;
        if !name.is_folder() || name.segments().len() != 1 {
            return Err(refuse(
                ErrorCode::Malformed,
                format!(
                    "{zone} is not a top-level zone; the owner of the zone around it signs \
                     its new delegation (`lo zone rollover {zone} --key PARENT_KEY`)"
                ),
            ));
        }
        let current = self
            .store
            .get_delegation(zone)
            .map_err(internal)?
            .ok_or_else(|| refuse(ErrorCode::NoSuchZone, format!("no zone {zone}")))?
            .open()
            .map_err(|e| {
                refuse(
                    ErrorCode::Internal,
                    format!("stored delegation of {zone}: {e}"),
                )
            })?;
        let (message, changed) = change(&current);
        if !current.key.verify(&message, proof) {
            return Err(refuse(
                ErrorCode::NotZoneOwner,
                format!(
                    "the request for {zone} is not signed by its owner {} (at version {})",
                    current.key, current.version
                ),
            ));
        }
        let changed = changed?;
        if changed.expires_at <= now {
            return Err(refuse(
                ErrorCode::Expired,
                format!("the delegation of {zone} has expired; it cannot be changed"),
            ));
        }
        let signed = Signed::sign(&changed, root);
        self.store.put_delegation(zone, &signed).map_err(internal)?;
        tracing::info!(
            "zone {zone} is now owned by {} (version {})",
            changed.key,
            changed.version
        );
        Ok(Response::Stored)
    }

    fn create_zone(
        &self,
        root: &Identity,
        zone: &str,
        owner: PublicKey,
        proof: &[u8],
        now: u64,
    ) -> Result<Response, Response> {
        let name = Name::parse(zone).map_err(|e| refuse(ErrorCode::Malformed, e.to_string()))?;
        if !name.is_folder() || name.segments().len() != 1 {
            return Err(refuse(
                ErrorCode::Malformed,
                format!(
                    "{zone} is not a top-level zone (lo://name/); to create a zone inside \
                     your own, use `lo zone delegate`"
                ),
            ));
        }
        if !owner.verify(&create_zone_message(zone), proof) {
            return Err(refuse(
                ErrorCode::BadSignature,
                format!("the proof for {zone} is not a signature by {owner}"),
            ));
        }
        if !self.registration.admits(&owner, &root.public()) {
            return Err(refuse(
                ErrorCode::RegistrationClosed,
                format!(
                    "this directory does not let key {} create top-level zones (its \
                     registration is {}); ask its operator for {zone}, or for a zone \
                     delegated to you inside theirs",
                    owner.short(),
                    match &self.registration {
                        Registration::Closed => "closed".to_string(),
                        Registration::Open => "open".to_string(),
                        Registration::Keys(k) => format!("limited to {} key(s)", k.len()),
                    }
                ),
            ));
        }
        if self.store.get_delegation(zone).map_err(internal)?.is_some() {
            return Err(refuse(
                ErrorCode::ZoneExists,
                format!("zone {zone} already exists; choose another name"),
            ));
        }
        let delegation = Delegation {
            zone: zone.to_string(),
            key: owner,
            servers: Vec::new(),
            version: 1,
            issued_at: now,
            expires_at: now + ZONE_LIFETIME_SECS,
            previous: Vec::new(),
        };
        let signed = Signed::sign(&delegation, root);
        self.store.put_delegation(zone, &signed).map_err(internal)?;
        tracing::info!("created zone {zone} for {owner}");
        Ok(Response::Stored)
    }

    fn delegate(&self, signed: Signed<Delegation>, now: u64) -> Result<Response, Response> {
        let delegation = signed
            .open()
            .map_err(|e| refuse(ErrorCode::Malformed, e.to_string()))?;
        let zone = Name::parse(&delegation.zone).expect("validated by open");
        let parent = zone.parent();
        let enclosing = self.zone_owner(&parent, now)?;
        let (parent_zone, parent_owner) = match &enclosing {
            Some(d) => (d.zone.clone(), d.key),
            None => ("lo://".to_string(), self.root()),
        };
        let may_sign = match &enclosing {
            Some(d) => d.may_sign(&signed.signer, now),
            None => signed.signer == parent_owner,
        };
        if !may_sign {
            return Err(refuse(
                ErrorCode::NotZoneOwner,
                format!(
                    "delegation of {} is signed by {}, but the enclosing zone {parent_zone} \
                     is owned by {parent_owner}",
                    delegation.zone, signed.signer
                ),
            ));
        }
        if !signed.signature_valid() {
            return Err(refuse(
                ErrorCode::BadSignature,
                format!(
                    "the signature on the delegation of {} does not verify",
                    delegation.zone
                ),
            ));
        }
        if delegation.expires_at <= now {
            return Err(refuse(
                ErrorCode::Expired,
                format!("delegation of {} is already expired", delegation.zone),
            ));
        }
        if let Some(existing) = self
            .store
            .get_delegation(&delegation.zone)
            .map_err(internal)?
            // As for records: one signed by a key that may no longer sign in the
            // enclosing zone does not hold the version bar.
            && match &enclosing {
                Some(d) => d.may_sign(&existing.signer, now),
                None => existing.signer == self.root(),
            }
        {
            let existing = existing.open().map_err(|e| {
                internal(StoreError::Corrupt {
                    what: "delegation",
                    key: delegation.zone.clone(),
                    reason: e.to_string(),
                })
            })?;
            if existing.version >= delegation.version {
                return Err(refuse(
                    ErrorCode::StaleVersion,
                    format!(
                        "zone {} is at version {}; send version {} or higher",
                        delegation.zone,
                        existing.version,
                        existing.version + 1
                    ),
                ));
            }
        }
        self.store
            .put_delegation(&delegation.zone, &signed)
            .map_err(internal)?;
        Ok(Response::Stored)
    }

    fn publish(
        &self,
        signed: Signed<ObjectRecord>,
        blob: Option<Vec<u8>>,
        now: u64,
    ) -> Result<Response, Response> {
        let record = signed
            .open()
            .map_err(|e| refuse(ErrorCode::Malformed, e.to_string()))?;
        let name = Name::parse(&record.name).expect("validated by open");
        let Some(zone_delegation) = self.zone_owner(&name, now)? else {
            return Err(refuse(
                ErrorCode::NoSuchZone,
                format!(
                    "no zone contains {name}; create one first (`lo zone create lo://{}/`)",
                    name.segments()[0]
                ),
            ));
        };
        let (zone, owner) = (&zone_delegation.zone, zone_delegation.key);
        if !zone_delegation.may_sign(&signed.signer, now) {
            let rolled = if zone_delegation
                .previous
                .iter()
                .any(|p| p.key == signed.signer)
            {
                " (a key it rolled over from, whose grace period is over)"
            } else {
                ""
            };
            return Err(refuse(
                ErrorCode::NotZoneOwner,
                format!(
                    "{name} is in zone {zone}, owned by {owner}; the record is signed by {}{rolled}",
                    signed.signer
                ),
            ));
        }
        if !signed.signature_valid() {
            return Err(refuse(
                ErrorCode::BadSignature,
                format!("the signature on the record for {name} does not verify"),
            ));
        }
        if record.expires_at <= now {
            return Err(refuse(
                ErrorCode::Expired,
                format!("the record for {name} is already expired"),
            ));
        }
        if let Some(existing) = self.store.get_record(name.as_str()).map_err(internal)?
            // A record signed by a key that may no longer sign here (revoked, or
            // its grace over) does not hold the version bar: whoever held that key
            // could otherwise have blocked the name with version u64::MAX.
            && zone_delegation.may_sign(&existing.signer, now)
        {
            let current = existing.open().map(|r| r.version).unwrap_or(0);
            if current >= record.version {
                return Err(refuse(
                    ErrorCode::StaleVersion,
                    format!(
                        "{name} is at version {current}; publish version {} or higher",
                        current + 1
                    ),
                ));
            }
        }
        let hash = record.logic.hash;
        match &blob {
            Some(bytes) => {
                if bytes.len() > self.max_blob_bytes {
                    return Err(refuse(
                        ErrorCode::BlobTooLarge,
                        format!(
                            "logic is {} bytes; this server accepts at most {}",
                            bytes.len(),
                            self.max_blob_bytes
                        ),
                    ));
                }
                if let Err(e) = crate::verify::verify_logic(&record, bytes) {
                    return Err(refuse(ErrorCode::BlobMismatch, e.to_string()));
                }
            }
            None => {
                if !self.store.has_blob(&hash).map_err(internal)? {
                    return Err(refuse(
                        ErrorCode::BlobMissing,
                        format!(
                            "the server has no logic with sha256 {}; send it",
                            hex::encode(hash)
                        ),
                    ));
                }
            }
        }
        self.store
            .put_record(name.as_str(), &signed, blob.as_deref().map(|b| (&hash, b)))
            .map_err(internal)?;
        tracing::info!("published {name} version {}", record.version);
        Ok(Response::Stored)
    }

    fn resolve(&self, name: &str, now: u64) -> Result<Response, Response> {
        let name = Name::parse(name).map_err(|e| refuse(ErrorCode::Malformed, e.to_string()))?;
        self.consistent(now, |state| {
            let record = self
                .store
                .get_record(name.as_str())
                .map_err(internal)?
                .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no object named {name}")))?;
            let chain = self.store.chain_for(&name).map_err(internal)?;
            let keys = chain_keys(&chain)
                .chain([EntryKey::Record(record_name(&record))])
                .collect::<Vec<_>>();
            let vouched = vouch(state, &keys).map(Box::new);
            Ok(Response::Record {
                record,
                chain,
                vouched,
            })
        })
    }

    fn list(&self, folder: &str, now: u64) -> Result<Response, Response> {
        let folder =
            Name::parse(folder).map_err(|e| refuse(ErrorCode::Malformed, e.to_string()))?;
        if !folder.is_folder() {
            return Err(refuse(
                ErrorCode::Malformed,
                format!("{folder} is not a folder (folders end with /)"),
            ));
        }
        self.consistent(now, |state| {
            let listing = self.store.list(&folder).map_err(internal)?;
            let chain = self.store.chain_for(&folder).map_err(internal)?;
            let keys = chain_keys(&chain)
                .chain(
                    listing
                        .records
                        .iter()
                        .map(|r| EntryKey::Record(record_name(r))),
                )
                .collect::<Vec<_>>();
            let vouched = vouch(state, &keys).map(Box::new);
            Ok(Response::Listing {
                folders: listing.folders,
                records: listing.records,
                chain,
                vouched,
            })
        })
    }

    fn transfer(&self, since: u64, now: u64) -> Result<Response, Response> {
        let _read = self.writes.read().unwrap_or_else(PoisonError::into_inner);
        let state = self.fresh_state(now)?;
        let (changes, more) = self
            .store
            .changes(since, state.serial, TRANSFER_CHANGES, TRANSFER_BYTES)
            .map_err(internal)?;
        let serial = match (more, changes.last()) {
            (true, Some(last)) => last.serial,
            // Nothing sent: the mirror asks again from where it was.
            (true, None) => since,
            (false, _) => state.serial.max(since),
        };
        Ok(Response::Transfer {
            changes,
            serial,
            complete: !more,
            statement: (!more).then(|| state.statement.clone()).flatten(),
        })
    }

    /// Run `read` against the store and the freshness tree of the same serial
    /// (writes wait meanwhile). Only a repair tool writing around the server could
    /// slip in between; then the read is tried again, a few times.
    fn consistent(
        &self,
        now: u64,
        read: impl Fn(&FreshState) -> Result<Response, Response>,
    ) -> Result<Response, Response> {
        let _read = self.writes.read().unwrap_or_else(PoisonError::into_inner);
        let mut tries = 0;
        loop {
            let state = self.fresh_state(now)?;
            let answer = read(&state)?;
            tries += 1;
            if tries >= 3 || self.store.serial().map_err(internal)? == state.serial {
                return Ok(answer);
            }
        }
    }

    /// The tree at the store's current serial and a statement for it: on the
    /// primary signed afresh when the contents changed or half its validity is
    /// gone; on a mirror the primary's, as last pulled.
    ///
    /// The whole tree is rebuilt from the store after each write (on the next read
    /// or transfer). That costs a read of every entry: see the directory bench's
    /// "resolve after a write" column for what it takes at 10,000 and 100,000
    /// entries.
    fn fresh_state(&self, now: u64) -> Result<Arc<FreshState>, Response> {
        let mut fresh = self.fresh.lock().expect("fresh lock");
        let serial = self.store.serial().map_err(internal)?;
        if let Some(state) = fresh.as_ref()
            && state.serial == serial
            && !self.needs_signing(state, now)
        {
            return Ok(state.clone());
        }
        let (contents, serial) = match fresh.as_ref() {
            Some(state) if state.serial == serial => (state.contents.clone(), serial),
            _ => {
                let (serial, entries) = self.store.entries().map_err(internal)?;
                (Arc::new(build_tree(&entries)), serial)
            }
        };
        let tree = &contents.tree;
        let statement = match (&self.role, &self.restored) {
            (Role::Primary { root }, None) => {
                let statement = Signed::sign(
                    &Freshness {
                        serial,
                        root: tree.root(),
                        entries: tree.len() as u64,
                        issued_at: now,
                        expires_at: now + self.validity_secs,
                    },
                    root,
                );
                // The file first: a statement never goes out for a serial the file
                // does not cover.
                if let Some(path) = &self.high_water
                    && read_high_water(path).is_none_or(|signed| signed < serial)
                {
                    write_high_water(path, serial).map_err(|e| {
                        refuse(
                            ErrorCode::Internal,
                            format!("cannot record the signed serial in {}: {e}", path.display()),
                        )
                    })?;
                }
                self.store.set_freshness(&statement).map_err(internal)?;
                Some(statement)
            }
            // A restored primary and a mirror serve the statement they hold.
            _ => self.store.freshness().map_err(internal)?,
        };
        let state = Arc::new(FreshState {
            serial,
            contents,
            statement,
        });
        *fresh = Some(state.clone());
        Ok(state)
    }

    fn needs_signing(&self, state: &FreshState, now: u64) -> bool {
        match (&self.role, &self.restored) {
            (Role::Primary { .. }, None) => state
                .statement
                .as_ref()
                .and_then(|s| s.open().ok())
                .is_none_or(|f| f.expires_at < now + self.validity_secs / 2),
            // A mirror's statement changes when it stores a pull.
            _ => false,
        }
    }

    /// A mirror stores one complete pull from its primary, in one transaction:
    /// `changes` on top of what it holds (or, with `replace`, instead of it), up
    /// to `serial`, with the primary's `statement`, which must vouch for exactly
    /// the contents that result. Nothing is stored if it does not; readers keep
    /// the previous contents and statement until the pull is stored.
    pub fn install_pull(
        &self,
        changes: &[Change],
        serial: u64,
        statement: &Signed<Freshness>,
        replace: bool,
    ) -> Result<(), MirrorError> {
        let _write = self.writes.write().unwrap_or_else(PoisonError::into_inner);
        if statement.signer != self.root() || !statement.signature_valid() {
            return Err(MirrorError::Refused(
                "the primary's freshness statement is not signed by the root key".into(),
            ));
        }
        let vouched = statement
            .open()
            .map_err(|e| MirrorError::Refused(format!("malformed freshness statement: {e}")))?;
        let held = self.store.serial()?;
        if vouched.serial < held && !replace {
            return Err(MirrorError::Behind {
                primary: vouched.serial,
                mirror: held,
            });
        }
        if vouched.serial != serial {
            return Err(MirrorError::Refused(format!(
                "a transfer up to serial {serial} came with a statement for serial {}",
                vouched.serial
            )));
        }
        let mut fresh = self.fresh.lock().expect("fresh lock");
        // Nothing new: the primary re-signed the same contents.
        if changes.is_empty()
            && !replace
            && let Some(state) = fresh.as_ref()
            && state.serial == serial
            && state.contents.tree.root() == vouched.root
        {
            self.store
                .apply_changes(&[], serial, Some(statement), false)?;
            *fresh = Some(Arc::new(FreshState {
                serial,
                contents: state.contents.clone(),
                statement: Some(statement.clone()),
            }));
            return Ok(());
        }
        // The contents the pull would leave, checked before anything is stored.
        let mut contents: std::collections::BTreeMap<EntryKey, Vec<u8>> = if replace {
            Default::default()
        } else {
            self.store.entries()?.1.into_iter().collect()
        };
        for change in changes {
            contents.insert(change.key.clone(), change.value.clone());
        }
        let entries: Vec<(EntryKey, Vec<u8>)> = contents.into_iter().collect();
        let contents = build_tree(&entries);
        if contents.tree.root() != vouched.root {
            return Err(MirrorError::Differs { serial });
        }
        self.store
            .apply_changes(changes, serial, Some(statement), replace)?;
        *fresh = Some(Arc::new(FreshState {
            serial,
            contents: Arc::new(contents),
            statement: Some(statement.clone()),
        }));
        Ok(())
    }

    /// Drop the cached tree and statement (after the store was changed around the
    /// server, by a repair tool or a test).
    pub fn forget_fresh(&self) {
        *self.fresh.lock().expect("fresh lock") = None;
    }
}

/// The Merkle tree over `entries` (in key order) and each key's leaf index.
fn build_tree(entries: &[(EntryKey, Vec<u8>)]) -> Contents {
    let index = entries
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (key.clone(), i))
        .collect();
    let tree = MerkleTree::new(entries.iter().map(|(k, v)| leaf_hash(k, v)).collect());
    Contents { tree, index }
}

fn chain_keys(chain: &[Signed<Delegation>]) -> impl Iterator<Item = EntryKey> + '_ {
    chain
        .iter()
        .map(|d| EntryKey::Delegation(d.open().map(|d| d.zone).unwrap_or_default()))
}

fn record_name(record: &Signed<ObjectRecord>) -> String {
    record.open().map(|r| r.name).unwrap_or_default()
}

/// The statement and the proofs of `keys`, if there is a statement for the tree
/// and every key is in it.
fn vouch(state: &FreshState, keys: &[EntryKey]) -> Option<Vouched> {
    let statement = state.statement.clone()?;
    let proofs = keys
        .iter()
        .map(|k| {
            let contents = &state.contents;
            contents.index.get(k).map(|&i| contents.tree.proof(i))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Vouched { statement, proofs })
}

/// The serial in a high-water file (none if missing or unreadable).
fn read_high_water(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Replace the high-water file durably (written aside, synced, renamed).
fn write_high_water(path: &Path, serial: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("signed-serial.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(file, "{serial}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Why a mirror could not store a pull.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Its database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The primary sent something that does not check out.
    #[error("the primary's transfer was refused: {0}")]
    Refused(String),
    /// The primary vouches for an older serial than the mirror holds (it was
    /// restored from a backup, or another primary answered).
    #[error(
        "the primary is at serial {primary}, behind this mirror's {mirror} (restored from \
         a backup?); keeping this mirror's copy"
    )]
    Behind {
        /// The primary's serial.
        primary: u64,
        /// The mirror's.
        mirror: u64,
    },
    /// What the mirror holds does not add up to the primary's statement.
    #[error(
        "this mirror's contents at serial {serial} differ from what the primary's \
         statement vouches for; pulling everything again"
    )]
    Differs {
        /// The serial.
        serial: u64,
    },
}

/// How to run a server.
pub struct ServerConfig {
    /// Address to listen on (UDP, for QUIC).
    pub listen: SocketAddr,
    /// The database file.
    pub db_path: PathBuf,
    /// The identity the server presents over TLS. On a primary it is the root
    /// identity (it signs top-level zones and freshness statements); a mirror's is
    /// its own and signs nothing.
    pub root: Identity,
    /// Largest logic blob accepted.
    pub max_blob_bytes: usize,
    /// Who may create top-level zones.
    pub registration: Registration,
    /// Freshness, restored databases, mirroring.
    pub options: ServeOptions,
}

/// The rest of a server's settings, with defaults for a primary.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Validity of the freshness statements a primary signs, in seconds.
    pub freshness_secs: u64,
    /// Serve a database older than what was signed before (restored from a
    /// backup) as current, raising its serial past the old statements.
    pub accept_restored: bool,
    /// Mirror this primary instead of taking writes.
    pub mirror_of: Option<MirrorOf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            freshness_secs: DEFAULT_VALIDITY_SECS,
            accept_restored: false,
            mirror_of: None,
        }
    }
}

/// The primary a mirror pulls from.
#[derive(Debug, Clone)]
pub struct MirrorOf {
    /// Its address.
    pub primary: SocketAddr,
    /// The root key (the primary's TLS key, and the signer of its statements).
    pub root: PublicKey,
    /// How often to pull.
    pub refresh: Duration,
}

/// Failure to start a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The database could not be opened.
    #[error("cannot open the directory database {path}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A running directory server (QUIC on one UDP socket).
pub struct Server {
    endpoint: quinn::Endpoint,
    directory: Arc<Directory>,
    accept: tokio::task::JoinHandle<()>,
    mirror: Option<tokio::task::JoinHandle<()>>,
}

/// The file beside a primary's database that holds the highest serial it signed.
pub fn high_water_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".signed-serial");
    PathBuf::from(name)
}

impl Server {
    /// Open the store, bind, and start accepting connections (on the current tokio
    /// runtime); a mirror also starts pulling from its primary.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let store_err = |source| ServerError::Store {
            path: config.db_path.clone(),
            source,
        };
        let store = Store::open(&config.db_path).map_err(store_err)?;
        // The root server presents the root key: clients pin it (they trust it
        // already). A mirror presents its own key, which its clients are given.
        let tls = crate::tls::server_config(&config.root)?;
        let options = config.options;
        let directory = match &options.mirror_of {
            Some(of) => Directory::mirror(store, of.root, of.primary, config.max_blob_bytes),
            None => Directory::new(store, config.root, config.max_blob_bytes)
                .with_registration(config.registration)
                .with_freshness_validity(options.freshness_secs)
                .with_high_water(high_water_path(&config.db_path), options.accept_restored)
                .map_err(store_err)?,
        };
        let directory = Arc::new(directory);
        let endpoint =
            quinn::Endpoint::server(tls, config.listen).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let accept = tokio::spawn(accept_loop(endpoint.clone(), directory.clone()));
        let mirror = options
            .mirror_of
            .map(|of| tokio::spawn(crate::mirror::pull_loop(directory.clone(), of)));
        Ok(Server {
            endpoint,
            directory,
            accept,
            mirror,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// The request handler (and through it the store).
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// Stop accepting, close connections and wait until they are gone.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        self.accept.abort();
        if let Some(mirror) = &self.mirror {
            mirror.abort();
        }
        self.endpoint.wait_idle().await;
    }
}

/// Requests read at once, server-wide. A request may carry a logic blob up to the
/// cap, so this bounds the memory unauthenticated clients can make the server hold
/// (at most this many times the blob cap) before anything is checked.
pub const MAX_CONCURRENT_REQUESTS: usize = 8;

async fn accept_loop(endpoint: quinn::Endpoint, directory: Arc<Directory>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
    while let Some(incoming) = endpoint.accept().await {
        let directory = directory.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve_connection(connection, directory, permits).await,
                Err(e) => tracing::debug!("handshake failed: {e}"),
            }
        });
    }
}

async fn serve_connection(
    connection: quinn::Connection,
    directory: Arc<Directory>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    let peer = connection.remote_address();
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let directory = directory.clone();
                tokio::spawn(async move {
                    serve_stream(send, recv, directory, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::debug!("connection from {peer} ended: {e}");
                return;
            }
        }
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    directory: Arc<Directory>,
    peer: SocketAddr,
) {
    let response = match recv.read_to_end(directory.max_request_bytes()).await {
        Err(quinn::ReadToEndError::TooLong) => refuse(
            ErrorCode::TooLarge,
            format!(
                "request larger than {} bytes (logic is capped at {} bytes)",
                directory.max_request_bytes(),
                directory.max_blob_bytes
            ),
        ),
        Err(e) => {
            tracing::debug!("reading a request from {peer} failed: {e}");
            return;
        }
        Ok(bytes) => match decode_request(&bytes) {
            Err(e) => {
                tracing::warn!("malformed request from {peer}: {e}");
                refuse(
                    ErrorCode::Malformed,
                    format!("request does not decode: {e}"),
                )
            }
            Ok(request) => {
                let directory = directory.clone();
                // Writes fsync; keep them off the async workers.
                match tokio::task::spawn_blocking(move || directory.handle(request, unix_now()))
                    .await
                {
                    Ok(response) => response,
                    Err(e) => refuse(ErrorCode::Internal, format!("handler failed: {e}")),
                }
            }
        },
    };
    if send.write_all(&encode(&response)).await.is_ok() {
        let _ = send.finish();
        // Let the peer read the answer before the stream is dropped.
        let _ = send.stopped().await;
    }
}
