//! Client-side verification: the signature chain from the trusted root key through
//! zone delegations to a record, and freshness. Pure functions; time is a parameter.

use crate::keys::PublicKey;
use crate::name::Name;
use crate::record::{Delegation, ObjectRecord, RecordError, Signed};

/// Why a record or delegation is not to be trusted. Every variant names what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Bytes that do not decode or fail validation.
    #[error(transparent)]
    Malformed(#[from] RecordError),
    /// A signature that does not verify (tampered bytes or a wrong key).
    #[error(
        "the signature on {what} {name} does not verify: it was altered or not signed by {signer}"
    )]
    BadSignature {
        /// Record or delegation.
        what: &'static str,
        /// Its name.
        name: String,
        /// The key it claims.
        signer: PublicKey,
    },
    /// A delegation signed by a key that does not own the parent zone.
    #[error(
        "delegation of {zone} is signed by {signer}, which does not own {parent} (its owner is {expected})"
    )]
    DelegationNotAuthorized {
        /// The delegated zone.
        zone: String,
        /// The enclosing zone.
        parent: String,
        /// Who signed it.
        signer: PublicKey,
        /// Who should have.
        expected: PublicKey,
    },
    /// A delegation for a zone outside its parent, or chain links out of order.
    #[error("delegation of {zone} does not lie inside {parent}")]
    DelegationOutsideParent {
        /// The delegated zone.
        zone: String,
        /// The parent zone.
        parent: String,
    },
    /// A record signed by a key other than the owner of its zone.
    #[error("record {name} is signed by {signer}, but its zone {zone} is owned by {owner}")]
    WrongSigner {
        /// The record's name.
        name: String,
        /// Its zone.
        zone: String,
        /// Who signed it.
        signer: PublicKey,
        /// The zone's owner.
        owner: PublicKey,
    },
    /// A record that is not inside the zone its chain leads to.
    #[error("record {name} is not inside zone {zone}")]
    OutsideZone {
        /// The record's name.
        name: String,
        /// The zone.
        zone: String,
    },
    /// The server answered with a record for another name.
    #[error("asked for {asked} but got a record for {got}")]
    NameMismatch {
        /// The name asked for.
        asked: String,
        /// The name in the record.
        got: String,
    },
    /// Expired record or delegation.
    #[error("{what} {name} expired at {expired_at} (Unix time; now is {now})")]
    Expired {
        /// Record or delegation.
        what: &'static str,
        /// Its name.
        name: String,
        /// When it expired.
        expired_at: u64,
        /// The client's clock.
        now: u64,
    },
    /// Older than a version this client has already seen (a rollback or replay).
    #[error(
        "record {name} has version {got}, older than version {seen} seen before; refusing a rollback"
    )]
    Rollback {
        /// The record's name.
        name: String,
        /// Highest version seen.
        seen: u64,
        /// Version offered.
        got: u64,
    },
    /// An answer whose chain leaves out a delegation this client has seen before.
    #[error(
        "the answer for {name} leaves out the delegation of {zone}, seen before; refusing a cut-short chain"
    )]
    MissingDelegation {
        /// The name resolved.
        name: String,
        /// The zone whose delegation is missing.
        zone: String,
    },
    /// Logic bytes whose hash does not match the record.
    #[error("logic for {name} has sha256 {got}, but the record says {expected}")]
    HashMismatch {
        /// The record's name.
        name: String,
        /// Hash in the record.
        expected: String,
        /// Hash of the bytes received.
        got: String,
    },
    /// A freshness statement of older contents than one this client has seen,
    /// issued well before it (by more than mirrors lag).
    #[error(
        "the directory's freshness statement was issued at {issued_at}, well before one \
         this client already saw (issued at {newest}): a server replaying old contents; \
         try another directory server"
    )]
    StaleStatement {
        /// The refused statement's issue time (Unix seconds).
        issued_at: u64,
        /// The newest seen.
        newest: u64,
    },
}

/// A delegation chain that verified, root first; the last entry owns the deepest zone.
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    /// The delegations, root first.
    pub delegations: Vec<Delegation>,
    /// The root key the chain starts from.
    pub root: PublicKey,
}

impl VerifiedChain {
    /// The deepest zone and its owner (the root zone `lo://` and root key if empty).
    pub fn deepest(&self) -> (String, PublicKey) {
        match self.delegations.last() {
            Some(d) => (d.zone.clone(), d.key),
            None => ("lo://".to_string(), self.root),
        }
    }
}

/// A record whose whole chain verified.
#[derive(Debug, Clone)]
pub struct VerifiedRecord {
    /// The record.
    pub record: ObjectRecord,
    /// The chain that vouches for it.
    pub chain: VerifiedChain,
    /// The signed form (for re-sending to others, e.g. joiners).
    pub signed: Signed<ObjectRecord>,
}

/// Verify delegations from `root`, each signed by the owner of the previous one.
pub fn verify_chain(
    root: PublicKey,
    chain: &[Signed<Delegation>],
    now: u64,
) -> Result<VerifiedChain, VerifyError> {
    let mut parent = Name::parse("lo://").expect("root parses");
    let mut owner = root;
    let mut delegations: Vec<Delegation> = Vec::with_capacity(chain.len());
    for signed in chain {
        // Authenticate before parsing: nothing unsigned is decoded past its framing.
        let claimed_zone = || {
            signed
                .open()
                .map(|d| d.zone)
                .unwrap_or_else(|_| "(undecodable zone)".to_string())
        };
        // The enclosing zone's owner, or a key it rolled over from, in grace.
        let may_sign = match delegations.last() {
            Some(d) => d.may_sign(&signed.signer, now),
            None => signed.signer == root,
        };
        if !may_sign {
            return Err(VerifyError::DelegationNotAuthorized {
                zone: claimed_zone(),
                parent: parent.to_string(),
                signer: signed.signer,
                expected: owner,
            });
        }
        if !signed.signature_valid() {
            return Err(VerifyError::BadSignature {
                what: "delegation",
                name: claimed_zone(),
                signer: signed.signer,
            });
        }
        let delegation = signed.open()?;
        let zone = Name::parse(&delegation.zone).map_err(|e| RecordError::Invalid {
            what: "delegation",
            reason: e.to_string(),
        })?;
        if !zone.is_within(&parent) {
            return Err(VerifyError::DelegationOutsideParent {
                zone: delegation.zone,
                parent: parent.to_string(),
            });
        }
        if delegation.expires_at <= now {
            return Err(VerifyError::Expired {
                what: "delegation",
                name: delegation.zone,
                expired_at: delegation.expires_at,
                now,
            });
        }
        owner = delegation.key;
        parent = zone;
        delegations.push(delegation);
    }
    Ok(VerifiedChain { delegations, root })
}

/// Verify a record against `root` through `chain`: the record must lie in the chain's
/// deepest zone and be signed by that zone's owner, and nothing may be expired.
pub fn verify_record(
    root: PublicKey,
    chain: &[Signed<Delegation>],
    signed: &Signed<ObjectRecord>,
    now: u64,
) -> Result<VerifiedRecord, VerifyError> {
    let chain = verify_chain(root, chain, now)?;
    let (zone, owner) = chain.deepest();
    let claimed_name = || {
        signed
            .open()
            .map(|r| r.name)
            .unwrap_or_else(|_| "(undecodable name)".to_string())
    };
    let may_sign = match chain.delegations.last() {
        Some(d) => d.may_sign(&signed.signer, now),
        None => signed.signer == root,
    };
    if !may_sign {
        return Err(VerifyError::WrongSigner {
            name: claimed_name(),
            zone,
            signer: signed.signer,
            owner,
        });
    }
    if !signed.signature_valid() {
        return Err(VerifyError::BadSignature {
            what: "record",
            name: claimed_name(),
            signer: signed.signer,
        });
    }
    let record = signed.open()?;
    let zone_name = Name::parse(&zone).expect("verified zones parse");
    let name = Name::parse(&record.name).map_err(|e| RecordError::Invalid {
        what: "record",
        reason: e.to_string(),
    })?;
    if !name.is_within(&zone_name) {
        return Err(VerifyError::OutsideZone {
            name: record.name,
            zone,
        });
    }
    if record.expires_at <= now {
        return Err(VerifyError::Expired {
            what: "record",
            name: record.name,
            expired_at: record.expires_at,
            now,
        });
    }
    Ok(VerifiedRecord {
        record,
        chain,
        signed: signed.clone(),
    })
}

/// Check logic bytes against the record's hash and size.
pub fn verify_logic(record: &ObjectRecord, bytes: &[u8]) -> Result<(), VerifyError> {
    use sha2::{Digest, Sha256};
    let got: [u8; 32] = Sha256::digest(bytes).into();
    if got != record.logic.hash || bytes.len() as u64 != record.logic.size {
        return Err(VerifyError::HashMismatch {
            name: record.name.clone(),
            expected: hex::encode(record.logic.hash),
            got: hex::encode(got),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Identity;
    use crate::record::MAX_PREVIOUS_KEYS;
    use crate::record::tests::sample_record;

    fn delegation(zone: &str, key: PublicKey) -> Delegation {
        Delegation {
            zone: zone.into(),
            key,
            servers: vec![],
            version: 1,
            issued_at: 1_000,
            expires_at: 2_000_000_000,
            previous: vec![],
        }
    }

    struct World {
        root: Identity,
        acme: Identity,
        games: Identity,
        chain: Vec<Signed<Delegation>>,
    }

    fn world() -> World {
        let root = Identity::generate();
        let acme = Identity::generate();
        let games = Identity::generate();
        let chain = vec![
            Signed::sign(&delegation("lo://acme/", acme.public()), &root),
            Signed::sign(&delegation("lo://acme/games/", games.public()), &acme),
        ];
        World {
            root,
            acme,
            games,
            chain,
        }
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_record_signed_by_its_zone_owner_verifies() {
        let w = world();
        let signed = Signed::sign(&sample_record("lo://acme/games/chess", 1), &w.games);
        let v = verify_record(w.root.public(), &w.chain, &signed, NOW).unwrap();
        assert_eq!(v.chain.deepest().1, w.games.public());
    }

    #[test]
    fn a_rolled_over_key_signs_until_its_grace_ends_or_it_is_revoked() {
        let w = world();
        let new_games = Identity::generate();
        let games = Delegation::new("lo://acme/games/", w.games.public(), 1, NOW - 10, 3600);
        let rolled = games.rolled_over(new_games.public(), 100, NOW);
        assert_eq!(rolled.version, 2);
        let chain = |d: &Delegation| vec![w.chain[0].clone(), Signed::sign(d, &w.acme)];
        let by_old = Signed::sign(&sample_record("lo://acme/games/chess", 1), &w.games);
        let by_new = Signed::sign(&sample_record("lo://acme/games/go", 1), &new_games);
        let root = w.root.public();
        // During the grace period both keys verify.
        verify_record(root, &chain(&rolled), &by_old, NOW + 99).unwrap();
        verify_record(root, &chain(&rolled), &by_new, NOW + 99).unwrap();
        // After it, only the new key.
        let err = verify_record(root, &chain(&rolled), &by_old, NOW + 100).unwrap_err();
        assert!(matches!(err, VerifyError::WrongSigner { .. }), "{err}");
        verify_record(root, &chain(&rolled), &by_new, NOW + 100).unwrap();
        // Revoked: refused at once.
        let revoked = rolled.revoking(&w.games.public(), NOW + 1);
        assert_eq!(revoked.version, 3);
        let err = verify_record(root, &chain(&revoked), &by_old, NOW + 2).unwrap_err();
        assert!(matches!(err, VerifyError::WrongSigner { .. }), "{err}");
        // A delegation below, signed by the old key in grace, verifies too.
        let below = Delegation::new(
            "lo://acme/games/chess/",
            Identity::generate().public(),
            1,
            NOW,
            3600,
        );
        let mut deeper = chain(&rolled);
        deeper.push(Signed::sign(&below, &w.games));
        verify_chain(root, &deeper, NOW + 50).unwrap();
        assert!(matches!(
            verify_chain(root, &deeper, NOW + 150),
            Err(VerifyError::DelegationNotAuthorized { .. })
        ));
    }

    #[test]
    fn a_fifth_key_in_grace_pushes_out_the_one_ending_soonest() {
        let mut d = Delegation::new("lo://acme/", Identity::generate().public(), 1, NOW, 3600);
        let mut keys = vec![d.key];
        for i in 0..5u64 {
            let next = Identity::generate().public();
            d = d.rolled_over(next, 1_000 - i * 100, NOW + i);
            keys.push(next);
        }
        assert_eq!(d.previous.len(), MAX_PREVIOUS_KEYS);
        // The key just replaced always keeps its grace; the key whose grace ended
        // soonest made room.
        assert!(
            d.may_sign(&keys[4], NOW + 10),
            "the key just replaced keeps its grace"
        );
        assert!(d.may_sign(&keys[5], NOW + 10));
    }

    #[test]
    fn a_delegation_body_with_trailing_bytes_is_refused() {
        let root = Identity::generate();
        let d = Delegation::new("lo://acme/", Identity::generate().public(), 1, 1_000, 3600);
        let mut body = postcard::to_allocvec(&d).unwrap();
        body.push(0);
        let signature = root.sign(&Signed::<Delegation>::message(&body));
        let padded = Signed::<Delegation>::from_parts(body, root.public(), signature);
        assert!(padded.open().is_err());
    }

    #[test]
    fn a_delegation_signed_before_rollovers_existed_still_decodes_and_verifies() {
        let root = Identity::generate();
        let acme = Identity::generate();
        let body = postcard::to_allocvec(&crate::record::DelegationV1 {
            zone: "lo://acme/".into(),
            key: acme.public(),
            servers: vec![],
            version: 3,
            issued_at: 1_000,
            expires_at: 2_000_000_000,
        })
        .unwrap();
        let signature = root.sign(&Signed::<Delegation>::message(&body));
        let old = Signed::<Delegation>::from_parts(body, root.public(), signature);
        let chain = verify_chain(root.public(), &[old], NOW).unwrap();
        assert_eq!(chain.delegations[0].version, 3);
        assert!(chain.delegations[0].previous.is_empty());
    }

    #[test]
    fn the_parent_zone_owner_cannot_sign_inside_a_delegated_zone() {
        let w = world();
        let signed = Signed::sign(&sample_record("lo://acme/games/chess", 1), &w.acme);
        let err = verify_record(w.root.public(), &w.chain, &signed, NOW).unwrap_err();
        assert!(matches!(err, VerifyError::WrongSigner { .. }), "{err}");
    }

    #[test]
    fn a_delegation_signed_by_a_stranger_breaks_the_chain() {
        let w = world();
        let stranger = Identity::generate();
        let chain = vec![
            w.chain[0].clone(),
            Signed::sign(
                &delegation("lo://acme/games/", stranger.public()),
                &stranger,
            ),
        ];
        let signed = Signed::sign(&sample_record("lo://acme/games/chess", 1), &stranger);
        let err = verify_record(w.root.public(), &chain, &signed, NOW).unwrap_err();
        assert!(
            matches!(err, VerifyError::DelegationNotAuthorized { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_chain_from_another_root_is_refused() {
        let w = world();
        let other_root = Identity::generate();
        let signed = Signed::sign(&sample_record("lo://acme/games/chess", 1), &w.games);
        let err = verify_record(other_root.public(), &w.chain, &signed, NOW).unwrap_err();
        assert!(
            matches!(err, VerifyError::DelegationNotAuthorized { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_delegation_outside_its_parent_is_refused() {
        let w = world();
        let chain = vec![
            w.chain[0].clone(),
            Signed::sign(&delegation("lo://other/", w.games.public()), &w.acme),
        ];
        let err = verify_chain(w.root.public(), &chain, NOW).unwrap_err();
        assert!(
            matches!(err, VerifyError::DelegationOutsideParent { .. }),
            "{err}"
        );
    }

    #[test]
    fn expired_records_and_delegations_are_refused() {
        let w = world();
        let mut record = sample_record("lo://acme/games/chess", 1);
        record.expires_at = NOW - 1;
        let signed = Signed::sign(&record, &w.games);
        let err = verify_record(w.root.public(), &w.chain, &signed, NOW).unwrap_err();
        assert!(
            matches!(err, VerifyError::Expired { what: "record", .. }),
            "{err}"
        );
        let mut d = delegation("lo://acme/", w.acme.public());
        d.expires_at = NOW;
        let err = verify_chain(w.root.public(), &[Signed::sign(&d, &w.root)], NOW).unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Expired {
                    what: "delegation",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_record_outside_the_chains_zone_is_refused() {
        let w = world();
        let signed = Signed::sign(&sample_record("lo://elsewhere/x", 1), &w.games);
        let err = verify_record(w.root.public(), &w.chain, &signed, NOW).unwrap_err();
        assert!(matches!(err, VerifyError::OutsideZone { .. }), "{err}");
    }

    #[test]
    fn logic_must_match_hash_and_size() {
        use sha2::{Digest, Sha256};
        let mut record = sample_record("lo://acme/x", 1);
        record.logic.hash = Sha256::digest(b"logic").into();
        record.logic.size = 5;
        verify_logic(&record, b"logic").unwrap();
        assert!(matches!(
            verify_logic(&record, b"logiC"),
            Err(VerifyError::HashMismatch { .. })
        ));
    }
}
