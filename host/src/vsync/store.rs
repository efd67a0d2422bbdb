//! openraft log storage for a group: in memory (`total-order` objects: the log
//! survives the crash of a minority) or in a redb file (`durable` objects: it
//! survives the crash of every member).
//!
//! Fsync policy (durable): every change is queued, in order, to one writer
//! thread per log, which commits whatever has queued up as one redb write
//! transaction (group commit: one fsync for many entries; redb's
//! `Durability::Immediate` fsyncs data and commit record). openraft learns that
//! appended entries are durable only from the flush callback, after that
//! commit, so a member never acknowledges an entry it could lose, and an entry
//! acknowledged by a majority is committed. Votes, truncations and purges wait
//! for their commit before returning. The committed index alone is written
//! without an fsync of its own (losing it only means re-applying less at
//! restart; it rides on the next fsync). The latest snapshot is kept in the
//! same file (see [`super::machine`]).

use super::types::{Entry, LogId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
/// Key of the latest snapshot (written by the state machine).
pub(crate) const SNAPSHOT: &str = "snapshot";

#[derive(Default)]
struct Memory {
    log: BTreeMap<u64, Entry>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

/// A group's log, shared by openraft's log writer and readers.
#[derive(Clone)]
pub struct LogStore {
    memory: Arc<Mutex<Memory>>,
    disk: Option<Arc<Database>>,
    writer: Option<Writer>,
}

/// Who commits a durable log's changes.
#[derive(Clone)]
enum Writer {
    /// A thread that commits whatever has queued up together (files).
    Thread(std::sync::mpsc::Sender<Job>),
    /// The caller, at once, one change per commit: for simulations under a
    /// paused clock, where waiting on another thread would let the clock run.
    Inline(Arc<Database>),
}

/// One change to the log's file.
enum DiskOp {
    Put(u64, Vec<u8>),
    Remove(u64),
    Meta(&'static str, Vec<u8>),
}

/// Who waits for a batch of changes to be on disk.
enum Done {
    /// openraft's append callback.
    Flushed(LogFlushed<TypeConfig>),
    /// A caller blocked until the commit.
    Wait(std::sync::mpsc::SyncSender<Result<(), String>>),
}

struct Job {
    ops: Vec<DiskOp>,
    /// Needs an fsync (everything but the committed index).
    durable: bool,
    done: Done,
}

/// Jobs committed together at most (bounds one transaction's size).
const MAX_BATCH: usize = 4096;

/// The writer thread: commits what has queued up as one transaction, then tells
/// every waiter. Ends when the log (every clone) is dropped.
fn write_jobs(db: Arc<Database>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_and_tell(&db, batch);
    }
}

/// Commit `batch` as one transaction, then tell every waiter how it went.
fn commit_and_tell(db: &Database, batch: Vec<Job>) {
    let durable = batch.iter().any(|j| j.durable);
    let result = commit_batch(db, &batch, durable);
    if let Err(e) = &result {
        tracing::error!("vsync log write failed: {e}");
    }
    for job in batch {
        match job.done {
            Done::Flushed(callback) => {
                callback.log_io_completed(result.clone().map_err(std::io::Error::other))
            }
            Done::Wait(reply) => {
                let _ = reply.send(result.clone());
            }
        }
    }
}

fn commit_batch(db: &Database, batch: &[Job], durable: bool) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let mut tx = db.begin_write().map_err(|e| fail(&e))?;
    if !durable {
        tx.set_durability(redb::Durability::None)
            .map_err(|e| fail(&e))?;
    }
    {
        let mut log = tx.open_table(LOG).map_err(|e| fail(&e))?;
        let mut meta = tx.open_table(META).map_err(|e| fail(&e))?;
        for op in batch.iter().flat_map(|j| &j.ops) {
            match op {
                DiskOp::Put(index, bytes) => {
                    log.insert(*index, bytes.as_slice()).map_err(|e| fail(&e))?;
                }
                DiskOp::Remove(index) => {
                    log.remove(*index).map_err(|e| fail(&e))?;
                }
                DiskOp::Meta(key, bytes) => {
                    meta.insert(*key, bytes.as_slice()).map_err(|e| fail(&e))?;
                }
            }
        }
    }
    tx.commit().map_err(|e| fail(&e))
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding to a Vec cannot fail")
}

/// Why a durable log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// redb refused the file.
    #[error("vsync log {path}: {reason}")]
    Database {
        /// The file.
        path: String,
        /// What redb said.
        reason: String,
    },
}

impl LogStore {
    /// A log kept in memory only.
    pub fn memory() -> LogStore {
        LogStore {
            memory: Arc::default(),
            disk: None,
            writer: None,
        }
    }

    /// A log in the redb file at `path` (created if missing), with what it held
    /// loaded. The same database keeps the group's latest snapshot.
    pub fn open(path: &Path) -> Result<LogStore, OpenError> {
        let fail = |e: &dyn std::fmt::Display| OpenError::Database {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let db = Database::create(path).map_err(|e| fail(&e))?;
        Self::load(db, true).map_err(|e| fail(&e))
    }

    /// A durable log whose "disk" is memory (redb's in-memory backend): it
    /// survives a restart of the group's instance in this process exactly as a
    /// file survives a crash. For simulations.
    pub fn simulated_disk() -> Result<LogStore, OpenError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| OpenError::Database {
                path: "(memory)".into(),
                reason: e.to_string(),
            })?;
        Self::load(db, false).map_err(|e| OpenError::Database {
            path: "(memory)".into(),
            reason: e,
        })
    }

    fn load(db: Database, threaded: bool) -> Result<LogStore, String> {
        let fail = |e: &dyn std::fmt::Display| e.to_string();
        {
            let tx = db.begin_write().map_err(|e| fail(&e))?;
            tx.open_table(LOG).map_err(|e| fail(&e))?;
            tx.open_table(META).map_err(|e| fail(&e))?;
            tx.commit().map_err(|e| fail(&e))?;
        }
        let memory = Self::load_memory(&db)?;
        Ok(Self::over(Arc::new(db), memory, threaded))
    }

    /// A log over `db` holding `memory`, with its writer thread if `threaded`.
    fn over(db: Arc<Database>, memory: Memory, threaded: bool) -> LogStore {
        let writer = if threaded {
            let (writer, jobs) = std::sync::mpsc::channel();
            let thread_db = db.clone();
            std::thread::Builder::new()
                .name("vsync-log".into())
                .spawn(move || write_jobs(thread_db, jobs))
                .expect("spawning the vsync log writer");
            Writer::Thread(writer)
        } else {
            Writer::Inline(db.clone())
        };
        LogStore {
            memory: Arc::new(Mutex::new(memory)),
            disk: Some(db),
            writer: Some(writer),
        }
    }

    fn load_memory(db: &Database) -> Result<Memory, String> {
        let fail = |e: &dyn std::fmt::Display| e.to_string();
        let mut memory = Memory::default();
        {
            let tx = db.begin_read().map_err(|e| fail(&e))?;
            let log = tx.open_table(LOG).map_err(|e| fail(&e))?;
            for row in log.iter().map_err(|e| fail(&e))? {
                let (index, bytes) = row.map_err(|e| fail(&e))?;
                let entry: Entry = postcard::from_bytes(bytes.value()).map_err(|e| fail(&e))?;
                memory.log.insert(index.value(), entry);
            }
            let meta = tx.open_table(META).map_err(|e| fail(&e))?;
            let get = |key: &str| -> Result<Option<Vec<u8>>, String> {
                Ok(meta
                    .get(key)
                    .map_err(|e| fail(&e))?
                    .map(|v| v.value().to_vec()))
            };
            memory.vote = decode(get(VOTE)?)?;
            // Committed and purged are stored as `Option<LogId>`.
            memory.committed = decode::<Option<LogId>>(get(COMMITTED)?)?.flatten();
            memory.purged = decode::<Option<LogId>>(get(PURGED)?)?.flatten();
        }
        Ok(memory)
    }

    /// The same log, as a new instance would find it after a restart: what was
    /// written to its database (for a memory-only log: nothing survives).
    pub fn reopen(&self) -> Result<LogStore, OpenError> {
        match &self.disk {
            None => Ok(LogStore::memory()),
            Some(db) => {
                let memory = Self::load_memory(db).map_err(|e| OpenError::Database {
                    path: "(reopened)".into(),
                    reason: e,
                })?;
                let threaded = matches!(self.writer, Some(Writer::Thread(_)));
                Ok(Self::over(db.clone(), memory, threaded))
            }
        }
    }

    /// The database, if durable (the state machine keeps its snapshot there).
    pub fn database(&self) -> Option<Arc<Database>> {
        self.disk.clone()
    }

    /// Whether this log holds anything (a vote or entries): a member restarting.
    pub fn has_state(&self) -> bool {
        let m = self.memory.lock().expect("log lock");
        m.vote.is_some() || !m.log.is_empty() || m.purged.is_some()
    }

    /// Queue `ops` for the disk (nothing for a memory-only log).
    fn queue(&self, ops: Vec<DiskOp>, durable: bool, done: Done) {
        match &self.writer {
            Some(Writer::Thread(writer)) => {
                if let Err(std::sync::mpsc::SendError(job)) =
                    writer.send(Job { ops, durable, done })
                    && let Done::Flushed(callback) = job.done
                {
                    callback.log_io_completed(Err(std::io::Error::other("log writer stopped")));
                }
            }
            Some(Writer::Inline(db)) => commit_and_tell(db, vec![Job { ops, durable, done }]),
            None => {
                if let Done::Flushed(callback) = done {
                    callback.log_io_completed(Ok(()));
                }
            }
        }
    }

    /// Queue `ops` and wait until they are committed.
    // openraft's error type, as its storage traits require.
    #[allow(clippy::result_large_err)]
    fn write(&self, ops: Vec<DiskOp>, durable: bool) -> Result<(), StorageError> {
        if self.writer.is_none() {
            return Ok(());
        }
        let (reply, committed) = std::sync::mpsc::sync_channel(1);
        self.queue(ops, durable, Done::Wait(reply));
        match committed.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_write(std::io::Error::other(e))),
            Err(_) => Err(io_write(std::io::Error::other("log writer stopped"))),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let m = self
            .memory
            .lock()
            .map_err(|_| io_read(std::io::Error::other("log lock poisoned")))?;
        Ok(m.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let m = self.memory.lock().expect("log lock");
        let last = m.log.values().next_back().map(|e| e.log_id).or(m.purged);
        Ok(LogState {
            last_purged_log_id: m.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.write(vec![DiskOp::Meta(VOTE, encode(vote))], true)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.memory.lock().expect("log lock").vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.memory.lock().expect("log lock").vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not waited for and not fsynced by itself: a committed index lost in a
        // crash only means re-applying less from disk at restart.
        self.memory.lock().expect("log lock").committed = committed;
        let (reply, _) = std::sync::mpsc::sync_channel(1);
        self.queue(
            vec![DiskOp::Meta(COMMITTED, encode(&committed))],
            false,
            Done::Wait(reply),
        );
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.memory.lock().expect("log lock").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Readable at once (replication may send entries before they are
        // durable here); acknowledged by the callback once they are.
        let mut ops = Vec::new();
        {
            let mut m = self.memory.lock().expect("log lock");
            for e in entries {
                if self.writer.is_some() {
                    ops.push(DiskOp::Put(e.log_id.index, encode(&e)));
                }
                m.log.insert(e.log_id.index, e);
            }
        }
        self.queue(ops, true, Done::Flushed(callback));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let doomed: Vec<u64> = {
            let mut m = self.memory.lock().expect("log lock");
            let doomed: Vec<u64> = m.log.range(log_id.index..).map(|(k, _)| *k).collect();
            for k in &doomed {
                m.log.remove(k);
            }
            doomed
        };
        self.write(doomed.into_iter().map(DiskOp::Remove).collect(), true)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let doomed: Vec<u64> = {
            let mut m = self.memory.lock().expect("log lock");
            let doomed: Vec<u64> = m.log.range(..=log_id.index).map(|(k, _)| *k).collect();
            for k in &doomed {
                m.log.remove(k);
            }
            m.purged = Some(log_id);
            doomed
        };
        let mut ops: Vec<DiskOp> = doomed.into_iter().map(DiskOp::Remove).collect();
        ops.push(DiskOp::Meta(PURGED, encode(&Some(log_id))));
        self.write(ops, true)
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>, String> {
    bytes
        .map(|b| postcard::from_bytes(&b).map_err(|e| e.to_string()))
        .transpose()
}

/// Read a value the state machine stored in the group's database.
pub(crate) fn read_meta(db: &Database, key: &str) -> Result<Option<Vec<u8>>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let meta = tx.open_table(META).map_err(|e| e.to_string())?;
    Ok(meta
        .get(key)
        .map_err(|e| e.to_string())?
        .map(|v| v.value().to_vec()))
}

/// Store a value in the group's database (one fsynced transaction).
pub(crate) fn write_meta(db: &Database, key: &str, value: &[u8]) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
        meta.insert(key, value).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}
