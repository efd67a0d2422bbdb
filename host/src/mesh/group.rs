//! A host on the mesh ([`MeshNode`]) and the replicas it runs ([`GroupHandle`]): each
//! object's protocol core and sandboxed replica live in one task, fed by the
//! transport, timers and local calls.

use super::core::{Config, Event as CoreEvent, MeshCore, Message, Output, View as CoreView};
use super::net::{Frame, Inbound, NetError, Peer, Transport};
use crate::runtime::{Event, Logic, Replica, ReplicaIdentity, Runtime, View};
use liveobjects_directory::keys::Identity;
use liveobjects_directory::record::{AccessPolicy, Grant, Signed};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Frames and commands queued per group before new frames are dropped.
const GROUP_QUEUE: usize = 8192;

/// Something a local application may want to see.
#[derive(Debug, Clone)]
pub enum GroupNotice {
    /// The object raised a notification.
    Notification {
        /// What changed.
        topic: String,
        /// Free text.
        detail: String,
    },
    /// The membership changed.
    View(Vec<Peer>),
    /// This replica is no longer a member.
    Excluded,
}

/// Who may join a group, and this host's own credential.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The object's access policy (from its record); members enforce it on joiners.
    pub policy: AccessPolicy,
    /// This host's grant, presented when it joins (for `grants:` policies).
    pub grant: Option<Signed<Grant>>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            policy: AccessPolicy::Open,
            grant: None,
        }
    }
}

/// A snapshot of a group's state, for `lo status`.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    /// Current members.
    pub members: Vec<Peer>,
    /// Highest position of the total order delivered here.
    pub delivered: u64,
    /// Whether this replica has state and takes part.
    pub member: bool,
    /// Whether this host orders the group's events.
    pub sequencer: bool,
    /// Events the object applied.
    pub events_applied: u64,
}

/// Why a call on a group failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The replica refused or failed.
    #[error(transparent)]
    Replica(#[from] crate::runtime::ReplicaError),
    /// The group task is gone (left, or excluded).
    #[error("this host no longer takes part in {0}")]
    Gone(String),
    /// The replica has no state yet (joining).
    #[error("{0} is still joining (waiting for its state)")]
    Joining(String),
    /// The object refused an update (a transaction): it aborted at every replica
    /// and changed nothing.
    #[error("transaction on {object} aborted at every replica: {reason}")]
    Aborted {
        /// The object.
        object: String,
        /// The object's reason.
        reason: String,
    },
    /// The group could not order or confirm the request in time (for vsync: no
    /// majority reachable); an update may or may not have committed.
    #[error("{object}: {reason}")]
    Unavailable {
        /// The object.
        object: String,
        /// What happened.
        reason: String,
    },
    /// The driver or its membership service refused the join.
    #[error("cannot join {object}: {reason}")]
    Refused {
        /// The object.
        object: String,
        /// Why.
        reason: String,
    },
}

enum Command {
    Call {
        method: String,
        args: Vec<String>,
        reply: oneshot::Sender<Result<Vec<String>, GroupError>>,
    },
    Status(oneshot::Sender<GroupStatus>),
    Snapshot(oneshot::Sender<Result<Vec<u8>, GroupError>>),
    Leave,
}

enum GroupInput {
    Frame(Box<Frame>),
    Command(Command),
}

/// One host's presence on the mesh: its transport and the groups it takes part in.
pub struct MeshNode {
    transport: Arc<Transport>,
    groups: Arc<Mutex<HashMap<String, mpsc::Sender<GroupInput>>>>,
    started: Instant,
    config: Config,
}

impl MeshNode {
    /// Listen on `listen` (QUIC) as `identity`. Must run inside a tokio runtime.
    pub fn start(
        identity: &Identity,
        listen: SocketAddr,
        config: Config,
    ) -> Result<Self, NetError> {
        let (inbound_tx, mut inbound_rx) = mpsc::channel::<Inbound>(GROUP_QUEUE);
        let transport = Transport::start(identity, listen, inbound_tx)?;
        let groups: Arc<Mutex<HashMap<String, mpsc::Sender<GroupInput>>>> = Arc::default();
        let routes = groups.clone();
        tokio::spawn(async move {
            while let Some(Inbound { frame }) = inbound_rx.recv().await {
                let route = routes.lock().expect("routes").get(&frame.object).cloned();
                if let Some(tx) = route {
                    // Full: drop; the protocol retransmits.
                    let _ = tx.try_send(GroupInput::Frame(Box::new(frame)));
                }
            }
        });
        Ok(MeshNode {
            transport,
            groups,
            started: Instant::now(),
            config,
        })
    }

    /// This host as a mesh peer (key and address).
    pub fn me(&self) -> Peer {
        self.transport.me()
    }

    /// Start a new group for `object`, with this host as its first member.
    pub fn found(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        admission: Admission,
    ) -> Result<GroupHandle, GroupError> {
        let mut replica = self.replica(runtime, logic, object)?;
        replica.init(None)?;
        let core = MeshCore::found(self.me(), self.config.clone(), self.now());
        Ok(self.spawn(object, core, replica, admission))
    }

    /// Join the group of `object` through `contact` (any member).
    pub fn join(
        &self,
        runtime: &Runtime,
        logic: &Arc<Logic>,
        object: &str,
        contact: Peer,
        admission: Admission,
    ) -> Result<GroupHandle, GroupError> {
        let replica = self.replica(runtime, logic, object)?;
        let core = MeshCore::join(self.me(), contact, self.config.clone(), self.now());
        Ok(self.spawn(object, core, replica, admission))
    }

    /// Stop taking part in `object` (its task ends; peers exclude this host).
    pub async fn leave(&self, object: &str) {
        let route = self.groups.lock().expect("routes").remove(object);
        if let Some(tx) = route {
            let _ = tx.send(GroupInput::Command(Command::Leave)).await;
        }
    }

    /// Stop all groups and close connections.
    pub fn shutdown(&self) {
        self.groups.lock().expect("routes").clear();
        self.transport.close();
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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

    fn spawn(
        &self,
        object: &str,
        core: MeshCore<Peer>,
        replica: Replica,
        admission: Admission,
    ) -> GroupHandle {
        let (tx, rx) = mpsc::channel(GROUP_QUEUE);
        let (notices, _) = broadcast::channel(1024);
        self.groups
            .lock()
            .expect("routes")
            .insert(object.to_string(), tx.clone());
        let group = Group {
            object: object.to_string(),
            me: self.me(),
            core,
            replica,
            transport: self.transport.clone(),
            notices: notices.clone(),
            started: self.started,
            waiting: Vec::new(),
            gone: false,
            admission,
        };
        tokio::spawn(group.run(rx));
        GroupHandle {
            object: object.to_string(),
            tx,
            notices,
        }
    }
}

/// A local handle on one group.
#[derive(Clone)]
pub struct GroupHandle {
    object: String,
    tx: mpsc::Sender<GroupInput>,
    notices: broadcast::Sender<GroupNotice>,
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
        let (reply, answer) = oneshot::channel();
        self.command(Command::Call {
            method: method.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            reply,
        })
        .await?;
        answer
            .await
            .map_err(|_| GroupError::Gone(self.object.clone()))?
    }

    /// Membership and progress.
    pub async fn status(&self) -> Result<GroupStatus, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Status(reply)).await?;
        answer
            .await
            .map_err(|_| GroupError::Gone(self.object.clone()))
    }

    /// The replica's snapshot.
    pub async fn snapshot(&self) -> Result<Vec<u8>, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Snapshot(reply)).await?;
        answer
            .await
            .map_err(|_| GroupError::Gone(self.object.clone()))?
    }

    /// Notifications and membership changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<GroupNotice> {
        self.notices.subscribe()
    }

    async fn command(&self, command: Command) -> Result<(), GroupError> {
        self.tx
            .send(GroupInput::Command(command))
            .await
            .map_err(|_| GroupError::Gone(self.object.clone()))
    }
}

/// A call whose results go out once its last multicast (this sender's seq) is
/// delivered here.
type WaitingCall = (
    u64,
    Vec<String>,
    oneshot::Sender<Result<Vec<String>, GroupError>>,
);

struct Group {
    object: String,
    me: Peer,
    core: MeshCore<Peer>,
    replica: Replica,
    transport: Arc<Transport>,
    notices: broadcast::Sender<GroupNotice>,
    started: Instant,
    /// Calls waiting for their last multicast (own seq) to be delivered.
    waiting: Vec<WaitingCall>,
    gone: bool,
    admission: Admission,
}

impl Group {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(mut self, mut rx: mpsc::Receiver<GroupInput>) {
        loop {
            self.pump();
            if self.gone {
                break;
            }
            let deadline = self
                .core
                .poll_timeout()
                .map(|t| self.started + Duration::from_millis(t))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                input = rx.recv() => match input {
                    None => break,
                    Some(GroupInput::Frame(frame)) => {
                        if self.admit(&frame) {
                            let now = self.now();
                            let Frame { from, message, .. } = *frame;
                            self.core.handle_message(now, from, message);
                        }
                    }
                    Some(GroupInput::Command(command)) => self.command(command),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
        }
        for (_, _, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(GroupError::Gone(self.object.clone())));
        }
    }

    /// Members enforce the object's policy on join requests: a refused joiner is
    /// never added to the view, so it receives no state and no events.
    fn admit(&self, frame: &Frame) -> bool {
        if !matches!(frame.message, Message::JoinRequest) {
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
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                match self.replica.call_wave(&method, &args) {
                    Ok(outcome) => {
                        let results = outcome.results_wave();
                        let mut last = None;
                        for payload in outcome.multicasts {
                            last = Some(self.multicast(payload));
                        }
                        match last {
                            Some(seq) => self.waiting.push((seq, results, reply)),
                            None => {
                                let _ = reply.send(Ok(results));
                            }
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(GroupStatus {
                    members: self.core.view().members.clone(),
                    delivered: self.core.delivered(),
                    member: self.core.is_member(),
                    sequencer: self.core.is_sequencer(),
                    events_applied: self.replica.stats().events_applied,
                });
            }
            Command::Snapshot(reply) => {
                let result = if self.core.is_member() {
                    self.replica.snapshot().map_err(GroupError::from)
                } else {
                    Err(GroupError::Joining(self.object.clone()))
                };
                let _ = reply.send(result);
            }
        }
    }

    fn multicast(&mut self, payload: Vec<u8>) -> u64 {
        let now = self.now();
        self.core
            .multicast(now, crate::local::system_time_ms(), payload)
    }

    /// Move the core's transmits to the network and its outputs into the replica,
    /// until both are empty.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some((to, message)) = self.core.poll_transmit() {
                progressed = true;
                let grant = matches!(message, Message::JoinRequest)
                    .then(|| self.admission.grant.clone())
                    .flatten();
                let frame = Frame {
                    object: self.object.clone(),
                    from: self.me,
                    message,
                    grant,
                };
                self.transport.send(to, &frame);
            }
            while let Some(output) = self.core.poll_output() {
                progressed = true;
                self.output(output);
            }
            if !progressed {
                return;
            }
        }
    }

    fn output(&mut self, output: Output<Peer>) {
        match output {
            Output::Deliver { event, .. } => self.deliver(event),
            Output::View(view) => {
                let _ = self.notices.send(GroupNotice::View(view.members.clone()));
                if self.core.is_member() {
                    let view = guest_view(&view);
                    match self.replica.view_changed(&view) {
                        Ok(delivery) => {
                            for payload in delivery.multicasts {
                                self.multicast(payload);
                            }
                        }
                        Err(e) => tracing::warn!("{}: view change refused: {e}", self.object),
                    }
                }
            }
            Output::TakeSnapshot(cut) => match self.replica.snapshot() {
                Ok(snapshot) => self.core.snapshot_taken(cut, snapshot),
                Err(e) => tracing::error!("{}: cannot snapshot for a joiner: {e}", self.object),
            },
            Output::InstallSnapshot { snapshot } => {
                if let Err(e) = self.replica.init(Some(&snapshot)) {
                    tracing::error!("{}: cannot start from the received state: {e}", self.object);
                    self.gone = true;
                }
            }
            Output::Excluded => {
                let _ = self.notices.send(GroupNotice::Excluded);
                self.gone = true;
            }
        }
    }

    fn deliver(&mut self, event: CoreEvent<Peer>) {
        let own = event.sender == self.me;
        let seq = event.seq;
        let guest_event = Event {
            sender: event.sender.key.to_string(),
            seq: event.seq,
            timestamp_ms: event.timestamp_ms,
            payload: event.payload,
        };
        match self.replica.deliver(&guest_event) {
            Ok(delivery) => {
                for n in delivery.notifications {
                    let _ = self.notices.send(GroupNotice::Notification {
                        topic: n.topic,
                        detail: n.detail,
                    });
                }
                for payload in delivery.multicasts {
                    self.multicast(payload);
                }
            }
            // Deterministic: every replica refuses the same event the same way.
            Err(e) => tracing::warn!("{}: {e}", self.object),
        }
        if own {
            let (done, waiting): (Vec<_>, Vec<_>) =
                self.waiting.drain(..).partition(|(s, _, _)| *s <= seq);
            self.waiting = waiting;
            for (_, results, reply) in done {
                let _ = reply.send(Ok(results));
            }
        }
    }
}

fn guest_view(view: &CoreView<Peer>) -> View {
    View {
        id: view.id,
        members: view.members.iter().map(|p| p.key.to_string()).collect(),
    }
}
