//! One host's qsm protocol, for every object it has joined, as a sans-IO state
//! machine ([`QsmHost`]).
//!
//! Driven quinn-style: feed it [`handle_datagram`](QsmHost::handle_datagram) (UDP),
//! [`handle_membership`](QsmHost::handle_membership) (from the membership service),
//! [`handle_peer`](QsmHost::handle_peer) (reliable host-to-host messages: state
//! transfer), local [`multicast`](QsmHost::multicast)s and
//! [`handle_timeout`](QsmHost::handle_timeout) at [`poll_timeout`](QsmHost::poll_timeout);
//! then drain [`poll_transmit`](QsmHost::poll_transmit),
//! [`poll_output`](QsmHost::poll_output), [`poll_membership`](QsmHost::poll_membership)
//! and [`poll_peer`](QsmHost::poll_peer). Time is a parameter (microseconds).
//!
//! # Protocol
//! - **Streams per region.** A host sends each event of object `G` once per region
//!   view on `G`'s route, on its *stream* into that region (stream sequence numbers
//!   1, 2, 3, ... per region view). Messages of many objects to one region share a
//!   stream and are batched into datagrams of up to [`QsmConfig::max_datagram`].
//!   A receiver runs one protocol per region it is in (one), not one per object.
//! - **Delivery.** A receiver consumes each stream in order and hands each event to
//!   its object: per (object, sender) it delivers event `seq` only after `seq - 1`,
//!   exactly once (duplicates from repairs or from a region change are dropped,
//!   early ones held back). That is reliable FIFO per sender per object.
//! - **Repair (tree of rings).** Each region view is cut into rings of about 25
//!   hosts (see [`super::ring`]). Ring leaders circulate a token every
//!   [`QsmConfig::token_interval`]: each host adds what it has consumed (the ring's
//!   minimum becomes its ack), what it has heard of, and what it lacks (naks); a host
//!   that has what an earlier one lacks forwards it (unicast [`Kind::Repair`]).
//!   Naks nobody in the ring could serve go up to the ring of ring leaders; what no
//!   one in the region has reaches the sender in the region leader's [`Ack`], and the
//!   sender re-multicasts only that. The leader's acks free the sender's buffer, and
//!   the region's stable point flows back down so members free their repair caches.
//! - **Flow control.** Each stream is paced by a token bucket whose rate follows the
//!   region's reports (loss and backlog: multiplicative decrease, slow start then
//!   5% growth), and holds at most [`QsmConfig::window`] unacknowledged messages.
//!   [`has_room`](QsmHost::has_room) says when an object may multicast, so the
//!   shell pulls from objects only when the window allows. Receivers deliver
//!   against per-object credit ([`QsmHost::delivered`]): a slow object stalls its
//!   region's consumption, its ack, and so, through the window, the senders.
//! - **Region changes.** Region views never change; a new one replaces a retired
//!   one. Receivers drop a retired view at once; a sender resends what the retired
//!   view had not acknowledged on the streams of the object's new regions (new
//!   streams only: older ones carried it already). Per-sender de-duplication makes
//!   that exactly-once.
//! - **Joins (state transfer at a cut).** When the membership service adds host
//!   `H` to object `G` in view `v`, every older member marks its stream with a
//!   [`MessageBody::Marker`] `(v, first)`: its events from `first` on reach `H`. `H`
//!   asks the oldest older member `P` for a snapshot; `P` takes it once it has
//!   delivered every older member's events before its marker, and sends it with
//!   the cut (per sender, the last event it covers). `H` delivers exactly the events
//!   after the cut, buffering what arrives meanwhile. A host that is the only (or
//!   the oldest remaining) member starts from scratch.
//! - **Leaving.** A host leaves an object only once all its events of it are
//!   acknowledged everywhere (or after [`QsmConfig::leave_timeout`]), so a joiner's
//!   provider never misses a departed member's last events.
//! - **Upgrades (a flushed view change).** Every replica state belongs to a
//!   *logic epoch* (0 for a new object), and so does every event: a sender's
//!   markers carry the epoch of its events from `first` on. An upgrade is a view
//!   the membership service makes for it alone ([`Route::upgrade`]), with the
//!   same members as the view before, that starts epoch `e + 1`. At that view
//!   each member (in epoch `e`):
//!   1. stops sending ([`SendError::Upgrading`]) and marks its streams with
//!      epoch `e + 1` from its next seq;
//!   2. delivers every other member's events before that member's epoch marker,
//!      and holds (receives and acknowledges, but does not deliver) every event of
//!      a later epoch;
//!   3. once it has all of them, outputs [`Output::UpgradeCut`]: its replica has
//!      applied exactly the events of epoch `e`, of every member, that every
//!      other member applies before its own cut. The shell tries the upgrade on
//!      that state and reports with [`QsmHost::cut_tried`];
//!   4. multicasts its verdict ([`MessageBody::Vote`]) and waits for every
//!      other member's;
//!   5. outputs [`Output::UpgradeDecided`]: committed if every member's replica
//!      took the new logic, aborted (every replica keeps its logic) otherwise. The
//!      object is in epoch `e + 1` either way; held events are delivered, and it
//!      sends again.
//!
//!   So every event is applied by the same logic on every member, and the
//!   decision is the same everywhere. A joiner of a view before the upgrade view
//!   is sent a state of epoch `e` (taken before its provider's cut, since the
//!   cut waits for the joiner's marker) and takes part in the flush once it has
//!   its state; a joiner of a later view is sent its state only once its
//!   provider has decided, so it starts in epoch `e + 1` and never flushes. A
//!   member that fails or leaves drops out of the flush at the view that
//!   removes it; a verdict it sent before still counts wherever it arrived,
//!   and a member that left (rather than failed) still has its events before
//!   its marker delivered first. A member that has asked to leave sends
//!   nothing more (its earlier messages are acknowledged everywhere first), so
//!   its verdict reaches every member or none. **Limit:** as with any of its events, the
//!   verdict of a member that crashes may reach some members and not others
//!   before the view that removes it; they may then decide differently (repair
//!   spreads what any member has, so this needs the crash to hide the vote from
//!   the whole region). Likewise a member that leaves after
//!   [`QsmConfig::leave_timeout`] with messages not acknowledged: where its
//!   marker arrived the flush waits for its earlier events until they arrive or
//!   it leaves the domain; where its marker or verdict did not, members may
//!   decide or apply its late events differently.
//!
//! # What it does not promise
//! Events of a sender that crashes may reach some members and not others (repair
//! spreads what any member has, but what no member has is gone). Total order is the
//! `vsync` driver's job.

use super::membership::{
    FromMembership, HostInfo, MembershipConfig, Micros, RegionInfo, Route, ToMembership, Update,
};
use super::ring::{self, Role};
use super::stream::{InStream, Insert, Outgoing, Pacer, SendStream};
use super::wire::{
    self, Ack, Body, DropCounts, Header, HostNum, Key, KeyUse, Kind, Message, MessageBody, Nak,
    ObjectNum, RegionId, ReplayWindow, StreamSummary, Token, WireError, WireMessage,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

/// Largest event payload (one message in one datagram of [`wire::MAX_DATAGRAM`]).
pub const MAX_PAYLOAD: usize = wire::MAX_DATAGRAM - wire::HEADER_LEN - wire::TAG_LEN - 64;

/// Tunables of a host's qsm protocol.
#[derive(Debug, Clone)]
pub struct QsmConfig {
    /// Datagrams are filled with messages up to this many bytes (a larger single
    /// message travels alone).
    pub max_datagram: usize,
    /// Ring leaders start a token round this often while the ring is idle.
    pub token_interval: Micros,
    /// ... and this often while the last round saw unacknowledged messages or
    /// losses (acks then come in tens of milliseconds, so windows drain fast).
    pub busy_token_interval: Micros,
    /// A round whose token has not come back by then is abandoned.
    pub token_timeout: Micros,
    /// Most unacknowledged messages per stream.
    pub window: u64,
    /// Most unacknowledged bytes per stream.
    pub window_bytes: usize,
    /// Starting rate of a stream (bytes per second).
    pub initial_rate: f64,
    /// Lowest rate.
    pub min_rate: f64,
    /// Highest rate.
    pub max_rate: f64,
    /// A stream that heard no acknowledgement for this long re-multicasts its
    /// oldest messages (the region may not know it yet).
    pub retransmit_after: Micros,
    /// Events handed to an object and not yet reported applied, at most.
    pub delivery_credit: usize,
    /// Early events held back per object, at most.
    pub max_holdback: usize,
    /// Events buffered per object while it waits for its snapshot, at most.
    pub join_buffer: usize,
    /// Messages one host forwards per token visit, at most.
    pub repair_budget: usize,
    /// Naks a token carries, at most.
    pub max_naks: usize,
    /// A joiner asks another member if its snapshot has not come by then.
    pub snapshot_retry: Micros,
    /// A leaving host waits this long at most for its events to be acknowledged.
    pub leave_timeout: Micros,
}

impl Default for QsmConfig {
    fn default() -> Self {
        QsmConfig {
            max_datagram: 8192,
            token_interval: 200_000,
            busy_token_interval: 10_000,
            token_timeout: 500_000,
            window: 32_768,
            window_bytes: 8 << 20,
            initial_rate: 50e6,
            min_rate: 200e3,
            max_rate: 4e9,
            retransmit_after: 1_500_000,
            delivery_credit: 8192,
            max_holdback: 65_536,
            join_buffer: 65_536,
            repair_budget: 2048,
            max_naks: 128,
            snapshot_retry: 5_000_000,
            leave_timeout: 5_000_000,
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// A host's unicast address or a region's multicast group.
    pub to: SocketAddr,
    /// The sealed bytes.
    pub bytes: Vec<u8>,
}

/// Reliable messages between hosts (QUIC in the shell): state transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A joiner of `object`, added in view `view`, asks for a snapshot.
    SnapshotRequest {
        /// The object.
        object: ObjectNum,
        /// The joiner's join view.
        view: u64,
    },
    /// The snapshot, covering per sender the events up to the cut.
    Snapshot {
        /// The object.
        object: ObjectNum,
        /// The join view it answers.
        view: u64,
        /// The logic epoch the state belongs to.
        epoch: u64,
        /// Per sender, the last event the snapshot covers.
        cut: Vec<(HostNum, u64)>,
        /// The replica's state.
        state: Vec<u8>,
    },
    /// This member cannot serve the request (ask another).
    Refused {
        /// The object.
        object: ObjectNum,
        /// Why.
        reason: String,
    },
}

/// What the core asks of the replicas and the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The membership service registered this host.
    Registered {
        /// Its number.
        host: HostNum,
    },
    /// This host is now a member of `object`: start its replica from `snapshot`
    /// (`None`: from scratch). Deliveries for it follow.
    Joined {
        /// The object.
        object: ObjectNum,
        /// Its name.
        name: String,
        /// The state to start from.
        snapshot: Option<Vec<u8>>,
    },
    /// Deliver an event (in this order; report it applied with
    /// [`QsmHost::delivered`]).
    Deliver {
        /// The object.
        object: ObjectNum,
        /// Who sent it.
        sender: HostNum,
        /// The sender's seq for this object.
        seq: u64,
        /// The sender's clock.
        timestamp_ms: u64,
        /// The event.
        payload: Bytes,
    },
    /// The object's membership changed.
    View {
        /// The object.
        object: ObjectNum,
        /// View id.
        view: u64,
        /// Members, oldest first.
        members: Vec<HostNum>,
    },
    /// Snapshot the replica now (after everything delivered before this) and hand
    /// it to [`QsmHost::snapshot_taken`].
    TakeSnapshot {
        /// The object.
        object: ObjectNum,
        /// The joiner.
        for_host: HostNum,
        /// Its join view.
        view: u64,
        /// The logic epoch of the state (hand it back).
        epoch: u64,
        /// The cut the snapshot stands for.
        cut: Vec<(HostNum, u64)>,
    },
    /// An upgrade's cut: the replica has been handed every event of the epoch
    /// that ends here, from every member. Try the upgrade on its state (after
    /// everything delivered before this) and report with
    /// [`QsmHost::cut_tried`]; nothing more is delivered until
    /// [`Output::UpgradeDecided`].
    UpgradeCut {
        /// The object.
        object: ObjectNum,
        /// The epoch the upgrade starts.
        epoch: u64,
        /// The version asked for.
        version: u64,
        /// What the member that asked sent along (the shell's request).
        request: Vec<u8>,
    },
    /// Every member's verdict on the upgrade is in: switch to the new logic
    /// (`committed`) or keep the old one, before the next delivery.
    UpgradeDecided {
        /// The object.
        object: ObjectNum,
        /// The epoch the object is in from now on.
        epoch: u64,
        /// The version asked for.
        version: u64,
        /// Whether every replica took it.
        committed: bool,
    },
    /// This host is no longer a member of the object (left or removed).
    Left {
        /// The object.
        object: ObjectNum,
        /// Its name.
        name: String,
    },
    /// The membership service refused a join.
    JoinRefused {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Receive this multicast group from now on.
    JoinGroup(SocketAddr),
    /// Stop receiving this multicast group.
    LeaveGroup(SocketAddr),
    /// The membership service declared this host failed: every object is gone.
    /// Register again with a new core.
    Excluded,
}

/// Why a multicast was not accepted (nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not a member (never joined, left, or not yet routed).
    #[error("this host is not a member of object {0}")]
    NotMember(ObjectNum),
    /// Still waiting for its state.
    #[error("object {0} is still joining (waiting for its state)")]
    Joining(ObjectNum),
    /// Its members are switching logic (a live upgrade): try again after
    /// [`Output::UpgradeDecided`].
    #[error("object {0} is being upgraded: sends resume once every member has switched")]
    Upgrading(ObjectNum),
    /// Leaving.
    #[error("object {0} is being left")]
    Leaving(ObjectNum),
    /// The window or delivery credit is full: try again after acknowledgements.
    #[error("object {0} cannot send now: its streams' windows are full")]
    Busy(ObjectNum),
    /// Larger than [`MAX_PAYLOAD`].
    #[error("an event of {0} bytes exceeds the qsm limit of {MAX_PAYLOAD} bytes")]
    TooLarge(usize),
}

/// One region view as `lo status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionStats {
    /// Region view id.
    pub id: RegionId,
    /// Members.
    pub members: usize,
    /// Hosts in this host's level-0 ring.
    pub ring_size: usize,
    /// Levels in the tree of rings.
    pub levels: usize,
    /// Whether this host leads the region.
    pub leader: bool,
    /// Whether it uses the overlay instead of multicast.
    pub overlay: bool,
    /// Senders heard from.
    pub senders: usize,
    /// Messages received.
    pub received: u64,
    /// Of those, received through repair.
    pub repaired: u64,
}

/// One sending stream as `lo status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStats {
    /// Region view id.
    pub region: RegionId,
    /// Current rate (bytes per second).
    pub rate: f64,
    /// Unacknowledged messages.
    pub in_flight: u64,
    /// Messages sent (first copies).
    pub messages: u64,
    /// Payload bytes sent (first copies).
    pub bytes: u64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Messages re-multicast for losses.
    pub retransmitted: u64,
}

/// A host's qsm state for status displays and tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QsmStats {
    /// This host's number (0 before registration).
    pub host: HostNum,
    /// Its region.
    pub region: Option<RegionStats>,
    /// Its streams.
    pub streams: Vec<StreamStats>,
    /// Datagrams dropped, by reason.
    pub drops: DropCounts,
    /// Objects joined.
    pub objects: usize,
    /// Of those, still waiting for their state.
    pub joining: usize,
    /// Of those, with an upgrade under way or waiting.
    #[serde(default)]
    pub upgrading: usize,
    /// Messages held in buffers (send, receive, hold-back, join).
    pub retained: usize,
    /// Repair messages this host forwarded.
    pub repairs_sent: u64,
}

struct SenderIn {
    next: u64,
    holdback: BTreeMap<u64, (u64, Bytes)>,
}

impl SenderIn {
    fn new() -> Self {
        SenderIn {
            next: 1,
            holdback: BTreeMap::new(),
        }
    }
}

/// Logic epochs a member keeps markers and votes for ahead of its own.
const EPOCHS_AHEAD: u64 = 8;

/// An upgrade view this member has to flush (see the module docs).
struct Upgrade {
    /// The epoch it starts.
    epoch: u64,
    /// The upgrade view.
    view: u64,
    version: u64,
    request: Vec<u8>,
    /// The upgrade view's members but this one: a verdict any of them sent
    /// counts, even once it has left.
    voters: BTreeSet<HostNum>,
    /// Those still members: the cut waits for each one's epoch-`epoch` marker
    /// and the decision for its verdict.
    waiting: BTreeSet<HostNum>,
    /// Those that left since (not failed): the cut still waits for their
    /// events before their marker, if it has the marker (a leaver's events are
    /// acknowledged everywhere before it goes, so they come).
    departed: BTreeSet<HostNum>,
    /// Marked its own streams and paused its sends.
    started: bool,
    /// [`Output::UpgradeCut`] is out.
    cut: bool,
    /// This replica's verdict.
    mine: Option<bool>,
}

enum Phase {
    Joining {
        buffer: VecDeque<(HostNum, Message)>,
        provider: Option<HostNum>,
        asked_at: Micros,
        tried: BTreeSet<HostNum>,
    },
    Member,
}

struct ObjectState {
    name: String,
    view: u64,
    /// (member, view it joined in), oldest first.
    members: Vec<(HostNum, u64)>,
    route: Vec<RegionId>,
    phase: Phase,
    joined_view: u64,
    next_seq: u64,
    senders: BTreeMap<HostNum, SenderIn>,
    credit_used: usize,
    holdback_len: usize,
    /// Per sender: the newest (view, first) marker seen.
    markers: BTreeMap<HostNum, (u64, u64)>,
    /// Snapshot requests waiting: (joiner, its join view).
    requests: Vec<(HostNum, u64)>,
    leaving: Option<Micros>,
    /// Copies of this host's messages of the object not yet acknowledged.
    unstable: u64,
    /// The logic epoch of its replica's state.
    epoch: u64,
    /// Per sender: (epoch, first seq) of its markers of epochs above `epoch`,
    /// ascending; its events from the first of them on are held.
    epoch_marks: BTreeMap<HostNum, Vec<(u64, u64)>>,
    /// Per epoch above `epoch`: the members' verdicts heard so far.
    votes: BTreeMap<u64, BTreeMap<HostNum, bool>>,
    /// Upgrade views to flush, oldest first (only the first is under way).
    upgrades: VecDeque<Upgrade>,
}

impl ObjectState {
    fn is_member(&self) -> bool {
        matches!(self.phase, Phase::Member)
    }

    fn member_nums(&self) -> Vec<HostNum> {
        self.members.iter().map(|(m, _)| *m).collect()
    }

    /// The first of `sender`'s events this replica must not deliver yet: the
    /// first of a later logic epoch than its own.
    fn hold_from(&self, sender: HostNum) -> u64 {
        // Between an upgrade's cut and its decision, nothing is delivered.
        if self.upgrades.front().is_some_and(|u| u.cut) {
            return 0;
        }
        self.epoch_marks
            .get(&sender)
            .and_then(|marks| marks.iter().find(|(e, _)| *e > self.epoch))
            .map_or(u64::MAX, |(_, first)| *first)
    }

    /// Whether its sends are paused for an upgrade.
    fn upgrading(&self) -> bool {
        self.upgrades.front().is_some_and(|u| u.started)
    }

    /// Its replica is in logic epoch `epoch` now: markers and votes of that epoch
    /// and earlier ones are done with.
    fn enter_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.votes.retain(|e, _| *e > epoch);
        for marks in self.epoch_marks.values_mut() {
            marks.retain(|(e, _)| *e > epoch);
        }
        self.epoch_marks.retain(|_, marks| !marks.is_empty());
    }

    /// A sender's marker of logic epoch `epoch` from seq `first` (the earliest one
    /// per epoch counts).
    fn note_epoch(&mut self, sender: HostNum, epoch: u64, first: u64) {
        if epoch <= self.epoch || epoch > self.epoch + EPOCHS_AHEAD {
            return;
        }
        let marks = self.epoch_marks.entry(sender).or_default();
        if let Err(at) = marks.binary_search_by_key(&epoch, |(e, _)| *e) {
            marks.insert(at, (epoch, first));
        }
    }
}

struct RingState {
    role: Role,
    last_round: u64,
    round: u64,
    in_progress: bool,
    started: Micros,
    last_complete: Micros,
    carried: Vec<Nak>,
    /// The last completed round of this ring (when leading it), for the level above.
    summary: Option<(Vec<StreamSummary>, Vec<Nak>)>,
    /// Whether the last round saw traffic, unacknowledged messages or open naks.
    busy: bool,
    /// Per stream, the ack of the last round.
    acks: BTreeMap<HostNum, u64>,
}

struct Region {
    id: RegionId,
    members: Vec<HostNum>,
    group: SocketAddr,
    overlay: bool,
    master: [u8; 32],
    key: Key,
    stream_keys: BTreeMap<HostNum, Key>,
    inbound: BTreeMap<HostNum, InStream>,
    stable: BTreeMap<HostNum, u64>,
    rings: Vec<RingState>,
    levels: usize,
    stalled: BTreeSet<HostNum>,
    /// Per sender: the last ack sent and rounds since (acks go out when they
    /// change, carry losses, or every [`REACK_ROUNDS`] rounds).
    acks_sent: BTreeMap<HostNum, (u64, u32)>,
}

/// A region leader repeats an unchanged ack every this many rounds.
const REACK_ROUNDS: u32 = 5;

impl Region {
    fn new(info: RegionInfo, me: HostNum, ring_size: usize, now: Micros) -> Region {
        let layout = ring::layout(&info.members, ring_size);
        let rings = ring::roles(&layout, me)
            .into_iter()
            .map(|role| RingState {
                role,
                last_round: 0,
                round: 0,
                in_progress: false,
                started: now,
                last_complete: 0,
                carried: Vec::new(),
                summary: None,
                busy: false,
                acks: BTreeMap::new(),
            })
            .collect();
        Region {
            id: info.id,
            key: Key::new(&wire::derive_key(&info.master, info.id, KeyUse::Region)),
            members: info.members,
            group: info.group,
            overlay: info.overlay,
            master: info.master,
            stream_keys: BTreeMap::new(),
            inbound: BTreeMap::new(),
            stable: BTreeMap::new(),
            rings,
            levels: layout.len(),
            stalled: BTreeSet::new(),
            acks_sent: BTreeMap::new(),
        }
    }

    fn stream_key(&mut self, sender: HostNum) -> Key {
        let (master, id) = (self.master, self.id);
        self.stream_keys
            .entry(sender)
            .or_insert_with(|| Key::new(&wire::derive_key(&master, id, KeyUse::Stream(sender))))
            .clone()
    }

    fn learn_stable(&mut self, stable: &[(HostNum, u64)]) {
        for (sender, upto) in stable {
            let s = self.stable.entry(*sender).or_insert(0);
            if *upto > *s {
                *s = *upto;
                if let Some(stream) = self.inbound.get_mut(sender) {
                    stream.forget_upto(*upto);
                }
            }
        }
    }
}

/// What a stream message did to its object.
enum Dispatch {
    Consumed,
    Stall,
}

/// One host's qsm protocol state.
pub struct QsmHost<Id> {
    config: QsmConfig,
    data_addr: SocketAddr,
    me: HostNum,
    params: MembershipConfig,
    counter: u64,
    ordinal: u64,
    hosts: HashMap<HostNum, HostInfo<Id>>,
    by_id: HashMap<Id, HostNum>,
    replay: HashMap<HostNum, ReplayWindow>,
    region: Option<Region>,
    streams: BTreeMap<RegionId, SendStream>,
    objects: BTreeMap<ObjectNum, ObjectState>,
    names: HashMap<String, ObjectNum>,
    wanted: BTreeSet<String>,
    /// Objects waiting for their snapshot.
    joining: BTreeSet<ObjectNum>,
    /// Objects being left whose leave was not yet sent.
    leaving: BTreeSet<ObjectNum>,
    /// Objects with snapshot requests waiting.
    requesting: BTreeSet<ObjectNum>,
    /// Objects with upgrades to flush.
    upgrading: BTreeSet<ObjectNum>,
    /// Hosts the membership service removed (failed or left the domain).
    gone: BTreeSet<HostNum>,
    transmits: VecDeque<Datagram>,
    outputs: VecDeque<Output>,
    to_membership: VecDeque<ToMembership>,
    to_peers: VecDeque<(HostNum, PeerMessage)>,
    last_heartbeat: Micros,
    now: Micros,
    drops: DropCounts,
    repairs_sent: u64,
    excluded: bool,
}

impl<Id: Clone + std::fmt::Debug + Eq + std::hash::Hash> QsmHost<Id> {
    /// A host that receives unicast datagrams at `data_addr` (and multicast, if
    /// `multicast`). It registers with the membership service at once.
    pub fn new(config: QsmConfig, data_addr: SocketAddr, multicast: bool, now: Micros) -> Self {
        let mut host = QsmHost {
            config,
            data_addr,
            me: 0,
            params: MembershipConfig::default(),
            counter: 0,
            ordinal: 0,
            hosts: HashMap::new(),
            by_id: HashMap::new(),
            replay: HashMap::new(),
            region: None,
            streams: BTreeMap::new(),
            objects: BTreeMap::new(),
            names: HashMap::new(),
            wanted: BTreeSet::new(),
            joining: BTreeSet::new(),
            leaving: BTreeSet::new(),
            requesting: BTreeSet::new(),
            upgrading: BTreeSet::new(),
            gone: BTreeSet::new(),
            transmits: VecDeque::new(),
            outputs: VecDeque::new(),
            to_membership: VecDeque::new(),
            to_peers: VecDeque::new(),
            last_heartbeat: now,
            now,
            drops: DropCounts::default(),
            repairs_sent: 0,
            excluded: false,
        };
        host.to_membership.push_back(ToMembership::Hello {
            data_addr,
            multicast,
        });
        host
    }

    /// This host's number (0 until registered).
    pub fn me(&self) -> HostNum {
        self.me
    }

    /// Where it receives unicast datagrams.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// What the membership service said about host `num`.
    pub fn host(&self, num: HostNum) -> Option<&HostInfo<Id>> {
        self.hosts.get(&num)
    }

    /// The number of the host whose identity is `id`, if known.
    pub fn host_num(&self, id: &Id) -> Option<HostNum> {
        self.by_id.get(id).copied()
    }

    /// The number of the object called `name`, once joined.
    pub fn object_num(&self, name: &str) -> Option<ObjectNum> {
        self.names.get(name).copied()
    }

    /// The name of object `num`.
    pub fn object_name(&self, num: ObjectNum) -> Option<&str> {
        self.objects.get(&num).map(|o| o.name.as_str())
    }

    /// Whether this host is a member of `object` with state.
    pub fn is_member(&self, object: ObjectNum) -> bool {
        self.objects
            .get(&object)
            .is_some_and(ObjectState::is_member)
    }

    /// Members of `object` (oldest first).
    pub fn members(&self, object: ObjectNum) -> Vec<HostNum> {
        self.objects
            .get(&object)
            .map(ObjectState::member_nums)
            .unwrap_or_default()
    }

    /// Per sender, the last event of `object` delivered here.
    pub fn delivered_upto(&self, object: ObjectNum) -> Vec<(HostNum, u64)> {
        let Some(o) = self.objects.get(&object) else {
            return Vec::new();
        };
        let mut cut: Vec<(HostNum, u64)> =
            o.senders.iter().map(|(s, st)| (*s, st.next - 1)).collect();
        cut.push((self.me, o.next_seq - 1));
        cut
    }

    /// A description of this host's state for `object` and its region's streams
    /// (for debugging failed simulations).
    pub fn describe(&self, object: ObjectNum) -> String {
        let mut out = String::new();
        if let Some(o) = self.objects.get(&object) {
            out += &format!(
                "object {object} view {} member {} route {:?} credit {} holdback {}\n",
                o.view,
                o.is_member(),
                o.route,
                o.credit_used,
                o.holdback_len
            );
            for (s, st) in &o.senders {
                let held: Vec<u64> = st.holdback.keys().copied().collect();
                out += &format!("  sender {s}: next {} held {held:?}\n", st.next);
            }
        }
        if let Some(r) = &self.region {
            out += &format!(
                "region {} members {:?} stalled {:?}\n",
                r.id, r.members, r.stalled
            );
            for (s, st) in &r.inbound {
                out += &format!(
                    "  in {s}: contig {} consumed {} max {} held {}\n",
                    st.contig,
                    st.consumed,
                    st.max_seen,
                    st.held()
                );
            }
        }
        for s in self.streams.values() {
            out += &format!(
                "stream -> {}: acked {} sent {} next {}\n",
                s.region,
                s.acked,
                s.sent,
                s.next_seq()
            );
        }
        out
    }

    /// Ask to join the object `name` (its access policy was checked by the shell).
    pub fn join(&mut self, name: &str) {
        if self.names.contains_key(name) || !self.wanted.insert(name.to_string()) {
            return;
        }
        self.to_membership.push_back(ToMembership::Join {
            object: name.to_string(),
        });
    }

    /// Leave the object `name`, once this host's events of it are acknowledged.
    pub fn leave(&mut self, now: Micros, name: &str) {
        self.now = self.now.max(now);
        if self.wanted.remove(name) {
            self.to_membership.push_back(ToMembership::Leave {
                object: name.to_string(),
            });
            return;
        }
        if let Some(num) = self.names.get(name)
            && let Some(o) = self.objects.get_mut(num)
            && o.leaving.is_none()
        {
            o.leaving = Some(now);
            self.leaving.insert(*num);
            self.check_leaving(now);
        }
    }

    /// Whether `object` can take a multicast now (member, window and credit open).
    pub fn has_room(&self, object: ObjectNum) -> bool {
        self.send_check(object, 0).is_ok()
    }

    fn send_check(&self, object: ObjectNum, len: usize) -> Result<(), SendError> {
        let o = self
            .objects
            .get(&object)
            .ok_or(SendError::NotMember(object))?;
        if !o.is_member() {
            return Err(SendError::Joining(object));
        }
        if o.leaving.is_some() {
            return Err(SendError::Leaving(object));
        }
        if o.upgrading() {
            return Err(SendError::Upgrading(object));
        }
        if len > MAX_PAYLOAD {
            return Err(SendError::TooLarge(len));
        }
        if o.credit_used >= self.config.delivery_credit {
            return Err(SendError::Busy(object));
        }
        let open = o.route.iter().all(|r| {
            self.streams.get(r).is_none_or(|s| {
                s.in_flight() < self.config.window && s.bytes < self.config.window_bytes
            })
        });
        if !open {
            return Err(SendError::Busy(object));
        }
        Ok(())
    }

    /// Multicast an event of `object`. Returns its seq. The event is delivered here
    /// at once (in [`poll_output`](Self::poll_output)) and to every member.
    pub fn multicast(
        &mut self,
        now: Micros,
        object: ObjectNum,
        timestamp_ms: u64,
        payload: Bytes,
    ) -> Result<u64, SendError> {
        self.now = self.now.max(now);
        self.send_check(object, payload.len())?;
        let o = self.objects.get_mut(&object).expect("checked");
        let seq = o.next_seq;
        o.next_seq += 1;
        o.credit_used += 1;
        self.outputs.push_back(Output::Deliver {
            object,
            sender: self.me,
            seq,
            timestamp_ms,
            payload: payload.clone(),
        });
        let msg = Message {
            object,
            body: MessageBody::Event {
                seq,
                timestamp_ms,
                payload,
            },
        };
        // Not sent yet: the next `poll_transmit` packs everything multicast since
        // the last one into as few datagrams as fit (batching without a timer).
        self.enqueue(object, msg);
        Ok(seq)
    }

    /// Put a message on every stream of its object's route.
    fn enqueue(&mut self, object: ObjectNum, msg: Message) {
        let ordinal = self.ordinal;
        self.ordinal += 1;
        let leave_sent = !self.leaving.contains(&object);
        let Some(o) = self.objects.get_mut(&object) else {
            return;
        };
        // Once it asked to leave, a member sends nothing more: its messages must
        // have reached every member before it goes (a verdict that reached only
        // some would let them decide an upgrade differently).
        if o.leaving.is_some() && leave_sent {
            return;
        }
        for r in &o.route {
            if let Some(s) = self.streams.get_mut(r) {
                s.push(msg.clone(), ordinal);
                o.unstable += 1;
            }
        }
    }

    /// The replica applied `count` more events of `object` (returns delivery
    /// credit).
    pub fn delivered(&mut self, now: Micros, object: ObjectNum, count: usize) {
        self.now = self.now.max(now);
        let credit = self.config.delivery_credit;
        if let Some(o) = self.objects.get_mut(&object) {
            o.credit_used = o.credit_used.saturating_sub(count);
            if o.holdback_len > 0 {
                drain_holdback(object, o, credit, &mut self.outputs);
            }
        }
        // Called once per object per batch: with thousands of objects it must cost
        // next to nothing unless something waits for credit.
        if self.region.as_ref().is_some_and(|r| !r.stalled.is_empty()) {
            self.resume();
        }
        self.check_requests();
        self.check_upgrades();
    }

    /// The snapshot asked for by [`Output::TakeSnapshot`].
    pub fn snapshot_taken(
        &mut self,
        object: ObjectNum,
        for_host: HostNum,
        view: u64,
        epoch: u64,
        cut: Vec<(HostNum, u64)>,
        state: Vec<u8>,
    ) {
        self.to_peers.push_back((
            for_host,
            PeerMessage::Snapshot {
                object,
                view,
                epoch,
                cut,
                state,
            },
        ));
    }

    /// Ask the membership service for an upgrade of `object` to `version`
    /// (ignored unless this host is a member; the service orders one upgrade
    /// per logic epoch and ignores requests from an epoch the object has left).
    /// `request` reaches every member in [`Output::UpgradeCut`].
    pub fn request_upgrade(&mut self, object: ObjectNum, version: u64, request: Vec<u8>) {
        if let Some(o) = self.objects.get(&object)
            && o.is_member()
        {
            self.to_membership.push_back(ToMembership::Upgrade {
                object: o.name.clone(),
                epoch: o.upgrades.back().map_or(o.epoch, |u| u.epoch),
                version,
                request,
            });
        }
    }

    /// The replica's verdict on the upgrade of [`Output::UpgradeCut`]: whether it
    /// took the new logic (kept aside until [`Output::UpgradeDecided`]).
    pub fn cut_tried(&mut self, now: Micros, object: ObjectNum, epoch: u64, ok: bool) {
        self.now = self.now.max(now);
        let Some(o) = self.objects.get_mut(&object) else {
            return;
        };
        let Some(up) = o.upgrades.front_mut() else {
            return;
        };
        if up.epoch != epoch || !up.cut || up.mine.is_some() {
            return;
        }
        up.mine = Some(ok);
        self.enqueue(
            object,
            Message {
                object,
                body: MessageBody::Vote { epoch, ok },
            },
        );
        self.check_upgrades();
    }

    /// The logic epoch of `object`'s replica here.
    pub fn epoch(&self, object: ObjectNum) -> Option<u64> {
        self.objects.get(&object).map(|o| o.epoch)
    }

    /// Next datagram to send. Multicasts made since the last call go out now, as
    /// many per datagram as fit; call it after a burst of
    /// [`multicast`](Self::multicast)s, not between them.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        if self.transmits.is_empty() {
            self.flush(self.now);
        }
        self.transmits.pop_front()
    }

    /// Next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Next message for the membership service.
    pub fn poll_membership(&mut self) -> Option<ToMembership> {
        self.to_membership.pop_front()
    }

    /// Next reliable message for another host.
    pub fn poll_peer(&mut self) -> Option<(HostNum, PeerMessage)> {
        self.to_peers.pop_front()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> QsmStats {
        let region = self.region.as_ref().map(|r| RegionStats {
            id: r.id,
            members: r.members.len(),
            ring_size: r.rings.first().map(|x| x.role.nodes.len()).unwrap_or(0),
            levels: r.levels,
            leader: r.members.first() == Some(&self.me),
            overlay: r.overlay,
            senders: r.inbound.len(),
            received: r.inbound.values().map(|s| s.received).sum(),
            repaired: r.inbound.values().map(|s| s.repaired).sum(),
        });
        let streams = self
            .streams
            .values()
            .map(|s| StreamStats {
                region: s.region,
                rate: s.pacer.rate,
                in_flight: s.in_flight(),
                messages: s.counters.messages,
                bytes: s.counters.bytes,
                datagrams: s.counters.datagrams,
                retransmitted: s.counters.retransmitted,
            })
            .collect();
        QsmStats {
            host: self.me,
            region,
            streams,
            drops: self.drops,
            objects: self.objects.len(),
            joining: self.joining.len(),
            upgrading: self.upgrading.len(),
            retained: self.retained(),
            repairs_sent: self.repairs_sent,
        }
    }

    /// This host's region view and its master secret: for tests that play a
    /// hostile *member* (holders of the region's keys can seal anything).
    #[doc(hidden)]
    pub fn region_secret_for_tests(&self) -> Option<(RegionId, [u8; 32], Vec<HostNum>)> {
        self.region
            .as_ref()
            .map(|r| (r.id, r.master, r.members.clone()))
    }

    /// The qsm domain number (from the membership service).
    pub fn domain(&self) -> u32 {
        self.params.domain
    }

    /// Messages held in every buffer (for memory-bound checks).
    pub fn retained(&self) -> usize {
        let send: usize = self.streams.values().map(|s| s.buffer.len()).sum();
        let recv: usize = self
            .region
            .as_ref()
            .map(|r| r.inbound.values().map(InStream::held).sum())
            .unwrap_or(0);
        let objects: usize = self
            .objects
            .values()
            .map(|o| {
                o.holdback_len
                    + match &o.phase {
                        Phase::Joining { buffer, .. } => buffer.len(),
                        Phase::Member => 0,
                    }
            })
            .sum();
        send + recv + objects
    }

    // ----- membership -----

    /// A message from the membership service.
    pub fn handle_membership(&mut self, now: Micros, message: FromMembership<Id>) {
        self.now = self.now.max(now);
        if self.excluded {
            return;
        }
        match message {
            FromMembership::Welcome { host, config } => {
                self.me = host;
                self.params = config;
                self.outputs.push_back(Output::Registered { host });
            }
            FromMembership::Update(update) => self.apply_update(now, update),
            FromMembership::JoinRefused { object, reason } => {
                self.wanted.remove(&object);
                self.outputs.push_back(Output::JoinRefused {
                    name: object,
                    reason,
                });
            }
            FromMembership::Excluded => {
                self.excluded = true;
                if let Some(r) = self.region.take()
                    && !r.overlay
                {
                    self.outputs.push_back(Output::LeaveGroup(r.group));
                }
                self.streams.clear();
                self.objects.clear();
                self.names.clear();
                self.upgrading.clear();
                self.outputs.push_back(Output::Excluded);
            }
        }
        self.flush(now);
    }

    fn apply_update(&mut self, now: Micros, update: Update<Id>) {
        for h in update.hosts {
            self.by_id.insert(h.id.clone(), h.num);
            self.hosts.insert(h.num, h);
        }
        if let Some(region) = update.region {
            self.set_region(now, region);
        }
        for route in update.routes {
            self.apply_route(now, route);
        }
        for r in &update.retired {
            self.retire_stream(*r);
        }
        for o in update.removed {
            if let Some(state) = self.objects.remove(&o) {
                self.names.remove(&state.name);
                self.joining.remove(&o);
                self.leaving.remove(&o);
                self.requesting.remove(&o);
                self.upgrading.remove(&o);
                self.outputs.push_back(Output::Left {
                    object: o,
                    name: state.name,
                });
            }
        }
        for gone in update.gone {
            self.host_gone(gone);
        }
        // Streams no object routes to any more, once drained.
        let routed: BTreeSet<RegionId> = self
            .objects
            .values()
            .flat_map(|o| o.route.iter().copied())
            .collect();
        self.streams
            .retain(|id, s| routed.contains(id) || !s.buffer.is_empty());
        self.resume();
        self.check_requests();
        self.check_upgrades();
    }

    fn set_region(&mut self, now: Micros, info: Option<RegionInfo>) {
        let old = self.region.take();
        let old_group = old.as_ref().filter(|r| !r.overlay).map(|r| r.group);
        let new_group = info.as_ref().filter(|r| !r.overlay).map(|r| r.group);
        if old_group != new_group {
            if let Some(g) = old_group {
                self.outputs.push_back(Output::LeaveGroup(g));
            }
            if let Some(g) = new_group {
                self.outputs.push_back(Output::JoinGroup(g));
            }
        }
        self.region = info.map(|i| Region::new(i, self.me, self.params.ring_size, now));
    }

    fn apply_route(&mut self, now: Micros, route: Route) {
        let Some(&(_, joined_view)) = route.members.iter().find(|(m, _)| *m == self.me) else {
            return;
        };
        for r in &route.regions {
            self.streams.entry(r.id).or_insert_with(|| SendStream {
                region: r.id,
                group: r.group,
                overlay: r.overlay,
                members: r.members.clone(),
                key: Key::new(&r.stream_key),
                created_ordinal: self.ordinal,
                acked: 0,
                sent: 0,
                buffer: VecDeque::new(),
                bytes: 0,
                lost: VecDeque::new(),
                pacer: Pacer::new(
                    self.config.initial_rate,
                    self.config.min_rate,
                    self.config.max_rate,
                    now,
                ),
                last_heard: now,
                last_progress: now,
                counters: Default::default(),
            });
        }
        let regions: Vec<RegionId> = route.regions.iter().map(|r| r.id).collect();
        match self.objects.get_mut(&route.object) {
            None => {
                if !self.wanted.remove(&route.name) {
                    // Not asked for (left meanwhile): tell the service again.
                    self.to_membership
                        .push_back(ToMembership::Leave { object: route.name });
                    return;
                }
                self.names.insert(route.name.clone(), route.object);
                self.objects.insert(
                    route.object,
                    ObjectState {
                        name: route.name,
                        view: route.view,
                        members: route.members,
                        route: regions,
                        phase: Phase::Joining {
                            buffer: VecDeque::new(),
                            provider: None,
                            asked_at: now,
                            tried: BTreeSet::new(),
                        },
                        joined_view,
                        next_seq: 1,
                        senders: BTreeMap::new(),
                        credit_used: 0,
                        holdback_len: 0,
                        markers: BTreeMap::new(),
                        requests: Vec::new(),
                        leaving: None,
                        unstable: 0,
                        // A member that starts from scratch is in the object's
                        // epoch; one sent a state takes the state's.
                        epoch: route.epoch,
                        epoch_marks: BTreeMap::new(),
                        votes: BTreeMap::new(),
                        upgrades: VecDeque::new(),
                    },
                );
                self.joining.insert(route.object);
                self.request_snapshot(route.object, now);
            }
            Some(o) => {
                let before: BTreeSet<HostNum> = o.members.iter().map(|(m, _)| *m).collect();
                let after: BTreeSet<HostNum> = route.members.iter().map(|(m, _)| *m).collect();
                o.view = route.view;
                o.members = route.members;
                o.route = regions;
                for up in o.upgrades.iter_mut() {
                    let left: Vec<HostNum> = up
                        .waiting
                        .iter()
                        .filter(|m| !after.contains(m))
                        .copied()
                        .collect();
                    for m in left {
                        up.waiting.remove(&m);
                        up.departed.insert(m);
                    }
                }
                if let Some((version, request)) = route.upgrade
                    && route.epoch > o.upgrades.back().map_or(o.epoch, |u| u.epoch)
                {
                    let me = self.me;
                    o.upgrades.push_back(Upgrade {
                        epoch: route.epoch,
                        view: route.view,
                        version,
                        request,
                        voters: after.iter().copied().filter(|m| *m != me).collect(),
                        waiting: after.iter().copied().filter(|m| *m != me).collect(),
                        departed: BTreeSet::new(),
                        started: false,
                        cut: false,
                        mine: None,
                    });
                    self.upgrading.insert(route.object);
                }
                if o.is_member() && before != after {
                    self.outputs.push_back(Output::View {
                        object: route.object,
                        view: o.view,
                        members: o.member_nums(),
                    });
                }
                let added = o.is_member() && after.difference(&before).next().is_some();
                let lost_provider = matches!(&o.phase,
                    Phase::Joining { provider, .. } if provider.is_some_and(|p| !after.contains(&p)));
                if added {
                    let epoch = o.epoch;
                    self.emit_marker(route.object, epoch);
                }
                if lost_provider {
                    self.request_snapshot(route.object, now);
                }
            }
        }
    }

    /// Mark this host's streams: its events of `object` from here on are sent under
    /// the object's current view, and belong to logic epoch `epoch`.
    fn emit_marker(&mut self, object: ObjectNum, epoch: u64) {
        let Some(o) = self.objects.get(&object) else {
            return;
        };
        let msg = Message {
            object,
            body: MessageBody::Marker {
                view: o.view,
                first: o.next_seq,
                epoch,
            },
        };
        self.enqueue(object, msg);
    }

    // ----- upgrades -----

    /// Move every object's upgrade on: start the first one (mark and pause),
    /// output its cut once every member's epoch is delivered up to its marker,
    /// and decide once every verdict is in.
    fn check_upgrades(&mut self) {
        if self.upgrading.is_empty() {
            return;
        }
        let objects: Vec<ObjectNum> = self.upgrading.iter().copied().collect();
        for num in objects {
            self.check_upgrade(num);
        }
    }

    fn check_upgrade(&mut self, num: ObjectNum) {
        let credit = self.config.delivery_credit;
        loop {
            let Some(o) = self.objects.get_mut(&num) else {
                self.upgrading.remove(&num);
                return;
            };
            // Upgrades a joiner's state already went through.
            while o.upgrades.front().is_some_and(|u| u.epoch <= o.epoch) {
                o.upgrades.pop_front();
            }
            let Some(up) = o.upgrades.front() else {
                self.upgrading.remove(&num);
                return;
            };
            if !o.is_member() {
                return;
            }
            if !up.started {
                let epoch = up.epoch;
                o.upgrades.front_mut().expect("checked").started = true;
                self.emit_marker(num, epoch);
                continue;
            }
            if !up.cut {
                let delivered_upto_marker = |m: &HostNum, unmarked: bool| {
                    let first = o.hold_from(*m);
                    let next = o.senders.get(m).map_or(1, |s| s.next);
                    if first == u64::MAX {
                        unmarked
                    } else {
                        next >= first
                    }
                };
                let flushed = up.waiting.iter().all(|m| delivered_upto_marker(m, false))
                    && up.departed.iter().all(|m| delivered_upto_marker(m, true));
                if !flushed {
                    return;
                }
                let up = o.upgrades.front_mut().expect("checked");
                up.cut = true;
                self.outputs.push_back(Output::UpgradeCut {
                    object: num,
                    epoch: up.epoch,
                    version: up.version,
                    request: up.request.clone(),
                });
                return;
            }
            let Some(mine) = up.mine else {
                return;
            };
            // A member whose Leave is out sent no verdict, so the others decide
            // without it: it does not decide at all (it serves no state meanwhile,
            // and is removed at the next view).
            if o.leaving.is_some() && !self.leaving.contains(&num) {
                return;
            }
            let votes = o.votes.get(&up.epoch);
            let mut committed = mine;
            for m in &up.voters {
                match votes.and_then(|v| v.get(m)) {
                    Some(ok) => committed &= ok,
                    None if up.waiting.contains(m) => return,
                    None => {}
                }
            }
            let up = o.upgrades.pop_front().expect("checked");
            o.enter_epoch(up.epoch);
            self.outputs.push_back(Output::UpgradeDecided {
                object: num,
                epoch: up.epoch,
                version: up.version,
                committed,
            });
            drain_holdback(num, o, credit, &mut self.outputs);
            // Streams that stalled on held events, and joiners waiting for the
            // decision, move on.
            if self.region.as_ref().is_some_and(|r| !r.stalled.is_empty()) {
                self.resume();
            }
            self.requesting.insert(num);
            self.check_requests();
        }
    }

    /// A region view this host sends to was retired: what it had not acknowledged
    /// goes on the streams that did not exist when it was first sent.
    fn retire_stream(&mut self, region: RegionId) {
        let Some(stream) = self.streams.remove(&region) else {
            return;
        };
        for out in stream.buffer {
            let Outgoing { msg, ordinal, .. } = out;
            let Some(o) = self.objects.get_mut(&msg.object) else {
                continue;
            };
            o.unstable = o.unstable.saturating_sub(1);
            for r in &o.route {
                if let Some(s) = self.streams.get_mut(r)
                    && s.created_ordinal > ordinal
                {
                    s.push(msg.clone(), ordinal);
                    o.unstable += 1;
                }
            }
        }
    }

    fn host_gone(&mut self, host: HostNum) {
        // Remembered so that late copies of its messages (repairs, stragglers) do
        // not start its streams over.
        self.gone.insert(host);
        if let Some(r) = self.region.as_mut() {
            r.inbound.remove(&host);
            r.stalled.remove(&host);
        }
        self.replay.remove(&host);
        let now = self.now;
        let mut rerequest = Vec::new();
        for (num, o) in self.objects.iter_mut() {
            // Its state stays (a snapshot cut must still say how far it got); what
            // it held back never becomes deliverable.
            if let Some(s) = o.senders.get_mut(&host) {
                o.holdback_len -= s.holdback.len();
                s.holdback.clear();
            }
            o.markers.remove(&host);
            o.epoch_marks.remove(&host);
            for up in o.upgrades.iter_mut() {
                up.waiting.remove(&host);
                up.departed.remove(&host);
            }
            o.requests.retain(|(h, _)| *h != host);
            if let Phase::Joining { provider, .. } = &o.phase
                && *provider == Some(host)
            {
                rerequest.push(*num);
            }
        }
        for num in rerequest {
            self.request_snapshot(num, now);
        }
        self.check_upgrades();
        if let Some(h) = self.hosts.remove(&host)
            && self.by_id.get(&h.id) == Some(&host)
        {
            self.by_id.remove(&h.id);
        }
    }

    // ----- joining -----

    fn request_snapshot(&mut self, object: ObjectNum, now: Micros) {
        let me = self.me;
        let Some(o) = self.objects.get_mut(&object) else {
            return;
        };
        let older: Vec<HostNum> = o
            .members
            .iter()
            .filter(|(m, joined)| *m != me && *joined < o.joined_view)
            .map(|(m, _)| *m)
            .collect();
        let Phase::Joining {
            provider,
            asked_at,
            tried,
            ..
        } = &mut o.phase
        else {
            return;
        };
        if older.is_empty() {
            // The first member (or every older one is gone): start from scratch.
            let epoch = o.epoch;
            self.become_member(object, None, epoch, Vec::new());
            return;
        }
        if older.iter().all(|m| tried.contains(m)) {
            tried.clear();
        }
        let p = *older
            .iter()
            .find(|m| !tried.contains(m))
            .expect("some member not tried");
        tried.insert(p);
        *provider = Some(p);
        *asked_at = now;
        let view = o.joined_view;
        self.to_peers
            .push_back((p, PeerMessage::SnapshotRequest { object, view }));
    }

    fn become_member(
        &mut self,
        object: ObjectNum,
        snapshot: Option<Vec<u8>>,
        epoch: u64,
        cut: Vec<(HostNum, u64)>,
    ) {
        let credit = self.config.delivery_credit;
        let me = self.me;
        let Some(o) = self.objects.get_mut(&object) else {
            return;
        };
        let Phase::Joining { buffer, .. } = std::mem::replace(&mut o.phase, Phase::Member) else {
            return;
        };
        self.joining.remove(&object);
        o.enter_epoch(epoch);
        self.outputs.push_back(Output::Joined {
            object,
            name: o.name.clone(),
            snapshot,
        });
        self.outputs.push_back(Output::View {
            object,
            view: o.view,
            members: o.member_nums(),
        });
        for (sender, upto) in cut {
            if sender == me {
                // A member that left and came back continues its numbering.
                o.next_seq = o.next_seq.max(upto.saturating_add(1));
            } else {
                o.senders.insert(
                    sender,
                    SenderIn {
                        next: upto.saturating_add(1),
                        holdback: BTreeMap::new(),
                    },
                );
            }
        }
        for (sender, msg) in buffer {
            if self.gone.contains(&sender) {
                continue;
            }
            if let MessageBody::Event {
                seq,
                timestamp_ms,
                payload,
            } = msg.body
            {
                let s = o.senders.entry(sender).or_insert_with(SenderIn::new);
                if seq >= s.next && s.holdback.insert(seq, (timestamp_ms, payload)).is_none() {
                    o.holdback_len += 1;
                }
            }
        }
        drain_holdback(object, o, credit, &mut self.outputs);
        self.emit_marker(object, epoch);
        // An upgrade view after its join view but before its state: it flushes
        // with the others.
        self.check_upgrade(object);
    }

    /// Serve snapshot requests whose cut is reached.
    fn check_requests(&mut self) {
        let me = self.me;
        if self.requesting.is_empty() {
            return;
        }
        let requesting: Vec<ObjectNum> = self.requesting.iter().copied().collect();
        for num in &requesting {
            let Some(o) = self.objects.get_mut(num) else {
                self.requesting.remove(num);
                continue;
            };
            if o.requests.is_empty() || !o.is_member() {
                if o.requests.is_empty() {
                    self.requesting.remove(num);
                }
                continue;
            }
            let mut waiting = Vec::new();
            for (joiner, view) in std::mem::take(&mut o.requests) {
                if !o.members.iter().any(|(m, _)| *m == joiner) {
                    continue;
                }
                // A joiner of a view after an upgrade view is sent a state of the
                // epoch it starts, once this member has decided it.
                let flushing = o.upgrades.iter().any(|u| u.view < view);
                let ready = !flushing
                    && o.members
                        .iter()
                        .filter(|(m, joined)| *m != joiner && *m != me && *joined < view)
                        .all(|(m, _)| {
                            let Some((marked, first)) = o.markers.get(m) else {
                                return false;
                            };
                            let next = o.senders.get(m).map(|s| s.next).unwrap_or(1);
                            *marked >= view && next >= *first
                        });
                if ready {
                    let mut cut: Vec<(HostNum, u64)> =
                        o.senders.iter().map(|(s, st)| (*s, st.next - 1)).collect();
                    cut.push((me, o.next_seq - 1));
                    self.outputs.push_back(Output::TakeSnapshot {
                        object: *num,
                        for_host: joiner,
                        view,
                        epoch: o.epoch,
                        cut,
                    });
                } else {
                    waiting.push((joiner, view));
                }
            }
            if waiting.is_empty() {
                self.requesting.remove(num);
            }
            o.requests = waiting;
        }
    }

    /// A reliable message from host `from` (authenticated by the shell).
    pub fn handle_peer(&mut self, now: Micros, from: HostNum, message: PeerMessage) {
        self.now = self.now.max(now);
        match message {
            PeerMessage::SnapshotRequest { object, view } => {
                let me = self.me;
                let refuse = match self.objects.get_mut(&object) {
                    None => Some("not a member".to_string()),
                    Some(o) if !o.is_member() => Some("still joining".to_string()),
                    Some(o) => {
                        let my_join = o
                            .members
                            .iter()
                            .find(|(m, _)| *m == me)
                            .map(|(_, j)| *j)
                            .unwrap_or(u64::MAX);
                        if !o.members.iter().any(|(m, _)| *m == from) {
                            Some("you are not a member".to_string())
                        } else if my_join >= view {
                            Some("joined after you".to_string())
                        } else {
                            if !o.requests.contains(&(from, view)) {
                                o.requests.push((from, view));
                            }
                            self.requesting.insert(object);
                            None
                        }
                    }
                };
                match refuse {
                    Some(reason) => self
                        .to_peers
                        .push_back((from, PeerMessage::Refused { object, reason })),
                    None => self.check_requests(),
                }
            }
            PeerMessage::Snapshot {
                object,
                view,
                epoch,
                cut,
                state,
            } => {
                let Some(o) = self.objects.get(&object) else {
                    return;
                };
                let Phase::Joining { provider, .. } = &o.phase else {
                    return;
                };
                if *provider == Some(from) && view == o.joined_view {
                    self.become_member(object, Some(state), epoch, cut);
                }
            }
            PeerMessage::Refused { object, reason } => {
                tracing::debug!("host {from} refused a snapshot of object {object}: {reason}");
                if let Some(o) = self.objects.get(&object)
                    && let Phase::Joining { provider, .. } = &o.phase
                    && *provider == Some(from)
                {
                    self.request_snapshot(object, now);
                }
            }
        }
        self.flush(now);
    }

    fn check_leaving(&mut self, now: Micros) {
        let timeout = self.config.leave_timeout;
        let done: Vec<ObjectNum> = self
            .leaving
            .iter()
            .filter(|n| {
                self.objects.get(n).is_none_or(|o| {
                    o.leaving
                        .is_some_and(|t| o.unstable == 0 || now >= t + timeout)
                })
            })
            .copied()
            .collect();
        for num in done {
            self.leaving.remove(&num);
            if let Some(o) = self.objects.get(&num) {
                self.to_membership.push_back(ToMembership::Leave {
                    object: o.name.clone(),
                });
            }
        }
    }

    // ----- receiving -----

    /// A datagram from the network.
    pub fn handle_datagram(&mut self, now: Micros, datagram: &[u8]) {
        self.now = self.now.max(now);
        if let Err(e) = self.receive(now, datagram) {
            self.drops.count(&e);
        }
        self.flush(now);
    }

    fn receive(&mut self, now: Micros, datagram: &[u8]) -> Result<(), WireError> {
        let header = Header::decode(datagram)?;
        if header.domain != self.params.domain || self.me == 0 {
            return Err(WireError::OtherDomain);
        }
        if header.sender == self.me {
            // Our own multicast looped back (IP_MULTICAST_LOOP is ignored on lo).
            return Ok(());
        }
        if self.gone.contains(&header.sender) {
            return Err(WireError::UnknownRegion(header.region));
        }
        let key = self.key_for(&header)?;
        let plain = wire::open(datagram, &header, &key)?;
        if !self
            .replay
            .entry(header.sender)
            .or_default()
            .accept(header.counter)
        {
            return Err(WireError::Replayed);
        }
        let body = wire::decode_body(header.kind, &plain)?;
        match body {
            Body::Data {
                first,
                last,
                messages,
            } => {
                if header.kind == Kind::Overlay {
                    self.forward(&header, datagram);
                }
                self.on_data(header.sender, first, last, &messages, &plain);
            }
            Body::Repair { stream, messages } => {
                if stream != self.me && !self.gone.contains(&stream) {
                    let (seqs, msgs): (Vec<u64>, Vec<WireMessage<'_>>) =
                        messages.into_iter().unzip();
                    self.on_repair(stream, &seqs, &msgs, &plain);
                }
            }
            Body::Token(token) => self.on_token(now, header.sender, token),
            Body::Ack(ack) => self.on_ack(now, header.region, ack),
        }
        Ok(())
    }

    fn key_for(&mut self, header: &Header) -> Result<Key, WireError> {
        if header.kind == Kind::Ack {
            return self
                .streams
                .get(&header.region)
                .map(|s| s.key.clone())
                .ok_or(WireError::UnknownRegion(header.region));
        }
        let region = self
            .region
            .as_mut()
            .filter(|r| r.id == header.region)
            .ok_or(WireError::UnknownRegion(header.region))?;
        if header.kind.uses_stream_key() {
            Ok(region.stream_key(header.sender))
        } else if region.members.contains(&header.sender) {
            Ok(region.key.clone())
        } else {
            Err(WireError::Forged)
        }
    }

    fn forward(&mut self, header: &Header, datagram: &[u8]) {
        let Some(region) = &self.region else {
            return;
        };
        for child in ring::overlay_children(&region.members, header.sender, self.me) {
            if let Some(h) = self.hosts.get(&child) {
                self.transmits.push_back(Datagram {
                    to: h.data_addr,
                    bytes: datagram.to_vec(),
                });
            }
        }
    }

    fn on_data(
        &mut self,
        sender: HostNum,
        first: u64,
        last: u64,
        messages: &[WireMessage<'_>],
        plain: &Bytes,
    ) {
        let limit = self.config.window * 2;
        let Some(region) = self.region.as_mut() else {
            return;
        };
        let stream = region.inbound.entry(sender).or_default();
        for (i, m) in messages.iter().enumerate() {
            let Some(seq) = first.checked_add(i as u64) else {
                break;
            };
            stream.insert(seq, m.to_message(plain), limit);
        }
        stream.max_seen = stream.max_seen.max(last.min(stream.consumed + limit));
        self.consume(sender);
    }

    fn on_repair(
        &mut self,
        sender: HostNum,
        seqs: &[u64],
        messages: &[WireMessage<'_>],
        plain: &Bytes,
    ) {
        let limit = self.config.window * 2;
        let Some(region) = self.region.as_mut() else {
            return;
        };
        let stream = region.inbound.entry(sender).or_default();
        for (seq, m) in seqs.iter().zip(messages) {
            if stream.insert(*seq, m.to_message(plain), limit) == Insert::New {
                stream.repaired += 1;
            }
        }
        self.consume(sender);
    }

    /// Hand `sender`'s stream on to its objects, in order, until it stalls.
    fn consume(&mut self, sender: HostNum) {
        let Some(region) = self.region.as_mut() else {
            return;
        };
        let Some(stream) = region.inbound.get_mut(&sender) else {
            return;
        };
        let mut stalled = false;
        while let Some(msg) = stream.next_to_consume() {
            match dispatch(
                &mut self.objects,
                &self.config,
                &mut self.outputs,
                sender,
                msg,
            ) {
                Dispatch::Consumed => stream.mark_consumed(),
                Dispatch::Stall => {
                    stalled = true;
                    break;
                }
            }
        }
        let stable = region.stable.get(&sender).copied().unwrap_or(0);
        stream.forget_upto(stable);
        if stalled {
            region.stalled.insert(sender);
        } else {
            region.stalled.remove(&sender);
        }
        self.check_requests();
        self.check_upgrades();
    }

    /// Retry streams that stalled on delivery credit or full buffers.
    fn resume(&mut self) {
        let stalled: Vec<HostNum> = self
            .region
            .as_ref()
            .map(|r| r.stalled.iter().copied().collect())
            .unwrap_or_default();
        for s in stalled {
            self.consume(s);
        }
    }

    // ----- tokens -----

    fn on_token(&mut self, now: Micros, from: HostNum, mut token: Token) {
        let Some(mut region) = self.region.take() else {
            return;
        };
        let index = region
            .rings
            .iter()
            .position(|r| r.role.level == token.level && r.role.ring == token.ring);
        if let Some(index) = index
            && region.members.contains(&from)
        {
            region.learn_stable(&token.stable);
            let ring = &mut region.rings[index];
            if ring.role.leads() {
                if ring.in_progress && token.round == ring.round {
                    ring.in_progress = false;
                    self.serve_naks(&mut region, &mut token);
                    self.complete_round(now, &mut region, index, token);
                }
            } else if token.round > ring.last_round {
                ring.last_round = token.round;
                self.visit(&mut region, index, &mut token);
                let to = region.rings[index].role.successor();
                self.send_token(&region, to, &token);
            }
        }
        self.region = Some(region);
        self.resume();
    }

    /// Leaders start rounds and abandon lost ones.
    fn drive_rings(&mut self, now: Micros) {
        let Some(mut region) = self.region.take() else {
            return;
        };
        for index in 0..region.rings.len() {
            let ring = &mut region.rings[index];
            if !ring.role.leads() {
                continue;
            }
            if ring.in_progress && now >= ring.started + self.config.token_timeout {
                ring.in_progress = false;
            }
            if ring.in_progress || now < ring.last_complete + self.ring_interval(ring) {
                continue;
            }
            ring.round += 1;
            ring.in_progress = true;
            ring.started = now;
            let mut token = Token {
                level: ring.role.level,
                ring: ring.role.ring,
                round: ring.round,
                streams: Vec::new(),
                naks: std::mem::take(&mut ring.carried),
                stable: region.stable.iter().map(|(s, v)| (*s, *v)).collect(),
            };
            self.visit(&mut region, index, &mut token);
            let ring = &mut region.rings[index];
            if ring.role.nodes.len() == 1 {
                ring.in_progress = false;
                self.complete_round(now, &mut region, index, token);
            } else {
                let to = ring.role.successor();
                self.send_token(&region, to, &token);
            }
        }
        self.region = Some(region);
    }

    /// This host's turn with a token: forward what others lack, add what it has
    /// consumed and what it lacks.
    fn visit(&mut self, region: &mut Region, index: usize, token: &mut Token) {
        self.serve_naks(region, token);
        let me = self.me;
        let leads = region.rings[index].role.leads();
        let level = region.rings[index].role.level;
        let merge = |token: &mut Token, s: &StreamSummary| {
            match token.streams.iter_mut().find(|t| t.sender == s.sender) {
                Some(t) => {
                    t.ack = t.ack.min(s.ack);
                    t.max = t.max.max(s.max);
                    t.missing = t.missing.saturating_add(s.missing);
                    t.backlog = t.backlog.max(s.backlog);
                }
                None => token.streams.push(StreamSummary {
                    // Hosts before this one did not report this stream.
                    ack: if leads { s.ack } else { 0 },
                    ..s.clone()
                }),
            }
        };
        if level == 0 {
            self.learn_max(region, &token.streams);
            let mut mine: Vec<StreamSummary> = Vec::new();
            token.naks.retain(|n| n.node != me);
            let mut room = self.config.max_naks.saturating_sub(token.naks.len());
            for (sender, s) in region.inbound.iter_mut() {
                let ranges = s.missing(s.max_seen, room.min(8));
                room -= ranges.len();
                let mut new_missing = 0u64;
                for (from, to) in &ranges {
                    let from_new = (*from).max(s.reported_upto + 1);
                    if *to >= from_new {
                        new_missing += to - from_new + 1;
                    }
                    token.naks.push(Nak {
                        node: me,
                        sender: *sender,
                        from: *from,
                        to: *to,
                        visits: 0,
                    });
                }
                s.reported_upto = s.reported_upto.max(s.max_seen);
                mine.push(StreamSummary {
                    sender: *sender,
                    ack: s.consumed,
                    max: s.max_seen,
                    missing: new_missing.min(u32::MAX as u64) as u32,
                    backlog: (s.contig - s.consumed).min(u32::MAX as u64) as u32,
                });
            }
            if let Some(own) = self.streams.get(&region.id) {
                // What has gone out, not what waits for the pacer: peers would ask
                // for the rest and get it by repair, around the pacing.
                let sent = own.sent;
                mine.push(StreamSummary {
                    sender: me,
                    ack: sent,
                    max: sent,
                    missing: 0,
                    backlog: 0,
                });
            }
            for s in &mine {
                merge(token, s);
            }
            for t in token.streams.iter_mut() {
                if !mine.iter().any(|m| m.sender == t.sender) {
                    t.ack = 0;
                }
            }
        } else {
            // Stand for the ring this host leads one level down.
            let below = region
                .rings
                .iter_mut()
                .find(|r| r.role.level == level - 1 && r.role.leads());
            match below.and_then(|r| r.summary.as_mut()) {
                None => token.streams.iter_mut().for_each(|t| t.ack = 0),
                Some((streams, escalated)) => {
                    for s in streams.iter() {
                        merge(token, s);
                    }
                    let known: BTreeSet<HostNum> = streams.iter().map(|s| s.sender).collect();
                    for t in token.streams.iter_mut() {
                        if !known.contains(&t.sender) {
                            t.ack = 0;
                        }
                    }
                    let room = self.config.max_naks.saturating_sub(token.naks.len());
                    let take = escalated.len().min(room);
                    for mut nak in escalated.drain(..take) {
                        nak.visits = 0;
                        token.naks.push(nak);
                    }
                }
            }
        }
    }

    /// What the other hosts of the ring heard of: this host lacks what it has not
    /// seen (whole streams included).
    fn learn_max(&self, region: &mut Region, streams: &[StreamSummary]) {
        let limit = self.config.window * 2;
        for t in streams {
            if t.sender != self.me && t.max > 0 && !self.gone.contains(&t.sender) {
                let s = region.inbound.entry(t.sender).or_default();
                s.max_seen = s.max_seen.max(t.max.min(s.consumed + limit));
            }
        }
    }

    /// Forward to the hosts named in `token`'s naks what this host has of it.
    fn serve_naks(&mut self, region: &mut Region, token: &mut Token) {
        let me = self.me;
        let mut budget = self.config.repair_budget;
        let mut kept = Vec::with_capacity(token.naks.len());
        for mut nak in std::mem::take(&mut token.naks) {
            if nak.node == me || budget == 0 || !region.members.contains(&nak.node) {
                if nak.node != me {
                    nak.visits = nak.visits.saturating_add(1);
                }
                kept.push(nak);
                continue;
            }
            let mut found: Vec<(u64, Message)> = Vec::new();
            let mut first_unserved = None;
            let upto = nak.to.min(nak.from.saturating_add(budget as u64 - 1));
            for seq in nak.from..=upto {
                let have = if nak.sender == me {
                    self.streams
                        .get(&region.id)
                        .filter(|s| seq <= s.sent)
                        .and_then(|s| s.get(seq))
                        .map(|o| o.msg.clone())
                } else {
                    region
                        .inbound
                        .get(&nak.sender)
                        .and_then(|s| s.get(seq))
                        .cloned()
                };
                match have {
                    Some(m) => found.push((seq, m)),
                    None => {
                        first_unserved.get_or_insert(seq);
                    }
                }
            }
            if upto < nak.to {
                first_unserved.get_or_insert(upto.saturating_add(1));
            }
            budget -= found.len().min(budget);
            if found.is_empty() {
                nak.visits = nak.visits.saturating_add(1);
                kept.push(nak);
                continue;
            }
            self.repairs_sent += found.len() as u64;
            self.send_repair(region, nak.node, nak.sender, found);
            if let Some(from) = first_unserved {
                nak.from = from;
                nak.visits = nak.visits.saturating_add(1);
                kept.push(nak);
            }
        }
        token.naks = kept;
    }

    fn send_repair(
        &mut self,
        region: &Region,
        to: HostNum,
        stream: HostNum,
        found: Vec<(u64, Message)>,
    ) {
        let mut batch: Vec<(u64, Message)> = Vec::new();
        let mut size = 16;
        for (seq, m) in found {
            let add = m.encoded_bound() + 10;
            if !batch.is_empty() && size + add > self.config.max_datagram {
                let body = wire::repair_body(stream, &batch);
                self.send_region(region, Kind::Repair, to, &body);
                batch.clear();
                size = 16;
            }
            size += add;
            batch.push((seq, m));
        }
        if !batch.is_empty() {
            let body = wire::repair_body(stream, &batch);
            self.send_region(region, Kind::Repair, to, &body);
        }
    }

    /// A ring's token came back to its leader.
    fn complete_round(&mut self, now: Micros, region: &mut Region, index: usize, token: Token) {
        if region.rings[index].role.level == 0 {
            // The leader saw an empty token when it started the round: learn now
            // what the others heard of, to ask for it next round.
            self.learn_max(region, &token.streams);
        }
        let ring = &mut region.rings[index];
        ring.last_complete = now;
        // Busy: something is missing or unacknowledged, or acks moved this round
        // (traffic flows, and senders wait for the next ack to open their window).
        let moved = token
            .streams
            .iter()
            .any(|s| ring.acks.get(&s.sender).is_none_or(|a| s.ack > *a));
        ring.busy = moved || !token.naks.is_empty() || token.streams.iter().any(|s| s.ack < s.max);
        ring.acks = token.streams.iter().map(|s| (s.sender, s.ack)).collect();
        let others = ring.role.nodes.len().saturating_sub(1) as u16;
        let (escalated, carried): (Vec<Nak>, Vec<Nak>) =
            token.naks.into_iter().partition(|n| n.visits >= others);
        ring.carried = carried;
        if ring.role.level as usize + 1 < region.levels {
            ring.summary = Some((token.streams, escalated));
            return;
        }
        // The top ring: the region's acknowledgement.
        let stable: Vec<(HostNum, u64)> = token.streams.iter().map(|s| (s.sender, s.ack)).collect();
        region.learn_stable(&stable);
        for s in token.streams {
            let mut lost: Vec<(u64, u64)> = escalated
                .iter()
                .filter(|n| n.sender == s.sender)
                .map(|n| (n.from, n.to))
                .collect();
            lost.sort_unstable();
            lost.dedup();
            let sent = region.acks_sent.entry(s.sender).or_insert((0, 0));
            sent.1 += 1;
            if s.ack == sent.0 && lost.is_empty() && sent.1 < REACK_ROUNDS && s.missing == 0 {
                continue;
            }
            *sent = (s.ack, 0);
            let ack = Ack {
                ack: s.ack,
                max: s.max,
                lost,
                missing: s.missing,
                backlog: s.backlog,
            };
            if s.sender == self.me {
                self.on_ack(now, region.id, ack);
            } else if let Some(h) = self.hosts.get(&s.sender) {
                let to = h.data_addr;
                let key = region.stream_key(s.sender);
                let header = self.header(Kind::Ack, region.id);
                self.transmits.push_back(Datagram {
                    to,
                    bytes: wire::seal(&header, &Body::Ack(ack), &key),
                });
            }
        }
    }

    fn ring_interval(&self, ring: &RingState) -> Micros {
        if ring.busy {
            self.config.busy_token_interval
        } else {
            self.config.token_interval
        }
    }

    /// Tokens go twice: a round crosses every host of a ring, so one lost hop
    /// loses the round (at 5% loss a 25-host ring would lose most rounds); the
    /// copy is dropped by round number.
    fn send_token(&mut self, region: &Region, to: HostNum, token: &Token) {
        let body = Body::Token(token.clone());
        self.send_region(region, Kind::Token, to, &body);
        self.send_region(region, Kind::Token, to, &body);
    }

    fn header(&mut self, kind: Kind, region: RegionId) -> Header {
        self.counter += 1;
        Header {
            kind,
            domain: self.params.domain,
            sender: self.me,
            region,
            counter: self.counter,
        }
    }

    fn send_region(&mut self, region: &Region, kind: Kind, to: HostNum, body: &Body<'_>) {
        let Some(h) = self.hosts.get(&to) else {
            return;
        };
        let addr = h.data_addr;
        let header = self.header(kind, region.id);
        self.transmits.push_back(Datagram {
            to: addr,
            bytes: wire::seal(&header, body, &region.key),
        });
    }

    // ----- sending -----

    fn on_ack(&mut self, now: Micros, region: RegionId, ack: Ack) {
        // One cut per loss episode: a few busy rounds report it.
        let interval = 5 * self.config.busy_token_interval;
        let Some(stream) = self.streams.get_mut(&region) else {
            return;
        };
        let in_flight = stream.in_flight();
        stream.last_heard = now;
        for out in stream.ack(ack.ack, now) {
            if let Some(o) = self.objects.get_mut(&out.msg.object) {
                o.unstable = o.unstable.saturating_sub(1);
            }
        }
        // Nobody in the region heard of the tail: re-multicast what went out more
        // than two rounds ago.
        if ack.max < stream.sent {
            let old = now.saturating_sub(2 * interval);
            let from = ack.max.max(stream.acked).saturating_add(1);
            let to = (from..=stream.sent)
                .take_while(|s| stream.get(*s).is_some_and(|o| o.last_sent <= old))
                .last();
            if let Some(to) = to
                && !stream.lost.contains(&(from, to))
            {
                stream.lost.push_back((from, to));
            }
        }
        let congested = ack.missing as u64 > (in_flight / 50).max(4)
            || ack.backlog as u64 > self.config.window / 4;
        stream.pacer.report(congested, now, interval);
        for (from, to) in ack.lost {
            let from = from.max(stream.acked + 1);
            let to = to.min(stream.sent);
            if from <= to && !stream.lost.contains(&(from, to)) {
                stream.lost.push_back((from, to));
            }
        }
        if !self.leaving.is_empty() {
            self.check_leaving(now);
        }
    }

    /// Transmit what the pacers allow: lost ranges first, then new messages.
    fn flush(&mut self, now: Micros) {
        let me = self.me;
        let regions: Vec<RegionId> = self.streams.keys().copied().collect();
        for id in regions {
            let max_datagram = self.config.max_datagram;
            let Some(mut stream) = self.streams.remove(&id) else {
                continue;
            };
            if stream.members.iter().all(|m| *m == me) {
                // Nobody else to reach: acknowledged as soon as sent.
                let upto = stream.next_seq() - 1;
                stream.sent = upto;
                for out in stream.ack(upto, now) {
                    if let Some(o) = self.objects.get_mut(&out.msg.object) {
                        o.unstable = o.unstable.saturating_sub(1);
                    }
                }
                self.streams.insert(id, stream);
                continue;
            }
            stream.pacer.refill(now, max_datagram);
            if !stream.buffer.is_empty()
                && now >= stream.last_heard + self.config.retransmit_after
                && stream.sent > stream.acked
            {
                // No ack at all for a while: the region may not know this stream
                // (its members dropped what came before they knew the region).
                let to = stream.sent.min(stream.acked + 64);
                stream.lost.push_back((stream.acked + 1, to));
                stream.last_heard = now;
            }
            if !stream.buffer.is_empty()
                && now >= stream.last_progress + 2 * self.config.retransmit_after
                && stream.sent > stream.acked
            {
                // Acks come but do not advance: a safety net, should the region's
                // repair not find what it lacks.
                let to = stream.sent.min(stream.acked + 64);
                stream.lost.push_back((stream.acked + 1, to));
                stream.last_progress = now;
            }
            while stream.pacer.ready() {
                if let Some((from, to)) = stream.lost.pop_front() {
                    let from = from.max(stream.acked + 1);
                    if from > to.min(stream.sent) {
                        continue;
                    }
                    let to_sent = to.min(stream.sent);
                    let next = self.send_data(now, &mut stream, from, to_sent, true);
                    if next <= to {
                        stream.lost.push_front((next, to));
                    }
                    continue;
                }
                if stream.sent < stream.next_seq() - 1 {
                    if stream.sent == stream.acked {
                        stream.last_heard = now;
                        stream.last_progress = now;
                    }
                    let from = stream.sent + 1;
                    let to = stream.next_seq() - 1;
                    let next = self.send_data(now, &mut stream, from, to, false);
                    stream.sent = next - 1;
                    continue;
                }
                break;
            }
            self.streams.insert(id, stream);
        }
        if !self.leaving.is_empty() {
            self.check_leaving(now);
        }
    }

    /// Send one datagram of `stream`'s messages from `from` (at most `to`); returns
    /// the first seq not sent.
    fn send_data(
        &mut self,
        now: Micros,
        stream: &mut SendStream,
        from: u64,
        to: u64,
        retransmit: bool,
    ) -> u64 {
        let mut batch: Vec<Message> = Vec::new();
        let mut size = 24;
        let mut seq = from;
        while seq <= to {
            let Some(out) = stream.get_mut(seq) else {
                break;
            };
            let add = out.msg.encoded_bound();
            if !batch.is_empty() && size + add > self.config.max_datagram {
                break;
            }
            size += add;
            out.last_sent = now;
            batch.push(out.msg.clone());
            seq += 1;
        }
        if batch.is_empty() {
            return to + 1;
        }
        let last = stream.sent.max(seq - 1);
        let body = wire::data_body(from, last, &batch);
        let kind = if stream.overlay {
            Kind::Overlay
        } else {
            Kind::Data
        };
        let len = self.send_stream(stream, kind, &body);
        stream.pacer.spend(len);
        stream.counters.datagrams += 1;
        if retransmit {
            stream.counters.retransmitted += batch.len() as u64;
        } else {
            stream.counters.messages += batch.len() as u64;
            stream.counters.bytes += batch
                .iter()
                .map(|m| match &m.body {
                    MessageBody::Event { payload, .. } => payload.len() as u64,
                    MessageBody::Marker { .. } | MessageBody::Vote { .. } => 0,
                })
                .sum::<u64>();
        }
        seq
    }

    /// Seal and send a datagram of `stream` to its group (or the overlay root);
    /// returns its size.
    fn send_stream(&mut self, stream: &SendStream, kind: Kind, body: &Body<'_>) -> usize {
        let header = self.header(kind, stream.region);
        let bytes = wire::seal(&header, body, &stream.key);
        let len = bytes.len();
        if stream.overlay {
            for root in ring::overlay_children(&stream.members, self.me, self.me) {
                if let Some(h) = self.hosts.get(&root) {
                    self.transmits.push_back(Datagram {
                        to: h.data_addr,
                        bytes: bytes.clone(),
                    });
                }
            }
        } else {
            self.transmits.push_back(Datagram {
                to: stream.group,
                bytes,
            });
        }
        len
    }

    // ----- time -----

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Micros {
        let mut next = self.last_heartbeat + self.params.heartbeat_interval;
        if let Some(r) = &self.region {
            for ring in r.rings.iter().filter(|r| r.role.leads()) {
                next = next.min(if ring.in_progress {
                    ring.started + self.config.token_timeout
                } else {
                    ring.last_complete + self.ring_interval(ring)
                });
            }
        }
        for s in self.streams.values() {
            if s.buffer.is_empty() {
                continue;
            }
            if !s.lost.is_empty() || s.sent < s.next_seq() - 1 {
                next = next.min(s.pacer.next_ready());
            }
            if s.sent > s.acked {
                next = next.min(s.last_heard + self.config.retransmit_after);
                next = next.min(s.last_progress + 2 * self.config.retransmit_after);
            }
        }
        for o in self.joining.iter().filter_map(|n| self.objects.get(n)) {
            if let Phase::Joining { asked_at, .. } = &o.phase {
                next = next.min(asked_at + self.config.snapshot_retry);
            }
        }
        for o in self.leaving.iter().filter_map(|n| self.objects.get(n)) {
            if let Some(t) = o.leaving {
                next = next.min(t.saturating_add(self.config.leave_timeout));
            }
        }
        next.max(self.now)
    }

    /// Time passed: heartbeats, token rounds, pacing, retries.
    pub fn handle_timeout(&mut self, now: Micros) {
        self.now = self.now.max(now);
        if self.excluded {
            return;
        }
        if now >= self.last_heartbeat + self.params.heartbeat_interval {
            self.last_heartbeat = now;
            self.to_membership.push_back(ToMembership::Heartbeat);
        }
        self.drive_rings(now);
        let retry: Vec<ObjectNum> = self
            .joining
            .iter()
            .filter(|n| {
                self.objects.get(n).is_some_and(|o| {
                    matches!(&o.phase, Phase::Joining { asked_at, .. }
                        if now >= asked_at + self.config.snapshot_retry)
                })
            })
            .copied()
            .collect();
        for object in retry {
            self.request_snapshot(object, now);
        }
        self.flush(now);
    }
}

/// Hand one stream message to its object.
fn dispatch(
    objects: &mut BTreeMap<ObjectNum, ObjectState>,
    config: &QsmConfig,
    outputs: &mut VecDeque<Output>,
    sender: HostNum,
    msg: &Message,
) -> Dispatch {
    let Some(o) = objects.get_mut(&msg.object) else {
        // An object this host left: nothing to do.
        return Dispatch::Consumed;
    };
    match &msg.body {
        MessageBody::Marker { view, first, epoch } => {
            let m = o.markers.entry(sender).or_insert((0, 0));
            if (*view, *first) > *m {
                *m = (*view, *first);
            }
            o.note_epoch(sender, *epoch, *first);
            Dispatch::Consumed
        }
        MessageBody::Vote { epoch, ok } => {
            if *epoch > o.epoch && *epoch <= o.epoch + EPOCHS_AHEAD {
                o.votes
                    .entry(*epoch)
                    .or_default()
                    .entry(sender)
                    .or_insert(*ok);
            }
            Dispatch::Consumed
        }
        MessageBody::Event {
            seq,
            timestamp_ms,
            payload,
        } => {
            if let Phase::Joining { buffer, .. } = &mut o.phase {
                if buffer.len() >= config.join_buffer {
                    return Dispatch::Stall;
                }
                buffer.push_back((sender, msg.clone()));
                return Dispatch::Consumed;
            }
            let hold_from = o.hold_from(sender);
            let s = o.senders.entry(sender).or_insert_with(SenderIn::new);
            if *seq < s.next {
                return Dispatch::Consumed;
            }
            // An event of a later logic epoch waits with the early ones.
            if *seq > s.next || *seq >= hold_from {
                if s.holdback.contains_key(seq) {
                    return Dispatch::Consumed;
                }
                if o.holdback_len >= config.max_holdback {
                    return Dispatch::Stall;
                }
                s.holdback.insert(*seq, (*timestamp_ms, payload.clone()));
                o.holdback_len += 1;
                return Dispatch::Consumed;
            }
            if o.credit_used >= config.delivery_credit {
                return Dispatch::Stall;
            }
            outputs.push_back(Output::Deliver {
                object: msg.object,
                sender,
                seq: *seq,
                timestamp_ms: *timestamp_ms,
                payload: payload.clone(),
            });
            o.credit_used += 1;
            s.next += 1;
            drain_sender(msg.object, sender, o, config.delivery_credit, outputs);
            Dispatch::Consumed
        }
    }
}

/// Deliver `sender`'s held-back events of `o` that are next in line.
fn drain_sender(
    object: ObjectNum,
    sender: HostNum,
    o: &mut ObjectState,
    credit: usize,
    outputs: &mut VecDeque<Output>,
) {
    let hold_from = o.hold_from(sender);
    let Some(s) = o.senders.get_mut(&sender) else {
        return;
    };
    while o.credit_used < credit && s.next < hold_from {
        let Some((timestamp_ms, payload)) = s.holdback.remove(&s.next) else {
            break;
        };
        o.holdback_len -= 1;
        outputs.push_back(Output::Deliver {
            object,
            sender,
            seq: s.next,
            timestamp_ms,
            payload,
        });
        o.credit_used += 1;
        s.next += 1;
    }
    // Held-back events a duplicate overtook.
    let next = s.next;
    let stale: Vec<u64> = s.holdback.range(..next).map(|(k, _)| *k).collect();
    for k in stale {
        s.holdback.remove(&k);
        o.holdback_len -= 1;
    }
}

fn drain_holdback(
    object: ObjectNum,
    o: &mut ObjectState,
    credit: usize,
    outputs: &mut VecDeque<Output>,
) {
    let senders: Vec<HostNum> = o.senders.keys().copied().collect();
    for s in senders {
        drain_sender(object, s, o, credit, outputs);
    }
}
