//! The directory server: checks every write, stores it durably, answers lookups.
//!
//! [`Directory`] is the request handler (no sockets: a request in, a response out,
//! time passed in); [`Server`] is the QUIC shell around it.

use crate::keys::{Identity, PublicKey};
use crate::name::Name;
use crate::protocol::{
    ErrorCode, REQUEST_OVERHEAD, Request, Response, create_zone_message, decode_request, encode,
};
use crate::record::{Delegation, ObjectRecord, Signed};
use crate::store::{Store, StoreError};
use crate::verify::verify_chain;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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

/// The request handler: storage plus the root identity.
pub struct Directory {
    store: Store,
    root: Identity,
    registration: Registration,
    max_blob_bytes: usize,
    /// Held across each write's checks and its commit, so two concurrent writes can
    /// never both pass a check (zone free, version newer) that only one may pass.
    writes: std::sync::Mutex<()>,
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
    /// A handler over `store`, signing top-level zones with `root`.
    pub fn new(store: Store, root: Identity, max_blob_bytes: usize) -> Self {
        Directory {
            store,
            root,
            registration: Registration::default(),
            max_blob_bytes,
            writes: std::sync::Mutex::new(()),
        }
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
        self.root.public()
    }

    /// Largest request this server reads.
    pub fn max_request_bytes(&self) -> usize {
        self.max_blob_bytes + REQUEST_OVERHEAD
    }

    /// Answer one request at Unix time `now`.
    pub fn handle(&self, request: Request, now: u64) -> Response {
        let result = match request {
            Request::Hello => Ok(Response::Hello {
                root: self.root.public(),
                max_blob_bytes: self.max_blob_bytes as u64,
            }),
            Request::CreateZone { zone, owner, proof } => {
                let _write = self.writes.lock().expect("write lock");
                self.create_zone(&zone, owner, &proof, now)
            }
            Request::Delegate(signed) => {
                let _write = self.writes.lock().expect("write lock");
                self.delegate(signed, now)
            }
            Request::Publish { record, blob } => {
                let _write = self.writes.lock().expect("write lock");
                self.publish(record, blob, now)
            }
            Request::Resolve(name) => self.resolve(&name),
            Request::List(folder) => self.list(&folder),
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
    fn zone_owner(&self, name: &Name, now: u64) -> Result<Option<(String, PublicKey)>, Response> {
        let chain = self.store.chain_for(name).map_err(internal)?;
        let verified = verify_chain(self.root.public(), &chain, now).map_err(|e| match e {
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
        Ok(verified.delegations.last().map(|d| (d.zone.clone(), d.key)))
    }

    fn create_zone(
        &self,
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
        if !self.registration.admits(&owner, &self.root.public()) {
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
        };
        let signed = Signed::sign(&delegation, &self.root);
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
        let (parent_zone, parent_owner) = match self.zone_owner(&parent, now)? {
            Some(owner) => owner,
            None => ("lo://".to_string(), self.root.public()),
        };
        if signed.signer != parent_owner {
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
        let Some((zone, owner)) = self.zone_owner(&name, now)? else {
            return Err(refuse(
                ErrorCode::NoSuchZone,
                format!(
                    "no zone contains {name}; create one first (`lo zone create lo://{}/`)",
                    name.segments()[0]
                ),
            ));
        };
        if signed.signer != owner {
            return Err(refuse(
                ErrorCode::NotZoneOwner,
                format!(
                    "{name} is in zone {zone}, owned by {owner}; the record is signed by {}",
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
        if let Some(existing) = self.store.get_record(name.as_str()).map_err(internal)? {
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

    fn resolve(&self, name: &str) -> Result<Response, Response> {
        let name = Name::parse(name).map_err(|e| refuse(ErrorCode::Malformed, e.to_string()))?;
        let record = self
            .store
            .get_record(name.as_str())
            .map_err(internal)?
            .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no object named {name}")))?;
        let chain = self.store.chain_for(&name).map_err(internal)?;
        Ok(Response::Record { record, chain })
    }

    fn list(&self, folder: &str) -> Result<Response, Response> {
        let folder =
            Name::parse(folder).map_err(|e| refuse(ErrorCode::Malformed, e.to_string()))?;
        if !folder.is_folder() {
            return Err(refuse(
                ErrorCode::Malformed,
                format!("{folder} is not a folder (folders end with /)"),
            ));
        }
        let listing = self.store.list(&folder).map_err(internal)?;
        let chain = self.store.chain_for(&folder).map_err(internal)?;
        Ok(Response::Listing {
            folders: listing.folders,
            records: listing.records,
            chain,
        })
    }
}

/// How to run a server.
pub struct ServerConfig {
    /// Address to listen on (UDP, for QUIC).
    pub listen: SocketAddr,
    /// The database file.
    pub db_path: PathBuf,
    /// The root identity (signs top-level zones).
    pub root: Identity,
    /// Largest logic blob accepted.
    pub max_blob_bytes: usize,
    /// Who may create top-level zones.
    pub registration: Registration,
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
}

impl Server {
    /// Open the store, bind, and start accepting connections (on the current tokio
    /// runtime).
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let store = Store::open(&config.db_path).map_err(|source| ServerError::Store {
            path: config.db_path.clone(),
            source,
        })?;
        // The root server presents the root key: clients pin it (they trust it already).
        let tls = crate::tls::server_config(&config.root)?;
        let directory = Arc::new(
            Directory::new(store, config.root, config.max_blob_bytes)
                .with_registration(config.registration),
        );
        let endpoint =
            quinn::Endpoint::server(tls, config.listen).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let accept = tokio::spawn(accept_loop(endpoint.clone(), directory.clone()));
        Ok(Server {
            endpoint,
            directory,
            accept,
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
