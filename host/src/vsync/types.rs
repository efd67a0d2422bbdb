//! The types openraft is instantiated with, and the commands of an object's log.

use crate::mesh::net::Peer;
use liveobjects_directory::keys::{MemberName, PublicKey};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A member as openraft stores it in membership configs: its key, QUIC address and
/// short name. Like [`Peer`], a member is its key and address; the name is a label
/// that takes no part in comparisons.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Member {
    /// The host's public key.
    pub key: PublicKey,
    /// Where its vsync endpoint listens.
    pub addr: std::net::SocketAddr,
    /// Its self-asserted name, if any.
    pub name: Option<MemberName>,
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.addr) == (other.key, other.addr)
    }
}

impl Eq for Member {}

impl Default for Member {
    fn default() -> Self {
        Member {
            key: PublicKey([0; 32]),
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            name: None,
        }
    }
}

impl From<Peer> for Member {
    fn from(p: Peer) -> Self {
        Member {
            key: p.key,
            addr: p.addr,
            name: p.name,
        }
    }
}

impl From<Member> for Peer {
    fn from(m: Member) -> Self {
        Peer {
            key: m.key,
            addr: m.addr,
            name: m.name,
        }
    }
}

/// A host's node id in every group: the first 8 bytes of its key. Two keys
/// sharing them would collide; with 64 random bits that takes about four billion
/// members in one group.
pub fn node_id(key: &PublicKey) -> u64 {
    u64::from_be_bytes(key.0[..8].try_into().expect("8 bytes"))
}

/// One entry of an object's ordered log: an event, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The member that submitted it (its key, hex).
    pub sender: String,
    /// The sender's incarnation (random per start): sequence numbers restart with
    /// each boot, so a command still in flight from before a restart can never be
    /// mistaken for a new one.
    pub boot: u64,
    /// The sender's sequence number within its boot: a retried command (same
    /// sender, boot and seq) is applied once.
    pub seq: u64,
    /// The sender's clock.
    pub timestamp_ms: u64,
    /// The object's bytes.
    pub payload: Vec<u8>,
    /// Further payloads of the same transaction (an update that multicast several
    /// times): applied after `payload`, all of them or none.
    pub more: Vec<Vec<u8>>,
}

impl Command {
    /// About the bytes this command takes in an entry or a request.
    pub fn bytes(&self) -> usize {
        self.payload.len() + self.more.iter().map(Vec::len).sum::<usize>() + 64
    }
}

/// One entry of an object's ordered log, as the group's members write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ordered {
    /// An event (a call's multicasts, or events an event multicast).
    Event(Command),
    /// Events that waited together at the leader, ordered as one entry (group
    /// commit: one append, one fsync and one replication round for all of
    /// them), applied in this order, each on its own as if it had an entry of
    /// its own.
    Events(Vec<Command>),
    /// The object runs the logic of this version of its record from here on:
    /// the group's first such entry names the logic it was founded with, every
    /// later one is a live upgrade (see [`super::machine`]).
    Logic(LogicChange),
    /// A member's digest of its replica's state at a checked position (see
    /// [`super::machine`]'s divergence checks).
    Digest(StateDigest),
}

/// What a member reports of its state at a checked position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    /// The member (its key, hex).
    pub member: String,
    /// The log position after which it took the snapshot.
    pub at: u64,
    /// SHA-256 of its replica's snapshot there.
    pub sha256: [u8; 32],
}

/// A version of the object's logic, as a [`Ordered::Logic`] entry names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicChange {
    /// The record version.
    pub version: u64,
    /// The signed record (postcard), which every member verifies against the
    /// directory before it runs the logic it names.
    pub record: Vec<u8>,
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Applied (committed at every replica).
    Done,
    /// The object refused it (deterministically, at every replica: the transaction
    /// aborted and changed nothing).
    Refused(String),
    /// Already applied (a retry).
    Duplicate,
    /// Not a command (a leader's blank entry or a membership change).
    Internal,
    /// A logic entry: the object runs the logic it names from here on (or, if
    /// [`Applied::Refused`], the upgrade was aborted at every replica).
    Switched,
    /// An [`Ordered::Events`] entry: what applying each of its commands did, in
    /// order.
    Each(Vec<Applied>),
}

/// Where a command is in an object's log: its entry's index and its place
/// among that entry's commands (0 for an entry of one command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The log index of the entry.
    pub index: u64,
    /// The command's place in the entry.
    pub slot: u32,
}

openraft::declare_raft_types!(
    /// The openraft configuration of vsync groups.
    pub TypeConfig:
        D = Ordered,
        R = Applied,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A group's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// openraft's storage error for our node ids.
pub type StorageError = openraft::StorageError<u64>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A stored membership config.
pub type StoredMembership = openraft::StoredMembership<u64, Member>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, Member>;
