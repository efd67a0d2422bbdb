//! The mesh driver's protocol as a sans-IO state machine.
//!
//! One [`MeshCore`] runs per member of one object's group. It is fed messages from
//! peers, local multicasts, snapshots and the passage of time; it produces messages to
//! send, timer deadlines and outputs for the replica (events to deliver, views,
//! snapshot requests). It never touches a socket or a clock, so the same code runs
//! under the QUIC shell and under the deterministic simulator in the tests.
//!
//! # Protocol
//! - **Total order through a sequencer.** The sequencer is the most senior member of
//!   the current view (views list members in join order). Members send [`Message::Submit`] to it; it assigns global
//!   sequence numbers (`gseq`) and sends [`Message::Ordered`] to every member. Submits
//!   from one sender are ordered in the sender's own sequence, so total order also
//!   gives FIFO per sender. Membership changes are ordered items too, so every member
//!   sees every view change at the same point of the stream.
//! - **Reliability over a lossy, reordering, duplicating network.** Senders resubmit
//!   until their submit comes back ordered; the sequencer drops duplicates. Members
//!   buffer out-of-order items and ask for gaps with [`Message::Nack`], which any
//!   member holding the items answers. Heartbeats carry how far each member has
//!   delivered; items every member has delivered are stable and freed.
//! - **Failure detection.** Members heartbeat each other; a member not heard from
//!   within the suspect timeout is suspected. The sequencer orders a view without the
//!   members it suspects. A member that leaves says so ([`Message::Left`]) and is
//!   suspected at once. On a host with many groups the heartbeats are per peer, not
//!   per group ([`Liveness::PerPeer`], [`peers`]): one heartbeat per period to each
//!   peer carries the progress of the groups that changed, and an idle group needs
//!   no timer at all.
//! - **Sequencer failure (flush).** When members suspect the sequencer, the most
//!   senior surviving member runs a flush for the next view id: the survivors reply with how
//!   far they have received, the new sequencer fetches anything it lacks up to the
//!   highest point any survivor reached, then orders the new view after it. Survivors
//!   therefore deliver the same items before the new view. Pending submits are sent
//!   again to the new sequencer and de-duplicated by sender sequence numbers.
//! - **Join with state transfer at a cut.** A joiner asks any member; the sequencer
//!   orders a view that includes it at gseq `g`, then takes a snapshot of its replica
//!   right after delivering up to its current point `c >= g` and sends it with `c`. The
//!   joiner installs the snapshot and delivers exactly the items after `c`: nothing
//!   lost, nothing applied twice.
//!
//! - **Divergence checks and repair.** Every [`Config::check_every`] positions of
//!   the order, each member hands back the digest of its replica's state right
//!   after that position ([`Output::TakeDigest`]) and sends it to the members of
//!   the view there ([`Message::Digest`]). View changes are checked too, among
//!   the members that were in the view before and stay (once there are two): a
//!   joiner's state is cut later, so it takes part from the next periodic check
//!   on (which is also when a joiner served by a diverged sequencer is found).
//!   A member counted whose state was cut later still (a joiner whose state
//!   was sent again after a lost transfer) does not vote: it only makes the
//!   majority harder to reach, and no majority is declared only once every
//!   counted member voted. A member
//!   whose digest differs from one a strict majority shares is *diverged*: it
//!   stops delivering, asks a member of the majority for its state at a cut no
//!   earlier than where it stopped ([`Message::RepairRequest`], answered with
//!   [`Message::State`]), installs it and carries on from that cut; its own
//!   events up to the cut are in that state. If every member answered and no digest has a majority, the
//!   verdict is [`Verdict::NoMajority`] at every member and the host stops the
//!   object rather than let it fork. Verdicts come out as [`Output::Checked`].
//!
//! - **Live upgrade at a position of the order.** The sequencer's host, having
//!   seen a newer record of the object with new logic, orders an
//!   [`Item::Upgrade`] ([`MeshCore::propose_upgrade`]). Every member delivers it
//!   at the same position, so every replica applies the events before it with
//!   the old logic and those after it with the new one (or, if the new logic
//!   refuses the state, which every replica decides alike, all keep the old).
//!   A joiner's state is cut at a position too, so it starts with the logic in
//!   force there. A sequencer that crashes having sent the item to some members
//!   is flushed like any other: the survivors deliver it if any of them got it,
//!   else the next sequencer's host proposes again.
//!
//! # What it does not promise
//! Agreement under a network partition that splits the group (two sides can each
//! form a view) is the job of the `vsync` driver, which decides membership through
//! consensus. The mesh guarantees total order and exactly-once delivery among members
//! that stay connected, with crash failures detected by timeouts.

pub mod peers;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;

/// Most items one nack asks for or is answered with (bounds the burst a repair adds
/// to a peer's queue).
const MAX_NACK_ITEMS: u64 = 1024;

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// Identity of a member (a public key in the real shell, small numbers in tests).
pub trait MemberId: Ord + Clone + Debug + Hash {}
impl<T: Ord + Clone + Debug + Hash> MemberId for T {}

/// Timing parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// Heartbeat period.
    pub heartbeat: Millis,
    /// A member not heard from for this long is suspected.
    pub suspect_after: Millis,
    /// How often unacknowledged submits, nacks and joins are retried.
    pub retry: Millis,
    /// Most submits a member keeps in flight (more wait in its queue).
    pub max_in_flight: usize,
    /// Most out-of-order items buffered per member (beyond: dropped and re-fetched).
    pub max_buffered: usize,
    /// Who heartbeats and detects failures: the core itself, or its host for all its
    /// groups at once.
    pub liveness: Liveness,
    /// Compare the replicas' state digests every this many positions of the
    /// order, and at view changes that keep two members or more (0: never).
    /// See the module docs.
    pub check_every: u64,
}

/// Where a group's heartbeats and failure detection happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The core heartbeats every member each period and suspects the silent ones
    /// itself: for a core used alone (one group per host, the simulator).
    PerGroup,
    /// The host does it for all its groups ([`peers::PeerHeartbeats`]): the core
    /// publishes its [`progress`](MeshCore::progress), takes its members' with
    /// [`handle_progress`](MeshCore::handle_progress), and suspects a member when
    /// told ([`handle_suspect`](MeshCore::handle_suspect)). It then needs a timer
    /// only while it has something to retry.
    PerPeer,
}

/// How far a member has got in one group: what a heartbeat carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The member's view id.
    pub view: u64,
    /// Highest gseq it has delivered.
    pub delivered: u64,
    /// Highest gseq it knows to be ordered.
    pub ordered: u64,
    /// Highest gseq every member has delivered (from the sequencer; 0 otherwise).
    pub stable: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat: 100,
            suspect_after: 1_000,
            retry: 200,
            max_in_flight: 1_024,
            max_buffered: 100_000,
            liveness: Liveness::PerGroup,
            check_every: 0,
        }
    }
}

/// A membership view. Members are listed by seniority (the founder first, then in
/// join order); the most senior member is the sequencer, so the sequencer always has
/// state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View<Id> {
    /// Increases with each change.
    pub id: u64,
    /// Members, most senior first.
    pub members: Vec<Id>,
}

impl<Id: MemberId> View<Id> {
    fn sequencer(&self) -> Option<&Id> {
        self.members.first()
    }

    fn contains(&self, id: &Id) -> bool {
        self.members.contains(id)
    }
}

/// One application event in the ordered stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event<Id> {
    /// Who multicast it.
    pub sender: Id,
    /// The sender's sequence number (1, 2, 3...).
    pub seq: u64,
    /// The sender's timestamp.
    pub timestamp_ms: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A proposal to switch the object to new logic (a live upgrade), as the
/// sequencer ordered it. The core does not read it: the host verifies the record
/// and decides, the same way at every member, whether to switch there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upgrade {
    /// The record version proposed.
    pub version: u64,
    /// The signed record that names the new logic (the host's encoding).
    pub record: Vec<u8>,
}

/// An item of the ordered stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Item<Id> {
    /// An application event.
    Event(Event<Id>),
    /// A new view.
    View(View<Id>),
    /// A live upgrade's cut.
    Upgrade(Upgrade),
}

/// Protocol messages between members.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Message<Id> {
    /// A member asks the sequencer to order its `seq`-th multicast.
    Submit {
        /// Sender sequence number.
        seq: u64,
        /// Sender timestamp.
        timestamp_ms: u64,
        /// Payload.
        payload: Vec<u8>,
    },
    /// An ordered item.
    Ordered {
        /// Global sequence number.
        gseq: u64,
        /// The item.
        item: Item<Id>,
    },
    /// Please send me ordered items from `from` on (up to `to`, inclusive).
    Nack {
        /// First missing gseq.
        from: u64,
        /// Last wanted gseq.
        to: u64,
    },
    /// Liveness and progress.
    Heartbeat {
        /// Sender's view id.
        view: u64,
        /// Highest gseq the sender has delivered.
        delivered: u64,
        /// Highest gseq the sender knows to be ordered.
        ordered: u64,
        /// Highest gseq every member has delivered (sequencer only; 0 otherwise).
        stable: u64,
    },
    /// A new member asks to join.
    JoinRequest,
    /// Not the sequencer: ask this one.
    Redirect {
        /// Who the sender believes is the sequencer.
        sequencer: Id,
    },
    /// State transfer to a joiner: the replica's snapshot after delivering `at`.
    State {
        /// The cut.
        at: u64,
        /// The view at the cut.
        view: View<Id>,
        /// Per-sender highest ordered seq at the cut (for de-duplication).
        ordered_seqs: Vec<(Id, u64)>,
        /// The replica's snapshot.
        snapshot: Vec<u8>,
    },
    /// A member taking over as sequencer asks survivors how far they got.
    Flush {
        /// The view id it will install.
        view: u64,
    },
    /// Answer to a flush.
    FlushReply {
        /// The flush's view id.
        view: u64,
        /// Highest gseq received contiguously.
        received: u64,
    },
    /// The sender no longer takes part in the group (it left, was stopped, or its
    /// host does not have the object): members suspect it at once instead of
    /// waiting for its silence. Never answered.
    Left,
    /// The sequencer cannot give a joiner its state (the replica's snapshot failed
    /// in a way every replica would): the join is over.
    JoinRefused {
        /// Why, for the joiner's user (at most [`MAX_REFUSAL_BYTES`]).
        reason: String,
    },
    /// The sender's state digest right after position `at` of the order.
    Digest {
        /// The position.
        at: u64,
        /// SHA-256 of the sender's replica's snapshot there.
        digest: [u8; 32],
    },
    /// A diverged member asks a member of the majority for its state, at a cut
    /// no earlier than `after` (where the asker stopped delivering); answered
    /// with [`Message::State`].
    RepairRequest {
        /// The asker's delivered position.
        after: u64,
        /// The asker's leader term: a flush since renumbers what follows the
        /// survivors' common point, so a state for an older term is refused.
        term: u64,
    },
    /// The answer to a [`Message::RepairRequest`]: as [`Message::State`], with the
    /// request's term.
    RepairState {
        /// The request's term.
        term: u64,
        /// The cut.
        at: u64,
        /// The view at the cut.
        view: View<Id>,
        /// Per-sender highest ordered seq at the cut.
        ordered_seqs: Vec<(Id, u64)>,
        /// The source replica's snapshot.
        snapshot: Vec<u8>,
    },
}

/// Divergence checks a member keeps open at once; older ones are given up.
const MAX_OPEN_CHECKS: usize = 8;

/// Of those, how many may hold votes for positions this member has not
/// received, that are no periodic check (they may be views).
const MAX_SPECULATIVE_CHECKS: usize = 2;

/// How many retry periods a member sends its digest again to members it has no
/// digest from (digests travel once otherwise, and may be lost).
const DIGEST_RESENDS: u8 = 5;

/// A state digest (SHA-256).
pub type Digest = [u8; 32];

/// The outcome of one divergence check at this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult<Id> {
    /// The position of the order it compared states after.
    pub at: u64,
    /// Members of the view there.
    pub members: usize,
    /// This member's digest.
    pub own: Digest,
    /// What the comparison says.
    pub verdict: Verdict<Id>,
}

/// What a divergence check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<Id> {
    /// A strict majority, this member included, has the same state.
    Agree {
        /// Members with this digest.
        agreeing: usize,
    },
    /// A strict majority has another state: this member stops delivering and is
    /// repaired from one of `sources` (an [`Output::InstallSnapshot`] and an
    /// [`Output::Repaired`] follow).
    Diverged {
        /// The majority's digest.
        majority: Digest,
        /// Members with it.
        agreeing: usize,
        /// Members of the majority it asks for their state, in order (the
        /// sequencer first if it is in it).
        sources: Vec<Id>,
    },
    /// Every member answered and no state has a strict majority.
    NoMajority {
        /// Each digest and how many members have it, most common first.
        groups: Vec<(Digest, usize)>,
    },
}

/// An open divergence check.
#[derive(Debug)]
struct Check<Id> {
    /// The view's members at the position (known once this member reaches it).
    members: Option<Vec<Id>>,
    own: Option<Digest>,
    votes: BTreeMap<Id, Digest>,
    /// Retry periods its digest was sent again in.
    resends: u8,
}

impl<Id> Default for Check<Id> {
    fn default() -> Self {
        Check {
            members: None,
            own: None,
            votes: BTreeMap::new(),
            resends: 0,
        }
    }
}

/// A repair in progress: delivery is paused until a source's state comes.
#[derive(Debug)]
struct Repair<Id> {
    sources: Vec<Id>,
    next: usize,
    asked_at: Millis,
    after: u64,
    /// The leader term it last asked in.
    term: u64,
    /// A source's state, held until this member's log has every item up to its
    /// cut: as a member that delivered them, it may have to resend them (as the
    /// next sequencer, say).
    state: Option<RepairState<Id>>,
}

/// A state a diverged member was sent: the source, the cut, the view and
/// per-sender positions there, the snapshot.
#[derive(Debug)]
struct RepairState<Id> {
    from: Id,
    at: u64,
    view: View<Id>,
    ordered_seqs: Vec<(Id, u64)>,
    snapshot: Vec<u8>,
}

/// Longest reason a [`Message::JoinRefused`] carries; longer ones are cut.
pub const MAX_REFUSAL_BYTES: usize = 512;

/// `text` without control characters (it may come from guest code, and ends up
/// on a user's terminal), cut to [`MAX_REFUSAL_BYTES`].
fn printable(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_REFUSAL_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// Refused joiners a member remembers (the oldest is forgotten first).
const MAX_REMEMBERED_REFUSALS: usize = 64;

/// How long a refusal is repeated to the same joiner without a new snapshot.
const REFUSAL_MEMORY: Millis = 5_000;

/// What the core asks of the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<Id> {
    /// Deliver this event (in this order, exactly once).
    Deliver {
        /// Its position in the group's total order.
        gseq: u64,
        /// The event.
        event: Event<Id>,
    },
    /// The membership changed (delivered at its place in the order).
    View(View<Id>),
    /// A live upgrade, at its place in the order: the replica has applied
    /// exactly the outputs before this one, and applies those after it with the
    /// logic it runs once it has acted on this one.
    Upgrade {
        /// Its position in the group's total order.
        gseq: u64,
        /// What the sequencer ordered.
        upgrade: Upgrade,
    },
    /// Take a snapshot now (the replica has applied exactly the outputs before this
    /// one) and hand it back with [`MeshCore::snapshot_taken`], with this cut.
    TakeSnapshot(Cut<Id>),
    /// Start the replica from this snapshot; deliveries that follow come after it.
    InstallSnapshot {
        /// The replica's snapshot.
        snapshot: Vec<u8>,
    },
    /// This member is no longer in the group (it was excluded or left).
    Excluded,
    /// The group refused this joiner (see [`Message::JoinRefused`]): it will not
    /// become a member.
    JoinRefused {
        /// Why, as the sequencer said.
        reason: String,
    },
    /// Hand back the SHA-256 of the replica's snapshot (it has applied exactly
    /// the outputs before this one) with [`MeshCore::digest_taken`].
    TakeDigest {
        /// The position of the order it follows.
        at: u64,
    },
    /// A divergence check's verdict at this member.
    Checked(CheckResult<Id>),
    /// A repair finished: the [`Output::InstallSnapshot`] just before holds the
    /// majority member's state after position `at`; this member's own events
    /// with sequence numbers in `own_skipped` are in it (applied there, not
    /// delivered here).
    Repaired {
        /// The cut.
        at: u64,
        /// The member the state came from.
        from: Id,
        /// This member's own events the state includes that it had not delivered.
        own_skipped: std::ops::RangeInclusive<u64>,
    },
}

/// Where a snapshot for a joiner is cut: fixed when the snapshot is requested, since
/// the core may already have delivered more by the time the replica hands it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut<Id> {
    /// The joiner (or diverged member) it is for.
    pub for_member: Id,
    at: u64,
    view: View<Id>,
    ordered_seqs: Vec<(Id, u64)>,
    /// For a diverged member: the leader term of its request, echoed back.
    repair_term: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for state transfer.
    Joining,
    /// Member with initialised state.
    Member,
    /// Out of the group.
    Gone,
}

struct Flush<Id> {
    view: u64,
    replies: BTreeMap<Id, u64>,
    started: Millis,
}

/// The mesh protocol state of one member of one group.
pub struct MeshCore<Id: MemberId> {
    me: Id,
    config: Config,
    phase: Phase,
    view: View<Id>,
    /// Highest view id seen anywhere (views and flushes), so new ids only grow.
    max_view_seen: u64,
    /// Who we currently send submits and nacks to.
    sequencer: Id,
    // Ordered stream.
    log: BTreeMap<u64, Item<Id>>,
    delivered: u64,
    ordered_known: u64,
    stable: u64,
    /// Per sender: highest seq delivered in the ordered stream.
    ordered_seqs: BTreeMap<Id, u64>,
    /// Highest view id of a flush this member answered (it then takes ordered items
    /// only from that flush's leader).
    leader_term: u64,
    // Sequencer state.
    next_gseq: u64,
    /// Per sender: highest seq given a gseq by this member as sequencer.
    assigned: BTreeMap<Id, u64>,
    waiting_submits: BTreeMap<Id, BTreeMap<u64, (u64, Vec<u8>)>>,
    member_delivered: BTreeMap<Id, u64>,
    /// Joiners whose snapshot the replica is taking (at most one each).
    snapshot_requests: BTreeSet<Id>,
    /// Joiners this member sent their state since they were added (a snapshot
    /// that fails afterwards, for a retry, must not refuse a joiner that has it).
    state_sent: BTreeSet<Id>,
    /// Joiners refused lately, with why and when: a retry that crossed the refusal
    /// is answered again instead of re-running the snapshot that failed.
    refused: BTreeMap<Id, (String, Millis)>,
    /// The latest time passed in (for bookkeeping inside handlers).
    now: Millis,
    /// When `delivered` last advanced: gaps are only asked for once progress stalls,
    /// so items merely still in flight are not requested again under load.
    last_progress: Millis,
    // Our own multicasts.
    next_seq: u64,
    /// seq -> (timestamp, payload, when last sent).
    in_flight: BTreeMap<u64, (u64, Vec<u8>, Millis)>,
    queued: VecDeque<(u64, Vec<u8>)>,
    last_retry: Millis,
    // Failure detection.
    last_heard: HashMap<Id, Millis>,
    suspected: BTreeSet<Id>,
    last_heartbeat: Millis,
    flush: Option<Flush<Id>>,
    // Joining.
    contact: Option<Id>,
    // Divergence checks.
    checks: BTreeMap<u64, Check<Id>>,
    /// Highest position a verdict was reached for (later votes for it are late).
    checked_upto: u64,
    /// The latest decided checks: this member's digest and who had voted, so a
    /// member that comes late (it lagged, or was repaired) still gets an answer.
    decided: BTreeMap<u64, (Digest, BTreeSet<Id>)>,
    repair: Option<Repair<Id>>,
    /// Diverged members waiting for this one to reach their cut (and their
    /// request's term), by member.
    repair_requests: BTreeMap<Id, (u64, u64)>,
    /// When this member last took a snapshot to repair each member: one per
    /// half suspect timeout at most (a diverged member asks a source again
    /// only after a whole one), so a member flooding repair requests cannot
    /// make it snapshot its state back to back.
    repairs_served: BTreeMap<Id, Millis>,
    // Outputs.
    transmits: VecDeque<(Id, Message<Id>)>,
    outputs: VecDeque<Output<Id>>,
}

impl<Id: MemberId> MeshCore<Id> {
    /// Start a new group with this member alone in view 1.
    pub fn found(me: Id, config: Config, now: Millis) -> Self {
        let view = View {
            id: 1,
            members: vec![me.clone()],
        };
        let mut core = Self::blank(me.clone(), config, view, now);
        core.phase = Phase::Member;
        core.log.insert(1, Item::View(core.view.clone()));
        core.next_gseq = 2;
        core.ordered_known = 1;
        core.delivered = 1;
        core.outputs.push_back(Output::View(core.view.clone()));
        core
    }

    /// Join an existing group through `contact` (any member).
    pub fn join(me: Id, contact: Id, config: Config, now: Millis) -> Self {
        let view = View {
            id: 0,
            members: Vec::new(),
        };
        let mut core = Self::blank(me, config, view, now);
        core.sequencer = contact.clone();
        core.contact = Some(contact.clone());
        core.transmits.push_back((contact, Message::JoinRequest));
        core
    }

    fn blank(me: Id, config: Config, view: View<Id>, now: Millis) -> Self {
        MeshCore {
            sequencer: me.clone(),
            me,
            config,
            phase: Phase::Joining,
            max_view_seen: view.id,
            view,
            log: BTreeMap::new(),
            delivered: 0,
            ordered_known: 0,
            stable: 0,
            ordered_seqs: BTreeMap::new(),
            leader_term: 0,
            next_gseq: 1,
            assigned: BTreeMap::new(),
            waiting_submits: BTreeMap::new(),
            member_delivered: BTreeMap::new(),
            snapshot_requests: BTreeSet::new(),
            state_sent: BTreeSet::new(),
            refused: BTreeMap::new(),
            now,
            last_progress: now,
            next_seq: 1,
            in_flight: BTreeMap::new(),
            queued: VecDeque::new(),
            last_retry: now,
            last_heard: HashMap::new(),
            suspected: BTreeSet::new(),
            last_heartbeat: now,
            flush: None,
            contact: None,
            checks: BTreeMap::new(),
            checked_upto: 0,
            decided: BTreeMap::new(),
            repair: None,
            repair_requests: BTreeMap::new(),
            repairs_served: BTreeMap::new(),
            transmits: VecDeque::new(),
            outputs: VecDeque::new(),
        }
    }

    /// This member's id.
    pub fn id(&self) -> &Id {
        &self.me
    }

    /// The current view.
    pub fn view(&self) -> &View<Id> {
        &self.view
    }

    /// Highest gseq delivered.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whether this member has state and takes part.
    pub fn is_member(&self) -> bool {
        self.phase == Phase::Member
    }

    /// Whether this member is the sequencer.
    pub fn is_sequencer(&self) -> bool {
        self.is_member() && self.sequencer == self.me && self.flush.is_none()
    }

    /// Items kept for retransmission (for memory-bound checks).
    pub fn retained(&self) -> usize {
        self.log.len() + self.in_flight.len() + self.queued.len()
    }

    /// Multicast `payload` to the group. Returns its sender sequence number.
    pub fn multicast(&mut self, now: Millis, timestamp_ms: u64, payload: Vec<u8>) -> u64 {
        self.now = self.now.max(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued.push_back((timestamp_ms, payload));
        self.pump_submits(now);
        seq
    }

    /// Order a live upgrade (see [`Upgrade`]) at the next position, if this
    /// member is the sequencer of a settled view (no flush, no repair); whether it
    /// did. Only the sequencer proposes: its host watches the object's record, and
    /// after a sequencer change the next one's host does. Every member delivers
    /// it as [`Output::Upgrade`] at the same position (a flush keeps it if any
    /// survivor received it, like any ordered item).
    pub fn propose_upgrade(&mut self, now: Millis, version: u64, record: Vec<u8>) -> bool {
        self.now = self.now.max(now);
        if !self.is_member()
            || !self.is_sequencer()
            || self.flush.is_some()
            || self.repair.is_some()
        {
            return false;
        }
        self.order(Item::Upgrade(Upgrade { version, record }));
        true
    }

    /// The replica's snapshot requested by [`Output::TakeSnapshot`], at that cut.
    pub fn snapshot_taken(&mut self, cut: Cut<Id>, snapshot: Vec<u8>) {
        self.snapshot_requests.remove(&cut.for_member);
        if !self.view.contains(&cut.for_member) {
            return;
        }
        let message = match cut.repair_term {
            Some(term) => Message::RepairState {
                term,
                at: cut.at,
                view: cut.view,
                ordered_seqs: cut.ordered_seqs,
                snapshot,
            },
            None => {
                self.state_sent.insert(cut.for_member.clone());
                Message::State {
                    at: cut.at,
                    view: cut.view,
                    ordered_seqs: cut.ordered_seqs,
                    snapshot,
                }
            }
        };
        self.transmits.push_back((cut.for_member, message));
    }

    /// The replica could not take the snapshot requested for `cut`: tell the
    /// joiner its join is over, with `reason`, and order a view without it. The
    /// group carries on.
    ///
    /// Call it only for failures every replica would meet (fuel, a trap): a
    /// failure of this member alone (its deadline, its quarantine) should leave
    /// the joiner to retry elsewhere. Ignored if this member is not the sequencer,
    /// the joiner left the view, or it was already sent its state.
    pub fn snapshot_failed(&mut self, cut: Cut<Id>, reason: &str) {
        let joiner = cut.for_member;
        self.snapshot_requests.remove(&joiner);
        if cut.repair_term.is_some() {
            // A diverged member asks another source after a while.
            return;
        }
        if !self.is_sequencer() || !self.view.contains(&joiner) || self.state_sent.contains(&joiner)
        {
            return;
        }
        let reason = printable(reason);
        self.refused
            .insert(joiner.clone(), (reason.clone(), self.now));
        if self.refused.len() > MAX_REMEMBERED_REFUSALS {
            let oldest = self
                .refused
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.refused.remove(&oldest);
            }
        }
        self.transmits
            .push_back((joiner.clone(), Message::JoinRefused { reason }));
        self.order_view_without(|m| *m == joiner);
    }

    fn request_snapshot(&mut self, for_member: Id) {
        let cut = Cut {
            repair_term: None,
            for_member,
            at: self.delivered,
            view: self.view.clone(),
            ordered_seqs: self
                .ordered_seqs
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        self.outputs.push_back(Output::TakeSnapshot(cut));
    }

    /// Next message to send.
    pub fn poll_transmit(&mut self) -> Option<(Id, Message<Id>)> {
        self.transmits.pop_front()
    }

    /// Next output for the replica.
    pub fn poll_output(&mut self) -> Option<Output<Id>> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.phase == Phase::Gone || self.idle_alone() {
            return None;
        }
        let retry = self.last_retry + self.config.retry;
        match self.config.liveness {
            Liveness::PerGroup => Some((self.last_heartbeat + self.config.heartbeat).min(retry)),
            Liveness::PerPeer => self.has_work_to_retry().then_some(retry),
        }
    }

    /// Whether [`retry`](Self::retry) has anything to do: a join, submits not yet
    /// ordered, a gap, a flush.
    fn has_work_to_retry(&self) -> bool {
        self.phase == Phase::Joining
            || !self.in_flight.is_empty()
            || !self.queued.is_empty()
            || self.ordered_known > self.delivered
            || self.flush.is_some()
            || self.repair.is_some()
            || self
                .checks
                .values()
                .any(|c| c.own.is_some() && c.resends < DIGEST_RESENDS)
    }

    /// A member alone in its view with nothing to resend: it has nobody to
    /// heartbeat or suspect, so it needs no timer until a message or a multicast
    /// comes (a node's idle single-member objects then cost no wake-ups).
    fn idle_alone(&self) -> bool {
        self.phase == Phase::Member
            && self.view.members.len() == 1
            && self.flush.is_none()
            && self.in_flight.is_empty()
            && self.queued.is_empty()
    }

    /// Time passed: heartbeats, retries, failure detection.
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.phase == Phase::Gone {
            return;
        }
        self.now = self.now.max(now);
        if self.config.liveness == Liveness::PerGroup
            && now >= self.last_heartbeat + self.config.heartbeat
        {
            self.last_heartbeat = now;
            self.send_heartbeats();
            self.detect_failures(now);
        }
        if now >= self.last_retry + self.config.retry {
            self.last_retry = now;
            self.retry(now);
        }
    }

    /// How far this member has got, for its host's per-peer heartbeat
    /// ([`Liveness::PerPeer`]); `None` until it is a member.
    pub fn progress(&self) -> Option<Progress> {
        (self.phase == Phase::Member).then(|| Progress {
            view: self.view.id,
            delivered: self.delivered,
            ordered: self.ordered_known,
            stable: if self.is_sequencer() { self.stable } else { 0 },
        })
    }

    /// A member's progress, from its host's heartbeat ([`Liveness::PerPeer`]).
    pub fn handle_progress(&mut self, now: Millis, from: Id, progress: Progress) {
        let Progress {
            view,
            delivered,
            ordered,
            stable,
        } = progress;
        self.handle_message(
            now,
            from,
            Message::Heartbeat {
                view,
                delivered,
                ordered,
                stable,
            },
        );
    }

    /// The host has not heard from `member` for the suspect timeout
    /// ([`Liveness::PerPeer`]): suspect it, as if this core had seen it fall
    /// silent. Idempotent; a message from it clears the suspicion.
    pub fn handle_suspect(&mut self, now: Millis, member: Id) {
        if self.phase != Phase::Member || member == self.me || !self.view.contains(&member) {
            return;
        }
        self.now = self.now.max(now);
        self.suspected.insert(member);
        self.act_on_suspects(now);
        self.pump_submits(now);
    }

    /// Stop taking part: tell the members (or, while joining, the contact) with
    /// [`Message::Left`], so they exclude this member at once, and do nothing more.
    pub fn leave(&mut self) {
        let told: Vec<Id> = match self.phase {
            Phase::Gone => Vec::new(),
            Phase::Joining => self.contact.iter().cloned().collect(),
            Phase::Member => self
                .view
                .members
                .iter()
                .filter(|m| **m != self.me)
                .cloned()
                .collect(),
        };
        for member in told {
            self.transmits.push_back((member, Message::Left));
        }
        self.phase = Phase::Gone;
    }

    /// A message from a peer.
    pub fn handle_message(&mut self, now: Millis, from: Id, message: Message<Id>) {
        if self.phase == Phase::Gone || from == self.me {
            return;
        }
        self.now = self.now.max(now);
        self.last_heard.insert(from.clone(), now);
        if self.suspected.remove(&from) && self.view.contains(&from) {
            tracing::debug!("{:?}: {:?} is alive again", self.me, from);
        }
        match message {
            Message::Submit {
                seq,
                timestamp_ms,
                payload,
            } => self.on_submit(from, seq, timestamp_ms, payload),
            Message::Ordered { gseq, item } => self.on_ordered(&from, gseq, item),
            Message::Nack { from: first, to } => self.on_nack(from, first, to),
            Message::Heartbeat {
                view,
                delivered,
                ordered,
                stable,
            } => self.on_heartbeat(from, view, delivered, ordered, stable),
            Message::JoinRequest => self.on_join_request(from),
            Message::Redirect { sequencer } => {
                if self.phase == Phase::Joining
                    && sequencer != self.me
                    && self.contact.as_ref() == Some(&from)
                {
                    self.contact = Some(sequencer.clone());
                    self.sequencer = sequencer.clone();
                    self.transmits.push_back((sequencer, Message::JoinRequest));
                }
            }
            Message::State {
                at,
                view,
                ordered_seqs,
                snapshot,
            } => {
                // Only from the member we asked, and only if it orders that view.
                if self.phase == Phase::Joining
                    && self.contact.as_ref() == Some(&from)
                    && view.sequencer() == Some(&from)
                {
                    self.on_state(at, view, ordered_seqs, snapshot);
                }
            }
            Message::Flush { view } => self.on_flush(from, view),
            Message::FlushReply { view, received } => self.on_flush_reply(from, view, received),
            Message::Left => {
                if self.phase == Phase::Member && self.view.contains(&from) {
                    tracing::debug!("{:?}: {:?} left", self.me, from);
                    self.suspected.insert(from);
                    self.act_on_suspects(now);
                }
            }
            Message::Digest { at, digest } => self.on_digest(from, at, digest),
            Message::RepairRequest { after, term } => self.on_repair_request(from, after, term),
            Message::RepairState {
                term,
                at,
                view,
                ordered_seqs,
                snapshot,
            } => {
                if let Some(repair) = &mut self.repair
                    && repair.sources.contains(&from)
                    && term == repair.term
                    && term == self.leader_term
                    && at >= repair.after
                    && at >= self.delivered
                    && self.phase == Phase::Member
                    && view.contains(&self.me)
                {
                    repair.state = Some(RepairState {
                        from,
                        at,
                        view,
                        ordered_seqs,
                        snapshot,
                    });
                    self.finish_repair();
                }
            }
            Message::JoinRefused { reason } => {
                // Only the member we asked can refuse us, and only while we join.
                if self.phase == Phase::Joining && self.contact.as_ref() == Some(&from) {
                    self.phase = Phase::Gone;
                    self.outputs.push_back(Output::JoinRefused {
                        reason: printable(&reason),
                    });
                }
            }
        }
        self.pump_submits(now);
    }

    // ----- sequencer -----

    fn on_submit(&mut self, from: Id, seq: u64, timestamp_ms: u64, payload: Vec<u8>) {
        if !self.is_sequencer() {
            // A flushing leader takes submits again once it orders; they are retried.
            if self.is_member() && self.flush.is_none() {
                self.transmits.push_back((
                    from,
                    Message::Redirect {
                        sequencer: self.sequencer.clone(),
                    },
                ));
            }
            return;
        }
        if !self.view.contains(&from) {
            return;
        }
        let already_waiting = self
            .waiting_submits
            .get(&from)
            .is_some_and(|w| w.contains_key(&seq));
        if seq <= self.sender_ordered_upto(&from) || already_waiting {
            return;
        }
        let waiting = self.waiting_submits.entry(from.clone()).or_default();
        if waiting.len() < self.config.max_buffered {
            waiting.insert(seq, (timestamp_ms, payload));
        }
        self.order_ready_submits(&from);
    }

    /// Highest seq of `sender` ordered so far (delivered anywhere, or given a gseq by
    /// this sequencer).
    fn sender_ordered_upto(&self, sender: &Id) -> u64 {
        let delivered = self.ordered_seqs.get(sender).copied().unwrap_or(0);
        delivered.max(self.assigned.get(sender).copied().unwrap_or(0))
    }

    fn order_ready_submits(&mut self, sender: &Id) {
        loop {
            let next = self.sender_ordered_upto(sender) + 1;
            let Some(entry) = self
                .waiting_submits
                .get_mut(sender)
                .and_then(|w| w.remove(&next))
            else {
                break;
            };
            let (timestamp_ms, payload) = entry;
            self.order(Item::Event(Event {
                sender: sender.clone(),
                seq: next,
                timestamp_ms,
                payload,
            }));
        }
        if let Some(w) = self.waiting_submits.get_mut(sender) {
            let upto = self.ordered_seqs.get(sender).copied().unwrap_or(0);
            w.retain(|s, _| *s > upto);
        }
    }

    fn order(&mut self, item: Item<Id>) {
        let gseq = self.next_gseq;
        self.next_gseq += 1;
        if let Item::Event(e) = &item {
            let a = self.assigned.entry(e.sender.clone()).or_insert(0);
            *a = (*a).max(e.seq);
        }
        self.ordered_known = self.ordered_known.max(gseq);
        for member in &self.view.members {
            if *member != self.me {
                self.transmits.push_back((
                    member.clone(),
                    Message::Ordered {
                        gseq,
                        item: item.clone(),
                    },
                ));
            }
        }
        // A view that adds members must also reach them.
        if let Item::View(v) = &item {
            for member in &v.members {
                if *member != self.me && !self.view.contains(member) {
                    self.transmits.push_back((
                        member.clone(),
                        Message::Ordered {
                            gseq,
                            item: item.clone(),
                        },
                    ));
                }
            }
        }
        self.log.insert(gseq, item);
        self.deliver_ready();
    }

    fn on_join_request(&mut self, from: Id) {
        // A member being repaired would hand its diverged state to the joiner,
        // which retries.
        if !self.is_member() || self.repair.is_some() {
            return;
        }
        if !self.is_sequencer() {
            self.transmits.push_back((
                from,
                Message::Redirect {
                    sequencer: self.sequencer.clone(),
                },
            ));
            return;
        }
        if let Some((reason, at)) = self.refused.get(&from)
            && self.now.saturating_sub(*at) < REFUSAL_MEMORY
        {
            // A retry that crossed our refusal (or lost it): say it again.
            let reason = reason.clone();
            self.transmits
                .push_back((from, Message::JoinRefused { reason }));
            return;
        }
        if self.view.contains(&from) {
            // A retry: it has not got its state yet. Snapshot at our current point,
            // unless a snapshot for it is still being taken (a slow snapshot must
            // not be asked for again every retry period).
            if self.snapshot_requests.insert(from.clone()) {
                self.request_snapshot(from);
            }
            return;
        }
        let mut members = self.view.members.clone();
        members.push(from.clone());
        let view = View {
            id: self.max_view_seen.saturating_add(1),
            members,
        };
        self.order(Item::View(view));
        self.snapshot_requests.insert(from.clone());
        self.request_snapshot(from);
    }

    fn exclude_suspects(&mut self) {
        if !self.is_sequencer() {
            return;
        }
        // A copy: ordering the view installs it, which updates `suspected`.
        let suspected = self.suspected.clone();
        self.order_view_without(|m| suspected.contains(m));
    }

    /// Order the next view: the current one without the members `leaving` picks
    /// (nothing if it picks none).
    fn order_view_without(&mut self, leaving: impl Fn(&Id) -> bool) {
        let members: Vec<Id> = self
            .view
            .members
            .iter()
            .filter(|m| !leaving(m))
            .cloned()
            .collect();
        if members.len() != self.view.members.len() {
            let view = View {
                id: self.max_view_seen.saturating_add(1),
                members,
            };
            self.order(Item::View(view));
        }
    }

    // ----- every member -----

    fn on_ordered(&mut self, from: &Id, gseq: u64, item: Item<Id>) {
        if gseq <= self.delivered || self.log.contains_key(&gseq) {
            return;
        }
        // Ordered items count only from the sequencer we follow. A flush leader also
        // collects them from survivors; a joiner takes them from whoever adds it.
        let trusted = match self.phase {
            Phase::Joining => self.contact.as_ref() == Some(from),
            _ => *from == self.sequencer || (self.flush.is_some() && self.view.contains(from)),
        };
        if !trusted {
            return;
        }
        if self.log.len() >= self.config.max_buffered && gseq > self.delivered + 1 {
            return; // Re-fetched later.
        }
        self.ordered_known = self.ordered_known.max(gseq);
        self.log.insert(gseq, item);
        self.deliver_ready();
        if self.flush.is_some() {
            self.try_finish_flush();
        }
        if self.repair.as_ref().is_some_and(|r| r.state.is_some()) {
            self.finish_repair();
        }
    }

    fn deliver_ready(&mut self) {
        if self.phase != Phase::Member {
            return;
        }
        // A member waiting for a repair delivers nothing past where it stopped
        // (a check decided inside this loop may start one).
        while self.delivered < self.repair.as_ref().map_or(u64::MAX, |r| r.after)
            && let Some(item) = self.log.get(&(self.delivered + 1)).cloned()
        {
            self.delivered += 1;
            self.last_progress = self.now;
            let every = self.config.check_every;
            let periodic = every > 0 && self.delivered.is_multiple_of(every);
            let mut check = periodic.then(|| self.view.members.clone());
            match item {
                Item::Event(event) => {
                    let upto = self.ordered_seqs.entry(event.sender.clone()).or_insert(0);
                    *upto = (*upto).max(event.seq);
                    if event.sender == self.me {
                        self.in_flight.remove(&event.seq);
                    }
                    self.outputs.push_back(Output::Deliver {
                        gseq: self.delivered,
                        event,
                    });
                }
                Item::View(view) => {
                    // A view change is checked too, among the members that were
                    // in the view before it and stay (a joiner starts from a
                    // later cut; one that leaves will not vote).
                    let survivors: Vec<Id> = view
                        .members
                        .iter()
                        .filter(|m| self.view.contains(m))
                        .cloned()
                        .collect();
                    check = (every > 0
                        && (survivors.len() > 1 || periodic && !survivors.is_empty()))
                    .then_some(survivors);
                    self.install_view(view);
                    if self.phase == Phase::Gone {
                        return;
                    }
                }
                Item::Upgrade(upgrade) => self.outputs.push_back(Output::Upgrade {
                    gseq: self.delivered,
                    upgrade,
                }),
            }
            match check {
                Some(members) => self.start_check(self.delivered, members),
                // Votes a member sent ahead for a position that turned out not
                // to be checked here.
                None => {
                    self.checks.remove(&self.delivered);
                }
            }
        }
        self.serve_repair_requests();
        if self.is_sequencer() && self.view.members.len() == 1 {
            // Alone, what it delivered is stable at once: nobody's heartbeat will
            // say so, and the log would otherwise keep every event.
            self.collect_stable();
        }
    }

    fn install_view(&mut self, view: View<Id>) {
        self.max_view_seen = self.max_view_seen.max(view.id);
        self.leader_term = self.leader_term.max(view.id);
        let removed: Vec<Id> = self
            .view
            .members
            .iter()
            .filter(|m| !view.contains(m))
            .cloned()
            .collect();
        self.view = view.clone();
        if let Some(seq) = view.sequencer() {
            self.sequencer = seq.clone();
        }
        for gone in &removed {
            self.member_delivered.remove(gone);
            self.waiting_submits.remove(gone);
            self.suspected.remove(gone);
            self.state_sent.remove(gone);
            self.repair_requests.remove(gone);
            self.repairs_served.remove(gone);
        }
        if !removed.is_empty() {
            // A member that left will not vote: decide open checks without it.
            let open: Vec<u64> = self.checks.keys().copied().collect();
            for at in open {
                if let Some(check) = self.checks.get_mut(&at)
                    && let Some(members) = check.members.as_mut()
                {
                    // One that voted before it left still counts (every member
                    // then decides over the same set, whatever the timing).
                    let votes = &check.votes;
                    members.retain(|m| !removed.contains(m) || votes.contains_key(m));
                }
                self.evaluate_check(at);
            }
        }
        self.outputs.push_back(Output::View(view.clone()));
        if !view.contains(&self.me) {
            self.phase = Phase::Gone;
            self.outputs.push_back(Output::Excluded);
            return;
        }
        if self.sequencer == self.me {
            self.become_sequencer();
        }
        // Resend our pending submits to whoever orders now.
        self.resend_all_soon();
    }

    /// Start ordering after everything delivered here.
    fn become_sequencer(&mut self) {
        self.next_gseq = self.next_gseq.max(self.delivered + 1);
        for (sender, seq) in &self.ordered_seqs {
            let a = self.assigned.entry(sender.clone()).or_insert(0);
            *a = (*a).max(*seq);
        }
    }

    /// Ask for the items missing from the log past its contiguous part (not
    /// for what it holds already).
    fn request_holes(&mut self) {
        self.ask_for_items(self.contiguous_received(), self.ordered_known);
    }

    fn request_gap(&mut self) {
        self.ask_for_items(self.delivered, self.ordered_known);
    }

    /// Nack the items after `have` up to `want` (at most [`MAX_NACK_ITEMS`]) from
    /// the [`repair_source`](Self::repair_source); nothing if none are missing.
    fn ask_for_items(&mut self, have: u64, want: u64) {
        if want > have {
            self.transmits.push_back((
                self.repair_source(),
                Message::Nack {
                    from: have + 1,
                    to: want.min(have + MAX_NACK_ITEMS),
                },
            ));
        }
    }

    /// Who to ask for missing items: the sequencer, or while we lead a flush, the
    /// survivor that reported the most.
    fn repair_source(&self) -> Id {
        if let Some(flush) = &self.flush
            && let Some((id, _)) = flush
                .replies
                .iter()
                .filter(|(id, _)| **id != self.me)
                .max_by_key(|(_, r)| **r)
        {
            return id.clone();
        }
        self.sequencer.clone()
    }

    fn on_nack(&mut self, from: Id, first: u64, to: u64) {
        // Only members get items (a refused joiner must learn nothing), and only for a
        // well-formed range.
        if first > to || !self.view.contains(&from) {
            return;
        }
        if self.flush.is_some() {
            // Until the flush ends, items past the survivors' common point may still
            // be replaced; serving them now could hand out items that never count.
            return;
        }
        let to = to.min(first.saturating_add(MAX_NACK_ITEMS - 1));
        for (gseq, item) in self.log.range(first..=to) {
            self.transmits.push_back((
                from.clone(),
                Message::Ordered {
                    gseq: *gseq,
                    item: item.clone(),
                },
            ));
        }
    }

    fn on_heartbeat(&mut self, from: Id, view: u64, delivered: u64, ordered: u64, stable: u64) {
        if !self.view.contains(&from) {
            return; // Progress and view ids count only from members.
        }
        self.max_view_seen = self.max_view_seen.max(view);
        self.member_delivered.insert(from.clone(), delivered);
        if self.phase == Phase::Member && ordered > self.ordered_known {
            // Asked for by `retry` if delivery stalls; most of it is still in flight.
            self.ordered_known = ordered;
        }
        if from == self.sequencer && stable > self.stable {
            self.stable = stable.min(self.delivered);
            self.collect_stable();
        }
        if self.is_sequencer() {
            self.collect_stable();
        }
    }

    fn collect_stable(&mut self) {
        if self.is_sequencer() {
            let mut stable = self.delivered;
            for m in &self.view.members {
                if *m != self.me {
                    stable = stable.min(self.member_delivered.get(m).copied().unwrap_or(0));
                }
            }
            self.stable = self.stable.max(stable);
        }
        // Keep what is not yet stable, for retransmission and flushes.
        let keep_from = self.stable + 1;
        self.log = self.log.split_off(&keep_from);
    }

    fn on_state(
        &mut self,
        at: u64,
        view: View<Id>,
        ordered_seqs: Vec<(Id, u64)>,
        snapshot: Vec<u8>,
    ) {
        if self.phase != Phase::Joining || !view.contains(&self.me) {
            return;
        }
        self.phase = Phase::Member;
        self.delivered = at;
        self.ordered_known = self.ordered_known.max(at);
        self.stable = at;
        self.max_view_seen = self.max_view_seen.max(view.id);
        self.view = view.clone();
        self.sequencer = view.sequencer().cloned().unwrap_or(self.me.clone());
        self.ordered_seqs = ordered_seqs.into_iter().collect();
        // A previous run of this same member may have sent events: continue after
        // them (nothing is in flight yet while joining; queued items get fresh seqs).
        if let Some(previous) = self.ordered_seqs.get(&self.me).copied() {
            self.next_seq = self.next_seq.max(previous + 1 + self.queued.len() as u64);
        }
        self.log = self.log.split_off(&(at + 1));
        self.leader_term = self.leader_term.max(view.id);
        self.outputs.push_back(Output::InstallSnapshot { snapshot });
        self.outputs.push_back(Output::View(view));
        if self.sequencer == self.me {
            self.become_sequencer();
        }
        self.deliver_ready();
        self.request_gap();
    }

    // ----- divergence checks and repair -----

    /// The digest asked for by [`Output::TakeDigest`] at `at`: send it to the
    /// view's members and decide the check if their digests are in.
    pub fn digest_taken(&mut self, at: u64, digest: Digest) {
        if self.phase != Phase::Member {
            return;
        }
        let Some(check) = self.checks.get_mut(&at) else {
            return;
        };
        check.own = Some(digest);
        let members = check.members.clone().unwrap_or_default();
        for member in members {
            if member != self.me {
                self.transmits
                    .push_back((member, Message::Digest { at, digest }));
            }
        }
        self.evaluate_check(at);
    }

    fn start_check(&mut self, at: u64, members: Vec<Id>) {
        let check = self.checks.entry(at).or_default();
        check.members = Some(members);
        self.outputs.push_back(Output::TakeDigest { at });
        while self.checks.len() > MAX_OPEN_CHECKS {
            self.checks.pop_first();
        }
    }

    /// Whether position `at` is (or, not yet known here, may be) checked:
    /// every [`Config::check_every`]th position, and view changes.
    fn may_be_checked(&self, at: u64) -> bool {
        if at.is_multiple_of(self.config.check_every) {
            return true;
        }
        if at <= self.delivered {
            return self.checks.contains_key(&at) || self.decided.contains_key(&at);
        }
        match self.log.get(&at) {
            Some(Item::View(_)) => true,
            Some(_) => false,
            // Not received here yet: it may be a view. Votes for a few such
            // positions are kept (and dropped once the item there turns out
            // to be no view, see `deliver_ready`), so a member cannot park
            // many at positions never checked and crowd out the real checks.
            // (Not none: a member that decided a check sends its digest no
            // more, so one dropped here would leave the check open.)
            None => {
                let every = self.config.check_every;
                self.checks.contains_key(&at)
                    || self
                        .checks
                        .iter()
                        .filter(|(k, c)| c.members.is_none() && !k.is_multiple_of(every))
                        .count()
                        < MAX_SPECULATIVE_CHECKS
            }
        }
    }

    fn on_digest(&mut self, from: Id, at: u64, digest: Digest) {
        let every = self.config.check_every;
        // Only members vote, only at check positions, and not far beyond this
        // member's own position (a bound on what a peer can make it keep).
        if self.phase != Phase::Member
            || every == 0
            || !self.may_be_checked(at)
            || !self.view.contains(&from)
        {
            return;
        }
        if at <= self.checked_upto {
            // Decided here: answer with ours. A member that votes again
            // lacks it (ours to it was lost, and deciding stopped our
            // resends); it sends at most `DIGEST_RESENDS` times per check.
            if let Some((own, voters)) = self.decided.get_mut(&at) {
                voters.insert(from.clone());
                let own = *own;
                self.transmits
                    .push_back((from, Message::Digest { at, digest: own }));
            }
            return;
        }
        if at
            > self
                .delivered
                .saturating_add(every.saturating_mul(MAX_OPEN_CHECKS as u64))
        {
            return;
        }
        if !self.checks.contains_key(&at) && self.checks.len() >= MAX_OPEN_CHECKS {
            // Full: a newer check pushes out the oldest, which is likely stale.
            match self.checks.first_key_value() {
                Some((oldest, _)) if *oldest < at => {
                    self.checks.pop_first();
                }
                _ => return,
            }
        }
        self.checks
            .entry(at)
            .or_default()
            .votes
            .entry(from)
            .or_insert(digest);
        self.evaluate_check(at);
    }

    /// Decide the check at `at` if it can be: a strict majority of the view there
    /// shares a digest, or every member answered.
    fn evaluate_check(&mut self, at: u64) {
        let Some(check) = self.checks.get(&at) else {
            return;
        };
        let (Some(members), Some(own)) = (&check.members, check.own) else {
            return;
        };
        let n = members.len();
        let mut groups: BTreeMap<Digest, Vec<Id>> = BTreeMap::new();
        groups.entry(own).or_default().push(self.me.clone());
        for member in members {
            if *member != self.me
                && let Some(digest) = check.votes.get(member)
            {
                groups.entry(*digest).or_default().push(member.clone());
            }
        }
        let answered: usize = groups.values().map(Vec::len).sum();
        let majority = groups
            .iter()
            .find(|(_, holders)| holders.len() * 2 > n)
            .map(|(digest, holders)| (*digest, holders.clone()));
        let verdict = match majority {
            Some((digest, holders)) if digest == own => Verdict::Agree {
                agreeing: holders.len(),
            },
            Some((majority, holders)) => {
                // The majority, the sequencer first if it agrees (it is always
                // up to date); then members whose digest has not come, which are
                // likely with the majority. Never one known to differ.
                let agreeing = holders.len();
                let mut sources = holders;
                sources.sort_by_key(|m| Some(m) != self.view.sequencer());
                Verdict::Diverged {
                    majority,
                    agreeing,
                    sources,
                }
            }
            None if answered >= n => {
                let mut counted: Vec<(Digest, usize)> =
                    groups.iter().map(|(d, h)| (*d, h.len())).collect();
                counted.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
                Verdict::NoMajority { groups: counted }
            }
            None => return,
        };
        // Decided: this check and every older one are closed.
        let mut voters: BTreeSet<Id> = check.votes.keys().cloned().collect();
        voters.insert(self.me.clone());
        self.decided.insert(at, (own, voters));
        while self.decided.len() > MAX_OPEN_CHECKS {
            self.decided.pop_first();
        }
        self.checks = self.checks.split_off(&(at + 1));
        self.checked_upto = self.checked_upto.max(at);
        if let Verdict::Diverged { sources, .. } = &verdict
            && self.repair.is_none()
        {
            self.repair = Some(Repair {
                sources: sources.clone(),
                next: 0,
                asked_at: self.now,
                after: self.delivered,
                term: self.leader_term,
                state: None,
            });
            self.transmits.push_back((
                sources[0].clone(),
                Message::RepairRequest {
                    after: self.delivered,
                    term: self.leader_term,
                },
            ));
        }
        self.outputs.push_back(Output::Checked(CheckResult {
            at,
            members: n,
            own,
            verdict,
        }));
    }

    fn on_repair_request(&mut self, from: Id, after: u64, term: u64) {
        if self.phase != Phase::Member || self.repair.is_some() || !self.view.contains(&from) {
            return;
        }
        if self
            .repairs_served
            .get(&from)
            .is_some_and(|at| self.now.saturating_sub(*at) < self.config.suspect_after / 2)
        {
            return;
        }
        self.repair_requests.insert(from, (after, term));
        self.serve_repair_requests();
    }

    /// Take a snapshot for each diverged member whose cut this member reached.
    fn serve_repair_requests(&mut self) {
        if self.repair_requests.is_empty() || self.repair.is_some() {
            return;
        }
        let ready: Vec<(Id, u64)> = self
            .repair_requests
            .iter()
            .filter(|(_, (after, _))| *after <= self.delivered)
            .map(|(member, (_, term))| (member.clone(), *term))
            .collect();
        for (member, term) in ready {
            self.repair_requests.remove(&member);
            if self.snapshot_requests.insert(member.clone()) {
                self.repairs_served.insert(member.clone(), self.now);
                self.request_snapshot(member);
                if let Some(Output::TakeSnapshot(cut)) = self.outputs.back_mut() {
                    cut.repair_term = Some(term);
                }
            }
        }
    }

    /// Install the state a source sent once the log holds every item up to its
    /// cut; until then, ask for what is missing.
    fn finish_repair(&mut self) {
        let Some(at) = self
            .repair
            .as_ref()
            .and_then(|r| r.state.as_ref())
            .map(|state| state.at)
        else {
            return;
        };
        if at < self.delivered {
            // Too old for where this member is (it cannot deliver anything twice).
            if let Some(repair) = &mut self.repair {
                repair.state = None;
                repair.asked_at = 0;
            }
            return;
        }
        let received = self.contiguous_received();
        if received < at {
            self.ask_for_items(received, at);
            return;
        }
        let state = self
            .repair
            .take()
            .and_then(|r| r.state)
            .expect("checked above");
        let RepairState {
            from,
            at,
            view,
            ordered_seqs,
            snapshot,
        } = state;
        let own_before = self.ordered_seqs.get(&self.me).copied().unwrap_or(0);
        self.delivered = at;
        self.last_progress = self.now;
        self.ordered_known = self.ordered_known.max(at);
        self.ordered_seqs = ordered_seqs.into_iter().collect();
        let own_upto = self.ordered_seqs.get(&self.me).copied().unwrap_or(0);
        self.in_flight.retain(|seq, _| *seq > own_upto);
        // Items up to the cut stay in the log until stable, for retransmission,
        // as delivered ones do.
        // Views ordered while it was paused are in the state's cut. A flush it
        // took part in meanwhile (a newer leader term) keeps its leader.
        let view_changed = view.id > self.view.id;
        if view_changed {
            if view.id >= self.leader_term
                && let Some(sequencer) = view.sequencer()
            {
                self.sequencer = sequencer.clone();
            }
            self.view = view.clone();
        }
        self.max_view_seen = self.max_view_seen.max(view.id);
        self.leader_term = self.leader_term.max(view.id);
        self.outputs.push_back(Output::InstallSnapshot { snapshot });
        if view_changed {
            self.outputs.push_back(Output::View(view));
        }
        self.outputs.push_back(Output::Repaired {
            at,
            from,
            own_skipped: (own_before + 1)..=own_upto,
        });
        if self.sequencer == self.me {
            self.become_sequencer();
        }
        // Checks whose position the state skipped cannot be answered here.
        self.checks.retain(|check_at, _| *check_at > at);
        self.deliver_ready();
        self.request_gap();
        // A flush this member leads waited for it to deliver up to its target.
        if self.flush.is_some() {
            self.try_finish_flush();
        }
    }

    /// A flush renumbers what no survivor received past `received`: a state
    /// held for a cut beyond it may count items the group will order otherwise,
    /// so it is dropped and asked for again.
    fn drop_repair_state(&mut self, received: u64) {
        if let Some(repair) = &mut self.repair
            && repair.state.as_ref().is_some_and(|s| s.at > received)
        {
            repair.state = None;
            repair.asked_at = 0;
        }
    }

    /// Ask the next member of the majority if the last one has not answered
    /// within a suspect timeout.
    fn retry_repair(&mut self, now: Millis) {
        let Some(repair) = &mut self.repair else {
            return;
        };
        if now.saturating_sub(repair.asked_at) < self.config.suspect_after {
            return;
        }
        let live: Vec<Id> = repair
            .sources
            .iter()
            .filter(|m| self.view.contains(m) && !self.suspected.contains(*m))
            .cloned()
            .collect();
        if live.is_empty() {
            // The majority it knew is gone: deliver on, and let the next check
            // decide again.
            self.repair = None;
            self.deliver_ready();
            return;
        }
        repair.sources = live;
        repair.next = (repair.next + 1) % repair.sources.len();
        repair.asked_at = now;
        repair.term = self.leader_term;
        let (to, after, term) = (
            repair.sources[repair.next].clone(),
            repair.after,
            repair.term,
        );
        self.transmits
            .push_back((to, Message::RepairRequest { after, term }));
    }

    // ----- failure detection and flush -----

    fn send_heartbeats(&mut self) {
        if self.phase != Phase::Member {
            return;
        }
        let stable = if self.is_sequencer() { self.stable } else { 0 };
        for member in &self.view.members {
            if *member != self.me {
                self.transmits.push_back((
                    member.clone(),
                    Message::Heartbeat {
                        view: self.view.id,
                        delivered: self.delivered,
                        ordered: self.ordered_known,
                        stable,
                    },
                ));
            }
        }
    }

    fn detect_failures(&mut self, now: Millis) {
        if self.phase != Phase::Member {
            return;
        }
        for member in &self.view.members {
            if *member == self.me {
                continue;
            }
            let heard = *self.last_heard.entry(member.clone()).or_insert(now);
            if now.saturating_sub(heard) > self.config.suspect_after {
                self.suspected.insert(member.clone());
            }
        }
        self.act_on_suspects(now);
    }

    /// The sequencer excludes the suspects; if the sequencer is suspected, the most
    /// senior survivor flushes.
    fn act_on_suspects(&mut self, now: Millis) {
        if self.suspected.is_empty() {
            return;
        }
        if self.is_sequencer() {
            self.exclude_suspects();
            return;
        }
        // Is the sequencer gone, and are we the smallest survivor?
        if self.suspected.contains(&self.sequencer) {
            let survivors: Vec<&Id> = self
                .view
                .members
                .iter()
                .filter(|m| !self.suspected.contains(*m))
                .collect();
            if survivors.first() == Some(&&self.me) && self.flush.is_none() {
                self.start_flush(now);
            }
        }
    }

    fn start_flush(&mut self, now: Millis) {
        let view = self.max_view_seen.saturating_add(1);
        self.max_view_seen = view;
        tracing::debug!(
            "{:?}: sequencer {:?} suspected; flushing for view {view}",
            self.me,
            self.sequencer
        );
        let mut replies = BTreeMap::new();
        replies.insert(self.me.clone(), self.delivered);
        self.drop_repair_state(self.delivered);
        self.leader_term = view;
        self.flush = Some(Flush {
            view,
            replies,
            started: now,
        });
        self.sequencer = self.me.clone();
        self.send_flush_requests();
    }

    fn send_flush_requests(&mut self) {
        let Some(flush) = &self.flush else { return };
        let view = flush.view;
        let pending: Vec<Id> = self
            .view
            .members
            .iter()
            .filter(|m| {
                **m != self.me && !self.suspected.contains(*m) && !flush.replies.contains_key(*m)
            })
            .cloned()
            .collect();
        for m in pending {
            self.transmits.push_back((m, Message::Flush { view }));
        }
    }

    fn on_flush(&mut self, from: Id, view: u64) {
        if self.phase != Phase::Member || view <= self.view.id || !self.view.contains(&from) {
            return;
        }
        self.max_view_seen = self.max_view_seen.max(view);
        if let Some(mine) = &self.flush
            && (mine.view > view || (mine.view == view && self.me < from))
        {
            return; // Our own flush wins.
        }
        let same_leader_again = view == self.leader_term && from == self.sequencer;
        if view < self.leader_term || (view == self.leader_term && !same_leader_again) {
            return; // Promised to another leader for this term.
        }
        self.flush = None;
        self.leader_term = view;
        self.sequencer = from.clone();
        self.suspected.remove(&from);
        // Out-of-order items from the old sequencer beyond what we report may never
        // be ordered by anyone; the new leader decides what follows.
        let received = self.contiguous_received();
        let _beyond = self.log.split_off(&(received + 1));
        self.ordered_known = received;
        self.drop_repair_state(received);
        self.transmits
            .push_back((from, Message::FlushReply { view, received }));
        self.resend_all_soon();
    }

    fn contiguous_received(&self) -> u64 {
        let mut upto = self.delivered;
        while self.log.contains_key(&(upto + 1)) {
            upto += 1;
        }
        upto
    }

    fn on_flush_reply(&mut self, from: Id, view: u64, received: u64) {
        if !self.view.contains(&from) || self.suspected.contains(&from) {
            return;
        }
        let Some(flush) = &mut self.flush else { return };
        if flush.view != view {
            return;
        }
        flush.replies.insert(from.clone(), received);
        // Fetch what the most advanced survivor has and we lack.
        if received > self.contiguous_received() {
            self.ordered_known = self.ordered_known.max(received);
            self.transmits.push_back((
                from,
                Message::Nack {
                    from: self.contiguous_received() + 1,
                    to: received,
                },
            ));
        }
        self.try_finish_flush();
    }

    fn try_finish_flush(&mut self) {
        let Some(flush) = &self.flush else { return };
        let waiting_for_replies = self.view.members.iter().any(|m| {
            *m != self.me && !self.suspected.contains(m) && !flush.replies.contains_key(m)
        });
        if waiting_for_replies {
            return;
        }
        let target = flush.replies.values().copied().max().unwrap_or(0);
        if self.repair.is_some() {
            // A member waiting for a repair that must lead a flush gives the
            // repair up and delivers on (the members it would take the state
            // from could not get past the flush otherwise); the next check finds
            // it again, and it is repaired then.
            self.repair = None;
            self.deliver_ready();
        }
        let Some(flush) = &self.flush else { return };
        if self.delivered < target {
            return;
        }
        let view_id = flush.view;
        let members: Vec<Id> = self
            .view
            .members
            .iter()
            .filter(|m| **m == self.me || flush.replies.contains_key(*m))
            .cloned()
            .collect();
        self.flush = None;
        self.sequencer = self.me.clone();
        // Everything up to `target` is delivered here; items beyond the old
        // sequencer's last one never reached any survivor and are dropped.
        let _beyond = self.log.split_off(&(self.delivered + 1));
        self.next_gseq = self.delivered + 1;
        self.leader_term = self.leader_term.max(view_id);
        self.become_sequencer();
        self.ordered_known = self.delivered;
        self.max_view_seen = self.max_view_seen.max(view_id);
        let view = View {
            id: view_id,
            members,
        };
        self.order(Item::View(view));
    }

    // ----- our own submits -----

    fn pump_submits(&mut self, _now: Millis) {
        if self.phase != Phase::Member {
            return;
        }
        while self.in_flight.len() < self.config.max_in_flight {
            let Some((timestamp_ms, payload)) = self.queued.pop_front() else {
                break;
            };
            let seq = self.next_seq - self.queued.len() as u64 - 1;
            self.in_flight
                .insert(seq, (timestamp_ms, payload.clone(), self.now));
            self.send_submit(seq, timestamp_ms, payload);
        }
    }

    /// The sequencer changed: every pending submit goes out again at the next retry.
    fn resend_all_soon(&mut self) {
        for (_, _, sent) in self.in_flight.values_mut() {
            *sent = 0;
        }
        self.last_retry = 0;
    }

    fn send_submit(&mut self, seq: u64, timestamp_ms: u64, payload: Vec<u8>) {
        if self.is_sequencer() {
            self.on_submit_local(seq, timestamp_ms, payload);
        } else if self.flush.is_none() {
            self.transmits.push_back((
                self.sequencer.clone(),
                Message::Submit {
                    seq,
                    timestamp_ms,
                    payload,
                },
            ));
        }
    }

    fn on_submit_local(&mut self, seq: u64, timestamp_ms: u64, payload: Vec<u8>) {
        let me = self.me.clone();
        if seq <= self.sender_ordered_upto(&me) {
            return;
        }
        self.waiting_submits
            .entry(me.clone())
            .or_default()
            .insert(seq, (timestamp_ms, payload));
        self.order_ready_submits(&me);
    }

    fn retry(&mut self, now: Millis) {
        match self.phase {
            Phase::Gone => {}
            Phase::Joining => {
                if let Some(contact) = self.contact.clone() {
                    self.transmits.push_back((contact, Message::JoinRequest));
                }
            }
            Phase::Member => {
                let upto = self.ordered_seqs.get(&self.me).copied().unwrap_or(0);
                self.in_flight.retain(|seq, _| *seq > upto);
                // Resend only submits unanswered for a retry period.
                let due = now.saturating_sub(self.config.retry);
                let pending: Vec<(u64, u64, Vec<u8>)> = self
                    .in_flight
                    .iter_mut()
                    .filter(|(_, (_, _, sent))| *sent <= due)
                    .map(|(s, (t, p, sent))| {
                        *sent = now;
                        (*s, *t, p.clone())
                    })
                    .collect();
                for (seq, t, p) in pending {
                    self.send_submit(seq, t, p);
                }
                if self.repair.is_some() {
                    // Paused: delivery makes no progress on purpose, but the log
                    // must fill up as if it did (see `finish_repair`).
                    self.finish_repair();
                    self.request_holes();
                } else if now.saturating_sub(self.last_progress) >= self.config.retry {
                    self.request_gap();
                }
                if self.flush.is_some() {
                    self.send_flush_requests();
                    self.flush_timeouts(now);
                }
                self.retry_repair(now);
                self.resend_digests();
            }
        }
    }

    /// Send this member's digests again to the members of open checks it has
    /// no digest from (they likely lack this one too), a few periods at most.
    fn resend_digests(&mut self) {
        for (at, check) in &mut self.checks {
            let (Some(own), Some(members)) = (check.own, &check.members) else {
                continue;
            };
            if check.resends >= DIGEST_RESENDS {
                continue;
            }
            check.resends += 1;
            for member in members {
                if *member != self.me && !check.votes.contains_key(member) {
                    self.transmits.push_back((
                        member.clone(),
                        Message::Digest {
                            at: *at,
                            digest: own,
                        },
                    ));
                }
            }
        }
    }

    fn flush_timeouts(&mut self, now: Millis) {
        let Some(flush) = &self.flush else { return };
        if now.saturating_sub(flush.started) > self.config.suspect_after {
            // Survivors that did not answer in time are treated as failed.
            let silent: Vec<Id> = self
                .view
                .members
                .iter()
                .filter(|m| **m != self.me && !flush.replies.contains_key(*m))
                .cloned()
                .collect();
            self.suspected.extend(silent);
        }
        self.try_finish_flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deliver every message between `a` and `b` until both are quiet.
    fn exchange(a: &mut MeshCore<u32>, b: &mut MeshCore<u32>, now: Millis) {
        loop {
            let mut moved = false;
            while let Some((to, message)) = a.poll_transmit() {
                moved = true;
                if to == *b.id() {
                    b.handle_message(now, *a.id(), message);
                }
            }
            while let Some((to, message)) = b.poll_transmit() {
                moved = true;
                if to == *a.id() {
                    a.handle_message(now, *b.id(), message);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The next snapshot `core` asks its replica for, if any.
    fn snapshot_request(core: &mut MeshCore<u32>) -> Option<Cut<u32>> {
        std::iter::from_fn(|| core.poll_output()).find_map(|o| match o {
            Output::TakeSnapshot(cut) => Some(cut),
            _ => None,
        })
    }

    /// A lone member needs no timer and keeps no log; a joiner's request wakes it.
    #[test]
    fn a_lone_member_sleeps_and_forgets_what_it_delivered() {
        let mut member = MeshCore::found(1u32, Config::default(), 0);
        assert_eq!(
            member.poll_timeout(),
            None,
            "a lone member has nothing to time"
        );
        for i in 0..1_000 {
            member.multicast(i, i, vec![0; 16]);
        }
        let delivered = std::iter::from_fn(|| member.poll_output())
            .filter(|o| matches!(o, Output::Deliver { .. }))
            .count();
        assert_eq!(delivered, 1_000);
        assert_eq!(
            member.retained(),
            0,
            "a lone member keeps its delivered events"
        );
        assert_eq!(member.poll_timeout(), None);
        member.handle_message(2_000, 2, Message::JoinRequest);
        assert!(member.poll_timeout().is_some(), "a joiner needs heartbeats");
    }

    /// A snapshot for a retry that fails after the joiner was sent its state
    /// refuses nothing: the joiner has the state and stays.
    #[test]
    fn a_failed_extra_snapshot_does_not_refuse_a_joiner_that_has_its_state() {
        let mut member = MeshCore::found(1u32, Config::default(), 0);
        let mut joiner = MeshCore::join(2u32, 1, Config::default(), 0);
        exchange(&mut member, &mut joiner, 0);
        let first = snapshot_request(&mut member).unwrap();
        // A retry arrives while the first snapshot is taken: no second snapshot.
        member.handle_message(1, 2, Message::JoinRequest);
        assert!(
            std::iter::from_fn(|| member.poll_output())
                .all(|o| !matches!(o, Output::TakeSnapshot(_)))
        );
        member.snapshot_taken(first, b"state".to_vec());
        // A retry that crossed the State asks again; that snapshot fails.
        member.handle_message(2, 2, Message::JoinRequest);
        let second = snapshot_request(&mut member)
            .expect("a retry after the state was sent gets a fresh snapshot");
        member.snapshot_failed(second, "object x: out of fuel");
        exchange(&mut member, &mut joiner, 3);
        assert!(joiner.is_member(), "the joiner installed the first state");
        assert_eq!(member.view().members, [1, 2], "the joiner stays");
    }

    /// A member flooding repair requests gets one repair snapshot per half
    /// suspect timeout, not one per request.
    #[test]
    fn repair_requests_are_served_at_most_once_per_half_suspect_timeout() {
        let config = Config::default();
        let mut member = MeshCore::found(1u32, config.clone(), 0);
        let mut other = MeshCore::join(2u32, 1, config.clone(), 0);
        exchange(&mut member, &mut other, 0);
        let cut = snapshot_request(&mut member).expect("the joiner's state");
        member.snapshot_taken(cut, b"state".to_vec());
        exchange(&mut member, &mut other, 0);
        assert!(other.is_member());
        let mut served = 0;
        let mut now = 1;
        // Two suspect timeouts of requests, one per millisecond.
        while now <= 2 * config.suspect_after {
            member.handle_message(now, 2, Message::RepairRequest { after: 0, term: 0 });
            while let Some(output) = member.poll_output() {
                if let Output::TakeSnapshot(cut) = output {
                    assert!(cut.repair_term.is_some(), "{cut:?}");
                    served += 1;
                    member.snapshot_taken(cut, b"state".to_vec());
                }
            }
            while member.poll_transmit().is_some() {}
            now += 1;
        }
        assert!(
            (1..=5).contains(&served),
            "{served} repair snapshots for {} requests",
            2 * config.suspect_after
        );
    }

    /// A member whose snapshot fails refuses the joiner with the reason, orders a
    /// view without it and carries on; the joiner gives up instead of retrying.
    #[test]
    fn a_failed_snapshot_refuses_the_joiner_and_the_group_carries_on() {
        let mut member = MeshCore::found(1u32, Config::default(), 0);
        let mut joiner = MeshCore::join(2u32, 1, Config::default(), 0);
        exchange(&mut member, &mut joiner, 0);
        let cut = snapshot_request(&mut member).expect("a snapshot is requested for the joiner");
        assert_eq!(member.view().members, [1, 2]);
        let long = "x".repeat(MAX_REFUSAL_BYTES * 2);
        member.snapshot_failed(cut, &format!("object hostile: out of fuel {long}"));
        exchange(&mut member, &mut joiner, 1);
        let refused = std::iter::from_fn(|| joiner.poll_output())
            .find_map(|o| match o {
                Output::JoinRefused { reason } => Some(reason),
                _ => None,
            })
            .expect("the joiner is told");
        assert!(
            refused.starts_with("object hostile: out of fuel"),
            "{refused}"
        );
        assert_eq!(refused.len(), MAX_REFUSAL_BYTES);
        assert!(!joiner.is_member());
        assert_eq!(member.view().members, [1], "the joiner is out of the view");
        // A retry that crossed the refusal is refused again, without a new
        // snapshot or a view with the joiner.
        member.handle_message(1, 2, Message::JoinRequest);
        assert!(matches!(
            member.poll_transmit(),
            Some((2, Message::JoinRefused { .. }))
        ));
        assert!(
            std::iter::from_fn(|| member.poll_output())
                .all(|o| !matches!(o, Output::TakeSnapshot(_)))
        );
        assert_eq!(member.view().members, [1]);
        // The joiner no longer asks; the member still orders its own events.
        joiner.handle_timeout(10_000);
        assert!(joiner.poll_transmit().is_none(), "a refused joiner retries");
        member.multicast(2, 2, b"after".to_vec());
        let delivered = std::iter::from_fn(|| member.poll_output())
            .any(|o| matches!(o, Output::Deliver { event, .. } if event.payload == b"after"));
        assert!(delivered, "the member carries on");
    }
}
