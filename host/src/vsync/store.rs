//! openraft log storage for a group: in memory (`total-order` objects: the log
//! survives the crash of a minority) or in a redb file (`durable` objects: it
//! survives the crash of every member).
//!
//! Fsync policy (durable): every call that changes the log or the vote is one
//! redb write transaction committed with `Durability::Immediate` (redb's
//! default: data and a commit record fsynced) *before* openraft is told it is
//! done. A member therefore never acknowledges
//! an entry it could lose, and an entry acknowledged by a majority is
//! committed. A follower's append carries every entry the leader sent at once,
//! and a leader's entries carry the commands that waited together
//! ([`super::group`]'s group commit), so one fsync covers many commands.
//!
//! The committed index is written without an fsync (`Durability::None`; the
//! next fsynced write makes it durable too), which saves every member a second
//! fsync per commit on openraft's core task. After a crash it can be behind
//! the log: openraft re-applies up to it at the restart and learns the rest
//! from a leader. A leader restarted in its old term keeps its old no-op, so
//! its read index (`max(no-op, committed)`) could then be below entries it
//! acknowledged; [`super::group::Group`]'s read barrier therefore waits for
//! the leader's whole log (the five-process kill -9 test read stale state
//! without that floor).
//! The latest snapshot is kept in the same file (see [`super::machine`]).

use super::types::{Command, Entry, LogId, Ordered, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
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
/// Key of the store's format number: what is stored (log entries, membership with
/// members' names, snapshots) is postcard, which has no field tags, so a store
/// written by a build with other types must be refused, not misread.
const FORMAT_KEY: &str = "format";
/// The format this build writes: 2 added members' names to membership configs,
/// 3 logic entries (live upgrades) to the log and the logic in force to
/// snapshots, 4 digest entries (divergence checks) to the log and the checks
/// under way to snapshots, 5 entries of several commands (group commit).
const FORMAT: u32 = 5;
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
    /// Whether `disk` is a file: its writes block on fsync, so they run on
    /// tokio's blocking threads rather than stall a runtime worker (and every
    /// group's tasks on it) for each fsync. A simulated disk writes inline,
    /// which keeps the simulations on one thread.
    file: bool,
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
            file: false,
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

    fn load(db: Database, file: bool) -> Result<LogStore, String> {
        let fail = |e: &dyn std::fmt::Display| e.to_string();
        {
            let tx = db.begin_write().map_err(|e| fail(&e))?;
            let empty = tx
                .open_table(LOG)
                .map_err(|e| fail(&e))?
                .is_empty()
                .map_err(|e| fail(&e))?;
            {
                let mut meta = tx.open_table(META).map_err(|e| fail(&e))?;
                let format = meta
                    .get(FORMAT_KEY)
                    .map_err(|e| fail(&e))?
                    .map(|v| <[u8; 4]>::try_from(v.value()).map(u32::from_le_bytes));
                match format {
                    Some(Ok(FORMAT)) => {}
                    None if empty && meta.is_empty().map_err(|e| fail(&e))? => {
                        meta.insert(FORMAT_KEY, FORMAT.to_le_bytes().as_slice())
                            .map_err(|e| fail(&e))?;
                    }
                    found => {
                        let found = match found {
                            Some(Ok(n)) => format!("format {n}"),
                            Some(Err(_)) => "an unreadable format".to_string(),
                            None => "format 1".to_string(),
                        };
                        return Err(format!(
                            "written by another version of liveobjects ({found}; this one \
                             reads format {FORMAT}): move the file away to start this member \
                             afresh (it rejoins and gets the state from the others)"
                        ));
                    }
                }
            }
            tx.commit().map_err(|e| fail(&e))?;
        }
        let memory = Self::load_memory(&db)?;
        Ok(LogStore {
            memory: Arc::new(Mutex::new(memory)),
            disk: Some(Arc::new(db)),
            file,
        })
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
                Ok(LogStore {
                    memory: Arc::new(Mutex::new(memory)),
                    disk: Some(db.clone()),
                    file: self.file,
                })
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

    // openraft's error type, as its storage traits require.
    #[allow(clippy::result_large_err)]
    async fn persist(
        &self,
        durability: redb::Durability,
        write: impl FnOnce(
            &mut redb::Table<u64, &[u8]>,
            &mut redb::Table<&str, &[u8]>,
        ) -> Result<(), redb::StorageError>
        + Send
        + 'static,
    ) -> Result<(), StorageError> {
        let Some(db) = self.disk.clone() else {
            return Ok(());
        };
        let transaction = move || {
            let mut tx = db.begin_write().map_err(io_write)?;
            tx.set_durability(durability).map_err(io_write)?;
            {
                let mut log = tx.open_table(LOG).map_err(io_write)?;
                let mut meta = tx.open_table(META).map_err(io_write)?;
                write(&mut log, &mut meta).map_err(io_write)?;
            }
            tx.commit().map_err(io_write)
        };
        if !self.file {
            return transaction();
        }
        tokio::task::spawn_blocking(transaction)
            .await
            .map_err(io_write)?
    }

    // openraft's error type, as its storage traits require.
    #[allow(clippy::result_large_err)]
    fn read_memory(&self) -> Result<std::sync::MutexGuard<'_, Memory>, StorageError> {
        self.memory
            .lock()
            .map_err(|_| io_read(std::io::Error::other("log lock poisoned")))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let m = self.read_memory()?;
        Ok(m.log.range(range).map(|(_, e)| e.clone()).collect())
    }

    /// The entries a leader sends a follower in one append: from `start`, up
    /// to about [`APPEND_BYTES`] (at least one entry). Entries carry many
    /// commands each (group commit), so openraft's count limit alone could
    /// make an append to a lagging follower too large to send or to land
    /// before the append's timeout, and the follower would never catch up.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let m = self.read_memory()?;
        let mut bytes = 0;
        let mut entries = Vec::new();
        for entry in m.log.range(start..end).map(|(_, e)| e) {
            bytes += entry_bytes(entry);
            if !entries.is_empty() && bytes > APPEND_BYTES {
                break;
            }
            entries.push(entry.clone());
        }
        Ok(entries)
    }
}

/// About the most bytes of entries in one append to a follower.
pub const APPEND_BYTES: usize = 1 << 20;

/// About the bytes `entry` takes in an append.
fn entry_bytes(entry: &Entry) -> usize {
    64 + match &entry.payload {
        EntryPayload::Normal(Ordered::Event(c)) => c.bytes(),
        EntryPayload::Normal(Ordered::Events(commands)) => {
            commands.iter().map(Command::bytes).sum()
        }
        EntryPayload::Normal(Ordered::Logic(change)) => change.record.len(),
        _ => 256,
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
        let bytes = encode(vote);
        self.persist(redb::Durability::Immediate, move |_, meta| {
            meta.insert(VOTE, bytes.as_slice()).map(|_| ())
        })
        .await
        .map_err(|_| {
            StorageError::from(StorageIOError::write_vote(&std::io::Error::other("vote")))
        })?;
        self.memory.lock().expect("log lock").vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.memory.lock().expect("log lock").vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = encode(&committed);
        self.persist(redb::Durability::None, move |_, meta| {
            meta.insert(COMMITTED, bytes.as_slice()).map(|_| ())
        })
        .await?;
        self.memory.lock().expect("log lock").committed = committed;
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id.index, encode(e)))
            .collect();
        let result = self
            .persist(redb::Durability::Immediate, move |log, _| {
                for (index, bytes) in &encoded {
                    log.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(e);
        }
        {
            let mut m = self.memory.lock().expect("log lock");
            for e in entries {
                m.log.insert(e.log_id.index, e);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let doomed: Vec<u64> = {
            let m = self.memory.lock().expect("log lock");
            m.log.range(log_id.index..).map(|(k, _)| *k).collect()
        };
        let removed = doomed.clone();
        self.persist(redb::Durability::Immediate, move |log, _| {
            for k in &removed {
                log.remove(*k)?;
            }
            Ok(())
        })
        .await?;
        let mut m = self.memory.lock().expect("log lock");
        for k in doomed {
            m.log.remove(&k);
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let doomed: Vec<u64> = {
            let m = self.memory.lock().expect("log lock");
            m.log.range(..=log_id.index).map(|(k, _)| *k).collect()
        };
        let purged = encode(&Some(log_id));
        let removed = doomed.clone();
        self.persist(redb::Durability::Immediate, move |log, meta| {
            for k in &removed {
                log.remove(*k)?;
            }
            meta.insert(PURGED, purged.as_slice())?;
            Ok(())
        })
        .await?;
        let mut m = self.memory.lock().expect("log lock");
        for k in doomed {
            m.log.remove(&k);
        }
        m.purged = Some(log_id);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_append_to_a_lagging_follower_is_bounded_in_bytes_and_never_empty() {
        let mut store = LogStore::memory();
        let command = |seq: u64, size: usize| Command {
            sender: "a".into(),
            boot: 1,
            seq,
            timestamp_ms: 0,
            payload: vec![0; size],
            more: Vec::new(),
        };
        {
            let mut m = store.memory.lock().unwrap();
            // 300 entries of 64 commands of 4 KiB: about 75 MiB in all.
            for index in 1..=300 {
                let commands = (0..64).map(|i| command(index * 64 + i, 4096)).collect();
                let entry = Entry {
                    log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
                    payload: EntryPayload::Normal(Ordered::Events(commands)),
                };
                m.log.insert(index, entry);
            }
            // One entry larger than the limit on its own.
            let entry = Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), 301),
                payload: EntryPayload::Normal(Ordered::Event(command(1, 3 << 20))),
            };
            m.log.insert(301, entry);
        }
        let sent = store.limited_get_log_entries(1, 302).await.unwrap();
        let bytes: usize = sent.iter().map(entry_bytes).sum();
        assert!(
            !sent.is_empty() && sent.len() < 300,
            "{} entries",
            sent.len()
        );
        assert!(bytes <= APPEND_BYTES, "{bytes} bytes in one append");
        assert_eq!(sent[0].log_id.index, 1);
        // The big entry goes alone rather than never.
        let sent = store.limited_get_log_entries(301, 302).await.unwrap();
        assert_eq!(sent.len(), 1);
        // A small range is sent whole.
        assert_eq!(store.limited_get_log_entries(5, 8).await.unwrap().len(), 3);
    }

    #[test]
    fn a_store_of_another_format_is_refused_with_what_to_do_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        // A new store is stamped with this build's format and opens again.
        drop(LogStore::open(&path).unwrap());
        drop(LogStore::open(&path).unwrap());

        // A store written before formats were stamped: log entries, no format.
        let old = dir.path().join("old.redb");
        {
            let db = Database::create(&old).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(LOG)
                .unwrap()
                .insert(1, b"an entry of the old encoding".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let Err(err) = LogStore::open(&old) else {
            panic!("a store of another format opened")
        };
        let err = err.to_string();
        assert!(
            err.contains("format 1") && err.contains("move the file away"),
            "{err}"
        );
        // Refusing changed nothing: the entry is still there, and no format was
        // stamped over it.
        let db = Database::create(&old).unwrap();
        let tx = db.begin_read().unwrap();
        assert!(tx.open_table(LOG).unwrap().get(1).unwrap().is_some());
        assert!(
            tx.open_table(META)
                .map_or(true, |meta| meta.get(FORMAT_KEY).unwrap().is_none())
        );

        // A future format is refused too.
        drop(tx);
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(FORMAT_KEY, 9u32.to_le_bytes().as_slice())
            .unwrap();
        tx.commit().unwrap();
        drop(db);
        let Err(err) = LogStore::open(&old) else {
            panic!("a store of another format opened")
        };
        let err = err.to_string();
        assert!(err.contains("format 9"), "{err}");
    }
}
