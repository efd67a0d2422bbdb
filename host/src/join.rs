//! The join protocol: from a name to a live replica.
//!
//! 1. Resolve the name through the directory and verify the record's signature chain
//!    and freshness ([`Resolver`]).
//! 2. Check the type: the driver must provide what the object needs, and the record
//!    must provide what the joiner requires (`--require total-order,encrypted`).
//! 3. Fetch the logic by hash, verify it, compile it (the runtime caches compiled
//!    code by hash).
//! 4. Authenticate: our key must satisfy the record's access policy (open, a list of
//!    keys, or a grant signed by the named issuer). Members enforce the same policy on
//!    our join request, so a refused joiner learns nothing of the state.
//! 5. State transfer and live events. mesh: join the group through one of the
//!    record's seed members (the mesh core transfers a snapshot at a cut and then
//!    every later event, exactly once); if no seed answers and `found_if_alone` is
//!    set, start the group. qsm: ask the domain's membership service (named in the
//!    record), which admits the host under the same policy, then take a snapshot
//!    from an older member at a cut (see `crate::qsm::core`). vsync: ask a seed
//!    (the leader admits the host under the same policy; it catches up from the
//!    log or a snapshot at a view boundary), resume from disk (a durable member
//!    restarting), or found the group (see `crate::vsync`).

use crate::group::{Admission, GroupError};
use crate::mesh::group::{GroupHandle, MeshNode};
use crate::mesh::net::Peer;
use crate::qsm::driver::{QsmHandle, QsmNode};
use crate::runtime::{AggregateLogic, LoadError, Logic, Runtime};
use liveobjects_directory::client::{ResolveError, Resolver};
use liveobjects_directory::keys::PublicKey;
use liveobjects_directory::record::{Category, Grant, ObjectRecord, Reliability, Security, Signed};
use liveobjects_directory::verify::VerifiedRecord;
use std::time::{Duration, Instant};

pub use crate::driver::{DRIVERS, DriverInfo, driver};

/// Aspects a joiner insists on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// At least this reliability.
    pub reliability: Option<Reliability>,
    /// At least this security.
    pub security: Option<Security>,
    /// Exactly this category.
    pub category: Option<Category>,
    /// Exactly this interface.
    pub interface: Option<String>,
}

impl std::str::FromStr for Requirements {
    type Err = String;

    /// `total-order,encrypted,replicated-state,interface=liveobjects:chat/chat@0.1.0`
    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = Requirements::default();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some(i) = token.strip_prefix("interface=") {
                r.interface = Some(i.to_string());
            } else if let Ok(x) = token.parse::<Reliability>() {
                r.reliability = Some(x);
            } else if let Ok(x) = token.parse::<Security>() {
                r.security = Some(x);
            } else if let Ok(x) = token.parse::<Category>() {
                r.category = Some(x);
            } else {
                return Err(format!(
                    "`{token}` is not an aspect: use a reliability ({}), a security ({}), \
                     a category ({}) or interface=NAME",
                    names(Reliability::ALL),
                    names(Security::ALL),
                    names(Category::ALL)
                ));
            }
        }
        Ok(r)
    }
}

fn names<T: std::fmt::Display>(all: &[T]) -> String {
    all.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a join failed. Nothing is left running after a failed join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The name did not resolve to a verified record (or its logic did not verify).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The record's type does not fit.
    #[error("cannot join {name}: {reason}")]
    Type {
        /// The object.
        name: String,
        /// The mismatch.
        reason: String,
    },
    /// Our key does not satisfy the object's access policy.
    #[error("not allowed to join {name}: {reason}")]
    NotAllowed {
        /// The object.
        name: String,
        /// Why.
        reason: String,
    },
    /// The logic is not a valid object.
    #[error(transparent)]
    Logic(#[from] LoadError),
    /// Starting the replica failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The join did not finish in time.
    #[error("joining {name} did not finish within {after:?}; is its membership service running?")]
    Timeout {
        /// The object.
        name: String,
        /// How long it waited.
        after: Duration,
    },
    /// A member refused to give this host the object's state.
    #[error("joining {name} was refused by its members: {reason}")]
    Refused {
        /// The object.
        name: String,
        /// Why, as the member said.
        reason: String,
    },
    /// No member answered and we may not start the group.
    #[error("no member of {name} answered (tried {tried}); is any host running it?")]
    NoMembers {
        /// The object.
        name: String,
        /// Seeds tried.
        tried: usize,
    },
}

/// Check a record's type against the driver and the joiner's requirements.
pub fn check_type(record: &ObjectRecord, require: &Requirements) -> Result<(), String> {
    let t = &record.object_type;
    let Some(d) = driver(&record.driver.name) else {
        let available: Vec<&str> = DRIVERS.iter().map(|d| d.name).collect();
        return Err(format!(
            "its driver is `{}`, which this host does not provide (available: {})",
            record.driver.name,
            available.join(", ")
        ));
    };
    if !d.categories.contains(&t.category) {
        let fitting: Vec<&str> = DRIVERS
            .iter()
            .filter(|other| other.categories.contains(&t.category))
            .map(|other| other.name)
            .collect();
        return Err(format!(
            "it is a {} object, which the {} driver does not run (drivers for it: {})",
            t.category,
            d.name,
            if fitting.is_empty() {
                "none yet".to_string()
            } else {
                fitting.join(", ")
            }
        ));
    }
    if t.reliability > d.reliability {
        return Err(format!(
            "it needs {} delivery but the {} driver provides {}",
            t.reliability, d.name, d.reliability
        ));
    }
    if t.security > d.security {
        return Err(format!(
            "it needs {} security but the {} driver provides {}",
            t.security, d.name, d.security
        ));
    }
    if let Some(r) = require.reliability
        && t.reliability < r
    {
        return Err(format!(
            "you require {r}, but the object offers {}",
            t.reliability
        ));
    }
    if let Some(s) = require.security
        && t.security < s
    {
        return Err(format!(
            "you require {s}, but the object offers {}",
            t.security
        ));
    }
    if let Some(c) = require.category
        && t.category != c
    {
        return Err(format!(
            "you require a {c}, but the object is a {}",
            t.category
        ));
    }
    if let Some(i) = &require.interface
        && &t.interface != i
    {
        return Err(format!(
            "you require interface {i}, but the object exports {}",
            t.interface
        ));
    }
    (d.check_options)(record)?;
    crate::executor::Budgets::default().with_overrides(&record.driver.options)?;
    Ok(())
}

/// The qsm membership service a record names (`--driver-opt membership=KEY@ADDR`).
pub fn membership_of(record: &ObjectRecord) -> Result<Peer, String> {
    let option = record.driver.options.get("membership").ok_or_else(|| {
        "a qsm record must name its membership service: \
         --driver-opt membership=KEY@ADDR (printed by `lo qsm-membership`)"
            .to_string()
    })?;
    let (key, addr) = option
        .split_once('@')
        .ok_or_else(|| format!("membership `{option}` is not KEY@ADDR"))?;
    Ok(Peer::new(
        key.parse()
            .map_err(|e| format!("membership `{option}`: {e}"))?,
        addr.parse()
            .map_err(|e| format!("membership `{option}`: bad address: {e}"))?,
    ))
}

/// The seed members listed in a record's driver options (`seeds=KEY@ADDR,...`).
pub fn seeds(record: &ObjectRecord) -> Vec<Peer> {
    record
        .driver
        .options
        .get("seeds")
        .map(|list| {
            list.split(',')
                .filter_map(|s| {
                    let (key, addr) = s.trim().split_once('@')?;
                    Some(Peer::new(key.parse().ok()?, addr.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How to join.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// Aspects the record must provide.
    pub require: Requirements,
    /// Our grant, for `grants:` policies.
    pub grant: Option<Signed<Grant>>,
    /// Start the group if no seed answers.
    pub found_if_alone: bool,
    /// How long to wait for each seed.
    pub seed_timeout: Option<Duration>,
    /// Members to try after the record's seeds (e.g. found by gossip).
    pub extra_seeds: Vec<Peer>,
}

/// Resolve a gossip aggregate by name: verify its record, check it is a
/// `gossip-aggregate` object on a driver that runs it, fetch and verify its logic,
/// and load it.
pub async fn resolve_aggregate(
    runtime: &Runtime,
    resolver: &Resolver,
    name: &str,
) -> Result<(std::sync::Arc<AggregateLogic>, VerifiedRecord), JoinError> {
    let verified = resolver.resolve(name).await?;
    let require = Requirements {
        category: Some(Category::GossipAggregate),
        ..Requirements::default()
    };
    check_type(&verified.record, &require).map_err(|reason| JoinError::Type {
        name: name.to_string(),
        reason,
    })?;
    let bytes = resolver.fetch_logic(&verified).await?;
    let logic = runtime.load_aggregate_bytes(name, &bytes)?;
    Ok((logic, verified))
}

/// A record resolved, checked and authorized, with its logic loaded: what every
/// driver's join starts from.
pub struct Prepared {
    /// The verified record.
    pub verified: VerifiedRecord,
    /// The object's logic, compiled.
    pub logic: PreparedLogic,
}

/// An object's compiled logic, by the world it implements.
pub enum PreparedLogic {
    /// A replicated object (`world object`).
    Replica(std::sync::Arc<Logic>),
    /// A gossip aggregate (`world aggregate-object`).
    Aggregate(std::sync::Arc<AggregateLogic>),
}

impl Prepared {
    /// The logic of a replicated object, or why `name` is not one.
    pub fn replica_logic(&self, name: &str) -> Result<&std::sync::Arc<Logic>, JoinError> {
        match &self.logic {
            PreparedLogic::Replica(logic) => Ok(logic),
            PreparedLogic::Aggregate(_) => Err(JoinError::Type {
                name: name.to_string(),
                reason: "it is a gossip aggregate, which only the gossip driver runs".into(),
            }),
        }
    }

    /// The logic of a gossip aggregate, or why `name` is not one.
    pub fn aggregate_logic(
        &self,
        name: &str,
    ) -> Result<&std::sync::Arc<AggregateLogic>, JoinError> {
        match &self.logic {
            PreparedLogic::Aggregate(logic) => Ok(logic),
            PreparedLogic::Replica(_) => Err(JoinError::Type {
                name: name.to_string(),
                reason: "it is not a gossip aggregate".into(),
            }),
        }
    }
}

/// Steps 1-4 of a join by `me`: resolve and verify `name`, check its type, check
/// that `me` satisfies its policy, fetch and load its logic.
pub async fn prepare(
    runtime: &Runtime,
    resolver: &Resolver,
    name: &str,
    me: PublicKey,
    options: &JoinOptions,
) -> Result<Prepared, JoinError> {
    let verified = resolver.resolve(name).await?;
    let record = &verified.record;
    check_type(record, &options.require).map_err(|reason| JoinError::Type {
        name: name.to_string(),
        reason,
    })?;
    Grant::check(
        &record.policy,
        name,
        me,
        options.grant.as_ref(),
        liveobjects_directory::server::unix_now(),
    )
    .map_err(|reason| JoinError::NotAllowed {
        name: name.to_string(),
        reason,
    })?;
    let bytes = resolver.fetch_logic(&verified).await?;
    let logic = if verified.record.object_type.category == Category::GossipAggregate {
        PreparedLogic::Aggregate(runtime.load_aggregate_bytes(name, &bytes)?)
    } else {
        PreparedLogic::Replica(runtime.load_bytes(name, &bytes)?)
    };
    Ok(Prepared { verified, logic })
}

/// The budgets `name` runs under on this node: the executor's defaults with the
/// record's `budget.*` driver options applied (see
/// [`Budgets::with_overrides`](crate::executor::Budgets::with_overrides)).
pub fn budgets_for(
    runtime: &Runtime,
    name: &str,
    record: &ObjectRecord,
) -> Result<crate::executor::Budgets, JoinError> {
    runtime
        .executor()
        .budgets()
        .with_overrides(&record.driver.options)
        .map_err(|reason| JoinError::Type {
            name: name.to_string(),
            reason,
        })
}

/// The record's `check-every` driver option: compare the replicas' states every
/// this many positions of the order (0: never); `None` if the record does not
/// say (the node's default, [`crate::mesh::node_driver::DEFAULT_CHECK_EVERY`]).
pub fn check_every_option(record: &ObjectRecord) -> Result<Option<u64>, String> {
    record
        .driver
        .options
        .get("check-every")
        .map(|text| {
            text.parse().map_err(|_| {
                format!("driver option check-every={text} is not a whole number of events")
            })
        })
        .transpose()
}

/// How long a qsm join may take (membership, then the snapshot) before it fails.
const QSM_JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Join a prepared qsm object on `qsm`, whose domain must be the one the record
/// names, starting with `evolution`'s logic (newer logic from its source, if any).
pub async fn join_qsm(
    qsm: &QsmNode,
    runtime: &std::sync::Arc<Runtime>,
    name: &str,
    prepared: &Prepared,
    options: &JoinOptions,
    evolution: crate::driver::Evolution,
) -> Result<QsmHandle, JoinError> {
    let wanted = membership_of(&prepared.verified.record).map_err(|reason| JoinError::Type {
        name: name.to_string(),
        reason,
    })?;
    if wanted != qsm.membership() {
        return Err(JoinError::Type {
            name: name.to_string(),
            reason: format!(
                "its qsm domain is served by {}@{}, but this node's is {}@{} \
                 (a node takes part in one qsm domain)",
                wanted.key,
                wanted.addr,
                qsm.membership().key,
                qsm.membership().addr
            ),
        });
    }
    let budgets = budgets_for(runtime, name, &prepared.verified.record)?;
    let joining = qsm.join(
        runtime,
        prepared.replica_logic(name)?,
        &evolution,
        name,
        options.grant.clone(),
        &budgets,
    );
    match tokio::time::timeout(QSM_JOIN_TIMEOUT, joining).await {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(GroupError::Refused { reason, .. })) => Err(JoinError::NotAllowed {
            name: name.to_string(),
            reason,
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            qsm.leave(name).await;
            Err(JoinError::Timeout {
                name: name.to_string(),
                after: QSM_JOIN_TIMEOUT,
            })
        }
    }
}

/// Join `name` on `node`: resolve, check, fetch, authenticate, transfer state.
pub async fn join(
    node: &MeshNode,
    runtime: &Runtime,
    resolver: &Resolver,
    name: &str,
    options: &JoinOptions,
) -> Result<(GroupHandle, VerifiedRecord), JoinError> {
    let prepared = prepare(runtime, resolver, name, node.me().key, options).await?;
    let evolution = crate::driver::Evolution::starting_with(&prepared.verified);
    let group = join_mesh(node, runtime, name, &prepared, options, &evolution).await?;
    Ok((group, prepared.verified))
}

/// Join a prepared mesh object on `node` through its record's seeds (then
/// `options.extra_seeds`), or found it; `evolution` says which version its logic
/// is and where newer versions come from.
pub async fn join_mesh(
    node: &MeshNode,
    runtime: &Runtime,
    name: &str,
    prepared: &Prepared,
    options: &JoinOptions,
    evolution: &crate::driver::Evolution,
) -> Result<GroupHandle, JoinError> {
    let record = &prepared.verified.record;
    if record.driver.name != "mesh" {
        return Err(JoinError::Type {
            name: name.to_string(),
            reason: format!(
                "its driver is {}, and this joins mesh objects only",
                record.driver.name
            ),
        });
    }
    let me = node.me().key;
    let logic = prepared.replica_logic(name)?;
    let admission = Admission {
        policy: record.policy.clone(),
        grant: options.grant.clone(),
    };
    let mut seeds: Vec<Peer> = seeds(record).into_iter().filter(|p| p.key != me).collect();
    for extra in &options.extra_seeds {
        if extra.key != me && !seeds.contains(extra) {
            seeds.push(*extra);
        }
    }
    let budgets = budgets_for(runtime, name, record)?;
    let check_every = check_every_option(record).map_err(|reason| JoinError::Type {
        name: name.to_string(),
        reason,
    })?;
    let wait = options.seed_timeout.unwrap_or(Duration::from_secs(10));
    for seed in &seeds {
        let group = node.join_with(
            runtime,
            logic,
            name,
            *seed,
            admission.clone(),
            &budgets,
            check_every,
            evolution,
        )?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match group.status().await {
                Ok(status) if status.member => return Ok(group),
                Ok(status) => {
                    if let Some(reason) = status.refused {
                        // Every seed leads to the same sequencer: asking the next
                        // one would be refused the same way.
                        node.leave(name).await;
                        return Err(JoinError::Refused {
                            name: name.to_string(),
                            reason,
                        });
                    }
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.leave(name).await;
    }
    if options.found_if_alone {
        let group = node.found_with(
            runtime,
            logic,
            name,
            admission,
            &budgets,
            check_every,
            evolution,
        )?;
        return Ok(group);
    }
    Err(JoinError::NoMembers {
        name: name.to_string(),
        tried: seeds.len(),
    })
}

/// Newer logic for live upgrades, from the node's directory: records verified
/// against the zone chain the directory serves, logic checked against the
/// record's hash and loaded (compiled code is cached by hash).
pub struct DirectoryLogic {
    resolver: std::sync::Arc<Resolver>,
    runtime: std::sync::Arc<Runtime>,
}

impl DirectoryLogic {
    /// A source over `resolver`, loading logic into `runtime`.
    pub fn new(resolver: std::sync::Arc<Resolver>, runtime: std::sync::Arc<Runtime>) -> Self {
        DirectoryLogic { resolver, runtime }
    }

    /// Fetch and load the logic of `verified`, a record of `name`.
    async fn load(
        &self,
        name: &str,
        verified: VerifiedRecord,
    ) -> Result<crate::driver::LogicVersion, crate::driver::LogicError> {
        use crate::driver::LogicError;
        if verified.record.object_type.category == Category::GossipAggregate {
            return Err(LogicError::Refused(format!(
                "version {} of {name} is a gossip aggregate",
                verified.record.version
            )));
        }
        // Bytes that do not match the record's hash came from one server (a
        // mirror): another may have the right ones.
        let bytes = self
            .resolver
            .fetch_logic(&verified)
            .await
            .map_err(|e| LogicError::Unavailable(e.to_string()))?;
        // Whether the bytes are a component is the same everywhere; compiling
        // and linking them may fail on one host alone (its cache, its memory, a
        // host of another version), as `lo publish` loaded them.
        let logic = self.runtime.load_bytes(name, &bytes).map_err(|e| match e {
            LoadError::NotAComponent { .. } => LogicError::Refused(e.to_string()),
            other => LogicError::Unavailable(other.to_string()),
        })?;
        Ok(crate::driver::LogicVersion {
            version: verified.record.version,
            record: crate::driver::record_bytes(&verified),
            driver: verified.record.driver.name.clone(),
            logic,
        })
    }
}

impl crate::driver::LogicSource for DirectoryLogic {
    fn newer<'a>(
        &'a self,
        name: &'a str,
        than: u64,
    ) -> crate::driver::BoxFuture<
        'a,
        Result<Option<crate::driver::LogicVersion>, crate::driver::LogicError>,
    > {
        Box::pin(async move {
            let verified = self
                .resolver
                .resolve_fresh(name)
                .await
                .map_err(|e| crate::driver::LogicError::Unavailable(e.to_string()))?;
            if verified.record.version <= than {
                return Ok(None);
            }
            self.load(name, verified).await.map(Some)
        })
    }

    fn verify<'a>(
        &'a self,
        name: &'a str,
        record: &'a [u8],
    ) -> crate::driver::BoxFuture<'a, Result<crate::driver::LogicVersion, crate::driver::LogicError>>
    {
        Box::pin(self.verify_record(name, record, crate::driver::RecordUse::Upgrade))
    }

    fn verify_in_force<'a>(
        &'a self,
        name: &'a str,
        record: &'a [u8],
    ) -> crate::driver::BoxFuture<'a, Result<crate::driver::LogicVersion, crate::driver::LogicError>>
    {
        Box::pin(self.verify_record(name, record, crate::driver::RecordUse::InForce))
    }
}

impl DirectoryLogic {
    /// [`LogicSource::verify`](crate::driver::LogicSource::verify) and
    /// `verify_in_force`, which differ only for a superseded record.
    async fn verify_record(
        &self,
        name: &str,
        record: &[u8],
        usage: crate::driver::RecordUse,
    ) -> Result<crate::driver::LogicVersion, crate::driver::LogicError> {
        use crate::driver::LogicError;
        let signed: Signed<ObjectRecord> = postcard::from_bytes(record).map_err(|e| {
            LogicError::Refused(format!(
                "the record a member sent ({} bytes) does not decode: {e}",
                record.len()
            ))
        })?;
        // What the directory vouches for now, with every check a resolve
        // makes (freshness, rollback, the chain).
        let current = self
            .resolver
            .resolve_fresh(name)
            .await
            .map_err(|e| LogicError::Unavailable(e.to_string()))?;
        // What the record says and whether its own signature holds are the
        // same at every host: those refuse it everywhere. Whether its signer
        // may sign for the zone depends on the chain a host is served and on
        // its clock (a key rollover's grace period): a host that cannot
        // confirm it waits, then stops, rather than decide alone.
        let proposed = signed.open().map_err(|e| {
            LogicError::Refused(format!("the record a member sent does not open: {e}"))
        })?;
        if proposed.name != name {
            return Err(LogicError::Refused(format!(
                "the record a member sent is {}'s, not {name}'s",
                proposed.name
            )));
        }
        if !signed.signature_valid() {
            return Err(LogicError::Refused(format!(
                "the signature of version {} of {name} does not hold",
                proposed.version
            )));
        }
        let verified =
            if current.signed.body == signed.body && current.signed.signature == signed.signature {
                current
            } else if proposed.version > current.record.version {
                // A lagging server: wait for it (or another) to have it.
                return Err(LogicError::Unavailable(format!(
                    "the directory serves version {} of {name}, not yet the {} ordered",
                    current.record.version, proposed.version
                )));
            } else if usage == crate::driver::RecordUse::InForce {
                // The logic of a state the group ran: its own signature held
                // above; who may sign for the zone now does not matter.
                VerifiedRecord {
                    record: proposed,
                    chain: current.chain,
                    signed,
                }
            } else {
                // Superseded since it was ordered: its signer must still be one
                // the zone's chain (as just verified) lets sign, and it must not
                // have expired.
                let now = liveobjects_directory::server::unix_now();
                let may_sign = match current.chain.delegations.last() {
                    Some(zone) => zone.may_sign(&signed.signer, now),
                    None => signed.signer == self.resolver.root(),
                };
                if !may_sign || proposed.expires_at <= now {
                    return Err(LogicError::Unavailable(format!(
                        "version {} of {name} is superseded by version {} and its signer may \
                     no longer sign for the zone, or it expired",
                        proposed.version, current.record.version
                    )));
                }
                VerifiedRecord {
                    record: proposed,
                    chain: current.chain,
                    signed,
                }
            };
        self.load(name, verified).await
    }
}
