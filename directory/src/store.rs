//! The server's storage: an embedded redb database file.
//!
//! Tables: `records` (object name -> signed record), `delegations` (zone -> signed
//! delegation), `blobs` (sha256 -> component bytes). A publish writes its blob and
//! record in one transaction; redb commits with fsync (`Durability::Immediate`, its
//! default), and the server acknowledges only after the commit, so a kill -9 at any
//! point loses no acknowledged write and leaves the file consistent.

use crate::name::Name;
use crate::record::{Delegation, ObjectRecord, Signed};
use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::Path;

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const DELEGATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("delegations");
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");

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
        txn.commit().map_err(db_err)?;
        Ok(Store { db })
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

    /// Overwrite the raw bytes of a record, bypassing every check. For repair tools and
    /// tamper tests only: the server never writes unchecked data.
    pub fn raw_set_record(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.raw_set(RECORDS, name.as_bytes(), bytes)
    }

    /// Overwrite the raw bytes of a delegation, bypassing every check (tests only).
    pub fn raw_set_delegation(&self, zone: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.raw_set(DELEGATIONS, zone.as_bytes(), bytes)
    }

    /// Remove a delegation, bypassing every check (tests only).
    pub fn raw_remove_delegation(&self, zone: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(DELEGATIONS).map_err(db_err)?;
            table.remove(zone).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
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
