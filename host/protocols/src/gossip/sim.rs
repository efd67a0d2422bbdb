//! A deterministic simulator for many [`GossipNode`]s: a virtual clock, a network
//! with seeded loss, latency and reordering, crashes and joins. Every random choice
//! derives from one seed, so a failing run replays exactly.
//!
//! Used by `host/tests/all/gossip_simulation.rs` and `host/benches/gossip.rs`,
//! with the aggregates' real components as the code.

use super::HostId;
use super::core::{AggregateCode, Event, GossipConfig, GossipNode};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Network conditions.
#[derive(Debug, Clone)]
pub struct Network {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// One-way latency is uniform in this range (so datagrams reorder).
    pub latency: (Duration, Duration),
}

impl Default for Network {
    fn default() -> Self {
        Network {
            loss: 0.0,
            latency: (Duration::from_millis(1), Duration::from_millis(20)),
        }
    }
}

struct InFlight {
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// Many gossip nodes on a simulated network, all running aggregates with code `C`.
pub struct Simulation<C> {
    rng: StdRng,
    start: Instant,
    now: Instant,
    config: GossipConfig,
    network: Network,
    nodes: Vec<Option<GossipNode<C>>>,
    addrs: Vec<SocketAddr>,
    index: HashMap<SocketAddr, usize>,
    aggregates: Vec<(String, C)>,
    /// (deliver at, sequence) -> datagram.
    wire: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, InFlight>,
    /// (due, node) wake-ups; stale ones are skipped.
    wakeups: BinaryHeap<Reverse<(Instant, usize)>>,
    sequence: u64,
    /// Side of each node while a partition is on; datagrams between sides are lost.
    partition: Option<Vec<u8>>,
    /// Datagrams delivered, lost.
    pub delivered: u64,
    /// Datagrams lost by the network.
    pub lost: u64,
    /// Every event any node raised: (time since start, node, event).
    pub events: Vec<(Duration, usize, Event)>,
    /// Whether to keep events (membership and estimates) in [`Self::events`].
    pub record_events: bool,
}

impl<C: AggregateCode + Clone> Simulation<C> {
    /// An empty simulation.
    pub fn new(seed: u64, config: GossipConfig, network: Network) -> Self {
        let start = Instant::now();
        Simulation {
            rng: StdRng::seed_from_u64(seed),
            start,
            now: start,
            config,
            network,
            nodes: Vec::new(),
            addrs: Vec::new(),
            index: HashMap::new(),
            aggregates: Vec::new(),
            wire: BinaryHeap::new(),
            in_flight: HashMap::new(),
            wakeups: BinaryHeap::new(),
            sequence: 0,
            partition: None,
            delivered: 0,
            lost: 0,
            events: Vec::new(),
            record_events: true,
        }
    }

    /// Every node added from now on runs `object` with `code`.
    pub fn add_aggregate(&mut self, object: &str, code: C) {
        self.aggregates.push((object.to_string(), code));
    }

    /// Add a node whose input is `input(object)` and that joins through up to
    /// `seeds` random live nodes. Returns its index.
    pub fn add_node(&mut self, seeds: usize, input: impl Fn(&str) -> f64) -> usize {
        let index = self.nodes.len();
        let addr = SocketAddr::from((
            [10, (index >> 16) as u8, (index >> 8) as u8, index as u8],
            7000,
        ));
        let id = HostId { addr, boot: 1 };
        let mut node = GossipNode::new(id, self.config.clone(), self.rng.random(), self.now);
        for (object, code) in &self.aggregates {
            node.add_aggregate(object, code.clone(), input(object), self.now);
        }
        let live = self.live();
        let chosen: Vec<SocketAddr> = (0..seeds.min(live.len()))
            .map(|_| self.addrs[live[self.rng.random_range(0..live.len())]])
            .collect();
        node.join(&chosen, self.now);
        self.nodes.push(Some(node));
        self.addrs.push(addr);
        self.index.insert(addr, index);
        self.flush(index);
        index
    }

    /// Crash node `index`: it stops at once, and datagrams to it are lost.
    pub fn crash(&mut self, index: usize) {
        self.nodes[index] = None;
    }

    /// How many nodes were ever added (live or crashed).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was ever added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Indices of live nodes.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// A live node.
    pub fn node(&self, index: usize) -> Option<&GossipNode<C>> {
        self.nodes.get(index)?.as_ref()
    }

    /// A live node, mutably (to feed it commands; call [`Self::flush`] after).
    pub fn node_mut(&mut self, index: usize) -> Option<&mut GossipNode<C>> {
        self.nodes.get_mut(index)?.as_mut()
    }

    /// The address of node `index`.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.addrs[index]
    }

    /// The node with address `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.index.get(&addr).copied()
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The length of one gossip round.
    pub fn round(&self) -> Duration {
        self.config.round
    }

    /// Cut the network: `side(node)` for every node; datagrams between different
    /// sides are lost until [`Self::heal`]. Nodes added meanwhile are on side 0.
    pub fn partition(&mut self, side: impl Fn(usize) -> u8) {
        self.partition = Some((0..self.nodes.len()).map(side).collect());
    }

    /// End the partition.
    pub fn heal(&mut self) {
        self.partition = None;
    }

    /// Change the network (e.g. remove loss for a liveness phase).
    pub fn set_network(&mut self, network: Network) {
        self.network = network;
    }

    /// Run until `duration` of simulated time has passed.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        loop {
            let next_wire = self.wire.peek().map(|Reverse((at, _))| *at);
            let next_wake = self.wakeups.peek().map(|Reverse((at, _))| *at);
            let next = match (next_wire, next_wake) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = next;
            if next_wire == Some(next) {
                let Reverse((_, sequence)) = self.wire.pop().expect("peeked");
                let datagram = self.in_flight.remove(&sequence).expect("queued");
                let now = self.now;
                if let Some(node) = self.nodes[datagram.to].as_mut() {
                    self.delivered += 1;
                    // Bad datagrams are counted by the node; nothing else to do.
                    let _ = node.handle_datagram(datagram.from, &datagram.bytes, now);
                    self.flush(datagram.to);
                }
            } else {
                let Reverse((_, index)) = self.wakeups.pop().expect("peeked");
                let now = self.now;
                let Some(node) = self.nodes[index].as_mut() else {
                    continue;
                };
                if node.poll_timeout() > now {
                    continue; // stale wake-up: a later one is queued
                }
                node.handle_timeout(now);
                self.flush(index);
            }
        }
        self.now = until;
    }

    /// Send what node `index` queued and schedule its next wake-up.
    pub fn flush(&mut self, index: usize) {
        let Some(node) = self.nodes[index].as_mut() else {
            return;
        };
        let from = self.addrs[index];
        let mut transmits = Vec::new();
        while let Some(t) = node.poll_transmit() {
            transmits.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
        let wake = node.poll_timeout();
        self.wakeups.push(Reverse((wake, index)));
        if self.record_events {
            let at = self.now - self.start;
            self.events
                .extend(events.into_iter().map(|e| (at, index, e)));
        }
        for transmit in transmits {
            let Some(&to) = self.index.get(&transmit.to) else {
                self.lost += 1;
                continue;
            };
            let side = |node: usize| {
                self.partition
                    .as_ref()
                    .map_or(0, |sides| sides.get(node).copied().unwrap_or(0))
            };
            if side(index) != side(to) {
                self.lost += 1;
                continue;
            }
            if self.rng.random_bool(self.network.loss.clamp(0.0, 1.0)) {
                self.lost += 1;
                continue;
            }
            let (low, high) = self.network.latency;
            let latency = if high > low {
                low + (high - low).mul_f64(self.rng.random::<f64>())
            } else {
                low
            };
            let sequence = self.sequence;
            self.sequence += 1;
            self.wire.push(Reverse((self.now + latency, sequence)));
            self.in_flight.insert(
                sequence,
                InFlight {
                    to,
                    from,
                    bytes: transmit.bytes,
                },
            );
        }
    }
}
