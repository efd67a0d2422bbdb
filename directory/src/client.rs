//! The directory client: requests over QUIC, and a [`Resolver`] that verifies every
//! answer from the trusted root key, refuses rollbacks and caches verified records.

use crate::fresh::{EntryKey, Freshness, FreshnessError, Vouched, verify_statement};
use crate::keys::{Identity, PublicKey};
use crate::name::Name;
use crate::protocol::{ErrorCode, Request, Response, create_zone_message, decode_response, encode};
use crate::record::{Delegation, ObjectRecord, Signed};
use crate::verify::{
    VerifiedChain, VerifiedRecord, VerifyError, verify_chain, verify_logic, verify_record,
};
use redb::{Database, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one request may take before the client gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A request that failed before or at the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the server.
    #[error(
        "cannot reach the directory at {addr}: {reason} (is `lo directory serve` running there?)"
    )]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection broke or timed out mid-request.
    #[error("directory request failed: {0}")]
    Transport(String),
    /// The server refused; nothing was changed there.
    #[error("the directory refused: {message} ({code})")]
    Refused {
        /// Machine-readable reason.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// None of the directory servers could be reached.
    #[error("cannot reach any directory server: {0}")]
    AllDown(String),
    /// The server's answer did not decode or was of the wrong kind.
    #[error("the directory sent a malformed answer: {0}")]
    Malformed(String),
}

/// A directory server to talk to: where it is and the key it must present in
/// the TLS handshake (the root key for the root's primary; a mirror's own key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAddr {
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// The key it must hold.
    pub key: PublicKey,
}

impl ServerAddr {
    /// Parse `ADDR` (the server holds `default_key`, the root key) or `KEY@ADDR`.
    pub fn parse(text: &str, default_key: Option<PublicKey>) -> Result<Self, String> {
        let (key, addr) = match text.split_once('@') {
            Some((key, addr)) => (
                key.parse::<PublicKey>()
                    .map_err(|e| format!("directory server `{text}`: its key: {e}"))?,
                addr,
            ),
            None => (
                default_key.ok_or_else(|| {
                    format!(
                        "directory server `{text}`: no key to check it by; give KEY@ADDR or \
                         the root key (--root)"
                    )
                })?,
                text,
            ),
        };
        let addr = addr.parse::<SocketAddr>().map_err(|e| {
            format!("directory server `{text}`: `{addr}` is not an address (host:port): {e}")
        })?;
        Ok(ServerAddr { addr, key })
    }
}

/// Time to wait for one server's answer, when there are others to try.
pub const FAILOVER_AFTER: Duration = Duration::from_secs(5);
/// Time to wait for one server's handshake, when there are others to try.
pub const FAILOVER_CONNECT: Duration = Duration::from_secs(3);

struct Connected {
    index: usize,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

struct Link {
    /// The server to try first when (re)connecting.
    next: usize,
    connected: Option<Connected>,
}

/// A connection to a directory, failing over between its servers: a request that
/// gets no answer from one server is sent to the next (a primary and its mirrors
/// serve the same signed contents; a mirror refuses writes).
pub struct Client {
    servers: Vec<ServerAddr>,
    link: tokio::sync::Mutex<Link>,
    max_response_bytes: usize,
}

async fn connect_one(server: ServerAddr, wait: Duration) -> Result<Connected, ClientError> {
    let addr = server.addr;
    let connect_err = |reason: String| ClientError::Connect { addr, reason };
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("valid")
    } else {
        "0.0.0.0:0".parse().expect("valid")
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| connect_err(e.to_string()))?;
    endpoint.set_default_client_config(
        crate::tls::client_config(server.key).map_err(|e| connect_err(e.to_string()))?,
    );
    let connecting = endpoint
        .connect(addr, "liveobjects-directory")
        .map_err(|e| connect_err(e.to_string()))?;
    let connection = tokio::time::timeout(wait, connecting)
        .await
        .map_err(|_| connect_err(format!("no answer within {} s", wait.as_secs())))?
        .map_err(|e| connect_err(e.to_string()))?;
    Ok(Connected {
        index: 0,
        endpoint,
        connection,
    })
}

impl Client {
    /// Connect (QUIC, TLS 1.3) to the server at `addr`, which must hold
    /// `server_key` (for the root server: the root key); any other server is
    /// refused during the handshake.
    pub async fn connect(addr: SocketAddr, server_key: PublicKey) -> Result<Client, ClientError> {
        Self::connect_any(&[ServerAddr {
            addr,
            key: server_key,
        }])
        .await
    }

    /// Connect to the first of `servers` that answers; later requests fail over
    /// to the others, in order, when it stops answering.
    pub async fn connect_any(servers: &[ServerAddr]) -> Result<Client, ClientError> {
        let client = Client {
            servers: servers.to_vec(),
            link: tokio::sync::Mutex::new(Link {
                next: 0,
                connected: None,
            }),
            max_response_bytes: crate::protocol::DEFAULT_MAX_BLOB_BYTES
                + crate::protocol::REQUEST_OVERHEAD,
        };
        client.connection().await?;
        Ok(client)
    }

    /// The servers this client may use, in order.
    pub fn servers(&self) -> &[ServerAddr] {
        &self.servers
    }

    /// The server this client talks to now, if connected.
    pub async fn current(&self) -> Option<ServerAddr> {
        let link = self.link.lock().await;
        link.connected.as_ref().map(|c| self.servers[c.index])
    }

    fn wait(&self) -> Duration {
        if self.servers.len() > 1 {
            FAILOVER_AFTER
        } else {
            REQUEST_TIMEOUT
        }
    }

    /// The live connection, connecting (from the server after the last one that
    /// failed, round the list) if there is none.
    async fn connection(&self) -> Result<(usize, quinn::Connection), ClientError> {
        let mut link = self.link.lock().await;
        if let Some(c) = &link.connected {
            if c.connection.close_reason().is_none() {
                return Ok((c.index, c.connection.clone()));
            }
            link.next = (c.index + 1) % self.servers.len();
            link.connected = None;
        }
        let connect_wait = if self.servers.len() > 1 {
            FAILOVER_CONNECT
        } else {
            Duration::from_secs(10)
        };
        let mut failures = Vec::new();
        for offset in 0..self.servers.len() {
            let index = (link.next + offset) % self.servers.len();
            match connect_one(self.servers[index], connect_wait).await {
                Ok(mut connected) => {
                    connected.index = index;
                    let connection = connected.connection.clone();
                    link.connected = Some(connected);
                    return Ok((index, connection));
                }
                Err(e) => failures.push(e),
            }
        }
        match failures.len() {
            0 => Err(ClientError::Transport("no directory servers given".into())),
            1 => Err(failures.pop().expect("one failure")),
            _ => Err(ClientError::AllDown(
                failures
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// Give up on server `index` (it did not answer): the next request tries the
    /// next server.
    async fn fail_over(&self, index: usize) {
        let mut link = self.link.lock().await;
        if link.connected.as_ref().is_some_and(|c| c.index == index) {
            if let Some(c) = link.connected.take() {
                c.connection.close(0u32.into(), b"no answer");
            }
            link.next = (index + 1) % self.servers.len();
        }
    }

    /// Talk to the first server again (it takes writes) if it answers a
    /// handshake; otherwise stay where we are.
    async fn back_to_first(&self) {
        let mut link = self.link.lock().await;
        if link
            .connected
            .as_ref()
            .is_some_and(|c| c.index == 0 && c.connection.close_reason().is_none())
        {
            return;
        }
        match connect_one(self.servers[0], FAILOVER_CONNECT).await {
            Ok(mut connected) => {
                connected.index = 0;
                if let Some(old) = link.connected.replace(connected) {
                    old.connection
                        .close(0u32.into(), b"back to the first server");
                }
            }
            // Down: the write goes where the reads go (a mirror refuses it, naming
            // the primary).
            Err(e) => tracing::debug!("{e}"),
        }
    }

    /// Move on to the next server for the following requests (the current one
    /// answered, but with something stale).
    pub async fn skip_current(&self) {
        let index = self.link.lock().await.connected.as_ref().map(|c| c.index);
        if let Some(index) = index {
            self.fail_over(index).await;
        }
    }

    /// Send raw bytes as one request and read the raw answer, failing over to the
    /// next server when one does not answer (for tests of malformed input).
    pub async fn request_raw(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.exchange(bytes, self.wait(), self.servers.len()).await
    }

    /// One request, tried on up to `attempts` servers, each given `wait`.
    async fn exchange(
        &self,
        bytes: &[u8],
        wait: Duration,
        attempts: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let (index, connection) = self.connection().await?;
            let exchange = async {
                let (mut send, mut recv) = connection.open_bi().await.map_err(|e| transport(&e))?;
                send.write_all(bytes).await.map_err(|e| transport(&e))?;
                send.finish().map_err(|e| transport(&e))?;
                recv.read_to_end(self.max_response_bytes)
                    .await
                    .map_err(|e| transport(&e))
            };
            let outcome = tokio::time::timeout(wait, exchange)
                .await
                .map_err(|_| ClientError::Transport(format!("no answer within {wait:?}")))
                .and_then(|answer| answer);
            match outcome {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    tracing::debug!("directory server {:?}: {e}", self.servers[index]);
                    self.fail_over(index).await;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Transport("no directory servers given".into())))
    }

    /// Send a request; a refusal becomes [`ClientError::Refused`].
    ///
    /// Reads fail over between the servers. Writes go to the first server (the
    /// primary) if it answers a handshake, else to the current one, and are sent
    /// once, with the full [`REQUEST_TIMEOUT`]: a write that timed out may still
    /// have been stored, and only the primary takes writes (a mirror refuses them,
    /// naming it). Blob
    /// fetches and transfers, which may be large, also get the full timeout.
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let encoded = encode(request);
        let bytes = match request {
            Request::CreateZone { .. }
            | Request::Delegate(_)
            | Request::Publish { .. }
            | Request::RolloverZone { .. }
            | Request::RevokeKey { .. } => {
                self.back_to_first().await;
                self.exchange(&encoded, REQUEST_TIMEOUT, 1).await?
            }
            Request::FetchBlob(_) | Request::Transfer { .. } => {
                self.exchange(&encoded, REQUEST_TIMEOUT, self.servers.len())
                    .await?
            }
            _ => self.request_raw(&encoded).await?,
        };
        match decode_response(&bytes).map_err(|e| ClientError::Malformed(e.to_string()))? {
            Response::Error { code, message } => Err(ClientError::Refused { code, message }),
            response => Ok(response),
        }
    }

    /// The server's root key and blob cap.
    pub async fn hello(&self) -> Result<(PublicKey, u64), ClientError> {
        match self.request(&Request::Hello).await? {
            Response::Hello {
                root,
                max_blob_bytes,
            } => Ok((root, max_blob_bytes)),
            other => Err(unexpected(&other)),
        }
    }

    /// Ask the root to create the top-level zone `zone` owned by `owner`.
    pub async fn create_zone(&self, zone: &str, owner: &Identity) -> Result<(), ClientError> {
        let proof = owner.sign(&create_zone_message(zone));
        self.expect_stored(&Request::CreateZone {
            zone: zone.to_string(),
            owner: owner.public(),
            proof,
        })
        .await
    }

    /// Hand the top-level zone `zone` (now at delegation version `version`,
    /// owned by `owner`) of the directory with root key `root` to `to`; `owner`'s
    /// key may sign for `grace_secs` more.
    pub async fn rollover_zone(
        &self,
        root: &PublicKey,
        zone: &str,
        version: u64,
        to: PublicKey,
        grace_secs: u64,
        owner: &Identity,
    ) -> Result<(), ClientError> {
        let proof = owner.sign(&crate::protocol::rollover_message(
            root, zone, version, &to, grace_secs,
        ));
        self.expect_stored(&Request::RolloverZone {
            zone: zone.to_string(),
            to,
            grace_secs,
            proof,
        })
        .await
    }

    /// End the grace period of `key` in the top-level zone `zone` (at delegation
    /// version `version`, owned by `owner`).
    pub async fn revoke_key(
        &self,
        root: &PublicKey,
        zone: &str,
        version: u64,
        key: PublicKey,
        owner: &Identity,
    ) -> Result<(), ClientError> {
        let proof = owner.sign(&crate::protocol::revoke_message(root, zone, version, &key));
        self.expect_stored(&Request::RevokeKey {
            zone: zone.to_string(),
            key,
            proof,
        })
        .await
    }

    /// Store a delegation (signed by the enclosing zone's owner).
    pub async fn delegate(&self, signed: Signed<Delegation>) -> Result<(), ClientError> {
        self.expect_stored(&Request::Delegate(signed)).await
    }

    /// Store a signed record with its logic (`None` if the server already has it).
    pub async fn publish(
        &self,
        record: Signed<ObjectRecord>,
        blob: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.expect_stored(&Request::Publish { record, blob }).await
    }

    /// Whether the server holds a blob.
    pub async fn has_blob(&self, hash: [u8; 32]) -> Result<bool, ClientError> {
        match self.request(&Request::HasBlob(hash)).await? {
            Response::HasBlob(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// The record for `name` and its chain, unverified.
    pub async fn resolve_unverified(
        &self,
        name: &str,
    ) -> Result<(Signed<ObjectRecord>, Vec<Signed<Delegation>>), ClientError> {
        self.resolve_vouched(name)
            .await
            .map(|(record, chain, _)| (record, chain))
    }

    /// The record for `name`, its chain and the freshness statement with their
    /// proofs, unverified.
    pub async fn resolve_vouched(&self, name: &str) -> Result<VouchedRecord, ClientError> {
        match self.request(&Request::Resolve(name.to_string())).await? {
            Response::Record {
                record,
                chain,
                vouched,
            } => Ok((record, chain, vouched)),
            other => Err(unexpected(&other)),
        }
    }

    /// The current delegation of `zone`, if the server holds one (unverified).
    pub async fn delegation_unverified(
        &self,
        zone: &str,
    ) -> Result<Vec<Signed<Delegation>>, ClientError> {
        match self.request(&Request::List(zone.to_string())).await? {
            Response::Listing { chain, .. } => Ok(chain),
            other => Err(unexpected(&other)),
        }
    }

    async fn expect_stored(&self, request: &Request) -> Result<(), ClientError> {
        match self.request(request).await? {
            Response::Stored => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Close the connection politely.
    pub async fn close(self) {
        if let Some(c) = self.link.into_inner().connected {
            c.connection.close(0u32.into(), b"done");
            c.endpoint.wait_idle().await;
        }
    }
}

/// A record, its delegation chain, and what vouches for their freshness.
pub type VouchedRecord = (
    Signed<ObjectRecord>,
    Vec<Signed<Delegation>>,
    Option<Box<Vouched>>,
);

/// Check that `vouched` is a valid statement of `root` at `now` and proves every
/// entry of an answer: the chain's delegations, then `records`.
pub fn check_freshness(
    vouched: Option<&Vouched>,
    root: PublicKey,
    now: u64,
    chain: &[Signed<Delegation>],
    records: &[Signed<ObjectRecord>],
) -> Result<Freshness, FreshnessError> {
    let vouched = vouched.ok_or(FreshnessError::Missing)?;
    let fresh = verify_statement(&vouched.statement, root, now)?;
    check_proofs(&fresh, vouched, chain, records)?;
    Ok(fresh)
}

/// Check that `vouched`'s proofs put every entry of an answer (the chain's
/// delegations, then `records`) in the tree of `fresh` (its checked statement).
fn check_proofs(
    fresh: &Freshness,
    vouched: &Vouched,
    chain: &[Signed<Delegation>],
    records: &[Signed<ObjectRecord>],
) -> Result<(), FreshnessError> {
    let entries = chain
        .iter()
        .map(|d| {
            let zone = d.open().map(|d| d.zone).unwrap_or_default();
            (EntryKey::Delegation(zone), d.to_bytes())
        })
        .chain(records.iter().map(|r| {
            let name = r.open().map(|r| r.name).unwrap_or_default();
            (EntryKey::Record(name), r.to_bytes())
        }));
    let mut proofs = vouched.proofs.iter();
    for (key, value) in entries {
        let included = proofs
            .next()
            .is_some_and(|proof| proof.verifies(&key, &value, &fresh.root));
        if !included {
            return Err(FreshnessError::NotIncluded {
                key,
                serial: fresh.serial,
            });
        }
    }
    Ok(())
}

fn unexpected(response: &Response) -> ClientError {
    ClientError::Malformed(format!("unexpected answer {response:?}"))
}

/// A resolution that failed: unreachable server, refusal, or a record that does not
/// verify.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Talking to the server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The answer does not verify.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The answer is not vouched for by a current freshness statement.
    #[error(transparent)]
    Stale(#[from] FreshnessError),
    /// The version memory could not be read or written.
    #[error("version memory {path}: {reason}")]
    Seen {
        /// Its file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl ResolveError {
    /// Whether another server of the same directory might answer better: a stale
    /// or unvouched answer, a version older than one seen, or a name one server
    /// does not have (yet). (Each server's answer is verified on its own.)
    fn worth_another_server(&self) -> bool {
        matches!(
            self,
            ResolveError::Stale(_)
                | ResolveError::Verify(VerifyError::StaleStatement { .. })
                | ResolveError::Verify(VerifyError::Rollback { .. })
                | ResolveError::Client(ClientError::Refused {
                    code: ErrorCode::NotFound,
                    ..
                })
        )
    }
}

/// How much earlier than the newest statement a client has seen a statement of
/// older contents may be issued (mirrors lag their primary by up to their refresh
/// period). Older ones are refused: a mirror replaying an earlier, still valid
/// statement could otherwise serve contents from before it for the whole
/// validity.
pub const MAX_STATEMENT_LAG_SECS: u64 = 60;

const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen_versions");
/// Per root key: the serial and issue time of the newest statement seen.
const SEEN_STATEMENTS: TableDefinition<&str, (u64, u64)> =
    TableDefinition::new("seen_statements_by_root");
const SEEN_ZONES: TableDefinition<&str, u64> = TableDefinition::new("seen_delegations");

/// What this client has accepted before: the highest version per name and per
/// delegated zone. Kept in a redb file so that rollbacks, and answers that leave out
/// a delegation seen before, are refused even across runs.
pub struct SeenVersions {
    db: Database,
    path: String,
}

impl SeenVersions {
    /// Open or create the file. Another `lo` process may hold it for a moment (redb
    /// locks it); we retry for a few seconds before giving up.
    pub fn open(path: &Path) -> Result<Self, ResolveError> {
        let err = |e: &dyn std::fmt::Display| ResolveError::Seen {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(err(&e)),
            }
        };
        Self::with_tables(db, path.display().to_string())
    }

    /// Memory only: remembers for the lifetime of this value.
    pub fn in_memory() -> Result<Self, ResolveError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| ResolveError::Seen {
                path: "(memory)".into(),
                reason: e.to_string(),
            })?;
        Self::with_tables(db, "(memory)".into())
    }

    fn with_tables(db: Database, path: String) -> Result<Self, ResolveError> {
        let seen = SeenVersions { db, path };
        seen.write(|txn| {
            txn.open_table(SEEN)?;
            txn.open_table(SEEN_ZONES)?;
            txn.open_table(SEEN_STATEMENTS)?;
            Ok(Ok(()))
        })?;
        Ok(seen)
    }

    /// Run `f` in one write transaction (so check-and-record is atomic, also against
    /// other processes) and commit.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<Result<T, VerifyError>, redb::Error>,
    ) -> Result<T, ResolveError> {
        let err = |e: &dyn std::fmt::Display| ResolveError::Seen {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        match f(&txn).map_err(|e| err(&e))? {
            Ok(value) => {
                txn.commit().map_err(|e| err(&e))?;
                Ok(value)
            }
            Err(refusal) => Err(refusal.into()),
        }
    }

    /// Refuse a freshness statement of the directory with root key `root` that
    /// vouches for an older serial than the newest one seen from it and was
    /// issued more than [`MAX_STATEMENT_LAG_SECS`] before that one; remember the
    /// newest. (A statement re-signed over the same contents keeps its serial, so
    /// a mirror that has not pulled the re-signed one yet is not refused.)
    pub fn check_statement(&self, root: &PublicKey, fresh: &Freshness) -> Result<(), ResolveError> {
        let key = root.to_string();
        self.write(|txn| {
            let mut table = txn.open_table(SEEN_STATEMENTS)?;
            let newest: Option<(u64, u64)> = table.get(key.as_str())?.map(|v| v.value());
            if let Some((serial, issued_at)) = newest {
                if fresh.serial < serial && fresh.issued_at + MAX_STATEMENT_LAG_SECS < issued_at {
                    return Ok(Err(VerifyError::StaleStatement {
                        issued_at: fresh.issued_at,
                        newest: issued_at,
                    }));
                }
                if (fresh.serial, fresh.issued_at) <= (serial, issued_at) {
                    return Ok(Ok(()));
                }
            }
            table.insert(key.as_str(), (fresh.serial, fresh.issued_at))?;
            Ok(Ok(()))
        })
    }

    /// Refuse `version` of `name` if older than one seen; otherwise remember it.
    pub fn check_and_record(&self, name: &str, version: u64) -> Result<(), ResolveError> {
        self.write(|txn| {
            let mut table = txn.open_table(SEEN)?;
            let seen = table.get(name)?.map(|v| v.value());
            if let Some(seen) = seen
                && seen > version
            {
                return Ok(Err(VerifyError::Rollback {
                    name: name.to_string(),
                    seen,
                    got: version,
                }));
            }
            table.insert(name, version)?;
            Ok(Ok(()))
        })
    }

    /// Check a verified chain for `name` against what was seen before: no delegation
    /// older than one seen, and no zone enclosing `name` that was seen delegated but
    /// is missing from the chain (a shortened chain would let the parent zone's key
    /// sign inside a zone it handed away). Remembers the chain's delegations.
    pub fn check_chain(&self, name: &Name, chain: &VerifiedChain) -> Result<(), ResolveError> {
        self.write(|txn| {
            let mut zones = txn.open_table(SEEN_ZONES)?;
            for d in &chain.delegations {
                let seen = zones.get(d.zone.as_str())?.map(|v| v.value());
                if let Some(seen) = seen
                    && seen > d.version
                {
                    return Ok(Err(VerifyError::Rollback {
                        name: d.zone.clone(),
                        seen,
                        got: d.version,
                    }));
                }
                zones.insert(d.zone.as_str(), d.version)?;
            }
            let (deepest, _) = chain.deepest();
            let mut folders = name.ancestors();
            if name.is_folder() {
                folders.push(name.clone());
            }
            for folder in folders {
                if folder.as_str().len() > deepest.len() && zones.get(folder.as_str())?.is_some() {
                    return Ok(Err(VerifyError::MissingDelegation {
                        name: name.to_string(),
                        zone: folder.to_string(),
                    }));
                }
            }
            Ok(Ok(()))
        })
    }
}

/// A verified folder listing.
#[derive(Debug)]
pub struct VerifiedListing {
    /// Sub-folders.
    pub folders: Vec<String>,
    /// Records directly inside, each verified.
    pub records: Vec<VerifiedRecord>,
}

/// A statement whose signature checked out: its signature, its body, and what it
/// says.
type CheckedStatement = (Vec<u8>, Vec<u8>, Freshness);

/// Resolves names to verified records, remembering versions and caching answers.
pub struct Resolver {
    client: Client,
    root: PublicKey,
    seen: SeenVersions,
    /// The last statement whose signature checked out (a server hands out the
    /// same one for minutes): its signature and body, and what it says.
    statement: Mutex<Option<CheckedStatement>>,
    cache: Mutex<HashMap<String, (VerifiedRecord, Instant)>>,
    cache_ttl: Duration,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Resolver {
    /// A resolver trusting `root`. Without `seen`, rollbacks are only refused within
    /// this resolver's lifetime.
    pub fn new(client: Client, root: PublicKey, seen: Option<SeenVersions>) -> Self {
        let seen = seen.unwrap_or_else(|| {
            SeenVersions::in_memory().expect("an in-memory database always opens")
        });
        Resolver {
            client,
            root,
            seen,
            cache: Mutex::new(HashMap::new()),
            statement: Mutex::new(None),
            cache_ttl: Duration::from_secs(30),
            clock: Box::new(crate::server::unix_now),
        }
    }

    /// Use another clock (Unix seconds), e.g. to test expiry.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// How long a verified record is served from memory (default 30 s; records past
    /// their expiry are never served).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The trusted root key.
    pub fn root(&self) -> PublicKey {
        self.root
    }

    /// [`check_freshness`], with the signature check skipped for the statement
    /// checked last (its expiry is checked every time), and the statement's age
    /// checked against the newest one seen.
    fn check_fresh(
        &self,
        vouched: Option<&Vouched>,
        now: u64,
        chain: &[Signed<Delegation>],
        records: &[Signed<ObjectRecord>],
    ) -> Result<(), ResolveError> {
        let vouched = vouched.ok_or(FreshnessError::Missing)?;
        let statement = &vouched.statement;
        let known = self
            .statement
            .lock()
            .expect("statement lock")
            .as_ref()
            .filter(|(signature, body, _)| {
                *signature == statement.signature
                    && *body == statement.body
                    && statement.signer == self.root
            })
            .map(|(_, _, fresh)| fresh.clone());
        let fresh = match known {
            Some(fresh) if now <= fresh.expires_at => fresh,
            _ => {
                let fresh = verify_statement(statement, self.root, now)?;
                self.seen.check_statement(&self.root, &fresh)?;
                *self.statement.lock().expect("statement lock") = Some((
                    statement.signature.clone(),
                    statement.body.clone(),
                    fresh.clone(),
                ));
                fresh
            }
        };
        check_proofs(&fresh, vouched, chain, records)?;
        Ok(())
    }

    /// A verified record for `name`, from the cache if fresh.
    pub async fn resolve(&self, name: &str) -> Result<VerifiedRecord, ResolveError> {
        let now = (self.clock)();
        if let Some((record, at)) = self.cache.lock().expect("cache lock").get(name)
            && at.elapsed() < self.cache_ttl
            && record.record.expires_at > now
        {
            return Ok(record.clone());
        }
        self.resolve_fresh(name).await
    }

    /// A verified record for `name`, always asking the server. An answer that is
    /// stale (no valid freshness statement, an expired one, or a name not found,
    /// which a lagging mirror may say) is asked again of the other servers, in
    /// turn; the last error is returned if none does better.
    pub async fn resolve_fresh(&self, name: &str) -> Result<VerifiedRecord, ResolveError> {
        let mut tries = self.client.servers().len();
        loop {
            match self.resolve_once(name).await {
                Err(e) if tries > 1 && e.worth_another_server() => {
                    tracing::debug!("{name}: {e}; asking the next directory server");
                    self.client.skip_current().await;
                    tries -= 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn resolve_once(&self, name: &str) -> Result<VerifiedRecord, ResolveError> {
        let (signed, chain, vouched) = self.client.resolve_vouched(name).await?;
        let now = (self.clock)();
        let verified = verify_record(self.root, &chain, &signed, now)?;
        self.check_fresh(
            vouched.as_deref(),
            now,
            &chain,
            std::slice::from_ref(&signed),
        )?;
        if verified.record.name != name {
            return Err(VerifyError::NameMismatch {
                asked: name.to_string(),
                got: verified.record.name,
            }
            .into());
        }
        let parsed = Name::parse(name).map_err(|e| ClientError::Malformed(e.to_string()))?;
        self.seen.check_chain(&parsed, &verified.chain)?;
        self.seen.check_and_record(name, verified.record.version)?;
        self.cache
            .lock()
            .expect("cache lock")
            .insert(name.to_string(), (verified.clone(), Instant::now()));
        Ok(verified)
    }

    /// The logic of a verified record, checked against its hash.
    pub async fn fetch_logic(&self, record: &VerifiedRecord) -> Result<Vec<u8>, ResolveError> {
        let bytes = match self
            .client
            .request(&Request::FetchBlob(record.record.logic.hash))
            .await?
        {
            Response::Blob(bytes) => bytes,
            other => return Err(unexpected(&other).into()),
        };
        verify_logic(&record.record, &bytes)?;
        Ok(bytes)
    }

    /// A verified listing of `folder`.
    pub async fn list(&self, folder: &str) -> Result<VerifiedListing, ResolveError> {
        let (folders, records, chain, vouched) = match self
            .client
            .request(&Request::List(folder.to_string()))
            .await?
        {
            Response::Listing {
                folders,
                records,
                chain,
                vouched,
            } => (folders, records, chain, vouched),
            other => return Err(unexpected(&other).into()),
        };
        let now = (self.clock)();
        self.check_fresh(vouched.as_deref(), now, &chain, &records)?;
        let folder_name = Name::parse(folder).map_err(|e| ClientError::Malformed(e.to_string()))?;
        let verified_chain = verify_chain(self.root, &chain, now)?;
        self.seen.check_chain(&folder_name, &verified_chain)?;
        let mut verified = Vec::with_capacity(records.len());
        for signed in &records {
            let v = verify_record(self.root, &chain, signed, now)?;
            if Name::parse(&v.record.name).map(|n| n.parent()) != Ok(folder_name.clone()) {
                return Err(ClientError::Malformed(format!(
                    "listing of {folder} contains {}",
                    v.record.name
                ))
                .into());
            }
            self.seen
                .check_and_record(&v.record.name, v.record.version)?;
            verified.push(v);
        }
        Ok(VerifiedListing {
            folders,
            records: verified,
        })
    }
}
