//! Signed directory records: object records (a name's type, logic, driver and access
//! policy) and zone delegations (a folder handed to a key).
//!
//! A signature covers `liveobjects/v1/<kind>\0` followed by the record's postcard
//! encoding, exactly as transmitted and stored ([`Signed::body`]); the domain prefix
//! keeps a record signature from ever passing as a delegation, or anything else.

use crate::keys::{Identity, PublicKey};
use crate::name::Name;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// Largest encoded record or delegation we accept (bounds allocation on decode).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Most keys an access policy may list.
pub const MAX_POLICY_KEYS: usize = 256;
/// Most driver options.
pub const MAX_DRIVER_OPTIONS: usize = 64;
/// Longest free-text field (interface name, driver option, server address).
pub const MAX_FIELD_LEN: usize = 512;

/// What kind of object this is (DESIGN.md section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    /// A stream of events (e.g. a ticker).
    EventStream,
    /// Replicated state (e.g. a counter, a register, a chat room).
    ReplicatedState,
    /// A replicated service answering requests.
    ReplicatedService,
    /// A gossip aggregate (counts, averages, extremes).
    GossipAggregate,
    /// A channel with checkpoints for late joiners.
    CheckpointedChannel,
}

/// Delivery guarantees, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reliability {
    /// May lose or reorder.
    BestEffort,
    /// Reliable, FIFO per sender.
    ReliableFifo,
    /// Everyone sees the same order (virtual synchrony).
    TotalOrder,
    /// Total order that survives the crash of every replica.
    Durable,
}

/// Protection of the object's traffic, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Security {
    /// Anyone may read.
    Open,
    /// Members are authenticated; payloads are signed.
    Authenticated,
    /// Payloads are encrypted with a group key.
    Encrypted,
}

macro_rules! kebab_enum {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// Every value, weakest or first first.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),*];

            /// The kebab-case name used on the command line.
            pub fn as_str(&self) -> &'static str {
                match self { $(<$ty>::$variant => $text),* }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(<$ty>::$variant),)*
                    other => Err(format!(
                        "`{other}` is not one of: {}",
                        [$($text),*].join(", ")
                    )),
                }
            }
        }
    };
}

kebab_enum!(Category {
    EventStream => "event-stream",
    ReplicatedState => "replicated-state",
    ReplicatedService => "replicated-service",
    GossipAggregate => "gossip-aggregate",
    CheckpointedChannel => "checkpointed-channel",
});
kebab_enum!(Reliability {
    BestEffort => "best-effort",
    ReliableFifo => "reliable-fifo",
    TotalOrder => "total-order",
    Durable => "durable",
});
kebab_enum!(Security {
    Open => "open",
    Authenticated => "authenticated",
    Encrypted => "encrypted",
});

/// An object's type: the tuple of aspects the host checks at join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectType {
    /// The WIT interface of its natural methods, e.g. `liveobjects:chat/chat@0.1.0`.
    pub interface: String,
    /// Category.
    pub category: Category,
    /// Reliability.
    pub reliability: Reliability,
    /// Security.
    pub security: Security,
}

/// Which driver carries the object, with its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverConfig {
    /// Driver name: `mesh`, `qsm`, `vsync`, `gossip`.
    pub name: String,
    /// Driver-specific settings.
    pub options: BTreeMap<String, String>,
}

/// Who may join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessPolicy {
    /// Anyone.
    Open,
    /// Only these keys.
    Keys(Vec<PublicKey>),
    /// Holders of a grant signed by this key (normally the zone owner).
    Grants(PublicKey),
}

impl fmt::Display for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessPolicy::Open => f.write_str("open"),
            AccessPolicy::Keys(keys) => {
                let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                write!(f, "keys:{}", keys.join(","))
            }
            AccessPolicy::Grants(issuer) => write!(f, "grants:{issuer}"),
        }
    }
}

impl std::str::FromStr for AccessPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "open" {
            return Ok(AccessPolicy::Open);
        }
        if let Some(list) = s.strip_prefix("keys:") {
            let keys = list
                .split(',')
                .map(|k| k.parse::<PublicKey>().map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            if keys.is_empty() {
                return Err("keys: needs at least one key".into());
            }
            return Ok(AccessPolicy::Keys(keys));
        }
        if let Some(key) = s.strip_prefix("grants:") {
            return Ok(AccessPolicy::Grants(
                key.parse().map_err(|e| format!("{e}"))?,
            ));
        }
        Err(format!(
            "`{s}` is not a policy: use open, keys:KEY1,KEY2 or grants:ISSUER_KEY"
        ))
    }
}

/// The logic an object runs: a component identified by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicRef {
    /// SHA-256 of the component bytes.
    pub hash: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

/// What a name is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The object's name (`lo://zone/.../name`).
    pub name: String,
    /// Increases with every publish; clients refuse to go back.
    pub version: u64,
    /// When it was signed (Unix seconds).
    pub issued_at: u64,
    /// After this (Unix seconds) clients refuse it.
    pub expires_at: u64,
    /// The type aspects.
    pub object_type: ObjectType,
    /// The logic.
    pub logic: LogicRef,
    /// The driver.
    pub driver: DriverConfig,
    /// The access policy.
    pub policy: AccessPolicy,
}

impl ObjectRecord {
    /// A record binding `name` to `logic` (its hash and size), valid from `now` for
    /// `ttl_secs`, with the defaults `lo publish` uses: interface unknown,
    /// replicated-state, reliable-fifo, open security, the `mesh` driver, open policy.
    /// Adjust the public fields afterwards.
    pub fn new(name: &str, version: u64, logic: &[u8], now: u64, ttl_secs: u64) -> Self {
        use sha2::{Digest, Sha256};
        ObjectRecord {
            name: name.to_string(),
            version,
            issued_at: now,
            expires_at: now.saturating_add(ttl_secs),
            object_type: ObjectType {
                interface: String::new(),
                category: Category::ReplicatedState,
                reliability: Reliability::ReliableFifo,
                security: Security::Open,
            },
            logic: LogicRef {
                hash: Sha256::digest(logic).into(),
                size: logic.len() as u64,
            },
            driver: DriverConfig {
                name: "mesh".to_string(),
                options: BTreeMap::new(),
            },
            policy: AccessPolicy::Open,
        }
    }
}

impl Delegation {
    /// Version `version` of the delegation of `zone` to `key`, served by this server,
    /// valid from `now` for `ttl_secs`.
    pub fn new(zone: &str, key: PublicKey, version: u64, now: u64, ttl_secs: u64) -> Self {
        Delegation {
            zone: zone.to_string(),
            key,
            servers: Vec::new(),
            version,
            issued_at: now,
            expires_at: now.saturating_add(ttl_secs),
            previous: Vec::new(),
        }
    }

    /// Whether `key` may sign inside the zone at `now`: its owner, or a key it
    /// rolled over from while that key's grace period lasts.
    pub fn may_sign(&self, key: &PublicKey, now: u64) -> bool {
        *key == self.key || self.in_grace(key, now)
    }

    /// Whether `key` is one the zone rolled over from and its grace lasts at `now`.
    pub fn in_grace(&self, key: &PublicKey, now: u64) -> bool {
        self.previous.iter().any(|p| p.key == *key && now < p.until)
    }

    /// This delegation handed to `new_key`: the current key keeps signing for
    /// `grace_secs` more (a key already in grace keeps its own end), keys whose
    /// grace has ended are dropped, and the version goes up.
    pub fn rolled_over(&self, new_key: PublicKey, grace_secs: u64, now: u64) -> Delegation {
        let mut previous: Vec<PreviousKey> = self
            .previous
            .iter()
            .filter(|p| now < p.until && p.key != new_key)
            .cloned()
            .collect();
        if grace_secs > 0 && self.key != new_key {
            // Full: the key whose grace ends soonest makes room.
            if previous.len() >= MAX_PREVIOUS_KEYS
                && let Some(soonest) = (0..previous.len()).min_by_key(|&i| previous[i].until)
            {
                previous.remove(soonest);
            }
            previous.push(PreviousKey {
                key: self.key,
                until: now.saturating_add(grace_secs),
            });
        }
        Delegation {
            key: new_key,
            version: self.version + 1,
            issued_at: now,
            previous,
            ..self.clone()
        }
    }

    /// This delegation without `key` among the keys in grace (revoked at once),
    /// one version up.
    pub fn revoking(&self, key: &PublicKey, now: u64) -> Delegation {
        Delegation {
            version: self.version + 1,
            issued_at: now,
            previous: self
                .previous
                .iter()
                .filter(|p| p.key != *key && now < p.until)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// Most keys a delegation keeps in grace after rollovers.
pub const MAX_PREVIOUS_KEYS: usize = 4;

/// A key a zone rolled over from, which may still sign until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousKey {
    /// The old key.
    pub key: PublicKey,
    /// End of its grace period (Unix seconds).
    pub until: u64,
}

/// The delegation format before key rollover (no `previous`): stored databases
/// and signatures made before it still decode and verify.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) struct DelegationV1 {
    pub(crate) zone: String,
    pub(crate) key: PublicKey,
    pub(crate) servers: Vec<String>,
    pub(crate) version: u64,
    pub(crate) issued_at: u64,
    pub(crate) expires_at: u64,
}

/// A folder handed to a key (and optionally to other servers), signed by the key of
/// the enclosing zone (the root key for top-level zones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The zone (a folder name, `lo://acme/`).
    pub zone: String,
    /// The key that owns it.
    pub key: PublicKey,
    /// Directory servers that serve it (`host:port`); empty means "this server".
    pub servers: Vec<String>,
    /// Increases with every change.
    pub version: u64,
    /// When it was signed (Unix seconds).
    pub issued_at: u64,
    /// After this (Unix seconds) clients refuse it.
    pub expires_at: u64,
    /// Keys the zone rolled over from, still allowed to sign until their grace
    /// period ends (`lo zone rollover`); a revoked key is removed at once.
    pub previous: Vec<PreviousKey>,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("{what} is {size} bytes; the limit is {MAX_RECORD_BYTES}")]
    TooLarge {
        /// Record or delegation.
        what: &'static str,
        /// Its size.
        size: usize,
    },
    /// Does not decode.
    #[error("{what} does not decode: {reason}")]
    Malformed {
        /// Record or delegation.
        what: &'static str,
        /// Decoder's reason.
        reason: String,
    },
    /// Decodes, but a field is out of bounds.
    #[error("{what} is invalid: {reason}")]
    Invalid {
        /// Record or delegation.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Permission for one member to join one object, signed by the key an
/// [`AccessPolicy::Grants`] names (normally the object's zone owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The object's name.
    pub object: String,
    /// The member allowed in.
    pub member: PublicKey,
    /// After this (Unix seconds) the grant is void.
    pub expires_at: u64,
}

impl Grant {
    /// Whether `signed` lets `member` into `object` under `policy` at `now`; the
    /// reason if not.
    pub fn check(
        policy: &AccessPolicy,
        object: &str,
        member: PublicKey,
        signed: Option<&Signed<Grant>>,
        now: u64,
    ) -> Result<(), String> {
        match policy {
            AccessPolicy::Open => Ok(()),
            AccessPolicy::Keys(keys) => {
                if keys.contains(&member) {
                    Ok(())
                } else {
                    Err(format!(
                        "{member} is not among the keys allowed into {object}"
                    ))
                }
            }
            AccessPolicy::Grants(issuer) => {
                let signed = signed.ok_or_else(|| {
                    format!(
                        "{object} admits holders of a grant signed by {issuer}; none was presented"
                    )
                })?;
                if signed.signer != *issuer || !signed.signature_valid() {
                    return Err(format!("the grant for {member} is not signed by {issuer}"));
                }
                let grant = signed.open().map_err(|e| e.to_string())?;
                if grant.object != object || grant.member != member {
                    return Err(format!(
                        "the grant is for {} in {}, not {member} in {object}",
                        grant.member, grant.object
                    ));
                }
                if grant.expires_at <= now {
                    return Err(format!(
                        "the grant for {member} expired at {}",
                        grant.expires_at
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Signable for Grant {
    const KIND: &'static str = "grant";

    fn validate(&self) -> Result<(), String> {
        let name = Name::parse(&self.object).map_err(|e| e.to_string())?;
        if name.is_folder() {
            return Err(format!("{} is a folder, not an object", self.object));
        }
        Ok(())
    }
}

/// A type that can be signed: its domain tag and its own validity checks.
pub trait Signable: Serialize + DeserializeOwned {
    /// Domain-separation tag, part of what is signed.
    const KIND: &'static str;
    /// Check bounds and names after decoding.
    fn validate(&self) -> Result<(), String>;
    /// Decode a body (a type whose format grew may also take its older form).
    fn decode(body: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(body)
    }
}

fn check_len(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_FIELD_LEN {
        return Err(format!("{what} is longer than {MAX_FIELD_LEN} bytes"));
    }
    Ok(())
}

impl Signable for ObjectRecord {
    const KIND: &'static str = "record";

    fn validate(&self) -> Result<(), String> {
        let name = Name::parse(&self.name).map_err(|e| e.to_string())?;
        if name.is_folder() {
            return Err(format!("{} is a folder, not an object name", self.name));
        }
        check_len("interface", &self.object_type.interface)?;
        check_len("driver name", &self.driver.name)?;
        if self.driver.options.len() > MAX_DRIVER_OPTIONS {
            return Err("too many driver options".into());
        }
        for (k, v) in &self.driver.options {
            check_len("driver option", k)?;
            check_len("driver option", v)?;
        }
        if let AccessPolicy::Keys(keys) = &self.policy
            && (keys.is_empty() || keys.len() > MAX_POLICY_KEYS)
        {
            return Err(format!("a key policy lists 1 to {MAX_POLICY_KEYS} keys"));
        }
        if self.expires_at <= self.issued_at {
            return Err("expires before it is issued".into());
        }
        Ok(())
    }
}

impl Signable for Delegation {
    const KIND: &'static str = "delegation";

    fn decode(body: &[u8]) -> Result<Self, postcard::Error> {
        // The current form first; a body that ends before `previous` is one signed
        // before rollovers existed.
        // Both forms must use up the whole body: one signed body means one thing.
        let whole = |rest: &[u8]| {
            if rest.is_empty() {
                Ok(())
            } else {
                Err(postcard::Error::DeserializeBadEncoding)
            }
        };
        postcard::take_from_bytes::<Delegation>(body)
            .and_then(|(d, rest)| whole(rest).map(|()| d))
            .or_else(|e| {
                let v1: DelegationV1 = postcard::take_from_bytes::<DelegationV1>(body)
                    .and_then(|(v1, rest)| whole(rest).map(|()| v1))
                    .map_err(|_| e)?;
                Ok(Delegation {
                    zone: v1.zone,
                    key: v1.key,
                    servers: v1.servers,
                    version: v1.version,
                    issued_at: v1.issued_at,
                    expires_at: v1.expires_at,
                    previous: Vec::new(),
                })
            })
    }

    fn validate(&self) -> Result<(), String> {
        let zone = Name::parse(&self.zone).map_err(|e| e.to_string())?;
        if !zone.is_folder() || zone.segments().is_empty() {
            return Err(format!(
                "{} is not a zone (zones are folders below lo://, ending in /)",
                self.zone
            ));
        }
        if self.servers.len() > 16 {
            return Err("more than 16 servers".into());
        }
        if self.previous.len() > MAX_PREVIOUS_KEYS {
            return Err(format!("more than {MAX_PREVIOUS_KEYS} keys in grace"));
        }
        for s in &self.servers {
            check_len("server address", s)?;
        }
        if self.expires_at <= self.issued_at {
            return Err("expires before it is issued".into());
        }
        Ok(())
    }
}

/// A value with the signature of the key that vouches for it. The signature covers
/// exactly `body`; [`Signed::open`] decodes and checks the body.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// The postcard encoding of the value.
    pub body: Vec<u8>,
    /// Who signed.
    pub signer: PublicKey,
    /// ed25519 signature over [`Signed::message`].
    pub signature: Vec<u8>,
    #[serde(skip)]
    kind: PhantomData<T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            body: self.body.clone(),
            signer: self.signer,
            signature: self.signature.clone(),
            kind: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("body_len", &self.body.len())
            .field("signer", &self.signer)
            .finish()
    }
}

impl<T: Signable> Signed<T> {
    /// Encode and sign `value` with `identity`.
    pub fn sign(value: &T, identity: &Identity) -> Self {
        let body = postcard::to_allocvec(value).expect("encoding to a Vec cannot fail");
        let signature = identity.sign(&Self::message(&body));
        Signed {
            body,
            signer: identity.public(),
            signature,
            kind: PhantomData,
        }
    }

    /// Assemble from parts (e.g. a signature made elsewhere). Nothing is checked.
    pub fn from_parts(body: Vec<u8>, signer: PublicKey, signature: Vec<u8>) -> Self {
        Signed {
            body,
            signer,
            signature,
            kind: PhantomData,
        }
    }

    /// The exact bytes the signature covers.
    pub fn message(body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(body.len() + 32);
        m.extend_from_slice(b"liveobjects/v1/");
        m.extend_from_slice(T::KIND.as_bytes());
        m.push(0);
        m.extend_from_slice(body);
        m
    }

    /// Whether the signature is valid for `signer` (says nothing about whether
    /// `signer` is the right key; the chain check does that).
    pub fn signature_valid(&self) -> bool {
        self.signer
            .verify(&Self::message(&self.body), &self.signature)
    }

    /// Decode and validate the body (does not check the signature).
    pub fn open(&self) -> Result<T, RecordError> {
        decode_body::<T>(&self.body)
    }

    /// Encode the whole signed value (for storage).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    /// Decode a whole signed value, bounded in size.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES + 256 {
            return Err(RecordError::TooLarge {
                what: T::KIND,
                size: bytes.len(),
            });
        }
        postcard::from_bytes(bytes).map_err(|e| RecordError::Malformed {
            what: T::KIND,
            reason: e.to_string(),
        })
    }
}

fn decode_body<T: Signable>(body: &[u8]) -> Result<T, RecordError> {
    if body.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge {
            what: T::KIND,
            size: body.len(),
        });
    }
    let value: T = T::decode(body).map_err(|e| RecordError::Malformed {
        what: T::KIND,
        reason: e.to_string(),
    })?;
    value.validate().map_err(|reason| RecordError::Invalid {
        what: T::KIND,
        reason,
    })?;
    Ok(value)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_record(name: &str, version: u64) -> ObjectRecord {
        ObjectRecord {
            name: name.to_string(),
            version,
            issued_at: 1_000,
            expires_at: 2_000_000_000,
            object_type: ObjectType {
                interface: "liveobjects:chat/chat@0.1.0".into(),
                category: Category::ReplicatedState,
                reliability: Reliability::TotalOrder,
                security: Security::Open,
            },
            logic: LogicRef {
                hash: [7; 32],
                size: 1234,
            },
            driver: DriverConfig {
                name: "mesh".into(),
                options: BTreeMap::new(),
            },
            policy: AccessPolicy::Open,
        }
    }

    #[test]
    fn a_signed_record_round_trips_and_verifies() {
        let id = Identity::generate();
        let record = sample_record("lo://acme/rooms/lobby", 3);
        let signed = Signed::sign(&record, &id);
        assert!(signed.signature_valid());
        let again = Signed::<ObjectRecord>::from_bytes(&signed.to_bytes()).unwrap();
        assert!(again.signature_valid());
        assert_eq!(again.open().unwrap(), record);
    }

    #[test]
    fn a_record_signature_does_not_verify_as_a_delegation() {
        let id = Identity::generate();
        let signed = Signed::sign(&sample_record("lo://acme/x", 1), &id);
        let as_delegation =
            Signed::<Delegation>::from_parts(signed.body, signed.signer, signed.signature);
        assert!(!as_delegation.signature_valid());
    }

    #[test]
    fn any_flipped_body_byte_breaks_the_signature() {
        let id = Identity::generate();
        let signed = Signed::sign(&sample_record("lo://acme/x", 1), &id);
        for i in 0..signed.body.len() {
            let mut bad = signed.clone();
            bad.body[i] ^= 0x01;
            assert!(!bad.signature_valid(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn policies_parse_from_the_command_line_form() {
        let id = Identity::generate();
        assert_eq!("open".parse::<AccessPolicy>().unwrap(), AccessPolicy::Open);
        let p: AccessPolicy = format!("keys:{}", id.public()).parse().unwrap();
        assert_eq!(p, AccessPolicy::Keys(vec![id.public()]));
        assert!("keys:".parse::<AccessPolicy>().is_err());
        assert!("everyone".parse::<AccessPolicy>().is_err());
        assert_eq!(p.to_string().parse::<AccessPolicy>().unwrap(), p);
    }

    #[test]
    fn invalid_fields_are_refused_after_decoding() {
        let id = Identity::generate();
        let mut record = sample_record("lo://acme/folder/", 1);
        assert!(Signed::sign(&record, &id).open().is_err());
        record.name = "lo://acme/x".into();
        record.expires_at = 10;
        assert!(Signed::sign(&record, &id).open().is_err());
    }
}
