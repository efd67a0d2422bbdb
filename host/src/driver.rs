//! The one `Driver` trait: how the node, the join protocol and the CLI use every
//! communication driver without naming any.
//!
//! A driver (its own folder: `mesh/`, `qsm/`, `vsync/`, `gossip/`) declares what it provides
//! ([`DriverInfo`], matched against an object's type before anything else
//! happens), joins objects from a verified, checked and authorized record
//! ([`Driver::join`]), leaves them, and reports its state as data. A joined object
//! is a [`JoinedObject`]: calls, a status report that answers within a bound
//! whatever the object is doing, and notices. The node keeps drivers in one table
//! ([`NodeDrivers`]), built from the command line's settings by one registration
//! line per driver in [`DriverSettings::start`].
//!
//! In the spirit of foca's `Runtime` and quinn's proto/shell split: the trait is
//! the seam between the node and a driver's IO shell; each driver's protocol stays
//! a sans-IO core behind it.

use crate::group::{GroupError, GroupNotice, GroupStatus};
use crate::join::{JoinError, JoinOptions, Prepared};
use crate::mesh::net::Peer;
use crate::runtime::Runtime;
use liveobjects_directory::record::{Category, Reliability, Security};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::broadcast;

/// A boxed future, as the [`Driver`] and [`JoinedObject`] traits return (they are
/// used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A communication driver and the guarantees it declares. The join protocol matches
/// an object's type against these before anything else happens.
#[derive(Debug, Clone, Copy)]
pub struct DriverInfo {
    /// The name records use (`--driver`).
    pub name: &'static str,
    /// Strongest delivery guarantee it provides.
    pub reliability: Reliability,
    /// Strongest protection it provides.
    pub security: Security,
    /// The object categories it runs.
    pub categories: &'static [Category],
    /// One line for users.
    pub summary: &'static str,
    /// What `lo status` calls the member that orders a group's events.
    pub orderer: &'static str,
    /// Checks the driver's options in a record (at publish and at join).
    pub check_options: fn(&liveobjects_directory::record::ObjectRecord) -> Result<(), String>,
    /// Whether joined hosts switch to a newer record's logic live (at a cut of
    /// the object's order, or a flushed view change); otherwise hosts keep the
    /// logic they run (a group the logic it was founded with, which its joiners
    /// run too).
    pub live_upgrade: bool,
}

fn no_options(_: &liveobjects_directory::record::ObjectRecord) -> Result<(), String> {
    Ok(())
}

/// The mesh's and vsync's option: `check-every=N`.
fn check_options(record: &liveobjects_directory::record::ObjectRecord) -> Result<(), String> {
    crate::join::check_every_option(record).map(|_| ())
}

fn qsm_options(record: &liveobjects_directory::record::ObjectRecord) -> Result<(), String> {
    crate::join::membership_of(record).map(|_| ())
}

/// The drivers this host provides.
pub const DRIVERS: &[DriverInfo] = &[
    DriverInfo {
        name: "mesh",
        // Total order among connected members through a sequencer; links mutually
        // authenticated and encrypted (QUIC, TLS 1.3, identity certificates).
        reliability: Reliability::TotalOrder,
        security: Security::Encrypted,
        categories: &[
            Category::EventStream,
            Category::ReplicatedState,
            Category::ReplicatedService,
            Category::CheckpointedChannel,
        ],
        summary: "QUIC between all members; total order through a sequencer; small groups, WAN",
        orderer: "sequencer",
        check_options,
        live_upgrade: true,
    },
    DriverInfo {
        name: "qsm",
        // Reliable FIFO per sender over IP multicast regions; every datagram sealed
        // with AES-256-GCM under keys the membership service hands to members only.
        reliability: Reliability::ReliableFifo,
        security: Security::Encrypted,
        categories: &[
            Category::EventStream,
            Category::ReplicatedState,
            Category::ReplicatedService,
            Category::CheckpointedChannel,
        ],
        summary: "IP multicast per region, token-ring repair, rate-based flow control; \
                  many objects per host, LAN scale",
        orderer: "sequencer",
        check_options: qsm_options,
        live_upgrade: true,
    },
    DriverInfo {
        name: "vsync",
        // Virtual synchrony with consensus: views and the total order are Raft's
        // log (openraft); `durable` objects keep it on disk and survive the crash
        // of every member. Links as the mesh's (QUIC, identity certificates).
        reliability: Reliability::Durable,
        security: Security::Encrypted,
        categories: &[
            Category::EventStream,
            Category::ReplicatedState,
            Category::ReplicatedService,
            Category::CheckpointedChannel,
        ],
        summary: "consensus (Raft) on views and order; durable objects survive a crash \
                  of every member; transactions commit everywhere or nowhere",
        orderer: "leader",
        check_options,
        live_upgrade: true,
    },
    DriverInfo {
        name: "gossip",
        // Aggregates converge; nothing is delivered in order or exactly once, and
        // datagrams are not authenticated (see `crate::gossip`).
        reliability: Reliability::BestEffort,
        security: Security::Open,
        categories: &[Category::GossipAggregate],
        summary: "SWIM membership, Cyclon peer sampling, push-pull aggregates over UDP; \
                  on a node with `lo node --gossip ADDR`, or alone with `lo gossip`",
        orderer: "sequencer",
        check_options: no_options,
        live_upgrade: false,
    },
];

/// The driver called `name`, if this host has it.
pub fn driver(name: &str) -> Option<&'static DriverInfo> {
    DRIVERS.iter().find(|d| d.name == name)
}

/// One joined object's state, as `lo status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectReport {
    /// Members (key prefix @ address).
    pub members: Vec<String>,
    /// Whether this host orders the group's events (sequencer or leader).
    pub sequencer: bool,
    /// Whether it has state yet.
    pub member: bool,
    /// Events applied by the object.
    pub events_applied: u64,
    /// Size of its snapshot in bytes.
    pub state_bytes: u64,
    /// SHA-256 of a recent snapshot (hex): replicas that applied the same events
    /// agree. Or why there is none, in parentheses.
    pub state_digest: String,
    /// Why the host quarantined the object on this node, if it did.
    pub quarantined: Option<String>,
    /// Work queued for the object on the executor (jobs, bytes).
    pub queued: Option<(u64, u64)>,
    /// Whether the executor is holding it back right now (over a budget).
    pub throttled: bool,
    /// How many times the executor held it back so far.
    #[serde(default)]
    pub times_throttled: u64,
    /// Whether it hibernates (state held as a snapshot until its next job).
    #[serde(default)]
    pub hibernating: bool,
    /// Calls that applied several of its events at once (`deliver-batch`).
    #[serde(default)]
    pub batches: u64,
    /// What the object reports beyond its state, if anything (a gossip
    /// aggregate's last estimate).
    pub value: Option<String>,
    /// The latest divergence check the replica agreed with (mesh).
    #[serde(default)]
    pub check: Option<String>,
    /// The latest divergence found at this replica and its repair, or why the
    /// object was stopped for lack of a majority (mesh).
    #[serde(default)]
    pub divergence: Option<String>,
    /// The logic's record version here, since when, and the last live upgrade
    /// (mesh, vsync, qsm).
    #[serde(default)]
    pub logic: Option<String>,
    /// The record version of the logic running here (mesh, vsync, qsm).
    #[serde(default)]
    pub logic_version: Option<u64>,
    /// The highest version a live upgrade was tried to here, if above the one
    /// running: that upgrade was aborted or refused (`logic` says why).
    #[serde(default)]
    pub upgrade_tried: Option<u64>,
}

impl ObjectReport {
    /// A report from a driver's group status plus the executor's metrics.
    pub fn from_status(status: &GroupStatus, metrics: &crate::executor::ObjectMetrics) -> Self {
        let members = status
            .members
            .iter()
            .map(crate::mesh::net::Peer::label)
            .collect();
        ObjectReport {
            sequencer: status.sequencer,
            member: status.member,
            events_applied: metrics.events_applied.max(status.events_applied),
            check: status.check.clone(),
            divergence: status.divergence.clone(),
            logic: status.logic.clone(),
            logic_version: status.logic_version,
            upgrade_tried: status.upgrade_tried,
            ..Self::from_metrics(members, metrics)
        }
    }

    /// A report of a member (ordering nothing) from the executor's metrics.
    pub fn from_metrics(members: Vec<String>, metrics: &crate::executor::ObjectMetrics) -> Self {
        ObjectReport {
            members,
            sequencer: false,
            member: true,
            events_applied: metrics.events_applied,
            state_bytes: metrics.state_bytes,
            state_digest: if metrics.state_digest.is_empty() {
                "(not yet taken)".to_string()
            } else {
                metrics.state_digest.clone()
            },
            quarantined: metrics.quarantined.clone(),
            queued: Some((metrics.queued_jobs, metrics.queued_bytes)),
            throttled: metrics.throttled,
            times_throttled: metrics.times_throttled,
            hibernating: metrics.hibernating,
            batches: metrics.batches,
            value: None,
            check: None,
            divergence: None,
            logic: None,
            logic_version: None,
            upgrade_tried: None,
        }
    }
}

/// A joined object, on whichever driver carries it.
pub trait JoinedObject: Send + Sync + std::fmt::Debug {
    /// Call a method (WAVE arguments). An update returns once it is applied here
    /// (vsync: committed everywhere, or aborted everywhere).
    fn call<'a>(
        &'a self,
        method: &'a str,
        args: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<String>, GroupError>>;

    /// The object's state now, from what the driver and the executor published:
    /// it answers within a bound whatever the object is doing.
    fn report(&self) -> BoxFuture<'_, ObjectReport>;

    /// The replica's snapshot (queued behind its pending work).
    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<u8>, GroupError>>;

    /// Notifications and membership changes from now on.
    fn subscribe(&self) -> broadcast::Receiver<GroupNotice>;

    /// The object's methods now, if a live upgrade changed its logic since it
    /// was joined (`None`: the logic it was joined with).
    fn interface(&self) -> Option<Arc<crate::runtime::ObjectInterface>> {
        None
    }

    /// The events the replica applies from now on, in its order (`None` for
    /// objects that apply no events, like aggregates).
    fn applied(&self) -> Option<broadcast::Receiver<crate::runtime::AppliedEvent>> {
        None
    }
}

/// A version of an object's logic a live upgrade may switch to.
#[derive(Clone)]
pub struct LogicVersion {
    /// Its record version.
    pub version: u64,
    /// The signed record (postcard), what members hand each other.
    pub record: Vec<u8>,
    /// The driver the record names (a live upgrade keeps the driver).
    pub driver: String,
    /// The logic, loaded.
    pub logic: Arc<crate::runtime::Logic>,
}

/// Why a version of an object's logic cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogicError {
    /// The record or its logic is not acceptable (a bad signature, another
    /// object's record, a logic that is not an object): every host would say so.
    #[error("{0}")]
    Refused(String),
    /// The directory could not be asked or did not answer: asking again may work.
    #[error("{0}")]
    Unavailable(String),
}

/// Where drivers get an object's newer logic for a live upgrade (the node's
/// directory resolver; `None` where there is no directory, as in-process).
pub trait LogicSource: Send + Sync {
    /// The object's newest record with its logic loaded, if its version is
    /// above `than`.
    fn newer<'a>(
        &'a self,
        name: &'a str,
        than: u64,
    ) -> BoxFuture<'a, Result<Option<LogicVersion>, LogicError>>;

    /// Verify `record`, a signed record another member passed on, as a record of
    /// `name` signed by its zone, and load its logic.
    fn verify<'a>(
        &'a self,
        name: &'a str,
        record: &'a [u8],
    ) -> BoxFuture<'a, Result<LogicVersion, LogicError>>;

    /// Verify `record` as the logic a state this host takes from its group
    /// runs (a state transfer's, a snapshot's, a log's first entry), and load
    /// it: what the record says and its own signature are checked as by
    /// [`verify`](Self::verify), but not whether its signer may still sign for
    /// the zone or whether it has expired. The group ran it when it could, and
    /// a joiner trusts its group's state as far; without this, a zone's key
    /// rollover or a record's expiry would leave a group no host can join.
    /// Upgrades being ordered are checked with [`verify`](Self::verify).
    fn verify_in_force<'a>(
        &'a self,
        name: &'a str,
        record: &'a [u8],
    ) -> BoxFuture<'a, Result<LogicVersion, LogicError>> {
        self.verify(name, record)
    }
}

/// How a record a member passed on is checked (see [`LogicSource`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordUse {
    /// An upgrade being ordered: the zone must vouch for it now.
    Upgrade,
    /// The logic of a state taken from the group.
    InForce,
}

/// A verified record in the form members hand each other (its signed form,
/// postcard): what [`LogicVersion::record`] and [`Evolution::record`] hold.
pub fn record_bytes(verified: &liveobjects_directory::verify::VerifiedRecord) -> Vec<u8> {
    postcard::to_allocvec(&verified.signed).expect("postcard encoding to a Vec cannot fail")
}

/// The logic a driver starts an object with, and where it finds newer logic.
#[derive(Clone, Default)]
pub struct Evolution {
    /// The record version of the logic it starts with (0 if unknown).
    pub version: u64,
    /// That signed record (postcard; empty if unknown).
    pub record: Vec<u8>,
    /// Where newer logic comes from; `None`: no live upgrades.
    pub source: Option<Arc<dyn LogicSource>>,
    /// How often the member that orders the object looks for a newer record.
    pub poll_every: std::time::Duration,
}

impl Evolution {
    /// Starting with the logic of `verified`, with no source of newer logic.
    pub fn starting_with(verified: &liveobjects_directory::verify::VerifiedRecord) -> Self {
        Evolution {
            version: verified.record.version,
            record: record_bytes(verified),
            ..Evolution::default()
        }
    }
}

impl std::fmt::Debug for Evolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evolution")
            .field("version", &self.version)
            .field("source", &self.source.is_some())
            .field("poll_every", &self.poll_every)
            .finish_non_exhaustive()
    }
}

/// The logic a replica runs and its last live upgrade, as a driver keeps it in
/// the order of the object's stream (mesh: as of the jobs the executor ran for
/// the replica; vsync: in the replicated state machine), so a snapshot carries
/// the logic its state belongs to.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LogicInForce {
    /// The record version of the logic.
    pub version: u64,
    /// That signed record (postcard), empty if unknown.
    pub record: Vec<u8>,
    /// The position of the order where it took over, if by an upgrade.
    pub since: Option<u64>,
    /// The highest version an upgrade was tried to (switched, aborted or
    /// refused): an upgrade is tried once.
    pub attempted: u64,
    /// The last upgrade's outcome.
    pub last: Option<String>,
    /// The logic's methods, if an upgrade or a state transfer changed the logic.
    #[serde(skip)]
    pub interface: Option<Arc<crate::runtime::ObjectInterface>>,
}

impl LogicInForce {
    /// The highest version in force or tried.
    pub fn newest(&self) -> u64 {
        self.version.max(self.attempted)
    }

    /// Note an attempt to switch to `version`; false if it was tried already
    /// (each version is tried once, in the replica's order).
    pub fn begin_attempt(&mut self, version: u64) -> bool {
        if version <= self.newest() {
            return false;
        }
        self.attempted = version;
        true
    }

    /// One line for `lo status`: the version, since when, the last upgrade.
    pub fn line(&self) -> String {
        let mut line = format!("version {}", self.version);
        if let Some(at) = self.since {
            line.push_str(&format!(" since position {at}"));
        }
        if let Some(last) = &self.last {
            line.push_str(&format!("; last upgrade: {last}"));
        }
        line
    }
}

/// How long a member tries to get the logic of an upgrade ordered in its group
/// (or of the state it was sent) before it stops the object rather than run
/// other logic than the group.
pub const LOGIC_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// [`LogicSource::verify`] (or [`LogicSource::verify_in_force`]), asked again
/// every second while the directory cannot answer, for up to [`LOGIC_PATIENCE`].
pub async fn verify_patiently(
    source: &dyn LogicSource,
    name: &str,
    record: &[u8],
    usage: RecordUse,
) -> Result<LogicVersion, LogicError> {
    let deadline = tokio::time::Instant::now() + LOGIC_PATIENCE;
    loop {
        let verified = match usage {
            RecordUse::Upgrade => source.verify(name, record).await,
            RecordUse::InForce => source.verify_in_force(name, record).await,
        };
        match verified {
            Err(LogicError::Unavailable(reason)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("{name}: cannot get its new logic yet: {reason}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Whether an upgrade failed for a reason of this host's (its wall-clock deadline,
/// its instance pool), not one every replica meets.
pub fn upgrade_failed_here_only(error: &crate::runtime::ReplicaError) -> bool {
    matches!(
        error,
        crate::runtime::ReplicaError::Quarantined { .. }
            | crate::runtime::ReplicaError::Instantiate { .. }
            | crate::runtime::ReplicaError::LimitExceeded {
                limit: crate::runtime::Limit::Deadline { .. },
                ..
            }
    )
}

/// Write one file of a divergence's evidence (on an executor worker or a
/// blocking thread, never on a group's task); a failure is logged, the repair goes on.
pub fn keep_evidence(object: &str, dir: &std::path::Path, file: &str, bytes: &[u8]) {
    let path = dir.join(file);
    let written = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, bytes));
    if let Err(e) = written {
        tracing::warn!(
            "{object}: cannot keep divergence evidence {}: {e}",
            path.display()
        );
    }
}

/// An executor job that keeps a diverged replica's evidence under `dir`:
/// `report` as `divergence.txt`, and the replica's state as `file`.
pub fn evidence_job(
    object: String,
    dir: std::path::PathBuf,
    report: String,
    file: String,
) -> crate::executor::Job {
    Box::new(move |replica| {
        keep_evidence(&object, &dir, "divergence.txt", report.as_bytes());
        if let Ok(snapshot) = replica.and_then(|r| r.snapshot()) {
            keep_evidence(&object, &dir, &file, &snapshot);
        }
    })
}

/// What a driver joins with: a record already resolved, verified, type-checked
/// and authorized, and its logic loaded.
pub struct JoinRequest<'a> {
    /// The object's name.
    pub name: &'a str,
    /// The verified record and loaded logic.
    pub prepared: &'a Prepared,
    /// The joiner's options (grant, seeds to add, whether to found).
    pub options: &'a JoinOptions,
    /// The runtime (and its executor; the object's budgets come from
    /// [`crate::join::budgets_for`]).
    pub runtime: &'a Arc<Runtime>,
    /// Where newer logic for live upgrades comes from, if anywhere.
    pub logic_source: Option<Arc<dyn LogicSource>>,
}

/// A communication driver as the node uses it.
pub trait Driver: Send + Sync {
    /// What it provides, and its name in records.
    fn info(&self) -> &'static DriverInfo;

    /// Join the object of `request` (state transfer included): returns once the
    /// replica has its state. [`JoinError::NoMembers`] means nobody answered and
    /// founding was not allowed, so the node may try again with more seeds.
    fn join<'a>(
        &'a self,
        request: JoinRequest<'a>,
    ) -> BoxFuture<'a, Result<Arc<dyn JoinedObject>, JoinError>>;

    /// Stop taking part in `name`.
    fn leave<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;

    /// The driver's own state for `lo status` (addresses, regions, rates), as
    /// lines; empty if it has nothing to say.
    fn report(&self) -> BoxFuture<'_, Vec<String>>;
}

/// A driver that finds other hosts (gossip): the node publishes its *card* (its
/// address and objects) through it, and asks it for other hosts' cards when none
/// of the seeds a record lists answers.
pub trait Discovery: Send + Sync {
    /// Largest card it carries.
    fn max_card(&self) -> usize;
    /// Publish this node's card.
    fn publish_card(&self, card: Vec<u8>) -> BoxFuture<'_, ()>;
    /// Cards of up to `limit` live hosts, as they answer within `wait`.
    fn cards(&self, limit: usize, wait: std::time::Duration) -> BoxFuture<'_, Vec<Vec<u8>>>;
}

/// A node's drivers, one per name, and the address it is known by.
pub struct NodeDrivers {
    /// This node's identity and main contact address (what its gossip card says).
    pub me: Peer,
    /// The drivers, in the order `lo status` reports them.
    pub drivers: Vec<Arc<dyn Driver>>,
    /// How the node finds other hosts, if a driver provides it.
    pub discovery: Option<Arc<dyn Discovery>>,
    /// Lines to print once the node is up (addresses tests and scripts read).
    pub banner: Vec<String>,
}

impl NodeDrivers {
    /// The driver called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Driver>> {
        self.drivers.iter().find(|d| d.info().name == name)
    }
}

/// Every driver's settings, as `lo node` takes them on its command line.
#[derive(clap::Args, Debug, Clone)]
pub struct DriverArgs {
    /// How often (seconds) the member that orders each mesh or vsync object
    /// (its sequencer or leader), or each qsm object's oldest member, looks in
    /// the directory for a newer record of it, to upgrade it live (0: never).
    /// An idle object looks at most once after its last activity, then at its
    /// next.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub upgrade_poll: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub mesh: crate::mesh::node_driver::MeshArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vsync: crate::vsync::node_driver::VsyncArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub qsm: crate::qsm::node_driver::QsmArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub gossip: crate::gossip::node_driver::GossipArgs,
}

impl DriverArgs {
    /// Start every driver (inside a tokio runtime) as `identity`, keeping durable
    /// state under `data_dir` and objects on `runtime`. Adding a driver means its
    /// folder, its settings above and one line here.
    pub async fn start(
        &self,
        identity: &liveobjects_directory::keys::Identity,
        data_dir: &std::path::Path,
        runtime: &Arc<Runtime>,
    ) -> Result<NodeDrivers, String> {
        let upgrade_poll = std::time::Duration::from_secs(self.upgrade_poll);
        let mesh = crate::mesh::node_driver::MeshDriver::start(
            identity,
            &self.mesh,
            data_dir,
            upgrade_poll,
        )?;
        let vsync = crate::vsync::node_driver::VsyncDriver::start(
            identity,
            &self.vsync,
            data_dir,
            upgrade_poll,
        )?;
        let qsm = crate::qsm::node_driver::QsmDriver::new(identity, &self.qsm, upgrade_poll);
        let gossip = crate::gossip::node_driver::GossipDriver::start(&self.gossip, runtime).await?;
        let me = mesh.me();
        let mut banner = vec![format!("node listening on {} key {}", me.addr, me.key)];
        if let Some(name) = me.name {
            banner.push(format!(
                "name {name}: others see this node as {}",
                liveobjects_directory::keys::member_label(&me.key, me.name)
            ));
        }
        banner.extend(vsync.banner());
        let mut drivers: Vec<Arc<dyn Driver>> =
            vec![Arc::new(mesh), Arc::new(vsync), Arc::new(qsm)];
        let mut discovery = None;
        if let Some(gossip) = gossip {
            banner.push(format!("gossip on {}", gossip.addr()));
            discovery = Some(gossip.discovery());
            drivers.push(Arc::new(gossip));
        }
        Ok(NodeDrivers {
            me,
            drivers,
            discovery,
            banner,
        })
    }
}
