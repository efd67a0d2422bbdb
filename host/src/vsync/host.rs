//! vsync in the host: a [`VsyncNode`] runs one endpoint ([`QuicLink`]) and the
//! groups of the objects it joined, each over a sandboxed replica
//! ([`ReplicaApp`]); a [`VsyncHandle`] serves local calls.
//!
//! A call runs the method on the local replica (which never changes state by
//! itself). If it multicast, each payload is submitted as one command: ordered
//! through the group, committed at every replica or none, and applied here before
//! the call returns, so the caller learns commit or abort (the object's refusal).
//! If it multicast nothing it was a query: the replica first passes a
//! linearizable read barrier, then the method runs again and its answer is
//! returned (reads see every write that finished before they started).

use super::group::{Group, GroupConfig, GroupFailure};
use super::machine::{Application, GroupView};
use super::net::{Handler, QuicLink};
use super::store::LogStore;
use super::types::Command;
use crate::group::{GroupError, GroupNotice, GroupStatus};
use crate::mesh::net::Peer;
use crate::runtime::{Event, Logic, Replica, ReplicaIdentity, Runtime, View};
use liveobjects_directory::record::{AccessPolicy, Grant, Signed};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Commands a replica's own cascades (events multicast while applying an event)
/// may queue before more are dropped.
const CASCADE_QUEUE: usize = 1024;

/// A sandboxed replica as a group's [`Application`].
pub struct ReplicaApp {
    replica: Replica,
    notices: broadcast::Sender<GroupNotice>,
    cascades: mpsc::Sender<Vec<u8>>,
}

impl Application for ReplicaApp {
    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String> {
        self.replica.init(snapshot).map_err(|e| e.to_string())
    }

    fn apply(&mut self, _index: u64, command: &Command) -> Result<(), String> {
        let event = Event {
            sender: command.sender.clone(),
            seq: command.seq,
            timestamp_ms: command.timestamp_ms,
            payload: command.payload.clone(),
        };
        // A trap is rolled back and refused alike at every replica (the sandbox
        // and its limits are deterministic): an abort, like a refusal.
        let delivery = self.replica.deliver(&event).map_err(|e| e.to_string())?;
        for n in delivery.notifications {
            let _ = self.notices.send(GroupNotice::Notification {
                topic: n.topic,
                detail: n.detail,
            });
        }
        for payload in delivery.multicasts {
            if self.cascades.try_send(payload).is_err() {
                tracing::warn!("vsync: cascade queue full; dropping an event the object multicast");
            }
        }
        match delivery.rejected {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn view(&mut self, view: &GroupView) {
        let peers: Vec<Peer> = view.members.iter().map(|m| Peer::from(*m)).collect();
        let _ = self.notices.send(GroupNotice::View(peers));
        let guest = View {
            id: view.id,
            members: view.members.iter().map(|m| m.key.to_string()).collect(),
        };
        if let Err(e) = self.replica.view_changed(&guest) {
            tracing::warn!("vsync: view change refused: {e}");
        }
    }

    fn snapshot(&mut self) -> Vec<u8> {
        match self.replica.snapshot() {
            Ok(s) => s,
            Err(e) => {
                // A replica that cannot snapshot cannot serve a joiner; openraft
                // keeps the log instead (nothing is purged past a failed snapshot).
                tracing::error!("vsync: snapshot failed: {e}");
                Vec::new()
            }
        }
    }
}

/// Where a node keeps durable groups, and how its groups are timed.
#[derive(Debug, Clone)]
pub struct VsyncSettings {
    /// Directory of the durable groups' logs (one redb file per object).
    pub data_dir: PathBuf,
    /// Timing, snapshots, exclusion.
    pub group: GroupConfig,
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
        let (notices, _) = broadcast::channel(1024);
        let (cascade_tx, mut cascade_rx) = mpsc::channel(CASCADE_QUEUE);
        let app = ReplicaApp {
            replica,
            notices: notices.clone(),
            cascades: cascade_tx,
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
        tokio::spawn(async move {
            while let Some(payload) = cascade_rx.recv().await {
                if let Err(e) = cascading
                    .submit(crate::local::system_time_ms(), payload)
                    .await
                {
                    tracing::debug!("vsync: a cascaded event was not committed: {e}");
                }
            }
        });
        let watching = Arc::downgrade(&group);
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
            last_report: Arc::default(),
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

/// A local handle on one vsync object.
#[derive(Clone)]
pub struct VsyncHandle {
    object: String,
    group: Arc<ReplicaGroup>,
    notices: broadcast::Sender<GroupNotice>,
    /// The last report taken while the replica was free (see [`Self::report_now`]).
    last_report: Arc<Mutex<Option<crate::driver::ObjectReport>>>,
}

impl std::fmt::Debug for VsyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsyncHandle")
            .field("object", &self.object)
            .finish()
    }
}

impl VsyncHandle {
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

    fn run(&self, method: &str, args: &[&str]) -> Result<crate::runtime::CallOutcome, GroupError> {
        let state = self.group.machine().state();
        let mut state = state.lock().expect("replica");
        Ok(state.app.replica.call_wave(method, args)?)
    }

    /// Call a method (WAVE arguments): an update commits (or aborts) everywhere
    /// before this returns; a query reads linearizably.
    pub async fn call(&self, method: &str, args: &[&str]) -> Result<Vec<String>, GroupError> {
        let outcome = self.run(method, args)?;
        if outcome.multicasts.is_empty() {
            self.group.barrier().await.map_err(|e| self.failed(e))?;
            return Ok(self.run(method, args)?.results_wave());
        }
        let results = outcome.results_wave();
        for payload in outcome.multicasts {
            self.group
                .submit(crate::local::system_time_ms(), payload)
                .await
                .map_err(|e| self.failed(e))?;
        }
        Ok(results)
    }

    /// Membership and progress.
    pub async fn status(&self) -> Result<GroupStatus, GroupError> {
        let members = self.group.members().into_iter().map(Peer::from).collect();
        let state = self.group.machine().state();
        let state = state.lock().expect("replica");
        Ok(GroupStatus {
            members,
            delivered: state.applied().map_or(0, |l| l.index),
            member: self.group.is_voter(),
            sequencer: self.group.is_leader(),
            events_applied: state.app.replica.stats().events_applied,
        })
    }

    /// The object's state for `lo status`, without waiting: if the replica is busy
    /// applying (its lock is held by openraft's apply), the last report taken is
    /// returned with the membership refreshed. The digest is recomputed only when
    /// the replica applied events since the last one.
    pub fn report_now(&self) -> crate::driver::ObjectReport {
        let members: Vec<Peer> = self.group.members().into_iter().map(Peer::from).collect();
        let mut cached = self.last_report.lock().expect("report").clone();
        let state = self.group.machine().state();
        if let Ok(mut state) = state.try_lock() {
            let applied = state.app.replica.stats().events_applied;
            let stale = cached
                .as_ref()
                .is_none_or(|r| r.events_applied != applied || r.state_digest.starts_with('('));
            if stale {
                let (state_bytes, state_digest) = match state.app.replica.snapshot() {
                    Ok(s) => (
                        s.len() as u64,
                        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&s)),
                    ),
                    Err(e) => (0, format!("({e})")),
                };
                cached = Some(crate::driver::ObjectReport {
                    members: Vec::new(),
                    sequencer: false,
                    member: false,
                    events_applied: applied,
                    state_bytes,
                    state_digest,
                    quarantined: state.app.replica.out_of_service().map(str::to_string),
                    queued: None,
                });
            }
        }
        let mut report = cached.unwrap_or(crate::driver::ObjectReport {
            members: Vec::new(),
            sequencer: false,
            member: false,
            events_applied: 0,
            state_bytes: 0,
            state_digest: "(busy applying)".to_string(),
            quarantined: None,
            queued: None,
        });
        report.members = members
            .iter()
            .map(|p| format!("{}@{}", p.key.short(), p.addr))
            .collect();
        report.member = self.group.is_voter();
        report.sequencer = self.group.is_leader();
        *self.last_report.lock().expect("report") = Some(report.clone());
        report
    }

    /// The replica's snapshot (of what it has applied so far).
    pub async fn snapshot(&self) -> Result<Vec<u8>, GroupError> {
        let state = self.group.machine().state();
        let mut state = state.lock().expect("replica");
        Ok(state.app.replica.snapshot()?)
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
