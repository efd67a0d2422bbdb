//! Gossip driver benchmark, in the deterministic simulator (simulated time, so the
//! numbers are rounds and bytes, not seconds of this noisy machine).
//!
//! Table 1, versus N: rounds for a rumour (a new `max`) to reach every host, rounds
//! for the `census` to be exact (or stable) at every host, bytes sent per host per
//! round, and the largest view (memory per host).
//!
//! Table 2: SWIM failure detection, our configuration (`gossip::core::swim_config`)
//! against foca's own example configuration (`Config::new_lan(10)`, from foca's
//! `foca_insecure_udp_agent` example), same seeds, same network: time until the first
//! and the last live host declares a crashed host down, and false positives (live
//! hosts declared down).
//!
//! Run: `cargo bench -p liveobjects-host --bench gossip` (`-- --quick` for a short run).

use liveobjects_host::gossip::{Event, GossipConfig};
use liveobjects_host::runtime::{Runtime, RuntimeConfig, SharedAggregate};
use liveobjects_protocols::gossip::sim::{Network, Simulation};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

fn aggregate(runtime: &Runtime, path: &str) -> SharedAggregate {
    let logic = runtime
        .load_aggregate_file(Path::new(path))
        .expect("shipped aggregate loads");
    SharedAggregate::new(logic.instantiate().expect("instantiates"))
}

struct Convergence {
    hosts: usize,
    rumour_rounds: u32,
    census_rounds: u32,
    bytes_per_host_round: f64,
    largest_view: usize,
}

fn convergence(runtime: &Runtime, hosts: usize, seed: u64) -> Convergence {
    let mut config = GossipConfig::lan(hosts as u32);
    config.swim = None;
    let round = config.round;
    let epoch_rounds = config.epoch_rounds;
    let mut sim = Simulation::new(
        seed,
        config,
        Network {
            loss: 0.05,
            ..Network::default()
        },
    );
    sim.record_events = false;
    sim.add_aggregate("census", aggregate(runtime, liveobjects_objects::CENSUS));
    sim.add_aggregate("max", aggregate(runtime, liveobjects_objects::MAX));
    for _ in 0..hosts {
        sim.add_node(3, |_| 1.0);
    }
    // Let the overlay form and one epoch finish.
    sim.run_for(round * (epoch_rounds + 5));
    let bytes_before: u64 = sim
        .live()
        .iter()
        .map(|&i| sim.node(i).unwrap().stats().bytes_sent)
        .sum();

    // Rumour: a new maximum at one host.
    let origin = hosts / 2;
    sim.node_mut(origin).unwrap().contribute_now("max", 1e9);
    sim.flush(origin);
    let mut rumour_rounds = 0;
    for r in 1..=100 {
        sim.run_for(round);
        if sim
            .live()
            .iter()
            .all(|&i| sim.node_mut(i).unwrap().current("max").map(|e| e.value) == Some(1e9))
        {
            rumour_rounds = r;
            break;
        }
    }
    let measured_rounds = rumour_rounds.max(1);
    let bytes_after: u64 = sim
        .live()
        .iter()
        .map(|&i| sim.node(i).unwrap().stats().bytes_sent)
        .sum();
    let bytes_per_host_round =
        (bytes_after - bytes_before) as f64 / hosts as f64 / f64::from(measured_rounds);

    // Census: rounds into an epoch until every host's current state gives the
    // final value of that epoch.
    let epoch_of = |sim: &mut Simulation<SharedAggregate>| {
        sim.node_mut(0).unwrap().current("census").unwrap().epoch
    };
    let start_epoch = epoch_of(&mut sim);
    while epoch_of(&mut sim) == start_epoch {
        sim.run_for(round);
    }
    let mut census_rounds = 0;
    let mut values = Vec::new();
    for r in 1..epoch_rounds {
        sim.run_for(round);
        values = sim
            .live()
            .iter()
            .map(|&i| {
                sim.node_mut(i)
                    .unwrap()
                    .current("census")
                    .unwrap()
                    .value
                    .to_bits()
            })
            .collect();
        values.sort();
        values.dedup();
        if values.len() == 1 {
            census_rounds = r;
            break;
        }
    }
    let largest_view = sim
        .live()
        .iter()
        .map(|&i| sim.node(i).unwrap().view().len())
        .max()
        .unwrap_or(0);
    let _ = values;
    Convergence {
        hosts,
        rumour_rounds,
        census_rounds,
        bytes_per_host_round,
        largest_view,
    }
}

struct Detection {
    first: Duration,
    last: Duration,
    undetected: usize,
    false_positives: usize,
}

/// N hosts with SWIM, `loss`; 60 s to form, then 5% crash; watch 120 s. `first`
/// and `last` are the earliest and latest time a live host first declared a
/// victim down (so `last` is when every host knew of every crash).
fn detection(hosts: usize, swim: foca::Config, loss: f64, seed: u64) -> Detection {
    let mut config = GossipConfig::lan(hosts as u32);
    config.swim = Some(swim);
    let mut sim = Simulation::<SharedAggregate>::new(
        seed,
        config,
        Network {
            loss,
            ..Network::default()
        },
    );
    for _ in 0..hosts {
        sim.add_node(3, |_| 1.0);
    }
    sim.run_for(Duration::from_secs(60));
    let crash_at = sim.elapsed();
    let victims: Vec<usize> = (0..hosts / 20).map(|k| 1 + k * 20).collect();
    for &v in &victims {
        sim.crash(v);
    }
    sim.run_for(Duration::from_secs(120));
    let victim_addrs: HashSet<_> = victims.iter().map(|&v| sim.addr(v)).collect();
    let live: HashSet<usize> = sim.live().into_iter().collect();
    let mut first = Duration::MAX;
    let mut last = Duration::ZERO;
    let mut undetected = 0;
    for addr in &victim_addrs {
        // When each live host first declared this victim down.
        let mut first_by_host: std::collections::HashMap<usize, Duration> = Default::default();
        for (at, i, e) in &sim.events {
            if *at >= crash_at
                && live.contains(i)
                && matches!(e, Event::MemberDown(h) if h.addr == *addr)
            {
                first_by_host.entry(*i).or_insert(*at - crash_at);
            }
        }
        undetected += live.len() - first_by_host.len();
        for &at in first_by_host.values() {
            first = first.min(at);
            last = last.max(at);
        }
    }
    let false_positives = sim
        .events
        .iter()
        .filter(|(_, _, e)| match e {
            Event::MemberDown(h) => sim.index_of(h.addr).is_some_and(|i| live.contains(&i)),
            _ => false,
        })
        .count();
    Detection {
        first,
        last,
        undetected,
        false_positives,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let sizes: &[usize] = if quick {
        &[100, 1_000]
    } else {
        &[100, 1_000, 10_000]
    };

    println!("Gossip convergence (simulated, 5% loss, view 20, push-pull every round)");
    println!(
        "{:>7} {:>7} {:>14} {:>14} {:>16} {:>12}",
        "hosts", "log2 N", "rumour rounds", "census rounds", "bytes/host/round", "largest view"
    );
    for &hosts in sizes {
        let c = convergence(&runtime, hosts, 1);
        println!(
            "{:>7} {:>7.1} {:>14} {:>14} {:>16.0} {:>12}",
            c.hosts,
            (c.hosts as f64).log2(),
            c.rumour_rounds,
            c.census_rounds,
            c.bytes_per_host_round,
            c.largest_view
        );
    }

    let hosts = if quick { 50 } else { 200 };
    let ours = liveobjects_host::gossip::core::swim_config(
        std::num::NonZeroU32::new(hosts as u32).unwrap(),
    );
    let example = foca::Config::new_lan(std::num::NonZeroU32::new(10).unwrap());
    println!();
    println!("SWIM failure detection, {hosts} hosts, 5% of them crash (simulated)");
    println!(
        "{:<28} {:>5} {:>12} {:>12} {:>11} {:>16}",
        "configuration", "loss", "first down", "last down", "undetected", "false positives"
    );
    for loss in [0.01, 0.05, 0.10] {
        for (name, config) in [
            ("ours (swim_config(N))", ours.clone()),
            ("foca example new_lan(10)", example.clone()),
        ] {
            let d = detection(hosts, config, loss, 7);
            println!(
                "{:<28} {:>4.0}% {:>11.1}s {:>11.1}s {:>11} {:>16}",
                name,
                loss * 100.0,
                d.first.as_secs_f64(),
                d.last.as_secs_f64(),
                d.undetected,
                d.false_positives
            );
        }
    }
}
