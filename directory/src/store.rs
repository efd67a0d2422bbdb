//! The server's storage: an embedded redb database file.
//!
//! Tables: `records` (object name -> signed record), `delegations` (zone -> signed
//! delegation), `blobs` (sha256 -> component bytes), and for mirrors and freshness
//! statements: `changes` (write serial -> the entry it wrote; each entry keeps only
//! its latest), `serials` (entry -> its latest serial) and `meta` (the current serial,
//! the latest freshness statement). Every write takes the next serial in its own
//! transaction. A publish writes its blob and record in one transaction; redb commits with fsync (`Durability::Immediate`, its
//! default), and the server acknowledges only after the commit, so a kill -9 at any
//! point loses no acknowledged write and leaves the file consistent.

use crate::fresh::{EntryKey, Freshness};
use crate::name::Name;
use crate::record::{Delegation, ObjectRecord, Signed};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::path::Path;

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const DELEGATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("delegations");
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const SERIALS: TableDefinition<&[u8], u64> = TableDefinition::new("serials");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_SERIAL: &str = "serial";
const META_FRESHNESS: &str = "freshness";

/// Every stored entry with its bytes, in key order.
pub type Entries = Vec<(EntryKey, Vec<u8>)>;

/// One stored entry as a mirror receives it: the serial of the write that stored
/// it, which entry, and its bytes (a signed delegation or record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The write's serial on the primary.
    pub serial: u64,
    /// The entry.
    pub key: EntryKey,
    /// Its stored bytes.
    pub value: Vec<u8>,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened, read or written.
    #[error("directory database: {0}")]
    Db(#[from] redb::Error),
    /// A stored value does not decode (the file was altered outside the server).
    #[error("stored {what} for {key} is corrupt: {reason}")]
    Corrupt {
        /// Record or delegation.
        what: &'static str,
        /// Its key.
        key: String,
        /// Decoder's reason.
        reason: String,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// The directory database.
pub struct Store {
    db: Database,
}

/// What [`Store::list`] finds in a folder.
#[derive(Debug, Default)]
pub struct Listing {
    /// Sub-folders directly inside (names ending in `/`).
    pub folders: Vec<String>,
    /// Object records directly inside.
    pub records: Vec<Signed<ObjectRecord>>,
}

impl Store {
    /// Open the database at `path`, creating it (and its tables) if missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(RECORDS).map_err(db_err)?;
        txn.open_table(DELEGATIONS).map_err(db_err)?;
        txn.open_table(BLOBS).map_err(db_err)?;
        txn.open_table(CHANGES).map_err(db_err)?;
        txn.open_table(SERIALS).map_err(db_err)?;
        let fresh_meta = txn
            .open_table(META)
            .map_err(db_err)?
            .get(META_SERIAL)
            .map_err(db_err)?
            .is_none();
        if fresh_meta {
            // A database from before serials: number what it holds.
            let keys: Vec<EntryKey> = collect_entries(
                &txn.open_table(DELEGATIONS).map_err(db_err)?,
                &txn.open_table(RECORDS).map_err(db_err)?,
            )?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
            set_serial(&txn, 0)?;
            for key in &keys {
                note_change(&txn, key)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    /// The serial of the latest write (0 for an empty database).
    pub fn serial(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        stored_serial(&txn.open_table(META).map_err(db_err)?)
    }

    /// Every delegation and record, in [`EntryKey`] order (delegations first, each
    /// kind by name), with the serial of the latest write: the leaves of the
    /// freshness tree, read in one transaction.
    pub fn entries(&self) -> Result<(u64, Entries), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let serial = stored_serial(&txn.open_table(META).map_err(db_err)?)?;
        let out = collect_entries(
            &txn.open_table(DELEGATIONS).map_err(db_err)?,
            &txn.open_table(RECORDS).map_err(db_err)?,
        )?;
        Ok((serial, out))
    }

    /// The entries written after serial `since` and up to `upto`, oldest first, at
    /// most `limit` of them and about `max_bytes` (at least one), and whether more
    /// are left. Only complete if no write came after `upto`: a later write of an
    /// entry moves it past `upto`, and it is then sent by the next transfer.
    pub fn changes(
        &self,
        since: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Change>, bool), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let current = stored_serial(&txn.open_table(META).map_err(db_err)?)?;
        if current != upto {
            return Ok((Vec::new(), true));
        }
        let changes = txn.open_table(CHANGES).map_err(db_err)?;
        let records = txn.open_table(RECORDS).map_err(db_err)?;
        let delegations = txn.open_table(DELEGATIONS).map_err(db_err)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        if since >= upto {
            return Ok((out, false));
        }
        for item in changes.range(since + 1..=upto).map_err(db_err)? {
            if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                return Ok((out, true));
            }
            let (serial, key) = item.map_err(db_err)?;
            let key: EntryKey =
                postcard::from_bytes(key.value()).map_err(|e| StoreError::Corrupt {
                    what: "change",
                    key: serial.value().to_string(),
                    reason: e.to_string(),
                })?;
            let value = match &key {
                EntryKey::Record(name) => records.get(name.as_str()).map_err(db_err)?,
                EntryKey::Delegation(zone) => delegations.get(zone.as_str()).map_err(db_err)?,
            };
            // An entry removed by a repair tool has nothing to send.
            if let Some(value) = value {
                let value = value.value().to_vec();
                bytes += value.len();
                out.push(Change {
                    serial: serial.value(),
                    key,
                    value,
                });
            }
        }
        Ok((out, false))
    }

    /// A mirror stores what its primary sent, in one transaction: `changes` (each
    /// under the primary's serial; with `replace`, instead of everything it held),
    /// its serial then `serial`, and the primary's `statement` for it.
    pub fn apply_changes(
        &self,
        changes: &[Change],
        serial: u64,
        statement: Option<&Signed<Freshness>>,
        replace: bool,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        if replace {
            for table in [RECORDS, DELEGATIONS] {
                txn.delete_table(table).map_err(db_err)?;
            }
            txn.delete_table(CHANGES).map_err(db_err)?;
            txn.delete_table(SERIALS).map_err(db_err)?;
            // Made again even if the pull brings nothing: other mirrors read them.
            txn.open_table(CHANGES).map_err(db_err)?;
            txn.open_table(SERIALS).map_err(db_err)?;
        }
        {
            let mut records = txn.open_table(RECORDS).map_err(db_err)?;
            let mut delegations = txn.open_table(DELEGATIONS).map_err(db_err)?;
            for change in changes {
                match &change.key {
                    EntryKey::Record(name) => {
                        records.insert(name.as_str(), change.value.as_slice())
                    }
                    EntryKey::Delegation(zone) => {
                        delegations.insert(zone.as_str(), change.value.as_slice())
                    }
                }
                .map_err(db_err)?;
                // The entry keeps the primary's serial, so the mirror's own change
                // log (which other mirrors may pull) matches the primary's.
                set_serial(&txn, change.serial.saturating_sub(1))?;
                note_change(&txn, &change.key)?;
            }
        }
        set_serial(&txn, serial)?;
        if let Some(statement) = statement {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(META_FRESHNESS, statement.to_bytes().as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Store many records in one transaction, each under the next serial, with no
    /// checks (the caller signed them): bulk imports and benchmarks.
    pub fn import_records(&self, records: &[Signed<ObjectRecord>]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        for signed in records {
            let name = signed
                .open()
                .map(|r| r.name)
                .map_err(|e| StoreError::Corrupt {
                    what: "record",
                    key: "(import)".into(),
                    reason: e.to_string(),
                })?;
            txn.open_table(RECORDS)
                .map_err(db_err)?
                .insert(name.as_str(), signed.to_bytes().as_slice())
                .map_err(db_err)?;
            note_change(&txn, &EntryKey::Record(name))?;
        }
        txn.commit().map_err(db_err)
    }

    /// Raise the serial to at least `serial` (a restored database's operator taking
    /// it up past what was signed before, so serials never repeat).
    pub fn raise_serial(&self, serial: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let current = read_serial(&txn)?;
        set_serial(&txn, current.max(serial))?;
        txn.commit().map_err(db_err)
    }

    /// The latest freshness statement kept with the data.
    pub fn freshness(&self) -> Result<Option<Signed<Freshness>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        meta.get(META_FRESHNESS)
            .map_err(db_err)?
            .map(|v| decode(v.value(), "freshness statement", META_FRESHNESS))
            .transpose()
    }

    /// Keep `statement` with the data.
    pub fn set_freshness(&self, statement: &Signed<Freshness>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(META_FRESHNESS, statement.to_bytes().as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Store a record, and its logic blob if given, in one durable transaction.
    pub fn put_record(
        &self,
        name: &str,
        signed: &Signed<ObjectRecord>,
        blob: Option<(&[u8; 32], &[u8])>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            if let Some((hash, bytes)) = blob {
                let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
                blobs.insert(&hash[..], bytes).map_err(db_err)?;
            }
            let mut records = txn.open_table(RECORDS).map_err(db_err)?;
            records
                .insert(name, signed.to_bytes().as_slice())
                .map_err(db_err)?;
        }
        note_change(&txn, &EntryKey::Record(name.to_string()))?;
        txn.commit().map_err(db_err)
    }

    /// Store a delegation durably.
    pub fn put_delegation(
        &self,
        zone: &str,
        signed: &Signed<Delegation>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(DELEGATIONS).map_err(db_err)?;
            table
                .insert(zone, signed.to_bytes().as_slice())
                .map_err(db_err)?;
        }
        note_change(&txn, &EntryKey::Delegation(zone.to_string()))?;
        txn.commit().map_err(db_err)
    }

    /// The record stored under `name`.
    pub fn get_record(&self, name: &str) -> Result<Option<Signed<ObjectRecord>>, StoreError> {
        self.get_raw(RECORDS, name)?
            .map(|bytes| decode(&bytes, "record", name))
            .transpose()
    }

    /// The delegation of `zone`.
    pub fn get_delegation(&self, zone: &str) -> Result<Option<Signed<Delegation>>, StoreError> {
        self.get_raw(DELEGATIONS, zone)?
            .map(|bytes| decode(&bytes, "delegation", zone))
            .transpose()
    }

    /// Whether a blob is stored.
    pub fn has_blob(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(BLOBS).map_err(db_err)?;
        Ok(table.get(&hash[..]).map_err(db_err)?.is_some())
    }

    /// A stored blob.
    pub fn get_blob(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(BLOBS).map_err(db_err)?;
        Ok(table
            .get(&hash[..])
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }

    /// The delegations of every zone enclosing `name` (root first), as far as this
    /// store holds them.
    pub fn chain_for(&self, name: &Name) -> Result<Vec<Signed<Delegation>>, StoreError> {
        let mut chain = Vec::new();
        let mut folders = name.ancestors();
        if name.is_folder() {
            folders.push(name.clone());
        }
        for folder in folders.iter().skip(1) {
            if let Some(d) = self.get_delegation(folder.as_str())? {
                chain.push(d);
            }
        }
        Ok(chain)
    }

    /// Records and sub-folders directly inside `folder` (and zones delegated there).
    pub fn list(&self, folder: &Name) -> Result<Listing, StoreError> {
        let prefix = folder.as_str();
        let mut listing = Listing::default();
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut seen_folders = std::collections::BTreeSet::new();
        let records = txn.open_table(RECORDS).map_err(db_err)?;
        for item in records.range(prefix..).map_err(db_err)? {
            let (key, value) = item.map_err(db_err)?;
            let key = key.value();
            let Some(rest) = key.strip_prefix(prefix) else {
                break;
            };
            match rest.split_once('/') {
                Some((sub, _)) => {
                    seen_folders.insert(format!("{prefix}{sub}/"));
                }
                None => listing.records.push(decode(value.value(), "record", key)?),
            }
        }
        let delegations = txn.open_table(DELEGATIONS).map_err(db_err)?;
        for item in delegations.range(prefix..).map_err(db_err)? {
            let (key, _) = item.map_err(db_err)?;
            let key = key.value();
            let Some(rest) = key.strip_prefix(prefix) else {
                break;
            };
            if let Some((sub, _)) = rest.split_once('/')
                && !sub.is_empty()
            {
                seen_folders.insert(format!("{prefix}{sub}/"));
            }
        }
        listing.folders = seen_folders.into_iter().collect();
        Ok(listing)
    }

    /// Raw stored bytes of a record, for repair tools and tamper tests.
    pub fn raw_record(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_raw(RECORDS, name)
    }

    /// Overwrite the raw bytes of a record, bypassing every check. A second commit
    /// then gives it a serial, so the server's next freshness statement covers
    /// what it now serves. For repair tools and tamper tests only: the server
    /// never writes unchecked data.
    pub fn raw_set_record(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.raw_set(RECORDS, name.as_bytes(), bytes)?;
        self.raw_note(&EntryKey::Record(name.to_string()))
    }

    /// Overwrite the raw bytes of a delegation, bypassing every check (tests only).
    pub fn raw_set_delegation(&self, zone: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.raw_set(DELEGATIONS, zone.as_bytes(), bytes)?;
        self.raw_note(&EntryKey::Delegation(zone.to_string()))
    }

    /// Remove a delegation, bypassing every check (tests only).
    pub fn raw_remove_delegation(&self, zone: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(DELEGATIONS).map_err(db_err)?;
            table.remove(zone).map_err(db_err)?;
        }
        note_change(&txn, &EntryKey::Delegation(zone.to_string()))?;
        txn.commit().map_err(db_err)
    }

    fn raw_note(&self, key: &EntryKey) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        note_change(&txn, key)?;
        txn.commit().map_err(db_err)
    }

    /// Store a blob (a mirror's copy of its primary's, checked by hash first).
    pub fn put_blob(&self, hash: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        self.raw_set_blob(hash, bytes)
    }

    /// Overwrite a blob, bypassing every check (tests only).
    pub fn raw_set_blob(&self, hash: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            table.insert(&hash[..], bytes).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    fn raw_set(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let key = std::str::from_utf8(key).expect("keys are names");
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(table).map_err(db_err)?;
            t.insert(key, bytes).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    fn get_raw(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        Ok(table.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }
}

/// Every delegation, then every record, each by name: [`EntryKey`] order.
fn collect_entries(
    delegations: &impl ReadableTable<&'static str, &'static [u8]>,
    records: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Entries, StoreError> {
    let mut out = Vec::new();
    for item in delegations.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        out.push((
            EntryKey::Delegation(k.value().to_string()),
            v.value().to_vec(),
        ));
    }
    for item in records.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        out.push((EntryKey::Record(k.value().to_string()), v.value().to_vec()));
    }
    Ok(out)
}

/// The serial kept in the `meta` table (0 before the first write).
fn stored_serial(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, StoreError> {
    meta.get(META_SERIAL)
        .map_err(db_err)?
        .map_or(Ok(0), |v| serial_from(v.value()))
}

fn serial_from(bytes: &[u8]) -> Result<u64, StoreError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            what: "serial",
            key: META_SERIAL.to_string(),
            reason: format!("{} bytes, not 8", bytes.len()),
        })
}

fn read_serial(txn: &WriteTransaction) -> Result<u64, StoreError> {
    stored_serial(&txn.open_table(META).map_err(db_err)?)
}

fn set_serial(txn: &WriteTransaction, serial: u64) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(db_err)?;
    meta.insert(META_SERIAL, serial.to_be_bytes().as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// Give `key` the next serial, in the write's own transaction: its change entry
/// moves to the end of the log.
fn note_change(txn: &WriteTransaction, key: &EntryKey) -> Result<u64, StoreError> {
    let serial = read_serial(txn)?
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt {
            what: "serial",
            key: META_SERIAL.to_string(),
            reason: "at its maximum".to_string(),
        })?;
    let encoded = postcard::to_allocvec(key).expect("encoding to a Vec cannot fail");
    let mut serials = txn.open_table(SERIALS).map_err(db_err)?;
    let previous = serials
        .insert(encoded.as_slice(), serial)
        .map_err(db_err)?
        .map(|v| v.value());
    let mut changes = txn.open_table(CHANGES).map_err(db_err)?;
    if let Some(previous) = previous {
        changes.remove(previous).map_err(db_err)?;
    }
    changes.insert(serial, encoded.as_slice()).map_err(db_err)?;
    drop((serials, changes));
    set_serial(txn, serial)?;
    Ok(serial)
}

fn decode<T: crate::record::Signable>(
    bytes: &[u8],
    what: &'static str,
    key: &str,
) -> Result<Signed<T>, StoreError> {
    Signed::<T>::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_string(),
        reason: e.to_string(),
    })
}
