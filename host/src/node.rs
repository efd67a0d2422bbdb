//! The host daemon (`lo node`): keeps joined objects live on their drivers (the
//! node's [`NodeDrivers`] table; nothing here names a driver) and serves a local
//! control API (a Unix socket) to the CLI and applications. Status comes from what
//! drivers and the executor publish: it answers within a bound whatever any object
//! is doing, and the node never holds its objects lock across an object.
//!
//! Control protocol: one request per connection, each message a big-endian `u32`
//! length and a postcard body ([`ControlRequest`] in, [`ControlResponse`] out). A
//! `Watch` request keeps its connection open and streams notices.

use crate::driver::{JoinRequest, JoinedObject, NodeDrivers, ObjectReport};
use crate::group::GroupNotice;
use crate::join::{JoinError, JoinOptions, prepare};
use crate::mesh::net::Peer;
use crate::runtime::Runtime;
use liveobjects_directory::client::Resolver;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

/// Largest control message.
const MAX_CONTROL_BYTES: usize = 16 << 20;

/// What a node publishes on its gossip card: where its mesh listens and which
/// objects it hosts. Another node that cannot reach any seed a record lists asks
/// live gossip hosts for their cards and tries the ones hosting the object. A card
/// is a hint only: the mesh handshake authenticates the key it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCard {
    /// The node's mesh identity and address.
    pub mesh: Peer,
    /// Objects it has joined (as many as fit a card; a node with more objects
    /// than fit is not found through the ones left out).
    pub objects: Vec<String>,
}

impl NodeCard {
    /// Encode, dropping objects from the end until the card fits `max_card` bytes.
    pub fn encode(&self, max_card: usize) -> Vec<u8> {
        let mut card = self.clone();
        loop {
            let bytes = postcard::to_allocvec(&card).expect("encoding to a Vec cannot fail");
            if bytes.len() <= max_card || card.objects.is_empty() {
                return bytes;
            }
            card.objects.pop();
        }
    }
}

/// How many live hosts a node asks for cards when a record's seeds do not answer
/// (all of them, up to this many), how long it waits for answers, how often it
/// asks before giving up, and how many members found that way it tries.
const DISCOVERY_HOSTS: usize = 1024;
const DISCOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
const DISCOVERY_ATTEMPTS: usize = 2;
const DISCOVERY_MAX_HINTS: usize = 8;

/// A request to the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Join an object by name.
    Join {
        /// The name.
        name: String,
        /// Required aspects (`total-order,encrypted`).
        require: String,
        /// Start the group if no seed member answers.
        found_if_alone: bool,
        /// Also join every object it references ([`Node::join_references`]).
        references: bool,
    },
    /// Call a method of a joined object.
    Call {
        /// The name.
        name: String,
        /// The method.
        method: String,
        /// WAVE arguments.
        args: Vec<String>,
        /// Answer the results as JSON texts (the HTTP API's mapping) instead of WAVE.
        json: bool,
    },
    /// What this host runs: one page of its objects.
    Status(StatusPage),
    /// Leave an object.
    Leave {
        /// The name.
        name: String,
    },
    /// Stream an object's notifications and membership changes.
    Watch {
        /// The name.
        name: String,
    },
}

/// One joined object, as `lo status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStatus {
    /// The name.
    pub name: String,
    /// Its driver.
    pub driver: String,
    /// What the driver and the executor report of it.
    pub report: ObjectReport,
}

/// A driver's own lines of `lo status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriverStatus {
    /// The driver's name.
    pub driver: String,
    /// Its lines (addresses, regions, rates).
    pub lines: Vec<String>,
}

/// Longest `lo status` waits for one driver's own report.
const DRIVER_REPORT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlResponse {
    /// Joined.
    Joined {
        /// Record version.
        version: u64,
        /// Members at the time.
        members: usize,
        /// It was joined before this request (nothing changed).
        already: bool,
        /// With `references`: how each referenced object's join went.
        references: Vec<ReferenceLine>,
    },
    /// Method results (WAVE).
    Results(Vec<String>),
    /// Joined objects.
    Status {
        /// This host's key.
        key: String,
        /// The short name it gave itself, if any.
        name: Option<String>,
        /// Its mesh address.
        addr: String,
        /// Its objects (the page asked for, in name order).
        objects: Vec<ObjectStatus>,
        /// Objects joined that match the page's prefix, on every page.
        total: usize,
        /// Where the next page starts (its `after`), if there is one.
        next: Option<String>,
        /// Each driver's own report.
        drivers: Vec<DriverStatus>,
    },
    /// Left.
    Left,
    /// A streamed notice (for `Watch`).
    Notice(String),
    /// The request failed.
    Error(String),
}

/// Read one length-prefixed postcard message.
pub async fn read_message<T: serde::de::DeserializeOwned>(
    stream: &mut UnixStream,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL_BYTES {
        return Err(std::io::Error::other(format!(
            "control message of {len} bytes"
        )));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("malformed control message: {e}")))
}

/// Write one length-prefixed postcard message.
pub async fn write_message<T: Serialize>(
    stream: &mut UnixStream,
    message: &T,
) -> std::io::Result<()> {
    let bytes = postcard::to_allocvec(message).expect("encoding to a Vec cannot fail");
    stream
        .write_all(&(bytes.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(&bytes).await
}

/// A joined object and the driver that carries it.
#[derive(Clone, Debug)]
pub struct Joined {
    /// The driver's name.
    pub driver: &'static str,
    /// The record it was joined with.
    pub record: Arc<liveobjects_directory::record::ObjectRecord>,
    /// The object.
    pub object: Arc<dyn JoinedObject>,
    /// Its methods with their WIT types (replicated objects; an aggregate has none).
    pub interface: Option<Arc<crate::runtime::ObjectInterface>>,
}

/// Why a request to a node failed. [`kind`](NodeError::kind) names the failure
/// for programs (the HTTP API's `error.kind`).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The object is not joined here.
    #[error("this node has not joined {0}; run `lo join {0}` first")]
    NotJoined(String),
    /// Another join of the same object is running.
    #[error("{0} is being joined on this node already; try again once that join has finished")]
    JoinInProgress(String),
    /// The record names a driver this node does not run.
    #[error("cannot join {name}: this node does not run the {driver} driver")]
    NoDriver {
        /// The object.
        name: String,
        /// Its driver.
        driver: String,
    },
    /// The required aspects do not parse.
    #[error("{0}")]
    BadRequirements(String),
    /// The join failed.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The call failed.
    #[error(transparent)]
    Call(#[from] crate::group::GroupError),
    /// A call's argument holds a typed reference ([`crate::references`]) to an
    /// object that does not resolve or does not meet what the reference requires.
    /// Nothing ran.
    #[error("cannot embed {name}: {reason}")]
    BadReference {
        /// Which argument (from 0) holds the reference.
        argument: usize,
        /// The referenced object.
        name: String,
        /// Why, as `lo join --require` words it.
        reason: String,
        /// `type-mismatch`, `resolve-failed` or `bad-argument`.
        kind: &'static str,
    },
}

impl NodeError {
    /// A short stable name of the failure, e.g. `not-joined`, `bad-argument`,
    /// `rejected`.
    pub fn kind(&self) -> &'static str {
        use crate::group::GroupError as G;
        use crate::runtime::ReplicaError as R;
        let group = |e: &G| match e {
            G::Replica(R::NoSuchMethod { .. } | R::AmbiguousMethod { .. }) => "no-such-method",
            G::Replica(R::ArgumentCount { .. } | R::BadArgument(_)) => "bad-argument",
            G::Replica(R::Quarantined { .. }) => "quarantined",
            G::Replica(R::LimitExceeded { .. }) => "limit-exceeded",
            G::Replica(_) => "object-failed",
            G::Gone(_) => "gone",
            G::Joining(_) => "joining",
            G::Rejected { .. } => "rejected",
            G::Aborted { .. } => "aborted",
            G::Unavailable { .. } => "unavailable",
            G::NoMembers { .. } => "no-members",
            G::Refused { .. } => "refused",
        };
        match self {
            NodeError::NotJoined(_) => "not-joined",
            NodeError::JoinInProgress(_) => "join-in-progress",
            NodeError::NoDriver { .. } => "no-driver",
            NodeError::BadRequirements(_) => "bad-request",
            NodeError::Call(e) => group(e),
            NodeError::BadReference { kind, .. } => kind,
            NodeError::Join(e) => match e {
                JoinError::Resolve(_) => "resolve-failed",
                JoinError::Type { .. } => "type-mismatch",
                JoinError::NotAllowed { .. } => "not-allowed",
                JoinError::Logic(_) => "bad-logic",
                JoinError::Group(e) => group(e),
                JoinError::Timeout { .. } => "timeout",
                JoinError::Refused { .. } => "refused",
                JoinError::NoMembers { .. } => "no-members",
            },
        }
    }
}

/// What a join did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The record's version joined.
    pub version: u64,
    /// Members in the view right after the join.
    pub members: usize,
    /// Whether the node had joined the object before this request.
    pub already: bool,
}

/// One reference's join as the control protocol reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceLine {
    /// The referenced object.
    pub name: String,
    /// What the reference requires of it.
    pub require: Vec<String>,
    /// The record version joined, or why it was not joined.
    pub outcome: Result<u64, String>,
}

impl From<ReferenceJoin> for ReferenceLine {
    fn from(j: ReferenceJoin) -> Self {
        ReferenceLine {
            name: j.reference.name,
            require: j.reference.require,
            outcome: j.outcome.map(|o| o.version).map_err(|e| e.to_string()),
        }
    }
}

/// One reference's join, as [`Node::join_references`] did it.
#[derive(Debug)]
pub struct ReferenceJoin {
    /// The reference.
    pub reference: crate::references::ObjectRef,
    /// How its join went.
    pub outcome: Result<JoinOutcome, NodeError>,
}

/// What a node runs (`lo status`).
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// The node itself.
    pub me: Peer,
    /// Its objects: one page of them.
    pub objects: ObjectsPage,
    /// Each driver's own report.
    pub drivers: Vec<DriverStatus>,
}

/// Which joined objects a status shows: those whose names start with `prefix`,
/// in name order, after the name `after`, at most `limit` of them. A node with
/// 100,000 objects answers a page without visiting the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusPage {
    /// Only names starting with this (e.g. `lo://acme/rooms/`).
    pub prefix: Option<String>,
    /// Start after this name (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many objects; `None`: all of them.
    pub limit: Option<usize>,
}

/// One page of a node's objects.
#[derive(Debug, Clone, Default)]
pub struct ObjectsPage {
    /// The objects, in name order.
    pub objects: Vec<ObjectStatus>,
    /// How many joined objects match the prefix, on every page.
    pub total: usize,
    /// The `after` of the next page, if there is one.
    pub next: Option<String>,
}

/// The daemon's state.
pub struct Node {
    drivers: NodeDrivers,
    runtime: Arc<Runtime>,
    resolver: Arc<Resolver>,
    /// Newer logic for live upgrades, from `resolver`.
    logic_source: Arc<dyn crate::driver::LogicSource>,
    objects: Mutex<BTreeMap<String, Joined>>,
    /// Names with a join in progress (so two joins of one name cannot race).
    joining: Mutex<std::collections::BTreeSet<String>>,
}

impl Node {
    /// A daemon over started drivers (and their discovery, if one provides it).
    pub fn new(drivers: NodeDrivers, runtime: Arc<Runtime>, resolver: Resolver) -> Arc<Self> {
        let resolver = Arc::new(resolver);
        let logic_source = Arc::new(crate::join::DirectoryLogic::new(
            resolver.clone(),
            runtime.clone(),
        ));
        Arc::new(Node {
            drivers,
            runtime,
            resolver,
            logic_source,
            objects: Mutex::new(BTreeMap::new()),
            joining: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// The node's directory resolver (verifies what it answers).
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// This node's identity and contact address.
    pub fn me(&self) -> Peer {
        self.drivers.me
    }

    /// Publish this node's card (mesh address, joined objects) on gossip.
    async fn publish_card(&self) {
        let Some(discovery) = &self.drivers.discovery else {
            return;
        };
        let card = NodeCard {
            mesh: self.drivers.me,
            objects: self.objects.lock().await.keys().cloned().collect(),
        };
        discovery
            .publish_card(card.encode(discovery.max_card()))
            .await;
    }

    /// Members of `name` that gossip knows of: live hosts whose card lists it.
    async fn discover(&self, name: &str) -> Vec<Peer> {
        let Some(discovery) = &self.drivers.discovery else {
            return Vec::new();
        };
        let me = self.drivers.me.key;
        for _ in 0..DISCOVERY_ATTEMPTS {
            let mut members: Vec<Peer> = discovery
                .cards(DISCOVERY_HOSTS, DISCOVERY_WAIT)
                .await
                .into_iter()
                .filter_map(|bytes| postcard::from_bytes::<NodeCard>(&bytes).ok())
                .filter(|card| card.mesh.key != me && card.objects.iter().any(|o| o == name))
                .map(|card| card.mesh)
                .collect();
            if !members.is_empty() {
                members.truncate(DISCOVERY_MAX_HINTS);
                return members;
            }
        }
        Vec::new()
    }

    /// Serve the control socket at `path` until the process stops.
    pub async fn serve(self: Arc<Self>, path: &Path) -> std::io::Result<()> {
        self.serve_on(Self::bind(path).await?).await
    }

    /// Bind the control socket at `path` (replacing a stale one), so that callers
    /// can say it is ready before [`serve_on`](Self::serve_on) accepts on it.
    pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
        if path.exists() {
            // A stale socket from a previous run that is not answering.
            if UnixStream::connect(path).await.is_ok() {
                return Err(std::io::Error::other(format!(
                    "another node is already serving {}",
                    path.display()
                )));
            }
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        UnixListener::bind(path)
    }

    /// Serve control connections on a socket from [`bind`](Self::bind) until the
    /// process stops.
    pub async fn serve_on(self: Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let node = self.clone();
            tokio::spawn(async move {
                if let Err(e) = node.connection(stream).await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, mut stream: UnixStream) -> std::io::Result<()> {
        let Some(request) = read_message::<ControlRequest>(&mut stream).await? else {
            return Ok(());
        };
        if let ControlRequest::Watch { name } = request {
            let group = match self.joined(&name).await {
                Ok(group) => group,
                Err(e) => {
                    let error = ControlResponse::Error(e.to_string());
                    return write_message(&mut stream, &error).await;
                }
            };
            let mut notices = group.object.subscribe();
            while let Ok(notice) = notices.recv().await {
                let text = match notice {
                    GroupNotice::Notification { topic, detail } => format!("{topic}: {detail}"),
                    GroupNotice::View(members) => format!(
                        "view: {} members: {}",
                        members.len(),
                        members
                            .iter()
                            .map(|p| p.label())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    GroupNotice::Excluded => "excluded from the group".to_string(),
                    GroupNotice::Quarantined(reason) => format!("quarantined: {reason}"),
                };
                write_message(&mut stream, &ControlResponse::Notice(text)).await?;
            }
            return Ok(());
        }
        let response = self.handle(request).await;
        write_message(&mut stream, &response).await
    }

    async fn handle(&self, request: ControlRequest) -> ControlResponse {
        let failed = |e: NodeError| ControlResponse::Error(e.to_string());
        match request {
            ControlRequest::Join {
                name,
                require,
                found_if_alone,
                references,
            } => {
                let joined = match self.join_object(&name, &require, found_if_alone).await {
                    Ok(o) => o,
                    Err(e) => return failed(e),
                };
                // The object is joined whatever happens to its references: their
                // failure is reported beside it, not as the join's.
                let lines = if references {
                    match self.join_references(&name).await {
                        Ok(joins) => joins.into_iter().map(ReferenceLine::from).collect(),
                        Err(e) => vec![ReferenceLine {
                            name: name.clone(),
                            require: Vec::new(),
                            outcome: Err(format!("its references could not be read: {e}")),
                        }],
                    }
                } else {
                    Vec::new()
                };
                ControlResponse::Joined {
                    version: joined.version,
                    members: joined.members,
                    already: joined.already,
                    references: lines,
                }
            }
            ControlRequest::Call {
                name,
                method,
                args,
                json,
            } => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let results = match self.call_object(&name, &method, &args).await {
                    Ok(results) => results,
                    Err(e) => return failed(e),
                };
                if !json {
                    return ControlResponse::Results(results);
                }
                match self.results_json(&name, &method, &results).await {
                    Ok(values) => {
                        ControlResponse::Results(values.iter().map(|v| v.to_string()).collect())
                    }
                    Err(e) => ControlResponse::Error(e),
                }
            }
            ControlRequest::Status(page) => {
                let status = self.status(&page).await;
                ControlResponse::Status {
                    key: status.me.key.to_string(),
                    name: status.me.name.map(|n| n.to_string()),
                    addr: status.me.addr.to_string(),
                    objects: status.objects.objects,
                    total: status.objects.total,
                    next: status.objects.next,
                    drivers: status.drivers,
                }
            }
            ControlRequest::Leave { name } => match self.leave_object(&name).await {
                Ok(()) => ControlResponse::Left,
                Err(e) => failed(e),
            },
            ControlRequest::Watch { .. } => ControlResponse::Error("unreachable".into()),
        }
    }

    /// The joined object `name`, or that this node has not joined it.
    pub async fn joined(&self, name: &str) -> Result<Joined, NodeError> {
        let mut joined = self
            .objects
            .lock()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::NotJoined(name.to_string()))?;
        // Calls, forms and JSON follow the logic the object runs now.
        if let Some(interface) = joined.object.interface() {
            joined.interface = Some(interface);
        }
        Ok(joined)
    }

    /// Join `name` (resolve, verify, type check against `require`, fetch the
    /// logic, join through its driver). Joining an object joined already answers
    /// as its join did, if the record meets `require`.
    pub async fn join_object(
        &self,
        name: &str,
        require: &str,
        found_if_alone: bool,
    ) -> Result<JoinOutcome, NodeError> {
        if let Ok(joined) = self.joined(name).await {
            return already_joined(name, &joined, require).await;
        }
        if !self.joining.lock().await.insert(name.to_string()) {
            return Err(NodeError::JoinInProgress(name.to_string()));
        }
        let outcome = self.join(name.to_string(), require, found_if_alone).await;
        self.joining.lock().await.remove(name);
        outcome
    }

    /// Call `method` of the joined object `name` with WAVE arguments; its results
    /// as WAVE.
    pub async fn call_object(
        &self,
        name: &str,
        method: &str,
        args: &[&str],
    ) -> Result<Vec<String>, NodeError> {
        let joined = self.joined(name).await?;
        if let Some(interface) = &joined.interface {
            crate::references::check_call(&self.resolver, interface, method, args).await?;
        }
        Ok(joined.object.call(method, args).await?)
    }

    /// The WAVE results of `method` of the joined object `name` as JSON (the
    /// mapping of [`crate::json`]). An aggregate's results, which have no WIT
    /// type, stay WAVE text in JSON strings.
    pub async fn results_json(
        &self,
        name: &str,
        method: &str,
        results: &[String],
    ) -> Result<Vec<serde_json::Value>, String> {
        let joined = self.joined(name).await.map_err(|e| e.to_string())?;
        let Some(interface) = &joined.interface else {
            return Ok(results
                .iter()
                .map(|r| serde_json::Value::from(r.as_str()))
                .collect());
        };
        let method = interface
            .find(method)
            .map_err(|_| format!("{name} has no method {method}"))?;
        crate::json::results_to_json(method, results).map_err(|e| e.to_string())
    }

    /// Join every object the joined object `name` references (through its
    /// `references` method: the `doc` object's), each with the aspects its
    /// reference requires, so a mismatch is refused as `lo join --require`
    /// refuses it. An object without such a method references nothing.
    pub async fn join_references(&self, name: &str) -> Result<Vec<ReferenceJoin>, NodeError> {
        let joined = self.joined(name).await?;
        let Some(method) = joined
            .interface
            .as_deref()
            .and_then(crate::references::references_method)
        else {
            return Ok(Vec::new());
        };
        let results = joined.object.call(&method.name, &[]).await?;
        let mut references = Vec::new();
        if let (Some(ty), Some(wave)) = (method.results.first(), results.first()) {
            references = crate::references::references_in_wave(ty, wave);
        }
        if references.len() > crate::references::MAX_REFERENCES_JOINED {
            tracing::warn!(
                object = name,
                references = references.len(),
                "joining only the first {} references",
                crate::references::MAX_REFERENCES_JOINED
            );
            references.truncate(crate::references::MAX_REFERENCES_JOINED);
        }
        let mut joins = Vec::with_capacity(references.len());
        for reference in references {
            let outcome = self
                .join_object(&reference.name, &reference.require.join(","), false)
                .await;
            joins.push(ReferenceJoin { reference, outcome });
        }
        Ok(joins)
    }

    /// Leave the joined object `name`.
    pub async fn leave_object(&self, name: &str) -> Result<(), NodeError> {
        let Some(joined) = self.objects.lock().await.remove(name) else {
            return Err(NodeError::NotJoined(name.to_string()));
        };
        if let Some(driver) = self.drivers.get(joined.driver) {
            driver.leave(name).await;
        }
        self.publish_card().await;
        Ok(())
    }

    /// One page of the joined objects' status (without the drivers' own reports,
    /// which [`status`](Self::status) adds).
    pub async fn objects_status(&self, page: &StatusPage) -> ObjectsPage {
        use std::ops::Bound;
        let prefix = page.prefix.as_deref().unwrap_or("");
        let limit = page.limit.unwrap_or(usize::MAX).max(1);
        // Never hold the objects lock across an object: copy the page's handles out.
        let (joined, total, next) = {
            let objects = self.objects.lock().await;
            let matching = |name: &&String| name.starts_with(prefix);
            // Names with the prefix are contiguous in the map: count them from it.
            let total = objects
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .map(|(name, _)| name)
                .take_while(matching)
                .count();
            let start = match page.after.as_deref() {
                Some(after) if after >= prefix => Bound::Excluded(after),
                _ => Bound::Included(prefix),
            };
            let mut from = objects
                .range::<str, _>((start, Bound::Unbounded))
                .take_while(|(name, _)| name.starts_with(prefix));
            let joined: Vec<(String, Joined)> = from
                .by_ref()
                .take(limit)
                .map(|(name, group)| (name.clone(), group.clone()))
                .collect();
            let more = from.next().is_some();
            let next = more
                .then(|| joined.last().map(|(name, _)| name.clone()))
                .flatten();
            (joined, total, next)
        };
        let mut objects = Vec::with_capacity(joined.len());
        for (name, group) in joined {
            objects.push(object_status(name, &group).await);
        }
        ObjectsPage {
            objects,
            total,
            next,
        }
    }

    /// The status of the joined object `name`.
    pub async fn object_status(&self, name: &str) -> Result<ObjectStatus, NodeError> {
        let joined = self.joined(name).await?;
        Ok(object_status(name.to_string(), &joined).await)
    }

    /// What this node runs, from what drivers and the executor published: it
    /// answers within a bound whatever the objects are doing.
    pub async fn status(&self, page: &StatusPage) -> NodeStatus {
        let objects = self.objects_status(page).await;
        let mut drivers = Vec::new();
        for driver in &self.drivers.drivers {
            let name = driver.info().name.to_string();
            let lines = tokio::time::timeout(DRIVER_REPORT_WAIT, driver.report())
                .await
                .unwrap_or_else(|_| {
                    vec![format!(
                        "{name} (busy: no report within {DRIVER_REPORT_WAIT:?})"
                    )]
                });
            if !lines.is_empty() {
                drivers.push(DriverStatus {
                    driver: name,
                    lines,
                });
            }
        }
        NodeStatus {
            me: self.drivers.me,
            objects,
            drivers,
        }
    }
}

/// The answer to a join of an object this node has joined: the same answer as
/// its join, if the record meets `require`.
async fn already_joined(
    name: &str,
    joined: &Joined,
    require: &str,
) -> Result<JoinOutcome, NodeError> {
    let require = require.parse().map_err(NodeError::BadRequirements)?;
    crate::join::check_type(&joined.record, &require).map_err(|reason| JoinError::Type {
        name: name.to_string(),
        reason,
    })?;
    Ok(JoinOutcome {
        version: joined.record.version,
        members: joined.object.report().await.members.len(),
        already: true,
    })
}

impl Node {
    async fn join(
        &self,
        name: String,
        require: &str,
        found_if_alone: bool,
    ) -> Result<JoinOutcome, NodeError> {
        let require = require.parse().map_err(NodeError::BadRequirements)?;
        let mut options = JoinOptions {
            require,
            ..JoinOptions::default()
        };
        let me = self.drivers.me.key;
        let prepared = prepare(&self.runtime, &self.resolver, &name, me, &options).await?;
        let record = prepared.verified.record.clone();
        let Some(driver) = self.drivers.get(&record.driver.name) else {
            return Err(NodeError::NoDriver {
                name,
                driver: record.driver.name.clone(),
            });
        };
        let interface = match &prepared.logic {
            crate::join::PreparedLogic::Replica(logic) => Some(Arc::new(logic.interface().clone())),
            crate::join::PreparedLogic::Aggregate(_) => None,
        };
        // The record's seeds first; if none answers, members gossip knows of; only
        // then found the group (founding while members exist elsewhere would split
        // the object in two).
        let discovery = self.drivers.discovery.is_some();
        options.found_if_alone = found_if_alone && !discovery;
        let mut result = driver
            .join(self.join_request(&name, &prepared, &options))
            .await;
        if matches!(result, Err(JoinError::NoMembers { .. })) && discovery {
            options.extra_seeds = self.discover(&name).await;
            options.found_if_alone = found_if_alone;
            tracing::info!(
                object = %name,
                hints = options.extra_seeds.len(),
                "no seed of the record answered; trying members found by gossip"
            );
            result = driver
                .join(self.join_request(&name, &prepared, &options))
                .await;
        }
        let joined = Joined {
            driver: driver.info().name,
            record: Arc::new(record.clone()),
            object: result?,
            interface,
        };
        let members = joined.object.report().await.members.len();
        self.objects.lock().await.insert(name, joined);
        self.publish_card().await;
        Ok(JoinOutcome {
            version: record.version,
            members,
            already: false,
        })
    }
}

/// One object's line of `lo status`: from what its driver and the executor
/// published, so it answers within a bound whatever the object does.
async fn object_status(name: String, group: &Joined) -> ObjectStatus {
    ObjectStatus {
        name,
        driver: group.driver.to_string(),
        report: group.object.report().await,
    }
}

impl Node {
    fn join_request<'a>(
        &'a self,
        name: &'a str,
        prepared: &'a crate::join::Prepared,
        options: &'a JoinOptions,
    ) -> JoinRequest<'a> {
        JoinRequest {
            name,
            prepared,
            options,
            runtime: &self.runtime,
            logic_source: Some(self.logic_source.clone()),
        }
    }
}

/// Send one request to the daemon at `path` and read its answer.
pub async fn request(path: &Path, request: &ControlRequest) -> std::io::Result<ControlResponse> {
    let mut stream = UnixStream::connect(path).await.map_err(|e| {
        std::io::Error::other(format!(
            "cannot reach the node at {} ({e}); is `lo node` running?",
            path.display()
        ))
    })?;
    write_message(&mut stream, request).await?;
    read_message(&mut stream)
        .await?
        .ok_or_else(|| std::io::Error::other("the node closed the connection without answering"))
}
