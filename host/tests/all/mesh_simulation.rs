//! Deterministic simulation of the mesh protocol core: many seeds, each with seeded
//! message loss, duplication and reordering, crashes and joins. A safety phase with
//! faults is followed by a liveness phase without them, after which the survivors
//! must have delivered the same events, in the same order, each exactly once.
//! Every scenario runs twice: with the cores heartbeating themselves
//! ([`Liveness::PerGroup`]) and with a node's per-peer heartbeats
//! ([`Liveness::PerPeer`], [`PeerHeartbeats`]), as `lo node` runs them, whose
//! heartbeats are lost, duplicated and reordered like every other message.
//!
//! With divergence checks on, a member whose state is corrupted on purpose is found
//! by the next check and repaired from the majority (also when it orders the
//! group, and when the sequencer crashes meanwhile); two members that differ have
//! no majority and both say so.
//!
//! A live upgrade ordered by the sequencer is delivered at one position by every
//! survivor, also when the sequencer crashes right after ordering it (the next
//! one orders it again if no survivor got it, as its host would).
//!
//! A failing seed replays exactly: `MESH_SEED=1234 cargo test --release --test mesh_simulation`.

use liveobjects_protocols::mesh::peers::{Heartbeat, PeerHeartbeats, PeerOutput};
use liveobjects_protocols::mesh::{Config, Liveness, MeshCore, Message, Output, Verdict};
// (Upgrade items carry the version's bytes as their record here.)
use sha2::{Digest as _, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

type Id = u64;

/// A small deterministic generator (splitmix64), so every run of a seed is identical.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The replica model: a hash chain over delivered events plus what it needs to
/// check exactly-once, FIFO and agreement.
#[derive(Clone, Default)]
struct App {
    chain: u64,
    count: u64,
    last_gseq: Option<u64>,
    per_sender: BTreeMap<Id, u64>,
    /// gseq -> (sender, seq), for agreement checks.
    history: BTreeMap<u64, (Id, u64)>,
    installed: bool,
    /// The logic version in force (a live upgrade raises it).
    logic: u64,
    /// Where this replica switched logic itself: gseq -> version.
    switches: BTreeMap<u64, u64>,
}

impl App {
    fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&self.chain.to_le_bytes());
        bytes.extend_from_slice(&self.count.to_le_bytes());
        bytes.extend_from_slice(&self.logic.to_le_bytes());
        for (s, q) in &self.per_sender {
            bytes.extend_from_slice(&s.to_le_bytes());
            bytes.extend_from_slice(&q.to_le_bytes());
        }
        bytes
    }

    fn install(&mut self, bytes: &[u8]) {
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        self.chain = word(0);
        self.count = word(1);
        self.logic = word(2);
        self.per_sender.clear();
        let mut i = 3;
        while i * 8 < bytes.len() {
            self.per_sender.insert(word(i), word(i + 1));
            i += 2;
        }
        self.installed = true;
        self.last_gseq = None;
    }

    /// A live upgrade ordered at `gseq`: switch if it is newer (what every host
    /// decides alike), and mix the switch into the state.
    fn upgrade(&mut self, node: Id, gseq: u64, version: u64) {
        if let Some(last) = self.last_gseq {
            assert!(gseq > last, "node {node}: gseq {gseq} after {last}");
        }
        self.last_gseq = Some(gseq);
        if version > self.logic {
            self.logic = version;
            self.switches.insert(gseq, version);
            self.chain = (self.chain ^ version).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn apply(&mut self, node: Id, gseq: u64, sender: Id, seq: u64, payload: &[u8]) {
        // Views take positions in the order too, so events' gseqs only increase.
        if let Some(last) = self.last_gseq {
            assert!(gseq > last, "node {node}: gseq {gseq} after {last}");
        }
        self.last_gseq = Some(gseq);
        let expected = self.per_sender.get(&sender).copied().unwrap_or(0) + 1;
        assert_eq!(
            seq, expected,
            "node {node}: event {seq} of {sender} delivered, expected {expected} (lost, duplicated or out of FIFO order)"
        );
        self.per_sender.insert(sender, seq);
        let mut h = self.chain ^ 0xcbf2_9ce4_8422_2325;
        for b in sender
            .to_le_bytes()
            .iter()
            .chain(seq.to_le_bytes().iter())
            .chain(payload)
        {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
        self.chain = h;
        self.count += 1;
        self.history.insert(gseq, (sender, seq));
    }
}

/// What travels between simulated hosts.
#[derive(Debug, Clone)]
enum Wire {
    Group(Message<Id>),
    Heartbeat(Heartbeat<()>),
}

struct Node {
    core: MeshCore<Id>,
    /// The host's per-peer heartbeats for its one group (used with `PerPeer`).
    heartbeats: PeerHeartbeats<Id, ()>,
    app: App,
    alive: bool,
    /// Multicasts made (seq numbers), to check liveness for survivors.
    sent: u64,
    /// Corrupt the replica's state once, after it applied this many events.
    corrupt_after: Option<u64>,
    /// Divergence verdicts it reached: (position, verdict).
    verdicts: Vec<(u64, Verdict<Id>)>,
    /// Repairs it finished.
    repairs: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: BTreeMap<Id, Node>,
    queue: BinaryHeap<Reverse<(u64, u64, Id, Id)>>,
    in_flight: BTreeMap<u64, Wire>,
    next_msg: u64,
    loss: u64,
    dup: u64,
    max_delay: u64,
    config: Config,
    messages_sent: u64,
}

impl Sim {
    fn new(seed: u64, liveness: Liveness) -> Self {
        Sim {
            rng: Rng(seed),
            now: 0,
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            next_msg: 0,
            loss: 0,
            dup: 0,
            max_delay: 20,
            config: Config {
                heartbeat: 50,
                suspect_after: 400,
                retry: 100,
                max_in_flight: 64,
                max_buffered: 10_000,
                liveness,
                check_every: 0,
            },
            messages_sent: 0,
        }
    }

    fn found(&mut self, id: Id) {
        let core = MeshCore::found(id, self.config.clone(), self.now);
        self.add(id, core);
        self.nodes.get_mut(&id).unwrap().app.installed = true;
    }

    fn join(&mut self, id: Id, contact: Id) {
        let core = MeshCore::join(id, contact, self.config.clone(), self.now);
        self.add(id, core);
    }

    fn add(&mut self, id: Id, core: MeshCore<Id>) {
        let heartbeats = PeerHeartbeats::new(id, &self.config, self.now);
        self.nodes.insert(
            id,
            Node {
                core,
                heartbeats,
                app: App::default(),
                alive: true,
                sent: 0,
                corrupt_after: None,
                verdicts: Vec::new(),
                repairs: 0,
            },
        );
        self.drain(id);
    }

    fn crash(&mut self, id: Id) {
        if std::env::var("MESH_TRACE").is_ok() {
            eprintln!("t={} CRASH {id}", self.now);
        }
        self.nodes.get_mut(&id).unwrap().alive = false;
    }

    fn multicast(&mut self, id: Id) {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.alive {
            return;
        }
        node.sent += 1;
        let payload = format!("{id}:{}", node.sent).into_bytes();
        node.core.multicast(self.now, self.now, payload);
        self.drain(id);
    }

    fn per_peer(&self) -> bool {
        self.config.liveness == Liveness::PerPeer
    }

    /// Put `wire` on the network, with the seeded loss, duplication and delay.
    fn send(&mut self, from: Id, to: Id, wire: Wire) {
        self.messages_sent += 1;
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.now + 1 + self.rng.below(self.max_delay);
            let n = self.next_msg;
            self.next_msg += 1;
            self.in_flight.insert(n, wire.clone());
            self.queue.push(Reverse((at, n, from, to)));
        }
    }

    /// Move a node's transmits into the network and its outputs into its app.
    fn drain(&mut self, id: Id) {
        let per_peer = self.per_peer();
        loop {
            let mut progressed = false;
            while let Some((to, message)) = self.nodes.get_mut(&id).unwrap().core.poll_transmit() {
                progressed = true;
                self.send(id, to, Wire::Group(message));
            }
            while let Some(output) = self.nodes.get_mut(&id).unwrap().heartbeats.poll_output() {
                progressed = true;
                match output {
                    PeerOutput::Transmit { to, heartbeat } => {
                        self.send(id, to, Wire::Heartbeat(heartbeat))
                    }
                    PeerOutput::Suspect { peer, .. } => {
                        let now = self.now;
                        self.nodes
                            .get_mut(&id)
                            .unwrap()
                            .core
                            .handle_suspect(now, peer)
                    }
                }
            }
            let node = self.nodes.get_mut(&id).unwrap();
            while let Some(output) = node.core.poll_output() {
                progressed = true;
                match output {
                    Output::Deliver { gseq, event } => {
                        if std::env::var("MESH_TRACE").is_ok() {
                            eprintln!(
                                "t={} node {id} delivers g{gseq} = {}#{}",
                                self.now, event.sender, event.seq
                            );
                        }
                        node.app
                            .apply(id, gseq, event.sender, event.seq, &event.payload);
                        if node.corrupt_after == Some(node.app.count) {
                            node.corrupt_after = None;
                            node.app.chain ^= 0x5a5a_5a5a;
                        }
                    }
                    Output::TakeDigest { at } => {
                        let digest = Sha256::digest(node.app.snapshot()).into();
                        node.core.digest_taken(at, digest);
                    }
                    Output::Checked(result) => node.verdicts.push((result.at, result.verdict)),
                    Output::Upgrade { gseq, upgrade } => {
                        assert_eq!(upgrade.record, upgrade.version.to_le_bytes());
                        node.app.upgrade(id, gseq, upgrade.version);
                    }
                    Output::Repaired { .. } => node.repairs += 1,
                    Output::View(v) => {
                        if std::env::var("MESH_TRACE").is_ok() {
                            eprintln!("t={} node {id} view {v:?}", self.now);
                        }
                        if per_peer {
                            node.heartbeats.set_members(self.now, &(), &v.members);
                        }
                    }
                    Output::TakeSnapshot(cut) => {
                        let snap = node.app.snapshot();
                        node.core.snapshot_taken(cut, snap);
                    }
                    Output::InstallSnapshot { snapshot } => node.app.install(&snapshot),
                    Output::Excluded => node.alive = false,
                    // Snapshots never fail here (see the core's refusal test).
                    Output::JoinRefused { reason } => panic!("node {id} was refused: {reason}"),
                }
            }
            if per_peer {
                let progress = node.core.progress();
                node.heartbeats.set_progress(&(), progress);
            }
            if !progressed {
                break;
            }
        }
    }

    /// Advance to `until`, delivering messages and firing timers.
    fn run_until(&mut self, until: u64) {
        let mut steps: u64 = 0;
        loop {
            steps += 1;
            assert!(
                steps < 5_000_000,
                "simulation stuck at t={} with {} messages queued",
                self.now,
                self.queue.len()
            );
            let next_msg = self.queue.peek().map(|Reverse((at, ..))| *at);
            let next_timer = self
                .nodes
                .values()
                .filter(|n| n.alive)
                .flat_map(|n| [n.core.poll_timeout(), n.heartbeats.poll_timeout()])
                .flatten()
                .min();
            let next = match (next_msg, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(until),
            }
            .max(self.now);
            if next > until {
                self.now = until;
                return;
            }
            self.now = next;
            if next_msg == Some(next) {
                let Reverse((_, n, from, to)) = self.queue.pop().unwrap();
                let wire = self.in_flight.remove(&n).unwrap();
                let from_alive = self.nodes.get(&from).is_some_and(|n| n.alive);
                if let Some(node) = self.nodes.get_mut(&to)
                    && node.alive
                    && from_alive
                {
                    if std::env::var("MESH_TRACE_MSG").is_ok_and(|v| v == to.to_string()) {
                        eprintln!("t={} {from} -> {to}: {wire:?}", self.now);
                    }
                    match wire {
                        Wire::Group(message) => {
                            node.heartbeats.heard(self.now, &from);
                            node.core.handle_message(self.now, from, message);
                        }
                        Wire::Heartbeat(heartbeat) => {
                            for ((), progress) in
                                node.heartbeats.receive(self.now, &from, heartbeat)
                            {
                                node.core.handle_progress(self.now, from, progress);
                            }
                        }
                    }
                    self.drain(to);
                }
            } else {
                let due: Vec<Id> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| {
                        n.alive
                            && [n.core.poll_timeout(), n.heartbeats.poll_timeout()]
                                .into_iter()
                                .flatten()
                                .any(|t| t <= next)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in due {
                    let node = self.nodes.get_mut(&id).unwrap();
                    node.core.handle_timeout(self.now);
                    node.heartbeats.handle_timeout(self.now);
                    self.drain(id);
                }
            }
        }
    }

    fn alive(&self) -> Vec<Id> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Liveness phase: no more faults; everyone alive must converge.
    fn heal_and_check(&mut self, seed: &str, crashed_senders: &BTreeSet<Id>) {
        self.loss = 0;
        self.dup = 0;
        let deadline = self.now + 60_000;
        loop {
            self.run_until(self.now + 500);
            if std::env::var("MESH_DEBUG").is_ok() {
                self.dump();
            }
            if self.converged() || self.now >= deadline {
                break;
            }
        }
        let alive = self.alive();
        assert!(!alive.is_empty(), "seed {seed}: nobody survived");
        let first = &self.nodes[&alive[0]];
        let view = first.core.view().members.clone();
        let mut view_set = view.clone();
        view_set.sort();
        for id in &alive {
            let n = &self.nodes[id];
            assert!(
                n.core.is_member(),
                "seed {seed}: node {id} never became a member"
            );
            assert_eq!(
                n.core.view().members,
                view,
                "seed {seed}: node {id} has a different view"
            );
            assert_eq!(
                n.app.chain, first.app.chain,
                "seed {seed}: node {id} state differs from node {}",
                alive[0]
            );
            assert_eq!(n.app.count, first.app.count, "seed {seed}: counts differ");
        }
        assert_eq!(
            view_set, alive,
            "seed {seed}: final view is not the set of survivors"
        );
        // Every event a survivor multicast was delivered (exactly once, by FIFO check).
        for id in &alive {
            let sent = self.nodes[id].sent;
            let got = first.app.per_sender.get(id).copied().unwrap_or(0);
            assert_eq!(
                got, sent,
                "seed {seed}: node {id} sent {sent}, {got} delivered"
            );
        }
        // Crashed senders: a prefix of what they sent (checked by FIFO), never more.
        for id in crashed_senders {
            let got = first.app.per_sender.get(id).copied().unwrap_or(0);
            assert!(
                got <= self.nodes[id].sent,
                "seed {seed}: phantom events of {id}"
            );
        }
        // Agreement on the order of common positions, pairwise.
        for a in &alive {
            for b in &alive {
                let (ha, hb) = (&self.nodes[a].app.history, &self.nodes[b].app.history);
                for (g, e) in ha {
                    if let Some(f) = hb.get(g) {
                        assert_eq!(e, f, "seed {seed}: nodes {a} and {b} disagree at gseq {g}");
                    }
                }
            }
        }
        // Memory is bounded once everything is stable.
        for id in &alive {
            let retained = self.nodes[id].core.retained();
            assert!(
                retained < 2_000,
                "seed {seed}: node {id} retains {retained} items"
            );
        }
    }

    fn dump(&self) {
        eprintln!(
            "t={} queue={} sent={}",
            self.now,
            self.queue.len(),
            self.messages_sent
        );
        for (id, n) in &self.nodes {
            eprintln!(
                "  {id}: alive={} member={} seqr={} view={:?} delivered={} count={} sent={} retained={} verdicts={:?} repairs={}",
                n.alive,
                n.core.is_member(),
                n.core.is_sequencer(),
                n.core.view(),
                n.core.delivered(),
                n.app.count,
                n.sent,
                n.core.retained(),
                n.verdicts
                    .iter()
                    .map(|(at, v)| (
                        at,
                        match v {
                            Verdict::Agree { .. } => 'A',
                            Verdict::Diverged { .. } => 'D',
                            Verdict::NoMajority { .. } => 'N',
                        }
                    ))
                    .collect::<Vec<_>>(),
                n.repairs
            );
        }
    }

    fn converged(&self) -> bool {
        let alive = self.alive();
        let Some(first) = alive.first().map(|id| &self.nodes[id]) else {
            return true;
        };
        alive.iter().all(|id| {
            let n = &self.nodes[id];
            let mut members = n.core.view().members.clone();
            members.sort();
            n.core.is_member()
                && members == alive
                && n.app.chain == first.app.chain
                && alive
                    .iter()
                    .all(|s| n.app.per_sender.get(s).copied().unwrap_or(0) == self.nodes[s].sent)
        })
    }
}

/// The seeds to run: `MESH_SEED=n` replays one, `MESH_SEEDS=n` runs 0..n (a longer
/// soak than the default).
fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    if let Ok(s) = std::env::var("MESH_SEED") {
        return vec![s.parse().expect("MESH_SEED is a number")];
    }
    if let Ok(n) = std::env::var("MESH_SEEDS") {
        return (0..n.parse().expect("MESH_SEEDS is a number")).collect();
    }
    default.collect()
}

/// Each seed, with each kind of heartbeat.
fn runs(default: std::ops::Range<u64>) -> Vec<(u64, Liveness)> {
    seeds(default)
        .into_iter()
        .flat_map(|seed| [(seed, Liveness::PerGroup), (seed, Liveness::PerPeer)])
        .collect()
}

/// A group of `n` members with random ids, all joined through the founder.
fn group(sim: &mut Sim, n: usize) -> Vec<Id> {
    let mut ids = BTreeSet::new();
    while ids.len() < n {
        ids.insert(1 + sim.rng.below(1000));
    }
    let ids: Vec<Id> = ids.into_iter().collect();
    let founder = ids[sim.rng.below(n as u64) as usize];
    sim.found(founder);
    for id in &ids {
        if *id != founder {
            sim.join(*id, founder);
        }
    }
    ids
}

fn burst(sim: &mut Sim, ids: &[Id], rounds: usize) {
    for _ in 0..rounds {
        let who = ids[sim.rng.below(ids.len() as u64) as usize];
        sim.multicast(who);
        let step = sim.now + sim.rng.below(5);
        sim.run_until(step);
    }
}

#[test]
fn total_order_and_exactly_once_under_loss_reordering_and_duplication() {
    for (seed, liveness) in runs(0..500) {
        if std::env::var("MESH_TRACE").is_ok() {
            eprintln!("seed {seed} ({liveness:?})");
        }
        let mut sim = Sim::new(seed, liveness);
        sim.loss = 10;
        sim.dup = 5;
        let ids = group(&mut sim, 5);
        sim.run_until(2_000);
        burst(&mut sim, &ids, 200);
        sim.heal_and_check(&format!("{seed} ({liveness:?})"), &BTreeSet::new());
    }
}

#[test]
fn survivors_agree_after_the_sequencer_crashes_mid_burst() {
    for (seed, liveness) in runs(0..500) {
        if std::env::var("MESH_TRACE").is_ok() {
            eprintln!("seed {seed} ({liveness:?})");
        }
        let mut sim = Sim::new(seed, liveness);
        sim.loss = 5;
        sim.dup = 2;
        let ids = group(&mut sim, 5);
        sim.run_until(2_000);
        burst(&mut sim, &ids, 100);
        let sequencer = *ids
            .iter()
            .find(|id| sim.nodes[*id].core.is_sequencer())
            .expect("a sequencer");
        sim.crash(sequencer);
        let rest: Vec<Id> = ids.iter().copied().filter(|i| *i != sequencer).collect();
        burst(&mut sim, &rest, 100);
        sim.heal_and_check(
            &format!("{seed} ({liveness:?})"),
            &BTreeSet::from([sequencer]),
        );
    }
}

#[test]
fn a_crashed_member_is_excluded_and_the_others_carry_on() {
    for (seed, liveness) in runs(0..500) {
        if std::env::var("MESH_TRACE").is_ok() {
            eprintln!("seed {seed} ({liveness:?})");
        }
        let mut sim = Sim::new(seed, liveness);
        sim.loss = 5;
        let ids = group(&mut sim, 4);
        sim.run_until(2_000);
        burst(&mut sim, &ids, 80);
        let victim = ids[1 + sim.rng.below(3) as usize];
        sim.crash(victim);
        let rest: Vec<Id> = ids.iter().copied().filter(|i| *i != victim).collect();
        burst(&mut sim, &rest, 80);
        sim.heal_and_check(&format!("{seed} ({liveness:?})"), &BTreeSet::from([victim]));
    }
}

#[test]
fn a_late_joiner_gets_a_consistent_state_and_every_later_event() {
    for (seed, liveness) in runs(0..500) {
        if std::env::var("MESH_TRACE").is_ok() {
            eprintln!("seed {seed} ({liveness:?})");
        }
        let mut sim = Sim::new(seed, liveness);
        sim.loss = 5;
        sim.dup = 5;
        let ids = group(&mut sim, 3);
        sim.run_until(2_000);
        burst(&mut sim, &ids, 60);
        // Join in the middle of a burst, through a random member.
        let mut late = 1 + sim.rng.below(1000);
        while ids.contains(&late) {
            late = 1 + sim.rng.below(1000);
        }
        let contact = ids[sim.rng.below(3) as usize];
        sim.join(late, contact);
        burst(&mut sim, &ids, 60);
        let mut all = ids.clone();
        all.push(late);
        burst(&mut sim, &all, 40);
        sim.heal_and_check(&format!("{seed} ({liveness:?})"), &BTreeSet::new());
        assert!(
            sim.nodes[&late].app.installed,
            "seed {seed} ({liveness:?}): joiner never got state"
        );
    }
}

fn diverged(node: &Node) -> bool {
    node.verdicts
        .iter()
        .any(|(_, v)| matches!(v, Verdict::Diverged { .. }))
}

fn no_majority(node: &Node) -> bool {
    node.verdicts
        .iter()
        .any(|(_, v)| matches!(v, Verdict::NoMajority { .. }))
}

/// No live member found no majority, and none but `bad` thought it diverged.
fn only_it_diverged(sim: &Sim, bad: Id, name: &str) {
    for id in sim.alive() {
        let node = &sim.nodes[&id];
        assert!(
            !no_majority(node),
            "seed {name}: node {id} found no majority"
        );
        assert!(
            id == bad || !diverged(node),
            "seed {name}: node {id} thought it diverged"
        );
    }
}

#[test]
fn a_diverged_member_is_found_by_the_next_check_and_repaired_from_the_majority() {
    for (seed, liveness) in runs(0..200) {
        if std::env::var("MESH_TRACE").is_ok() {
            eprintln!("seed {seed} ({liveness:?})");
        }
        let mut sim = Sim::new(seed, liveness);
        sim.config.check_every = 10;
        sim.loss = 5;
        sim.dup = 3;
        let ids = group(&mut sim, 5);
        sim.run_until(2_000);
        // Any member, the sequencer included, goes wrong after a few events.
        let bad = ids[sim.rng.below(5) as usize];
        let after = sim.nodes[&bad].app.count + 5 + sim.rng.below(20);
        sim.nodes.get_mut(&bad).unwrap().corrupt_after = Some(after);
        burst(&mut sim, &ids, 120);
        // Half the seeds lose the sequencer too (unless it is the bad member).
        let sequencer = *ids
            .iter()
            .find(|id| sim.nodes[*id].core.is_sequencer())
            .expect("a sequencer");
        let mut crashed = BTreeSet::new();
        let mut rest = ids.clone();
        if seed % 2 == 1 && sequencer != bad {
            sim.crash(sequencer);
            crashed.insert(sequencer);
            rest.retain(|id| *id != sequencer);
        }
        burst(&mut sim, &rest, 120);
        let name = format!("{seed} ({liveness:?})");
        sim.heal_and_check(&name, &crashed);
        let node = &sim.nodes[&bad];
        assert!(
            diverged(node),
            "seed {name}: node {bad} was never found diverged"
        );
        assert!(
            node.repairs >= 1,
            "seed {name}: node {bad} was never repaired"
        );
        only_it_diverged(&sim, bad, &name);
        for id in sim.alive() {
            let other = &sim.nodes[&id];
            // (The bad one may be repaired after the last check.)
            if id != bad {
                assert!(
                    other
                        .verdicts
                        .iter()
                        .any(|(_, v)| matches!(v, Verdict::Agree { .. })),
                    "seed {name}: node {id} never reached a verdict it agreed with"
                );
            }
        }
    }
}

#[test]
fn a_view_change_checks_the_members_that_stay_and_repairs_a_diverged_one() {
    for (seed, liveness) in runs(0..100) {
        let mut sim = Sim::new(seed, liveness);
        // Only view changes are checked in these runs.
        sim.config.check_every = 1_000_000;
        sim.loss = 5;
        sim.dup = 3;
        let ids = group(&mut sim, 4);
        sim.run_until(2_000);
        // Not the sequencer: the joiner's state comes from it, and a joiner is
        // checked from the next check after its cut on (the periodic ones).
        let others: Vec<Id> = ids
            .iter()
            .copied()
            .filter(|id| !sim.nodes[id].core.is_sequencer())
            .collect();
        let bad = others[sim.rng.below(others.len() as u64) as usize];
        let after = sim.nodes[&bad].app.count + 1 + sim.rng.below(10);
        sim.nodes.get_mut(&bad).unwrap().corrupt_after = Some(after);
        burst(&mut sim, &ids, 40);
        // Every event ordered and applied: the member went wrong before the
        // view below (a join ordered amid the burst would come first).
        sim.run_until(sim.now + 2_000);
        let name = format!("{seed} ({liveness:?})");
        assert!(
            sim.nodes[&bad].corrupt_after.is_none(),
            "seed {name}: node {bad} did not go wrong"
        );
        assert!(
            !diverged(&sim.nodes[&bad]),
            "seed {name}: found diverged with no view change"
        );
        // A host joins: the view that adds it is checked among the four.
        let mut late = 1 + sim.rng.below(1000);
        while ids.contains(&late) {
            late = 1 + sim.rng.below(1000);
        }
        let contact = ids[sim.rng.below(4) as usize];
        sim.join(late, contact);
        let mut all = ids.clone();
        all.push(late);
        burst(&mut sim, &all, 40);
        sim.heal_and_check(&name, &BTreeSet::new());
        let node = &sim.nodes[&bad];
        assert!(
            diverged(node) && node.repairs >= 1,
            "seed {name}: node {bad} was not found diverged and repaired at the view change \
             (verdicts {:?})",
            node.verdicts
        );
        only_it_diverged(&sim, bad, &name);
        // A member crashes: the view without it is checked among the four
        // others, one of which went wrong meanwhile.
        let members = sim.alive();
        let others: Vec<Id> = members
            .iter()
            .copied()
            .filter(|id| !sim.nodes[id].core.is_sequencer())
            .collect();
        let bad = others[sim.rng.below(others.len() as u64) as usize];
        let gone = *others.iter().find(|id| **id != bad).expect("two others");
        let after = sim.nodes[&bad].app.count + 1 + sim.rng.below(5);
        sim.nodes.get_mut(&bad).unwrap().corrupt_after = Some(after);
        burst(&mut sim, &members, 20);
        sim.run_until(sim.now + 2_000);
        assert!(
            sim.nodes[&bad].corrupt_after.is_none(),
            "seed {name}: node {bad} did not go wrong"
        );
        let repairs = sim.nodes[&bad].repairs;
        sim.crash(gone);
        let rest: Vec<Id> = members.into_iter().filter(|id| *id != gone).collect();
        burst(&mut sim, &rest, 20);
        sim.heal_and_check(&name, &BTreeSet::from([gone]));
        let node = &sim.nodes[&bad];
        assert!(
            node.repairs > repairs,
            "seed {name}: node {bad} was not repaired at the view that removed {gone} \
             (verdicts {:?})",
            node.verdicts
        );
    }
}

#[test]
fn two_members_that_differ_have_no_majority_and_both_say_so() {
    for (seed, liveness) in runs(0..100) {
        let mut sim = Sim::new(seed, liveness);
        sim.config.check_every = 5;
        sim.loss = 5;
        let ids = group(&mut sim, 2);
        sim.run_until(2_000);
        let bad = ids[sim.rng.below(2) as usize];
        sim.nodes.get_mut(&bad).unwrap().corrupt_after = Some(3);
        burst(&mut sim, &ids, 40);
        sim.loss = 0;
        sim.run_until(sim.now + 5_000);
        let name = format!("{seed} ({liveness:?})");
        for id in &ids {
            let node = &sim.nodes[id];
            assert!(
                no_majority(node),
                "seed {name}: node {id} did not find the split"
            );
            assert!(
                !diverged(node) && node.repairs == 0,
                "seed {name}: node {id} took a side"
            );
        }
    }
}

/// Have the current sequencer order the upgrade to `version` (as its host does
/// when it sees a newer record); whether one did.
fn propose(sim: &mut Sim, version: u64) -> bool {
    let now = sim.now;
    let Some(id) = sim
        .alive()
        .into_iter()
        .find(|id| sim.nodes[id].core.is_sequencer() && sim.nodes[id].core.is_member())
    else {
        return false;
    };
    let node = sim.nodes.get_mut(&id).unwrap();
    if node.app.logic >= version {
        return false;
    }
    let ordered = node
        .core
        .propose_upgrade(now, version, version.to_le_bytes().to_vec());
    sim.drain(id);
    ordered
}

#[test]
fn an_upgrade_switches_every_survivor_at_one_position_even_if_its_proposer_crashes() {
    for (seed, liveness) in runs(0..300) {
        let label = format!("{seed} ({liveness:?})");
        let mut sim = Sim::new(seed, liveness);
        sim.loss = 5;
        sim.dup = 2;
        let ids = group(&mut sim, 5);
        sim.run_until(2_000);
        burst(&mut sim, &ids, 60);
        let proposer = *ids
            .iter()
            .find(|id| sim.nodes[*id].core.is_sequencer())
            .expect("a sequencer");
        assert!(
            propose(&mut sim, 2),
            "seed {label}: the sequencer orders it"
        );
        let crash = sim.rng.chance(50);
        if crash {
            sim.crash(proposer);
        }
        let rest: Vec<Id> = ids
            .iter()
            .copied()
            .filter(|i| !crash || *i != proposer)
            .collect();
        burst(&mut sim, &rest, 60);
        // The next sequencer's host orders it again while it has not switched.
        let deadline = sim.now + 30_000;
        while sim.now < deadline
            && sim
                .alive()
                .iter()
                .any(|id| sim.nodes[id].app.logic < 2 || !sim.nodes[id].core.is_member())
        {
            propose(&mut sim, 2);
            let next = sim.now + 300;
            sim.run_until(next);
        }
        let crashed = if crash {
            BTreeSet::from([proposer])
        } else {
            BTreeSet::new()
        };
        sim.heal_and_check(&label, &crashed);
        let alive = sim.alive();
        let at: BTreeSet<Option<u64>> = alive
            .iter()
            .map(|id| {
                let app = &sim.nodes[id].app;
                assert_eq!(app.logic, 2, "seed {label}: node {id} did not switch");
                app.switches.iter().find(|(_, v)| **v == 2).map(|(g, _)| *g)
            })
            .collect();
        assert_eq!(
            at.len(),
            1,
            "seed {label}: survivors switched at different positions: {at:?}"
        );
        assert!(
            at.iter().all(Option::is_some),
            "seed {label}: a survivor switched without the item"
        );
    }
}
