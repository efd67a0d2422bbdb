//! A deterministic simulator of a qsm domain: one membership service and many
//! hosts ([`QsmHost`] cores), a network with seeded loss, duplication, latency
//! (hence reordering), partitions and crashes, and at each host a model replica
//! per object that checks every delivery.
//!
//! Every random choice comes from one seed, so a failing run replays exactly.
//! Datagrams are real sealed bytes; the membership service's and the hosts'
//! reliable channels (QUIC in the shell) are modelled as in-order, lossless links
//! with latency that hold messages while a host is partitioned.
//!
//! The model replica of an object keeps, per sender, how many events it applied
//! and a hash chain of them. A delivery out of per-sender order, a duplicate, or a
//! delivery before the replica exists is recorded as a violation; a snapshot whose
//! cut does not match the replica's counts is one too. Replicas that applied the
//! same events of every sender have equal states.
//!
//! Upgrades are modelled too: a replica state has a logic epoch and a count of
//! logic switches, and each event's hash chain link mixes in the epoch it was
//! applied in, so replicas that applied some event in different epochs end with
//! different states. A delivery between an upgrade's cut and its decision is a
//! violation; hosts in [`SimHost::refuses_upgrades`] refuse every upgrade.

use super::core::{Output, PeerMessage, QsmConfig, QsmHost};
use super::membership::{FromMembership, Membership, MembershipConfig, Micros, ToMembership};
use super::wire::{HostNum, ObjectNum};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Network conditions.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Chance that a datagram to one receiver is lost.
    pub loss: f64,
    /// Chance that a datagram to one receiver arrives twice.
    pub duplicate: f64,
    /// Datagram latency range (uniform), in microseconds.
    pub latency: (Micros, Micros),
    /// Reliable-channel latency range.
    pub control_latency: (Micros, Micros),
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            loss: 0.0,
            duplicate: 0.0,
            latency: (100, 2_000),
            control_latency: (200, 3_000),
        }
    }
}

type PerSender = BTreeMap<HostNum, (u64, u64)>;

/// A model replica's state: per sender, events applied and their hash chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelState {
    /// sender -> (events applied, hash chain).
    pub per_sender: BTreeMap<HostNum, (u64, u64)>,
    /// The logic epoch it is in.
    pub epoch: u64,
    /// Upgrades it committed (the "logic version" it runs).
    pub switches: u64,
}

fn mix(h: u64, bytes: &[u8]) -> u64 {
    // FNV-1a over the previous hash and the payload: order-sensitive.
    let mut x = h ^ 0xcbf2_9ce4_8422_2325;
    for b in h.to_le_bytes().iter().chain(bytes) {
        x ^= *b as u64;
        x = x.wrapping_mul(0x0000_0100_0000_01b3);
    }
    x
}

/// One simulated host.
pub struct SimHost {
    /// The protocol core (`None` once crashed).
    pub core: Option<QsmHost<u32>>,
    /// Model replicas by object.
    pub replicas: BTreeMap<ObjectNum, ModelState>,
    /// Names of the objects it is a member of.
    pub names: BTreeMap<ObjectNum, String>,
    /// Events it multicast, per object name.
    pub sent: BTreeMap<String, u64>,
    /// Events waiting for room, per object name (payload sizes).
    pub pending: VecDeque<(String, usize)>,
    /// Delivery credit is returned after this delay (a slow consumer), if set.
    pub slow: Option<Micros>,
    /// Largest number of buffered messages seen.
    pub max_retained: usize,
    /// Whether the membership service excluded it.
    pub excluded: bool,
    /// Its replicas refuse every upgrade (a `migrate` that fails here).
    pub refuses_upgrades: bool,
    /// Objects between an upgrade's cut and its decision.
    pub in_cut: BTreeSet<ObjectNum>,
    scheduled: Micros,
}

/// What went wrong, if anything.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Safety violations (each a sentence).
    pub violations: Vec<String>,
    /// Datagrams sent on the network (per receiver).
    pub datagrams: u64,
    /// Datagrams lost.
    pub lost: u64,
    /// Events delivered in all.
    pub deliveries: u64,
    /// Datagrams sent (per receiver) by kind (the header's kind byte).
    pub by_kind: BTreeMap<u8, u64>,
    /// Joins that started from a member's snapshot.
    pub snapshot_joins: u64,
    /// Joins that started from scratch.
    pub fresh_joins: u64,
    /// Upgrade cuts taken (per host).
    pub upgrade_cuts: u64,
    /// Upgrade decisions that switched logic (per host).
    pub upgrades_committed: u64,
    /// Upgrade decisions that kept it (per host).
    pub upgrades_aborted: u64,
}

enum SimEvent {
    Datagram {
        to: usize,
        bytes: Vec<u8>,
    },
    ToMembership {
        from: usize,
        message: ToMembership,
    },
    FromMembership {
        to: usize,
        message: FromMembership<u32>,
    },
    Peer {
        from: usize,
        to: usize,
        message: PeerMessage,
    },
    Timer {
        host: usize,
    },
    MembershipTimer,
    Credit {
        host: usize,
        object: ObjectNum,
        count: usize,
    },
}

/// The simulated domain.
pub struct Sim {
    /// Simulated time.
    pub now: Micros,
    rng: StdRng,
    /// Network conditions (may change between phases).
    pub net: NetConfig,
    /// Hosts with loss (all if `None`).
    pub lossy: Option<BTreeSet<usize>>,
    /// The membership service.
    pub membership: Membership<u32>,
    /// The hosts, by index.
    pub hosts: Vec<SimHost>,
    qsm: QsmConfig,
    queue: BinaryHeap<Reverse<(Micros, u64)>>,
    events: HashMap<u64, SimEvent>,
    next_event: u64,
    groups: HashMap<SocketAddr, BTreeSet<usize>>,
    addrs: HashMap<SocketAddr, usize>,
    partitioned: BTreeSet<usize>,
    held: Vec<SimEvent>,
    /// Per (from, to) link: when its last reliable message arrives (keeps order).
    link_clock: HashMap<(usize, usize), Micros>,
    membership_scheduled: Micros,
    /// Accumulated findings.
    pub report: SimReport,
    /// Datagrams delivered to these hosts are also copied here (for tests that
    /// tamper with real traffic).
    pub tap: BTreeMap<usize, Vec<Vec<u8>>>,
}

const MEMBERSHIP: usize = usize::MAX;

fn data_addr(i: usize) -> SocketAddr {
    let i = i as u32 + 1;
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)),
        5000,
    )
}

impl Sim {
    /// A domain of `hosts` hosts that have registered (not yet joined anything).
    pub fn new(
        seed: u64,
        hosts: usize,
        membership: MembershipConfig,
        qsm: QsmConfig,
        net: NetConfig,
    ) -> Sim {
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut sim = Sim {
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            net,
            lossy: None,
            membership: Membership::new(membership, seed_bytes, 0),
            hosts: Vec::new(),
            qsm,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            groups: HashMap::new(),
            addrs: HashMap::new(),
            partitioned: BTreeSet::new(),
            held: Vec::new(),
            link_clock: HashMap::new(),
            membership_scheduled: u64::MAX,
            report: SimReport::default(),
            tap: BTreeMap::new(),
        };
        for _ in 0..hosts {
            sim.add_host();
        }
        sim.schedule_membership();
        sim
    }

    /// Start one more host (it registers at once); returns its index.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len();
        let addr = data_addr(i);
        self.addrs.insert(addr, i);
        let core = QsmHost::new(self.qsm.clone(), addr, true, self.now);
        self.hosts.push(SimHost {
            core: Some(core),
            replicas: BTreeMap::new(),
            names: BTreeMap::new(),
            sent: BTreeMap::new(),
            pending: VecDeque::new(),
            slow: None,
            max_retained: 0,
            excluded: false,
            refuses_upgrades: false,
            in_cut: BTreeSet::new(),
            scheduled: u64::MAX,
        });
        self.drain(i);
        i
    }

    fn push(&mut self, at: Micros, event: SimEvent) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, id)));
    }

    fn latency(&mut self, range: (Micros, Micros)) -> Micros {
        self.rng.random_range(range.0..=range.1)
    }

    /// A reliable message on the link `from -> to`, in order.
    fn send_reliable(&mut self, from: usize, to: usize, event: SimEvent) {
        if self.partitioned.contains(&from) || self.partitioned.contains(&to) {
            self.held.push(event);
            return;
        }
        let lat = self.latency(self.net.control_latency);
        let clock = self.link_clock.entry((from, to)).or_insert(0);
        let at = (self.now + lat).max(*clock + 1);
        *clock = at;
        self.push(at, event);
    }

    fn send_datagram(&mut self, from: usize, to: usize, bytes: &[u8]) {
        if self.partitioned.contains(&from) || self.partitioned.contains(&to) {
            return;
        }
        self.report.datagrams += 1;
        *self
            .report
            .by_kind
            .entry(bytes.get(3).copied().unwrap_or(0))
            .or_default() += 1;
        let lossy = self
            .lossy
            .as_ref()
            .is_none_or(|l| l.contains(&from) || l.contains(&to));
        if lossy && self.rng.random_bool(self.net.loss) {
            self.report.lost += 1;
            return;
        }
        let copies = if lossy && self.rng.random_bool(self.net.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let lat = self.latency(self.net.latency);
            self.push(
                self.now + lat,
                SimEvent::Datagram {
                    to,
                    bytes: bytes.to_vec(),
                },
            );
        }
    }

    /// Hand `bytes` to host `i` as if they arrived from the network now.
    pub fn inject(&mut self, i: usize, bytes: &[u8]) {
        let now = self.now;
        if let Some(core) = self.hosts[i].core.as_mut() {
            core.handle_datagram(now, bytes);
        }
        self.drain(i);
    }

    /// Host `i` asks to join `name`.
    pub fn join(&mut self, i: usize, name: &str) {
        if let Some(core) = self.hosts[i].core.as_mut() {
            core.join(name);
        }
        self.drain(i);
    }

    /// Host `i` leaves `name`.
    pub fn leave(&mut self, i: usize, name: &str) {
        let now = self.now;
        if let Some(core) = self.hosts[i].core.as_mut() {
            core.leave(now, name);
        }
        self.drain(i);
    }

    /// Host `i` multicasts an event of `size` bytes on `name` (as soon as it has
    /// room).
    pub fn send(&mut self, i: usize, name: &str, size: usize) {
        self.hosts[i].pending.push_back((name.to_string(), size));
        self.drain(i);
    }

    /// Host `i` asks for an upgrade of `name` to `version`.
    pub fn upgrade(&mut self, i: usize, name: &str, version: u64) {
        if let Some(core) = self.hosts[i].core.as_mut()
            && let Some(object) = core.object_num(name)
        {
            core.request_upgrade(object, version, format!("v{version}").into_bytes());
        }
        self.drain(i);
    }

    /// Host `i` crashes (stops at once; nothing it holds survives).
    pub fn crash(&mut self, i: usize) {
        self.hosts[i].core = None;
        self.hosts[i].pending.clear();
        for members in self.groups.values_mut() {
            members.remove(&i);
        }
    }

    /// Cut host `i` off the network (datagrams dropped, reliable messages held).
    pub fn partition(&mut self, i: usize) {
        self.partitioned.insert(i);
    }

    /// Reconnect every partitioned host.
    pub fn heal(&mut self) {
        self.partitioned.clear();
        for event in std::mem::take(&mut self.held) {
            let (from, to) = match &event {
                SimEvent::ToMembership { from, .. } => (*from, MEMBERSHIP),
                SimEvent::FromMembership { to, .. } => (MEMBERSHIP, *to),
                SimEvent::Peer { from, to, .. } => (*from, *to),
                _ => continue,
            };
            self.send_reliable(from, to, event);
        }
    }

    /// Whether host `i` is a member (with state) of every object in `names`.
    pub fn is_member(&self, i: usize, name: &str) -> bool {
        let Some(core) = &self.hosts[i].core else {
            return false;
        };
        core.object_num(name).is_some_and(|n| core.is_member(n))
    }

    /// Run until simulated time `until`.
    pub fn run_until(&mut self, until: Micros) {
        while let Some(Reverse((at, id))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(event) = self.events.remove(&id) else {
                continue;
            };
            self.process(event);
        }
        self.now = until;
    }

    /// Run for `d` more microseconds.
    pub fn run_for(&mut self, d: Micros) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn process(&mut self, event: SimEvent) {
        let now = self.now;
        match event {
            SimEvent::Datagram { to, bytes } => {
                if let Some(tap) = self.tap.get_mut(&to) {
                    tap.push(bytes.clone());
                }
                if let Some(core) = self.hosts[to].core.as_mut() {
                    core.handle_datagram(now, &bytes);
                    self.drain(to);
                }
            }
            SimEvent::ToMembership { from, message } => {
                if self.hosts[from].core.is_some() {
                    self.membership.handle(now, &(from as u32), message);
                    self.drain_membership();
                }
            }
            SimEvent::FromMembership { to, message } => {
                if let Some(core) = self.hosts[to].core.as_mut() {
                    core.handle_membership(now, message);
                    self.drain(to);
                }
            }
            SimEvent::Peer { from, to, message } => {
                let Some(from_num) = self.hosts[from].core.as_ref().map(|c| c.me()) else {
                    return;
                };
                if let Some(core) = self.hosts[to].core.as_mut() {
                    core.handle_peer(now, from_num, message);
                    self.drain(to);
                }
            }
            SimEvent::Timer { host } => {
                if self.hosts[host].scheduled != now {
                    return;
                }
                self.hosts[host].scheduled = u64::MAX;
                if let Some(core) = self.hosts[host].core.as_mut() {
                    core.handle_timeout(now);
                    self.drain(host);
                }
            }
            SimEvent::MembershipTimer => {
                if self.membership_scheduled != now {
                    return;
                }
                self.membership_scheduled = u64::MAX;
                self.membership.handle_timeout(now);
                self.drain_membership();
            }
            SimEvent::Credit {
                host,
                object,
                count,
            } => {
                if let Some(core) = self.hosts[host].core.as_mut() {
                    core.delivered(now, object, count);
                    self.drain(host);
                }
            }
        }
    }

    fn schedule_membership(&mut self) {
        let at = self.membership.poll_timeout().max(self.now);
        if at < self.membership_scheduled {
            self.membership_scheduled = at;
            self.push(at, SimEvent::MembershipTimer);
        }
    }

    fn drain_membership(&mut self) {
        while let Some((id, message)) = self.membership.poll_transmit() {
            let to = id as usize;
            self.send_reliable(MEMBERSHIP, to, SimEvent::FromMembership { to, message });
        }
        self.schedule_membership();
    }

    /// Move host `i`'s transmits, messages and outputs into the world until it
    /// has nothing more to say.
    fn drain(&mut self, i: usize) {
        loop {
            let mut progressed = false;
            let Some(core) = self.hosts[i].core.as_mut() else {
                return;
            };
            let mut datagrams = Vec::new();
            while let Some(d) = core.poll_transmit() {
                datagrams.push(d);
            }
            let mut to_membership = Vec::new();
            while let Some(m) = core.poll_membership() {
                to_membership.push(m);
            }
            let mut to_peers = Vec::new();
            while let Some((num, m)) = core.poll_peer() {
                if let Some(h) = core.host(num) {
                    to_peers.push((h.id as usize, m));
                }
            }
            let mut outputs = Vec::new();
            while let Some(o) = core.poll_output() {
                outputs.push(o);
            }
            progressed |= !datagrams.is_empty()
                || !to_membership.is_empty()
                || !to_peers.is_empty()
                || !outputs.is_empty();
            for d in datagrams {
                match self.groups.get(&d.to) {
                    Some(members) => {
                        let members: Vec<usize> =
                            members.iter().copied().filter(|m| *m != i).collect();
                        for m in members {
                            self.send_datagram(i, m, &d.bytes);
                        }
                    }
                    None => {
                        if let Some(to) = self.addrs.get(&d.to).copied() {
                            self.send_datagram(i, to, &d.bytes);
                        }
                    }
                }
            }
            for message in to_membership {
                self.send_reliable(i, MEMBERSHIP, SimEvent::ToMembership { from: i, message });
            }
            for (to, message) in to_peers {
                self.send_reliable(
                    i,
                    to,
                    SimEvent::Peer {
                        from: i,
                        to,
                        message,
                    },
                );
            }
            let mut credits: BTreeMap<ObjectNum, usize> = BTreeMap::new();
            for output in outputs {
                self.output(i, output, &mut credits);
            }
            if !credits.is_empty() {
                progressed = true;
                match self.hosts[i].slow {
                    Some(delay) => {
                        for (object, count) in credits {
                            let at = self.now + delay;
                            self.push(
                                at,
                                SimEvent::Credit {
                                    host: i,
                                    object,
                                    count,
                                },
                            );
                        }
                    }
                    None => {
                        let now = self.now;
                        let core = self.hosts[i].core.as_mut().expect("alive");
                        for (object, count) in credits {
                            core.delivered(now, object, count);
                        }
                    }
                }
            }
            progressed |= self.pump_sends(i);
            if !progressed {
                break;
            }
        }
        if let Some(core) = self.hosts[i].core.as_ref() {
            let retained = core.retained();
            let at = core.poll_timeout().max(self.now);
            let host = &mut self.hosts[i];
            host.max_retained = host.max_retained.max(retained);
            if at < host.scheduled {
                host.scheduled = at;
                self.push(at, SimEvent::Timer { host: i });
            }
        }
    }

    fn pump_sends(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut progressed = false;
        let mut blocked = Vec::new();
        while let Some((name, size)) = self.hosts[i].pending.pop_front() {
            let host = &mut self.hosts[i];
            let Some(core) = host.core.as_mut() else {
                return progressed;
            };
            let Some(object) = core.object_num(&name).filter(|o| core.has_room(*o)) else {
                blocked.push((name, size));
                continue;
            };
            let n = host.sent.get(&name).copied().unwrap_or(0) + 1;
            let mut payload = format!("{name}/{}/{n}/", core.me()).into_bytes();
            payload.resize(size.max(payload.len()), b'.');
            match core.multicast(now, object, now / 1000, Bytes::from(payload)) {
                Ok(_) => {
                    host.sent.insert(name, n);
                    progressed = true;
                }
                Err(e) => {
                    self.report
                        .violations
                        .push(format!("host {i}: multicast refused after has_room: {e}"));
                }
            }
        }
        self.hosts[i].pending.extend(blocked);
        progressed
    }

    fn output(&mut self, i: usize, output: Output, credits: &mut BTreeMap<ObjectNum, usize>) {
        match output {
            Output::Registered { .. } | Output::View { .. } => {}
            Output::UpgradeCut {
                object,
                epoch,
                version,
                request,
            } => {
                self.report.upgrade_cuts += 1;
                if request != format!("v{version}").into_bytes() {
                    self.report.violations.push(format!(
                        "host {i}: the cut of object {object}'s upgrade to {version} carries the wrong request"
                    ));
                }
                let now = self.now;
                let host = &mut self.hosts[i];
                host.in_cut.insert(object);
                let ok = !host.refuses_upgrades;
                if let Some(core) = host.core.as_mut() {
                    core.cut_tried(now, object, epoch, ok);
                }
            }
            Output::UpgradeDecided {
                object,
                epoch,
                committed,
                ..
            } => {
                let host = &mut self.hosts[i];
                if !host.in_cut.remove(&object) {
                    self.report.violations.push(format!(
                        "host {i}: object {object}'s upgrade to epoch {epoch} was decided without a cut"
                    ));
                }
                match host.replicas.get_mut(&object) {
                    Some(replica) if replica.epoch + 1 == epoch => {
                        replica.epoch = epoch;
                        replica.switches += committed as u64;
                    }
                    other => self.report.violations.push(format!(
                        "host {i}: object {object} decided epoch {epoch} in epoch {:?}",
                        other.map(|r| r.epoch)
                    )),
                }
                if committed {
                    self.report.upgrades_committed += 1;
                } else {
                    self.report.upgrades_aborted += 1;
                }
            }
            Output::Joined {
                object,
                name,
                snapshot,
            } => {
                match snapshot {
                    Some(_) => self.report.snapshot_joins += 1,
                    None => self.report.fresh_joins += 1,
                }
                let state = match snapshot {
                    None => ModelState::default(),
                    Some(bytes) => match postcard::from_bytes(&bytes) {
                        Ok(s) => s,
                        Err(e) => {
                            self.report
                                .violations
                                .push(format!("host {i}: snapshot of {name} does not decode: {e}"));
                            ModelState::default()
                        }
                    },
                };
                self.hosts[i].replicas.insert(object, state);
                self.hosts[i].names.insert(object, name);
            }
            Output::Deliver {
                object,
                sender,
                seq,
                payload,
                ..
            } => {
                self.report.deliveries += 1;
                *credits.entry(object).or_default() += 1;
                let host = &mut self.hosts[i];
                if host.in_cut.contains(&object) {
                    self.report.violations.push(format!(
                        "host {i}: event {sender}/{seq} of object {object} delivered between an upgrade's cut and its decision"
                    ));
                }
                let Some(replica) = host.replicas.get_mut(&object) else {
                    self.report.violations.push(format!(
                        "host {i}: event {sender}/{seq} of object {object} delivered before its replica started"
                    ));
                    return;
                };
                let entry = replica.per_sender.entry(sender).or_insert((0, 0));
                if seq != entry.0 + 1 {
                    self.report.violations.push(format!(
                        "host {i}: object {object} sender {sender}: delivered seq {seq} after {}",
                        entry.0
                    ));
                }
                entry.0 = seq;
                entry.1 = mix(mix(entry.1, &replica.epoch.to_le_bytes()), &payload);
            }
            Output::TakeSnapshot {
                object,
                for_host,
                view,
                epoch,
                cut,
            } => {
                let host = &mut self.hosts[i];
                let Some(replica) = host.replicas.get(&object) else {
                    self.report.violations.push(format!(
                        "host {i}: asked to snapshot object {object} it lacks"
                    ));
                    return;
                };
                for (sender, upto) in &cut {
                    let have = replica.per_sender.get(sender).map(|e| e.0).unwrap_or(0);
                    if have != *upto {
                        self.report.violations.push(format!(
                            "host {i}: snapshot of object {object} claims {sender} up to {upto} but the replica applied {have}"
                        ));
                    }
                }
                if replica.epoch != epoch {
                    self.report.violations.push(format!(
                        "host {i}: snapshot of object {object} claims epoch {epoch} of a replica in epoch {}",
                        replica.epoch
                    ));
                }
                let bytes = postcard::to_allocvec(replica).expect("encodes");
                if let Some(core) = host.core.as_mut() {
                    core.snapshot_taken(object, for_host, view, epoch, cut, bytes);
                }
            }
            Output::Left { object, .. } => {
                self.hosts[i].replicas.remove(&object);
                self.hosts[i].names.remove(&object);
            }
            Output::JoinRefused { name, reason } => {
                self.report
                    .violations
                    .push(format!("host {i}: join of {name} refused: {reason}"));
            }
            Output::JoinGroup(g) => {
                self.groups.entry(g).or_default().insert(i);
            }
            Output::LeaveGroup(g) => {
                if let Some(m) = self.groups.get_mut(&g) {
                    m.remove(&i);
                }
            }
            Output::Excluded => self.hosts[i].excluded = true,
        }
    }

    /// Hosts alive and not excluded.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|i| self.hosts[*i].core.is_some() && !self.hosts[*i].excluded)
            .collect()
    }

    /// Whether every host has sent everything it was asked to, has its state for
    /// every object, and every stream is acknowledged.
    pub fn quiet(&self) -> bool {
        self.alive().iter().all(|i| {
            let h = &self.hosts[*i];
            h.pending.is_empty()
                && h.core.as_ref().is_some_and(|c| {
                    let stats = c.stats();
                    stats.joining == 0
                        && stats.upgrading == 0
                        && stats.streams.iter().all(|s| s.in_flight == 0)
                })
        })
    }

    /// The end-of-run checks: every alive member of every object applied every
    /// event of every alive sender exactly once, in order (hence equal states).
    /// Returns sentences describing what is wrong.
    pub fn check_complete(&self) -> Vec<String> {
        let mut problems = self.report.violations.clone();
        let alive = self.alive();
        // Events sent per (object name, sender host number), by alive senders.
        let mut sent: BTreeMap<(String, HostNum), u64> = BTreeMap::new();
        for i in &alive {
            let core = self.hosts[*i].core.as_ref().expect("alive");
            for (name, n) in &self.hosts[*i].sent {
                sent.insert((name.clone(), core.me()), *n);
            }
        }
        let alive_nums: BTreeSet<HostNum> = alive
            .iter()
            .map(|i| self.hosts[*i].core.as_ref().expect("alive").me())
            .collect();
        for i in &alive {
            let host = &self.hosts[*i];
            let core = host.core.as_ref().expect("alive");
            for (object, replica) in &host.replicas {
                let name = &host.names[object];
                if !core.is_member(*object) {
                    continue;
                }
                for ((n, sender), count) in
                    sent.range((name.clone(), 0)..=(name.clone(), HostNum::MAX))
                {
                    debug_assert_eq!(n, name);
                    let have = replica.per_sender.get(sender).map(|e| e.0).unwrap_or(0);
                    if have != *count {
                        problems.push(format!(
                            "host {i}: {name}: applied {have} of the {count} events of host {sender}"
                        ));
                    }
                }
                let _ = &alive_nums;
            }
        }
        // Equal logic among members.
        let mut logic: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
        for i in &alive {
            let host = &self.hosts[*i];
            for (object, replica) in &host.replicas {
                let name = host.names[object].as_str();
                let mine = (*i, replica.epoch, replica.switches);
                let first = *logic.entry(name).or_insert(mine);
                if (first.1, first.2) != (mine.1, mine.2) {
                    problems.push(format!(
                        "{name}: host {i} is in epoch {} with {} switches, host {} in epoch {} with {}",
                        mine.1, mine.2, first.0, first.1, first.2
                    ));
                }
            }
        }
        // Equal states among members, over alive senders.
        let mut states: BTreeMap<String, Vec<(usize, PerSender)>> = BTreeMap::new();
        for i in &alive {
            let host = &self.hosts[*i];
            for (object, replica) in &host.replicas {
                let filtered = replica
                    .per_sender
                    .iter()
                    .filter(|(s, _)| alive_nums.contains(s))
                    .map(|(s, e)| (*s, *e))
                    .collect();
                states
                    .entry(host.names[object].clone())
                    .or_default()
                    .push((*i, filtered));
            }
        }
        for (name, list) in states {
            if let Some((first, state)) = list.first() {
                for (other, s) in &list[1..] {
                    if s != state {
                        problems.push(format!(
                            "{name}: host {other}'s state differs from host {first}'s"
                        ));
                    }
                }
            }
        }
        problems
    }
}
