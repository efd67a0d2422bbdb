//! Deterministic simulation of the gossip driver (`liveobjects_host::gossip`) with
//! 1,000 and 10,000 hosts, seeded loss and reordering, and churn: 10% of the hosts
//! crash, new ones join. Each test checks one property after a safety phase (with
//! loss and churn) and a liveness phase (loss removed).
//!
//! The aggregates are the real `census`, `average` and `max` components from
//! `objects/`, one sandboxed instance each, shared by every simulated host (their
//! functions are pure).
//!
//! `GOSSIP_SEED=n` replays a run with another seed.

use liveobjects_host::gossip::{Event, GossipConfig};
use liveobjects_host::runtime::{Runtime, RuntimeConfig, SharedAggregate};
use liveobjects_protocols::gossip::sim::Network;

/// The simulator, running the aggregates' real components.
type Simulation = liveobjects_protocols::gossip::sim::Simulation<SharedAggregate>;
use std::collections::{HashSet, VecDeque};
use std::path::Path;

fn seed() -> u64 {
    std::env::var("GOSSIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn aggregate(runtime: &Runtime, path: &str) -> SharedAggregate {
    let logic = runtime
        .load_aggregate_file(Path::new(path))
        .expect("shipped aggregate loads");
    SharedAggregate::new(logic.instantiate().expect("instantiates"))
}

/// The input every host measures for `average` and `max`: its index mod 100.
fn input(index: usize) -> f64 {
    (index % 100) as f64
}

struct Scenario {
    sim: Simulation,
    /// Rounds run so far.
    rounds: u32,
}

impl Scenario {
    /// `hosts` hosts gossiping with 5% loss; `swim` turns SWIM on.
    fn new(hosts: usize, swim: bool, objects: &[&str]) -> Self {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let mut config = GossipConfig::lan(hosts as u32);
        if !swim {
            config.swim = None;
        }
        let mut sim = Simulation::new(
            seed(),
            config,
            Network {
                loss: 0.05,
                ..Network::default()
            },
        );
        sim.record_events = swim;
        for object in objects {
            let path = match *object {
                "census" => liveobjects_objects::CENSUS,
                "average" => liveobjects_objects::AVERAGE,
                "max" => liveobjects_objects::MAX,
                other => panic!("no aggregate {other}"),
            };
            sim.add_aggregate(object, aggregate(&runtime, path));
        }
        for index in 0..hosts {
            // Everyone joins through up to three earlier hosts.
            sim.add_node(3, |_| input(index));
        }
        Scenario { sim, rounds: 0 }
    }

    fn run_rounds(&mut self, rounds: u32) {
        let round = self.sim.round();
        self.sim.run_for(round * rounds);
        self.rounds += rounds;
    }

    /// Crash `fraction` of the live hosts, chosen at random by the seed.
    fn crash(&mut self, fraction: f64) -> Vec<usize> {
        let live = self.sim.live();
        let count = (live.len() as f64 * fraction).round() as usize;
        // A deterministic spread over the live hosts (every k-th, offset by the seed).
        let step = live.len() / count.max(1);
        let offset = (seed() as usize) % step.max(1);
        let victims: Vec<usize> = (0..count).map(|i| live[offset + i * step]).collect();
        for &victim in &victims {
            self.sim.crash(victim);
        }
        victims
    }

    fn join(&mut self, count: usize) {
        for _ in 0..count {
            let index = self.sim.len();
            self.sim.add_node(3, |_| input(index));
        }
    }

    /// The standard run: 30 rounds to form, then 10% crash and 5% join, 60
    /// rounds with loss (safety phase), then 72 rounds without (liveness phase).
    fn churn(&mut self) {
        self.run_rounds(30);
        let hosts = self.sim.live().len();
        self.crash(0.10);
        self.join(hosts / 20);
        self.run_rounds(60);
        self.sim.set_network(Network::default());
        // 72, not 60: end mid-epoch (epochs are 25 rounds), not at a boundary where
        // half the hosts have moved on.
        self.run_rounds(72);
    }
}

/// Every live host's view holds only live hosts, every live host is in someone's
/// view, and the overlay is connected.
fn check_views(sim: &Simulation) {
    let live: HashSet<usize> = sim.live().into_iter().collect();
    let mut in_degree = vec![0usize; live.iter().max().map_or(0, |m| m + 1)];
    let mut adjacency: Vec<Vec<usize>> = vec![Vec::new(); in_degree.len()];
    let mut dead_entries = 0;
    for &index in &live {
        for entry in sim.node(index).unwrap().view() {
            match sim.index_of(entry.id.addr) {
                Some(peer) if live.contains(&peer) => {
                    in_degree[peer] += 1;
                    adjacency[index].push(peer);
                    adjacency[peer].push(index);
                }
                _ => dead_entries += 1,
            }
        }
    }
    assert_eq!(
        dead_entries, 0,
        "views still hold {dead_entries} dead hosts"
    );
    let orphans = live.iter().filter(|&&i| in_degree[i] == 0).count();
    assert_eq!(orphans, 0, "{orphans} live hosts are in nobody's view");
    let start = *live.iter().next().unwrap();
    let mut seen = HashSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for &next in &adjacency[at] {
            if seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    assert_eq!(seen.len(), live.len(), "the overlay is split");
}

/// Rounds until a new maximum injected at one host is the current `max` at every
/// live host.
fn rumour_rounds(scenario: &mut Scenario) -> u32 {
    let live = scenario.sim.live();
    let origin = live[live.len() / 2];
    scenario
        .sim
        .node_mut(origin)
        .unwrap()
        .contribute_now("max", 1e9);
    scenario.sim.flush(origin);
    for round in 1..=200 {
        scenario.run_rounds(1);
        let everyone = scenario.sim.live().iter().all(|&i| {
            scenario
                .sim
                .node_mut(i)
                .unwrap()
                .current("max")
                .map(|e| e.value)
                == Some(1e9)
        });
        if everyone {
            return round;
        }
    }
    panic!("the rumour did not reach every live host in 200 rounds");
}

/// The last finished-epoch value of `object` at every live host (a host that has
/// not finished an epoch yet fails the test).
fn estimates(sim: &Simulation, object: &str) -> Vec<f64> {
    sim.live()
        .iter()
        .map(|&i| {
            sim.node(i)
                .unwrap()
                .estimate(object)
                .unwrap_or_else(|| panic!("host {i} has no {object} estimate"))
                .value
        })
        .collect()
}

#[test]
fn cyclon_views_hold_only_live_hosts_and_stay_connected_with_1000_hosts() {
    let mut scenario = Scenario::new(1_000, false, &[]);
    scenario.churn();
    check_views(&scenario.sim);
}

#[test]
fn cyclon_views_hold_only_live_hosts_and_stay_connected_with_10000_hosts() {
    let mut scenario = Scenario::new(10_000, false, &[]);
    scenario.churn();
    check_views(&scenario.sim);
}

/// How many live hosts' SWIM member lists differ from the live set, with the
/// missing live hosts and kept dead hosts summed over all of them.
fn swim_disagreement(sim: &Simulation) -> (usize, usize, usize) {
    let live: HashSet<_> = sim.live().iter().map(|&i| sim.addr(i)).collect();
    let (mut wrong, mut missing, mut kept) = (0, 0, 0);
    for &index in &sim.live() {
        let members: HashSet<_> = sim
            .node(index)
            .unwrap()
            .swim_members()
            .iter()
            .map(|m| m.addr)
            .collect();
        let mut expected = live.clone();
        expected.remove(&sim.addr(index));
        if members != expected {
            wrong += 1;
            missing += expected.difference(&members).count();
            kept += members.difference(&expected).count();
        }
    }
    (wrong, missing, kept)
}

#[test]
fn swim_membership_converges_to_the_live_hosts_with_1000_hosts() {
    let mut scenario = Scenario::new(1_000, true, &[]);
    scenario.churn();
    // The liveness phase continues until every live host's SWIM member list is
    // exactly the live set, or 100 s (500 rounds) more pass; with seed 1 every
    // host agrees 232 rounds after the churn (100 rounds into this loop).
    let mut extra = 0;
    loop {
        let (wrong, missing, kept) = swim_disagreement(&scenario.sim);
        eprintln!(
            "{:>4} rounds after the churn: {wrong} hosts disagree ({missing} live hosts \
             missing, {kept} dead ones kept)",
            132 + extra
        );
        if wrong == 0 {
            break;
        }
        assert!(
            extra < 500,
            "SWIM membership did not converge within 100 s of the churn"
        );
        scenario.run_rounds(50);
        extra += 50;
    }
    let downs = scenario
        .sim
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::MemberDown(_)))
        .count();
    assert!(downs > 0, "nobody was ever reported down, yet 10% crashed");
}

#[test]
fn a_rumour_reaches_every_live_host_in_logarithmic_rounds() {
    for hosts in [1_000usize, 10_000] {
        let mut scenario = Scenario::new(hosts, false, &["max"]);
        scenario.churn();
        let rounds = rumour_rounds(&mut scenario);
        let bound = 2 * (hosts as f64).log2().ceil() as u32;
        eprintln!(
            "{hosts} hosts: rumour reached every live host in {rounds} rounds (bound {bound})"
        );
        assert!(
            rounds <= bound,
            "{rounds} rounds for {hosts} hosts, bound {bound}"
        );
    }
}

#[test]
fn census_counts_live_hosts_within_its_stated_error() {
    for hosts in [100usize, 1_000, 10_000] {
        let mut scenario = Scenario::new(hosts, false, &["census"]);
        scenario.churn();
        let live = scenario.sim.live().len();
        let values = estimates(&scenario.sim, "census");
        // Exact below 128 hosts; above, 3 standard errors of the bottom-128 sketch.
        let stated = if live < 128 {
            0.0
        } else {
            3.0 / (126f64).sqrt()
        };
        let worst = values
            .iter()
            .map(|v| (v - live as f64).abs() / live as f64)
            .fold(0.0, f64::max);
        eprintln!(
            "census of {live} live hosts: {:.1} at the first host, worst relative error {worst:.3} \
             (stated {stated:.3})",
            values[0]
        );
        assert!(
            worst <= stated,
            "census error {worst:.3} > {stated:.3} for {live} hosts"
        );
    }
}

#[test]
fn average_and_max_converge_within_their_stated_error() {
    let mut scenario = Scenario::new(1_000, false, &["average", "max"]);
    scenario.churn();
    let live = scenario.sim.live();
    let truth = live.iter().map(|&i| input(i)).sum::<f64>() / live.len() as f64;
    // Inputs are 0..99 (uniform, sd 28.9); the mean of a uniform sample of 128
    // hosts is within 4 standard errors.
    let bound = 4.0 * 28.9 / (128f64).sqrt();
    let averages = estimates(&scenario.sim, "average");
    let worst = averages
        .iter()
        .map(|a| (a - truth).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "average {:.2} (truth {truth:.2}), worst error {worst:.2}, bound {bound:.2}",
        averages[0]
    );
    assert!(worst <= bound, "average off by {worst:.2} > {bound:.2}");
    let maxima = estimates(&scenario.sim, "max");
    assert!(
        maxima.iter().all(|&m| m == 99.0),
        "not every host has max 99: {maxima:?}"
    );
}

#[test]
fn a_healed_partition_reunites_membership_views_and_the_census() {
    let hosts = 200;
    let mut scenario = Scenario::new(hosts, true, &["census"]);
    scenario.run_rounds(100);
    // Odd and even hosts cannot reach each other for 60 s: long enough for each
    // side to declare the other down and drop it from every view.
    scenario.sim.partition(|i| (i % 2) as u8);
    scenario.run_rounds(300);
    let during = estimates(&scenario.sim, "census");
    let half = hosts as f64 / 2.0;
    assert!(
        during.iter().all(|&c| (c - half).abs() / half <= 0.01),
        "each side should count itself alone (about {half}): {during:?}"
    );
    scenario.sim.heal();
    // foca announces to down members every 65 s (without that the sides never
    // meet again: tried); the view mixing and the census follow within a few
    // epochs. Allow 200 s.
    let mut rounds_after_heal = 0;
    loop {
        scenario.run_rounds(25);
        rounds_after_heal += 25;
        let (wrong, _, _) = swim_disagreement(&scenario.sim);
        let counted = estimates(&scenario.sim, "census");
        let agreed = counted
            .iter()
            .all(|&c| (c - hosts as f64).abs() / hosts as f64 <= 3.0 / (126f64).sqrt());
        let whole = counted.iter().all(|&c| c > half * 1.5);
        if wrong == 0 && agreed && whole {
            break;
        }
        let low = counted.iter().copied().fold(f64::INFINITY, f64::min);
        let high = counted.iter().copied().fold(0.0, f64::max);
        assert!(
            rounds_after_heal < 1_000,
            "not reunited 200 s after the heal: {wrong} hosts' SWIM lists differ, census \
             between {low} and {high}"
        );
    }
    eprintln!("reunited {rounds_after_heal} rounds after the heal");
    check_views(&scenario.sim);
}
