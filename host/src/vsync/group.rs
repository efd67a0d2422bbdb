//! A member's side of one vsync group, over any [`Link`] (QUIC in the host, an
//! in-process faulty network in the simulations): the Raft instance, its network
//! client, the handler of requests from other members, joins, leaves, failure
//! exclusion, writes (forwarded to the leader) and linearizable read barriers.
//!
//! # Group commit
//! openraft 0.9's leader appends each `client_write` on its own and waits for
//! the append's fsync before it takes the next (its log-flushed callback is not
//! asynchronous yet), so one entry per command costs a durable group one fsync
//! per command at the leader. The leader therefore orders the commands that
//! wait together as one [`Ordered::Events`] entry: a command that arrives
//! while [`BATCH_WRITERS`] entries are already being written waits for the
//! next, and joins every command that arrived meanwhile (up to
//! [`BATCH_COMMANDS`] commands or [`BATCH_BYTES`] bytes). An idle group writes
//! a lone command at once, so batching adds no latency; a busy one writes one
//! fsync (and one replication round) for many. The entry is one log entry, so
//! its commands commit, survive a crash, or are lost together; each is applied
//! and answered on its own, as if it had an entry of its own (at its own
//! [`super::types::Position`]).

use super::machine::{Application, Machine};
use super::store::LogStore;
use super::types::{
    Applied, Command, LogId, LogicChange, Member, Ordered, Raft, StateDigest, TypeConfig, node_id,
};
use liveobjects_directory::keys::PublicKey;
use liveobjects_directory::record::{AccessPolicy, Grant, Signed};
use openraft::error::{
    ChangeMembershipError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError,
    RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
// Tokio's clock (the real one, or the simulations' paused one), as openraft uses.
use tokio::time::Instant;

/// A request between members of a group.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// Raft: replicate entries (and heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft: ask for a vote.
    Vote(VoteRequest<u64>),
    /// Raft: a chunk of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A host asks to become a member (handled by the leader).
    Join {
        /// The joiner.
        member: Member,
        /// Its grant, for `grants:` policies.
        grant: Option<Signed<Grant>>,
    },
    /// A member leaves.
    Leave {
        /// Who.
        member: Member,
    },
    /// Order and commit commands, each on its own (handled by the leader): a
    /// member forwards the commands that wait together in one request.
    Writes(Vec<Command>),
    /// The leader's read index (a linearizable read waits until it has applied it).
    ReadIndex,
    /// Order the sender's digest of its state at a checked position (handled by
    /// the leader).
    Digest(StateDigest),
    /// The receiver's state, applied up to at least this position: the sender
    /// diverged and repairs from it.
    State {
        /// The sender's applied position.
        at_least: u64,
    },
}

/// Why a leader-only request was not served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NotServed {
    /// Ask the leader instead (if known).
    #[error("not the leader")]
    NotLeader(Option<Member>),
    /// Refused (policy) or failed.
    #[error("{0}")]
    Failed(String),
    /// Not now: ask again (a joiner still catching up).
    #[error("{0}")]
    Busy(String),
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Rpc::Append`].
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// To [`Rpc::Vote`].
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// To [`Rpc::Snapshot`].
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// To [`Rpc::Join`] and [`Rpc::Leave`].
    Membership(Result<(), NotServed>),
    /// To [`Rpc::Digest`]: its log position and what applying it did.
    Write(Result<(u64, Applied), NotServed>),
    /// To [`Rpc::Writes`]: each command's answer, in order.
    Writes(Vec<Result<(u64, Applied), NotServed>>),
    /// To [`Rpc::ReadIndex`]: the log index to have applied.
    ReadIndex(Result<u64, NotServed>),
    /// To [`Rpc::State`]: the position applied and the state's snapshot body.
    State(Result<(LogId, Vec<u8>), NotServed>),
    /// The receiver does not run this group, or the sender may not talk to it.
    NoGroup,
}

impl Reply {
    /// The answer to a [`Rpc::Digest`], if this is one.
    fn written(self) -> Option<Result<(u64, Applied), NotServed>> {
        match self {
            Reply::Write(written) => Some(written),
            _ => None,
        }
    }
}

/// A transport between members.
pub trait Link: Clone + Send + Sync + 'static {
    /// Send `rpc` for `group` to `to` and wait at most `timeout` for the reply.
    fn call(
        &self,
        to: Member,
        group: &str,
        rpc: Rpc,
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply, String>> + Send;
}

/// Timing of a group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Leader heartbeat (milliseconds).
    pub heartbeat_ms: u64,
    /// Election timeout range (milliseconds).
    pub election_ms: (u64, u64),
    /// A voter (or learner) the leader has not heard from for this long is
    /// removed, within the limits [`Group::tick`] describes.
    pub exclude_after: Duration,
    /// Exclusion never leaves fewer voters than this (as Consul's autopilot
    /// `min_quorum`): a smaller group keeps a failed member in its view.
    pub min_voters: usize,
    /// A snapshot is taken every this many entries (and older entries purged).
    pub snapshot_every: u64,
    /// How long a write, read barrier or join keeps retrying.
    pub request_timeout: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            heartbeat_ms: 100,
            election_ms: (600, 1200),
            exclude_after: Duration::from_secs(3),
            min_voters: 3,
            snapshot_every: 2000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a group operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupFailure {
    /// The object refused the command: it aborted at every replica.
    #[error("the object refused it: {0}")]
    Refused(String),
    /// Not done within the time limit (no leader reachable: a minority, or the
    /// group is still electing).
    #[error("no leader answered within {0:?} (is a majority of the group up?)")]
    Timeout(Duration),
    /// Refused by the group (policy) or failed.
    #[error("{0}")]
    Failed(String),
}

/// When each member was last heard from (by this member's network client).
#[derive(Clone, Default)]
struct Liveness(Arc<Mutex<HashMap<u64, Instant>>>);

impl Liveness {
    fn heard(&self, id: u64) {
        self.0.lock().expect("liveness").insert(id, Instant::now());
    }

    fn last(&self, id: u64) -> Option<Instant> {
        self.0.lock().expect("liveness").get(&id).copied()
    }
}

/// openraft's network factory over a [`Link`].
pub struct Network<L> {
    link: L,
    group: String,
    liveness: Liveness,
}

/// A client for one target.
pub struct Client<L> {
    link: L,
    group: String,
    target: u64,
    member: Member,
    liveness: Liveness,
}

impl<L: Link> RaftNetworkFactory<TypeConfig> for Network<L> {
    type Network = Client<L>;

    async fn new_client(&mut self, target: u64, node: &Member) -> Client<L> {
        Client {
            link: self.link.clone(),
            group: self.group.clone(),
            target,
            member: *node,
            liveness: self.liveness.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, Member, RaftError<u64, E>>>;

impl<L: Link> Client<L> {
    async fn send(&self, rpc: Rpc, option: &RPCOption) -> Result<Reply, Unreachable> {
        match self
            .link
            .call(self.member, &self.group, rpc, option.hard_ttl())
            .await
        {
            Ok(Reply::NoGroup) => Err(Unreachable::new(&std::io::Error::other(
                "the target does not run this group",
            ))),
            Ok(reply) => {
                // Alive means its Raft answered, not merely its endpoint.
                if matches!(
                    reply,
                    Reply::Append(Ok(_)) | Reply::Vote(Ok(_)) | Reply::Snapshot(Ok(_))
                ) {
                    self.liveness.heard(self.target);
                }
                Ok(reply)
            }
            Err(e) => Err(Unreachable::new(&std::io::Error::other(e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<u64, Member, RaftError<u64, E>> {
        RPCError::Network(NetworkError::new(&std::io::Error::other(
            "unexpected reply kind",
        )))
    }

    // openraft's error types, as its network trait requires.
    #[allow(clippy::result_large_err)]
    fn remote<T, E: std::error::Error>(&self, r: Result<T, RaftError<u64, E>>) -> RpcResult<T, E> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<L: Link> RaftNetwork<TypeConfig> for Client<L> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        match self.send(Rpc::Append(rpc), &option).await? {
            Reply::Append(r) => self.remote(r),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        match self.send(Rpc::Snapshot(rpc), &option).await? {
            Reply::Snapshot(r) => self.remote(r),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        match self.send(Rpc::Vote(rpc), &option).await? {
            Reply::Vote(r) => self.remote(r),
            _ => Err(self.unexpected()),
        }
    }
}

/// One member's side of a group.
pub struct Group<A, L> {
    name: String,
    me: Member,
    raft: Raft,
    machine: Machine<A>,
    link: L,
    config: GroupConfig,
    policy: AccessPolicy,
    liveness: Liveness,
    /// This start's incarnation number (random): its commands are numbered from 1.
    boot: u64,
    /// The last command number this start used.
    last_seq: std::sync::atomic::AtomicU64,
    /// Peers a joining member asked (and leaders they named): until it is in a
    /// membership config, only they may replicate to it.
    trusted: Mutex<BTreeSet<PublicKey>>,
    stopped: std::sync::atomic::AtomicBool,
    /// The grant this member joined with (asked again on a re-join).
    grant: Mutex<Option<Signed<Grant>>>,
    /// What [`tick`](Self::tick) keeps between calls.
    watch: Mutex<Watch>,
    /// Commands waiting to be ordered by this member while it leads (see the
    /// module docs' group commit).
    batching: Arc<Mutex<Batching>>,
    /// Commands waiting to be forwarded to the leader.
    forwarding: Arc<Mutex<Forwarding>>,
}

/// Entries of commands a leader writes at once (see the module docs): two, so
/// that one entry's fsync overlaps the previous one's replication.
pub const BATCH_WRITERS: usize = 2;
/// The most commands in one entry.
pub const BATCH_COMMANDS: usize = 512;
/// The most payload bytes in one entry (a bigger command goes alone): entries
/// travel whole in the leader's appends to its followers.
pub const BATCH_BYTES: usize = 1 << 20;

/// A command's answer, once its entry is applied at the leader.
type Answer = tokio::sync::oneshot::Sender<Result<(u64, Applied), NotServed>>;
/// Where a command's [`Answer`] comes.
type Answered = tokio::sync::oneshot::Receiver<Result<(u64, Applied), NotServed>>;

/// The answer that comes to `answered`; a writer that went away (the member
/// stopped) answers that.
async fn answered(answered: Answered) -> Result<(u64, Applied), NotServed> {
    answered
        .await
        .unwrap_or_else(|_| Err(NotServed::Failed("this member stopped".into())))
}

/// Whether `command` joins `commands` commands of `bytes` bytes in one entry
/// (or one forwarded request): within [`BATCH_COMMANDS`] and [`BATCH_BYTES`],
/// and a command too big for either still goes, alone.
fn fits(commands: usize, bytes: usize, command: &Command) -> bool {
    commands == 0 || (commands < BATCH_COMMANDS && bytes + command.bytes() <= BATCH_BYTES)
}

/// Commands a member waits to forward to its leader, and how many requests
/// carrying them are out.
#[derive(Default)]
struct Forwarding {
    waiting: VecDeque<(Member, Command, Answer)>,
    senders: usize,
}

/// Forward the waiting commands to their leaders, one [`Rpc::Writes`] at a
/// time (the commands waiting for the first one's leader, within the limits of
/// an entry), until none waits.
async fn forward_batches<L: Link>(link: L, group: String, forwarding: Arc<Mutex<Forwarding>>) {
    loop {
        let (leader, batch) = {
            let mut f = forwarding.lock().expect("forwarding");
            let Some(leader) = f.waiting.front().map(|(to, _, _)| *to) else {
                f.senders -= 1;
                return;
            };
            let mut bytes = 0;
            let mut batch = Vec::new();
            let mut others = VecDeque::new();
            while let Some((to, command, answer)) = f.waiting.pop_front() {
                if to != leader || !fits(batch.len(), bytes, &command) {
                    others.push_back((to, command, answer));
                } else {
                    bytes += command.bytes();
                    batch.push((command, answer));
                }
            }
            f.waiting = others;
            (leader, batch)
        };
        let (commands, answers): (Vec<Command>, Vec<Answer>) = batch.into_iter().unzip();
        let count = commands.len();
        let replies = match link
            .call(
                leader,
                &group,
                Rpc::Writes(commands),
                Duration::from_secs(5),
            )
            .await
        {
            Ok(Reply::Writes(replies)) if replies.len() == count => replies,
            _ => vec![Err(NotServed::NotLeader(None)); count],
        };
        for (answer, reply) in answers.into_iter().zip(replies) {
            let _ = answer.send(reply);
        }
    }
}

/// Commands waiting at a leader for an entry, and how many entries are being
/// written.
#[derive(Default)]
struct Batching {
    waiting: VecDeque<(Command, Answer)>,
    writers: usize,
}

/// Write the waiting commands as entries, one at a time, until none waits
/// (one of [`BATCH_WRITERS`]). An entry not applied within `patience` (this
/// member lost its leadership with the entry uncommitted, and was cut off) is
/// given up: its commands are answered "busy", and their callers retry (a retry
/// of a command that did commit is answered as a duplicate), so that one stuck
/// entry cannot stop the member's later writes.
async fn write_batches(raft: Raft, batching: Arc<Mutex<Batching>>, patience: Duration) {
    loop {
        let batch: Vec<(Command, Answer)> = {
            let mut b = batching.lock().expect("batching");
            if b.waiting.is_empty() {
                b.writers -= 1;
                return;
            }
            let mut bytes = 0;
            let mut batch = Vec::new();
            while let Some((command, _)) = b.waiting.front() {
                if !fits(batch.len(), bytes, command) {
                    break;
                }
                bytes += command.bytes();
                batch.extend(b.waiting.pop_front());
            }
            batch
        };
        let (mut commands, answers): (Vec<Command>, Vec<Answer>) = batch.into_iter().unzip();
        let data = if commands.len() == 1 {
            Ordered::Event(commands.remove(0))
        } else {
            Ordered::Events(commands)
        };
        let written = match tokio::time::timeout(patience, raft.client_write(data)).await {
            Ok(written) => written
                .map(|r| (r.log_id.index, r.data))
                .map_err(|e| not_served(&e, |e| e.forward_to_leader())),
            Err(_) => Err(NotServed::Busy(format!(
                "the entry was not committed within {patience:?}"
            ))),
        };
        match written {
            Ok((index, Applied::Each(each))) if each.len() == answers.len() => {
                for (answer, applied) in answers.into_iter().zip(each) {
                    let _ = answer.send(Ok((index, applied)));
                }
            }
            Ok((_, Applied::Each(each))) => {
                let failed = NotServed::Failed(format!(
                    "an entry of {} commands was answered with {} outcomes",
                    answers.len(),
                    each.len()
                ));
                for answer in answers {
                    let _ = answer.send(Err(failed.clone()));
                }
            }
            // One command's outcome, or the whole entry's (refused by a
            // stopped object).
            Ok((index, applied)) => {
                for answer in answers {
                    let _ = answer.send(Ok((index, applied.clone())));
                }
            }
            Err(e) => {
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A member's upkeep state (see [`Group::tick`]).
struct Watch {
    /// The term in which this member last saw itself lead, and since when.
    leading: Option<(u64, Instant)>,
    /// When a leader last replicated to this member (or this member last acted
    /// on its silence, or started).
    quiet_since: Instant,
    /// When this member last acted on it.
    acted: Instant,
    /// How long without a leader before this member acts (drawn anew each time).
    patience: Duration,
    /// Draws `patience`.
    rng: StdRng,
}

impl Watch {
    /// Between one and three maximal election timeouts.
    fn draw(&mut self, election_max_ms: u64) -> Duration {
        let max = election_max_ms.max(1);
        Duration::from_millis(self.rng.random_range(max..3 * max))
    }
}

impl<A: Application, L: Link> Group<A, L> {
    /// Start this member's Raft instance for group `name` over `store` and `app`.
    /// A restarted durable member resumes from its log and snapshot.
    pub async fn start(
        name: &str,
        me: Member,
        app: A,
        store: LogStore,
        link: L,
        config: GroupConfig,
        policy: AccessPolicy,
    ) -> Result<Arc<Self>, String> {
        let machine = Machine::new(app, store.database()).await?;
        let raft_config = Config {
            cluster_name: name.to_string(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_ms.0,
            election_timeout_max: config.election_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every / 2,
            install_snapshot_timeout: 2_000,
            ..Config::default()
        }
        .validate()
        .map_err(|e| format!("vsync configuration: {e}"))?;
        let liveness = Liveness::default();
        let network = Network {
            link: link.clone(),
            group: name.to_string(),
            liveness: liveness.clone(),
        };
        let raft = Raft::new(
            node_id(&me.key),
            Arc::new(raft_config),
            network,
            store,
            machine.clone(),
        )
        .await
        .map_err(|e| format!("starting raft for {name}: {e}"))?;
        let boot = {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| format!("no random source: {e}"))?;
            u64::from_le_bytes(b)
        };
        let mut watch = Watch {
            leading: None,
            quiet_since: Instant::now(),
            acted: Instant::now(),
            patience: Duration::ZERO,
            rng: StdRng::seed_from_u64(boot),
        };
        watch.patience = watch.draw(config.election_ms.1);
        Ok(Arc::new(Group {
            name: name.to_string(),
            me,
            raft,
            machine,
            link,
            config,
            policy,
            liveness,
            boot,
            last_seq: std::sync::atomic::AtomicU64::new(0),
            trusted: Mutex::new(BTreeSet::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            grant: Mutex::new(None),
            watch: Mutex::new(watch),
            batching: Arc::default(),
            forwarding: Arc::default(),
        }))
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This member.
    pub fn me(&self) -> Member {
        self.me
    }

    /// The Raft instance.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The replicated object and what was applied.
    pub fn machine(&self) -> &Machine<A> {
        &self.machine
    }

    /// Start a new group with this member alone.
    pub async fn found(&self) -> Result<(), GroupFailure> {
        let members = BTreeMap::from([(node_id(&self.me.key), self.me)]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Already initialized (a restarted durable member): fine.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(GroupFailure::Failed(e.to_string())),
        }
    }

    /// The current voters.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let nodes: BTreeMap<u64, Member> = metrics
            .membership_config
            .nodes()
            .map(|(id, m)| (*id, *m))
            .collect();
        metrics
            .membership_config
            .voter_ids()
            .filter_map(|v| nodes.get(&v).copied())
            .collect()
    }

    /// Whether this member is a voter now.
    pub fn is_voter(&self) -> bool {
        let id = node_id(&self.me.key);
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .any(|v| v == id)
    }

    /// Whether this member leads the group now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    fn leader(&self) -> Option<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, m)| *m)
    }

    /// Ask `contact` (and then the leader it names) to add this member, for at
    /// most `patience` if nobody answers (for [`GroupConfig::request_timeout`]
    /// once a member has); returns once it is a voter.
    pub async fn join(
        &self,
        contact: Member,
        grant: Option<Signed<Grant>>,
        patience: Duration,
    ) -> Result<(), GroupFailure> {
        *self.grant.lock().expect("grant") = grant.clone();
        let started = Instant::now();
        let mut deadline = started + patience;
        let mut target = contact;
        loop {
            self.trusted.lock().expect("trusted").insert(target.key);
            let rpc = Rpc::Join {
                member: self.me,
                grant: grant.clone(),
            };
            match self
                .link
                .call(
                    target,
                    &self.name,
                    rpc,
                    patience.min(Duration::from_secs(5)),
                )
                .await
            {
                Ok(Reply::Membership(Ok(()))) => return Ok(()),
                Ok(Reply::Membership(Err(NotServed::Failed(reason)))) => {
                    return Err(GroupFailure::Failed(reason));
                }
                Ok(Reply::Membership(Err(answer))) => {
                    // A member answered: the group exists, so even a would-be
                    // founder waits for it as long as any joiner does.
                    deadline = deadline.max(started + self.config.request_timeout);
                    if let NotServed::NotLeader(Some(l)) = answer {
                        target = l;
                    }
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(GroupFailure::Timeout(patience));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Leave the group (the leader removes this member), then stop.
    pub async fn leave(&self) {
        let deadline = Instant::now() + self.config.request_timeout;
        let me = self.me;
        while Instant::now() < deadline {
            let reply = match self.leader() {
                Some(l) if l.key == me.key => Reply::Membership(self.remove(me).await),
                Some(l) => self
                    .link
                    .call(
                        l,
                        &self.name,
                        Rpc::Leave { member: me },
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap_or(Reply::NoGroup),
                None => Reply::NoGroup,
            };
            if matches!(reply, Reply::Membership(Ok(()))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop().await;
    }

    /// Stop this member's Raft instance (as a crash would, without leaving).
    pub async fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.raft.shutdown().await;
    }

    /// Whether [`stop`](Self::stop) or [`leave`](Self::leave) ran.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Run a membership change, again while another is still in progress (one
    /// at a time is Raft's rule; joins and exclusions may overlap).
    async fn change_membership<T, F, Fut>(&self, change: F) -> Result<T, NotServed>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, RaftError<u64, ClientWriteError<u64, Member>>>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            match change().await {
                Ok(value) => return Ok(value),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(not_served(&e, |e| e.forward_to_leader())),
            }
        }
    }

    async fn remove(&self, member: Member) -> Result<(), NotServed> {
        let voters: BTreeSet<u64> = BTreeSet::from([node_id(&member.key)]);
        self.change_membership(|| async {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(voters.clone()), false)
                .await
                .map(|_| ())
        })
        .await
    }

    async fn add(&self, member: Member, grant: Option<Signed<Grant>>) -> Result<(), NotServed> {
        Grant::check(
            &self.policy,
            &self.name,
            member.key,
            grant.as_ref(),
            liveobjects_directory::server::unix_now(),
        )
        .map_err(NotServed::Failed)?;
        let id = node_id(&member.key);
        let (voter, learner, last_index) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (
                m.membership_config.voter_ids().any(|v| v == id),
                m.membership_config.nodes().any(|(n, _)| *n == id),
                m.last_log_index.unwrap_or(0),
            )
        };
        if voter {
            return Ok(());
        }
        let asked = Instant::now();
        let target = if learner {
            // Asked again while still a learner: no new config entry.
            last_index
        } else {
            self.change_membership(|| async {
                self.raft
                    .add_learner(id, member, false)
                    .await
                    .map(|r| r.log_id.index)
            })
            .await?
        };
        // A learner is made a voter once it has answered the leader since it
        // asked (or holds the log up to its admission): one that has not may have
        // died since, and a dead voter added to a group that has lost one
        // already can leave it without a majority for good. openraft's own
        // blocking wait counts a learner within 5,000 entries as caught up, and
        // otherwise waits forever. The wait here is short, well inside any
        // joiner's call: one that is not answered yet asks again.
        let wait_until = asked + (self.config.request_timeout / 4).min(Duration::from_millis(500));
        loop {
            let (leading, matched) = {
                let m = self.raft.metrics().borrow().clone();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index);
                (m.state == ServerState::Leader, matched)
            };
            if !leading {
                return Err(NotServed::NotLeader(self.leader()));
            }
            let answered = self.liveness.last(id).is_some_and(|t| t >= asked);
            if answered || matched.is_some_and(|i| i >= target) {
                break;
            }
            if Instant::now() >= wait_until {
                return Err(NotServed::Busy(format!(
                    "{} has not answered {}'s leader yet; ask again",
                    member.key, self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.change_membership(|| async {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Serve a request from member (or would-be member) `from`.
    pub async fn handle(&self, from: Member, rpc: Rpc) -> Reply {
        // Who may take part: members of this member's config; for Raft's own
        // messages also anyone the object's policy admits without a grant (`open`
        // and `keys:` records, where any such host could join anyway). Raft needs
        // that: a member that has not yet learned of a newer config must still
        // answer the leader and candidates of that config, or it can block their
        // majority (the simulation found such a livelock). In a `grants:` group,
        // where only the leader sees a joiner's grant, the rest follow only the
        // members of their config and leaders they were pointed at (`trusted`).
        // Writes, reads and leaves come from members only (members forward
        // their clients' calls).
        let member_here = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .any(|(_, m)| m.key == from.key);
        let known = member_here
            || (matches!(rpc, Rpc::Append(_) | Rpc::Vote(_) | Rpc::Snapshot(_))
                && Grant::check(&self.policy, &self.name, from.key, None, 0).is_ok());
        match rpc {
            Rpc::Join { member, grant } if member.key == from.key => {
                if !self.is_leader() {
                    return Reply::Membership(Err(NotServed::NotLeader(self.leader())));
                }
                Reply::Membership(self.add(member, grant).await)
            }
            // A joiner takes its log from the members it asked (and a member the
            // group excluded from the leader it was pointed at).
            Rpc::Append(req)
                if !known
                    && self.trusted.lock().expect("trusted").contains(&from.key)
                    && req.vote.leader_id().voted_for() == Some(node_id(&from.key)) =>
            {
                self.appended(self.raft.append_entries(req).await)
            }
            Rpc::Snapshot(req)
                if !known
                    && self.trusted.lock().expect("trusted").contains(&from.key)
                    && req.vote.leader_id().voted_for() == Some(node_id(&from.key)) =>
            {
                self.installed(self.raft.install_snapshot(req).await)
            }
            // Everything else only from those who may take part, and Raft
            // messages only in the sender's own name: no host the policy keeps
            // out can vote, lead or write.
            _ if !known => Reply::NoGroup,
            Rpc::Append(req) if req.vote.leader_id().voted_for() == Some(node_id(&from.key)) => {
                self.appended(self.raft.append_entries(req).await)
            }
            Rpc::Vote(req) if req.vote.leader_id().voted_for() == Some(node_id(&from.key)) => {
                Reply::Vote(self.raft.vote(req).await)
            }
            Rpc::Snapshot(req) if req.vote.leader_id().voted_for() == Some(node_id(&from.key)) => {
                self.installed(self.raft.install_snapshot(req).await)
            }
            Rpc::Leave { member } if member.key == from.key => {
                if !self.is_leader() {
                    return Reply::Membership(Err(NotServed::NotLeader(self.leader())));
                }
                Reply::Membership(self.remove(member).await)
            }
            // A member forwards its own commands only.
            Rpc::Writes(commands) if commands.iter().any(|c| c.sender != from.key.to_string()) => {
                Reply::Writes(vec![Err(foreign_command(&from)); commands.len()])
            }
            Rpc::Writes(commands) => {
                let answers = self.enqueue_events(commands);
                let mut written = Vec::with_capacity(answers.len());
                for answer in answers {
                    written.push(answered(answer).await);
                }
                Reply::Writes(written)
            }
            // A member reports its own digest only.
            Rpc::Digest(digest) if digest.member == from.key.to_string() => {
                Reply::Write(self.write_ordered(Ordered::Digest(digest)).await)
            }
            Rpc::State { at_least } => {
                // A member that trails the one asking (a diverged leader asks
                // followers) waits a little to catch up first.
                let _ = self
                    .raft
                    .wait(Some(Duration::from_secs(2)))
                    .applied_index_at_least(Some(at_least), "state for a repair")
                    .await;
                Reply::State(
                    self.machine
                        .state_for_repair(at_least)
                        .map_err(NotServed::Busy),
                )
            }
            Rpc::ReadIndex => Reply::ReadIndex(self.read_index_here().await),
            _ => Reply::NoGroup,
        }
    }

    /// The reply to an append: one this member accepted is a leader's contact.
    fn appended(&self, result: Result<AppendEntriesResponse<u64>, RaftError<u64>>) -> Reply {
        if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.leader_contact();
        }
        Reply::Append(result)
    }

    /// The reply to a snapshot chunk: one this member accepted is a leader's
    /// contact too.
    fn installed(
        &self,
        result: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>,
    ) -> Reply {
        if result.is_ok() {
            self.leader_contact();
        }
        Reply::Snapshot(result)
    }

    /// A leader replicated to this member: it is not cut off.
    fn leader_contact(&self) {
        self.watch.lock().expect("watch").quiet_since = Instant::now();
    }

    /// Write `data` to the log through this member, which must lead: its
    /// position and outcome once applied here.
    async fn write_ordered(&self, data: Ordered) -> Result<(u64, Applied), NotServed> {
        self.raft
            .client_write(data)
            .await
            .map(|r| (r.log_id.index, r.data))
            .map_err(|e| not_served(&e, |e| e.forward_to_leader()))
    }

    /// Write `command` to the log through this member, which must lead, in an
    /// entry with the commands waiting with it (see the module docs): its
    /// position and outcome once applied here.
    async fn write_event(&self, command: Command) -> Result<(u64, Applied), NotServed> {
        let answer = self
            .enqueue_events(vec![command])
            .pop()
            .expect("one answer");
        answered(answer).await
    }

    /// Queue `commands` for this member's next entry (see
    /// [`write_event`](Self::write_event)); where each one's answer will come.
    fn enqueue_events(&self, commands: Vec<Command>) -> Vec<Answered> {
        let mut answers = Vec::with_capacity(commands.len());
        let start_writer = {
            let mut b = self.batching.lock().expect("batching");
            for command in commands {
                let (answer, answered) = tokio::sync::oneshot::channel();
                b.waiting.push_back((command, answer));
                answers.push(answered);
            }
            b.writers < BATCH_WRITERS && {
                b.writers += 1;
                true
            }
        };
        if start_writer {
            // Two of the longest election timeouts: a leader that has lost
            // its majority for that long has been replaced.
            let patience = Duration::from_millis(2 * self.config.election_ms.1.max(1));
            tokio::spawn(write_batches(
                self.raft.clone(),
                self.batching.clone(),
                patience,
            ));
        }
        answers
    }

    /// Have the leader `to` order `command` (see [`Rpc::Writes`]): in one
    /// request with the other commands waiting for the same leader, at most
    /// [`BATCH_WRITERS`] requests at once.
    async fn forward_event(
        &self,
        to: Member,
        command: Command,
    ) -> Result<(u64, Applied), NotServed> {
        let (answer, answered_here) = tokio::sync::oneshot::channel();
        let start_sender = {
            let mut f = self.forwarding.lock().expect("forwarding");
            f.waiting.push_back((to, command, answer));
            f.senders < BATCH_WRITERS && {
                f.senders += 1;
                true
            }
        };
        if start_sender {
            tokio::spawn(forward_batches(
                self.link.clone(),
                self.name.clone(),
                self.forwarding.clone(),
            ));
        }
        answered(answered_here).await
    }

    /// Order a logic entry (this member must lead): the object runs `change`'s
    /// logic from there on at every replica, or, if the entry answers
    /// [`Applied::Refused`], the upgrade was aborted at every replica. The
    /// group's founder writes the first one (the logic it starts with) before it
    /// serves calls; later ones are live upgrades. Returns the entry's position
    /// and outcome once it is applied here.
    pub async fn propose_logic(&self, change: LogicChange) -> Result<(u64, Applied), GroupFailure> {
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            // Only the leader's own upkeep proposes logic: no forwarding.
            let written = if self.is_leader() {
                self.write_ordered(Ordered::Logic(change.clone())).await
            } else {
                Err(NotServed::NotLeader(self.leader()))
            };
            match written {
                Ok(done) => return Ok(done),
                Err(NotServed::Failed(reason)) => return Err(GroupFailure::Failed(reason)),
                Err(_) if Instant::now() > deadline => {
                    return Err(GroupFailure::Timeout(self.config.request_timeout));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Order this member's digest of its state at a checked position (see
    /// [`super::machine`]).
    pub async fn submit_digest(&self, at: u64, sha256: [u8; 32]) -> Result<(), GroupFailure> {
        let digest = StateDigest {
            member: self.me.key.to_string(),
            at,
            sha256,
        };
        let deadline = Instant::now() + self.config.request_timeout;
        self.at_leader(
            deadline,
            || self.write_ordered(Ordered::Digest(digest.clone())),
            || Rpc::Digest(digest.clone()),
            Reply::written,
        )
        .await
        .map(drop)
    }

    /// `member`'s state, applied up to at least `at_least` (to repair this
    /// replica from).
    pub async fn fetch_state(
        &self,
        member: Member,
        at_least: u64,
    ) -> Result<(LogId, Vec<u8>), String> {
        let rpc = Rpc::State { at_least };
        match self
            .link
            .call(member, &self.name, rpc, self.config.request_timeout)
            .await?
        {
            Reply::State(Ok(state)) => Ok(state),
            Reply::State(Err(e)) => Err(e.to_string()),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Repair this replica, which diverged at position `at`, from one of the
    /// members that agreed there (`agreeing`: keys, hex): that member's state as
    /// it has applied it now, at least as far as this replica, installed in
    /// place ([`Machine::repair_from`]). Returns the position the state is at,
    /// who sent it and the state (snapshot body) itself.
    pub async fn repair(
        &self,
        at: u64,
        agreeing: &[String],
    ) -> Result<(u64, Member, Vec<u8>), String> {
        let me = self.me.key.to_string();
        let mut last_error = "no member that agreed is in the view".to_string();
        // A few rounds: a member may be behind this one, or this one may move
        // past the state it was sent before it is installed.
        for _ in 0..20 {
            for key in agreeing.iter().filter(|k| **k != me) {
                let Some(member) = self
                    .members()
                    .into_iter()
                    .find(|m| m.key.to_string() == *key)
                else {
                    continue;
                };
                let applied_here = self
                    .raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map_or(0, |l| l.index);
                let (applied, body) = match self.fetch_state(member, applied_here).await {
                    Ok(state) => state,
                    Err(e) => {
                        last_error = e;
                        continue;
                    }
                };
                match self.machine.repair_from(applied, &body).await {
                    Ok(()) => {
                        // A snapshot of the repaired state, in place of any
                        // taken of the diverged one (which joiners and a
                        // restart would otherwise start from).
                        let _ = self.raft.trigger().snapshot().await;
                        return Ok((applied.index, member, body));
                    }
                    Err(e) => last_error = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("diverged at position {at}; {last_error}"))
    }

    /// The next sequence number for a command of this member (this start).
    fn next_seq(&self) -> u64 {
        self.last_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    async fn read_index_here(&self) -> Result<u64, NotServed> {
        let read = self
            .raft
            .ensure_linearizable()
            .await
            .map(|l| l.map(|l| l.index).unwrap_or(0))
            .map_err(|e| not_served(&e, |e| e.forward_to_leader()))?;
        // Floored at this leader's whole log: a leader restarted in its old
        // term keeps its old no-op, and its committed index may be behind
        // entries it acknowledged before the crash (see `super::store`). A
        // leader's log is never cut in its term, so every entry up to here
        // commits while it leads; a read waits at most for writes in flight.
        let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        Ok(read.max(last))
    }

    /// Have the leader serve a request: `here` if this member leads, else `rpc`
    /// sent to the leader it knows (`answer` picks the reply); again while no
    /// leader serves it, until `deadline`.
    async fn at_leader<T, H, F>(
        &self,
        deadline: Instant,
        here: H,
        rpc: impl Fn() -> Rpc,
        answer: fn(Reply) -> Option<Result<T, NotServed>>,
    ) -> Result<T, GroupFailure>
    where
        H: Fn() -> F,
        F: Future<Output = Result<T, NotServed>>,
    {
        let ask = |leader: Member| {
            let request = self
                .link
                .call(leader, &self.name, rpc(), Duration::from_secs(5));
            async move {
                match request.await {
                    Ok(reply) => answer(reply).unwrap_or(Err(NotServed::NotLeader(None))),
                    Err(_) => Err(NotServed::NotLeader(None)),
                }
            }
        };
        self.served_by_leader(deadline, here, ask).await
    }

    /// [`at_leader`](Self::at_leader), with `remote` asking a leader elsewhere.
    async fn served_by_leader<T, H, F, R, G>(
        &self,
        deadline: Instant,
        here: H,
        remote: R,
    ) -> Result<T, GroupFailure>
    where
        H: Fn() -> F,
        F: Future<Output = Result<T, NotServed>>,
        R: Fn(Member) -> G,
        G: Future<Output = Result<T, NotServed>>,
    {
        loop {
            let got = match self.leader() {
                Some(l) if l.key == self.me.key => here().await,
                Some(l) => remote(l).await,
                None => Err(NotServed::NotLeader(None)),
            };
            match got {
                Ok(value) => return Ok(value),
                Err(NotServed::Failed(reason)) => return Err(GroupFailure::Failed(reason)),
                Err(NotServed::NotLeader(_) | NotServed::Busy(_)) => {
                    if Instant::now() > deadline {
                        return Err(GroupFailure::Timeout(self.config.request_timeout));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Order and commit `payload` as this member's command; returns once it is
    /// committed and applied here. `Refused` means the object aborted it everywhere.
    pub async fn submit(&self, timestamp_ms: u64, payload: Vec<u8>) -> Result<(), GroupFailure> {
        self.submit_all(timestamp_ms, vec![payload]).await
    }

    /// [`submit`](Self::submit) several payloads as one command: they commit (and
    /// apply) together or not at all. `payloads` must not be empty.
    pub async fn submit_all(
        &self,
        timestamp_ms: u64,
        mut payloads: Vec<Vec<u8>>,
    ) -> Result<(), GroupFailure> {
        let payload = if payloads.is_empty() {
            Vec::new()
        } else {
            payloads.remove(0)
        };
        let command = Command {
            sender: self.me.key.to_string(),
            boot: self.boot,
            seq: self.next_seq(),
            timestamp_ms,
            payload,
            more: payloads,
        };
        let deadline = Instant::now() + self.config.request_timeout;
        let (index, applied) = self
            .served_by_leader(
                deadline,
                || self.write_event(command.clone()),
                |leader| self.forward_event(leader, command.clone()),
            )
            .await?;
        if let Applied::Refused(reason) = applied {
            return Err(GroupFailure::Refused(reason));
        }
        // Applied here too before returning, so a following read here sees it
        // (the entry is committed, so waiting for it needs no leader round).
        self.applied_up_to(index, deadline).await
    }

    async fn applied_up_to(&self, index: u64, deadline: Instant) -> Result<(), GroupFailure> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left.max(Duration::from_millis(1))))
            .applied_index_at_least(Some(index), "applied here")
            .await
            .map(|_| ())
            .map_err(|_| GroupFailure::Timeout(self.config.request_timeout))
    }

    /// A linearizable read barrier: returns once this replica has applied every
    /// entry committed before the call (the leader confirms its leadership).
    pub async fn barrier(&self) -> Result<(), GroupFailure> {
        let deadline = Instant::now() + self.config.request_timeout;
        let index = self
            .at_leader(
                deadline,
                || self.read_index_here(),
                || Rpc::ReadIndex,
                |reply| match reply {
                    Reply::ReadIndex(r) => Some(r),
                    _ => None,
                },
            )
            .await?;
        self.applied_up_to(index, deadline).await
    }

    /// Upkeep, every half second or so (the host and the simulations call it).
    ///
    /// - A leader removes voters it has not heard from for
    ///   [`GroupConfig::exclude_after`] (bounded exclusion of failed members).
    /// - A member no leader has replicated to for a while (a random one to three
    ///   election timeouts, drawn anew each time) starts an election itself if it
    ///   is a voter, and asks the members it knows to (re-)admit it; so does, at
    ///   the same pace, a former voter that is now only a learner. openraft 0.9 draws each
    ///   member's election timeout once: a candidate that can never win (voters
    ///   that have not yet learned of it ignore it) restarts its election before
    ///   anyone else's timer runs out, and each restart resets theirs, forever.
    ///   The simulation found this. The re-admission covers a member the group
    ///   excluded while it was cut off: it never learns that it was, and would
    ///   wait for a leader forever.
    pub async fn tick(&self) {
        if self.is_stopped() {
            return;
        }
        let now = Instant::now();
        let (leading, quorum_ack) = {
            let metrics = self.raft.metrics().borrow().clone();
            (
                metrics.state == ServerState::Leader,
                metrics.millis_since_quorum_ack,
            )
        };
        if leading {
            // A leader a majority still answers is in touch; one cut off from the
            // group it leads (it may have been excluded) is as quiet as a follower.
            {
                let mut w = self.watch.lock().expect("watch");
                if quorum_ack.is_some_and(|ms| Duration::from_millis(ms) < w.patience) {
                    w.quiet_since = now;
                }
            }
            self.exclude_silent().await;
        } else {
            self.watch.lock().expect("watch").leading = None;
        }
        // A member the group excluded and re-added as a learner (or one whose
        // promotion was cut short) hears from the leader but is not a voter: it
        // asks again, at the same pace. A host still joining has no config yet.
        let voter = self.is_voter();
        if voter {
            // Back in a config: only its members (and the policy) count again.
            self.trusted.lock().expect("trusted").clear();
        }
        let promoted = voter || self.members().is_empty();
        let act = {
            let mut w = self.watch.lock().expect("watch");
            let quiet = now.duration_since(w.quiet_since) >= w.patience;
            let waited = now.duration_since(w.acted) >= w.patience;
            if !(quiet || (!promoted && waited)) {
                false
            } else {
                w.quiet_since = now;
                w.acted = now;
                w.patience = w.draw(self.config.election_ms.1);
                true
            }
        };
        if !act {
            return;
        }
        if !leading && voter {
            let _ = self.raft.trigger().elect().await;
        }
        self.rejoin().await;
    }

    /// Ask the members this one knows, briefly, following their redirects:
    /// whoever leads re-admits it (or answers at once that it is a voter).
    async fn rejoin(&self) {
        let me = self.me.key;
        let others: Vec<Member> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(_, m)| *m)
            .filter(|m| m.key != me)
            .collect();
        let grant = self.grant.lock().expect("grant").clone();
        // The leader answers once the member is a voter again (or the change
        // failed): cut short, the change could stop between its two steps.
        let timeout = self.config.request_timeout;
        for contact in others {
            let mut target = contact;
            // A few redirects at most: a stale answer is not followed far.
            for _ in 0..3 {
                let rpc = Rpc::Join {
                    member: self.me,
                    grant: grant.clone(),
                };
                match self.link.call(target, &self.name, rpc, timeout).await {
                    Ok(Reply::Membership(Err(NotServed::NotLeader(Some(l)))))
                        if l.key != me && l.key != target.key =>
                    {
                        // The leader it names may replicate to this member
                        // before this member knows it as one (see `handle`).
                        self.trusted.lock().expect("trusted").insert(l.key);
                        target = l;
                    }
                    // Admitted, or the leader answered (busy or refusing): the
                    // next tick asks again if need be.
                    Ok(Reply::Membership(
                        Ok(()) | Err(NotServed::Busy(_) | NotServed::Failed(_)),
                    )) => {
                        return;
                    }
                    _ => break,
                }
            }
        }
    }

    /// Leader duty: remove voters not heard from for
    /// [`GroupConfig::exclude_after`] since this member began to lead.
    async fn exclude_silent(&self) {
        let (term, voters, learners) = {
            let metrics = self.raft.metrics().borrow().clone();
            let voters: Vec<u64> = metrics.membership_config.voter_ids().collect();
            let learners: Vec<u64> = metrics
                .membership_config
                .membership()
                .learner_ids()
                .collect();
            (metrics.current_term, voters, learners)
        };
        let now = Instant::now();
        // A member not heard from in this term counts from the start of the term:
        // a new leader has not yet sent it anything.
        let leading_since = {
            let mut w = self.watch.lock().expect("watch");
            match w.leading {
                Some((t, since)) if t == term => since,
                _ => {
                    w.leading = Some((term, now));
                    now
                }
            }
        };
        let me = node_id(&self.me.key);
        let quiet_for = |v: u64| {
            let last = self
                .liveness
                .last(v)
                .map_or(leading_since, |t| t.max(leading_since));
            now.duration_since(last)
        };
        let silent: BTreeSet<u64> = voters
            .iter()
            .copied()
            .filter(|v| *v != me && quiet_for(*v) > self.config.exclude_after)
            .collect();
        // The change must be able to commit with members that answered just now
        // (one that answered two seconds ago may be dead): a majority of the old
        // config and of the new one. Openraft moves through a joint config that
        // needs both, and would stay in it for good if the new half could not
        // commit. And never below `min_voters`: two voters are one failure away
        // from a group that can never commit again.
        let recent = Duration::from_millis(2 * self.config.election_ms.1);
        let kept = voters.len() - silent.len();
        let kept_up = voters
            .iter()
            .filter(|v| !silent.contains(v) && (**v == me || quiet_for(**v) <= recent))
            .count();
        let change = if !silent.is_empty()
            && kept_up * 2 > voters.len()
            && kept_up * 2 > kept
            && kept >= self.config.min_voters
        {
            tracing::info!("{}: excluding silent members {silent:?}", self.name);
            ChangeMembers::RemoveVoters(silent)
        } else {
            // Learners that went silent (a joiner that died before it was made
            // a voter) leave no mark on any majority: they just go.
            let gone: BTreeSet<u64> = learners
                .into_iter()
                .filter(|l| quiet_for(*l) > self.config.exclude_after)
                .collect();
            if gone.is_empty() {
                return;
            }
            ChangeMembers::RemoveNodes(gone)
        };
        // Bounded: a change that cannot commit (a kept member died just now)
        // must not stop this member's upkeep until it loses the lead.
        let _ = tokio::time::timeout(
            self.config.request_timeout,
            self.raft.change_membership(change, false),
        )
        .await;
    }
}

/// The refusal of a command forwarded by another member than its sender.
fn foreign_command(from: &Member) -> NotServed {
    NotServed::Failed(format!(
        "member {} forwarded a command in another member's name: a member forwards only its own",
        from.key
    ))
}

fn not_served<E, F>(e: &RaftError<u64, E>, forward: F) -> NotServed
where
    E: std::error::Error,
    F: Fn(&RaftError<u64, E>) -> Option<&openraft::error::ForwardToLeader<u64, Member>>,
{
    match forward(e) {
        Some(f) => NotServed::NotLeader(f.leader_node),
        None => NotServed::Failed(e.to_string()),
    }
}
