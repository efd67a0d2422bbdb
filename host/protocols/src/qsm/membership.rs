//! The qsm membership service (QSM's GMS) as a sans-IO state machine.
//!
//! One [`Membership`] runs per qsm domain. Hosts register with it over a reliable,
//! authenticated channel (QUIC in the shell), ask it to join and leave objects, and
//! heartbeat. It decides, in batches (one every [`MembershipConfig::batch_interval`],
//! so a burst of joins costs one reconfiguration):
//!
//! - **Object views**: each object's members, with a view id that grows on every
//!   change.
//! - **Regions**: hosts that joined exactly the same set of objects form a region.
//!   A region has one multicast address (kept while its set exists) and a series
//!   of immutable *region views*: every change of its members makes a new view with
//!   a new id and a new master secret, and retires the old one. Senders keep one
//!   stream per region view they send to, so a host in 10,000 objects but one
//!   region runs one receive protocol.
//! - **Routes**: for each object, the region views that together hold its members,
//!   with this host's stream key for each.
//! - **Failures**: a host not heard from within
//!   [`MembershipConfig::heartbeat_timeout`] is removed from every object and
//!   region, which the next batch announces.
//! - **Upgrades**: a member asks for one ([`ToMembership::Upgrade`]); the service
//!   makes a view of the object with the same members that starts the next logic
//!   epoch and carries the member's opaque request ([`Route::upgrade`]). That view
//!   changes nothing else: an upgrade asked for in a batch that also adds or
//!   removes a member of the object waits for the next batch, so members flush at
//!   a view every one of them was in before. A request made in an epoch the
//!   object has left (an upgrade was ordered since) is ignored, so members may
//!   ask at once; whether a version is newer is for the members to judge, since
//!   only they verify it.
//!
//! Every host affected by a batch receives one [`Update`] with all that changed for
//! it, so it applies each batch atomically. Authorization of joins (the object's
//! access policy) is the shell's job before it calls [`Membership::join`].

use super::wire::{HostNum, KeyUse, ObjectNum, RegionId, derive_key};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Microseconds on the caller's monotonic clock.
pub type Micros = u64;

/// Longest object name the service accepts.
pub const MAX_OBJECT_NAME: usize = 512;
/// Most objects one host may join.
pub const MAX_OBJECTS_PER_HOST: usize = 100_000;
/// Largest upgrade request the service carries (a signed record fits many times).
pub const MAX_UPGRADE_BYTES: usize = 256 * 1024;

/// Settings of a qsm domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembershipConfig {
    /// The domain's number (in every datagram header).
    pub domain: u32,
    /// Hosts per repair ring (QSM used about 25).
    pub ring_size: usize,
    /// How often hosts heartbeat.
    pub heartbeat_interval: Micros,
    /// A host silent this long is declared failed.
    pub heartbeat_timeout: Micros,
    /// Changes are applied in batches this far apart.
    pub batch_interval: Micros,
    /// UDP port of every region's multicast address.
    pub group_port: u16,
    /// First IPv4 multicast address of the pool (regions get consecutive ones).
    pub group_v4: Ipv4Addr,
    /// First IPv6 multicast address of the pool.
    pub group_v6: Ipv6Addr,
    /// Addresses in the pool (beyond it regions share addresses; receivers filter
    /// by region id, so sharing costs bandwidth, not correctness).
    pub pool_size: u32,
    /// Use the overlay (unicast fan-out tree) for every region, multicast or not.
    pub force_overlay: bool,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            domain: 1,
            ring_size: 25,
            heartbeat_interval: 250_000,
            heartbeat_timeout: 2_000_000,
            batch_interval: 20_000,
            group_port: 47_600,
            group_v4: Ipv4Addr::new(239, 255, 76, 0),
            group_v6: "ff15::4c4f:0".parse().expect("valid address"),
            pool_size: 4096,
            force_overlay: false,
        }
    }
}

/// What a host sends to the membership service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMembership {
    /// Register (first message on a channel).
    Hello {
        /// Where the host receives unicast qsm datagrams.
        data_addr: SocketAddr,
        /// Whether it can receive IP multicast.
        multicast: bool,
    },
    /// Join an object by name (already authorized by the shell).
    Join {
        /// The object's name.
        object: String,
    },
    /// Leave an object.
    Leave {
        /// The object's name.
        object: String,
    },
    /// Start the object's next logic epoch (a live upgrade) at a view of its own.
    /// Only a member may ask; a request made in an earlier epoch than the
    /// object's is ignored.
    Upgrade {
        /// The object's name.
        object: String,
        /// The newest logic epoch the asker knows of.
        epoch: u64,
        /// What the upgrade is to (a record version number, growing).
        version: u64,
        /// What members need to perform it (opaque here: the shell's record).
        request: Vec<u8>,
    },
    /// I am alive.
    Heartbeat,
}

/// A host as other hosts need to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo<Id> {
    /// Its number in the domain.
    pub num: HostNum,
    /// Its identity (key and control address in the shell).
    pub id: Id,
    /// Where it receives unicast datagrams.
    pub data_addr: SocketAddr,
}

/// The region view a host belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// Region view id.
    pub id: RegionId,
    /// Members, in the order rings are cut from.
    pub members: Vec<HostNum>,
    /// Its multicast address and port.
    pub group: SocketAddr,
    /// Whether it uses the overlay instead of multicast.
    pub overlay: bool,
    /// The region's master secret (members only).
    pub master: [u8; 32],
}

/// One region view an object's events must reach, as its senders need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRoute {
    /// Region view id.
    pub id: RegionId,
    /// Multicast address and port.
    pub group: SocketAddr,
    /// Whether it uses the overlay.
    pub overlay: bool,
    /// Its members (the overlay tree is cut from them).
    pub members: Vec<HostNum>,
    /// The key of this host's stream into it.
    pub stream_key: [u8; 32],
}

/// An object's membership view and where its events go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Its number in the domain.
    pub object: ObjectNum,
    /// Its name.
    pub name: String,
    /// Membership view id (grows when members change).
    pub view: u64,
    /// Members, oldest first, each with the view it joined in.
    pub members: Vec<(HostNum, u64)>,
    /// The region views holding its members.
    pub regions: Vec<RegionRoute>,
    /// The object's logic epoch: how many upgrade views it has had.
    pub epoch: u64,
    /// Set on the view that starts `epoch` (an upgrade view, whose members are
    /// those of the view before): the version and request a member asked for.
    pub upgrade: Option<(u64, Vec<u8>)>,
}

/// Everything one batch changed for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update<Id> {
    /// Hosts it may need to talk to or name (new or changed).
    pub hosts: Vec<HostInfo<Id>>,
    /// Hosts that failed or left the domain.
    pub gone: Vec<HostNum>,
    /// Its region view, if that changed (`None` inside: it is in no region now).
    pub region: Option<Option<RegionInfo>>,
    /// Objects it is a member of whose view or regions changed.
    pub routes: Vec<Route>,
    /// Objects it is no longer a member of.
    pub removed: Vec<ObjectNum>,
    /// Region views retired in this batch.
    pub retired: Vec<RegionId>,
}

impl<Id> Default for Update<Id> {
    fn default() -> Self {
        Update {
            hosts: Vec::new(),
            gone: Vec::new(),
            region: None,
            routes: Vec::new(),
            removed: Vec::new(),
            retired: Vec::new(),
        }
    }
}

/// What the membership service sends to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromMembership<Id> {
    /// Registered: the host's number and the domain's settings.
    Welcome {
        /// The host's number.
        host: HostNum,
        /// The domain's settings.
        config: MembershipConfig,
    },
    /// A batch of changes.
    Update(Update<Id>),
    /// A join was refused.
    JoinRefused {
        /// The object's name.
        object: String,
        /// Why.
        reason: String,
    },
    /// The host was declared failed (it must register again).
    Excluded,
}

struct HostEntry<Id> {
    id: Id,
    data_addr: SocketAddr,
    multicast: bool,
    objects: BTreeSet<ObjectNum>,
    last_heard: Micros,
}

struct ObjectEntry {
    name: String,
    view: u64,
    /// (member, view it joined in), oldest first.
    members: Vec<(HostNum, u64)>,
    /// Upgrade views so far.
    epoch: u64,
    /// The upgrade this batch's view carries.
    upgrading: Option<(u64, Vec<u8>)>,
}

impl ObjectEntry {
    fn has(&self, host: HostNum) -> bool {
        self.members.iter().any(|(m, _)| *m == host)
    }

    fn remove(&mut self, host: HostNum) {
        self.members.retain(|(m, _)| *m != host);
    }
}

struct RegionEntry {
    view: RegionId,
    members: Vec<HostNum>,
    slot: u32,
    overlay: bool,
    master: [u8; 32],
}

enum Request {
    Join(HostNum, String),
    Leave(HostNum, String),
    Fail(HostNum),
    Upgrade(HostNum, String, u64, u64, Vec<u8>),
}

/// Counters for status displays and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipStats {
    /// Registered live hosts.
    pub hosts: usize,
    /// Objects with members.
    pub objects: usize,
    /// Current region views.
    pub regions: usize,
    /// Batches applied.
    pub batches: u64,
    /// Hosts declared failed.
    pub failures: u64,
}

/// The membership service of one qsm domain.
pub struct Membership<Id> {
    config: MembershipConfig,
    rng: StdRng,
    next_host: HostNum,
    next_object: ObjectNum,
    next_region: RegionId,
    hosts: BTreeMap<HostNum, HostEntry<Id>>,
    by_id: HashMap<Id, HostNum>,
    objects: BTreeMap<ObjectNum, ObjectEntry>,
    by_name: HashMap<String, ObjectNum>,
    /// Current region per object set.
    regions: HashMap<Vec<ObjectNum>, RegionEntry>,
    /// Hosts per object set.
    set_members: HashMap<Vec<ObjectNum>, BTreeSet<HostNum>>,
    /// Object -> the sets (regions) that contain it.
    sets_of: HashMap<ObjectNum, BTreeSet<Vec<ObjectNum>>>,
    free_slots: BTreeSet<u32>,
    next_slot: u32,
    pending: Vec<Request>,
    last_batch: Micros,
    outbox: VecDeque<(Id, FromMembership<Id>)>,
    stats: MembershipStats,
}

impl<Id: Clone + std::fmt::Debug + Ord + std::hash::Hash> Membership<Id> {
    /// A service with no hosts. `seed` feeds the generator of region secrets (from
    /// the OS in the shell, fixed in simulations).
    pub fn new(config: MembershipConfig, seed: [u8; 32], now: Micros) -> Self {
        Membership {
            config,
            rng: StdRng::from_seed(seed),
            next_host: 1,
            next_object: 1,
            next_region: 1,
            hosts: BTreeMap::new(),
            by_id: HashMap::new(),
            objects: BTreeMap::new(),
            by_name: HashMap::new(),
            regions: HashMap::new(),
            set_members: HashMap::new(),
            sets_of: HashMap::new(),
            free_slots: BTreeSet::new(),
            next_slot: 0,
            pending: Vec::new(),
            last_batch: now,
            outbox: VecDeque::new(),
            stats: MembershipStats::default(),
        }
    }

    /// The domain's settings.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> MembershipStats {
        MembershipStats {
            hosts: self.hosts.len(),
            objects: self.objects.len(),
            regions: self.regions.len(),
            ..self.stats.clone()
        }
    }

    /// The host number of `id`, if registered.
    pub fn host_of(&self, id: &Id) -> Option<HostNum> {
        self.by_id.get(id).copied()
    }

    /// The identity of host `num`.
    pub fn id_of(&self, num: HostNum) -> Option<&Id> {
        self.hosts.get(&num).map(|h| &h.id)
    }

    /// Members of the object called `name`, if it has any.
    pub fn members_of(&self, name: &str) -> Option<Vec<HostNum>> {
        let num = self.by_name.get(name)?;
        Some(self.objects[num].members.iter().map(|(m, _)| *m).collect())
    }

    /// A message from the host `id` (authenticated by the shell).
    pub fn handle(&mut self, now: Micros, id: &Id, message: ToMembership) {
        match message {
            ToMembership::Hello {
                data_addr,
                multicast,
            } => self.hello(now, id, data_addr, multicast),
            other => {
                let Some(host) = self.by_id.get(id).copied() else {
                    tracing::debug!("{id:?} is not registered; ignoring {other:?}");
                    return;
                };
                self.hosts.get_mut(&host).expect("indexed").last_heard = now;
                match other {
                    ToMembership::Join { object } => self.join(host, object),
                    ToMembership::Leave { object } => {
                        self.pending.push(Request::Leave(host, object));
                    }
                    ToMembership::Upgrade {
                        object,
                        epoch,
                        version,
                        request,
                    } => {
                        if request.len() > MAX_UPGRADE_BYTES {
                            tracing::debug!(
                                "host {host} asked to upgrade {object} with {} bytes, over {MAX_UPGRADE_BYTES}; ignored",
                                request.len()
                            );
                        } else {
                            self.pending
                                .push(Request::Upgrade(host, object, epoch, version, request));
                        }
                    }
                    ToMembership::Heartbeat | ToMembership::Hello { .. } => {}
                }
            }
        }
    }

    fn hello(&mut self, now: Micros, id: &Id, data_addr: SocketAddr, multicast: bool) {
        // A host that registers again restarted: its old incarnation is gone now.
        if let Some(old) = self.by_id.remove(id) {
            self.pending.push(Request::Fail(old));
        }
        let num = self.next_host;
        self.next_host += 1;
        self.hosts.insert(
            num,
            HostEntry {
                id: id.clone(),
                data_addr,
                multicast,
                objects: BTreeSet::new(),
                last_heard: now,
            },
        );
        self.by_id.insert(id.clone(), num);
        self.outbox.push_back((
            id.clone(),
            FromMembership::Welcome {
                host: num,
                config: self.config.clone(),
            },
        ));
    }

    fn join(&mut self, host: HostNum, object: String) {
        let refuse = if object.is_empty() || object.len() > MAX_OBJECT_NAME {
            Some(format!(
                "object names must be 1 to {MAX_OBJECT_NAME} bytes long"
            ))
        } else if self.hosts[&host].objects.len() >= MAX_OBJECTS_PER_HOST {
            Some(format!(
                "a host may join at most {MAX_OBJECTS_PER_HOST} objects"
            ))
        } else {
            None
        };
        match refuse {
            Some(reason) => {
                let id = self.hosts[&host].id.clone();
                self.outbox
                    .push_back((id, FromMembership::JoinRefused { object, reason }))
            }
            None => self.pending.push(Request::Join(host, object)),
        }
    }

    /// The next message to send, and to which host.
    pub fn poll_transmit(&mut self) -> Option<(Id, FromMembership<Id>)> {
        self.outbox.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Micros {
        self.last_batch + self.config.batch_interval
    }

    /// Time passed: declare silent hosts failed and apply pending changes.
    pub fn handle_timeout(&mut self, now: Micros) {
        let timeout = self.config.heartbeat_timeout;
        let silent: Vec<HostNum> = self
            .hosts
            .iter()
            .filter(|(_, h)| now.saturating_sub(h.last_heard) > timeout)
            .map(|(n, _)| *n)
            .collect();
        for host in silent {
            tracing::info!("qsm membership: host {host} silent for {timeout} us; removing it");
            self.pending.push(Request::Fail(host));
        }
        if now >= self.last_batch + self.config.batch_interval {
            self.last_batch = now;
            if !self.pending.is_empty() {
                self.apply();
            }
        }
    }

    /// The host `id` disconnected or is known dead: remove it at the next batch.
    pub fn host_failed(&mut self, id: &Id) {
        if let Some(host) = self.by_id.get(id).copied() {
            self.pending.push(Request::Fail(host));
        }
    }

    fn apply(&mut self) {
        self.stats.batches += 1;
        let mut old_sets: BTreeMap<HostNum, Vec<ObjectNum>> = BTreeMap::new();
        let mut changed_objects: BTreeSet<ObjectNum> = BTreeSet::new();
        let mut removed: BTreeMap<HostNum, Vec<ObjectNum>> = BTreeMap::new();
        let mut gone: Vec<HostNum> = Vec::new();
        let mut gone_sets: Vec<Vec<ObjectNum>> = Vec::new();
        let mut upgrades = Vec::new();
        for request in std::mem::take(&mut self.pending) {
            match request {
                Request::Upgrade(host, name, epoch, version, bytes) => {
                    upgrades.push((host, name, epoch, version, bytes));
                }
                Request::Join(host, name) => {
                    let Some(entry) = self.hosts.get(&host) else {
                        continue;
                    };
                    let object = match self.by_name.get(&name) {
                        Some(o) => *o,
                        None => {
                            let o = self.next_object;
                            self.next_object += 1;
                            self.by_name.insert(name.clone(), o);
                            self.objects.insert(
                                o,
                                ObjectEntry {
                                    name,
                                    view: 0,
                                    members: Vec::new(),
                                    epoch: 0,
                                    upgrading: None,
                                },
                            );
                            o
                        }
                    };
                    if entry.objects.contains(&object) {
                        continue;
                    }
                    old_sets
                        .entry(host)
                        .or_insert_with(|| entry.objects.iter().copied().collect());
                    self.hosts
                        .get_mut(&host)
                        .expect("checked")
                        .objects
                        .insert(object);
                    let o = self.objects.get_mut(&object).expect("inserted");
                    // This batch makes the object's next view.
                    if !o.has(host) {
                        o.members.push((host, o.view + 1));
                    }
                    changed_objects.insert(object);
                }
                Request::Leave(host, name) => {
                    let (Some(entry), Some(&object)) =
                        (self.hosts.get(&host), self.by_name.get(&name))
                    else {
                        continue;
                    };
                    if !entry.objects.contains(&object) {
                        continue;
                    }
                    old_sets
                        .entry(host)
                        .or_insert_with(|| entry.objects.iter().copied().collect());
                    self.hosts
                        .get_mut(&host)
                        .expect("checked")
                        .objects
                        .remove(&object);
                    self.objects.get_mut(&object).expect("indexed").remove(host);
                    changed_objects.insert(object);
                    removed.entry(host).or_default().push(object);
                }
                Request::Fail(host) => {
                    let Some(entry) = self.hosts.remove(&host) else {
                        continue;
                    };
                    self.stats.failures += 1;
                    if self.by_id.get(&entry.id) == Some(&host) {
                        self.by_id.remove(&entry.id);
                    }
                    let set = old_sets
                        .remove(&host)
                        .unwrap_or_else(|| entry.objects.iter().copied().collect());
                    for object in &entry.objects {
                        if let Some(o) = self.objects.get_mut(object) {
                            o.remove(host);
                            changed_objects.insert(*object);
                        }
                    }
                    if let Some(members) = self.set_members.get_mut(&set) {
                        members.remove(&host);
                    }
                    gone_sets.push(set);
                    gone.push(host);
                    self.outbox
                        .push_back((entry.id.clone(), FromMembership::Excluded));
                }
            }
        }

        // Upgrade views: of objects whose members this batch leaves alone (the others
        // wait for the next batch), one per object and batch.
        let members_changed = changed_objects.clone();
        for (host, name, epoch, version, bytes) in upgrades {
            let Some(&object) = self.by_name.get(&name) else {
                continue;
            };
            let entry = self.objects.get_mut(&object).expect("indexed");
            if !entry.has(host) || epoch != entry.epoch {
                continue;
            }
            if members_changed.contains(&object) || entry.upgrading.is_some() {
                self.pending
                    .push(Request::Upgrade(host, name, epoch, version, bytes));
                continue;
            }
            entry.epoch += 1;
            entry.upgrading = Some((version, bytes));
            changed_objects.insert(object);
        }

        // Move hosts between sets, and collect the sets whose regions change.
        let mut touched_sets: BTreeSet<Vec<ObjectNum>> = gone_sets.into_iter().collect();
        for (host, old) in &old_sets {
            let Some(entry) = self.hosts.get(host) else {
                continue;
            };
            let new: Vec<ObjectNum> = entry.objects.iter().copied().collect();
            if &new == old {
                continue;
            }
            if let Some(m) = self.set_members.get_mut(old) {
                m.remove(host);
            }
            self.set_members
                .entry(new.clone())
                .or_default()
                .insert(*host);
            touched_sets.insert(old.clone());
            touched_sets.insert(new);
        }
        touched_sets.remove(&Vec::new());

        // New region views for touched sets whose members changed.
        let mut retired: Vec<RegionId> = Vec::new();
        let mut new_region_of_host: BTreeMap<HostNum, Option<RegionInfo>> = BTreeMap::new();
        for set in &touched_sets {
            let members: Vec<HostNum> = self
                .set_members
                .get(set)
                .map(|m| m.iter().copied().collect())
                .unwrap_or_default();
            let old = self.regions.get(set);
            if old.map(|r| &r.members) == Some(&members) {
                continue;
            }
            let old_view = old.map(|r| r.view);
            let old_slot = old.map(|r| r.slot);
            if let Some(v) = old_view {
                retired.push(v);
                for object in set {
                    changed_objects.insert(*object);
                }
            }
            if members.is_empty() {
                self.regions.remove(set);
                self.set_members.remove(set);
                for object in set {
                    if let Some(s) = self.sets_of.get_mut(object) {
                        s.remove(set);
                    }
                }
                if let Some(slot) = old_slot {
                    self.free_slots.insert(slot);
                }
                continue;
            }
            let slot = match old_slot {
                Some(s) => s,
                None => self.allocate_slot(),
            };
            let view = self.next_region;
            self.next_region += 1;
            let mut master = [0u8; 32];
            self.rng.fill_bytes(&mut master);
            let overlay =
                self.config.force_overlay || members.iter().any(|m| !self.hosts[m].multicast);
            for object in set {
                self.sets_of.entry(*object).or_default().insert(set.clone());
                changed_objects.insert(*object);
            }
            let entry = RegionEntry {
                view,
                members: members.clone(),
                slot,
                overlay,
                master,
            };
            let info = self.region_info(&entry);
            for m in &members {
                new_region_of_host.insert(*m, Some(info.clone()));
            }
            self.regions.insert(set.clone(), entry);
        }
        // Hosts that now belong to no region (they left every object).
        for host in old_sets.keys() {
            if let Some(entry) = self.hosts.get(host)
                && entry.objects.is_empty()
            {
                new_region_of_host.insert(*host, None);
            }
        }

        // Object views, and the hosts each update goes to.
        let mut updates: BTreeMap<HostNum, Update<Id>> = BTreeMap::new();
        let mut empty_objects = Vec::new();
        for object in &changed_objects {
            let Some(entry) = self.objects.get_mut(object) else {
                continue;
            };
            entry.view += 1;
            if entry.members.is_empty() {
                empty_objects.push(*object);
                continue;
            }
            let members: Vec<HostNum> = entry.members.iter().map(|(m, _)| *m).collect();
            for m in &members {
                let route = self.route_for(*object, *m);
                updates.entry(*m).or_default().routes.push(route);
            }
            if let Some(entry) = self.objects.get_mut(object) {
                entry.upgrading = None;
            }
        }
        for object in empty_objects {
            if let Some(entry) = self.objects.remove(&object) {
                self.by_name.remove(&entry.name);
            }
            self.sets_of.remove(&object);
        }
        for (host, objects) in removed {
            if self.hosts.contains_key(&host) {
                updates.entry(host).or_default().removed = objects;
            }
        }
        for (host, region) in new_region_of_host {
            if self.hosts.contains_key(&host) {
                updates.entry(host).or_default().region = Some(region);
            }
        }
        for (host, mut update) in updates {
            // Everyone it may hear from or talk to in what changed.
            let mut needed: BTreeSet<HostNum> = BTreeSet::new();
            for route in &update.routes {
                needed.extend(route.members.iter().map(|(m, _)| *m));
                for r in &route.regions {
                    needed.extend(r.members.iter().copied());
                }
            }
            if let Some(Some(region)) = &update.region {
                needed.extend(region.members.iter().copied());
            }
            update.hosts = needed
                .into_iter()
                .filter_map(|n| {
                    self.hosts.get(&n).map(|h| HostInfo {
                        num: n,
                        id: h.id.clone(),
                        data_addr: h.data_addr,
                    })
                })
                .collect();
            update.gone = gone.clone();
            update.retired = retired.clone();
            let id = self.hosts[&host].id.clone();
            self.outbox.push_back((id, FromMembership::Update(update)));
        }
    }

    fn allocate_slot(&mut self) -> u32 {
        if let Some(s) = self.free_slots.pop_first() {
            return s;
        }
        let s = self.next_slot;
        self.next_slot += 1;
        s % self.config.pool_size.max(1)
    }

    fn group_of(&self, slot: u32) -> SocketAddr {
        // Regions on IPv6 hosts get IPv6 groups; the family follows the first
        // member's unicast address (a domain is one family).
        let v6 = self
            .hosts
            .values()
            .next()
            .is_some_and(|h| h.data_addr.is_ipv6());
        let ip: IpAddr = if v6 {
            Ipv6Addr::from(u128::from(self.config.group_v6) + slot as u128).into()
        } else {
            Ipv4Addr::from(u32::from(self.config.group_v4).wrapping_add(slot)).into()
        };
        SocketAddr::new(ip, self.config.group_port)
    }

    fn region_info(&self, entry: &RegionEntry) -> RegionInfo {
        RegionInfo {
            id: entry.view,
            members: entry.members.clone(),
            group: self.group_of(entry.slot),
            overlay: entry.overlay,
            master: entry.master,
        }
    }

    fn route_for(&self, object: ObjectNum, host: HostNum) -> Route {
        let entry = &self.objects[&object];
        let regions = self
            .sets_of
            .get(&object)
            .into_iter()
            .flatten()
            .filter_map(|set| self.regions.get(set))
            .map(|r| RegionRoute {
                id: r.view,
                group: self.group_of(r.slot),
                overlay: r.overlay,
                members: r.members.clone(),
                stream_key: derive_key(&r.master, r.view, KeyUse::Stream(host)),
            })
            .collect();
        Route {
            object,
            name: entry.name.clone(),
            view: entry.view,
            members: entry.members.clone(),
            regions,
            epoch: entry.epoch,
            upgrade: entry.upgrading.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Membership<u32> {
        Membership::new(MembershipConfig::default(), [7; 32], 0)
    }

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16))
    }

    fn register(m: &mut Membership<u32>, ids: &[u32]) -> Vec<HostNum> {
        for id in ids {
            m.handle(
                0,
                id,
                ToMembership::Hello {
                    data_addr: addr(*id),
                    multicast: true,
                },
            );
        }
        let nums = ids.iter().map(|id| m.host_of(id).unwrap()).collect();
        while m.poll_transmit().is_some() {}
        nums
    }

    fn updates(m: &mut Membership<u32>) -> BTreeMap<HostNum, Update<u32>> {
        let mut out = BTreeMap::new();
        while let Some((id, msg)) = m.poll_transmit() {
            if let FromMembership::Update(u) = msg {
                out.insert(m.host_of(&id).unwrap(), u);
            }
        }
        out
    }

    fn join(m: &mut Membership<u32>, id: u32, object: &str) {
        m.handle(
            1,
            &id,
            ToMembership::Join {
                object: object.into(),
            },
        );
    }

    #[test]
    fn hosts_with_the_same_objects_share_one_region() {
        let mut m = service();
        let hosts = register(&mut m, &[1, 2, 3]);
        for id in [1, 2, 3] {
            join(&mut m, id, "a");
            join(&mut m, id, "b");
        }
        join(&mut m, 3, "c");
        m.handle_timeout(50_000);
        let u = updates(&mut m);
        let r1 = u[&hosts[0]].region.clone().unwrap().unwrap();
        let r2 = u[&hosts[1]].region.clone().unwrap().unwrap();
        let r3 = u[&hosts[2]].region.clone().unwrap().unwrap();
        assert_eq!(r1, r2);
        assert_eq!(r1.members, vec![hosts[0], hosts[1]]);
        assert_ne!(r1.id, r3.id);
        assert_ne!(r1.group, r3.group);
        // Object a's route covers both regions; c's only the third host's.
        let route_a = u[&hosts[0]].routes.iter().find(|r| r.name == "a").unwrap();
        assert_eq!(route_a.regions.len(), 2);
        let members: Vec<HostNum> = route_a.members.iter().map(|(m, _)| *m).collect();
        assert_eq!(members, hosts);
        let route_c = u[&hosts[2]].routes.iter().find(|r| r.name == "c").unwrap();
        assert_eq!(route_c.regions.len(), 1);
        assert_eq!(stats_regions(&m), 2);
    }

    fn stats_regions(m: &Membership<u32>) -> usize {
        m.stats().regions
    }

    #[test]
    fn a_join_retires_the_old_region_view_and_keeps_its_address() {
        let mut m = service();
        let hosts = register(&mut m, &[1, 2, 3]);
        for id in [1, 2] {
            join(&mut m, id, "a");
        }
        m.handle_timeout(50_000);
        let first = updates(&mut m)[&hosts[0]].region.clone().unwrap().unwrap();
        join(&mut m, 3, "a");
        m.handle_timeout(100_000);
        let u = updates(&mut m);
        let second = u[&hosts[0]].region.clone().unwrap().unwrap();
        assert_ne!(first.id, second.id);
        assert_ne!(first.master, second.master);
        assert_eq!(first.group, second.group);
        assert_eq!(second.members, hosts);
        assert_eq!(u[&hosts[1]].retired, vec![first.id]);
        assert!(u[&hosts[2]].routes[0].view > 1);
    }

    #[test]
    fn a_silent_host_is_removed_everywhere() {
        let mut m = service();
        let hosts = register(&mut m, &[1, 2]);
        join(&mut m, 1, "a");
        join(&mut m, 2, "a");
        m.handle_timeout(50_000);
        updates(&mut m);
        // Host 1 keeps heartbeating, host 2 falls silent.
        let timeout = m.config().heartbeat_timeout;
        let mut now = 50_000;
        while now < timeout + 200_000 {
            now += 100_000;
            m.handle(now, &1, ToMembership::Heartbeat);
            m.handle_timeout(now);
        }
        let mut excluded = false;
        let mut last = None;
        while let Some((id, msg)) = m.poll_transmit() {
            match msg {
                FromMembership::Excluded => excluded |= id == 2,
                FromMembership::Update(u) if id == 1 => last = Some(u),
                _ => {}
            }
        }
        assert!(excluded);
        let u = last.unwrap();
        assert_eq!(u.gone, vec![hosts[1]]);
        assert_eq!(u.routes[0].members, vec![(hosts[0], 1)]);
        assert_eq!(m.stats().hosts, 1);
    }

    #[test]
    fn stream_keys_differ_per_sender_and_match_the_region_master() {
        let mut m = service();
        let hosts = register(&mut m, &[1, 2]);
        join(&mut m, 1, "a");
        join(&mut m, 2, "a");
        m.handle_timeout(50_000);
        let u = updates(&mut m);
        let region = u[&hosts[0]].region.clone().unwrap().unwrap();
        let k1 = &u[&hosts[0]].routes[0].regions[0].stream_key;
        let k2 = &u[&hosts[1]].routes[0].regions[0].stream_key;
        assert_ne!(k1, k2);
        assert_eq!(
            *k1,
            derive_key(&region.master, region.id, KeyUse::Stream(hosts[0]))
        );
    }

    #[test]
    fn overlong_names_are_refused_with_a_reason() {
        let mut m = service();
        register(&mut m, &[1]);
        join(&mut m, 1, &"x".repeat(MAX_OBJECT_NAME + 1));
        let refused = std::iter::from_fn(|| m.poll_transmit())
            .any(|(_, msg)| matches!(msg, FromMembership::JoinRefused { .. }));
        assert!(refused);
    }

    fn ask_upgrade(m: &mut Membership<u32>, id: u32, epoch: u64, version: u64) {
        m.handle(
            1,
            &id,
            ToMembership::Upgrade {
                object: "a".into(),
                epoch,
                version,
                request: format!("v{version}").into_bytes(),
            },
        );
    }

    #[test]
    fn an_upgrade_is_a_view_of_its_own_that_starts_the_next_epoch() {
        let mut m = service();
        let hosts = register(&mut m, &[1, 2, 3]);
        join(&mut m, 1, "a");
        join(&mut m, 2, "a");
        m.handle_timeout(50_000);
        let first = updates(&mut m)[&hosts[0]].routes[0].clone();
        assert_eq!((first.epoch, first.upgrade.clone()), (0, None));

        // Asked in the batch that adds host 3: it waits for the next batch.
        join(&mut m, 3, "a");
        ask_upgrade(&mut m, 1, 0, 2);
        m.handle_timeout(100_000);
        let joined = updates(&mut m)[&hosts[0]].routes[0].clone();
        assert_eq!(joined.members.len(), 3);
        assert_eq!((joined.epoch, joined.upgrade.clone()), (0, None));
        m.handle_timeout(150_000);
        let u = updates(&mut m);
        assert_eq!(u.len(), 3, "every member hears of the upgrade view");
        let upgrade = u[&hosts[2]].routes[0].clone();
        assert_eq!(upgrade.members, joined.members);
        assert_eq!(upgrade.view, joined.view + 1);
        assert_eq!(upgrade.epoch, 1);
        assert_eq!(upgrade.upgrade, Some((2, b"v2".to_vec())));

        // A request from the epoch before (a repeat by another member) and one
        // from a non-member change nothing.
        ask_upgrade(&mut m, 2, 0, 2);
        ask_upgrade(&mut m, 3, 0, 9);
        m.handle_timeout(200_000);
        assert!(updates(&mut m).is_empty());
        let _outsider = register(&mut m, &[4]);
        ask_upgrade(&mut m, 4, 1, 9);
        m.handle_timeout(250_000);
        assert!(updates(&mut m).is_empty());

        // Two members asking in the same epoch make one upgrade view; the view
        // after it carries none.
        ask_upgrade(&mut m, 3, 1, 3);
        ask_upgrade(&mut m, 2, 1, 4);
        m.handle_timeout(300_000);
        let next = updates(&mut m)[&hosts[0]].routes[0].clone();
        assert_eq!((next.epoch, next.upgrade), (2, Some((3, b"v3".to_vec()))));
        m.handle_timeout(320_000);
        assert!(updates(&mut m).is_empty(), "the second ask is stale now");
        m.handle(330_000, &1, ToMembership::Leave { object: "a".into() });
        m.handle_timeout(350_000);
        let after = updates(&mut m)[&hosts[1]].routes[0].clone();
        assert_eq!((after.epoch, after.upgrade), (2, None));
    }

    #[test]
    fn leaving_every_object_leaves_the_region_and_an_empty_set_frees_its_address() {
        let mut m = service();
        let hosts = register(&mut m, &[1, 2]);
        join(&mut m, 1, "a");
        join(&mut m, 2, "b");
        m.handle_timeout(50_000);
        updates(&mut m);
        m.handle(60_000, &1, ToMembership::Leave { object: "a".into() });
        m.handle_timeout(100_000);
        let u = updates(&mut m);
        assert_eq!(u[&hosts[0]].region, Some(None));
        assert_eq!(u[&hosts[0]].removed.len(), 1);
        assert_eq!(m.stats().regions, 1);
        assert_eq!(m.stats().objects, 1);
    }
}
