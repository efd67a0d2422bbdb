//! A host on the mesh ([`MeshNode`]) and the objects it takes part in
//! ([`GroupHandle`]). Each object's protocol core runs in a task of its own, fed by
//! the transport, timers and local calls; its sandboxed replica runs on the node's
//! object executor ([`crate::executor`]), never in that task. The task hands the
//! replica deliveries, views, calls and snapshot requests in the order the core
//! produced them (the executor's mailbox is FIFO, so a snapshot reflects exactly
//! the cut the core asked for) and acts on the results as they come back.
//!
//! Heartbeats are the host's, not the groups' ([`PeerHeartbeats`]): one task sends
//! one heartbeat per period to each peer with the progress of the groups that
//! changed, hands received progress to the groups it concerns, and tells the groups
//! of a silent peer to suspect it. A group task therefore sleeps while its object
//! is idle, whatever the number of members. A frame for an object this host does
//! not have is answered with [`Message::Left`], so a peer that missed a leave (or
//! talks to a restarted host) excludes this host at once.
//!
//! Back-pressure: the mesh has no flow control between members yet (a total-order
//! sequencer cannot slow for one member), so work the object's mailbox refuses
//! waits in the task's backlog, counted against the object's memory cap with its
//! sandbox and mailbox ([`ObjectRef::hold`]). Past the cap the object is
//! quarantined on this node instead of anything being dropped: the replica leaves
//! the group and every caller sees why.

use super::core::peers::{PeerHeartbeats, PeerOutput};
use super::core::{
    CheckResult, Config, Event as CoreEvent, Liveness, MeshCore, Message, Output, Progress,
    Upgrade, Verdict, View as CoreView,
};
use super::net::{Body, Frame, Inbound, NetError, Peer, Transport};
use crate::driver::{Evolution, LogicError, LogicInForce, LogicVersion};
use crate::executor::{Budgets, Full, Job, ObjectRef};
use crate::group::{
    Admission, DeliveryRuns, GroupError, GroupNotice, GroupStatus, WaitingCalls, apply_run,
};
use crate::runtime::{Event, Logic, Replica, ReplicaError, ReplicaIdentity, Runtime, View};
use liveobjects_directory::keys::Identity;
use liveobjects_directory::record::{Grant, Signed};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

/// Frames and commands queued per group before new frames are dropped.
const GROUP_QUEUE: usize = 8192;
/// Most inputs (and as many replica results) a group task takes in one turn before
/// it pumps its core, so a busy group still sends and delivers as it goes.
const INPUTS_PER_TURN: usize = 256;

enum Command {
    Call {
        method: String,
        args: Vec<String>,
        reply: oneshot::Sender<Result<Vec<String>, GroupError>>,
    },
    Snapshot(oneshot::Sender<Result<Vec<u8>, GroupError>>),
    Leave,
}

/// One group's message from a peer.
struct GroupFrame {
    from: Peer,
    message: Box<Message<Peer>>,
    grant: Option<Signed<Grant>>,
}

enum GroupInput {
    Frame(Box<GroupFrame>),
    /// A member's progress, from its host's heartbeat.
    Progress(Box<(Peer, Progress)>),
    /// The host has not heard from this member for the suspect timeout.
    Suspect(Peer),
    Command(Command),
}

/// The groups' task inputs by object name.
type Routes = Arc<Mutex<HashMap<String, mpsc::Sender<GroupInput>>>>;

/// The host's per-peer heartbeats, shared by its router, its heartbeat task and
/// its groups' tasks (each holds the lock for a few map operations).
type SharedHeartbeats = Arc<Mutex<PeerHeartbeats<Peer, String>>>;

/// Milliseconds since `started`: the clock of the host's cores.
fn millis_since(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// One host's presence on the mesh: its transport and the groups it takes part in.
pub struct MeshNode {
    transport: Arc<Transport>,
    groups: Routes,
    started: Instant,
    config: Config,
    heartbeats: SharedHeartbeats,
    /// Wakes the heartbeat task when a group gains peers.
    heartbeat_wake: Arc<Notify>,
    /// Stops the heartbeat task (also when dropped).
    stop: watch::Sender<bool>,
    /// Where a diverged replica's evidence (its own state and the majority's)
    /// is kept, if anywhere.
    evidence: Option<std::path::PathBuf>,
}

impl MeshNode {
    /// Listen on `listen` (QUIC) as `identity`. Must run inside a tokio runtime.
    /// `config.liveness` says who heartbeats: [`Liveness::PerPeer`] (what `lo node`
    /// runs) has this host send one heartbeat per peer for all its groups;
    /// [`Liveness::PerGroup`] has every group heartbeat its members itself (what
    /// the idle benchmark compares against).
    pub fn start(
        identity: &Identity,
        listen: SocketAddr,
        config: Config,
    ) -> Result<Self, NetError> {
        let started = Instant::now();
        let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>(GROUP_QUEUE);
        let transport = Transport::start(identity, listen, inbound_tx)?;
        let groups: Routes = Arc::default();
        let heartbeats: SharedHeartbeats = Arc::new(Mutex::new(PeerHeartbeats::new(
            transport.me(),
            &config,
            millis_since(started),
        )));
        let heartbeat_wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(route_inbound(
            inbound_rx,
            groups.clone(),
            heartbeats.clone(),
            transport.clone(),
            started,
        ));
        tokio::spawn(send_heartbeats(
            heartbeats.clone(),
            groups.clone(),
            transport.clone(),
            heartbeat_wake.clone(),
            stopped,
            started,
        ));
        Ok(MeshNode {
            transport,
            groups,
            started,
            config,
            heartbeats,
            heartbeat_wake,
            stop,
            evidence: None,
        })
    }

    /// Keep the evidence of each divergence under `dir` (`lo node` uses its data
    /// directory's `divergence/`).
    pub fn keep_evidence_in(&mut self, dir: std::path::PathBuf) {
        self.evidence = Some(dir);
    }

    /// This host as a mesh peer (key and address).
    pub fn me(&self) -> Peer {
        self.transport.me()
    }

    /// Start a new group for `object`, with this host as its first member, under
    /// the node's default budgets.
    pub fn found(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        admission: Admission,
    ) -> Result<GroupHandle, GroupError> {
        let budgets = runtime.executor().budgets().clone();
        self.found_with(
            runtime,
            logic,
            object,
            admission,
            &budgets,
            None,
            &Evolution::default(),
        )
    }

    /// [`found`](Self::found) under `budgets`, comparing the replicas' states
    /// every `check_every` positions of the order (`None`: the node's setting),
    /// with `logic` being `evolution`'s version and newer logic from its source.
    #[allow(clippy::too_many_arguments)]
    pub fn found_with(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        admission: Admission,
        budgets: &Budgets,
        check_every: Option<u64>,
        evolution: &Evolution,
    ) -> Result<GroupHandle, GroupError> {
        let mut replica = self.replica(runtime, logic, object)?;
        replica.init(None)?;
        let core = MeshCore::found(self.me(), self.config_for(check_every), self.now());
        Ok(self.spawn(
            runtime, object, core, replica, admission, budgets, evolution,
        ))
    }

    /// Join the group of `object` through `contact` (any member), under the node's
    /// default budgets.
    pub fn join(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        contact: Peer,
        admission: Admission,
    ) -> Result<GroupHandle, GroupError> {
        let budgets = runtime.executor().budgets().clone();
        self.join_with(
            runtime,
            logic,
            object,
            contact,
            admission,
            &budgets,
            None,
            &Evolution::default(),
        )
    }

    /// [`join`](Self::join) under `budgets`, with `check_every` and `evolution`
    /// (see [`found_with`](Self::found_with)). The replica runs the logic in
    /// force at its cut, which is `logic` unless the group has switched since.
    #[allow(clippy::too_many_arguments)]
    pub fn join_with(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        contact: Peer,
        admission: Admission,
        budgets: &Budgets,
        check_every: Option<u64>,
        evolution: &Evolution,
    ) -> Result<GroupHandle, GroupError> {
        let replica = self.replica(runtime, logic, object)?;
        let core = MeshCore::join(self.me(), contact, self.config_for(check_every), self.now());
        Ok(self.spawn(
            runtime, object, core, replica, admission, budgets, evolution,
        ))
    }

    /// Stop taking part in `object` (its task ends; peers exclude this host).
    pub async fn leave(&self, object: &str) {
        let route = self.groups.lock().expect("routes").remove(object);
        if let Some(tx) = route {
            let _ = tx.send(GroupInput::Command(Command::Leave)).await;
        }
    }

    /// How many frames this host has sent to its peers, all groups and heartbeats
    /// together.
    pub fn frames_sent(&self) -> u64 {
        self.transport.frames_sent()
    }

    /// Stop all groups and close connections.
    pub fn shutdown(&self) {
        self.groups.lock().expect("routes").clear();
        let _ = self.stop.send(true);
        self.transport.close();
    }

    fn now(&self) -> u64 {
        millis_since(self.started)
    }

    fn config_for(&self, check_every: Option<u64>) -> Config {
        Config {
            check_every: check_every.unwrap_or(self.config.check_every),
            ..self.config.clone()
        }
    }

    fn replica(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
    ) -> Result<Replica, GroupError> {
        Ok(runtime.instantiate(
            logic,
            ReplicaIdentity {
                object: object.to_string(),
                member: self.me().key.to_string(),
            },
        )?)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        runtime: &Runtime,
        object: &str,
        core: MeshCore<Peer>,
        replica: Replica,
        admission: Admission,
        budgets: &Budgets,
        evolution: &Evolution,
    ) -> GroupHandle {
        let (tx, rx) = mpsc::channel(GROUP_QUEUE);
        let notices = crate::group::Notices::default();
        let (results_tx, results) = mpsc::unbounded_channel();
        let quarantined = results_tx.clone();
        let replica = runtime.executor().spawn(replica, budgets, move |reason| {
            let _ = quarantined.send(FromReplica::Quarantined(reason));
        });
        self.groups
            .lock()
            .expect("routes")
            .insert(object.to_string(), tx.clone());
        let status = Arc::new(Mutex::new(GroupStatus {
            members: core.view().members.clone(),
            delivered: core.delivered(),
            member: core.is_member(),
            sequencer: core.is_sequencer(),
            ..GroupStatus::default()
        }));
        let in_force = LogicInForce {
            version: evolution.version,
            record: evolution.record.clone(),
            ..LogicInForce::default()
        };
        let group = Group {
            object: object.to_string(),
            me: self.me(),
            core,
            replica: replica.clone(),
            results_tx,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            runs: DeliveryRuns::default(),
            transport: self.transport.clone(),
            notices: notices.clone(),
            started: self.started,
            waiting: WaitingCalls::default(),
            gone: false,
            admission,
            status: status.clone(),
            view_id: None,
            per_peer: self.config.liveness == Liveness::PerPeer,
            heartbeats: self.heartbeats.clone(),
            heartbeat_wake: self.heartbeat_wake.clone(),
            published_progress: None,
            routes: self.groups.clone(),
            route: tx.clone(),
            evidence: self.evidence.as_ref().map(|dir| {
                dir.join(crate::runtime::recorder::replica_folder(
                    object,
                    &self.me().key.to_string(),
                ))
            }),
            repairing: false,
            majority_state: None,
            in_force: Arc::new(Mutex::new(in_force)),
            evolution: evolution.clone(),
            next_poll: Instant::now() + evolution.poll_every,
            polling: false,
            active_since_poll: true,
            delivered_at_poll: 0,
            proposed: 0,
            candidate: None,
            held: false,
        };
        tokio::spawn(group.run(rx, results));
        GroupHandle {
            object: object.to_string(),
            tx,
            notices,
            replica,
            status,
        }
    }
}

/// A local handle on one group.
#[derive(Clone)]
pub struct GroupHandle {
    object: String,
    tx: mpsc::Sender<GroupInput>,
    notices: crate::group::Notices,
    replica: ObjectRef,
    status: Arc<Mutex<GroupStatus>>,
}

impl std::fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle")
            .field("object", &self.object)
            .finish()
    }
}

impl GroupHandle {
    /// Call a method (WAVE arguments). An update returns once its events are applied
    /// by this replica, so a following query sees them.
    pub async fn call(&self, method: &str, args: &[&str]) -> Result<Vec<String>, GroupError> {
        if let Some(reason) = self.replica.quarantined() {
            return Err(quarantined(&self.object, reason));
        }
        let (reply, answer) = oneshot::channel();
        self.command(Command::Call {
            method: method.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Membership and progress, as the group task last published them: answers at
    /// once, whatever the object is doing.
    pub async fn status(&self) -> Result<GroupStatus, GroupError> {
        Ok(self.status_now())
    }

    /// [`status`](Self::status) without a runtime.
    pub fn status_now(&self) -> GroupStatus {
        let mut status = self.status.lock().expect("status").clone();
        status.events_applied = self.replica.metrics().events_applied;
        status
    }

    /// The replica on the executor (its metrics: queue, CPU, digest, quarantine).
    pub fn replica(&self) -> &ObjectRef {
        &self.replica
    }

    /// The replica's snapshot (queued behind its pending work).
    pub async fn snapshot(&self) -> Result<Vec<u8>, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Snapshot(reply)).await?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Notifications and membership changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<GroupNotice> {
        self.notices.subscribe()
    }

    fn gone(&self) -> GroupError {
        GroupError::ended(&self.object, Some(&self.replica))
    }

    async fn command(&self, command: Command) -> Result<(), GroupError> {
        self.tx
            .send(GroupInput::Command(command))
            .await
            .map_err(|_| self.gone())
    }
}

fn quarantined(object: &str, reason: String) -> GroupError {
    GroupError::Replica(ReplicaError::Quarantined {
        object: object.to_string(),
        reason,
    })
}

/// What the replica's jobs send back to the group task.
enum FromReplica {
    /// A call ran: its results and multicasts (or why it failed).
    Called {
        outcome: Result<(Vec<String>, Vec<Vec<u8>>), GroupError>,
        reply: oneshot::Sender<Result<Vec<String>, GroupError>>,
    },
    /// An event was applied (or refused); `own` is its seq if this host sent it.
    Delivered {
        own: Option<u64>,
        /// Why the object rejected it (or its `deliver` failed), if it did.
        rejected: Option<String>,
        multicasts: Vec<Vec<u8>>,
        notifications: Vec<crate::runtime::Notification>,
    },
    /// A view change's multicasts.
    Reacted(Vec<Vec<u8>>),
    /// The snapshot for a joiner at `cut`.
    Snapshot(super::core::Cut<Peer>, Vec<u8>),
    /// The snapshot for a joiner at `cut` failed (or the object was stopped).
    SnapshotFailed(super::core::Cut<Peer>, String),
    /// The replica could not start from the state it was sent.
    InitFailed(String),
    /// The digest of the replica's state after position `at`, for a check.
    Digest(u64, [u8; 32]),
    /// The executor quarantined the object.
    Quarantined(String),
    /// A look for a newer record of the object (this member orders it).
    Candidate(Result<Option<LogicVersion>, LogicError>),
    /// The logic for a live upgrade ordered at `gseq`, or for a received state,
    /// verified and loaded (or why not).
    LogicReady(Pending, Result<LogicVersion, LogicError>),
    /// The logic in force changed, or an upgrade was aborted or refused.
    LogicChanged,
}

/// What waits for logic from the directory (the core's outputs wait behind it).
enum Pending {
    /// A live upgrade ordered at `gseq` to record version `version`.
    Upgrade { gseq: u64, version: u64 },
    /// A state transfer from a member that runs another version.
    Install(Transfer),
}

/// What a mesh state transfer carries: the state and the logic it belongs to.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Transfer {
    logic: LogicInForce,
    state: Vec<u8>,
}

struct Group {
    object: String,
    me: Peer,
    core: MeshCore<Peer>,
    replica: ObjectRef,
    results_tx: mpsc::UnboundedSender<FromReplica>,
    /// Work the replica's mailbox refused, in order (sent before anything newer).
    backlog: VecDeque<(usize, Job)>,
    backlog_bytes: usize,
    /// Events joining the queued delivery job (tagged with the own seq they
    /// complete, if any).
    runs: DeliveryRuns<Option<u64>>,
    transport: Arc<Transport>,
    notices: crate::group::Notices,
    started: Instant,
    /// Calls waiting for their multicasts (own seqs) to be delivered.
    waiting: WaitingCalls,
    gone: bool,
    admission: Admission,
    status: Arc<Mutex<GroupStatus>>,
    view_id: Option<u64>,
    /// Whether the host heartbeats for the group ([`Liveness::PerPeer`]).
    per_peer: bool,
    heartbeats: SharedHeartbeats,
    heartbeat_wake: Arc<Notify>,
    /// The progress last handed to the host's heartbeats.
    published_progress: Option<Progress>,
    routes: Routes,
    /// This task's own route (a rejoin of the same object has another).
    route: mpsc::Sender<GroupInput>,
    /// Where this replica's divergence evidence goes, if anywhere.
    evidence: Option<std::path::PathBuf>,
    /// Whether the replica is diverged and waits for the majority's state.
    repairing: bool,
    /// The majority's state a repair installs, kept for the evidence.
    majority_state: Option<Vec<u8>>,
    /// The logic in force, shared with the replica's jobs.
    in_force: Arc<Mutex<LogicInForce>>,
    /// Where newer logic comes from, and how often to look.
    evolution: Evolution,
    /// When this member (if it orders the group) looks for a newer record next.
    next_poll: Instant,
    /// Whether a look is under way.
    polling: bool,
    /// Whether anything came in since the last look (an idle object looks no
    /// more until something does).
    active_since_poll: bool,
    /// The delivered position when activity was last noted.
    delivered_at_poll: u64,
    /// The highest version this member proposed.
    proposed: u64,
    /// The logic this member loaded for its own proposal.
    candidate: Option<LogicVersion>,
    /// Whether the core's outputs wait for logic from the directory.
    held: bool,
}

impl Group {
    fn now(&self) -> u64 {
        millis_since(self.started)
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<GroupInput>,
        mut results: mpsc::UnboundedReceiver<FromReplica>,
    ) {
        let replica = self.replica.clone();
        self.status
            .lock()
            .expect("status")
            .show_logic(&self.in_force.lock().expect("in force"));
        loop {
            self.pump();
            self.publish_status();
            if self.gone {
                break;
            }
            self.maybe_poll();
            let mut deadline = self
                .core
                .poll_timeout()
                .map(|t| self.started + Duration::from_millis(t))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            // An idle object sets no timer of its own (a node holds many): it
            // looks for a newer record at most once after its last activity,
            // and again at its next one.
            if self.polls() && self.active_since_poll && !self.polling && !self.held {
                deadline = deadline.min(self.next_poll);
            }
            let credit = replica.credit().notified();
            tokio::pin!(credit);
            credit.as_mut().enable();
            self.flush_backlog();
            let backlogged = !self.backlog.is_empty();
            tokio::select! {
                input = rx.recv() => match input {
                    None => break,
                    Some(input) => self.input(input),
                },
                Some(result) = results.recv() => self.result(result),
                _ = &mut credit, if backlogged => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
            // Take what else is already waiting before the next pump: under load one
            // pump, one status update and one timer per burst instead of per message,
            // and the core's transmits of a burst leave together.
            for _ in 0..INPUTS_PER_TURN {
                if self.gone {
                    break;
                }
                let mut took = false;
                if let Ok(input) = rx.try_recv() {
                    self.input(input);
                    took = true;
                }
                if let Ok(result) = results.try_recv() {
                    self.result(result);
                    took = true;
                }
                if !took {
                    break;
                }
            }
        }
        // Tell the members, so they exclude this one now rather than after the
        // suspect timeout, and stop heartbeating for the group.
        self.core.leave();
        self.transmit();
        let now = self.now();
        self.heartbeats
            .lock()
            .expect("heartbeats")
            .remove_group(now, &self.object);
        {
            let mut routes = self.routes.lock().expect("routes");
            if routes
                .get(&self.object)
                .is_some_and(|tx| tx.same_channel(&self.route))
            {
                routes.remove(&self.object);
            }
        }
        let reason = self
            .replica
            .quarantined()
            .unwrap_or_else(|| "the object left this node".to_string());
        self.replica.retire(&reason);
        for (_, job) in self.backlog.drain(..) {
            job(Err(ReplicaError::Quarantined {
                object: self.object.clone(),
                reason: reason.clone(),
            }));
        }
        // Answer what the replica still sends back (its queued jobs were answered).
        results.close();
        while let Ok(result) = results.try_recv() {
            if let FromReplica::Called { reply, .. } = result {
                let _ = reply.send(Err(GroupError::ended(&self.object, Some(&self.replica))));
            }
        }
        let (object, replica) = (&self.object, &self.replica);
        self.waiting
            .fail_all(|| GroupError::ended(object, Some(replica)));
    }

    fn input(&mut self, input: GroupInput) {
        match input {
            GroupInput::Frame(frame) => {
                if self.admit(&frame) {
                    let now = self.now();
                    let GroupFrame { from, message, .. } = *frame;
                    self.core.handle_message(now, from, *message);
                }
            }
            GroupInput::Progress(input) => {
                let (from, progress) = *input;
                let now = self.now();
                self.core.handle_progress(now, from, progress);
            }
            GroupInput::Suspect(member) => {
                let now = self.now();
                self.core.handle_suspect(now, member);
            }
            GroupInput::Command(command) => {
                self.active_since_poll = true;
                self.command(command)
            }
        }
    }

    fn publish_status(&mut self) {
        let view = self.core.view();
        let new_view = self.view_id != Some(view.id);
        let progress = self.core.progress();
        if self.per_peer && (new_view || progress != self.published_progress) {
            let now = self.now();
            let mut heartbeats = self.heartbeats.lock().expect("heartbeats");
            if new_view {
                heartbeats.set_members(now, &self.object, &view.members);
            }
            heartbeats.set_progress(&self.object, progress);
            drop(heartbeats);
            self.published_progress = progress;
            if new_view {
                self.heartbeat_wake.notify_one();
            }
        }
        let mut status = self.status.lock().expect("status");
        if new_view {
            self.view_id = Some(view.id);
            status.members = view.members.clone();
        }
        status.delivered = self.core.delivered();
        status.member = self.core.is_member();
        status.sequencer = self.core.is_sequencer();
    }

    /// Hand `job` to the replica, behind anything already waiting (events that
    /// arrive later start a new run).
    fn enqueue(&mut self, bytes: usize, job: Job) {
        self.runs.close();
        if self.backlog.is_empty() {
            match self.replica.submit(bytes, job) {
                Ok(()) => return,
                Err(Full(job)) => self.backlog.push_back((bytes, job)),
            }
        } else {
            self.backlog.push_back((bytes, job));
        }
        self.backlog_bytes += bytes;
        self.hold_waiting(bytes);
    }

    /// Count `bytes` of events waiting outside the mailbox against the object's
    /// memory cap; past it the object is quarantined.
    fn hold_waiting(&mut self, bytes: usize) {
        let held = self.replica.hold(
            bytes,
            "events waiting to be applied, which it applies slower than its group sends them",
        );
        if let Err(reason) = held {
            let _ = self.notices.send(GroupNotice::Quarantined(reason));
            self.gone = true;
        }
    }

    fn flush_backlog(&mut self) {
        while let Some((bytes, job)) = self.backlog.pop_front() {
            match self.replica.submit(bytes, job) {
                Ok(()) => {
                    self.backlog_bytes -= bytes;
                    self.replica.release(bytes);
                }
                Err(Full(job)) => {
                    self.backlog.push_front((bytes, job));
                    return;
                }
            }
        }
    }

    /// Members enforce the object's policy on join requests: a refused joiner is
    /// never added to the view, so it receives no state and no events.
    fn admit(&self, frame: &GroupFrame) -> bool {
        if !matches!(*frame.message, Message::JoinRequest) {
            return true;
        }
        match Grant::check(
            &self.admission.policy,
            &self.object,
            frame.from.key,
            frame.grant.as_ref(),
            liveobjects_directory::server::unix_now(),
        ) {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!("{}: refusing join request: {reason}", self.object);
                false
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Leave => self.gone = true,
            Command::Call {
                method,
                args,
                reply,
            } => {
                if !self.core.is_member() {
                    let _ = reply.send(Err(GroupError::Joining(self.object.clone())));
                    return;
                }
                let bytes = method.len() + args.iter().map(String::len).sum::<usize>();
                let results = self.results_tx.clone();
                self.enqueue(
                    bytes,
                    Box::new(move |replica| {
                        let outcome = replica.and_then(|r| {
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            r.call_wave(&method, &args)
                        });
                        let outcome = outcome
                            .map(|o| (o.results_wave(), o.multicasts))
                            .map_err(GroupError::from);
                        let _ = results.send(FromReplica::Called { outcome, reply });
                    }),
                );
            }
            Command::Snapshot(reply) => {
                if !self.core.is_member() {
                    let _ = reply.send(Err(GroupError::Joining(self.object.clone())));
                    return;
                }
                self.enqueue(
                    0,
                    Box::new(move |replica| {
                        let _ = reply
                            .send(replica.and_then(|r| r.snapshot()).map_err(GroupError::from));
                    }),
                );
            }
        }
    }

    fn result(&mut self, result: FromReplica) {
        match result {
            FromReplica::Called { outcome, reply } => match outcome {
                Ok((results, multicasts)) => {
                    let mut seqs = None;
                    for payload in multicasts {
                        let seq = self.multicast(payload);
                        seqs = Some(seqs.map_or((seq, seq), |(first, _)| (first, seq)));
                    }
                    match seqs {
                        Some((first, last)) => self.waiting.push(first, last, results, reply),
                        None => {
                            let _ = reply.send(Ok(results));
                        }
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            FromReplica::Delivered {
                own,
                rejected,
                multicasts,
                notifications,
            } => {
                for n in notifications {
                    let _ = self.notices.send(GroupNotice::Notification {
                        topic: n.topic,
                        detail: n.detail,
                    });
                }
                for payload in multicasts {
                    self.multicast(payload);
                }
                if let Some(seq) = own {
                    self.waiting.applied(&self.object, seq, rejected);
                }
            }
            FromReplica::Reacted(multicasts) => {
                for payload in multicasts {
                    self.multicast(payload);
                }
            }
            FromReplica::Snapshot(cut, snapshot) => self.core.snapshot_taken(cut, snapshot),
            FromReplica::Digest(at, digest) => self.core.digest_taken(at, digest),
            FromReplica::SnapshotFailed(cut, reason) => self.core.snapshot_failed(cut, &reason),
            FromReplica::InitFailed(reason) => {
                tracing::error!(
                    "{}: cannot start from the received state: {reason}",
                    self.object
                );
                self.gone = true;
            }
            FromReplica::Quarantined(reason) => {
                let _ = self.notices.send(GroupNotice::Quarantined(reason));
                self.gone = true;
            }
            FromReplica::Candidate(found) => self.candidate_found(found),
            FromReplica::LogicReady(pending, result) => self.logic_ready(pending, result),
            FromReplica::LogicChanged => {
                let in_force = self.in_force.lock().expect("in force").clone();
                tracing::info!("{}: logic {}", self.object, in_force.line());
                let mut status = self.status.lock().expect("status");
                status.show_logic(&in_force);
                status.interface = in_force.interface;
            }
        }
    }

    /// Whether this member looks for newer records (it orders the group, and the
    /// node has a directory to look in).
    fn polls(&self) -> bool {
        self.evolution.source.is_some()
            && !self.evolution.poll_every.is_zero()
            && self.core.is_member()
            && self.core.is_sequencer()
    }

    /// Look for a newer record of the object if it is time (off this task).
    fn maybe_poll(&mut self) {
        // Activity is calls and deliveries, not the protocol's own heartbeats.
        if self.core.delivered() != self.delivered_at_poll {
            self.delivered_at_poll = self.core.delivered();
            self.active_since_poll = true;
        }
        // Not while an ordered upgrade or a state waits for its logic: what is in
        // force is about to change.
        if !self.polls() || self.polling || self.held || Instant::now() < self.next_poll {
            return;
        }
        let Some(source) = self.evolution.source.clone() else {
            return;
        };
        self.next_poll = Instant::now() + self.evolution.poll_every;
        self.active_since_poll = false;
        self.polling = true;
        let than = self.newest_known();
        let (object, results) = (self.object.clone(), self.results_tx.clone());
        tokio::spawn(async move {
            let found = source.newer(&object, than).await;
            let _ = results.send(FromReplica::Candidate(found));
        });
    }

    /// The highest version in force, tried or proposed here.
    fn newest_known(&self) -> u64 {
        let in_force = self.in_force.lock().expect("in force");
        in_force.newest().max(self.proposed)
    }

    /// A look for a newer record came back: order the upgrade if it still
    /// applies and this member still orders the group.
    fn candidate_found(&mut self, found: Result<Option<LogicVersion>, LogicError>) {
        self.polling = false;
        match found {
            Ok(Some(candidate)) if candidate.version > self.newest_known() && !self.held => {
                let now = self.now();
                if self
                    .core
                    .propose_upgrade(now, candidate.version, candidate.record.clone())
                {
                    tracing::info!(
                        "{}: ordering the upgrade to version {} of its record",
                        self.object,
                        candidate.version
                    );
                    self.proposed = candidate.version;
                    self.candidate = Some(candidate);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "{}: cannot look for a newer version of its logic: {e}",
                self.object
            ),
        }
    }

    /// An upgrade was ordered at `gseq`: get its logic (outputs after it wait),
    /// then switch in the replica's order.
    fn upgrade_ordered(&mut self, gseq: u64, upgrade: Upgrade) {
        // Whether it was tried already is the switch job's to say, in the
        // replica's order: what this task knows now may be behind jobs still
        // queued (a joiner's state transfer, another upgrade).
        let pending = Pending::Upgrade {
            gseq,
            version: upgrade.version,
        };
        match &self.candidate {
            Some(candidate) if candidate.record == upgrade.record => {
                let candidate = candidate.clone();
                self.logic_ready(pending, Ok(candidate));
            }
            _ => self.fetch_logic(pending, upgrade.record),
        }
    }

    /// Verify and load `record`'s logic off this task; the core's outputs wait
    /// until it comes back ([`FromReplica::LogicReady`]).
    fn fetch_logic(&mut self, pending: Pending, record: Vec<u8>) {
        let Some(source) = self.evolution.source.clone() else {
            // Other members may well verify it: stop here rather than fork.
            let result = Err(LogicError::Unavailable(
                "this host has no directory to verify the record with".to_string(),
            ));
            self.logic_ready(pending, result);
            return;
        };
        self.held = true;
        let (object, results) = (self.object.clone(), self.results_tx.clone());
        let usage = match pending {
            Pending::Upgrade { .. } => crate::driver::RecordUse::Upgrade,
            Pending::Install(_) => crate::driver::RecordUse::InForce,
        };
        tokio::spawn(async move {
            let result =
                crate::driver::verify_patiently(source.as_ref(), &object, &record, usage).await;
            let _ = results.send(FromReplica::LogicReady(pending, result));
        });
    }

    /// The logic for `pending` is at hand (or cannot be had): act on it in the
    /// replica's order, and let the core's outputs flow again.
    fn logic_ready(&mut self, pending: Pending, result: Result<LogicVersion, LogicError>) {
        self.held = false;
        match (pending, result) {
            (Pending::Upgrade { gseq, version }, Ok(logic))
                if logic.version == version && logic.driver == "mesh" =>
            {
                self.switch(gseq, logic)
            }
            (Pending::Upgrade { gseq, version }, Ok(logic)) if logic.version == version => self
                .refuse_upgrade(
                    gseq,
                    version,
                    format!(
                        "it moves the object to the {} driver, which a live upgrade cannot \
                         do: leave and join it again",
                        logic.driver
                    ),
                ),
            (Pending::Upgrade { gseq, version }, Ok(logic)) => self.refuse_upgrade(
                gseq,
                version,
                format!("its record is version {}, not {version}", logic.version),
            ),
            (Pending::Upgrade { gseq, version }, Err(LogicError::Refused(reason))) => {
                self.refuse_upgrade(gseq, version, reason)
            }
            (Pending::Install(transfer), Ok(logic)) => self.install(transfer, Some(logic.logic)),
            (Pending::Install(_), Err(LogicError::Refused(reason))) => {
                let _ = self.results_tx.send(FromReplica::InitFailed(format!(
                    "the state it was sent runs logic it refuses: {reason}"
                )));
            }
            (pending, Err(LogicError::Unavailable(reason))) => {
                let what = match pending {
                    Pending::Upgrade { gseq, version } => {
                        format!("version {version} of its logic, ordered at position {gseq}")
                    }
                    Pending::Install(transfer) => {
                        format!(
                            "version {} of its logic, which its state runs",
                            transfer.logic.version
                        )
                    }
                };
                let reason = format!(
                    "cannot get {what} from the directory for {}s: {reason}; stopped here \
                     rather than run other logic than its group",
                    crate::driver::LOGIC_PATIENCE.as_secs()
                );
                tracing::error!("{}: {reason}", self.object);
                self.replica.quarantine(&reason);
            }
        }
    }

    /// Switch the replica to `logic` at `gseq`, in its order: an upgrade tried
    /// once; the new logic's refusal keeps the old one everywhere alike.
    fn switch(&mut self, gseq: u64, logic: LogicVersion) {
        let (in_force, results) = (self.in_force.clone(), self.results_tx.clone());
        let handle = self.replica.clone();
        self.enqueue(
            logic.record.len(),
            Box::new(move |replica| {
                let Ok(replica) = replica else { return };
                let mut state = in_force.lock().expect("in force");
                if !state.begin_attempt(logic.version) {
                    return;
                }
                let from = state.version;
                match replica.upgrade(logic.logic.clone(), from, logic.version) {
                    Ok(_) => {
                        state.version = logic.version;
                        state.interface = Some(Arc::new(logic.logic.interface().clone()));
                        state.record = logic.record;
                        state.since = Some(gseq);
                        state.last = Some(format!(
                            "switched from version {from} to {} at position {gseq}",
                            logic.version
                        ));
                    }
                    Err(e) if crate::driver::upgrade_failed_here_only(&e) => {
                        drop(state);
                        handle.quarantine(&format!(
                            "the upgrade to version {} at position {gseq} could not run on \
                             this host ({e}); stopped here rather than run other logic than \
                             its group",
                            logic.version
                        ));
                        return;
                    }
                    Err(e) => {
                        state.last = Some(format!(
                            "the upgrade to version {} at position {gseq} was aborted on every \
                             replica: {e}",
                            logic.version
                        ));
                    }
                }
                drop(state);
                let _ = results.send(FromReplica::LogicChanged);
            }),
        );
    }

    /// Note, in the replica's order, that the upgrade at `gseq` was refused.
    fn refuse_upgrade(&mut self, gseq: u64, version: u64, reason: String) {
        tracing::warn!(
            "{}: the upgrade to version {version} at position {gseq} is refused: {reason}",
            self.object
        );
        let (in_force, results) = (self.in_force.clone(), self.results_tx.clone());
        self.enqueue(
            0,
            Box::new(move |_| {
                let mut state = in_force.lock().expect("in force");
                if !state.begin_attempt(version) {
                    return;
                }
                state.last = Some(format!(
                    "the upgrade to version {version} at position {gseq} was refused: {reason}"
                ));
                drop(state);
                let _ = results.send(FromReplica::LogicChanged);
            }),
        );
    }

    /// Start the replica from a received state, with `logic` if it runs another
    /// version than this replica.
    fn install(&mut self, transfer: Transfer, logic: Option<Arc<Logic>>) {
        let (in_force, results) = (self.in_force.clone(), self.results_tx.clone());
        let Transfer {
            logic: incoming,
            state,
        } = transfer;
        self.enqueue(
            state.len(),
            Box::new(move |replica| {
                let running = in_force.lock().expect("in force").version;
                let interface = logic
                    .as_ref()
                    .map(|logic| Arc::new(logic.interface().clone()));
                let started = replica.and_then(|r| {
                    match logic {
                        Some(logic) => r.replace_logic(logic),
                        // Decided before jobs still queued then (an upgrade)
                        // changed the logic: never start a state in logic of
                        // another version.
                        None if running != incoming.version => {
                            return Err(ReplicaError::InitRejected {
                                object: r.identity().object.clone(),
                                message: format!(
                                    "the state it was sent is version {}'s, and this replica \
                                     switched to version {running} meanwhile; join again",
                                    incoming.version
                                ),
                            });
                        }
                        None => {}
                    }
                    r.init(Some(&state))
                });
                match started {
                    Ok(()) => {
                        let mut state = in_force.lock().expect("in force");
                        let kept = state.interface.take();
                        *state = incoming;
                        state.interface = interface.or(kept);
                        drop(state);
                        let _ = results.send(FromReplica::LogicChanged);
                    }
                    Err(e) => {
                        let _ = results.send(FromReplica::InitFailed(e.to_string()));
                    }
                }
            }),
        );
    }

    fn multicast(&mut self, payload: Vec<u8>) -> u64 {
        let now = self.now();
        self.core
            .multicast(now, crate::local::system_time_ms(), payload)
    }

    /// Move the core's transmits to the network and its outputs to the replica,
    /// until both are empty.
    fn pump(&mut self) {
        loop {
            let mut progressed = self.transmit();
            while !self.held
                && let Some(output) = self.core.poll_output()
            {
                progressed = true;
                self.output(output);
            }
            if !progressed || self.gone {
                return;
            }
        }
    }

    /// Send what the core has to send; whether there was anything.
    fn transmit(&mut self) -> bool {
        let mut sent = false;
        while let Some((to, message)) = self.core.poll_transmit() {
            sent = true;
            let grant = matches!(message, Message::JoinRequest)
                .then(|| self.admission.grant.clone())
                .flatten();
            let frame = Frame {
                from: self.me,
                body: Body::Group {
                    object: self.object.clone(),
                    message: Box::new(message),
                    grant,
                },
            };
            self.transport.send(to, &frame);
        }
        sent
    }

    fn output(&mut self, output: Output<Peer>) {
        let object = self.object.clone();
        let results = self.results_tx.clone();
        match output {
            Output::Deliver { event, .. } => self.deliver(event),
            Output::View(view) => {
                let _ = self.notices.send(GroupNotice::View(view.members.clone()));
                if self.core.is_member() {
                    let view = guest_view(&view);
                    self.enqueue(
                        view.members.iter().map(String::len).sum(),
                        Box::new(move |replica| {
                            match replica.and_then(|r| r.view_changed(&view)) {
                                Ok(delivery) => {
                                    let _ = results.send(FromReplica::Reacted(delivery.multicasts));
                                }
                                Err(e) => tracing::warn!("{object}: view change refused: {e}"),
                            }
                        }),
                    );
                }
            }
            Output::TakeSnapshot(cut) => {
                let in_force = self.in_force.clone();
                self.enqueue(
                    0,
                    Box::new(move |replica| match replica.and_then(|r| r.snapshot()) {
                        Ok(state) => {
                            let transfer = Transfer {
                                logic: in_force.lock().expect("in force").clone(),
                                state,
                            };
                            let bytes = postcard::to_allocvec(&transfer)
                                .expect("postcard encoding to a Vec cannot fail");
                            let _ = results.send(FromReplica::Snapshot(cut, bytes));
                        }
                        Err(e) => {
                            tracing::warn!("{object}: cannot snapshot for a joiner: {e}");
                            // Refuse only for what every replica would meet (fuel,
                            // memory, a trap): past this member's wall-clock deadline, or
                            // with the object stopped here, another member may serve the
                            // joiner, which retries.
                            let here_only = matches!(
                                &e,
                                ReplicaError::Quarantined { .. }
                                    | ReplicaError::LimitExceeded {
                                        limit: crate::runtime::Limit::Deadline { .. },
                                        ..
                                    }
                            );
                            if !here_only {
                                let _ = results.send(FromReplica::SnapshotFailed(
                                    cut,
                                    format!("the member's snapshot of {object} failed: {e}"),
                                ));
                            }
                        }
                    }),
                )
            }
            Output::InstallSnapshot { snapshot } => {
                let transfer = match postcard::from_bytes::<Transfer>(&snapshot) {
                    Ok(transfer) => transfer,
                    Err(e) => {
                        let _ = results.send(FromReplica::InitFailed(format!(
                            "the state it was sent ({} bytes) does not decode: {e}",
                            snapshot.len()
                        )));
                        return;
                    }
                };
                if self.repairing && self.evidence.is_some() {
                    // Written when the repair's position is known (`Repaired`).
                    self.majority_state = Some(transfer.state.clone());
                }
                let here = self.in_force.lock().expect("in force").version;
                if transfer.logic.version == here {
                    self.install(transfer, None);
                } else {
                    // The member runs another version (the group switched since
                    // this host resolved the record): run that one.
                    let record = transfer.logic.record.clone();
                    self.fetch_logic(Pending::Install(transfer), record);
                }
            }
            Output::Upgrade { gseq, upgrade } => self.upgrade_ordered(gseq, upgrade),
            Output::TakeDigest { at } => self.enqueue(
                0,
                Box::new(move |replica| match replica.and_then(|r| r.snapshot()) {
                    Ok(snapshot) => {
                        use sha2::Digest as _;
                        let digest = sha2::Sha256::digest(&snapshot).into();
                        let _ = results.send(FromReplica::Digest(at, digest));
                    }
                    // Its check stays open (and is given up): a snapshot that
                    // fails is reported where it matters, at a join.
                    Err(e) => tracing::debug!("{object}: no state digest for position {at}: {e}"),
                }),
            ),
            Output::Checked(result) => self.checked(result),
            Output::Repaired {
                at,
                from,
                own_skipped,
            } => {
                self.repairing = false;
                if let (Some(dir), Some(state)) =
                    (self.evidence.clone(), self.majority_state.take())
                {
                    let object = self.object.clone();
                    self.enqueue(
                        0,
                        Box::new(move |_| {
                            crate::driver::keep_evidence(
                                &object,
                                &dir,
                                &format!("majority-at-{at}.snapshot"),
                                &state,
                            );
                        }),
                    );
                }
                // The majority's state holds this member's events it skipped; what
                // the object made of them there is not known here.
                for seq in own_skipped {
                    self.waiting.applied(
                        &self.object,
                        seq,
                        Some(format!(
                            "its outcome is unknown here: this replica was repaired past it \
                             from the majority's state at position {at}, which includes it"
                        )),
                    );
                }
                let mut status = self.status.lock().expect("status");
                let before = status.divergence.take().unwrap_or_default();
                let line = format!("{before}; repaired at position {at} from {}", from.label());
                tracing::warn!("{}: {line}", self.object);
                status.divergence = Some(line);
            }
            Output::Excluded => {
                let _ = self.notices.send(GroupNotice::Excluded);
                self.gone = true;
            }
            Output::JoinRefused { reason } => {
                tracing::warn!("{}: the group refused this join: {reason}", self.object);
                // The task stays to answer `status` (the joiner reads the reason
                // there) until it is left; the core does nothing more.
                self.status.lock().expect("status").refused = Some(reason);
            }
        }
    }

    /// Act on a divergence check's verdict: note an agreement, keep the evidence
    /// of a divergence (the repair follows from the core), stop the object if
    /// there is no majority.
    fn checked(&mut self, result: CheckResult<Peer>) {
        let CheckResult {
            at,
            members,
            own,
            verdict,
        } = result;
        let short = |digest: &[u8; 32]| hex::encode(&digest[..6]);
        match verdict {
            Verdict::Agree { agreeing } => {
                self.status.lock().expect("status").check = Some(format!(
                    "position {at}: {agreeing} of {members} replicas agree on {}",
                    short(&own)
                ));
            }
            Verdict::Diverged {
                majority,
                agreeing,
                sources,
            } => {
                self.repairing = true;
                let mut line = format!(
                    "diverged at position {at}: {agreeing} of {members} replicas agree on {}, \
                     this one has {}; repairing from {}",
                    short(&majority),
                    short(&own),
                    sources.first().map_or_else(String::new, Peer::label),
                );
                if let Some(dir) = &self.evidence {
                    line.push_str(&format!(" (evidence in {})", dir.display()));
                    let (object, dir) = (self.object.clone(), dir.clone());
                    let file = format!("diverged-at-{}.snapshot", self.core.delivered());
                    let report = format!(
                        "{line}\nmajority sha256 {}\nthis replica's sha256 {}\n",
                        hex::encode(majority),
                        hex::encode(own)
                    );
                    self.enqueue(0, crate::driver::evidence_job(object, dir, report, file));
                }
                tracing::error!("{}: {line}", self.object);
                self.status.lock().expect("status").divergence = Some(line);
            }
            Verdict::NoMajority { groups } => {
                let states: Vec<String> = groups
                    .iter()
                    .map(|(digest, count)| format!("{} x{count}", short(digest)))
                    .collect();
                let reason = format!(
                    "no majority at position {at}: the {members} replicas hold {} different \
                     states ({}); stopped here rather than let it fork",
                    groups.len(),
                    states.join(", ")
                );
                tracing::error!("{}: {reason}", self.object);
                self.status.lock().expect("status").divergence = Some(reason.clone());
                self.replica.quarantine(&reason);
            }
        }
    }

    /// Queue `event` for the replica: in the run of the delivery job still waiting
    /// in its mailbox if there is one, else in a job of its own.
    fn deliver(&mut self, event: CoreEvent<Peer>) {
        let own = (event.sender == self.me).then_some(event.seq);
        let guest_event = Event {
            sender: event.sender.key.to_string(),
            seq: event.seq,
            timestamp_ms: event.timestamp_ms,
            payload: event.payload,
        };
        let bytes = guest_event.payload.len() + 64;
        // Held before it can join a run, so the job's release never comes first;
        // a new run's first event is the mailbox's to count instead.
        self.hold_waiting(bytes);
        let (own, guest_event) = match self.runs.join(own, guest_event, bytes) {
            Ok(()) => return,
            Err(back) => {
                self.replica.release(bytes);
                back
            }
        };
        let (run, opened) = self.runs.start(own, guest_event, bytes);
        let object = self.object.clone();
        let results = self.results_tx.clone();
        let budget = self.replica.clone();
        self.enqueue(
            bytes,
            Box::new(move |replica| {
                apply_run(replica, &run, &budget, &object, |outcome| {
                    let _ = results.send(FromReplica::Delivered {
                        own: outcome.tag,
                        rejected: outcome.rejected,
                        multicasts: outcome.multicasts,
                        notifications: outcome.notifications,
                    });
                });
            }),
        );
        self.runs.opened(opened);
    }
}

fn guest_view(view: &CoreView<Peer>) -> View {
    View {
        id: view.id,
        members: view.members.iter().map(|p| p.key.to_string()).collect(),
    }
}

/// Hand each inbound frame to its group; answer frames for objects this host does
/// not have with [`Message::Left`].
async fn route_inbound(
    mut inbound: mpsc::Receiver<Inbound>,
    routes: Routes,
    heartbeats: SharedHeartbeats,
    transport: Arc<Transport>,
    started: Instant,
) {
    let me = transport.me();
    let not_here = |to: Peer, object: String| {
        let frame = Frame {
            from: me,
            body: Body::Group {
                object,
                message: Box::new(Message::Left),
                grant: None,
            },
        };
        transport.send(to, &frame);
    };
    while let Some(Inbound { frame }) = inbound.recv().await {
        let now = millis_since(started);
        let Frame { from, body } = frame;
        match body {
            Body::Group {
                object,
                message,
                grant,
            } => {
                heartbeats.lock().expect("heartbeats").heard(now, &from);
                // Neither a Left (no ping-pong) nor a join request (the joiner
                // asked the wrong host; it tries its other contacts) is answered.
                let answer = !matches!(*message, Message::Left | Message::JoinRequest);
                let route = routes.lock().expect("routes").get(&object).cloned();
                let frame = GroupInput::Frame(Box::new(GroupFrame {
                    from,
                    message,
                    grant,
                }));
                match route.map(|tx| tx.try_send(frame)) {
                    // Full: dropped; the protocol retransmits.
                    Some(Ok(())) | Some(Err(mpsc::error::TrySendError::Full(_))) => {}
                    None | Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                        if answer {
                            not_here(from, object);
                        }
                    }
                }
            }
            Body::Heartbeat(heartbeat) => {
                let handed = heartbeats
                    .lock()
                    .expect("heartbeats")
                    .receive(now, &from, heartbeat);
                for (object, progress) in handed {
                    let route = routes.lock().expect("routes").get(&object).cloned();
                    match route
                        .map(|tx| tx.try_send(GroupInput::Progress(Box::new((from, progress)))))
                    {
                        Some(Ok(())) => {}
                        Some(Err(mpsc::error::TrySendError::Full(_))) => heartbeats
                            .lock()
                            .expect("heartbeats")
                            .forget(&from, &object),
                        None | Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                            not_here(from, object)
                        }
                    }
                }
            }
        }
    }
}

/// The host's heartbeat task: one heartbeat per period to each peer it shares a
/// group with, and suspicions of silent peers to their groups. Sleeps while no
/// group has another member.
async fn send_heartbeats(
    heartbeats: SharedHeartbeats,
    routes: Routes,
    transport: Arc<Transport>,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
    started: Instant,
) {
    let me = transport.me();
    loop {
        let next = heartbeats.lock().expect("heartbeats").poll_timeout();
        let deadline = match next {
            Some(at) => started + Duration::from_millis(at),
            None => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    return;
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let outputs: Vec<PeerOutput<Peer, String>> = {
            let mut heartbeats = heartbeats.lock().expect("heartbeats");
            heartbeats.handle_timeout(millis_since(started));
            std::iter::from_fn(|| heartbeats.poll_output()).collect()
        };
        for output in outputs {
            match output {
                PeerOutput::Transmit { to, heartbeat } => {
                    let frame = Frame {
                        from: me,
                        body: Body::Heartbeat(heartbeat),
                    };
                    transport.send(to, &frame);
                }
                PeerOutput::Suspect { peer, groups } => {
                    let routes = routes.lock().expect("routes");
                    for object in groups {
                        if let Some(tx) = routes.get(&object) {
                            // Full: the suspicion comes again next period.
                            let _ = tx.try_send(GroupInput::Suspect(peer));
                        }
                    }
                }
            }
        }
    }
}
