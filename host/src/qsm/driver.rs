//! A host's qsm driver: the [`QsmHost`] core with its UDP sockets and QUIC endpoint
//! on a thread of its own (so the network loop never waits on a guest), and each
//! object's replica task on the caller's runtime, whose guest calls run on the
//! node's object executor ([`crate::executor`]).
//!
//! Flow control end to end, with every queue bounded:
//! - **Sending is pulled.** A replica hands its multicasts to the driver at most
//!   [`REPLICA_WINDOW`] at a time; the driver gives them to the core only while the
//!   core [`has_room`](QsmHost::has_room) (stream windows and delivery credit), and
//!   reports each accepted one back. A replica with a full outbox takes no new
//!   calls, so callers wait.
//! - **Receiving is credited.** The core hands a replica at most its delivery credit
//!   of events; the replica reports how many it applied, which returns credit. A
//!   slow replica stalls its region's consumption, the region's acks, and so the
//!   senders' windows. Nothing for a live replica is ever dropped: its queue from
//!   the driver is unbounded (deliveries are bounded by the credit, views and
//!   snapshot requests by the protocol), and a send fails only once the replica is
//!   gone, which returns its credit.
//! - **Counted against the memory cap.** Deliveries queued between the driver and
//!   the object's mailbox (up to the delivery credit: 8,192 events of up to 64 KB),
//!   and the object's own multicasts until the core takes them, are host memory
//!   held for the object ([`ObjectRef::hold`]). A receiver so slow that they pass
//!   its memory cap is quarantined, which takes it out of its region: the others
//!   carry on and it never skips an event silently.
//!
//! The membership service's messages are numbered; a gap (or being declared
//! failed) means this host's view of the domain can no longer be trusted: every
//! object is dropped (handles report it) and the host registers again.
//!
//! # Logic: live upgrade at a flushed view change
//! A joiner is sent its provider's state with the record that state belongs
//! to ([`QsmState`]) and runs that record's logic, whatever newer record it
//! resolved, so a newer version never meets an older one's events.
//!
//! The object's oldest member looks for a newer record every `lo node
//! --upgrade-poll` seconds while the object is used, and asks the membership
//! service for an upgrade view ([`QsmHost::request_upgrade`]). The cut is the
//! core's flush at that view (see `liveobjects_protocols::qsm::core`, "Upgrades"):
//! each member delivers every member's events before that member's marker and
//! holds every later one, then [`Output::UpgradeCut`] reaches its replica task,
//! which verifies the record as the zone's now (it must name this object, the
//! qsm driver and the version asked for), snapshots the replica with the old
//! logic and switches it (`migrate`, then `init`, as on the mesh), keeping the
//! old logic and state aside. Its verdict goes to every member; once all are
//! in ([`Output::UpgradeDecided`]), every replica keeps the new logic if every
//! replica took it, or goes back to the old logic and state if any refused,
//! before any later event. **What a caller sees:** every event is applied by
//! the same version at every replica (each sender's events before its marker
//! by the old logic, the rest by the new one); calls wait while the members
//! flush (sends pause from the upgrade view to the decision) and are neither
//! lost nor applied twice; members and connections stay. Unlike the mesh,
//! replicas' states differ (senders interleave differently), so a `migrate`
//! may succeed on one replica and fail on another: the vote makes that an
//! abort everywhere. A failure that is this host's alone (a deadline, its
//! instance pool, a directory it cannot reach for 60 s) is a refusal, which
//! aborts the upgrade everywhere rather than stop the object here.

use super::core::{Output, QsmConfig, QsmHost, QsmStats};
use super::membership::{FromMembership, Micros};
use super::net::{DataSockets, QsmBody, QsmFrame, SocketError};
use super::thread::ServiceThread;
use super::wire::ObjectNum;
use crate::driver::{Evolution, LogicError, LogicInForce, LogicVersion};
use crate::executor::{Budgets, ObjectRef};
use crate::group::{DeliveryRuns, GroupError, GroupNotice, GroupStatus, WaitingCalls, apply_run};
use crate::mesh::net::{Inbound, NetError, Peer, Transport};
use crate::runtime::{Event, Logic, ReplicaError, ReplicaIdentity, Runtime, View};
use bytes::Bytes;
use liveobjects_directory::keys::Identity;
use liveobjects_directory::record::{Grant, Signed};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Multicasts a replica has handed to the driver and not yet seen accepted.
pub const REPLICA_WINDOW: usize = 256;
/// Multicasts a replica keeps before it stops taking calls.
const OUTBOX_LIMIT: usize = 1024;
/// What the host holds for an object's deliveries between the driver and its
/// mailbox, as its memory cap reports it.
const QUEUED_DELIVERIES: &str =
    "events waiting to be applied, which it applies slower than its region sends them";
/// What the host holds for an object's own multicasts until the protocol core
/// takes them (whose send window bounds them from there).
const QUEUED_MULTICASTS: &str = "events it multicast, waiting for the network";
/// Host memory counted for one delivery besides its payload (the event's sender,
/// sequence and timestamp), as the executor counts it in the mailbox.
const EVENT_OVERHEAD: usize = 64;
/// The driver's input queue (replicas and handles).
const INPUTS: usize = 65_536;
/// Control frames queued from the network.
const CONTROL_QUEUE: usize = 65_536;
/// How long `lo status` waits for a replica's task.
const STATUS_WAIT: Duration = Duration::from_millis(300);
/// Receive batches per socket per loop turn.
const RECEIVE_BATCHES: usize = 16;

/// Where and how a host runs qsm.
#[derive(Debug, Clone)]
pub struct QsmSettings {
    /// The unicast data address: an interface's address (port 0 picks one).
    pub data: SocketAddr,
    /// The QUIC control address.
    pub control: SocketAddr,
    /// The interface's name (needed for IPv6 multicast).
    pub interface: Option<String>,
    /// Use IP multicast if the interface supports it (otherwise the overlay).
    pub multicast: bool,
    /// Protocol tunables.
    pub config: QsmConfig,
}

impl QsmSettings {
    /// Loopback defaults: data and control on 127.0.0.1, multicast on.
    pub fn loopback() -> Self {
        QsmSettings {
            data: "127.0.0.1:0".parse().expect("valid"),
            control: "127.0.0.1:0".parse().expect("valid"),
            interface: None,
            multicast: true,
            config: QsmConfig::default(),
        }
    }
}

/// Why the driver did not start.
#[derive(Debug, thiserror::Error)]
pub enum QsmError {
    /// The QUIC endpoint.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The data sockets.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The driver's thread.
    #[error("qsm driver thread: {0}")]
    Thread(String),
}

/// The driver's state for `lo status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QsmStatus {
    /// The protocol's counters.
    pub stats: QsmStats,
    /// This host's data address.
    pub data: SocketAddr,
    /// Whether it receives IP multicast (or relies on the overlay).
    pub multicast: bool,
    /// The membership service.
    pub membership: Peer,
    /// Per region view this host sends to: bytes per second over the last second.
    pub send_rates: Vec<(u64, f64)>,
    /// Messages per second received in its region over the last second.
    pub receive_rate: f64,
    /// Datagrams the kernel refused to send.
    pub send_drops: u64,
}

enum Command {
    Call {
        method: String,
        args: Vec<String>,
        reply: oneshot::Sender<Result<Vec<String>, GroupError>>,
    },
    Status(oneshot::Sender<GroupStatus>),
    Snapshot(oneshot::Sender<Result<Vec<u8>, GroupError>>),
}

/// A local handle on one qsm object's replica.
#[derive(Clone)]
pub struct QsmHandle {
    object: String,
    commands: mpsc::Sender<Command>,
    notices: crate::group::Notices,
    /// The replica on the executor, once its task has started it.
    replica: Arc<std::sync::OnceLock<ObjectRef>>,
    /// The methods of the logic it runs, if not the one joined with (its
    /// state's, or an upgrade's).
    interface: Interface,
}

/// The methods of the logic a replica runs, once it differs from the logic it
/// was joined with.
type Interface = Arc<std::sync::Mutex<Option<Arc<crate::runtime::ObjectInterface>>>>;

/// What a qsm joiner is sent: its provider's state and the logic (record) that
/// state belongs to, with its upgrades tried, which the joiner runs whatever
/// record it resolved: a joiner that resolved a newer record would otherwise
/// apply the group's events with other logic than its members.
#[derive(Serialize, Deserialize)]
struct QsmState {
    logic: LogicInForce,
    state: Vec<u8>,
}

impl std::fmt::Debug for QsmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QsmHandle")
            .field("object", &self.object)
            .finish()
    }
}

impl QsmHandle {
    /// The replica on the executor, once the object's task has started it.
    pub fn replica(&self) -> Option<&ObjectRef> {
        self.replica.get()
    }

    /// The methods of the logic it runs, if its state came with other logic
    /// than the one it was joined with, or an upgrade changed it.
    pub fn interface(&self) -> Option<Arc<crate::runtime::ObjectInterface>> {
        self.interface.lock().expect("interface").clone()
    }

    /// Call a method (WAVE arguments). An update returns once its events are
    /// applied by this replica.
    pub async fn call(&self, method: &str, args: &[&str]) -> Result<Vec<String>, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Call {
            method: method.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Membership and progress.
    pub async fn status(&self) -> Result<GroupStatus, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Status(reply)).await?;
        answer.await.map_err(|_| self.gone())
    }

    /// The replica's snapshot.
    pub async fn snapshot(&self) -> Result<Vec<u8>, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Snapshot(reply)).await?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Notifications and membership changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<GroupNotice> {
        self.notices.subscribe()
    }

    /// The object's state for `lo status`: the executor's metrics (digest, queue,
    /// quarantine) and the membership from the replica's task, waited for at most
    /// [`STATUS_WAIT`].
    pub async fn report_now(&self) -> crate::driver::ObjectReport {
        let status = tokio::time::timeout(STATUS_WAIT, self.status())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let metrics = self
            .replica
            .get()
            .map(ObjectRef::metrics)
            .unwrap_or_default();
        crate::driver::ObjectReport::from_status(&status, &metrics)
    }

    async fn command(&self, command: Command) -> Result<(), GroupError> {
        self.commands.send(command).await.map_err(|_| self.gone())
    }

    fn gone(&self) -> GroupError {
        GroupError::ended(&self.object, self.replica.get())
    }
}

/// What a replica tells the driver.
enum FromReplica {
    Multicast {
        object: ObjectNum,
        payload: Vec<u8>,
        timestamp_ms: u64,
    },
    Applied {
        object: ObjectNum,
        count: usize,
    },
    Snapshot {
        object: ObjectNum,
        for_host: u32,
        view: u64,
        epoch: u64,
        cut: Vec<(u32, u64)>,
        state: Vec<u8>,
    },
    Failed {
        name: String,
        reason: String,
    },
    /// Ask the membership service for an upgrade (the oldest member found a
    /// newer record).
    RequestUpgrade {
        object: ObjectNum,
        version: u64,
        record: Vec<u8>,
    },
    /// The replica's verdict at an upgrade's cut.
    CutTried {
        object: ObjectNum,
        epoch: u64,
        ok: bool,
    },
}

/// What the driver tells a replica.
enum ToReplica {
    /// An event, and the bytes the driver holds for it against the object's
    /// memory cap until it is in the object's mailbox.
    Deliver(Event, usize),
    View(View, Vec<Peer>),
    TakeSnapshot {
        for_host: u32,
        view: u64,
        epoch: u64,
        cut: Vec<(u32, u64)>,
    },
    Accepted(usize),
    /// Every event before the upgrade's cut is in the mailbox: try the upgrade.
    UpgradeCut {
        epoch: u64,
        version: u64,
        record: Vec<u8>,
    },
    /// Every member's verdict is in.
    UpgradeDecided {
        epoch: u64,
        version: u64,
        committed: bool,
    },
}

enum Input {
    Join {
        name: String,
        runtime: Arc<Runtime>,
        logic: Arc<Logic>,
        evolution: Evolution,
        budgets: Budgets,
        grant: Option<Signed<Grant>>,
        reply: oneshot::Sender<Result<QsmHandle, GroupError>>,
    },
    Leave(String),
    Replica(FromReplica),
    Status(oneshot::Sender<QsmStatus>),
}

/// A host's qsm driver (stopped when dropped).
pub struct QsmNode {
    inputs: mpsc::Sender<Input>,
    me: Peer,
    membership: Peer,
    _thread: ServiceThread,
}

impl QsmNode {
    /// Start the driver for the domain served by `membership`. Must be called
    /// inside a tokio runtime (replicas run there).
    pub fn start(
        identity: &Identity,
        settings: QsmSettings,
        membership: Peer,
    ) -> Result<QsmNode, QsmError> {
        let main = tokio::runtime::Handle::current();
        let identity = identity.clone();
        let (inputs_tx, inputs_rx) = mpsc::channel(INPUTS);
        let replica_inputs = inputs_tx.clone();
        let (thread, me) = ServiceThread::spawn("qsm-driver", QsmError::Thread, move |stop| {
            let driver = Driver::new(
                &identity,
                settings,
                membership,
                inputs_rx,
                replica_inputs,
                main,
            )?;
            let me = driver.me;
            Ok((me, driver.run(stop)))
        })?;
        Ok(QsmNode {
            inputs: inputs_tx,
            me,
            membership,
            _thread: thread,
        })
    }

    /// This host's control identity and address.
    pub fn me(&self) -> Peer {
        self.me
    }

    /// The membership service of its domain.
    pub fn membership(&self) -> Peer {
        self.membership
    }

    /// Join `name` (already authorized locally) with `logic`, `evolution`'s
    /// version; returns once the replica has its state. A state of another
    /// version comes with its record, whose logic the replica runs instead
    /// (loaded from `evolution`'s source).
    pub async fn join(
        &self,
        runtime: &Arc<Runtime>,
        logic: &Arc<Logic>,
        evolution: &Evolution,
        name: &str,
        grant: Option<Signed<Grant>>,
        budgets: &Budgets,
    ) -> Result<QsmHandle, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Join {
                name: name.to_string(),
                runtime: runtime.clone(),
                logic: logic.clone(),
                evolution: evolution.clone(),
                budgets: budgets.clone(),
                grant,
                reply,
            })
            .await
            .map_err(|_| GroupError::Gone(name.to_string()))?;
        answer
            .await
            .map_err(|_| GroupError::Gone(name.to_string()))?
    }

    /// Leave `name` (once this host's events of it are acknowledged).
    pub async fn leave(&self, name: &str) {
        let _ = self.inputs.send(Input::Leave(name.to_string())).await;
    }

    /// Counters, rates and sizes.
    pub async fn status(&self) -> Option<QsmStatus> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::Status(reply)).await.ok()?;
        answer.await.ok()
    }
}

struct PendingJoin {
    runtime: Arc<Runtime>,
    logic: Arc<Logic>,
    evolution: Evolution,
    budgets: Budgets,
    reply: oneshot::Sender<Result<QsmHandle, GroupError>>,
}

struct ObjectEntry {
    name: String,
    /// The replica on the executor, once its task has started it.
    replica: Arc<std::sync::OnceLock<ObjectRef>>,
    to_replica: mpsc::UnboundedSender<ToReplica>,
    notices: crate::group::Notices,
    outbox: VecDeque<(Vec<u8>, u64)>,
}

struct Driver {
    core: QsmHost<Peer>,
    config: QsmConfig,
    sockets: DataSockets,
    multicast: bool,
    transport: Arc<Transport<QsmFrame>>,
    control: mpsc::Receiver<Inbound<QsmFrame>>,
    inputs: mpsc::Receiver<Input>,
    replica_inputs: mpsc::Sender<Input>,
    main: tokio::runtime::Handle,
    me: Peer,
    membership: Peer,
    started: Instant,
    expected: u64,
    pending: HashMap<String, PendingJoin>,
    grants: HashMap<String, Option<Signed<Grant>>>,
    objects: HashMap<ObjectNum, ObjectEntry>,
    blocked: BTreeSet<ObjectNum>,
    // Rates: the last sample's counters and time.
    sampled: Instant,
    sent_bytes: BTreeMap<u64, u64>,
    received: u64,
    send_rates: Vec<(u64, f64)>,
    receive_rate: f64,
}

impl Driver {
    fn new(
        identity: &Identity,
        settings: QsmSettings,
        membership: Peer,
        inputs: mpsc::Receiver<Input>,
        replica_inputs: mpsc::Sender<Input>,
        main: tokio::runtime::Handle,
    ) -> Result<Driver, QsmError> {
        let (sockets, can_multicast) =
            DataSockets::bind(settings.data, settings.interface.as_deref())?;
        let multicast = can_multicast && settings.multicast;
        if settings.multicast && !can_multicast {
            tracing::warn!(
                "qsm: IP multicast is not available on the interface of {}; using the overlay",
                settings.data
            );
        }
        let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
        let transport = Transport::<QsmFrame>::start(identity, settings.control, control_tx)?;
        let started = Instant::now();
        let core = QsmHost::new(settings.config.clone(), sockets.local_addr(), multicast, 0);
        Ok(Driver {
            core,
            config: settings.config,
            sockets,
            multicast,
            me: transport.me(),
            transport,
            control,
            inputs,
            replica_inputs,
            main,
            membership,
            started,
            expected: 1,
            pending: HashMap::new(),
            grants: HashMap::new(),
            objects: HashMap::new(),
            blocked: BTreeSet::new(),
            sampled: started,
            sent_bytes: BTreeMap::new(),
            received: 0,
            send_rates: Vec::new(),
            receive_rate: 0.0,
        })
    }

    fn now(&self) -> Micros {
        self.started.elapsed().as_micros() as Micros
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut rates = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.pump();
            let deadline = self.started + Duration::from_micros(self.core.poll_timeout());
            tokio::select! {
                _ = &mut stop => break,
                _ = self.sockets.readable() => {
                    let now = self.now();
                    let core = &mut self.core;
                    self.sockets.receive(RECEIVE_BATCHES, |d| core.handle_datagram(now, d));
                }
                Some(Inbound { frame }) = self.control.recv() => self.on_frame(frame),
                Some(input) = self.inputs.recv() => self.on_input(input),
                _ = rates.tick() => self.sample_rates(),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
        }
        self.transport.close();
    }

    fn sample_rates(&mut self) {
        let stats = self.core.stats();
        let dt = self.sampled.elapsed().as_secs_f64().max(1e-3);
        self.sampled = Instant::now();
        self.send_rates = stats
            .streams
            .iter()
            .map(|s| {
                let before = self.sent_bytes.get(&s.region).copied().unwrap_or(0);
                (s.region, s.bytes.saturating_sub(before) as f64 / dt)
            })
            .collect();
        self.sent_bytes = stats.streams.iter().map(|s| (s.region, s.bytes)).collect();
        let received = stats.region.as_ref().map(|r| r.received).unwrap_or(0);
        self.receive_rate = received.saturating_sub(self.received) as f64 / dt;
        self.received = received;
    }

    /// Move everything the core produced to the network and the replicas.
    fn pump(&mut self) {
        loop {
            self.feed();
            let mut progressed = false;
            while let Some(d) = self.core.poll_transmit() {
                progressed = true;
                self.sockets.send(d.to, &d.bytes);
            }
            while let Some(message) = self.core.poll_membership() {
                progressed = true;
                let grant = match &message {
                    super::membership::ToMembership::Join { object } => {
                        self.grants.get(object).cloned().flatten()
                    }
                    _ => None,
                };
                let frame = QsmFrame {
                    from: self.me,
                    body: QsmBody::Request { message, grant },
                };
                self.transport.send(self.membership, &frame);
            }
            while let Some((to, message)) = self.core.poll_peer() {
                progressed = true;
                if let Some(h) = self.core.host(to) {
                    let frame = QsmFrame {
                        from: self.me,
                        body: QsmBody::Peer(message),
                    };
                    self.transport.send(h.id, &frame);
                }
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

    /// Hand replicas' multicasts to the core while it has room.
    fn feed(&mut self) {
        if self.blocked.is_empty() {
            return;
        }
        let now = self.now();
        for object in std::mem::take(&mut self.blocked) {
            let Some(entry) = self.objects.get_mut(&object) else {
                continue;
            };
            let mut accepted = 0;
            while self.core.has_room(object) {
                let Some((payload, timestamp_ms)) = entry.outbox.pop_front() else {
                    break;
                };
                match self
                    .core
                    .multicast(now, object, timestamp_ms, Bytes::from(payload))
                {
                    Ok(_) => accepted += 1,
                    Err(e) => {
                        tracing::warn!("qsm: {}: multicast refused: {e}", entry.name);
                        accepted += 1;
                    }
                }
            }
            if accepted > 0 {
                let _ = entry.to_replica.send(ToReplica::Accepted(accepted));
            }
            if !entry.outbox.is_empty() {
                self.blocked.insert(object);
            }
        }
    }

    fn output(&mut self, output: Output) {
        match output {
            Output::Registered { host } => {
                tracing::info!("qsm: registered with {:?} as host {host}", self.membership);
            }
            Output::Joined {
                object,
                name,
                snapshot,
            } => self.start_replica(object, name, snapshot),
            Output::Deliver {
                object,
                sender,
                seq,
                timestamp_ms,
                payload,
            } => {
                let Some(entry) = self.objects.get(&object) else {
                    return;
                };
                let sender = self
                    .core
                    .host(sender)
                    .map(|h| h.id.key.to_string())
                    .unwrap_or_else(|| format!("qsm-host-{sender}"));
                let event = Event {
                    sender,
                    seq,
                    timestamp_ms,
                    payload: payload.to_vec(),
                };
                // Deliveries queue here while the object is slower than its region
                // (up to the delivery credit): they count against its memory cap,
                // which quarantines it (and so excludes it) past the cap.
                let held = match entry.replica.get() {
                    Some(replica) => {
                        let bytes = event.payload.len() + EVENT_OVERHEAD;
                        let _ = replica.hold(bytes, QUEUED_DELIVERIES);
                        bytes
                    }
                    None => 0,
                };
                if entry
                    .to_replica
                    .send(ToReplica::Deliver(event, held))
                    .is_err()
                {
                    // The replica is gone (quarantined, failed): its credit is
                    // returned so the region is not held up.
                    let now = self.now();
                    self.core.delivered(now, object, 1);
                }
            }
            Output::View {
                object,
                view,
                members,
            } => {
                let Some(entry) = self.objects.get(&object) else {
                    return;
                };
                let peers: Vec<Peer> = members
                    .iter()
                    .filter_map(|m| self.core.host(*m).map(|h| h.id))
                    .collect();
                let guest = View {
                    id: view,
                    members: peers.iter().map(|p| p.key.to_string()).collect(),
                };
                let _ = entry.notices.send(GroupNotice::View(peers.clone()));
                let _ = entry.to_replica.send(ToReplica::View(guest, peers));
            }
            Output::TakeSnapshot {
                object,
                for_host,
                view,
                epoch,
                cut,
            } => {
                if let Some(entry) = self.objects.get(&object) {
                    let _ = entry.to_replica.send(ToReplica::TakeSnapshot {
                        for_host,
                        view,
                        epoch,
                        cut,
                    });
                }
            }
            Output::UpgradeCut {
                object,
                epoch,
                version,
                request,
            } => {
                let cut = ToReplica::UpgradeCut {
                    epoch,
                    version,
                    record: request,
                };
                // No entry: this host is leaving the object, and the view that
                // removes it takes it out of the others' flush. A replica task
                // that ended cannot try it: its refusal aborts the upgrade (and
                // the host leaves) rather than hold every member's flush.
                if let Some(entry) = self.objects.get(&object)
                    && entry.to_replica.send(cut).is_err()
                {
                    let name = entry.name.clone();
                    self.objects.remove(&object);
                    let now = self.now();
                    self.core.cut_tried(now, object, epoch, false);
                    self.core.leave(now, &name);
                }
            }
            Output::UpgradeDecided {
                object,
                epoch,
                version,
                committed,
            } => {
                if let Some(entry) = self.objects.get(&object) {
                    let _ = entry.to_replica.send(ToReplica::UpgradeDecided {
                        epoch,
                        version,
                        committed,
                    });
                }
            }
            Output::Left { object, name } => {
                if let Some(entry) = self.objects.remove(&object) {
                    let _ = entry.notices.send(GroupNotice::Excluded);
                }
                if let Some(p) = self.pending.remove(&name) {
                    let _ = p.reply.send(Err(GroupError::Gone(name)));
                }
            }
            Output::JoinRefused { name, reason } => {
                self.grants.remove(&name);
                if let Some(p) = self.pending.remove(&name) {
                    let _ = p.reply.send(Err(GroupError::Refused {
                        object: name,
                        reason,
                    }));
                }
            }
            Output::JoinGroup(group) => {
                if let Err(e) = self.sockets.join_group(group) {
                    tracing::error!("qsm: {e}");
                }
            }
            Output::LeaveGroup(group) => self.sockets.leave_group(group),
            Output::Excluded => self.restart("the membership service declared this host failed"),
        }
    }

    /// Drop every object and register again with a fresh core.
    fn restart(&mut self, why: &str) {
        tracing::warn!("qsm: {why}; dropping every object and registering again");
        for (_, entry) in self.objects.drain() {
            let _ = entry.notices.send(GroupNotice::Excluded);
        }
        for (name, p) in self.pending.drain() {
            let _ = p.reply.send(Err(GroupError::Gone(name)));
        }
        self.blocked.clear();
        self.grants.clear();
        let now = self.now();
        let data = self.core.data_addr();
        self.core = QsmHost::new(self.config.clone(), data, self.multicast, now);
        self.expected = 1;
    }

    fn start_replica(&mut self, object: ObjectNum, name: String, snapshot: Option<Vec<u8>>) {
        let Some(pending) = self.pending.remove(&name) else {
            // Nobody waits for it any more: leave.
            let now = self.now();
            self.core.leave(now, &name);
            return;
        };
        let (to_replica, from_driver) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::channel(64);
        let notices = crate::group::Notices::default();
        let replica: Arc<std::sync::OnceLock<ObjectRef>> = Arc::default();
        let interface: Interface = Arc::default();
        let handle = QsmHandle {
            object: name.clone(),
            commands: commands_tx,
            notices: notices.clone(),
            replica: replica.clone(),
            interface: interface.clone(),
        };
        self.objects.insert(
            object,
            ObjectEntry {
                name: name.clone(),
                replica: replica.clone(),
                to_replica,
                notices: notices.clone(),
                outbox: VecDeque::new(),
            },
        );
        let task = ReplicaTask {
            object,
            replica,
            name,
            me: self.me.key.to_string(),
            to_driver: self.replica_inputs.clone(),
            notices,
            members: Vec::new(),
            outbox: VecDeque::new(),
            in_flight: VecDeque::new(),
            own_sent: 0,
            own_applied: 0,
            waiting: WaitingCalls::default(),
            runs: DeliveryRuns::default(),
            in_force: LogicInForce {
                version: pending.evolution.version,
                record: pending.evolution.record.clone(),
                ..LogicInForce::default()
            },
            interface,
            next_poll: Instant::now() + pending.evolution.poll_every,
            evolution: pending.evolution.clone(),
            applied: 0,
            applied_at_poll: 0,
            polling: false,
            proposed: 0,
            candidate: None,
            tried: None,
            done: None,
            flushing: false,
            deferred_views: Vec::new(),
        };
        self.main.spawn(task.run(
            pending.runtime,
            pending.logic,
            pending.evolution,
            pending.budgets,
            snapshot,
            from_driver,
            commands,
            handle,
            pending.reply,
        ));
    }

    fn on_frame(&mut self, frame: QsmFrame) {
        let now = self.now();
        match frame.body {
            QsmBody::Membership { seq, message } => {
                if frame.from != self.membership {
                    tracing::warn!("qsm: membership message from {:?}; ignored", frame.from);
                    return;
                }
                if matches!(message, FromMembership::Welcome { .. }) {
                    self.expected = seq;
                }
                if seq != self.expected {
                    self.restart(&format!(
                        "membership message {seq} arrived where {} was due",
                        self.expected
                    ));
                    return;
                }
                self.expected += 1;
                self.core.handle_membership(now, message);
            }
            QsmBody::Peer(message) => match self.core.host_num(&frame.from) {
                Some(num) => self.core.handle_peer(now, num, message),
                None => tracing::debug!("qsm: peer message from unknown {:?}", frame.from),
            },
            QsmBody::Request { .. } => {}
        }
    }

    fn on_input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Join {
                name,
                runtime,
                logic,
                evolution,
                budgets,
                grant,
                reply,
            } => {
                if self.pending.contains_key(&name) || self.core.object_num(&name).is_some() {
                    let _ = reply.send(Err(GroupError::Refused {
                        object: name,
                        reason: "already joined or joining".into(),
                    }));
                    return;
                }
                self.grants.insert(name.clone(), grant);
                self.pending.insert(
                    name.clone(),
                    PendingJoin {
                        runtime,
                        logic,
                        evolution,
                        budgets,
                        reply,
                    },
                );
                self.core.join(&name);
            }
            Input::Leave(name) => {
                self.pending.remove(&name);
                self.grants.remove(&name);
                if let Some(num) = self.core.object_num(&name) {
                    self.objects.remove(&num);
                    self.blocked.remove(&num);
                }
                self.core.leave(now, &name);
            }
            Input::Replica(message) => match message {
                FromReplica::Multicast {
                    object,
                    payload,
                    timestamp_ms,
                } => {
                    if let Some(entry) = self.objects.get_mut(&object) {
                        entry.outbox.push_back((payload, timestamp_ms));
                        self.blocked.insert(object);
                    }
                }
                FromReplica::Applied { object, count } => self.core.delivered(now, object, count),
                FromReplica::Snapshot {
                    object,
                    for_host,
                    view,
                    epoch,
                    cut,
                    state,
                } => self
                    .core
                    .snapshot_taken(object, for_host, view, epoch, cut, state),
                FromReplica::Failed { name, reason } => {
                    tracing::error!("qsm: {name}: {reason}; leaving it");
                    if let Some(num) = self.core.object_num(&name) {
                        self.objects.remove(&num);
                    }
                    self.core.leave(now, &name);
                }
                FromReplica::RequestUpgrade {
                    object,
                    version,
                    record,
                } => self.core.request_upgrade(object, version, record),
                FromReplica::CutTried { object, epoch, ok } => {
                    self.core.cut_tried(now, object, epoch, ok)
                }
            },
            Input::Status(reply) => {
                let _ = reply.send(QsmStatus {
                    stats: self.core.stats(),
                    data: self.sockets.local_addr(),
                    multicast: self.multicast,
                    membership: self.membership,
                    send_rates: self.send_rates.clone(),
                    receive_rate: self.receive_rate,
                    send_drops: self.sockets.send_drops,
                });
            }
        }
    }
}

/// What the replica's jobs on the executor send back to its task.
enum JobDone {
    /// An event was applied (or refused alike everywhere).
    Delivered {
        own: bool,
        /// Why the object rejected it (or its `deliver` failed), if it did.
        rejected: Option<String>,
        multicasts: Vec<Vec<u8>>,
        notifications: Vec<crate::runtime::Notification>,
    },
    /// A view change's multicasts.
    Reacted(Vec<Vec<u8>>),
    /// A snapshot for a joiner.
    Snapshot {
        for_host: u32,
        view: u64,
        epoch: u64,
        cut: Vec<(u32, u64)>,
        state: Vec<u8>,
    },
    /// A call ran.
    Called {
        outcome: Result<crate::runtime::CallOutcome, ReplicaError>,
        reply: oneshot::Sender<Result<Vec<String>, GroupError>>,
    },
    /// The executor quarantined the object.
    Quarantined(String),
    /// A look for a newer record came back.
    Candidate(Result<Option<LogicVersion>, LogicError>),
    /// The logic of the upgrade at the cut of `epoch` is at hand, or not.
    UpgradeLogic {
        epoch: u64,
        version: u64,
        logic: Result<LogicVersion, String>,
    },
    /// The replica tried the upgrade at the cut of `epoch`.
    UpgradeTried {
        epoch: u64,
        version: u64,
        outcome: Result<(LogicVersion, Arc<Logic>, Vec<u8>), String>,
    },
}

/// One object's replica task: it moves work between the driver and the object's
/// mailbox on the executor, where every guest call runs.
struct ReplicaTask {
    object: ObjectNum,
    /// The replica on the executor, set once `init` succeeded.
    replica: Arc<std::sync::OnceLock<ObjectRef>>,
    name: String,
    me: String,
    to_driver: mpsc::Sender<Input>,
    notices: crate::group::Notices,
    members: Vec<Peer>,
    /// Multicasts not yet handed to the driver.
    outbox: VecDeque<(Vec<u8>, u64)>,
    /// Handed to the driver, not yet accepted.
    /// The sizes of the multicasts handed to the driver and not yet accepted (the
    /// driver's queue, counted against the memory cap until the core takes them).
    in_flight: VecDeque<usize>,
    /// This replica's own events: multicast, and applied (they come back in order).
    own_sent: u64,
    own_applied: u64,
    /// Calls waiting for their own events (numbered from 1) to be applied.
    waiting: WaitingCalls,
    /// Events joining the delivery job waiting in the mailbox (tagged: own?).
    runs: DeliveryRuns<bool>,
    /// The logic the replica runs (its group's, which a joiner's state names).
    in_force: LogicInForce,
    /// Set to the methods of the logic it runs if not the one it joined with.
    interface: Interface,
    /// Where newer logic comes from, and how often the oldest member looks.
    evolution: Evolution,
    /// When the oldest member looks for a newer record next.
    next_poll: Instant,
    /// Events applied, and how many when it last looked (it looks only while
    /// the object is used: an idle object sets no timer).
    applied: u64,
    applied_at_poll: u64,
    /// A look is under way.
    polling: bool,
    /// The highest version this member asked an upgrade to.
    proposed: u64,
    /// The newest record found by looking, with its logic loaded.
    candidate: Option<LogicVersion>,
    /// The upgrade between its cut and its decision here: what this replica
    /// made of it.
    tried: Option<Tried>,
    /// Where the replica's jobs report (set once it runs).
    done: Option<mpsc::UnboundedSender<JobDone>>,
    /// From an upgrade's cut to its decision: calls wait, and views are kept
    /// here for whichever logic the decision leaves in force.
    flushing: bool,
    deferred_views: Vec<View>,
}

/// Queue the replica's reaction to a view change (its multicasts go out after).
async fn react_to_view(
    replica: &ObjectRef,
    done: mpsc::UnboundedSender<JobDone>,
    name: String,
    view: View,
) {
    replica
        .submit_waiting(
            64,
            Box::new(move |r| match r.and_then(|r| r.view_changed(&view)) {
                Ok(d) => {
                    let _ = done.send(JobDone::Reacted(d.multicasts));
                }
                Err(e) => tracing::warn!("{name}: view change refused: {e}"),
            }),
        )
        .await;
}

/// What a replica made of an upgrade at its cut.
struct Tried {
    epoch: u64,
    version: u64,
    /// Switched: the new logic's record and methods, and the old logic and its
    /// state to go back to if another replica refused. Not switched: why.
    outcome: Result<(LogicVersion, Arc<Logic>, Vec<u8>), String>,
    /// Whether the record verified here as that version of this object's
    /// (only then does an abort count as having tried the version: a member
    /// cannot burn version numbers with a record that is not theirs).
    verified: bool,
}

impl ReplicaTask {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        runtime: Arc<Runtime>,
        logic: Arc<Logic>,
        evolution: Evolution,
        budgets: Budgets,
        snapshot: Option<Vec<u8>>,
        mut from_driver: mpsc::UnboundedReceiver<ToReplica>,
        mut commands: mpsc::Receiver<Command>,
        handle: QsmHandle,
        ready: oneshot::Sender<Result<QsmHandle, GroupError>>,
    ) {
        let identity = ReplicaIdentity {
            object: self.name.clone(),
            member: self.me.clone(),
        };
        let (logic, snapshot) = match self.logic_of(logic, &evolution, snapshot).await {
            Ok(taken) => taken,
            Err(reason) => {
                let reason = format!("cannot start the replica: {reason}");
                let _ = self
                    .to_driver
                    .send(Input::Replica(FromReplica::Failed {
                        name: self.name.clone(),
                        reason: reason.clone(),
                    }))
                    .await;
                let _ = ready.send(Err(GroupError::Unavailable {
                    object: self.name.clone(),
                    reason,
                }));
                return;
            }
        };
        let (done_tx, mut done) = mpsc::unbounded_channel::<JobDone>();
        self.done = Some(done_tx.clone());
        let quarantined = done_tx.clone();
        let replica = match runtime.instantiate(&logic, identity) {
            Ok(r) => runtime.executor().spawn(r, &budgets, move |reason| {
                let _ = quarantined.send(JobDone::Quarantined(reason));
            }),
            Err(e) => return self.failed(e, ready).await,
        };
        let (init_tx, init) = oneshot::channel();
        replica
            .submit_waiting(
                snapshot.as_ref().map_or(0, Vec::len),
                Box::new(move |r| {
                    let _ = init_tx.send(r.and_then(|r| r.init(snapshot.as_deref())));
                }),
            )
            .await;
        match init.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return self.failed(e, ready).await,
            Err(_) => return,
        }
        let _ = self.replica.set(replica.clone());
        let _ = ready.send(Ok(handle));
        loop {
            self.forward();
            let retry = !self.outbox.is_empty() && self.in_flight.len() < REPLICA_WINDOW;
            let (polls, poll_at) = (self.polls(), self.next_poll);
            tokio::select! {
                biased;
                finished = done.recv() => {
                    let Some(finished) = finished else { break };
                    let mut applied = self.finished(finished).await;
                    while let Ok(more) = done.try_recv() {
                        applied += self.finished(more).await;
                    }
                    if applied == usize::MAX {
                        break;
                    }
                    if applied > 0 {
                        let done = FromReplica::Applied { object: self.object, count: applied };
                        if self.to_driver.send(Input::Replica(done)).await.is_err() {
                            break;
                        }
                    }
                }
                input = from_driver.recv() => {
                    let Some(input) = input else { break };
                    self.handle(&replica, &done_tx, input).await;
                }
                // Calls wait while an upgrade is tried: the replica may run
                // logic that is about to be rolled back.
                command = commands.recv(), if self.outbox.len() < OUTBOX_LIMIT && !self.flushing => {
                    let Some(command) = command else { break };
                    self.command(&replica, &done_tx, command).await;
                }
                _ = tokio::time::sleep(Duration::from_millis(1)), if retry => {}
                _ = tokio::time::sleep_until(poll_at.into()), if polls => {
                    self.poll(&done_tx);
                }
            }
        }
        // A quarantined replica keeps its reason (the first ending stands).
        replica.retire("the object left this node");
        self.waiting
            .fail_all(|| GroupError::ended(&self.name, Some(&replica)));
    }

    /// The logic to run and the guest state to start from: a joiner's state
    /// names its logic, which it loads if it is not `logic` (the version it
    /// joined with).
    async fn logic_of(
        &mut self,
        logic: Arc<Logic>,
        evolution: &Evolution,
        snapshot: Option<Vec<u8>>,
    ) -> Result<(Arc<Logic>, Option<Vec<u8>>), String> {
        let Some(bytes) = snapshot else {
            return Ok((logic, None));
        };
        let taken = match postcard::take_from_bytes::<QsmState>(&bytes) {
            Ok((taken, [])) => taken,
            Ok((_, rest)) => {
                return Err(format!(
                    "the state its group sent has {} bytes past its end",
                    rest.len()
                ));
            }
            Err(e) => return Err(format!("the state its group sent does not decode: {e}")),
        };
        let version = taken.logic.version;
        if version == evolution.version {
            self.in_force.attempted = taken.logic.attempted;
            self.in_force.last = taken.logic.last;
            return Ok((logic, Some(taken.state)));
        }
        if taken.logic.record.is_empty() {
            return Err(format!(
                "its group runs version {version} of its record but did not send that record \
                 (this host resolved version {})",
                evolution.version
            ));
        }
        let Some(source) = &evolution.source else {
            return Err(format!(
                "its group runs version {version} of its record, and this host (on version {}) \
                 has no directory to load that logic from",
                evolution.version
            ));
        };
        // Once: the membership service counts this host a member already, and
        // the join's own timeout is what the caller waits on.
        let loaded = source
            .verify_in_force(&self.name, &taken.logic.record)
            .await
            .map_err(|e| format!("its group runs version {version} of its record: {e}"))?;
        if loaded.version != version || loaded.driver != "qsm" {
            return Err(format!(
                "its group's state names version {version} of its record, but that record is \
                 version {} for the {} driver",
                loaded.version, loaded.driver
            ));
        }
        tracing::info!(
            "{}: its group runs version {version} of its record (this host resolved {}): \
             running that",
            self.name,
            evolution.version
        );
        *self.interface.lock().expect("interface") =
            Some(Arc::new(loaded.logic.interface().clone()));
        self.in_force = LogicInForce {
            version: loaded.version,
            record: loaded.record,
            attempted: taken.logic.attempted,
            last: taken.logic.last,
            ..LogicInForce::default()
        };
        Ok((loaded.logic, Some(taken.state)))
    }

    async fn failed(self, e: ReplicaError, ready: oneshot::Sender<Result<QsmHandle, GroupError>>) {
        let reason = format!("cannot start the replica: {e}");
        let _ = self
            .to_driver
            .send(Input::Replica(FromReplica::Failed {
                name: self.name.clone(),
                reason,
            }))
            .await;
        let _ = ready.send(Err(e.into()));
    }

    /// Hand queued multicasts to the driver while the window allows.
    fn forward(&mut self) {
        while self.in_flight.len() < REPLICA_WINDOW {
            let Some((payload, timestamp_ms)) = self.outbox.pop_front() else {
                return;
            };
            let bytes = payload.len();
            let message = Input::Replica(FromReplica::Multicast {
                object: self.object,
                payload,
                timestamp_ms,
            });
            match self.to_driver.try_send(message) {
                Ok(()) => self.in_flight.push_back(bytes),
                Err(mpsc::error::TrySendError::Full(Input::Replica(FromReplica::Multicast {
                    payload,
                    timestamp_ms,
                    ..
                }))) => {
                    self.outbox.push_front((payload, timestamp_ms));
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Queue the object's multicasts for the driver. Their bytes count against its
    /// memory cap until the driver takes them; past the cap it is quarantined (the
    /// task hears of it from the executor and stops).
    fn multicast(&mut self, payloads: Vec<Vec<u8>>) {
        let now = crate::local::system_time_ms();
        self.own_sent += payloads.len() as u64;
        let bytes = payloads.iter().map(Vec::len).sum();
        if let Some(replica) = self.replica.get() {
            let _ = replica.hold(bytes, QUEUED_MULTICASTS);
        }
        self.outbox.extend(payloads.into_iter().map(|p| (p, now)));
    }

    fn notify(&self, notifications: Vec<crate::runtime::Notification>) {
        for n in notifications {
            let _ = self.notices.send(GroupNotice::Notification {
                topic: n.topic,
                detail: n.detail,
            });
        }
    }

    /// Act on a finished job. Returns how many events it applied (delivery credit
    /// to return), or `usize::MAX` if the object was quarantined.
    async fn finished(&mut self, finished: JobDone) -> usize {
        match finished {
            JobDone::Delivered {
                own,
                rejected,
                multicasts,
                notifications,
            } => {
                self.notify(notifications);
                self.multicast(multicasts);
                self.applied += 1;
                if own {
                    self.own_applied += 1;
                    self.waiting.applied(&self.name, self.own_applied, rejected);
                }
                1
            }
            JobDone::Reacted(multicasts) => {
                self.multicast(multicasts);
                0
            }
            JobDone::Snapshot {
                for_host,
                view,
                epoch,
                cut,
                state,
            } => {
                let message = FromReplica::Snapshot {
                    object: self.object,
                    for_host,
                    view,
                    epoch,
                    cut,
                    state,
                };
                let _ = self.to_driver.send(Input::Replica(message)).await;
                0
            }
            JobDone::Called { outcome, reply } => {
                match outcome {
                    Ok(outcome) => {
                        let results = outcome.results_wave();
                        self.notify(outcome.notifications);
                        if outcome.multicasts.is_empty() {
                            let _ = reply.send(Ok(results));
                        } else {
                            let first = self.own_sent + 1;
                            self.multicast(outcome.multicasts);
                            self.waiting.push(first, self.own_sent, results, reply);
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
                0
            }
            JobDone::Candidate(found) => {
                self.candidate_found(found).await;
                0
            }
            JobDone::UpgradeLogic {
                epoch,
                version,
                logic,
            } => {
                self.try_upgrade(epoch, version, logic).await;
                0
            }
            JobDone::UpgradeTried {
                epoch,
                version,
                outcome,
            } => {
                // The job ran only for a record that verified as `version`.
                self.tried(epoch, version, outcome, true).await;
                0
            }
            JobDone::Quarantined(reason) => {
                let _ = self.notices.send(GroupNotice::Quarantined(reason.clone()));
                let message = FromReplica::Failed {
                    name: self.name.clone(),
                    reason: format!("quarantined: {reason}"),
                };
                let _ = self.to_driver.send(Input::Replica(message)).await;
                usize::MAX
            }
        }
    }

    /// Queue the work for one input from the driver on the executor (waiting for
    /// mailbox credit: the driver's delivery credit bounds what can pile up).
    async fn handle(
        &mut self,
        replica: &ObjectRef,
        done: &mpsc::UnboundedSender<JobDone>,
        input: ToReplica,
    ) {
        let done = done.clone();
        let name = self.name.clone();
        if !matches!(input, ToReplica::Deliver(..)) {
            // Later events must not join a run queued before this input's job.
            self.runs.close();
        }
        match input {
            ToReplica::Deliver(event, held) => {
                let own = event.sender == self.me;
                let bytes = event.payload.len() + EVENT_OVERHEAD;
                // Joining the run of the delivery job still waiting in the mailbox:
                // what the driver held for the event stays held until the job
                // takes the run.
                let (own, event) = match self.runs.join(own, event, held) {
                    Ok(()) => return,
                    Err(back) => back,
                };
                let (run, opened) = self.runs.start(own, event, bytes);
                let budget = replica.clone();
                replica
                    .submit_waiting(
                        bytes,
                        Box::new(move |r| {
                            apply_run(r, &run, &budget, &name, |outcome| {
                                let _ = done.send(JobDone::Delivered {
                                    own: outcome.tag,
                                    rejected: outcome.rejected,
                                    multicasts: outcome.multicasts,
                                    notifications: outcome.notifications,
                                });
                            });
                        }),
                    )
                    .await;
                self.runs.opened(opened);
                // In the mailbox now, which counts it itself.
                replica.release(held);
            }
            ToReplica::View(view, members) => {
                self.members = members;
                if self.flushing {
                    // For the logic the upgrade's decision leaves in force.
                    self.deferred_views.push(view);
                } else {
                    react_to_view(replica, done, name, view).await;
                }
            }
            ToReplica::TakeSnapshot {
                for_host,
                view,
                epoch,
                cut,
            } => {
                // (its methods are not part of what a joiner is sent)
                let logic = self.in_force.clone();
                replica
                    .submit_waiting(
                        0,
                        Box::new(move |r| match r.and_then(|r| r.snapshot()) {
                            Ok(state) => {
                                let taken = QsmState { logic, state };
                                let state = postcard::to_allocvec(&taken)
                                    .expect("postcard encoding to a Vec cannot fail");
                                let _ = done.send(JobDone::Snapshot {
                                    for_host,
                                    view,
                                    epoch,
                                    cut,
                                    state,
                                });
                            }
                            Err(e) => tracing::error!("{name}: cannot snapshot for a joiner: {e}"),
                        }),
                    )
                    .await;
            }
            ToReplica::UpgradeCut {
                epoch,
                version,
                record,
            } => {
                self.flushing = true;
                self.upgrade_cut(epoch, version, record, done);
            }

            ToReplica::UpgradeDecided {
                epoch,
                version,
                committed,
            } => {
                self.upgrade_decided(replica, epoch, version, committed)
                    .await;
                self.flushing = false;
                for view in std::mem::take(&mut self.deferred_views) {
                    react_to_view(replica, done.clone(), name.clone(), view).await;
                }
            }
            ToReplica::Accepted(n) => {
                let accepted = self.in_flight.len().min(n);
                let bytes: usize = self.in_flight.drain(..accepted).sum();
                if let Some(replica) = self.replica.get() {
                    replica.release(bytes);
                }
            }
        }
    }

    /// Whether this member looks for newer records now: it is the object's
    /// oldest member, has a directory to look in, the object was used since it
    /// last looked, and no look or upgrade is under way.
    fn polls(&self) -> bool {
        self.evolution.source.is_some()
            && !self.evolution.poll_every.is_zero()
            && self.applied != self.applied_at_poll
            && !self.polling
            && self.tried.is_none()
            && self
                .members
                .first()
                .is_some_and(|oldest| oldest.key.to_string() == self.me)
    }

    /// Look for a newer record off this task.
    fn poll(&mut self, done: &mpsc::UnboundedSender<JobDone>) {
        self.next_poll = Instant::now() + self.evolution.poll_every;
        self.applied_at_poll = self.applied;
        let Some(source) = self.evolution.source.clone() else {
            return;
        };
        self.polling = true;
        let than = self.in_force.newest().max(self.proposed);
        let (name, done) = (self.name.clone(), done.clone());
        tokio::spawn(async move {
            let found = source.newer(&name, than).await;
            let _ = done.send(JobDone::Candidate(found));
        });
    }

    /// A look came back: ask the membership service for the upgrade.
    async fn candidate_found(&mut self, found: Result<Option<LogicVersion>, LogicError>) {
        self.polling = false;
        match found {
            Ok(Some(candidate))
                if candidate.version > self.in_force.newest().max(self.proposed) =>
            {
                tracing::info!(
                    "{}: asking for the upgrade to version {} of its record",
                    self.name,
                    candidate.version
                );
                self.proposed = candidate.version;
                let ask = FromReplica::RequestUpgrade {
                    object: self.object,
                    version: candidate.version,
                    record: candidate.record.clone(),
                };
                self.candidate = Some(candidate);
                let _ = self.to_driver.send(Input::Replica(ask)).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "{}: cannot look for a newer version of its logic: {e}",
                self.name
            ),
        }
    }

    /// An upgrade's cut: get its logic (verified as the zone's record now) off
    /// this task, then try it ([`JobDone::UpgradeLogic`]).
    fn upgrade_cut(
        &mut self,
        epoch: u64,
        version: u64,
        record: Vec<u8>,
        done: mpsc::UnboundedSender<JobDone>,
    ) {
        if let Some(candidate) = self.candidate.as_ref().filter(|c| c.record == record) {
            let logic = Ok(candidate.clone());
            let _ = done.send(JobDone::UpgradeLogic {
                epoch,
                version,
                logic,
            });
            return;
        }
        let Some(source) = self.evolution.source.clone() else {
            let logic = Err("this host has no directory to verify the record with".to_string());
            let _ = done.send(JobDone::UpgradeLogic {
                epoch,
                version,
                logic,
            });
            return;
        };
        let name = self.name.clone();
        tokio::spawn(async move {
            let usage = crate::driver::RecordUse::Upgrade;
            let logic = crate::driver::verify_patiently(source.as_ref(), &name, &record, usage)
                .await
                .map_err(|e| e.to_string());
            let _ = done.send(JobDone::UpgradeLogic {
                epoch,
                version,
                logic,
            });
        });
    }

    /// Try the upgrade on the replica, in its order (every event before the cut
    /// is ahead of it in the mailbox, none after it is delivered until the
    /// decision), keeping the old logic and state aside.
    async fn try_upgrade(&mut self, epoch: u64, version: u64, logic: Result<LogicVersion, String>) {
        let newest = self.in_force.newest();
        let verified = logic.as_ref().is_ok_and(|l| l.version == version);
        let logic = logic.and_then(|logic| {
            if version <= newest {
                // The same at every replica: what was tried travels with state.
                Err(format!(
                    "version {version} is not newer than version {newest}, in force or tried \
                     already"
                ))
            } else if logic.version != version {
                Err(format!(
                    "its record is version {}, not {version}",
                    logic.version
                ))
            } else if logic.driver != "qsm" {
                Err(format!(
                    "it moves the object to the {} driver, which a live upgrade cannot do: \
                     leave and join it again",
                    logic.driver
                ))
            } else {
                Ok(logic)
            }
        });
        let (logic, replica) = match (logic, self.replica.get()) {
            (Ok(logic), Some(replica)) => (logic, replica.clone()),
            (logic, _) => {
                let reason = logic
                    .err()
                    .unwrap_or_else(|| "the replica is not running".to_string());
                self.tried(epoch, version, Err(reason), verified).await;
                return;
            }
        };
        let from = self.in_force.version;
        let Some(done) = self.done.clone() else {
            return;
        };
        replica
            .submit_waiting(
                logic.record.len(),
                Box::new(move |r| {
                    let outcome = r.and_then(|r| {
                        let before = r.snapshot()?;
                        let old = r.logic().clone();
                        r.upgrade(logic.logic.clone(), from, version)?;
                        Ok((old, before))
                    });
                    let outcome = outcome
                        .map(|(old, before)| (logic, old, before))
                        .map_err(|e| e.to_string());
                    let _ = done.send(JobDone::UpgradeTried {
                        epoch,
                        version,
                        outcome,
                    });
                }),
            )
            .await;
    }

    /// Keep what the replica made of the upgrade at the cut of `epoch`, and
    /// send its verdict to the other members.
    async fn tried(
        &mut self,
        epoch: u64,
        version: u64,
        outcome: Result<(LogicVersion, Arc<Logic>, Vec<u8>), String>,
        verified: bool,
    ) {
        let ok = outcome.is_ok();
        if let Err(reason) = &outcome {
            tracing::warn!(
                "{}: the upgrade to version {version} failed on this replica: {reason}",
                self.name
            );
        }
        self.tried = Some(Tried {
            epoch,
            version,
            outcome,
            verified,
        });
        let verdict = FromReplica::CutTried {
            object: self.object,
            epoch,
            ok,
        };
        let _ = self.to_driver.send(Input::Replica(verdict)).await;
    }

    /// Every member's verdict is in: keep the new logic, or go back to the old
    /// one and its state, in the replica's order (before any later event).
    async fn upgrade_decided(
        &mut self,
        replica: &ObjectRef,
        epoch: u64,
        version: u64,
        committed: bool,
    ) {
        let tried = self
            .tried
            .take()
            .filter(|t| t.epoch == epoch && t.version == version);
        let from = self.in_force.version;
        // Tried and decided at once, as `lo status` (and `lo publish --watch`)
        // shows them.
        if committed || tried.as_ref().is_some_and(|t| t.verified) {
            self.in_force.begin_attempt(version);
        }
        // Look for newer records afresh: an ask another member made first may
        // have taken this epoch.
        self.proposed = 0;
        self.candidate = None;
        match (committed, tried.map(|t| t.outcome)) {
            (true, Some(Ok((logic, _, _)))) => {
                let interface = Arc::new(logic.logic.interface().clone());
                *self.interface.lock().expect("interface") = Some(interface.clone());
                self.in_force.version = version;
                self.in_force.record = logic.record;
                self.in_force.interface = Some(interface);
                self.in_force.last = Some(format!(
                    "switched from version {from} to {version} at the flush that started logic \
                     epoch {epoch}"
                ));
                tracing::info!("{}: logic {}", self.name, self.in_force.line());
            }
            (true, _) => {
                // This replica's refusal would have aborted it: the core and this
                // task disagree, and running on would fork the group.
                replica.quarantine(&format!(
                    "the upgrade to version {version} was decided without this replica's \
                     switch; stopped here rather than run other logic than its group"
                ));
            }
            (false, mine) => {
                let why = match &mine {
                    Some(Err(reason)) => reason.clone(),
                    _ => "another replica refused it".to_string(),
                };
                self.in_force.last = Some(format!(
                    "the upgrade to version {version} was aborted on every replica: {why}"
                ));
                tracing::warn!("{}: logic {}", self.name, self.in_force.line());
                if let Some(Ok((_, old, before))) = mine {
                    let handle = replica.clone();
                    let name = self.name.clone();
                    replica
                        .submit_waiting(
                            before.len(),
                            Box::new(move |r| {
                                let back = r.and_then(|r| {
                                    r.replace_logic(old);
                                    r.init(Some(&before))
                                });
                                if let Err(e) = back {
                                    handle.quarantine(&format!(
                                        "{name}: cannot go back to its logic after an aborted \
                                         upgrade: {e}"
                                    ));
                                }
                            }),
                        )
                        .await;
                }
            }
        }
    }

    async fn command(
        &mut self,
        replica: &ObjectRef,
        done: &mpsc::UnboundedSender<JobDone>,
        command: Command,
    ) {
        self.runs.close();
        match command {
            Command::Call {
                method,
                args,
                reply,
            } => {
                let done = done.clone();
                let bytes = method.len() + args.iter().map(String::len).sum::<usize>();
                replica
                    .submit_waiting(
                        bytes,
                        Box::new(move |r| {
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            let outcome = r.and_then(|r| r.call_wave(&method, &args));
                            let _ = done.send(JobDone::Called { outcome, reply });
                        }),
                    )
                    .await;
            }
            Command::Status(reply) => {
                let m = replica.metrics();
                let mut status = GroupStatus {
                    members: self.members.clone(),
                    delivered: m.events_applied,
                    member: true,
                    sequencer: false,
                    events_applied: m.events_applied,
                    refused: None,
                    ..GroupStatus::default()
                };
                status.show_logic(&self.in_force);
                let _ = reply.send(status);
            }
            Command::Snapshot(reply) => {
                replica
                    .submit_waiting(
                        0,
                        Box::new(move |r| {
                            let _ =
                                reply.send(r.and_then(|r| r.snapshot()).map_err(GroupError::from));
                        }),
                    )
                    .await;
            }
        }
    }
}
