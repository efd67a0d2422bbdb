//! openraft's state machine for a group: the object's replica (any
//! [`Application`]: the sandboxed guest in the host, a model in the simulations),
//! fed committed entries in log order.
//!
//! - Every committed command is applied once: a retried command (same sender, boot
//!   and sequence number) is answered [`Applied::Duplicate`] (or, if the first
//!   attempt was refused, with the same refusal), since what each sender had
//!   applied, and its recent refusals, are part of the state (and of snapshots). Commands of one
//!   sender may commit out of order (concurrent calls), so the record is a floor
//!   (every number up to it applied) plus the numbers above it applied so far.
//! - A refusal by the object is a deterministic abort: every replica refuses the
//!   same command alike and the caller learns it ([`Applied::Refused`]).
//! - Membership entries become *views* for the object, at their place in the log.
//! - Snapshots carry the object's snapshot and the senders' sequence numbers. For
//!   durable groups the latest one is also written to the group's database, and a
//!   restarted member starts from it; openraft then re-applies the committed entries
//!   after it (it persists the committed index), so nothing is applied twice.
//!
//! # Live upgrade: the cut is a log entry
//! The object's logic is part of the replicated state: a [`Ordered::Logic`]
//! entry names a version of the object's signed record, and every replica runs
//! that version's logic from that entry on.
//! - **The first one** is written by the member that founds the group, before
//!   it serves calls: it names the logic the group started with, so a member
//!   that catches up from the start of the log (having resolved a newer record
//!   meanwhile) runs the log's first events with the founder's logic. At it,
//!   every replica starts that logic afresh (`init` with no state, then the
//!   current view), whichever logic it had loaded.
//! - **Every later one** is a live upgrade, written by the leader when it finds a
//!   newer record of the object ([`super::group::Group::propose_logic`]). Each
//!   replica verifies the record against the directory and loads its logic
//!   ([`Application::prepare_logic`], outside the machine's lock; entries after it
//!   wait), then switches in log order: the old logic's snapshot, the new logic's
//!   `migrate`, its `init` ([`crate::runtime::Replica::upgrade`]). A version is
//!   tried once, and only above the one in force. If the new logic refuses or
//!   traps, or the record is refused (not signed by the object's zone, another
//!   object's, another driver), every replica alike keeps the old logic and the
//!   entry answers [`Applied::Refused`]: the upgrade is aborted everywhere. A
//!   replica that cannot switch for a reason of its host's (the directory
//!   unreachable for a minute, its wall-clock deadline) stops the group on that
//!   host (openraft's state machine fails), as a crash, rather than run other
//!   logic than its group.
//! - **What a caller sees**: every command ordered before the entry is applied by
//!   the old logic, every one after it by the new, at every replica; a call whose
//!   method ran on the old logic and whose events commit after the switch has
//!   them applied by the new one (it accepts the old interface's events, or the
//!   publish was `--breaking`). Nothing is lost or applied twice; members,
//!   leaders and connections stay.
//! - **Joiners** get the logic in force with the state: snapshots carry it, and a
//!   member whose loaded logic is another version loads that one first.
//!
//! # Divergence checks: digests in the log
//! Raft keeps the logs equal; a replica's state can still part from its group's
//! (a non-deterministic host call, memory corrupted on one host). Every
//! [`Application::check_every`] events, and at every membership entry that
//! changes the voters (once there are two), each replica takes its snapshot's
//! SHA-256 after applying that position and writes it to the log as an
//! [`Ordered::Digest`] entry. Applying those entries, every replica tallies the
//! same reports in the same order, so all come to the same verdict:
//! - once more than half the voters agree on a digest, the check is decided: a
//!   replica whose own digest differs has diverged; it keeps its evidence and is
//!   repaired by a state transfer from a member that agreed
//!   ([`Machine::repair_from`]): its state, senders and logic are replaced by
//!   that member's, and the entries up to that member's position are passed over
//!   (their effects are in the state it took);
//! - once every voter reported and no digest has a majority, every replica stops
//!   the object alike ("no majority at position N"), rather than let it fork:
//!   later entries are only answered (refused) and no snapshot is built, so a
//!   restart replays the log to the same verdict.
//!
//! A snapshot that cannot be had (a quarantined replica, a repair not caught up,
//! a halted object) is waited for rather than built empty: openraft keeps the log.

use super::store;
use super::types::{
    Applied, Command, Entry, LogId, LogicChange, Member, Ordered, Position, SnapshotMeta,
    StateDigest, StorageError, StoredMembership, TypeConfig,
};
use crate::driver::{BoxFuture, LogicError, LogicInForce, RecordUse};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError};
use redb::Database;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, Mutex};

/// A view of the object's membership, as the object sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The log index of the membership entry (grows with every change).
    pub id: u64,
    /// The voters, by node id order.
    pub members: Vec<Member>,
}

/// What a group replicates: applied in log order, the same on every member.
pub trait Application: Send + 'static {
    /// The loaded logic of a version [`prepare_logic`](Self::prepare_logic)
    /// hands to [`adopt`](Self::adopt) and [`upgrade`](Self::upgrade).
    type Logic: Send + 'static;

    /// Start from scratch (`None`) or from a snapshot.
    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String>;
    /// Apply one committed command at position `at`; `Err` refuses it (the
    /// state must be left unchanged).
    fn apply(&mut self, at: Position, command: &Command) -> Result<(), String>;
    /// The membership changed (at log position `view.id`).
    fn view(&mut self, view: &GroupView);
    /// The whole state, or why it cannot be had (no snapshot is built then,
    /// nor a repair served).
    fn snapshot(&mut self) -> Result<Vec<u8>, String>;

    /// The record version of the logic loaded now (0: unknown).
    fn running(&self) -> u64 {
        0
    }

    /// Verify `change`'s record (as `usage` says: an upgrade, or the logic of a
    /// state or of the log's first entry) and load its logic. Runs outside the machine's
    /// lock and may take a while (the directory); entries after it wait.
    /// [`LogicError::Refused`] is what every member would say of the record;
    /// [`LogicError::Unavailable`] stops the group on this host.
    fn prepare_logic(
        &self,
        change: &LogicChange,
        usage: RecordUse,
    ) -> BoxFuture<'static, Result<Self::Logic, LogicError>> {
        let _ = (change, usage);
        Box::pin(async {
            Err(LogicError::Refused(
                "this replica has no live upgrades".to_string(),
            ))
        })
    }

    /// Run `logic` from the next [`restore`](Self::restore) on (the state that
    /// follows belongs to it); the machine restores right after.
    fn adopt(&mut self, logic: Self::Logic) -> Result<(), String> {
        let _ = logic;
        Err("this replica has no live upgrades".to_string())
    }

    /// Switch from version `from` to `logic` at log position `index` (a live
    /// upgrade), keeping the state.
    fn upgrade(&mut self, index: u64, from: u64, logic: Self::Logic) -> Switched {
        let _ = (index, from, logic);
        Switched::Refused("this replica has no live upgrades".to_string())
    }

    /// The logic in force changed (to publish it: status, the interface calls
    /// use).
    fn logic_changed(&mut self, in_force: &LogicInForce) {
        let _ = in_force;
    }

    /// This host cannot follow its group (say, it cannot get the logic the group
    /// switched to), or the object stops at every replica (a check with no
    /// majority): calls stop here; the machine answers later entries only.
    fn stop(&mut self, reason: &str) {
        let _ = reason;
    }

    /// Check the replicas' states every this many log positions (0: never).
    fn check_every(&self) -> u64 {
        0
    }

    /// Take this replica's digest after log position `at` (a checked position)
    /// and report it to the group, without waiting for it to be ordered.
    fn checkpoint(&mut self, at: u64) {
        let _ = at;
    }

    /// The group's verdict on a check, from the digests in the log: the same
    /// at every replica. (On no majority, [`stop`](Self::stop) follows.)
    fn checked(&mut self, outcome: &CheckOutcome) {
        let _ = outcome;
    }

    /// A repair installed a state holding every entry up to `through`.
    fn repaired(&mut self, through: u64) {
        let _ = through;
    }
}

/// The group's verdict on the check of its replicas' states at one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The position checked.
    pub at: u64,
    /// The voters when it was decided.
    pub members: usize,
    /// What they hold.
    pub verdict: CheckVerdict,
}

/// What the voters' digests said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckVerdict {
    /// More than half of them agree on `sha256`: these members (keys, hex).
    Majority {
        /// The majority's digest.
        sha256: [u8; 32],
        /// Who reported it.
        agreeing: Vec<String>,
    },
    /// Every voter reported; no digest has a majority (digest, how many).
    NoMajority {
        /// The different states and how many hold each.
        groups: Vec<([u8; 32], usize)>,
    },
}

/// The checks under way and decided (replicated: part of snapshots).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checks {
    /// Digests reported per position not decided yet, by member.
    reported: BTreeMap<u64, BTreeMap<String, [u8; 32]>>,
    /// Recent positions decided.
    decided: BTreeSet<u64>,
}

/// Positions kept in [`Checks`] (older ones are dropped, and reports of
/// positions older than those kept, or not reached yet, are ignored: a member
/// that never reports, or reports nonsense, cannot make them grow).
const CHECKS_KEPT: usize = 16;

/// What a live upgrade did at one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switched {
    /// The replica runs the new logic from the migrated state.
    Done,
    /// The new logic refused the state or trapped: every replica says the same,
    /// and keeps the old logic.
    Refused(String),
    /// It could not run here for a reason of this host's: the group stops here.
    Stop(String),
}

/// What one sender (in one boot) has had applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderProgress {
    /// Every sequence number up to this one was applied (or given up).
    floor: u64,
    /// Numbers above the floor applied so far.
    above: BTreeSet<u64>,
    /// The object's reasons for the recent commands it refused (the last
    /// [`MAX_GAP`] numbers), so a retry learns the refusal, not a success.
    refused: BTreeMap<u64, String>,
}

/// Numbers above a sender's floor kept before the floor is forced up: a command
/// that many places behind its sender's newest is treated as already applied
/// (its caller gave up on it long ago).
const MAX_GAP: usize = 4096;

impl SenderProgress {
    /// Record `seq` as applied; false if it was already.
    fn record(&mut self, seq: u64) -> bool {
        if seq <= self.floor || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        while self.above.len() > MAX_GAP {
            let lowest = self.above.pop_first().expect("not empty");
            self.floor = lowest;
            while self.above.remove(&(self.floor + 1)) {
                self.floor += 1;
            }
        }
        true
    }

    /// The highest number applied.
    fn highest(&self) -> u64 {
        self.above.last().copied().unwrap_or(self.floor)
    }

    /// Remember that the object refused `seq`.
    fn refuse(&mut self, seq: u64, reason: String) {
        self.refused.insert(seq, reason);
        let keep_from = self.highest().saturating_sub(MAX_GAP as u64);
        while self
            .refused
            .first_key_value()
            .is_some_and(|(s, _)| *s < keep_from)
        {
            self.refused.pop_first();
        }
    }
}

type SenderKey = (String, u64);

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    app: Vec<u8>,
    senders: BTreeMap<SenderKey, SenderProgress>,
    /// The logic `app` belongs to (`None`: a group with no logic entry yet).
    logic: Option<LogicInForce>,
    /// The divergence checks under way.
    checks: Checks,
    /// Event entries applied so far: checks fall every so many of them (not
    /// every so many positions, which the digests themselves would fill).
    events: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state a group's machine and its snapshot builder share.
pub struct MachineState<A> {
    /// The replicated object.
    pub app: A,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    senders: BTreeMap<SenderKey, SenderProgress>,
    current: Option<StoredSnapshot>,
    snapshots: u64,
    disk: Option<Arc<Database>>,
    /// The logic in force as of `last_applied` (`None` before the first logic
    /// entry).
    logic: Option<LogicInForce>,
    /// Why this member stopped following its group (a logic entry it could not
    /// apply): no snapshot is taken after that, lest it claim the entry.
    failed: Option<String>,
    /// The divergence checks under way.
    checks: Checks,
    /// Event entries applied (see [`SnapshotBody::events`]).
    events: u64,
    /// Why the object stopped at every replica (a check with no majority):
    /// later entries are only answered, and no snapshot is built, so a restart
    /// replays the log to the same verdict.
    halted: Option<String>,
    /// Entries up to this position are passed over: a repair installed a state
    /// that already holds them.
    repaired_through: u64,
}

impl<A> MachineState<A> {
    /// The last log position applied.
    pub fn applied(&self) -> Option<LogId> {
        self.last_applied
    }

    /// The membership last applied.
    pub fn membership(&self) -> &StoredMembership {
        &self.membership
    }

    /// The logic in force as of the last position applied, if the log named it.
    pub fn logic(&self) -> Option<&LogicInForce> {
        self.logic.as_ref()
    }

    /// Whether any event was applied (or refused) yet: a group's first logic
    /// entry may only come before every event.
    pub fn has_events(&self) -> bool {
        !self.senders.is_empty()
    }
}

/// openraft's state machine over an [`Application`].
pub struct Machine<A> {
    state: Arc<Mutex<MachineState<A>>>,
}

impl<A> Clone for Machine<A> {
    fn clone(&self) -> Self {
        Machine {
            state: self.state.clone(),
        }
    }
}

fn sm_error(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn view_of(membership: &StoredMembership, id: u64) -> GroupView {
    let nodes: BTreeMap<u64, Member> = membership.nodes().map(|(id, m)| (*id, *m)).collect();
    GroupView {
        id,
        members: membership
            .voter_ids()
            .filter_map(|v| nodes.get(&v).copied())
            .collect(),
    }
}

impl<A: Application> Machine<A> {
    /// A machine over `app`; for durable groups, `disk` is the group's database
    /// and the latest stored snapshot (if any) is restored, with the logic it
    /// belongs to.
    pub async fn new(mut app: A, disk: Option<Arc<Database>>) -> Result<Machine<A>, String> {
        let stored: Option<StoredSnapshot> = match &disk {
            Some(db) => store::read_meta(db, store::SNAPSHOT)?
                .map(|b| postcard::from_bytes(&b).map_err(|e| format!("stored snapshot: {e}")))
                .transpose()?,
            None => None,
        };
        let body: Option<SnapshotBody> = stored
            .as_ref()
            .map(|s| postcard::from_bytes(&s.data).map_err(|e| format!("stored snapshot: {e}")))
            .transpose()?;
        if let Some(logic) = body.as_ref().and_then(|b| b.logic.as_ref())
            && logic.version != app.running()
        {
            let loaded = app
                .prepare_logic(&change_of(logic), RecordUse::InForce)
                .await
                .map_err(|e| {
                    format!(
                        "its stored snapshot runs version {} of its logic, which cannot be \
                         had: {e}",
                        logic.version
                    )
                })?;
            app.adopt(loaded)?;
        }
        let mut state = MachineState {
            app: {
                app.restore(None)?;
                app
            },
            last_applied: None,
            membership: StoredMembership::default(),
            senders: BTreeMap::new(),
            current: None,
            snapshots: 0,
            disk,
            logic: None,
            failed: None,
            checks: Checks::default(),
            events: 0,
            halted: None,
            repaired_through: 0,
        };
        if let (Some(s), Some(body)) = (stored, body) {
            state.restore_body(body)?;
            state.last_applied = s.meta.last_log_id;
            state.membership = s.meta.last_membership.clone();
            state.current = Some(s);
        }
        Ok(Machine {
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The shared state (for calls into the object and status).
    pub fn state(&self) -> &Arc<Mutex<MachineState<A>>> {
        &self.state
    }
}

/// A logic entry naming the logic in force `logic`.
fn change_of(logic: &LogicInForce) -> LogicChange {
    LogicChange {
        version: logic.version,
        record: logic.record.clone(),
    }
}

impl<A: Application> MachineState<A> {
    /// Take the state of `body` (a snapshot's, a repair's), whose logic is
    /// loaded already: the object's, its senders', its logic's, its checks'.
    fn restore_body(&mut self, body: SnapshotBody) -> Result<(), String> {
        self.app.restore(Some(&body.app))?;
        self.senders = body.senders;
        if let Some(logic) = &body.logic {
            self.app.logic_changed(logic);
        }
        self.logic = body.logic;
        self.checks = body.checks;
        self.events = body.events;
        Ok(())
    }

    /// Apply a blank, event, digest or membership entry.
    fn apply_entry(&mut self, log_id: LogId, payload: EntryPayload<TypeConfig>) -> Applied {
        match payload {
            EntryPayload::Blank => Applied::Internal,
            EntryPayload::Normal(Ordered::Event(command)) => {
                let applied = self.apply_command(log_id, 0, &command);
                self.count_events(log_id, 1);
                applied
            }
            EntryPayload::Normal(Ordered::Events(commands)) => {
                let each = commands
                    .iter()
                    .zip(0..)
                    .map(|(command, slot)| self.apply_command(log_id, slot, command))
                    .collect();
                self.count_events(log_id, commands.len() as u64);
                Applied::Each(each)
            }
            EntryPayload::Normal(Ordered::Logic(_)) => {
                unreachable!("logic entries are applied by Machine::switch_logic")
            }
            EntryPayload::Normal(Ordered::Digest(digest)) => {
                if let Err(reason) = self.digest_reported(log_id.index, digest) {
                    // Every replica stops the object at this entry. The group
                    // itself goes on a moment (the host stops it after a
                    // grace), so that members that have not learned this entry
                    // is committed still do, and stop too.
                    tracing::error!("vsync: {reason}");
                    self.app.stop(&reason);
                    self.halted = Some(reason);
                }
                Applied::Internal
            }
            EntryPayload::Membership(m) => {
                let before: BTreeSet<u64> = self.membership.membership().voter_ids().collect();
                self.membership = StoredMembership::new(Some(log_id), m);
                let view = view_of(&self.membership, log_id.index);
                self.app.view(&view);
                // A change of the voters is checked too, once there are two to
                // compare: once per change (a learner added, or the uniform
                // entry after a joint one, changes no voter). A member added
                // here reports from its next check on if its state comes from
                // a later snapshot.
                let voters: BTreeSet<u64> = self.membership.membership().voter_ids().collect();
                if self.app.check_every() > 0 && voters.len() > 1 && voters != before {
                    self.app.checkpoint(log_id.index);
                }
                Applied::Internal
            }
        }
    }

    /// Count `applied` more events, applied at the entry `log_id`: the entry is
    /// checked if that passed a multiple of [`Application::check_every`] (a
    /// check is always at a whole entry, after all of its commands).
    fn count_events(&mut self, log_id: LogId, applied: u64) {
        let before = self.events;
        self.events += applied;
        let every = self.app.check_every();
        if every > 0 && self.events / every > before / every {
            self.app.checkpoint(log_id.index);
        }
    }

    /// An entry a repair's state already holds: only what openraft and the
    /// callers waiting on it need (the membership; a command's outcome, as its
    /// sender's record in that state says).
    fn pass_over(&mut self, log_id: LogId, payload: EntryPayload<TypeConfig>) -> Applied {
        match payload {
            EntryPayload::Normal(Ordered::Event(command)) => self.outcome_recorded(&command),
            EntryPayload::Normal(Ordered::Events(commands)) => Applied::Each(
                commands
                    .iter()
                    .map(|command| self.outcome_recorded(command))
                    .collect(),
            ),
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(log_id), m);
                Applied::Internal
            }
            _ => Applied::Internal,
        }
    }

    /// A command's outcome as its sender's record says: refused with its
    /// reason, or applied (a duplicate now).
    fn outcome_recorded(&self, command: &Command) -> Applied {
        let key = (command.sender.clone(), command.boot);
        let refused = self
            .senders
            .get(&key)
            .and_then(|p| p.refused.get(&command.seq));
        match refused {
            Some(reason) => Applied::Refused(reason.clone()),
            None => Applied::Duplicate,
        }
    }

    /// A member's digest at a checked position: tally it with the others', and
    /// decide once more than half the voters agree, or all reported.
    fn digest_reported(&mut self, index: u64, digest: StateDigest) -> Result<(), String> {
        let voters: Vec<String> = view_of(&self.membership, 0)
            .members
            .iter()
            .map(|m| m.key.to_string())
            .collect();
        let at = digest.at;
        // A digest of a position this one has not reached, or older than every
        // check kept, is no report (a member cannot crowd out real checks).
        let oldest = self
            .checks
            .decided
            .first()
            .copied()
            .into_iter()
            .chain(self.checks.reported.keys().next().copied())
            .min()
            .unwrap_or(0);
        let full = self.checks.decided.len() + self.checks.reported.len() >= CHECKS_KEPT;
        if !voters.contains(&digest.member)
            || self.checks.decided.contains(&at)
            || at > index
            || (full && at < oldest)
        {
            return Ok(());
        }
        let reports = self.checks.reported.entry(at).or_default();
        reports.insert(digest.member, digest.sha256);
        while self.checks.reported.len() > CHECKS_KEPT {
            self.checks.reported.pop_first();
        }
        let Some(reports) = self.checks.reported.get(&at) else {
            return Ok(());
        };
        let mut tally: BTreeMap<[u8; 32], Vec<String>> = BTreeMap::new();
        for (member, sha256) in reports.iter().filter(|(m, _)| voters.contains(m)) {
            tally.entry(*sha256).or_default().push(member.clone());
        }
        let reported: usize = tally.values().map(Vec::len).sum();
        let members = voters.len();
        let verdict = match tally
            .iter()
            .find(|(_, agreeing)| agreeing.len() * 2 > members)
        {
            Some((sha256, agreeing)) => CheckVerdict::Majority {
                sha256: *sha256,
                agreeing: agreeing.clone(),
            },
            None if reported == members => CheckVerdict::NoMajority {
                groups: tally.iter().map(|(d, a)| (*d, a.len())).collect(),
            },
            None => return Ok(()),
        };
        self.checks.reported.remove(&at);
        self.checks.decided.insert(at);
        while self.checks.decided.len() > CHECKS_KEPT {
            self.checks.decided.pop_first();
        }
        while self.checks.reported.len() > CHECKS_KEPT {
            self.checks.reported.pop_first();
        }
        let outcome = CheckOutcome {
            at,
            members,
            verdict,
        };
        self.app.checked(&outcome);
        match outcome.verdict {
            CheckVerdict::Majority { .. } => Ok(()),
            CheckVerdict::NoMajority { groups } => Err(format!(
                "no majority at position {at}: the {members} replicas hold {} different \
                 states ({}); stopped here rather than let it fork",
                groups.len(),
                groups
                    .iter()
                    .map(|(d, n)| format!("{} x{n}", hex::encode(&d[..6])))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Whether the entries a repair's state holds have all come (so the state
    /// and `last_applied` agree again).
    fn caught_up(&self) -> bool {
        self.last_applied.map_or(0, |l| l.index) >= self.repaired_through
    }

    /// Whether a snapshot can be built now: caught up after a repair, the
    /// object not halted, its state at hand.
    fn snapshot_ready(&mut self) -> Option<Vec<u8>> {
        if !self.caught_up() || self.halted.is_some() {
            return None;
        }
        self.body().ok()
    }

    /// The state's snapshot body (postcard), as snapshots and repairs carry it.
    fn body(&mut self) -> Result<Vec<u8>, String> {
        if let Some(reason) = &self.failed {
            return Err(format!("no snapshot: {reason}"));
        }
        if !self.caught_up() {
            return Err("no snapshot: still passing over the entries a repair covered".into());
        }
        let body = SnapshotBody {
            app: self.app.snapshot()?,
            senders: self.senders.clone(),
            logic: self.logic.clone(),
            checks: self.checks.clone(),
            events: self.events,
        };
        postcard::to_allocvec(&body).map_err(|e| e.to_string())
    }

    fn apply_command(&mut self, log_id: LogId, slot: u32, command: &Command) -> Applied {
        let key = (command.sender.clone(), command.boot);
        let progress = self.senders.entry(key.clone()).or_default();
        if !progress.record(command.seq) {
            return match progress.refused.get(&command.seq) {
                Some(reason) => Applied::Refused(reason.clone()),
                None => Applied::Duplicate,
            };
        }
        let at = Position {
            index: log_id.index,
            slot,
        };
        match self.app.apply(at, command) {
            Ok(()) => Applied::Done,
            Err(reason) => {
                if let Some(progress) = self.senders.get_mut(&key) {
                    progress.refuse(command.seq, reason.clone());
                }
                Applied::Refused(reason)
            }
        }
    }

    /// The group's first logic entry: every replica starts the logic it names
    /// afresh, whichever it had loaded (see the module docs).
    fn found_logic(
        &mut self,
        index: u64,
        change: LogicChange,
        loaded: Option<Result<A::Logic, LogicError>>,
    ) -> Result<Applied, String> {
        if !self.senders.is_empty() {
            // The founder writes this entry before it serves calls: events
            // before it mean a log this build did not write, whose replicas may
            // have run them with other logic. Leave it as it is.
            tracing::warn!(
                "vsync: the group's first logic entry (position {index}) follows events; \
                 it has no live upgrades"
            );
            return Ok(Applied::Refused(
                "events precede the group's first logic entry".to_string(),
            ));
        }
        match loaded {
            Some(Err(LogicError::Refused(reason))) => {
                return Ok(Applied::Refused(format!(
                    "the logic the group was founded with (version {}) is refused: {reason}",
                    change.version
                )));
            }
            Some(Err(LogicError::Unavailable(reason))) => {
                return Err(format!(
                    "cannot get version {} of its logic, which its group was founded with: \
                     {reason}; stopped here rather than run other logic than its group",
                    change.version
                ));
            }
            Some(Ok(loaded)) => self.app.adopt(loaded)?,
            None => {}
        }
        self.app.restore(None)?;
        let at = self.membership.log_id().map_or(0, |l| l.index);
        let view = view_of(&self.membership, at);
        self.app.view(&view);
        let logic = LogicInForce {
            version: change.version,
            record: change.record,
            ..LogicInForce::default()
        };
        self.app.logic_changed(&logic);
        self.logic = Some(logic);
        Ok(Applied::Switched)
    }

    /// A live upgrade ordered at `index` (the version is above what is in force
    /// or was tried): switch, or abort alike everywhere.
    fn upgrade_logic(
        &mut self,
        index: u64,
        change: LogicChange,
        loaded: Result<A::Logic, LogicError>,
    ) -> Result<Applied, String> {
        let Some(mut logic) = self.logic.clone() else {
            unreachable!("an upgrade follows the first logic entry")
        };
        let version = change.version;
        logic.attempted = version;
        let applied = match loaded {
            Ok(loaded) => match self.app.upgrade(index, logic.version, loaded) {
                Switched::Done => {
                    logic.last = Some(format!(
                        "switched from version {} to {version} at position {index}",
                        logic.version
                    ));
                    logic.version = version;
                    logic.record = change.record;
                    logic.since = Some(index);
                    Applied::Switched
                }
                Switched::Refused(reason) => {
                    logic.last = Some(format!(
                        "the upgrade to version {version} at position {index} was aborted on \
                         every replica: {reason}"
                    ));
                    Applied::Refused(reason)
                }
                Switched::Stop(reason) => {
                    return Err(format!(
                        "the upgrade to version {version} at position {index} could not run on \
                         this host ({reason}); stopped here rather than run other logic than \
                         its group"
                    ));
                }
            },
            Err(LogicError::Refused(reason)) => {
                logic.last = Some(format!(
                    "the upgrade to version {version} at position {index} was refused: {reason}"
                ));
                Applied::Refused(reason)
            }
            Err(LogicError::Unavailable(reason)) => {
                return Err(format!(
                    "cannot get version {version} of its logic, ordered at position {index}, \
                     from the directory: {reason}; stopped here rather than run other logic \
                     than its group"
                ));
            }
        };
        self.app.logic_changed(&logic);
        self.logic = Some(logic);
        Ok(applied)
    }
}

impl<A: Application> Machine<A> {
    /// This replica's state for a member that diverged: the position it
    /// applied up to (at least `at_least`) and its snapshot body.
    pub fn state_for_repair(&self, at_least: u64) -> Result<(LogId, Vec<u8>), String> {
        let mut s = self.state.lock().map_err(|e| e.to_string())?;
        let Some(applied) = s.last_applied.filter(|l| l.index >= at_least) else {
            return Err(format!(
                "this member has not applied position {at_least} yet"
            ));
        };
        Ok((applied, s.body()?))
    }

    /// Replace this replica's state with `body`, a member's state after
    /// position `applied` (which must not be behind this replica's): entries
    /// up to there are passed over when they come (see the module docs).
    pub async fn repair_from(&self, applied: LogId, body: &[u8]) -> Result<(), String> {
        let body: SnapshotBody = postcard::from_bytes(body)
            .map_err(|e| format!("the state sent does not decode: {e}"))?;
        let preparing = {
            let s = self.state.lock().map_err(|e| e.to_string())?;
            body.logic
                .as_ref()
                .filter(|l| l.version != s.app.running())
                .map(|l| s.app.prepare_logic(&change_of(l), RecordUse::InForce))
        };
        let loaded = match preparing {
            Some(preparing) => Some(preparing.await.map_err(|e| e.to_string())?),
            None => None,
        };
        let mut s = self.state.lock().map_err(|e| e.to_string())?;
        if s.last_applied.is_some_and(|l| l.index > applied.index) {
            return Err(format!(
                "the state sent is at position {}, behind this replica's",
                applied.index
            ));
        }
        if let Some(loaded) = loaded {
            s.app.adopt(loaded)?;
        }
        s.restore_body(body)?;
        s.repaired_through = applied.index;
        s.app.repaired(applied.index);
        Ok(())
    }

    /// Apply a logic entry: get its logic ready outside the lock, then found or
    /// switch in log order. A host that cannot follow stops (an error to openraft).
    async fn switch_logic(
        &self,
        log_id: LogId,
        change: LogicChange,
    ) -> Result<Applied, StorageError> {
        let preparing = {
            let s = self.state.lock().map_err(sm_error)?;
            match &s.logic {
                _ if log_id.index <= s.repaired_through => None,
                Some(logic) if change.version <= logic.newest() => None,
                None if change.version == s.app.running() || s.has_events() => None,
                None => Some(s.app.prepare_logic(&change, RecordUse::InForce)),
                Some(_) => Some(s.app.prepare_logic(&change, RecordUse::Upgrade)),
            }
        };
        let loaded = match preparing {
            Some(preparing) => Some(preparing.await),
            None => None,
        };
        let mut s = self.state.lock().map_err(sm_error)?;
        let index = log_id.index;
        if index <= s.repaired_through {
            // A repair installed a state that holds this entry meanwhile.
            s.last_applied = Some(log_id);
            return Ok(Applied::Internal);
        }
        let outcome = match (&s.logic, loaded) {
            (None, loaded) => s.found_logic(index, change, loaded),
            (Some(logic), None) => Ok(Applied::Refused(format!(
                "version {} of the logic is not above version {} (in force or tried)",
                change.version,
                logic.newest()
            ))),
            (Some(_), Some(loaded)) => s.upgrade_logic(index, change, loaded),
        };
        match outcome {
            Ok(applied) => {
                s.last_applied = Some(log_id);
                Ok(applied)
            }
            Err(reason) => {
                tracing::error!("vsync: {reason}");
                s.failed = Some(reason.clone());
                s.app.stop(&reason);
                Err(sm_error(reason))
            }
        }
    }
}

impl<A: Application> RaftSnapshotBuilder<TypeConfig> for Machine<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // openraft builds in a task of its own and stops the group on an
        // error, so a snapshot that cannot be had yet is waited for: after a
        // repair the state is ahead of `last_applied` until the entries it
        // holds have come (committed: soon); a replica that cannot snapshot
        // (quarantined) or a halted object builds none, and the log is kept.
        loop {
            if let Some(snapshot) = self.try_build_snapshot().map_err(sm_error)? {
                return Ok(snapshot);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl<A: Application> Machine<A> {
    /// Build, keep and store a snapshot if one can be had now.
    fn try_build_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, String> {
        let mut s = self.state.lock().map_err(|e| e.to_string())?;
        if let Some(reason) = &s.failed {
            return Err(format!("no snapshot: {reason}"));
        }
        let Some(data) = s.snapshot_ready() else {
            return Ok(None);
        };
        s.snapshots += 1;
        let meta = SnapshotMeta {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                s.last_applied.map(|l| l.index).unwrap_or(0),
                s.snapshots
            ),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        if let Some(db) = &s.disk {
            let bytes = postcard::to_allocvec(&stored).map_err(|e| e.to_string())?;
            store::write_meta(db, store::SNAPSHOT, &bytes)?;
        }
        s.current = Some(stored);
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl<A: Application> RaftStateMachine<TypeConfig> for Machine<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let s = self.state.lock().map_err(sm_error)?;
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let applied = match entry.payload {
                EntryPayload::Normal(Ordered::Logic(change)) => {
                    self.switch_logic(log_id, change).await?
                }
                // Under one lock with the check: a repair may come in between
                // any two entries, never within one.
                payload => {
                    let mut s = self.state.lock().map_err(sm_error)?;
                    s.last_applied = Some(log_id);
                    if let Some(reason) = &s.halted {
                        Applied::Refused(reason.clone())
                    } else if log_id.index <= s.repaired_through {
                        s.pass_over(log_id, payload)
                    } else {
                        s.apply_entry(log_id, payload)
                    }
                }
            };
            out.push(applied);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = postcard::from_bytes(&data).map_err(sm_error)?;
        // A state of another version than the logic loaded here: that version's
        // logic first (a joiner that resolved a newer record than its group runs).
        if let Some(logic) = &body.logic {
            let preparing = {
                let s = self.state.lock().map_err(sm_error)?;
                (logic.version != s.app.running())
                    .then(|| s.app.prepare_logic(&change_of(logic), RecordUse::InForce))
            };
            if let Some(preparing) = preparing {
                let loaded = preparing.await;
                let mut s = self.state.lock().map_err(sm_error)?;
                let adopted = loaded
                    .map_err(|e| e.to_string())
                    .and_then(|loaded| s.app.adopt(loaded));
                if let Err(e) = adopted {
                    let reason = format!(
                        "the state it was sent runs version {} of its logic, which it cannot \
                         run: {e}",
                        logic.version
                    );
                    s.app.stop(&reason);
                    return Err(sm_error(reason));
                }
            }
        }
        let mut s = self.state.lock().map_err(sm_error)?;
        s.restore_body(body).map_err(sm_error)?;
        s.last_applied = meta.last_log_id;
        // This state replaces any a repair installed: what follows it applies.
        s.repaired_through = 0;
        let installed_at = meta.last_log_id.map_or(0, |l| l.index);
        s.app.repaired(installed_at);
        s.membership = meta.last_membership.clone();
        let view = view_of(
            &s.membership,
            meta.last_log_id.map(|l| l.index).unwrap_or(0),
        );
        s.app.view(&view);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        if let Some(db) = &s.disk {
            let bytes = postcard::to_allocvec(&stored).map_err(sm_error)?;
            store::write_meta(db, store::SNAPSHOT, &bytes).map_err(sm_error)?;
        }
        s.current = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let s = self.state.lock().map_err(sm_error)?;
        Ok(s.current.as_ref().map(|c| Snapshot {
            meta: c.meta.clone(),
            snapshot: Box::new(Cursor::new(c.data.clone())),
        }))
    }
}
