//! Directory benchmark: publish throughput, resolve+verify latency and throughput
//! (uncached over QUIC, and cached), and the cost of verification alone, all in one
//! run on loopback. See `directory/benches/README.md`.
//!
//! Run: `cargo bench -p liveobjects-directory --bench directory` (`-- --quick`).

use liveobjects_directory::client::{Client, Resolver};
use liveobjects_directory::keys::Identity;
use liveobjects_directory::record::{Delegation, ObjectRecord, Signed};
use liveobjects_directory::server::{Registration, Server, ServerConfig, unix_now};
use liveobjects_directory::verify::verify_record;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn record(name: &str, version: u64) -> ObjectRecord {
    let mut r = ObjectRecord::new(name, version, b"bench logic", unix_now(), 3600);
    r.object_type.interface = "liveobjects:chat/chat@0.1.0".into();
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (publishes, resolves, cached_resolves) = if quick {
        (50, 300, 20_000)
    } else {
        (300, 3_000, 200_000)
    };
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let root_public = root.public();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_path: dir.path().join("bench.redb"),
        root,
        max_blob_bytes: 1 << 20,
        registration: Registration::Open,
    })
    .unwrap();
    let acme = Identity::generate();
    let games = Identity::generate();
    let client = Client::connect(server.local_addr(), root_public)
        .await
        .unwrap();
    client.create_zone("lo://acme/", &acme).await.unwrap();
    let now = unix_now();
    client
        .delegate(Signed::sign(
            &Delegation::new("lo://acme/games/", games.public(), 1, now, 3600),
            &acme,
        ))
        .await
        .unwrap();
    client
        .publish(
            Signed::sign(&record("lo://acme/games/o0", 1), &games),
            Some(b"bench logic".to_vec()),
        )
        .await
        .unwrap();

    // Publish: sign + QUIC round trip + server checks + durable (fsync) commit.
    let start = Instant::now();
    for i in 1..=publishes {
        client
            .publish(
                Signed::sign(&record(&format!("lo://acme/games/o{i}"), 1), &games),
                None,
            )
            .await
            .unwrap();
    }
    let publish_rate = publishes as f64 / start.elapsed().as_secs_f64();

    // Uncached resolve: QUIC round trip + chain (2 delegations) + record verification.
    let resolver = Resolver::new(
        Client::connect(server.local_addr(), root_public)
            .await
            .unwrap(),
        root_public,
        None,
    );
    let mut latencies = Vec::with_capacity(resolves);
    let start = Instant::now();
    for i in 0..resolves {
        let name = format!("lo://acme/games/o{}", i % (publishes + 1));
        let t = Instant::now();
        black_box(resolver.resolve_fresh(&name).await.unwrap());
        latencies.push(t.elapsed());
    }
    let uncached_rate = resolves as f64 / start.elapsed().as_secs_f64();
    latencies.sort();

    // Cached resolve.
    let start = Instant::now();
    for i in 0..cached_resolves {
        let name = format!("lo://acme/games/o{}", i % (publishes + 1));
        black_box(resolver.resolve(&name).await.unwrap());
    }
    let cached_rate = cached_resolves as f64 / start.elapsed().as_secs_f64();

    // Verification alone (no network), same record and chain.
    let (signed, chain) = client
        .resolve_unverified("lo://acme/games/o1")
        .await
        .unwrap();
    let n = if quick { 2_000 } else { 20_000 };
    let start = Instant::now();
    for _ in 0..n {
        black_box(verify_record(root_public, &chain, &signed, unix_now()).unwrap());
    }
    let verify_rate = n as f64 / start.elapsed().as_secs_f64();

    println!();
    println!(
        "liveobjects directory benchmark (loopback QUIC, record in a zone 2 delegations deep)"
    );
    println!(
        "{:<52} {:>12} {:>12} {:>12}",
        "measurement", "ops/s", "p50", "p99"
    );
    println!(
        "{:<52} {:>12.0}",
        "publish (sign, check, fsync commit)", publish_rate
    );
    println!(
        "{:<52} {:>12.0} {:>12} {:>12}",
        "resolve + verify, uncached (QUIC round trip)",
        uncached_rate,
        us(percentile(&latencies, 0.5)),
        us(percentile(&latencies, 0.99))
    );
    println!(
        "{:<52} {:>12.0}",
        "resolve, cached (verified earlier)", cached_rate
    );
    println!(
        "{:<52} {:>12.0}",
        "verify only (3 ed25519 signatures)", verify_rate
    );
    println!();
    println!(
        "cached resolve is {:.0}x the uncached rate; verification is {:.0}% of an uncached resolve",
        cached_rate / uncached_rate,
        100.0 * uncached_rate / verify_rate
    );
    server.shutdown().await;
}
