//! The `vsync` driver: virtual synchrony with total order, and durable objects
//! (QuickSilver's QS/2 role, `DESIGN.md` section 7).
//!
//! # How openraft is wired
//! Each object's group is one Raft cluster (openraft 0.9), and the object's whole
//! ordered stream is its Raft log, not only its membership:
//! - **Views** are Raft membership configs. A view change is a log entry, so every
//!   member that survives from one view to the next delivers the same messages in
//!   the same order before it, and the flush at a view change is Raft's commit of
//!   everything before the config entry. The object sees the view at its place in
//!   the stream ([`machine::Application::view`]).
//! - **Joins** go to the leader ([`group::Rpc::Join`]), which checks the object's
//!   access policy, adds the joiner as a learner (it catches up from the log or a
//!   snapshot: state transfer at a view boundary), then makes it a voter once
//!   it has answered since it asked (a joiner that died meanwhile is not made a
//!   voter; a silent learner is removed). Leaves remove the member.
//! - **Exclusion**: the leader removes voters it has not heard from for
//!   [`group::GroupConfig::exclude_after`] (bounded exclusion), if members that
//!   answered just now form a majority of the old view and of the new one, and
//!   never below [`group::GroupConfig::min_voters`] (3): a group of three keeps
//!   a failed member in its view. A member that no leader replicates to for a
//!   while (say it was excluded while cut off: it is never told) starts an
//!   election and asks the members it knows to re-admit it
//!   ([`group::Group::tick`]); the same upkeep breaks an election livelock of
//!   openraft 0.9, whose election timeouts are drawn once per member.
//! - **Who may take part**: members of a member's config, anyone the object's
//!   `open` or `keys:` policy admits, and (for `grants:` objects) leaders a
//!   member was pointed at by a member it asked.
//! - **Messages** are commands ([`types::Command`]) written through the leader
//!   (followers forward); the state machine ([`machine`]) applies them to the
//!   sandboxed replica in log order, once each (retries are de-duplicated by the
//!   sender's sequence number).
//! - **Transactions**: an update method's multicast is one command; it commits
//!   at every replica or none (Raft), and the object may refuse it at apply time
//!   (the same at every replica, deterministically): the caller learns commit or
//!   abort. Total order plus determinism make the execution one-copy
//!   serializable. Retries are applied once ((sender, boot, seq) de-duplication
//!   in the state machine), and a retry of a refused command learns the refusal.
//! - **Reads** pass a linearizable barrier first: the leader confirms its
//!   leadership (openraft's read index) and the replica waits until it has applied
//!   up to it. A write is acknowledged once committed and applied at the member
//!   that submitted it (so a following read there sees it).
//! - **Durability** (`durable` objects): the log, vote, committed index and
//!   latest snapshot live in a redb file per group, every change fsynced before
//!   `append` (or the vote) returns, since openraft 0.9 acknowledges entries to
//!   the leader when `append` returns (see [`store`] for the policy); after
//!   every member is killed, the group restarts from disk with exactly the
//!   committed state.
//!
//! - **Live upgrade**: the object's logic is named by logic entries in the log
//!   (the founder's first, then one per upgrade its leader orders), so every
//!   replica switches at the same position, or aborts alike; see [`machine`].
//! - **Divergence checks**: replicas write digests of their states to the log
//!   every so many events; every replica tallies them alike, a replica that
//!   parted from the majority is repaired from a member that agreed, and with
//!   no majority every replica stops the object; see [`machine`].
//!
//! Partitions: only a side with a majority can elect a leader and commit, so two
//! sides never diverge (what the `mesh` driver does not promise).
//!
//! - [`types`]: openraft's type configuration and the log's commands.
//! - [`store`]: log storage (memory or redb).
//! - [`machine`]: the state machine over an [`machine::Application`].
//! - [`group`]: one member's side of a group over a [`group::Link`].
//! - [`net`]: the QUIC link between members.
//! - [`host`]: groups over sandboxed replicas, as the node runs them.
//!
//! Tests: `host/tests/all/vsync_simulation.rs` (real openraft groups over a seeded
//! faulty network under a paused clock, one check per invariant),
//! `host/tests/all/vsync_objects.rs` (shipped objects over QUIC in one process),
//! `host/tests/all/vsync_processes.rs` (five `lo node` processes, kill -9, a
//! linearizability check of the clients' history); `host/benches/vsync.rs`.
pub mod group;
pub mod host;
pub mod machine;
pub mod net;
pub mod node_driver;
pub mod store;
pub mod types;
