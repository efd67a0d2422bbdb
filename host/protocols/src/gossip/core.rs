//! The gossip driver's protocol as a sans-IO state machine.
//!
//! A [`GossipNode`] is one host. It is driven from outside, quinn-style:
//! - [`GossipNode::handle_datagram`] with each datagram received,
//! - [`GossipNode::handle_timeout`] when [`GossipNode::poll_timeout`] is reached,
//! - then drain [`GossipNode::poll_transmit`] (datagrams to send) and
//!   [`GossipNode::poll_event`] (membership changes and finished aggregates).
//!
//! Time is a parameter (`now`), so the same code runs in the simulator
//! (`host/tests/all/gossip_simulation.rs`) and under tokio (`super::net`).
//!
//! Three protocols share one datagram socket:
//! 1. **SWIM** (optional) through foca: failure detection and full membership.
//!    foca's packets travel inside [`Wire::Swim`]; its timers live in this node's
//!    timer heap. SWIM's member table grows with N (about 100 bytes per host), so
//!    very large deployments run without it and rely on Cyclon's aging alone.
//! 2. **Cyclon** peer sampling ([`super::sampling`]): a bounded partial view,
//!    shuffled once per round.
//! 3. **Push-pull anti-entropy** of aggregate objects: once per round the node
//!    sends its partial aggregates to a random peer of its view, which merges them
//!    and replies with its own (merged) ones. Aggregates are computed per *epoch*:
//!    each epoch every host contributes afresh, so hosts that died stop counting at
//!    the next epoch. An epoch lasts `epoch_rounds` rounds; a host that hears of a
//!    newer epoch joins it at once, so epochs stay aligned without clocks.
//!
//! Every message is bounded ([`MAX_DATAGRAM`]), every table is bounded (view
//! capacity, pending shuffles, one state per object), so memory per host does not
//! grow with N (except SWIM's table when enabled).

use super::HostId;
use super::sampling::{Entry, Sampler};
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Largest datagram the node sends or accepts.
pub const MAX_DATAGRAM: usize = 16 * 1024;
/// Longest object name accepted from the network.
pub const MAX_OBJECT_NAME: usize = 256;
/// Largest card a host publishes (see [`GossipNode::set_card`]).
pub const MAX_CARD: usize = 1024;
/// Most entries accepted in one shuffle.
const MAX_ENTRIES: usize = 64;
/// Most object states accepted in one exchange.
const MAX_SHARES: usize = 64;
/// An exchange is answered with at most this many times the push's bytes...
const ANSWER_FACTOR: usize = 4;
/// ...or this many, if more (one MTU-sized answer is always allowed, so a small
/// early-epoch push still pulls a full sketch).
const ANSWER_FLOOR: usize = 1_200;
/// Chance per round of swapping a view entry for a random SWIM member.
const VIEW_MIXING: f64 = 0.1;
/// Most object states merged from one datagram (guest code runs for each).
const MAX_MERGES_PER_DATAGRAM: usize = 16;
/// Largest epoch jump accepted from a peer (about 60 days of 5 s epochs).
const MAX_EPOCH_JUMP: u64 = 1 << 20;
/// Cyclon entries at most this many rounds old are introduced to SWIM.
const FRESH_AGE: u16 = 20;
/// First byte of a datagram without a tag: the wire format's version.
const WIRE_VERSION: u8 = 1;
/// First byte of a datagram sealed with the domain secret (HMAC-SHA256 tag at
/// the end).
const WIRE_VERSION_SEALED: u8 = 2;
/// Bytes of the HMAC-SHA256 tag kept (128 bits).
const TAG_BYTES: usize = 16;

/// A gossip domain's shared secret: with it every datagram carries an
/// HMAC-SHA256 tag, and datagrams without a valid tag are dropped.
pub type DomainSecret = [u8; 32];

/// What gossip datagrams carry (after the version byte), encoded with postcard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Wire {
    /// A foca (SWIM) packet.
    Swim(Vec<u8>),
    /// A Cyclon shuffle request.
    Shuffle {
        /// The sender.
        from: HostId,
        /// Entries offered.
        entries: Vec<Entry>,
    },
    /// A Cyclon shuffle reply.
    ShuffleReply {
        /// The sender.
        from: HostId,
        /// Entries offered.
        entries: Vec<Entry>,
    },
    /// Ask a host for its card (see [`GossipNode::set_card`]).
    CardRequest {
        /// The sender.
        from: HostId,
    },
    /// A host's card.
    Card {
        /// The sender (whose card it is).
        from: HostId,
        /// The card: opaque to gossip, at most [`MAX_CARD`] bytes.
        card: Vec<u8>,
    },
    /// A push (or, if `reply`, the pull answer) of partial aggregates.
    Exchange {
        /// The sender.
        from: HostId,
        /// Whether this answers an exchange (and must not be answered).
        reply: bool,
        /// One state per object.
        shares: Vec<Share>,
    },
}

/// One object's partial aggregate, as gossiped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// The object's name.
    pub object: String,
    /// The epoch the state belongs to.
    pub epoch: u64,
    /// The state (object-defined bytes).
    pub state: Vec<u8>,
}

/// Why a datagram was dropped. None of these changes the node's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    /// Unknown version byte (or empty).
    #[error(
        "datagram has wire version {0:?}, expected {WIRE_VERSION} (open) or \
         {WIRE_VERSION_SEALED} (sealed with a domain secret)"
    )]
    Version(Option<u8>),
    /// The datagram is sealed but this host has no secret, or the other way round.
    #[error(
        "datagram is {}sealed but this host {} a domain secret; every host of a gossip \
         domain must use the same --secret",
        if *.0 { "" } else { "not " },
        if *.0 { "has no" } else { "requires" }
    )]
    SecretMismatch(bool),
    /// The tag does not verify: forged, corrupted, or sealed with another secret.
    #[error("datagram tag does not verify (forged, corrupted, or another domain's secret)")]
    BadTag,
    /// The body does not decode.
    #[error("datagram does not decode: {0}")]
    Malformed(String),
    /// The body decodes but breaks a bound (too many entries, a long name).
    #[error("datagram breaks a bound: {0}")]
    OutOfBounds(&'static str),
    /// The claimed sender is not the address it came from.
    #[error("datagram claims to be from {claimed} but came from {actual}")]
    Spoofed {
        /// The sender it names.
        claimed: SocketAddr,
        /// The address it came from.
        actual: SocketAddr,
    },
    /// foca refused the SWIM packet.
    #[error("SWIM packet refused: {0}")]
    Swim(String),
}

fn tag(secret: &DomainSecret, bytes: &[u8]) -> [u8; TAG_BYTES] {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(bytes);
    mac.finalize().into_bytes()[..TAG_BYTES]
        .try_into()
        .expect("SHA-256 output is longer than the tag")
}

/// Encode a message: version byte, postcard body, and with a secret an HMAC tag.
pub fn encode(message: &Wire, secret: Option<&DomainSecret>) -> Vec<u8> {
    let version = if secret.is_some() {
        WIRE_VERSION_SEALED
    } else {
        WIRE_VERSION
    };
    let mut bytes = vec![version];
    bytes.extend(postcard::to_allocvec(message).expect("encoding to a Vec cannot fail"));
    if let Some(secret) = secret {
        let tag = tag(secret, &bytes);
        bytes.extend_from_slice(&tag);
    }
    bytes
}

/// Check a datagram's size, version and (with a secret) tag, then decode and
/// bound-check it.
pub fn decode(bytes: &[u8], secret: Option<&DomainSecret>) -> Result<Wire, DatagramError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DatagramError::TooLarge(bytes.len()));
    }
    let body = match (bytes.first(), secret) {
        (Some(&WIRE_VERSION), None) => &bytes[1..],
        (Some(&WIRE_VERSION_SEALED), Some(secret)) => {
            let Some(split) = bytes.len().checked_sub(TAG_BYTES).filter(|&n| n >= 1) else {
                return Err(DatagramError::BadTag);
            };
            let (signed, received) = bytes.split_at(split);
            // Constant-time comparison, so timing does not reveal the right tag.
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
                .expect("HMAC takes keys of any size");
            mac.update(signed);
            mac.verify_truncated_left(received)
                .map_err(|_| DatagramError::BadTag)?;
            &signed[1..]
        }
        (Some(&WIRE_VERSION_SEALED), None) => return Err(DatagramError::SecretMismatch(true)),
        (Some(&WIRE_VERSION), Some(_)) => return Err(DatagramError::SecretMismatch(false)),
        (other, _) => return Err(DatagramError::Version(other.copied())),
    };
    let message: Wire =
        postcard::from_bytes(body).map_err(|e| DatagramError::Malformed(e.to_string()))?;
    match &message {
        Wire::Shuffle { entries, .. } | Wire::ShuffleReply { entries, .. }
            if entries.len() > MAX_ENTRIES =>
        {
            Err(DatagramError::OutOfBounds("too many view entries"))
        }
        Wire::Card { card, .. } if card.len() > MAX_CARD => {
            Err(DatagramError::OutOfBounds("card too large"))
        }
        Wire::Exchange { shares, .. } if shares.len() > MAX_SHARES => {
            Err(DatagramError::OutOfBounds("too many object states"))
        }
        Wire::Exchange { shares, .. }
            if shares.iter().any(|s| s.object.len() > MAX_OBJECT_NAME) =>
        {
            Err(DatagramError::OutOfBounds("object name too long"))
        }
        _ => Ok(message),
    }
}

/// Settings of a gossip node. Every host of a deployment should use the same.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// One round: one shuffle and one push-pull exchange.
    pub round: Duration,
    /// Capacity of the Cyclon partial view.
    pub view_size: usize,
    /// Entries exchanged per shuffle.
    pub shuffle_length: usize,
    /// Rounds per aggregation epoch. Must comfortably exceed the rounds an update
    /// needs to reach every host (about `log2(N) + 5`).
    pub epoch_rounds: u32,
    /// SWIM settings, or `None` to run without SWIM (Cyclon aging alone then
    /// removes dead hosts).
    pub swim: Option<foca::Config>,
    /// The domain's shared secret. Without one, anyone who can send a datagram to
    /// a host can lie to it (about membership, about aggregates); with one, only
    /// holders of the secret can.
    pub secret: Option<DomainSecret>,
}

impl GossipConfig {
    /// Settings for a LAN of about `cluster_size` hosts: 200 ms rounds, a view of
    /// 20, epochs of 25 rounds (5 s), SWIM with foca's LAN settings for that size.
    pub fn lan(cluster_size: u32) -> Self {
        let size = std::num::NonZeroU32::new(cluster_size.max(1)).expect("at least one");
        GossipConfig {
            round: Duration::from_millis(200),
            view_size: 20,
            shuffle_length: 8,
            epoch_rounds: 25,
            swim: Some(swim_config(size)),
            secret: None,
        }
    }
}

/// foca's LAN settings for `size` hosts (including its periodic announce to down
/// members every 65 s, which is how the two sides of a healed partition find each
/// other again), with two changes:
/// - every update is retransmitted twice as often (`8 log10(N+1)` instead of
///   `4 log10(N+1)`): with 5-10% loss, 4 log10(N+1) copies leave a host now and
///   then that never hears of a crash and keeps the dead host until its own
///   round-robin probe reaches it (up to N probe periods later);
/// - a periodic announce every 5 s instead of 30 s: the answer carries a page of
///   the peer's member list, which is how a host that joined late learns the
///   members whose own updates it missed.
pub fn swim_config(size: std::num::NonZeroU32) -> foca::Config {
    let lan = foca::Config::new_lan(size);
    foca::Config {
        max_transmissions: lan
            .max_transmissions
            .saturating_mul(std::num::NonZeroU8::new(2).expect("2 > 0")),
        periodic_announce: Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: std::num::NonZeroUsize::MIN,
        }),
        ..lan
    }
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// SWIM found a new live host.
    MemberUp(HostId),
    /// SWIM declared a host down.
    MemberDown(HostId),
    /// An epoch of an aggregate finished on this host with this value.
    Estimate {
        /// The object.
        object: String,
        /// The epoch that finished.
        epoch: u64,
        /// The aggregate's value over that epoch.
        value: f64,
    },
    /// A host answered [`GossipNode::request_cards`] with its card.
    Card {
        /// The host.
        host: HostId,
        /// Its card.
        card: Vec<u8>,
    },
    /// A peer's state for an object hosted elsewhere
    /// ([`GossipNode::host_elsewhere`]), to hand to its [`Aggregation`].
    Share(Share),
    /// The object's code failed (the state is unchanged).
    AggregateFailed {
        /// The object.
        object: String,
        /// What happened.
        error: String,
    },
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Bytes (a full datagram).
    pub bytes: Vec<u8>,
}

/// Counters a node keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Rounds run.
    pub rounds: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Datagrams received and accepted.
    pub datagrams_received: u64,
    /// Datagrams dropped as malformed, oversized, spoofed or refused.
    pub datagrams_dropped: u64,
    /// Object states received for objects this host has not joined, or stale epochs.
    pub shares_ignored: u64,
    /// Object states not sent because the datagram was full.
    pub shares_deferred: u64,
}

/// A finished epoch's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The epoch.
    pub epoch: u64,
    /// The value.
    pub value: f64,
}

/// An aggregate's code: pure functions over opaque states. The host implements
/// it with the object's sandboxed component (and, on a node, runs it on the object
/// executor, never here); tests can use plain Rust.
pub trait AggregateCode {
    /// Why a call failed (shown to users).
    type Error: std::fmt::Display;
    /// This host's contribution of `input` to one epoch; `seed` is unique to the
    /// host, object and epoch.
    fn contribute(&mut self, input: f64, seed: u64) -> Result<Vec<u8>, Self::Error>;
    /// Merge two partial aggregates.
    fn merge(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, Self::Error>;
    /// The value a partial aggregate stands for.
    fn estimate(&mut self, state: &[u8]) -> Result<f64, Self::Error>;
}

/// What makes a host's contributions unique per object and epoch: its address and
/// a random salt, stable if SWIM renews its identity, so a host never counts twice
/// in one epoch ([`GossipNode::epoch_seeds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSeeds {
    host: SocketAddr,
    salt: u64,
}

impl EpochSeeds {
    /// The seed of `object`'s contribution to `epoch`.
    pub fn seed(&self, object: &str, epoch: u64) -> u64 {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.host.to_string().as_bytes());
        hash.update(self.salt.to_le_bytes());
        hash.update(object.as_bytes());
        hash.update(epoch.to_le_bytes());
        u64::from_le_bytes(hash.finalize()[..8].try_into().expect("8 bytes"))
    }
}

/// One aggregate object on one host: its epochs, this host's partial aggregate
/// for the current one, and the last finished value. Calls its code, so a node
/// daemon runs it on the object executor and feeds it the shares its
/// [`GossipNode`] receives ([`GossipNode::host_elsewhere`]); `lo gossip` and the
/// simulator let the node run it inline ([`GossipNode::add_aggregate`]).
pub struct Aggregation<C> {
    object: String,
    code: C,
    seeds: EpochSeeds,
    epoch_length: Duration,
    input: f64,
    epoch: u64,
    deadline: Instant,
    /// This host's partial aggregate for `epoch`; `None` if the object's code
    /// failed to contribute (then what peers send is adopted as is).
    state: Option<Vec<u8>>,
    /// Whether this host has met the group's epochs (merged a peer's state).
    /// Until then it follows a peer to any epoch, however far ahead; after, at
    /// most [`MAX_EPOCH_JUMP`] at a time.
    synced: bool,
    finished: Option<Estimate>,
    merges: u64,
}

fn failed(object: &str, error: impl std::fmt::Display, events: &mut VecDeque<Event>) {
    events.push_back(Event::AggregateFailed {
        object: object.to_string(),
        error: error.to_string(),
    });
}

impl<C: AggregateCode> Aggregation<C> {
    /// Start computing `object` with `code` from epoch 0; `input` is this host's
    /// number. A failure of the code is pushed to `events`.
    pub fn new(
        object: &str,
        code: C,
        input: f64,
        seeds: EpochSeeds,
        epoch_length: Duration,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) -> Self {
        let mut aggregation = Aggregation {
            object: object.to_string(),
            code,
            seeds,
            epoch_length,
            input,
            epoch: 0,
            deadline: now + epoch_length,
            state: None,
            synced: false,
            finished: None,
            merges: 0,
        };
        aggregation.state = aggregation.contribute_or_report(input, seeds.seed(object, 0), events);
        aggregation
    }

    /// The object's name.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the current epoch ends (call [`Self::handle_timeout`] then).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// This host's partial aggregate for the current epoch (what it gossips).
    pub fn state(&self) -> Option<&[u8]> {
        self.state.as_deref()
    }

    /// States merged so far (this host's own contributions included).
    pub fn merges(&self) -> u64 {
        self.merges
    }

    /// The value of the last finished epoch.
    pub fn estimate(&self) -> Option<Estimate> {
        self.finished
    }

    /// The value of the current, unfinished epoch (what this host has heard so far).
    pub fn current(&mut self) -> Option<Estimate> {
        let value = self.code.estimate(self.state.as_ref()?).ok()?;
        Some(Estimate {
            epoch: self.epoch,
            value,
        })
    }

    /// Change this host's number, counted from the next epoch.
    pub fn set_input(&mut self, input: f64) {
        self.input = input;
    }

    /// Merge a contribution of `input` into the current epoch at once (as well as
    /// counting it from the next): for monotone aggregates such as a maximum, where
    /// a new value should spread like a rumour instead of waiting for the epoch.
    /// (For a sample such as `average` it only counts from the next epoch: the
    /// sample already holds this host's entry for the epoch.)
    pub fn contribute_now(&mut self, input: f64, events: &mut VecDeque<Event>) {
        let seed = self.seeds.seed(&self.object, self.epoch);
        if let Some(mine) = self.contribute_or_report(input, seed, events) {
            self.merge_into(&mine, events);
        }
        self.input = input;
    }

    /// End the epoch if its deadline has passed. Returns `false` if the aggregate
    /// cannot go on (its epoch counter is exhausted) and must be dropped.
    pub fn handle_timeout(&mut self, now: Instant, events: &mut VecDeque<Event>) -> bool {
        if self.deadline > now {
            return true;
        }
        match self.epoch.checked_add(1) {
            Some(next) => {
                self.end_epoch(next, now, true, None, events);
                true
            }
            // 2^64 epochs: only reachable through a bug; stop this aggregate
            // rather than wrap around.
            None => {
                failed(&self.object, "the epoch counter is exhausted", events);
                false
            }
        }
    }

    /// Take a peer's partial aggregate for `epoch`. Returns `false` if it was
    /// ignored (an older epoch, or one absurdly far ahead).
    pub fn absorb(
        &mut self,
        epoch: u64,
        incoming: &[u8],
        now: Instant,
        events: &mut VecDeque<Event>,
    ) -> bool {
        let current = self.epoch;
        let limit = if self.synced {
            MAX_EPOCH_JUMP
        } else {
            // Anything a running group can reach; far below u64::MAX so that
            // counting on from it never overflows.
            u64::MAX / 4
        };
        if epoch < current || epoch - current > limit {
            // Older: the answer (or our next push) carries the newer epoch to the
            // peer. Absurdly far ahead: a broken or hostile peer.
            return false;
        }
        if epoch == current {
            self.merge_into(incoming, events);
            self.synced = true;
            return true;
        }
        // A newer epoch: move to it only if the peer's state merges with our own
        // contribution, so a garbage state cannot drag this host along.
        let seed = self.seeds.seed(&self.object, epoch);
        let merged = match self.code.contribute(self.input, seed) {
            Ok(mine) => self.code.merge(&mine, incoming),
            // This host cannot contribute (its input makes the object fail): say
            // so, and still follow the group's epochs with the peer's state, if it
            // reads.
            Err(e) => {
                failed(&self.object, e, events);
                self.code.estimate(incoming).map(|_| incoming.to_vec())
            }
        };
        match merged {
            Ok(state) => {
                self.merges += 1;
                // Only a host that was in the previous epoch has a complete value
                // for it.
                let finished_previous = epoch == current + 1;
                self.end_epoch(epoch, now, finished_previous, Some(state), events);
            }
            Err(e) => failed(&self.object, e, events),
        }
        true
    }

    fn contribute_or_report(
        &mut self,
        input: f64,
        seed: u64,
        events: &mut VecDeque<Event>,
    ) -> Option<Vec<u8>> {
        match self.code.contribute(input, seed) {
            Ok(state) => Some(state),
            Err(e) => {
                failed(&self.object, e, events);
                None
            }
        }
    }

    /// Merge `incoming` into the current state; on failure the state is unchanged
    /// and the failure reported.
    fn merge_into(&mut self, incoming: &[u8], events: &mut VecDeque<Event>) {
        let merged = match &self.state {
            Some(state) => self.code.merge(state, incoming),
            // No state of our own: adopt the peer's, if the object can read it.
            None => self.code.estimate(incoming).map(|_| incoming.to_vec()),
        };
        match merged {
            Ok(state) => {
                self.merges += 1;
                self.state = Some(state);
            }
            Err(e) => failed(&self.object, e, events),
        }
    }

    /// End the current epoch (reporting its value if `report`) and start `epoch`
    /// with `state`, or with this host's own contribution if `None`.
    fn end_epoch(
        &mut self,
        epoch: u64,
        now: Instant,
        report: bool,
        state: Option<Vec<u8>>,
        events: &mut VecDeque<Event>,
    ) {
        if report && let Some(current) = &self.state {
            match self.code.estimate(current) {
                Ok(value) => {
                    self.finished = Some(Estimate {
                        epoch: self.epoch,
                        value,
                    });
                    events.push_back(Event::Estimate {
                        object: self.object.clone(),
                        epoch: self.epoch,
                        value,
                    });
                }
                Err(e) => failed(&self.object, e, events),
            }
        }
        let state = match state {
            Some(state) => Some(state),
            None => {
                let seed = self.seeds.seed(&self.object, epoch);
                self.contribute_or_report(self.input, seed, events)
            }
        };
        if epoch > self.epoch.saturating_add(1) {
            // Followed a peer: this host now runs the group's epochs.
            self.synced = true;
        }
        self.epoch = epoch;
        self.deadline = now + self.epoch_length;
        self.state = state;
    }
}

/// An object this node gossips: computed here, or elsewhere (the node daemon's
/// executor) and published.
enum Slot<C> {
    Here(Aggregation<C>),
    Elsewhere { epoch: u64, state: Option<Vec<u8>> },
}

impl<C> Slot<C> {
    /// The epoch and state this host gossips for the object.
    fn published(&self) -> Option<(u64, &[u8])> {
        match self {
            Slot::Here(a) => Some((a.epoch, a.state.as_deref()?)),
            Slot::Elsewhere { epoch, state } => Some((*epoch, state.as_deref()?)),
        }
    }
}

type Swim = Foca<HostId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// One host of the gossip driver (see the module docs), running aggregates whose
/// code is `C`.
pub struct GossipNode<C> {
    id: HostId,
    salt: u64,
    config: GossipConfig,
    rng: StdRng,
    sampler: Sampler,
    swim: Option<Swim>,
    swim_io: AccumulatingRuntime<HostId>,
    /// SWIM timers: (deadline, sequence) ordered; the timer itself in `timer_slots`.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_slots: HashMap<u64, Timer<HostId>>,
    next_timer: u64,
    aggregations: BTreeMap<String, Slot<C>>,
    card: Vec<u8>,
    /// The addresses this node joined through, asked again whenever it finds
    /// itself alone (after a partition, or if every host it knew died).
    seeds: Vec<SocketAddr>,
    /// Rounds to wait before asking the seeds again, and the current backoff.
    rounds_until_reseed: u32,
    reseed_backoff: u32,
    /// Where the next exchange starts in `aggregations`, so that all objects get a
    /// turn when they do not fit one datagram.
    exchange_cursor: usize,
    next_round: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: GossipStats,
}

impl<C: AggregateCode> GossipNode<C> {
    /// A node with identity `id`; `seed` drives every random choice it makes.
    pub fn new(id: HostId, config: GossipConfig, seed: u64, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let swim = config.swim.clone().map(|swim_config| {
            Foca::new(
                id,
                swim_config,
                StdRng::seed_from_u64(rng.random()),
                PostcardCodec,
            )
        });
        // Start the first round at a random point of the period, so that hosts
        // started together do not send in lockstep.
        let offset = config.round.mul_f64(rng.random::<f64>());
        GossipNode {
            id,
            salt: rng.random(),
            sampler: Sampler::new(id, config.view_size, config.shuffle_length),
            config,
            rng,
            swim,
            swim_io: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            timer_slots: HashMap::new(),
            next_timer: 0,
            aggregations: BTreeMap::new(),
            card: Vec::new(),
            seeds: Vec::new(),
            rounds_until_reseed: 0,
            reseed_backoff: 0,
            exchange_cursor: 0,
            next_round: now + offset,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: GossipStats::default(),
        }
    }

    /// This node's identity.
    pub fn id(&self) -> HostId {
        self.id
    }

    /// Counters.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// The Cyclon partial view.
    pub fn view(&self) -> &[Entry] {
        self.sampler.entries()
    }

    /// Hosts SWIM currently considers alive (empty without SWIM).
    pub fn swim_members(&self) -> Vec<HostId> {
        match &self.swim {
            Some(swim) => swim.iter_members().map(|m| *m.id()).collect(),
            None => Vec::new(),
        }
    }

    /// Join through hosts known by address (their boot number is learnt from
    /// their answers).
    pub fn join(&mut self, seeds: &[SocketAddr], now: Instant) {
        for &addr in seeds {
            if addr == self.id.addr {
                continue;
            }
            if !self.seeds.contains(&addr) {
                self.seeds.push(addr);
            }
            let seed = HostId { addr, boot: 0 };
            self.sampler.offer(seed);
            if let Some(swim) = &mut self.swim {
                // An announce only fails if encoding fails; nothing to undo.
                let _ = swim.announce(seed, &mut self.swim_io);
            }
        }
        self.drain_swim(now);
    }

    /// Leave politely: SWIM tells peers this host is going (others would
    /// otherwise notice after the suspicion timeout).
    pub fn leave(&mut self, now: Instant) {
        if let Some(swim) = &mut self.swim {
            let _ = swim.leave_cluster(&mut self.swim_io);
        }
        self.drain_swim(now);
    }

    /// Publish this host's *card*: a few bytes other hosts can ask for with
    /// [`Self::request_cards`]. Gossip does not interpret it; the node daemon puts
    /// its mesh address and the objects it hosts there, so that mesh joins can find
    /// members when the seeds a record lists are gone.
    pub fn set_card(&mut self, card: Vec<u8>) -> Result<(), DatagramError> {
        if card.len() > MAX_CARD {
            return Err(DatagramError::OutOfBounds("card too large"));
        }
        self.card = card;
        Ok(())
    }

    /// Ask up to `limit` live hosts for their cards (SWIM's members if SWIM runs,
    /// else the partial view). Answers arrive as [`Event::Card`]; returns the hosts
    /// asked (only their answers should be believed). Hosts answer only hosts they
    /// know.
    pub fn request_cards(&mut self, limit: usize) -> Vec<SocketAddr> {
        use rand::seq::IndexedRandom;
        let mut hosts = self.swim_members();
        if hosts.is_empty() {
            hosts = self.sampler.entries().iter().map(|e| e.id).collect();
        }
        let chosen: Vec<HostId> = hosts.sample(&mut self.rng, limit).copied().collect();
        for host in &chosen {
            self.send(host.addr, &Wire::CardRequest { from: self.id });
        }
        chosen.iter().map(|h| h.addr).collect()
    }

    /// Start computing `object` with `code` on this node; `input` is this host's
    /// number. The code runs here, while handling datagrams and timeouts.
    pub fn add_aggregate(&mut self, object: &str, code: C, input: f64, now: Instant) {
        let aggregation = Aggregation::new(
            object,
            code,
            input,
            self.epoch_seeds(),
            self.epoch_length(),
            now,
            &mut self.events,
        );
        self.aggregations
            .insert(object.to_string(), Slot::Here(aggregation));
    }

    /// Gossip `object` with states computed elsewhere: shares received for it
    /// become [`Event::Share`] (for an [`Aggregation`] run off the network path,
    /// built with [`Self::epoch_seeds`] and [`Self::epoch_length`]), and what this
    /// host sends is what [`Self::publish`] last gave. Nothing is sent for it
    /// before the first publish.
    pub fn host_elsewhere(&mut self, object: &str) {
        self.aggregations.insert(
            object.to_string(),
            Slot::Elsewhere {
                epoch: 0,
                state: None,
            },
        );
    }

    /// The state to gossip for an object hosted elsewhere (ignored for others).
    pub fn publish(&mut self, object: &str, epoch: u64, state: Option<Vec<u8>>) {
        if let Some(Slot::Elsewhere {
            epoch: published,
            state: current,
        }) = self.aggregations.get_mut(object)
        {
            *published = epoch;
            *current = state;
        }
    }

    /// Stop gossiping `object`.
    pub fn remove_aggregate(&mut self, object: &str) {
        self.aggregations.remove(object);
    }

    /// The seeds this host's contributions use.
    pub fn epoch_seeds(&self) -> EpochSeeds {
        EpochSeeds {
            host: self.id.addr,
            salt: self.salt,
        }
    }

    /// How long an epoch lasts.
    pub fn epoch_length(&self) -> Duration {
        self.config.round * self.config.epoch_rounds.max(1)
    }

    fn here(&mut self, object: &str) -> Option<&mut Aggregation<C>> {
        match self.aggregations.get_mut(object)? {
            Slot::Here(aggregation) => Some(aggregation),
            Slot::Elsewhere { .. } => None,
        }
    }

    /// Change this host's number for `object`, counted from the next epoch.
    pub fn set_input(&mut self, object: &str, input: f64) {
        if let Some(aggregation) = self.here(object) {
            aggregation.set_input(input);
        }
    }

    /// [`Aggregation::contribute_now`] for an object computed here.
    pub fn contribute_now(&mut self, object: &str, input: f64) {
        let mut events = std::mem::take(&mut self.events);
        if let Some(aggregation) = self.here(object) {
            aggregation.contribute_now(input, &mut events);
        }
        self.events = events;
    }

    /// The value of the last finished epoch of `object` (computed here).
    pub fn estimate(&self, object: &str) -> Option<Estimate> {
        match self.aggregations.get(object)? {
            Slot::Here(aggregation) => aggregation.estimate(),
            Slot::Elsewhere { .. } => None,
        }
    }

    /// The value of the current, unfinished epoch (what this host has heard so far).
    pub fn current(&mut self, object: &str) -> Option<Estimate> {
        self.here(object)?.current()
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_round;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            next = next.min(*at);
        }
        for slot in self.aggregations.values() {
            if let Slot::Here(aggregation) = slot {
                next = next.min(aggregation.deadline);
            }
        }
        next
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Run whatever is due at `now`: SWIM timers, epoch ends, the gossip round.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, slot))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let (Some(timer), Some(swim)) = (self.timer_slots.remove(&slot), &mut self.swim) {
                // foca reports errors for timers it no longer cares about; they
                // do not affect its state.
                let _ = swim.handle_timer(timer, &mut self.swim_io);
            }
        }
        self.drain_swim(now);

        let mut events = std::mem::take(&mut self.events);
        self.aggregations.retain(|_, slot| match slot {
            Slot::Here(aggregation) => aggregation.handle_timeout(now, &mut events),
            Slot::Elsewhere { .. } => true,
        });
        self.events = events;

        if now >= self.next_round {
            self.round(now);
            self.next_round += self.config.round;
            if self.next_round <= now {
                self.next_round = now + self.config.round;
            }
        }
    }

    /// Handle one datagram from `from`.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), DatagramError> {
        let result = self.handle_message(from, bytes, now);
        match result {
            Ok(()) => self.stats.datagrams_received += 1,
            Err(_) => self.stats.datagrams_dropped += 1,
        }
        result
    }

    fn handle_message(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), DatagramError> {
        let message = decode(bytes, self.config.secret.as_ref())?;
        let check = |claimed: &HostId| {
            if claimed.addr == from {
                Ok(())
            } else {
                Err(DatagramError::Spoofed {
                    claimed: claimed.addr,
                    actual: from,
                })
            }
        };
        match message {
            Wire::Swim(packet) => {
                let Some(swim) = &mut self.swim else {
                    return Err(DatagramError::Swim("this node runs without SWIM".into()));
                };
                // foca trusts the sender its header names; make that the address the
                // datagram came from, as for our own messages.
                use foca::Codec;
                let header = PostcardCodec
                    .decode_header(&packet[..])
                    .map_err(|e| DatagramError::Swim(e.to_string()))?;
                check(&header.src)?;
                let result = swim
                    .handle_data(&packet, &mut self.swim_io)
                    .map_err(|e| DatagramError::Swim(e.to_string()));
                self.drain_swim(now);
                result
            }
            Wire::Shuffle {
                from: peer,
                entries,
            } => {
                check(&peer)?;
                self.introduce_to_swim(peer, &entries, now);
                let reply = self.sampler.answer_shuffle(peer, &entries, &mut self.rng);
                self.send(
                    peer.addr,
                    &Wire::ShuffleReply {
                        from: self.id,
                        entries: reply,
                    },
                );
                Ok(())
            }
            Wire::ShuffleReply {
                from: peer,
                entries,
            } => {
                check(&peer)?;
                self.introduce_to_swim(peer, &entries, now);
                self.sampler.take_reply(peer.addr, &entries);
                // The peer answered, so it is alive: keep it if there is room.
                self.sampler.offer(peer);
                Ok(())
            }
            Wire::CardRequest { from: peer } => {
                check(&peer)?;
                // Only hosts this one knows get an answer: a card is larger than
                // the request, and a forged source should not get one.
                let known = self.sampler.contains(peer.addr)
                    || self
                        .swim
                        .as_ref()
                        .is_some_and(|swim| swim.iter_members().any(|m| m.id().addr == peer.addr));
                if known && !self.card.is_empty() {
                    self.send(
                        peer.addr,
                        &Wire::Card {
                            from: self.id,
                            card: self.card.clone(),
                        },
                    );
                }
                Ok(())
            }
            Wire::Card { from: peer, card } => {
                check(&peer)?;
                self.events.push_back(Event::Card { host: peer, card });
                Ok(())
            }
            Wire::Exchange {
                from: peer,
                reply,
                shares,
            } => {
                check(&peer)?;
                let pushed = bytes.len();
                let mut asked: Vec<String> = Vec::new();
                // Merges run guest code on the network path: at most
                // MAX_MERGES_PER_DATAGRAM per datagram, and one share per object (so
                // one datagram cannot move an object through many epochs).
                for share in shares {
                    if asked.len() == MAX_MERGES_PER_DATAGRAM || asked.contains(&share.object) {
                        continue;
                    }
                    asked.push(share.object.clone());
                    self.absorb(share, now);
                }
                if !reply {
                    // Answer only for the objects pushed, and at most a few times
                    // the push's size, so a forged source gains little.
                    let budget = (pushed * ANSWER_FACTOR).max(ANSWER_FLOOR);
                    let shares = self.shares_within(Some(&asked), budget);
                    self.send(
                        peer.addr,
                        &Wire::Exchange {
                            from: self.id,
                            reply: true,
                            shares,
                        },
                    );
                }
                Ok(())
            }
        }
    }

    /// Tell SWIM about hosts peer sampling shows to be alive: the sender of a
    /// shuffle, and entries a host put into circulation within the last
    /// [`FRESH_AGE`] rounds. foca on its own learns members only from the updates it
    /// piggybacks, so a host joining a large cluster would take minutes to know
    /// everyone; with this it takes about `N / view_size` rounds. A stale entry
    /// costs one probe: SWIM confirms or refutes it like any other member.
    fn introduce_to_swim(&mut self, peer: HostId, entries: &[Entry], now: Instant) {
        let Some(swim) = &mut self.swim else {
            return;
        };
        let fresh = entries
            .iter()
            .filter(|e| e.age <= FRESH_AGE && e.id.boot != 0 && e.id.addr != self.id.addr)
            .map(|e| e.id)
            .chain(std::iter::once(peer));
        // Errors here concern single updates (e.g. about ourselves); foca skips them.
        let _ = swim.apply_many(fresh.map(foca::Member::alive), false, &mut self.swim_io);
        self.drain_swim(now);
    }

    fn round(&mut self, now: Instant) {
        self.stats.rounds += 1;
        self.heal(now);
        // Choose the exchange's peer before the shuffle takes its target out of the
        // view: with a view of one (two hosts) there would be nobody left, and the
        // two would never exchange.
        let exchange_with = if self.aggregations.is_empty() {
            None
        } else {
            self.sampler.sample(&mut self.rng)
        };
        if let Some((target, entries)) = self.sampler.start_shuffle(&mut self.rng) {
            self.send(
                target.addr,
                &Wire::Shuffle {
                    from: self.id,
                    entries,
                },
            );
        }
        if let Some(peer) = exchange_with {
            let shares = self.shares_within(None, MAX_DATAGRAM - 128);
            self.send(
                peer.addr,
                &Wire::Exchange {
                    from: self.id,
                    reply: false,
                    shares,
                },
            );
        }
    }

    /// Keep the partial view from running dry: top it up from SWIM's members, and
    /// when this host knows nobody at all (a partition cut it off long enough for
    /// everyone to be dropped, or all it knew died), ask its seeds again. Without
    /// this, the two sides of a healed partition would never talk again.
    fn heal(&mut self, now: Instant) {
        use rand::seq::IndexedRandom;
        let members = self.swim_members();
        if self.sampler.entries().len() < self.config.view_size / 2 {
            for member in members.sample(&mut self.rng, self.config.shuffle_length) {
                self.sampler.offer(*member);
            }
        }
        // Now and then swap a view entry for a random SWIM member: after a
        // partition heals, SWIM reconnects first (its announces to down members),
        // and this carries the reconnection into the view, and so into the
        // aggregates.
        if self.rng.random_bool(VIEW_MIXING)
            && let Some(member) = members.choose(&mut self.rng)
        {
            self.sampler.replace_random(*member, &mut self.rng);
        }
        if self.sampler.entries().is_empty() && members.is_empty() {
            // Alone: ask the seeds again, backing off exponentially (1, 2, 4 ... 64
            // rounds) while they do not answer.
            if self.rounds_until_reseed == 0 {
                let seeds = self.seeds.clone();
                self.join(&seeds, now);
                self.reseed_backoff = (self.reseed_backoff * 2).clamp(1, 64);
                self.rounds_until_reseed = self.reseed_backoff;
            } else {
                self.rounds_until_reseed -= 1;
            }
        } else {
            self.reseed_backoff = 0;
            self.rounds_until_reseed = 0;
        }
    }

    /// This host's states (of the objects in `only`, if given), as many as fit
    /// `budget` bytes, starting at the cursor.
    fn shares_within(&mut self, only: Option<&[String]>, budget: usize) -> Vec<Share> {
        let count = self.aggregations.len();
        let mut shares = Vec::new();
        // Room for the envelope (sender, flags, tag) and per-share overheads.
        let mut budget = budget.min(MAX_DATAGRAM - 128);
        let start = self.exchange_cursor % count.max(1);
        let mut taken = 0;
        for (name, slot) in self.aggregations.iter().cycle().skip(start).take(count) {
            if only.is_some_and(|only| !only.contains(name)) {
                continue;
            }
            let Some((epoch, state)) = slot.published() else {
                continue;
            };
            let size = name.len() + state.len() + 24;
            if size > budget || shares.len() == MAX_SHARES {
                self.stats.shares_deferred += 1;
                continue;
            }
            budget -= size;
            taken += 1;
            shares.push(Share {
                object: name.clone(),
                epoch,
                state: state.to_vec(),
            });
        }
        if only.is_none() {
            self.exchange_cursor = start + taken.max(1);
        }
        shares
    }

    fn absorb(&mut self, share: Share, now: Instant) {
        let absorbed = match self.aggregations.get_mut(&share.object) {
            None => false,
            Some(Slot::Here(aggregation)) => {
                aggregation.absorb(share.epoch, &share.state, now, &mut self.events)
            }
            Some(Slot::Elsewhere { epoch, .. }) => {
                // Stale epochs are dropped here already, so they cost no job.
                let fresh = share.epoch >= *epoch;
                if fresh {
                    self.events.push_back(Event::Share(share));
                }
                fresh
            }
        };
        if !absorbed {
            self.stats.shares_ignored += 1;
        }
    }

    fn send(&mut self, to: SocketAddr, message: &Wire) {
        let bytes = encode(message, self.config.secret.as_ref());
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.transmits.push_back(Transmit { to, bytes });
    }

    /// Move what foca asked for into our queues.
    fn drain_swim(&mut self, now: Instant) {
        while let Some((to, packet)) = self.swim_io.to_send() {
            self.send(to.addr, &Wire::Swim(packet.to_vec()));
        }
        while let Some((after, timer)) = self.swim_io.to_schedule() {
            let slot = self.next_timer;
            self.next_timer += 1;
            self.timers.push(Reverse((now + after, slot)));
            self.timer_slots.insert(slot, timer);
        }
        while let Some(notification) = self.swim_io.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    self.sampler.offer(id);
                    self.events.push_back(Event::MemberUp(id));
                }
                OwnedNotification::MemberDown(id) => {
                    self.sampler.remove_down(id);
                    self.events.push_back(Event::MemberDown(id));
                }
                OwnedNotification::Defunct => {
                    // Our identity was declared down and cannot be renewed (its boot
                    // number is exhausted): nothing SWIM says about us is current.
                    tracing::error!(host = %self.id.addr, "SWIM declared this host down for good");
                }
                OwnedNotification::Rename(old, new) => {
                    self.sampler.remove_down(old);
                    self.sampler.offer(new);
                }
                OwnedNotification::Rejoin(new) => {
                    // SWIM declared us down (a false suspicion, or we were cut off)
                    // and we came back under a higher boot number.
                    self.id = new;
                    self.sampler.set_me(new);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(port: u16) -> HostId {
        HostId {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            boot: 7,
        }
    }

    fn plain(message: &Wire) -> Vec<u8> {
        encode(message, None)
    }

    /// A maximum in plain Rust: states are 8 little-endian bytes.
    #[derive(Clone)]
    struct Max;

    impl AggregateCode for Max {
        type Error = String;
        fn contribute(&mut self, input: f64, _seed: u64) -> Result<Vec<u8>, String> {
            Ok(input.to_le_bytes().to_vec())
        }
        fn merge(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, String> {
            Ok(self
                .estimate(a)?
                .max(self.estimate(b)?)
                .to_le_bytes()
                .to_vec())
        }
        fn estimate(&mut self, state: &[u8]) -> Result<f64, String> {
            let bytes: [u8; 8] = state.try_into().map_err(|_| "not 8 bytes".to_string())?;
            Ok(f64::from_le_bytes(bytes))
        }
    }

    fn node(port: u16, swim: bool) -> GossipNode<Max> {
        let mut config = GossipConfig::lan(4);
        if !swim {
            config.swim = None;
        }
        GossipNode::new(host(port), config, u64::from(port), Instant::now())
    }

    #[test]
    fn a_shuffle_is_answered_and_its_sender_enters_the_view() {
        let mut a = node(1, false);
        let shuffle = plain(&Wire::Shuffle {
            from: host(2),
            entries: vec![
                Entry {
                    id: host(2),
                    age: 0,
                },
                Entry {
                    id: host(3),
                    age: 4,
                },
            ],
        });
        a.handle_datagram(host(2).addr, &shuffle, Instant::now())
            .unwrap();
        let reply = a.poll_transmit().expect("a reply");
        assert_eq!(reply.to, host(2).addr);
        assert!(matches!(
            decode(&reply.bytes, None),
            Ok(Wire::ShuffleReply { .. })
        ));
        assert!(a.view().iter().any(|e| e.id == host(2)));
        assert!(a.view().iter().any(|e| e.id == host(3)));
    }

    #[test]
    fn a_message_naming_another_sender_is_dropped_and_counted() {
        let mut a = node(1, false);
        let forged = plain(&Wire::Shuffle {
            from: host(2),
            entries: vec![Entry {
                id: host(9),
                age: 0,
            }],
        });
        let err = a
            .handle_datagram(host(3).addr, &forged, Instant::now())
            .unwrap_err();
        assert!(matches!(err, DatagramError::Spoofed { .. }), "{err}");
        assert_eq!(a.stats().datagrams_dropped, 1);
        assert!(a.view().is_empty(), "a forged shuffle changed the view");
        assert!(a.poll_transmit().is_none());
    }

    #[test]
    fn wrong_version_oversized_and_overfull_datagrams_are_refused() {
        let mut a = node(1, true);
        let from = host(2).addr;
        let mut bytes = plain(&Wire::Swim(vec![1, 2, 3]));
        bytes[0] = 9;
        assert_eq!(
            a.handle_datagram(from, &bytes, Instant::now()),
            Err(DatagramError::Version(Some(9)))
        );
        let huge = vec![WIRE_VERSION; MAX_DATAGRAM + 1];
        assert_eq!(
            a.handle_datagram(from, &huge, Instant::now()),
            Err(DatagramError::TooLarge(MAX_DATAGRAM + 1))
        );
        let overfull = plain(&Wire::Shuffle {
            from: host(2),
            entries: vec![
                Entry {
                    id: host(3),
                    age: 0
                };
                MAX_ENTRIES + 1
            ],
        });
        assert!(matches!(
            a.handle_datagram(from, &overfull, Instant::now()),
            Err(DatagramError::OutOfBounds(_))
        ));
        assert_eq!(a.stats().datagrams_dropped, 3);
        assert!(a.view().is_empty());
    }

    #[test]
    fn cards_are_answered_only_when_published_to_known_hosts_and_bounded() {
        let mut a = node(1, false);
        let request = plain(&Wire::CardRequest { from: host(2) });
        a.set_card(b"mesh key and objects".to_vec()).unwrap();
        a.handle_datagram(host(2).addr, &request, Instant::now())
            .unwrap();
        assert!(
            a.poll_transmit().is_none(),
            "answered a host it does not know"
        );
        a.set_card(Vec::new()).unwrap();
        a.join(&[host(2).addr], Instant::now());
        while a.poll_transmit().is_some() {}
        a.handle_datagram(host(2).addr, &request, Instant::now())
            .unwrap();
        assert!(a.poll_transmit().is_none(), "answered without a card");
        assert!(a.set_card(vec![0; MAX_CARD + 1]).is_err());
        a.set_card(b"mesh key and objects".to_vec()).unwrap();
        a.handle_datagram(host(2).addr, &request, Instant::now())
            .unwrap();
        let answer = a.poll_transmit().expect("an answer");
        assert_eq!(answer.to, host(2).addr);

        let mut b = node(2, false);
        b.handle_datagram(host(1).addr, &answer.bytes, Instant::now())
            .unwrap();
        assert_eq!(
            b.poll_event(),
            Some(Event::Card {
                host: host(1),
                card: b"mesh key and objects".to_vec()
            })
        );
        let oversized = plain(&Wire::Card {
            from: host(1),
            card: vec![0; MAX_CARD + 1],
        });
        assert!(matches!(
            b.handle_datagram(host(1).addr, &oversized, Instant::now()),
            Err(DatagramError::OutOfBounds(_))
        ));
    }

    #[test]
    fn with_a_secret_only_sealed_datagrams_with_a_valid_tag_are_accepted() {
        let secret = [7u8; 32];
        let sealed_node = |port: u16| {
            let mut config = GossipConfig::lan(4);
            config.swim = None;
            config.secret = Some(secret);
            GossipNode::<Max>::new(host(port), config, 1, Instant::now())
        };
        let mut a = sealed_node(1);
        let shuffle = Wire::Shuffle {
            from: host(2),
            entries: vec![Entry {
                id: host(2),
                age: 0,
            }],
        };
        let from = host(2).addr;
        assert_eq!(
            a.handle_datagram(from, &plain(&shuffle), Instant::now()),
            Err(DatagramError::SecretMismatch(false))
        );
        let other_domain = encode(&shuffle, Some(&[8u8; 32]));
        assert_eq!(
            a.handle_datagram(from, &other_domain, Instant::now()),
            Err(DatagramError::BadTag)
        );
        let mut tampered = encode(&shuffle, Some(&secret));
        tampered[3] ^= 1;
        assert_eq!(
            a.handle_datagram(from, &tampered, Instant::now()),
            Err(DatagramError::BadTag)
        );
        assert!(
            a.view().is_empty(),
            "an unauthenticated shuffle changed the view"
        );
        a.handle_datagram(from, &encode(&shuffle, Some(&secret)), Instant::now())
            .unwrap();
        let reply = a.poll_transmit().expect("a reply");
        assert!(matches!(
            decode(&reply.bytes, Some(&secret)),
            Ok(Wire::ShuffleReply { .. })
        ));
        // And an open host refuses sealed datagrams with a clear reason.
        let mut open = node(3, false);
        let err = open
            .handle_datagram(from, &encode(&shuffle, Some(&secret)), Instant::now())
            .unwrap_err();
        assert_eq!(err, DatagramError::SecretMismatch(true));
        assert!(err.to_string().contains("--secret"), "{err}");
    }

    #[test]
    fn an_isolated_node_asks_its_seeds_again() {
        let mut a = node(1, false);
        let seed = host(9).addr;
        a.join(&[seed], Instant::now());
        // Its only entry (the seed) is taken out by the first shuffle, which nobody
        // answers; the next round finds the view empty and asks the seed again.
        let start = Instant::now();
        a.handle_timeout(start + Duration::from_secs(1));
        a.handle_timeout(start + Duration::from_secs(2));
        let mut shuffles_to_seed = 0;
        while let Some(t) = a.poll_transmit() {
            if t.to == seed && matches!(decode(&t.bytes, None), Ok(Wire::Shuffle { .. })) {
                shuffles_to_seed += 1;
            }
        }
        assert_eq!(shuffles_to_seed, 2);
    }

    #[test]
    fn a_swim_packet_must_come_from_the_sender_its_header_names() {
        use foca::Codec;
        let mut a = node(1, true);
        let mut packet = Vec::new();
        PostcardCodec
            .encode_header(
                &foca::Header {
                    src: host(2),
                    src_incarnation: 0,
                    dst: host(1),
                    message: foca::Message::Announce,
                },
                &mut packet,
            )
            .unwrap();
        let datagram = plain(&Wire::Swim(packet));
        let err = a
            .handle_datagram(host(3).addr, &datagram, Instant::now())
            .unwrap_err();
        assert!(matches!(err, DatagramError::Spoofed { .. }), "{err}");
        assert!(
            a.poll_transmit().is_none(),
            "a forged announce was answered"
        );
        a.handle_datagram(host(2).addr, &datagram, Instant::now())
            .unwrap();
        assert!(
            a.poll_transmit().is_some(),
            "a genuine announce gets a feed"
        );
    }

    #[test]
    fn a_node_without_swim_refuses_swim_packets() {
        let mut a = node(1, false);
        let packet = plain(&Wire::Swim(vec![0; 10]));
        assert!(matches!(
            a.handle_datagram(host(2).addr, &packet, Instant::now()),
            Err(DatagramError::Swim(_))
        ));
    }

    fn exchange_from(from: HostId, reply: bool, shares: Vec<Share>) -> Vec<u8> {
        plain(&Wire::Exchange {
            from,
            reply,
            shares,
        })
    }

    #[test]
    fn shares_for_an_object_hosted_elsewhere_are_handed_out_and_answered_with_the_published_state()
    {
        let mut a = node(1, false);
        a.host_elsewhere("max");
        let push = exchange_from(
            host(2),
            false,
            vec![Share {
                object: "max".into(),
                epoch: 3,
                state: 5.0f64.to_le_bytes().to_vec(),
            }],
        );
        // Nothing published yet: the share is handed out, the answer is empty.
        a.handle_datagram(host(2).addr, &push, Instant::now())
            .unwrap();
        let Some(Event::Share(share)) = a.poll_event() else {
            panic!("the share was not handed out");
        };
        assert_eq!((share.object.as_str(), share.epoch), ("max", 3));
        let answer = a.poll_transmit().expect("an answer");
        let Ok(Wire::Exchange { shares, reply, .. }) = decode(&answer.bytes, None) else {
            panic!("not an exchange");
        };
        assert!(reply && shares.is_empty(), "{shares:?}");
        // What the aggregation (run elsewhere) publishes is what the node answers
        // with; a share older than the published epoch is ignored and costs no job.
        a.publish("max", 4, Some(7.0f64.to_le_bytes().to_vec()));
        a.handle_datagram(host(2).addr, &push, Instant::now())
            .unwrap();
        assert_eq!(a.poll_event(), None, "a stale share was handed out");
        assert_eq!(a.stats().shares_ignored, 1);
        let answer = a.poll_transmit().expect("an answer");
        let Ok(Wire::Exchange { shares, .. }) = decode(&answer.bytes, None) else {
            panic!("not an exchange");
        };
        assert_eq!(
            shares,
            vec![Share {
                object: "max".into(),
                epoch: 4,
                state: 7.0f64.to_le_bytes().to_vec()
            }]
        );
        // Its epochs are the aggregation's business: the node arms no timer for it.
        assert!(a.poll_timeout() <= Instant::now() + Duration::from_secs(1));
    }

    #[test]
    fn an_aggregation_run_apart_matches_one_run_by_the_node() {
        let now = Instant::now();
        let mut inline = node(1, false);
        inline.add_aggregate("max", Max, 2.0, now);
        let mut events = VecDeque::new();
        let mut apart = Aggregation::new(
            "max",
            Max,
            2.0,
            inline.epoch_seeds(),
            inline.epoch_length(),
            now,
            &mut events,
        );
        let share = Share {
            object: "max".into(),
            epoch: 0,
            state: 9.0f64.to_le_bytes().to_vec(),
        };
        inline
            .handle_datagram(
                host(2).addr,
                &exchange_from(host(2), true, vec![share.clone()]),
                now,
            )
            .unwrap();
        assert!(apart.absorb(share.epoch, &share.state, now, &mut events));
        let end = now + inline.epoch_length();
        inline.handle_timeout(end);
        assert!(apart.handle_timeout(end, &mut events));
        assert_eq!(inline.estimate("max"), apart.estimate());
        assert_eq!(apart.estimate().map(|e| e.value), Some(9.0));
        assert_eq!(apart.epoch(), 1);
        assert_eq!(apart.state(), Some(&2.0f64.to_le_bytes()[..]));
    }

    #[test]
    fn two_hosts_alone_exchange_their_states() {
        let start = Instant::now();
        let mut config = GossipConfig::lan(2);
        config.swim = None;
        let mut a: GossipNode<Max> = GossipNode::new(host(1), config.clone(), 1, start);
        let mut b: GossipNode<Max> = GossipNode::new(host(2), config, 2, start);
        a.add_aggregate("max", Max, 3.0, start);
        b.add_aggregate("max", Max, 8.0, start);
        b.join(&[host(1).addr], start);
        let mut now = start;
        // Ten rounds of 200 ms, datagrams delivered at once.
        for _ in 0..200 {
            now += Duration::from_millis(10);
            for from in [1, 2] {
                let (src, dst) = if from == 1 {
                    (&mut a, &mut b)
                } else {
                    (&mut b, &mut a)
                };
                if src.poll_timeout() <= now {
                    src.handle_timeout(now);
                }
                while let Some(t) = src.poll_transmit() {
                    let _ = dst.handle_datagram(host(from).addr, &t.bytes, now);
                }
            }
        }
        // The shuffle takes a host's only view entry out while it waits for the
        // answer; the exchange must still happen.
        assert_eq!(a.current("max").map(|e| e.value), Some(8.0));
        assert_eq!(b.current("max").map(|e| e.value), Some(8.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Arbitrary bytes after a valid version byte never panic the node; what
        /// does not decode is counted.
        #[test]
        fn arbitrary_datagrams_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut bytes = vec![WIRE_VERSION];
            bytes.extend(body);
            let mut a = node(1, true);
            let before = a.stats();
            let result = a.handle_datagram(host(2).addr, &bytes, Instant::now());
            let after = a.stats();
            prop_assert_eq!(
                after.datagrams_dropped + after.datagrams_received,
                before.datagrams_dropped + before.datagrams_received + 1
            );
            prop_assert_eq!(result.is_err(), after.datagrams_dropped == 1);
        }

        /// Arbitrary bytes after the sealed version byte never get past the tag.
        #[test]
        fn arbitrary_sealed_datagrams_are_refused(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut bytes = vec![WIRE_VERSION_SEALED];
            bytes.extend(body);
            let mut config = GossipConfig::lan(4);
            config.secret = Some([3; 32]);
            let mut a = GossipNode::<Max>::new(host(1), config, 1, Instant::now());
            let result = a.handle_datagram(host(2).addr, &bytes, Instant::now());
            prop_assert_eq!(result, Err(DatagramError::BadTag));
        }

        /// Flipping bytes of a valid datagram never panics, and a mutated message
        /// that still decodes stays within its bounds.
        #[test]
        fn mutated_datagrams_never_panic(flips in proptest::collection::vec((0usize..512, any::<u8>()), 1..8)) {
            let mut bytes = plain(&Wire::Exchange {
                from: host(2),
                reply: false,
                shares: vec![Share { object: "census".into(), epoch: 3, state: vec![1; 100] }],
            });
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] ^= value;
            }
            let mut a = node(1, true);
            let result = a.handle_datagram(host(2).addr, &bytes, Instant::now());
            prop_assert_eq!(result.is_err(), a.stats().datagrams_dropped == 1);
        }
    }
}
