//! vsync in the host: a [`VsyncNode`] runs one endpoint ([`QuicLink`]) and the
//! groups of the objects it joined, each over a sandboxed replica
//! ([`ReplicaApp`]); a [`VsyncHandle`] serves local calls.
//!
//! A call runs the method on the local replica (which never changes state by
//! itself). If it multicast, its payloads are submitted as one command (one
//! transaction, however many payloads): ordered through the group, committed at
//! every replica or none, and applied here before the call returns, so the caller
//! learns commit or abort (the object's refusal of any of its payloads).
//!
//! The guest runs on the node's object executor ([`crate::executor`]), never on
//! openraft's tasks: the state machine hands each committed entry to the object's
//! mailbox and waits for it (openraft applies entries in order anyway), so the
//! object gets the executor's budgets, deadlines, fairness and quarantine. A
//! replica quarantined on this node stops its group here (what peers see of a
//! crash) instead of refusing entries its peers commit.
//! If it multicast nothing it was a query: the replica first passes a
//! linearizable read barrier, then the method runs again and its answer is
//! returned (reads see every write that finished before they started).

use super::group::{Group, GroupConfig, GroupFailure};
use super::machine::{Application, GroupView, Switched};
use super::net::{Handler, QuicLink};
use super::store::LogStore;
use super::types::{Applied, Command, LogicChange, Position};
use crate::driver::{BoxFuture, Evolution, LogicError, LogicInForce, LogicVersion, RecordUse};
use crate::executor::ObjectRef;
use crate::group::{GroupError, GroupNotice, GroupStatus};
use crate::mesh::net::Peer;
use crate::runtime::{Event, Logic, Replica, ReplicaError, ReplicaIdentity, Runtime, View};
use liveobjects_directory::record::{AccessPolicy, Grant, Signed};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

/// Commands a replica's own cascades (events multicast while applying an event)
/// may queue; a replica whose cascades outrun its group's commits by more is
/// quarantined (the executor's budgets usually stop a chain reaction first).
const CASCADE_QUEUE: usize = 4096;
/// What the host holds for a replica's queued cascades, as its memory cap reports it
/// (their bytes count against the cap from the multicast until the commit).
const CASCADE_MEMORY: &str = "events it multicast while applying events, waiting to be committed";

/// Run `job` on the object's executor mailbox and wait for what it returns. The
/// caller is openraft's state machine (or a call), which must not go on before the
/// object has applied the entry; on a multi-threaded runtime the wait moves this
/// thread's other tasks elsewhere (`block_in_place`).
fn run_blocking<R: Send + 'static>(
    replica: &ObjectRef,
    job: impl FnOnce(Result<&mut Replica, ReplicaError>) -> R + Send + 'static,
) -> R {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let mut job = Some(Box::new(move |r: Result<&mut Replica, ReplicaError>| {
        let _ = tx.send(job(r));
    }) as crate::executor::Job);
    loop {
        let submitted = replica.submit(0, job.take().expect("job"));
        match submitted {
            Ok(()) => break,
            Err(crate::executor::Full(back)) => {
                job = Some(back);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    let wait = || rx.recv().expect("the executor answers every job");
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// A sandboxed replica (on the executor) as a group's [`Application`].
pub struct ReplicaApp {
    object: String,
    replica: ObjectRef,
    notices: crate::group::Notices,
    cascades: mpsc::Sender<Vec<u8>>,
    /// Where newer logic comes from, and the version loaded now.
    evolution: Evolution,
    /// What the group and its handle show of the logic (status, calls).
    logic: Arc<Mutex<PublishedLogic>>,
    /// Logic adopted for the next restore (switched in the same executor job
    /// as the `init`, so no call or status sees a replica between the two).
    adopted: Option<Arc<Logic>>,
    /// Divergence checks: how often, this replica's digests, where they go.
    checks: ReplicaChecks,
}

/// The check interval a signed record (postcard) asks for, or `fallback` if it
/// does not decode: replicas check at the interval of the logic in force, which
/// the log names, not of whatever record their host resolved.
fn check_every_in(record: &[u8], fallback: u64) -> u64 {
    let asked = postcard::from_bytes::<Signed<liveobjects_directory::record::ObjectRecord>>(record)
        .ok()
        .and_then(|signed| signed.open().ok())
        .and_then(|record| crate::join::check_every_option(&record).ok());
    match asked {
        Some(every) => every.unwrap_or(super::node_driver::DEFAULT_CHECK_EVERY),
        None => fallback,
    }
}

/// A replica's side of the divergence checks (see [`super::machine`]).
struct ReplicaChecks {
    every: u64,
    /// This replica's digest at each recent checked position.
    own: std::collections::BTreeMap<u64, [u8; 32]>,
    /// To the task that orders them.
    digests: mpsc::UnboundedSender<(u64, [u8; 32])>,
    /// To the task that repairs this replica: the position and who agreed.
    repairs: mpsc::UnboundedSender<(u64, Vec<String>)>,
    /// Where a divergence's evidence goes, if anywhere.
    evidence: Option<PathBuf>,
}

/// The logic of a vsync object as its handle shows it, and an upgrade's logic
/// its leader already loaded.
#[derive(Default)]
struct PublishedLogic {
    /// The logic in force, once the log named it.
    in_force: Option<LogicInForce>,
    /// The methods of the logic running, if it is not the one joined with.
    interface: Option<Arc<crate::runtime::ObjectInterface>>,
    /// Loaded since the last switch (by an upgrade or a state of another version).
    loaded: Option<Arc<crate::runtime::ObjectInterface>>,
    /// The latest divergence check this replica agreed with.
    check: Option<String>,
    /// The latest divergence found here and its repair, or why there was no
    /// majority.
    divergence: Option<String>,
    /// The newer version the leader found and proposed (not fetched twice).
    candidate: Option<LogicVersion>,
}

/// What applying one command's payloads did.
struct AppliedCommand {
    refused: Option<String>,
    multicasts: Vec<Vec<u8>>,
    notifications: Vec<crate::runtime::Notification>,
}

impl Application for ReplicaApp {
    type Logic = LogicVersion;

    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String> {
        let snapshot = snapshot.map(<[u8]>::to_vec);
        let adopted = self.adopted.take();
        run_blocking(&self.replica, move |r| {
            r.and_then(|r| {
                if let Some(logic) = adopted {
                    r.replace_logic(logic);
                }
                r.init(snapshot.as_deref())
            })
            .map_err(|e| e.to_string())
        })
    }

    fn apply(&mut self, _at: Position, command: &Command) -> Result<(), String> {
        let command = command.clone();
        let outcome = run_blocking(&self.replica, move |r| apply_command(r, &command));
        let outcome = outcome.map_err(|e| e.to_string())?;
        if let Some(reason) = outcome.refused {
            return Err(reason);
        }
        for n in outcome.notifications {
            let _ = self.notices.send(GroupNotice::Notification {
                topic: n.topic,
                detail: n.detail,
            });
        }
        for payload in outcome.multicasts {
            // Past its memory cap the object is quarantined; its hook stops the
            // group here (and sends the notice).
            let bytes = payload.len();
            if self.replica.hold(bytes, CASCADE_MEMORY).is_err() {
                break;
            }
            if self.cascades.try_send(payload).is_err() {
                self.replica.quarantine(&format!(
                    "exceeded its host memory: more than {CASCADE_QUEUE} events it multicast \
                     while applying events wait to be committed (a chain reaction?)"
                ));
                break;
            }
        }
        Ok(())
    }

    fn view(&mut self, view: &GroupView) {
        let peers: Vec<Peer> = view.members.iter().map(|m| Peer::from(*m)).collect();
        let _ = self.notices.send(GroupNotice::View(peers));
        let guest = View {
            id: view.id,
            members: view.members.iter().map(|m| m.key.to_string()).collect(),
        };
        let refused = run_blocking(&self.replica, move |r| {
            r.and_then(|r| r.view_changed(&guest)).err()
        });
        if let Some(e) = refused {
            tracing::warn!("vsync: view change refused: {e}");
        }
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        // A replica that cannot snapshot serves no joiner and no repair;
        // openraft keeps the log instead (nothing is purged past no snapshot).
        run_blocking(&self.replica, |r| r.and_then(|r| r.snapshot())).map_err(|e| {
            tracing::warn!("vsync: no snapshot: {e}");
            e.to_string()
        })
    }

    fn running(&self) -> u64 {
        self.evolution.version
    }

    fn prepare_logic(
        &self,
        change: &LogicChange,
        usage: RecordUse,
    ) -> BoxFuture<'static, Result<LogicVersion, LogicError>> {
        let candidate = self.logic.lock().expect("logic").candidate.clone();
        let (source, object) = (self.evolution.source.clone(), self.object.clone());
        let change = change.clone();
        Box::pin(async move {
            let loaded = match candidate {
                Some(candidate) if candidate.record == change.record => Ok(candidate),
                _ => match source {
                    Some(source) => {
                        crate::driver::verify_patiently(
                            source.as_ref(),
                            &object,
                            &change.record,
                            usage,
                        )
                        .await
                    }
                    // Other members may well verify it: stop here rather than fork.
                    None => Err(LogicError::Unavailable(
                        "this host has no directory to verify the record with".to_string(),
                    )),
                },
            }?;
            if loaded.version != change.version {
                return Err(LogicError::Refused(format!(
                    "its record is version {}, not {}",
                    loaded.version, change.version
                )));
            }
            if loaded.driver != "vsync" {
                return Err(LogicError::Refused(format!(
                    "it moves the object to the {} driver, which a live upgrade cannot do: \
                     leave and join it again",
                    loaded.driver
                )));
            }
            Ok(loaded)
        })
    }

    fn adopt(&mut self, logic: LogicVersion) -> Result<(), String> {
        self.checks.every = check_every_in(&logic.record, self.checks.every);
        self.adopted = Some(logic.logic.clone());
        self.evolution.version = logic.version;
        self.logic.lock().expect("logic").loaded = Some(Arc::new(logic.logic.interface().clone()));
        Ok(())
    }

    fn upgrade(&mut self, _index: u64, from: u64, logic: LogicVersion) -> Switched {
        let (code, to) = (logic.logic.clone(), logic.version);
        let outcome = run_blocking(&self.replica, move |r| {
            r.and_then(|r| r.upgrade(code, from, to)).map(|_| ())
        });
        match outcome {
            Ok(()) => {
                self.evolution.version = to;
                self.checks.every = check_every_in(&logic.record, self.checks.every);
                self.logic.lock().expect("logic").loaded =
                    Some(Arc::new(logic.logic.interface().clone()));
                Switched::Done
            }
            Err(e) if crate::driver::upgrade_failed_here_only(&e) => Switched::Stop(e.to_string()),
            Err(e) => Switched::Refused(e.to_string()),
        }
    }

    fn logic_changed(&mut self, in_force: &LogicInForce) {
        let mut published = self.logic.lock().expect("logic");
        published.in_force = Some(in_force.clone());
        if let Some(loaded) = published.loaded.take() {
            published.interface = Some(loaded);
        }
        published.candidate = None;
    }

    fn stop(&mut self, reason: &str) {
        self.replica.quarantine(reason);
    }

    fn check_every(&self) -> u64 {
        self.checks.every
    }

    fn repaired(&mut self, through: u64) {
        // Digests of the state that parted from the group's mean nothing now.
        self.checks.own.retain(|at, _| *at > through);
    }

    fn checkpoint(&mut self, at: u64) {
        use sha2::Digest as _;
        let digest = run_blocking(&self.replica, |r| {
            r.and_then(|r| r.snapshot())
                .map(|s| <[u8; 32]>::from(sha2::Sha256::digest(&s)))
        });
        let Ok(digest) = digest else {
            // A replica that cannot snapshot reports nothing; the others decide.
            return;
        };
        self.checks.own.insert(at, digest);
        while self.checks.own.len() > 16 {
            self.checks.own.pop_first();
        }
        let _ = self.checks.digests.send((at, digest));
    }

    fn checked(&mut self, outcome: &super::machine::CheckOutcome) {
        use super::machine::CheckVerdict;
        let short = |d: &[u8; 32]| hex::encode(&d[..6]);
        let at = outcome.at;
        let members = outcome.members;
        match &outcome.verdict {
            CheckVerdict::Majority { sha256, agreeing } => {
                let Some(own) = self.checks.own.get(&at).copied() else {
                    return;
                };
                let mut published = self.logic.lock().expect("logic");
                if own == *sha256 {
                    published.check = Some(format!(
                        "position {at}: {} of {members} replicas agree on {}",
                        agreeing.len(),
                        short(sha256)
                    ));
                    return;
                }
                let mut line = format!(
                    "diverged at position {at}: {} of {members} replicas agree on {}, this \
                     one has {}; repairing from {}",
                    agreeing.len(),
                    short(sha256),
                    short(&own),
                    agreeing
                        .first()
                        .map(|k| &k[..8.min(k.len())])
                        .unwrap_or_default()
                );
                if let Some(dir) = &self.checks.evidence {
                    line.push_str(&format!(" (evidence in {})", dir.display()));
                    let report = format!(
                        "{line}\nmajority sha256 {}\nthis replica's sha256 {}\n",
                        hex::encode(sha256),
                        hex::encode(own)
                    );
                    // Its state now (the one that parted from the group's).
                    let file = format!("diverged-at-{at}.snapshot");
                    let job =
                        crate::driver::evidence_job(self.object.clone(), dir.clone(), report, file);
                    let _ = self.replica.submit(0, job);
                }
                tracing::error!("{}: {line}", self.object);
                published.divergence = Some(line);
                let _ = self.checks.repairs.send((at, agreeing.clone()));
            }
            CheckVerdict::NoMajority { groups } => {
                let states: Vec<String> = groups
                    .iter()
                    .map(|(d, n)| format!("{} x{n}", short(d)))
                    .collect();
                self.logic.lock().expect("logic").divergence = Some(format!(
                    "no majority at position {at}: the {members} replicas hold {} different \
                     states ({}); stopped here rather than let it fork",
                    groups.len(),
                    states.join(", ")
                ));
            }
        }
    }
}

/// Apply every payload of `command` as one transaction: if the object refuses
/// (or traps on) any of them, the replica is put back as it was before the first
/// and the whole command is refused, alike at every replica (the sandbox is
/// deterministic). Multicasts and notifications count only if all applied.
fn apply_command(
    replica: Result<&mut Replica, ReplicaError>,
    command: &Command,
) -> Result<AppliedCommand, ReplicaError> {
    let replica = replica?;
    let payloads = std::iter::once(&command.payload).chain(&command.more);
    let before = if command.more.is_empty() {
        None
    } else {
        Some(replica.snapshot()?)
    };
    let mut outcome = AppliedCommand {
        refused: None,
        multicasts: Vec::new(),
        notifications: Vec::new(),
    };
    for (i, payload) in payloads.enumerate() {
        let event = Event {
            sender: command.sender.clone(),
            seq: command.seq,
            timestamp_ms: command.timestamp_ms,
            payload: payload.clone(),
        };
        let refusal = match replica.deliver(&event) {
            Ok(delivery) => match delivery.rejected {
                None => {
                    outcome.multicasts.extend(delivery.multicasts);
                    outcome.notifications.extend(delivery.notifications);
                    None
                }
                Some(reason) => Some(reason),
            },
            Err(e @ ReplicaError::Quarantined { .. }) => return Err(e),
            Err(e) if replica.out_of_service().is_some() => return Err(e),
            // A trap is rolled back and refused alike at every replica (the
            // sandbox and its limits are deterministic): an abort, like a refusal.
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = refusal {
            if let Some(before) = &before {
                replica.init(Some(before))?;
            }
            let reason = if command.more.is_empty() {
                reason
            } else {
                format!("payload {} of {}: {reason}", i + 1, command.more.len() + 1)
            };
            return Ok(AppliedCommand {
                refused: Some(reason),
                multicasts: Vec::new(),
                notifications: Vec::new(),
            });
        }
    }
    Ok(outcome)
}

/// Repair `group`'s replica, which diverged at position `at`, from a member
/// that agreed ([`Group::repair`]), keeping the state it took as evidence.
/// Returns the position the state is at and who sent it.
async fn repair(
    group: &Arc<ReplicaGroup>,
    at: u64,
    agreeing: &[String],
    evidence: Option<&std::path::Path>,
) -> Result<(u64, String), String> {
    let (applied, from, body) = group.repair(at, agreeing).await?;
    if let Some(dir) = evidence {
        let file = format!("majority-at-{applied}.state");
        let (object, dir) = (group.name().to_string(), dir.to_path_buf());
        tokio::task::spawn_blocking(move || {
            crate::driver::keep_evidence(&object, &dir, &file, &body)
        });
    }
    Ok((applied, Peer::from(from).label()))
}

/// Where a node keeps durable groups, and how its groups are timed.
#[derive(Debug, Clone)]
pub struct VsyncSettings {
    /// Directory of the durable groups' logs (one redb file per object).
    pub data_dir: PathBuf,
    /// Timing, snapshots, exclusion.
    pub group: GroupConfig,
    /// Where diverged replicas keep their evidence (`None`: nowhere).
    pub evidence: Option<PathBuf>,
}

/// How to join one vsync object.
#[derive(Debug, Clone)]
pub struct VsyncJoin {
    /// Members to ask, in order.
    pub seeds: Vec<Peer>,
    /// Start the group if none answers.
    pub found_if_alone: bool,
    /// Keep the log on disk (`durable` objects).
    pub durable: bool,
    /// The object's access policy (enforced by its leader on joiners).
    pub policy: AccessPolicy,
    /// This host's grant, for `grants:` policies.
    pub grant: Option<Signed<Grant>>,
    /// The logic joined with and where newer logic comes from (live upgrades).
    pub evolution: Evolution,
    /// Compare the replicas' states every this many log positions (0: never).
    pub check_every: u64,
}

type ReplicaGroup = Group<ReplicaApp, QuicLink>;

/// One host's vsync endpoint and groups.
pub struct VsyncNode {
    link: QuicLink,
    settings: VsyncSettings,
    groups: Mutex<HashMap<String, Arc<ReplicaGroup>>>,
}

impl VsyncNode {
    /// Start the endpoint on `listen`. Must run inside a tokio runtime.
    pub fn start(
        identity: &liveobjects_directory::keys::Identity,
        listen: std::net::SocketAddr,
        settings: VsyncSettings,
    ) -> Result<VsyncNode, crate::mesh::net::NetError> {
        Ok(VsyncNode {
            link: QuicLink::start(identity, listen)?,
            settings,
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// This host's vsync endpoint.
    pub fn me(&self) -> Peer {
        self.link.me().into()
    }

    /// The file holding `object`'s durable log.
    pub fn log_path(&self, object: &str) -> PathBuf {
        let safe: String = object
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.settings.data_dir.join(format!("{safe}.redb"))
    }

    /// Join `object`: a durable member that ran it before resumes from its disk
    /// (and asks to be re-admitted in the background, in case it was excluded
    /// while down); otherwise it asks the seeds, or founds the group.
    pub async fn join(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        how: VsyncJoin,
    ) -> Result<VsyncHandle, GroupError> {
        let budgets = runtime.executor().budgets().clone();
        self.join_with(runtime, logic, object, how, &budgets).await
    }

    /// [`join`](Self::join) under `budgets`.
    pub async fn join_with(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        how: VsyncJoin,
        budgets: &crate::executor::Budgets,
    ) -> Result<VsyncHandle, GroupError> {
        let refused = |reason: String| GroupError::Refused {
            object: object.to_string(),
            reason,
        };
        let store = if how.durable {
            LogStore::open(&self.log_path(object)).map_err(|e| refused(e.to_string()))?
        } else {
            LogStore::memory()
        };
        let resuming = store.has_state();
        let replica = runtime.instantiate(
            logic,
            ReplicaIdentity {
                object: object.to_string(),
                member: self.me().key.to_string(),
            },
        )?;
        let (quarantined_tx, mut quarantined_rx) = mpsc::unbounded_channel::<String>();
        let replica = runtime.executor().spawn(replica, budgets, move |reason| {
            let _ = quarantined_tx.send(reason);
        });
        let notices = crate::group::Notices::default();
        let (cascade_tx, mut cascade_rx) = mpsc::channel(CASCADE_QUEUE);
        let published = Arc::new(Mutex::new(PublishedLogic::default()));
        let (digest_tx, mut digest_rx) = mpsc::unbounded_channel();
        let (repair_tx, mut repair_rx) = mpsc::unbounded_channel::<(u64, Vec<String>)>();
        let evidence = self.settings.evidence.as_ref().map(|dir| {
            dir.join(crate::runtime::recorder::replica_folder(
                object,
                &self.me().key.to_string(),
            ))
        });
        let app = ReplicaApp {
            object: object.to_string(),
            replica: replica.clone(),
            notices: notices.clone(),
            cascades: cascade_tx,
            evolution: how.evolution.clone(),
            logic: published.clone(),
            adopted: None,
            checks: ReplicaChecks {
                every: how.check_every,
                own: Default::default(),
                digests: digest_tx,
                repairs: repair_tx,
                evidence: evidence.clone(),
            },
        };
        let group = Group::start(
            object,
            self.link.me(),
            app,
            store,
            self.link.clone(),
            self.settings.group.clone(),
            how.policy.clone(),
        )
        .await
        .map_err(refused)?;
        let served = group.clone();
        let handler: Handler = Arc::new(move |from, rpc| {
            let group = served.clone();
            Box::pin(async move { group.handle(from, rpc).await })
        });
        self.link.serve(object, handler);
        let seeds: Vec<_> = how
            .seeds
            .iter()
            .filter(|s| s.key != self.me().key)
            .map(|s| (*s).into())
            .collect();
        // A would-be founder gives each seed a moment only; a joiner waits for a
        // busy group (an election, a leader catching up).
        let patience = if how.found_if_alone && !resuming {
            Duration::from_secs(1)
        } else {
            self.settings.group.request_timeout
        };
        let joined = if resuming {
            let group = group.clone();
            tokio::spawn(async move {
                for seed in seeds.iter().cycle().take(seeds.len() * 100) {
                    if group.join(*seed, how.grant.clone(), patience).await.is_ok() {
                        return;
                    }
                }
            });
            Ok(())
        } else {
            let mut outcome = Err(format!("no member answered (tried {})", seeds.len()));
            let mut answered = false;
            for seed in &seeds {
                match group.join(*seed, how.grant.clone(), patience).await {
                    Ok(()) => {
                        outcome = Ok(());
                        break;
                    }
                    Err(GroupFailure::Failed(reason)) => {
                        answered = true;
                        outcome = Err(reason);
                        break;
                    }
                    Err(e) => outcome = Err(e.to_string()),
                }
            }
            if outcome.is_err() && how.found_if_alone {
                outcome = group.found().await.map_err(|e| e.to_string());
                // The logic the group starts with, first in its log (see
                // `machine`): members that catch up from the log run its first
                // events with it, whatever record they resolved.
                // If it cannot now, its leader's upkeep writes it later (see
                // `UpgradePolls`).
                if outcome.is_ok() && !how.evolution.record.is_empty() {
                    let first = LogicChange {
                        version: how.evolution.version,
                        record: how.evolution.record.clone(),
                    };
                    match group.propose_logic(first).await {
                        Ok((_, Applied::Switched)) => {}
                        Ok((_, other)) => {
                            tracing::warn!("{object}: its logic was not recorded: {other:?}")
                        }
                        Err(e) => tracing::warn!("{object}: its logic was not recorded yet: {e}"),
                    }
                }
            }
            if outcome.is_err() && !answered && !how.found_if_alone {
                self.link.unserve(object);
                group.stop().await;
                return Err(GroupError::NoMembers {
                    object: object.to_string(),
                    tried: seeds.len(),
                });
            }
            outcome
        };
        if let Err(reason) = joined {
            self.link.unserve(object);
            group.stop().await;
            return Err(refused(reason));
        }
        // The replica's cascades, and the group's upkeep (exclusion, stuck elections).
        let cascading = group.clone();
        let holder = replica.clone();
        tokio::spawn(async move {
            while let Some(payload) = cascade_rx.recv().await {
                let bytes = payload.len();
                if let Err(e) = cascading
                    .submit(crate::local::system_time_ms(), payload)
                    .await
                {
                    tracing::debug!("vsync: a cascaded event was not committed: {e}");
                }
                holder.release(bytes);
            }
        });
        // This replica's digests at checked positions, ordered through the group.
        let reporting = Arc::downgrade(&group);
        tokio::spawn(async move {
            while let Some((at, sha256)) = digest_rx.recv().await {
                let Some(group) = reporting.upgrade() else {
                    return;
                };
                if let Err(e) = group.submit_digest(at, sha256).await {
                    tracing::debug!("vsync: the digest at position {at} was not ordered: {e}");
                }
            }
        });
        // A diverged replica takes the state of a member that agreed.
        let repairing = Arc::downgrade(&group);
        let (repair_notices, repaired_object) = (published.clone(), object.to_string());
        let repair_replica = replica.clone();
        tokio::spawn(async move {
            while let Some((at, agreeing)) = repair_rx.recv().await {
                let Some(group) = repairing.upgrade() else {
                    return;
                };
                let outcome = repair(&group, at, &agreeing, evidence.as_deref()).await;
                let mut published = repair_notices.lock().expect("logic");
                let before = published.divergence.take().unwrap_or_default();
                match outcome {
                    Ok((position, from)) => {
                        let line = format!("{before}; repaired at position {position} from {from}");
                        tracing::warn!("{repaired_object}: {line}");
                        published.divergence = Some(line);
                    }
                    Err(e) => {
                        let reason = format!(
                            "{before}; could not be repaired ({e}): stopped here rather than \
                             run on a state its group does not hold"
                        );
                        published.divergence = Some(reason.clone());
                        drop(published);
                        repair_replica.quarantine(&reason);
                    }
                }
            }
        });
        // A quarantined replica stops its group on this node: peers see a crash.
        let stopping = Arc::downgrade(&group);
        let quarantine_notices = notices.clone();
        let quarantined_object = object.to_string();
        tokio::spawn(async move {
            if let Some(reason) = quarantined_rx.recv().await {
                let _ = quarantine_notices.send(GroupNotice::Quarantined(reason.clone()));
                tracing::warn!(
                    object = %quarantined_object,
                    "quarantined ({reason}): stopping its group on this node"
                );
                // A few heartbeats first: members learn what this one committed
                // last (a check with no majority stops every replica alike only
                // once each has applied it).
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(group) = stopping.upgrade() {
                    group.stop().await;
                }
            }
        });
        let activity = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let watching = Arc::downgrade(&group);
        let mut polls = UpgradePolls::new(object, how.evolution, published.clone(), &activity);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(group) = watching.upgrade() else {
                    return;
                };
                if group.is_stopped() {
                    return;
                }
                group.tick().await;
                polls.tick(&group);
            }
        });
        self.groups
            .lock()
            .expect("groups")
            .insert(object.to_string(), group.clone());
        Ok(VsyncHandle {
            object: object.to_string(),
            group,
            notices,
            replica,
            logic: published,
            activity,
        })
    }

    /// Stop every group without leaving and close the endpoint (what peers see
    /// of a crash).
    pub async fn shutdown(&self) {
        let groups: Vec<_> = self.groups.lock().expect("groups").drain().collect();
        for (object, group) in groups {
            self.link.unserve(&object);
            group.stop().await;
        }
        self.link.close();
    }

    /// Leave `object`: the group removes this member, then its instance stops.
    pub async fn leave(&self, object: &str) {
        let group = self.groups.lock().expect("groups").remove(object);
        if let Some(group) = group {
            group.leave().await;
            self.link.unserve(object);
        }
    }
}

/// A group's looks for a newer record of its object, at its leader: every
/// `poll_every`, and only after activity (calls here, or entries applied), so
/// idle objects stay asleep. What it finds is ordered as a logic entry. A
/// leader of a group whose log names no logic yet and has no events (its
/// founder could not write the first logic entry: it crashed, or lost the lead)
/// writes its own.
struct UpgradePolls {
    object: String,
    evolution: Evolution,
    published: Arc<Mutex<PublishedLogic>>,
    activity: Arc<std::sync::atomic::AtomicU64>,
    /// Activity and applied position at the last look.
    seen: (u64, u64),
    next: Instant,
    /// A look or a proposal is under way.
    busy: Arc<std::sync::atomic::AtomicBool>,
    /// The highest version proposed here.
    proposed: Arc<std::sync::atomic::AtomicU64>,
}

impl UpgradePolls {
    fn new(
        object: &str,
        evolution: Evolution,
        published: Arc<Mutex<PublishedLogic>>,
        activity: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        UpgradePolls {
            object: object.to_string(),
            next: Instant::now() + evolution.poll_every,
            evolution,
            published,
            activity: activity.clone(),
            seen: (0, 0),
            busy: Arc::default(),
            proposed: Arc::default(),
        }
    }

    fn tick(&mut self, group: &Arc<ReplicaGroup>) {
        use std::sync::atomic::Ordering::Relaxed;
        if !group.is_leader() || self.busy.load(Relaxed) {
            return;
        }
        // What is in force or was tried: skip this round if the machine is busy
        // applying (its lock is held across the object's work).
        let Ok(state) = group.machine().state().try_lock() else {
            return;
        };
        let applied = state.applied().map_or(0, |l| l.index);
        let in_force = state.logic().map(LogicInForce::newest);
        let first_missing = in_force.is_none() && !state.has_events();
        drop(state);
        if first_missing && !self.evolution.record.is_empty() {
            self.write_first(group);
            return;
        }
        let (Some(in_force), Some(source)) = (in_force, self.evolution.source.clone()) else {
            return;
        };
        if self.evolution.poll_every.is_zero() || Instant::now() < self.next {
            return;
        }
        let seen = (self.activity.load(Relaxed), applied);
        if seen == self.seen {
            return;
        }
        self.seen = seen;
        self.next = Instant::now() + self.evolution.poll_every;
        self.busy.store(true, Relaxed);
        let than = in_force.max(self.proposed.load(Relaxed));
        let (object, group, published) =
            (self.object.clone(), group.clone(), self.published.clone());
        let (busy, proposed) = (self.busy.clone(), self.proposed.clone());
        tokio::spawn(async move {
            match source.newer(&object, than).await {
                Ok(Some(candidate)) if candidate.version > than => {
                    tracing::info!(
                        "{object}: ordering the upgrade to version {} of its record",
                        candidate.version
                    );
                    let change = LogicChange {
                        version: candidate.version,
                        record: candidate.record.clone(),
                    };
                    let version = candidate.version;
                    published.lock().expect("logic").candidate = Some(candidate);
                    // Not ordered (say, the lead changed hands): the next look
                    // tries again; a second copy would be refused as not newer.
                    match group.propose_logic(change).await {
                        Ok((at, Applied::Refused(reason))) => {
                            proposed.fetch_max(version, Relaxed);
                            tracing::warn!(
                                "{object}: the upgrade ordered at position {at} was aborted: \
                                 {reason}"
                            )
                        }
                        Ok(_) => {
                            proposed.fetch_max(version, Relaxed);
                        }
                        Err(e) => tracing::warn!("{object}: cannot order its upgrade: {e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("{object}: cannot look for a newer version of its logic: {e}")
                }
            }
            busy.store(false, Relaxed);
        });
    }

    /// Write the group's first logic entry: this leader's own record.
    fn write_first(&mut self, group: &Arc<ReplicaGroup>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.busy.store(true, Relaxed);
        let first = LogicChange {
            version: self.evolution.version,
            record: self.evolution.record.clone(),
        };
        let (object, group, busy) = (self.object.clone(), group.clone(), self.busy.clone());
        tokio::spawn(async move {
            match group.propose_logic(first).await {
                Ok((at, Applied::Switched)) => {
                    tracing::info!("{object}: its logic is recorded at position {at}")
                }
                Ok((_, other)) => tracing::warn!("{object}: its logic was not recorded: {other:?}"),
                Err(e) => tracing::warn!("{object}: its logic was not recorded yet: {e}"),
            }
            busy.store(false, Relaxed);
        });
    }
}

/// A local handle on one vsync object.
#[derive(Clone)]
pub struct VsyncHandle {
    object: String,
    group: Arc<ReplicaGroup>,
    notices: crate::group::Notices,
    replica: ObjectRef,
    logic: Arc<Mutex<PublishedLogic>>,
    /// Calls made here (a leader looks for newer logic only after activity).
    activity: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for VsyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsyncHandle")
            .field("object", &self.object)
            .finish()
    }
}

impl VsyncHandle {
    /// The replica on the executor.
    pub fn replica(&self) -> &ObjectRef {
        &self.replica
    }

    fn failed(&self, e: GroupFailure) -> GroupError {
        let object = self.object.clone();
        match e {
            GroupFailure::Refused(reason) => GroupError::Aborted { object, reason },
            other => GroupError::Unavailable {
                object,
                reason: other.to_string(),
            },
        }
    }

    async fn run(
        &self,
        method: &str,
        args: &[&str],
    ) -> Result<crate::runtime::CallOutcome, GroupError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let method = method.to_string();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let bytes = method.len() + args.iter().map(String::len).sum::<usize>();
        self.replica
            .submit_waiting(
                bytes,
                Box::new(move |r| {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let _ = reply.send(r.and_then(|r| r.call_wave(&method, &args)));
                }),
            )
            .await;
        Ok(answer
            .await
            .map_err(|_| GroupError::Gone(self.object.clone()))??)
    }

    /// Call a method (WAVE arguments): an update commits (or aborts) everywhere
    /// before this returns; a query reads linearizably.
    pub async fn call(&self, method: &str, args: &[&str]) -> Result<Vec<String>, GroupError> {
        self.activity
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = self.run(method, args).await?;
        if outcome.multicasts.is_empty() {
            self.group.barrier().await.map_err(|e| self.failed(e))?;
            return Ok(self.run(method, args).await?.results_wave());
        }
        let results = outcome.results_wave();
        self.group
            .submit_all(crate::local::system_time_ms(), outcome.multicasts)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(results)
    }

    /// Membership and progress.
    pub async fn status(&self) -> Result<GroupStatus, GroupError> {
        let members = self.group.members().into_iter().map(Peer::from).collect();
        let state = self.group.machine().state();
        let delivered = state
            .lock()
            .expect("replica")
            .applied()
            .map_or(0, |l| l.index);
        Ok(GroupStatus {
            members,
            delivered,
            member: self.group.is_voter(),
            sequencer: self.group.is_leader(),
            events_applied: self.replica.metrics().events_applied,
            refused: None,
            ..self.published_status()
        })
    }

    /// What the group published of its logic and checks, as status fields.
    fn published_status(&self) -> GroupStatus {
        let published = self.logic.lock().expect("logic");
        let mut status = GroupStatus {
            check: published.check.clone(),
            divergence: published.divergence.clone(),
            ..GroupStatus::default()
        };
        if let Some(in_force) = &published.in_force {
            status.show_logic(in_force);
        }
        status
    }

    /// The methods of the logic it runs now, if a live upgrade (or a state of
    /// another version) changed it since it was joined.
    pub fn interface(&self) -> Option<Arc<crate::runtime::ObjectInterface>> {
        self.logic.lock().expect("logic").interface.clone()
    }

    /// The replica's snapshot (of what it has applied so far).
    pub async fn snapshot(&self) -> Result<Vec<u8>, GroupError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.replica
            .submit_waiting(
                0,
                Box::new(move |r| {
                    let _ = reply.send(r.and_then(|r| r.snapshot()));
                }),
            )
            .await;
        Ok(answer
            .await
            .map_err(|_| GroupError::Gone(self.object.clone()))??)
    }

    /// The object's state for `lo status`, from what the group and the executor
    /// published (no waiting on the object).
    pub fn report_now(&self) -> crate::driver::ObjectReport {
        let status = GroupStatus {
            members: self.group.members().into_iter().map(Peer::from).collect(),
            delivered: 0,
            member: self.group.is_voter(),
            sequencer: self.group.is_leader(),
            events_applied: 0,
            refused: None,
            ..self.published_status()
        };
        crate::driver::ObjectReport::from_status(&status, &self.replica.metrics())
    }

    /// Notifications and membership changes.
    pub fn subscribe(&self) -> broadcast::Receiver<GroupNotice> {
        self.notices.subscribe()
    }

    /// The group (for tests and benchmarks).
    pub fn group(&self) -> &Arc<ReplicaGroup> {
        &self.group
    }
}
