//! Directory benchmark: publish throughput, resolve+verify latency and throughput
//! (uncached over QUIC, and cached), the cost of verification alone, resolves
//! through a mirror against the primary, and zone transfers (full and
//! incremental) at several sizes, all in one run on loopback. See
//! `directory/benches/README.md`.
//!
//! Run: `cargo bench -p liveobjects-directory --bench directory` (`-- --quick`).

use liveobjects_directory::client::{Client, Resolver, ServerAddr};
use liveobjects_directory::keys::{Identity, PublicKey};
use liveobjects_directory::protocol::{Request, Response};
use liveobjects_directory::record::{Delegation, ObjectRecord, Signed};
use liveobjects_directory::server::{
    MirrorOf, Registration, ServeOptions, Server, ServerConfig, unix_now,
};
use liveobjects_directory::store::Store;
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
        options: Default::default(),
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

    // Uncached resolve: QUIC round trip + chain (2 delegations) + record verification
    // + freshness proofs.
    let primary_addr = ServerAddr {
        addr: server.local_addr(),
        key: root_public,
    };
    let (uncached_rate, latencies) =
        uncached_resolves(primary_addr, root_public, resolves, publishes).await;
    let resolver = Resolver::new(
        Client::connect_any(&[primary_addr]).await.unwrap(),
        root_public,
        None,
    );

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

    // The same uncached resolves through a mirror of this server.
    let (mirror, mirror_addr) = start_mirror(&dir.path().join("mirror.redb"), &server, root_public);
    caught_up(&server, &mirror).await;
    let (mirror_rate, mirror_latencies) =
        uncached_resolves(mirror_addr, root_public, resolves, publishes).await;
    let (primary_rate, primary_latencies) =
        uncached_resolves(primary_addr, root_public, resolves, publishes).await;
    mirror.shutdown().await;

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
    println!(
        "{:<52} {:>12.0} {:>12} {:>12}",
        "resolve + verify through the primary (same run)",
        primary_rate,
        us(percentile(&primary_latencies, 0.5)),
        us(percentile(&primary_latencies, 0.99))
    );
    println!(
        "{:<52} {:>12.0} {:>12} {:>12}",
        "resolve + verify through a mirror",
        mirror_rate,
        us(percentile(&mirror_latencies, 0.5)),
        us(percentile(&mirror_latencies, 0.99))
    );
    println!();
    println!(
        "cached resolve is {:.0}x the uncached rate; verification is {:.0}% of an uncached resolve",
        cached_rate / uncached_rate,
        100.0 * uncached_rate / verify_rate
    );
    println!(
        "a mirror resolves at {:.2}x the primary's rate (p99 {:.2}x)",
        mirror_rate / primary_rate,
        percentile(&mirror_latencies, 0.99).as_secs_f64()
            / percentile(&primary_latencies, 0.99).as_secs_f64()
    );
    server.shutdown().await;

    // Zone transfers: a mirror's pull of everything, against an incremental pull
    // of the last 100 writes, and the first resolve after a write (the primary
    // rebuilds its Merkle tree and signs a new statement).
    println!();
    println!(
        "{:>9} {:>14} {:>16} {:>10} {:>22}",
        "records", "full transfer", "incremental 100", "ratio", "resolve after a write"
    );
    let sizes: &[usize] = if quick { &[2_000] } else { &[10_000, 100_000] };
    for &n in sizes {
        let row = transfers(n).await;
        println!(
            "{:>9} {:>11.1} ms {:>13.1} ms {:>9.0}x {:>19.1} ms",
            n,
            row.full.as_secs_f64() * 1e3,
            row.incremental.as_secs_f64() * 1e3,
            row.full.as_secs_f64() / row.incremental.as_secs_f64(),
            row.resolve_after_write.as_secs_f64() * 1e3
        );
    }
}

fn start_mirror(db: &std::path::Path, primary: &Server, root: PublicKey) -> (Server, ServerAddr) {
    let key = Identity::generate();
    let public = key.public();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_path: db.to_path_buf(),
        root: key,
        max_blob_bytes: 1 << 20,
        registration: Registration::Closed,
        options: ServeOptions {
            mirror_of: Some(MirrorOf {
                primary: primary.local_addr(),
                root,
                refresh: Duration::from_millis(50),
            }),
            ..Default::default()
        },
    })
    .unwrap();
    let addr = ServerAddr {
        addr: server.local_addr(),
        key: public,
    };
    (server, addr)
}

/// Wait until `mirror` holds what `primary` holds, with its statement.
async fn caught_up(primary: &Server, mirror: &Server) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let target = primary.directory().store().serial().unwrap();
        let held = mirror.directory().store().serial().unwrap();
        let vouched = mirror
            .directory()
            .store()
            .freshness()
            .unwrap()
            .and_then(|s| s.open().ok())
            .is_some_and(|f| f.serial == held);
        if held == target && vouched {
            return;
        }
        assert!(Instant::now() < deadline, "the mirror did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn uncached_resolves(
    server: ServerAddr,
    root: PublicKey,
    resolves: usize,
    publishes: usize,
) -> (f64, Vec<Duration>) {
    let resolver = Resolver::new(Client::connect_any(&[server]).await.unwrap(), root, None);
    let mut latencies = Vec::with_capacity(resolves);
    let start = Instant::now();
    for i in 0..resolves {
        let name = format!("lo://acme/games/o{}", i % (publishes + 1));
        let t = Instant::now();
        black_box(resolver.resolve_fresh(&name).await.unwrap());
        latencies.push(t.elapsed());
    }
    let rate = resolves as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

struct TransferRow {
    full: Duration,
    incremental: Duration,
    resolve_after_write: Duration,
}

/// A primary holding `n` records (bulk-imported), and pulls from it into fresh
/// stores the way a mirror pulls: everything, then the last 100 writes.
async fn transfers(n: usize) -> TransferRow {
    let dir = tempfile::tempdir().unwrap();
    let root = Identity::generate();
    let root_public = root.public();
    let acme = Identity::generate();
    let db = dir.path().join("primary.redb");
    {
        let store = Store::open(&db).unwrap();
        let zone = Delegation::new("lo://acme/", acme.public(), 1, unix_now(), 3600);
        store
            .put_delegation("lo://acme/", &Signed::sign(&zone, &root))
            .unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let records: Vec<_> = chunk
                .iter()
                .map(|i| Signed::sign(&record(&format!("lo://acme/r/o{i}"), 1), &acme))
                .collect();
            store.import_records(&records).unwrap();
        }
    }
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_path: db,
        root,
        max_blob_bytes: 1 << 20,
        registration: Registration::Open,
        options: Default::default(),
    })
    .unwrap();
    let client = Client::connect(server.local_addr(), root_public)
        .await
        .unwrap();
    let full = pull_into(
        &client,
        &Store::open(&dir.path().join("full.redb")).unwrap(),
        0,
    )
    .await;
    let since = server.directory().store().serial().unwrap();
    let more: Vec<_> = (0..100)
        .map(|i| Signed::sign(&record(&format!("lo://acme/r/new{i}"), 1), &acme))
        .collect();
    server.directory().store().import_records(&more).unwrap();
    let incremental = pull_into(
        &client,
        &Store::open(&dir.path().join("incremental.redb")).unwrap(),
        since,
    )
    .await;
    // One write, then one resolve: the tree is rebuilt and a statement signed.
    server
        .directory()
        .store()
        .import_records(&[Signed::sign(&record("lo://acme/r/last", 1), &acme)])
        .unwrap();
    let resolver = Resolver::new(client, root_public, None);
    let t = Instant::now();
    black_box(resolver.resolve_fresh("lo://acme/r/o1").await.unwrap());
    let resolve_after_write = t.elapsed();
    server.shutdown().await;
    TransferRow {
        full,
        incremental,
        resolve_after_write,
    }
}

/// Pull what `client`'s server wrote after `since` into `store` (transfer
/// requests until complete; each answer stored in one transaction).
async fn pull_into(client: &Client, store: &Store, since: u64) -> Duration {
    let start = Instant::now();
    let mut since = since;
    loop {
        match client.request(&Request::Transfer { since }).await.unwrap() {
            Response::Transfer {
                changes,
                serial,
                complete,
                ..
            } => {
                store.apply_changes(&changes, serial, None, false).unwrap();
                since = serial;
                if complete {
                    return start.elapsed();
                }
            }
            other => panic!("{other:?}"),
        }
    }
}
