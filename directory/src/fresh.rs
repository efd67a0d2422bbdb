//! Freshness: a short-lived signed statement of what a directory holds, so that a
//! client (even one that never resolved anything before) refuses a server frozen in
//! the past or restored from an old backup, the way TUF's timestamp role does.
//!
//! - Every stored entry (each zone delegation and each object record) is a leaf of a
//!   Merkle tree, in the order of its key ([`EntryKey`]).
//! - The root key signs a [`Freshness`] statement: the database's serial (it grows
//!   with every write), the tree's root hash, and a validity of minutes. The primary
//!   signs a new one on the first read or transfer after a write, and when half of
//!   the current one's validity is gone.
//! - Each answer carries the statement and one inclusion [`Proof`] per entry it
//!   returns. The client checks the statement's signature and expiry and that each
//!   entry is a leaf of the signed tree, so an answer cannot mix current and old
//!   entries, and once a server stops receiving fresh statements its answers are
//!   refused when the last one expires.
//!
//! Mirrors (`lo directory serve --secondary-of`) pass the primary's statements on
//! unchanged: they never hold a signing key, and nothing they could change would
//! verify.
//!
//! Not covered: a "not found" answer carries no proof of absence, and a listing's
//! sub-folder names are not vouched for (its records are). Clients also refuse a
//! statement issued long before the newest one they have seen
//! ([`crate::client::MAX_STATEMENT_LAG_SECS`]), so a server replaying an old but
//! unexpired statement is caught once the client has seen a newer one.

use crate::record::{RecordError, Signable, Signed};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Default validity of a freshness statement.
pub const DEFAULT_VALIDITY_SECS: u64 = 300;

/// Most levels a proof may have (a tree of 2^64 leaves).
const MAX_PROOF_LEVELS: usize = 64;

/// Which stored entry a leaf is: a zone's delegation or an object's record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKey {
    /// The delegation of a zone (`lo://acme/`).
    Delegation(String),
    /// The record of an object (`lo://acme/rooms/lobby`).
    Record(String),
}

impl std::fmt::Display for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryKey::Delegation(zone) => write!(f, "delegation of {zone}"),
            EntryKey::Record(name) => write!(f, "record {name}"),
        }
    }
}

/// What the root key signs about a directory's contents at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// The database's write serial the tree was built at.
    pub serial: u64,
    /// Root of the Merkle tree over every entry.
    pub root: [u8; 32],
    /// How many leaves the tree has.
    pub entries: u64,
    /// Unix seconds when signed.
    pub issued_at: u64,
    /// Unix seconds after which no client accepts it.
    pub expires_at: u64,
}

impl Signable for Freshness {
    const KIND: &'static str = "freshness";

    fn validate(&self) -> Result<(), String> {
        if self.expires_at <= self.issued_at {
            return Err("expires before it is issued".into());
        }
        Ok(())
    }
}

/// Why a statement or a proof is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreshnessError {
    /// The answer came without a statement.
    #[error(
        "the directory sent no freshness statement; it may be an old server, or a mirror \
         that has not yet heard from its primary"
    )]
    Missing,
    /// Not signed by the trusted key.
    #[error(
        "the freshness statement is not signed by the root key {expected} (signed by {signer})"
    )]
    WrongSigner {
        /// The trusted key.
        expected: crate::keys::PublicKey,
        /// Who signed.
        signer: crate::keys::PublicKey,
    },
    /// The signature does not verify.
    #[error("the freshness statement's signature does not verify")]
    BadSignature,
    /// The body does not decode.
    #[error("the freshness statement is malformed: {0}")]
    Malformed(String),
    /// Expired: the server is frozen in the past, restored from a backup, cut off
    /// from its primary, or the clocks disagree.
    #[error(
        "the directory's freshness statement (serial {serial}) expired {ago} s ago: the \
         server is frozen, was restored from an old backup, or a mirror lost its primary \
         (or a clock is wrong); try another directory server"
    )]
    Expired {
        /// The statement's serial.
        serial: u64,
        /// Seconds since it expired.
        ago: u64,
    },
    /// Issued in the future (beyond clock skew).
    #[error("the freshness statement is issued {ahead} s in the future; check the clocks")]
    FromTheFuture {
        /// Seconds ahead of the client.
        ahead: u64,
    },
    /// An entry is not in the signed tree.
    #[error(
        "the {key} is not part of the contents the freshness statement (serial {serial}) \
         vouches for: the server mixed old and new data, or it was tampered with"
    )]
    NotIncluded {
        /// The entry.
        key: EntryKey,
        /// The statement's serial.
        serial: u64,
    },
}

/// Clock skew tolerated for a statement's issue time.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Check `statement`'s signature (by `root`) and validity at `now`.
pub fn verify_statement(
    statement: &Signed<Freshness>,
    root: crate::keys::PublicKey,
    now: u64,
) -> Result<Freshness, FreshnessError> {
    if statement.signer != root {
        return Err(FreshnessError::WrongSigner {
            expected: root,
            signer: statement.signer,
        });
    }
    if !statement.signature_valid() {
        return Err(FreshnessError::BadSignature);
    }
    let fresh = statement
        .open()
        .map_err(|e: RecordError| FreshnessError::Malformed(e.to_string()))?;
    if now > fresh.expires_at {
        return Err(FreshnessError::Expired {
            serial: fresh.serial,
            ago: now - fresh.expires_at,
        });
    }
    if fresh.issued_at > now + MAX_CLOCK_SKEW_SECS {
        return Err(FreshnessError::FromTheFuture {
            ahead: fresh.issued_at - now,
        });
    }
    Ok(fresh)
}

/// The hash of a leaf: the entry's key and its stored bytes (the signed value).
pub fn leaf_hash(key: &EntryKey, value: &[u8]) -> [u8; 32] {
    let key = postcard::to_allocvec(key).expect("encoding to a Vec cannot fail");
    let mut h = Sha256::new();
    // Leaves and inner nodes are hashed with different prefixes (as in RFC 6962),
    // so an inner node can never pass for a leaf.
    h.update([0u8]);
    h.update((key.len() as u32).to_be_bytes());
    h.update(&key);
    h.update(Sha256::digest(value));
    h.finalize().into()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of an empty tree.
pub fn empty_root() -> [u8; 32] {
    Sha256::digest(b"liveobjects/v1/empty-directory").into()
}

/// A Merkle tree over leaf hashes, kept level by level so proofs are cheap.
///
/// Hand-written (about forty lines) rather than a crate: it needs only a root and
/// audit paths over SHA-256 with RFC 6962's leaf/node prefixes, and its exact
/// shape is part of the wire contract that clients verify.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// `levels[0]` are the leaves; the last level has one node, the root. A level
    /// with an odd count carries its last node up unchanged.
    levels: Vec<Vec<[u8; 32]>>,
}

impl MerkleTree {
    /// Build from leaf hashes, in order.
    pub fn new(leaves: Vec<[u8; 32]>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().expect("one level").len() > 1 {
            let below = levels.last().expect("one level");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [single] => *single,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        MerkleTree { levels }
    }

    /// The root hash ([`empty_root`] without leaves).
    pub fn root(&self) -> [u8; 32] {
        match self.levels.last().and_then(|l| l.first()) {
            Some(root) => *root,
            None => empty_root(),
        }
    }

    /// How many leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether it has no leaves.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The audit path of leaf `index`.
    pub fn proof(&self, index: usize) -> Proof {
        let mut steps = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                steps.push(Step {
                    sibling: level[sibling],
                    sibling_on_left: sibling < i,
                });
            }
            i /= 2;
        }
        Proof { steps }
    }
}

/// One level of an audit path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The sibling's hash.
    pub sibling: [u8; 32],
    /// Whether the sibling is the left one.
    pub sibling_on_left: bool,
}

/// An inclusion proof: the path from a leaf to the root.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Proof {
    /// From the leaf's level up.
    pub steps: Vec<Step>,
}

impl Proof {
    /// Whether the entry (`key`, `value`) is a leaf of the tree with `root`.
    pub fn verifies(&self, key: &EntryKey, value: &[u8], root: &[u8; 32]) -> bool {
        if self.steps.len() > MAX_PROOF_LEVELS {
            return false;
        }
        let mut hash = leaf_hash(key, value);
        for step in &self.steps {
            hash = if step.sibling_on_left {
                node_hash(&step.sibling, &hash)
            } else {
                node_hash(&hash, &step.sibling)
            };
        }
        &hash == root
    }
}

/// A statement and the proofs for the entries of one answer, in the order the
/// answer lists them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vouched {
    /// The statement.
    pub statement: Signed<Freshness>,
    /// One per entry of the answer.
    pub proofs: Vec<Proof>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<(EntryKey, Vec<u8>)> {
        (0..n)
            .map(|i| (EntryKey::Record(format!("lo://z/{i:05}")), vec![i as u8; 3]))
            .collect()
    }

    #[test]
    fn every_leaf_proves_and_nothing_else_does() {
        for n in [1usize, 2, 3, 5, 8, 13, 100] {
            let entries = leaves(n);
            let tree = MerkleTree::new(entries.iter().map(|(k, v)| leaf_hash(k, v)).collect());
            let root = tree.root();
            for (i, (k, v)) in entries.iter().enumerate() {
                let proof = tree.proof(i);
                assert!(proof.verifies(k, v, &root), "leaf {i} of {n}");
                assert!(
                    !proof.verifies(k, b"other value", &root),
                    "changed value {i}"
                );
                let other = EntryKey::Delegation(format!("lo://z{i}/"));
                assert!(!proof.verifies(&other, v, &root), "changed key {i}");
            }
        }
    }

    #[test]
    fn a_changed_leaf_changes_the_root() {
        let entries = leaves(7);
        let hashes: Vec<_> = entries.iter().map(|(k, v)| leaf_hash(k, v)).collect();
        let root = MerkleTree::new(hashes.clone()).root();
        let mut changed = hashes;
        changed[6] = leaf_hash(&entries[6].0, b"new");
        assert_ne!(MerkleTree::new(changed).root(), root);
        assert_eq!(MerkleTree::new(Vec::new()).root(), empty_root());
    }

    #[test]
    fn statements_expire_and_need_the_root_key() {
        let root = crate::keys::Identity::generate();
        let other = crate::keys::Identity::generate();
        let fresh = Freshness {
            serial: 4,
            root: empty_root(),
            entries: 0,
            issued_at: 1_000,
            expires_at: 1_300,
        };
        let signed = Signed::sign(&fresh, &root);
        assert_eq!(
            verify_statement(&signed, root.public(), 1_100),
            Ok(fresh.clone())
        );
        assert_eq!(
            verify_statement(&signed, root.public(), 1_301),
            Err(FreshnessError::Expired { serial: 4, ago: 1 })
        );
        assert!(matches!(
            verify_statement(&Signed::sign(&fresh, &other), root.public(), 1_100),
            Err(FreshnessError::WrongSigner { .. })
        ));
        let mut forged = signed.clone();
        forged.body = postcard::to_allocvec(&Freshness { serial: 5, ..fresh }).unwrap();
        assert_eq!(
            verify_statement(&forged, root.public(), 1_100),
            Err(FreshnessError::BadSignature)
        );
    }
}
