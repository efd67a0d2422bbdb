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

use super::store;
use super::types::{
    Applied, Command, Entry, LogId, Member, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
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
    /// Start from scratch (`None`) or from a snapshot.
    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String>;
    /// Apply one committed command at log position `index`; `Err` refuses it (the
    /// state must be left unchanged).
    fn apply(&mut self, index: u64, command: &Command) -> Result<(), String>;
    /// The membership changed (at log position `view.id`).
    fn view(&mut self, view: &GroupView);
    /// The whole state.
    fn snapshot(&mut self) -> Vec<u8>;
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
    /// and the latest stored snapshot (if any) is restored.
    pub fn new(mut app: A, disk: Option<Arc<Database>>) -> Result<Machine<A>, String> {
        let stored: Option<StoredSnapshot> = match &disk {
            Some(db) => store::read_meta(db, store::SNAPSHOT)?
                .map(|b| postcard::from_bytes(&b).map_err(|e| format!("stored snapshot: {e}")))
                .transpose()?,
            None => None,
        };
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
        };
        if let Some(s) = stored {
            let body: SnapshotBody =
                postcard::from_bytes(&s.data).map_err(|e| format!("stored snapshot: {e}"))?;
            state.app.restore(Some(&body.app))?;
            state.senders = body.senders;
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

impl<A: Application> RaftSnapshotBuilder<TypeConfig> for Machine<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let mut s = self.state.lock().map_err(sm_error)?;
        let body = SnapshotBody {
            app: s.app.snapshot(),
            senders: s.senders.clone(),
        };
        let data = postcard::to_allocvec(&body).map_err(sm_error)?;
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
            let bytes = postcard::to_allocvec(&stored).map_err(sm_error)?;
            store::write_meta(db, store::SNAPSHOT, &bytes).map_err(sm_error)?;
        }
        s.current = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
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
        let mut s = self.state.lock().map_err(sm_error)?;
        let mut out = Vec::new();
        for entry in entries {
            s.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Applied::Internal),
                EntryPayload::Normal(command) => {
                    let key = (command.sender.clone(), command.boot);
                    let progress = s.senders.entry(key.clone()).or_default();
                    if !progress.record(command.seq) {
                        out.push(match progress.refused.get(&command.seq) {
                            Some(reason) => Applied::Refused(reason.clone()),
                            None => Applied::Duplicate,
                        });
                        continue;
                    }
                    out.push(match s.app.apply(entry.log_id.index, &command) {
                        Ok(()) => Applied::Done,
                        Err(reason) => {
                            if let Some(progress) = s.senders.get_mut(&key) {
                                progress.refuse(command.seq, reason.clone());
                            }
                            Applied::Refused(reason)
                        }
                    });
                }
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(entry.log_id), m);
                    let view = view_of(&s.membership, entry.log_id.index);
                    s.app.view(&view);
                    out.push(Applied::Internal);
                }
            }
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
        let mut s = self.state.lock().map_err(sm_error)?;
        s.app.restore(Some(&body.app)).map_err(sm_error)?;
        s.senders = body.senders;
        s.last_applied = meta.last_log_id;
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
