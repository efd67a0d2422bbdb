//! `lo demo`: an embedded directory and three hosts on loopback that join a chat
//! room and a counter by name over the mesh driver (QUIC), then talk; the same
//! hosts share a stock ticker over the qsm driver (IP multicast on `lo`, with an
//! embedded membership service), keep a bank ledger on the vsync driver (durable,
//! one transaction per update: an overdraft aborts at every replica), gossip (UDP,
//! SWIM) and count themselves with the census object.

use anyhow::{Context, Result, bail};
use liveobjects_directory::client::{Client, Resolver};
use liveobjects_directory::keys::Identity;
use liveobjects_directory::protocol::DEFAULT_MAX_BLOB_BYTES;
use liveobjects_directory::record::{AccessPolicy, Category, ObjectRecord, Reliability, Signed};
use liveobjects_directory::server::{Server, ServerConfig, unix_now};
use liveobjects_host::gossip::agent::GossipAgent;
use liveobjects_host::gossip::net::GossipSocket;
use liveobjects_host::gossip::{GossipConfig, GossipNode, HostId};
use liveobjects_host::group::{GroupError, GroupNotice};
use liveobjects_host::join::{JoinOptions, join, join_qsm, prepare, resolve_aggregate};
use liveobjects_host::mesh::core::{Config, Liveness};
use liveobjects_host::mesh::group::{GroupHandle, MeshNode};
use liveobjects_host::qsm::driver::{QsmHandle, QsmNode, QsmSettings};
use liveobjects_host::qsm::membership::MembershipConfig;
use liveobjects_host::qsm::service::{DirectoryPolicy, MembershipServer};
use liveobjects_host::runtime::{AGGREGATE_INTERFACE, LogicHash, Runtime, SharedAggregate};
use liveobjects_host::vsync::group::GroupConfig;
use liveobjects_host::vsync::host::{VsyncHandle, VsyncJoin, VsyncNode, VsyncSettings};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOM: &str = "lo://demo/rooms/lobby";
const COUNTER: &str = "lo://demo/counters/hits";
const CENSUS: &str = "lo://demo/system/census";
const TICKER: &str = "lo://demo/markets/ticker";
const LEDGER: &str = "lo://demo/bank/books";
pub(super) const NAMES: [&str; 3] = ["alice", "bob", "carol"];

struct Host {
    name: &'static str,
    node: MeshNode,
    chat: GroupHandle,
    counter: GroupHandle,
}

pub(super) async fn run(runtime: &Arc<Runtime>, duration: u64, interval: f64) -> Result<()> {
    // 1. An embedded directory with a root key and the zone lo://demo/; three
    //    hosts' identities.
    let embedded = EmbeddedDirectory::start().await?;
    let (dir, identities) = (&embedded.dir, &embedded.identities);
    let demo = embedded.demo(runtime);

    // 2. Three hosts, each with its own QUIC endpoint.
    let config = Config {
        heartbeat: 100,
        suspect_after: 1_500,
        retry: 200,
        liveness: Liveness::PerPeer,
        ..Config::default()
    };
    let nodes: Vec<MeshNode> = identities
        .iter()
        .map(|id| MeshNode::start(id, "127.0.0.1:0".parse().expect("valid"), config.clone()))
        .collect::<Result<_, _>>()?;
    for (name, node) in NAMES.iter().zip(&nodes) {
        println!(
            "host       {name:<6} {} key {}",
            node.me().addr,
            node.me().key.short()
        );
    }

    // 3. Publish the shipped chat and counter: mesh driver, total order, only these
    //    three keys may join, alice's host as the seed member.
    let seed = format!("{}@{}", nodes[0].me().key, nodes[0].me().addr);
    let policy = AccessPolicy::Keys(identities.iter().map(|i| i.public()).collect());
    for (name, object) in [(ROOM, "chat"), (COUNTER, "counter")] {
        let hash = demo
            .publish_shipped(name, object, |record| {
                record.object_type.reliability = Reliability::TotalOrder;
                record.driver.options.insert("seeds".into(), seed.clone());
                record.policy = policy.clone();
            })
            .await?;
        println!(
            "published  {name:<26} {object}, logic sha256 {}, policy: 3 keys",
            &hash.to_hex()[..12]
        );
    }

    // 4. Every host joins both objects by name: resolve, verify, type check, fetch
    //    logic, authenticate, state transfer.
    let mut hosts = Vec::new();
    for (name, node) in NAMES.iter().zip(nodes) {
        let resolver = demo.resolver().await?;
        let options = JoinOptions {
            require: "total-order".parse().map_err(anyhow::Error::msg)?,
            found_if_alone: *name == "alice",
            ..JoinOptions::default()
        };
        let (chat, _) = join(&node, runtime, &resolver, ROOM, &options).await?;
        let (counter, _) = join(&node, runtime, &resolver, COUNTER, &options).await?;
        println!("joined     {name:<6} -> {ROOM} and {COUNTER}");
        hosts.push(Host {
            name,
            node,
            chat,
            counter,
        });
    }
    wait_for("three members everywhere", || async {
        for h in &hosts {
            if h.chat.status().await.map(|s| s.members.len()).unwrap_or(0) != 3 {
                return false;
            }
        }
        true
    })
    .await?;

    // Print what every replica sees, as it happens.
    let names: Vec<(String, &'static str)> = hosts
        .iter()
        .map(|h| (h.node.me().key.to_string(), h.name))
        .collect();
    for h in &hosts {
        let mut notices = h.chat.subscribe();
        let names = names.clone();
        let who = h.name;
        tokio::spawn(async move {
            while let Ok(notice) = notices.recv().await {
                if let GroupNotice::Notification { detail, .. } = notice {
                    let mut text = detail;
                    for (key, name) in &names {
                        text = text.replace(key.as_str(), name);
                    }
                    println!("  [{who:>5} sees] {text}");
                }
            }
        });
    }
    println!();

    // 5. A scripted exchange.
    let script = [
        (0, "hi all, alice here"),
        (1, "hello alice! bob joined"),
        (2, "carol says hi"),
        (0, "let's count to 6 together"),
    ];
    for (i, (who, text)) in script.iter().enumerate() {
        hosts[*who]
            .chat
            .call("post", &[&format!("{text:?}")])
            .await?;
        settle(&hosts, i as u64 + 1).await?;
    }
    for (who, n) in [(0usize, "1"), (1, "2"), (2, "3")] {
        hosts[who].counter.call("add", &[n]).await?;
        println!("{:>6} adds {n} to the counter", hosts[who].name);
    }
    wait_for("the counter at 6 everywhere", || async {
        for h in &hosts {
            if h.counter.call("get", &[]).await.ok() != Some(vec!["6".to_string()]) {
                return false;
            }
        }
        true
    })
    .await?;
    println!();
    println!("What each replica sees:");
    for h in &hosts {
        let count = h.chat.call("count", &[]).await?;
        let value = h.counter.call("get", &[]).await?;
        let status = h.chat.status().await?;
        println!(
            "  {:>6}: {} messages, counter = {}, members {}, {}",
            h.name,
            count[0],
            value[0],
            // The names each host gave itself, as this replica learned them from
            // the group (they travel with the members' addresses).
            status
                .members
                .iter()
                .map(|p| p.name.map_or_else(|| p.key.short(), |n| n.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
            if status.sequencer {
                "sequencer"
            } else {
                "member"
            }
        );
    }
    agreement(&hosts).await?;

    // 6. The same hosts share a ticker over qsm: IP multicast on lo, one region.
    let ticker = start_ticker(&demo).await?;
    for (i, (_, handle)) in ticker.hosts.iter().enumerate() {
        for q in 0..5 {
            let price = 10_000 + 100 * i as i64 + q;
            handle
                .call(
                    "publish",
                    &[
                        &format!("\"{}\"", ["ACME", "GLOBEX", "INITECH"][i]),
                        &price.to_string(),
                    ],
                )
                .await?;
        }
    }
    ticker_settle(&ticker, 15).await?;
    if let Some(status) = ticker.hosts[0].0.status().await
        && let Some(region) = status.stats.region
    {
        println!(
            "qsm        region {}: {} hosts, ring of {}, {}; 15 quotes, each applied once everywhere",
            region.id,
            region.members,
            region.ring_size,
            if region.overlay {
                "overlay"
            } else {
                "IP multicast on lo"
            }
        );
    }
    ticker_agreement(&ticker).await?;

    // 7. The same hosts keep a ledger on vsync: durable (each host's log on disk),
    //    and an update is a transaction that commits at every replica or none.
    let ledger = start_ledger(&demo, dir.path()).await?;
    let books = &ledger.hosts;
    books[0].1.call("open", &["\"alice\"", "100"]).await?;
    books[1].1.call("open", &["\"bob\"", "0"]).await?;
    books[2]
        .1
        .call("transfer", &["\"t1\"", "\"alice\"", "\"bob\"", "60"])
        .await?;
    println!("vsync      carol's host moves 60 from alice to bob: committed at every replica");
    match books[1]
        .1
        .call("transfer", &["\"t2\"", "\"alice\"", "\"bob\"", "60"])
        .await
    {
        Err(GroupError::Aborted { reason, .. }) => {
            println!("vsync      bob's host asks for 60 more: aborted everywhere ({reason})")
        }
        Ok(_) => bail!("the ledger let alice overdraw; this is a bug, please report it"),
        Err(e) => return Err(e.into()),
    }
    ledger_agreement(&ledger).await?;

    // 8. The same hosts gossip: the census, published as a gossip aggregate, run by
    //    name on every host over UDP with SWIM and a fresh domain secret.
    let agents = start_gossip(&demo).await?;
    println!();
    wait_for("the census to count 3 hosts everywhere", || async {
        for agent in &agents {
            let counted = agent
                .status()
                .await
                .and_then(|s| s.estimates.get(CENSUS).map(|e| e.value));
            if counted != Some(3.0) {
                return false;
            }
        }
        true
    })
    .await?;
    println!("gossip     every host's census counts 3 live hosts ({CENSUS})");

    // 9. Live until the duration ends (or Ctrl-C).
    println!();
    if duration == 0 {
        println!("Live: a member posts every {interval}s. Ctrl-C to stop.");
    } else {
        println!("Live for {duration}s: a member posts every {interval}s.");
    }
    let start = Instant::now();
    let step = Duration::from_secs_f64(interval.max(0.05));
    let mut tick: u64 = 0;
    while duration == 0 || start.elapsed() < Duration::from_secs(duration) {
        tokio::time::sleep(step).await;
        tick += 1;
        let h = &hosts[(tick as usize) % hosts.len()];
        h.chat
            .call("post", &[&format!("\"tick {tick} from {}\"", h.name)])
            .await?;
        h.counter.call("add", &["1"]).await?;
        let (_, quotes) = &ticker.hosts[(tick as usize) % ticker.hosts.len()];
        quotes
            .call("publish", &["\"ACME\"", &(10_000 + tick).to_string()])
            .await?;
        // One unit back and forth between alice and bob: balances stay bounded.
        let (from, to) = if tick % 2 == 1 {
            ("bob", "alice")
        } else {
            ("alice", "bob")
        };
        let (_, books) = &ledger.hosts[(tick as usize) % ledger.hosts.len()];
        books
            .call(
                "transfer",
                &[
                    &format!("\"live-{tick}\""),
                    &format!("{from:?}"),
                    &format!("{to:?}"),
                    "1",
                ],
            )
            .await?;
    }
    settle(&hosts, script.len() as u64 + tick).await?;
    ticker_settle(&ticker, 15 + tick).await?;
    println!();
    agreement(&hosts).await?;
    ticker_agreement(&ticker).await?;
    ledger_agreement(&ledger).await?;
    println!(
        "Done: {} chat messages, {} counter updates and {} transfers, each applied once by \
         all 3 replicas.",
        script.len() as u64 + tick,
        3 + tick,
        1 + tick
    );
    for h in &hosts {
        h.node.shutdown();
    }
    drop(ticker);
    drop(ledger);
    embedded.server.shutdown().await;
    Ok(())
}

/// The demo's embedded directory (its database in `dir`), with the zone
/// lo://demo/ and its owner, and the three hosts' named identities.
pub(super) struct EmbeddedDirectory {
    pub(super) dir: tempfile::TempDir,
    pub(super) server: Server,
    client: Client,
    owner: Identity,
    root_key: liveobjects_directory::keys::PublicKey,
    pub(super) identities: Vec<Identity>,
}

impl EmbeddedDirectory {
    /// Start it on a free loopback port, and say where.
    pub(super) async fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let root = Identity::generate();
        let root_key = root.public();
        let server = Server::start(ServerConfig {
            listen: "127.0.0.1:0".parse().expect("valid"),
            db_path: dir.path().join("directory.redb"),
            root,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            // The demo's own directory: the demo creates its zone with a key of its own.
            registration: liveobjects_directory::server::Registration::Open,
            options: Default::default(),
        })?;
        let owner = Identity::generate();
        let client = Client::connect(server.local_addr(), root_key).await?;
        client.create_zone("lo://demo/", &owner).await?;
        println!(
            "directory  {} (embedded; root key {})",
            server.local_addr(),
            root_key.short()
        );
        let identities = NAMES
            .iter()
            .map(|name| Identity::generate().with_name(name.parse().ok()))
            .collect();
        Ok(EmbeddedDirectory {
            dir,
            server,
            client,
            owner,
            root_key,
            identities,
        })
    }

    /// What the demo's parts publish and join with.
    pub(super) fn demo<'a>(&'a self, runtime: &'a Arc<Runtime>) -> Demo<'a> {
        Demo {
            runtime,
            client: &self.client,
            owner: &self.owner,
            directory: self.server.local_addr(),
            root_key: self.root_key,
            identities: &self.identities,
        }
    }
}

/// What every part of the demo publishes and joins with: the runtime, the embedded
/// directory (a client, the zone owner's key, its address and root key) and the
/// three hosts' identities.
pub(super) struct Demo<'a> {
    runtime: &'a Arc<Runtime>,
    client: &'a Client,
    owner: &'a Identity,
    directory: std::net::SocketAddr,
    root_key: liveobjects_directory::keys::PublicKey,
    identities: &'a [Identity],
}

impl Demo<'_> {
    /// A resolver of its own for one host (each verifies for itself).
    pub(super) async fn resolver(&self) -> Result<Resolver> {
        Ok(Resolver::new(
            Client::connect(self.directory, self.root_key).await?,
            self.root_key,
            None,
        ))
    }

    /// Publish the shipped `object` as `name` (version 1, an hour's validity, its
    /// own interface), with `customize` setting the driver, type and policy;
    /// returns the logic's hash.
    pub(super) async fn publish_shipped(
        &self,
        name: &str,
        object: &str,
        customize: impl FnOnce(&mut ObjectRecord),
    ) -> Result<LogicHash> {
        let bytes = liveobjects_objects::shipped(object)
            .with_context(|| format!("shipped object {object} missing from this build"))?;
        let logic = self.runtime.load_bytes(name, bytes)?;
        let mut record = ObjectRecord::new(name, 1, bytes, unix_now(), 3600);
        record.object_type.interface = logic
            .interface()
            .methods
            .iter()
            .find_map(|m| m.interface.clone())
            .unwrap_or_default();
        customize(&mut record);
        self.client
            .publish(Signed::sign(&record, self.owner), Some(bytes.to_vec()))
            .await?;
        Ok(logic.hash())
    }
}

/// Print whether every replica's `seen` (a digest, or what it reports) agrees,
/// as `what: replicas identical (PREFIX shown / shown / ...)`, each shown as at
/// most `width` characters; replicas that differ are a bug.
fn report_agreement(what: &str, prefix: &str, seen: &[String], width: usize) -> Result<()> {
    let same = seen.windows(2).all(|w| w[0] == w[1]);
    let shown: Vec<&str> = seen.iter().map(|s| &s[..s.len().min(width)]).collect();
    println!(
        "  {what}: replicas {} ({prefix}{})",
        if same { "identical" } else { "DIFFER" },
        shown.join(" / ")
    );
    if !same {
        bail!("{what} replicas diverged; this is a bug, please report it");
    }
    Ok(())
}

/// The qsm part of the demo: a membership service and a driver per host.
struct Ticker {
    _membership: MembershipServer,
    hosts: Vec<(QsmNode, QsmHandle)>,
}

/// Start an embedded qsm membership service (authorizing joins against the
/// directory), publish the shipped ticker on qsm, and join it from three hosts.
async fn start_ticker(demo: &Demo<'_>) -> Result<Ticker> {
    let service = Identity::generate();
    let resolver = Arc::new(demo.resolver().await?);
    // A group port and domain of its own, so that two demos on one machine never mix.
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let config = MembershipConfig {
        domain: port as u32,
        group_port: port,
        ..MembershipConfig::default()
    };
    let policy = Arc::new(DirectoryPolicy::new(resolver, service.public()));
    let membership = MembershipServer::start(
        &service,
        "127.0.0.1:0".parse().expect("valid"),
        config,
        policy,
    )?;
    let peer = membership.peer();
    demo.publish_shipped(TICKER, "ticker", |record| {
        record.object_type.category = Category::EventStream;
        record.driver.name = "qsm".into();
        record
            .driver
            .options
            .insert("membership".into(), format!("{}@{}", peer.key, peer.addr));
    })
    .await?;
    println!(
        "published  {TICKER:<26} ticker, qsm driver (membership service {}), reliable FIFO",
        peer.addr
    );
    let mut hosts = Vec::new();
    for (name, identity) in NAMES.iter().zip(demo.identities) {
        let qsm = QsmNode::start(identity, QsmSettings::loopback(), peer)?;
        let resolver = demo.resolver().await?;
        let options = JoinOptions::default();
        let prepared =
            prepare(demo.runtime, &resolver, TICKER, identity.public(), &options).await?;
        let evolution = liveobjects_host::driver::Evolution::starting_with(&prepared.verified);
        let handle = join_qsm(&qsm, demo.runtime, TICKER, &prepared, &options, evolution).await?;
        println!("joined     {name:<6} -> {TICKER} (qsm)");
        hosts.push((qsm, handle));
    }
    Ok(Ticker {
        _membership: membership,
        hosts,
    })
}

/// Wait until every host's ticker applied `count` quotes.
async fn ticker_settle(ticker: &Ticker, count: u64) -> Result<()> {
    let want = vec![count.to_string()];
    wait_for("every quote everywhere", || async {
        for (_, h) in &ticker.hosts {
            if h.call("count", &[]).await.ok().as_ref() != Some(&want) {
                return false;
            }
        }
        true
    })
    .await
}

async fn ticker_agreement(ticker: &Ticker) -> Result<()> {
    let mut digests = Vec::new();
    for (_, h) in &ticker.hosts {
        digests.push(h.call("digest", &[]).await?.join(""));
    }
    report_agreement(
        "ticker",
        "digest of every sender's quotes in order: ",
        &digests,
        usize::MAX,
    )
}

/// The vsync part of the demo: a vsync endpoint per host and its ledger replica.
struct Ledger {
    hosts: Vec<(VsyncNode, VsyncHandle)>,
}

/// Publish the shipped ledger on vsync (durable, alice's host as the seed) and
/// join it by name from three hosts, each keeping its log under `data`.
async fn start_ledger(demo: &Demo<'_>, data: &std::path::Path) -> Result<Ledger> {
    let nodes: Vec<VsyncNode> = NAMES
        .iter()
        .zip(demo.identities)
        .map(|(name, identity)| {
            VsyncNode::start(
                identity,
                "127.0.0.1:0".parse().expect("valid"),
                VsyncSettings {
                    data_dir: data.join(format!("vsync-{name}")),
                    group: GroupConfig::default(),
                    evidence: None,
                },
            )
        })
        .collect::<Result<_, _>>()?;
    let seed = nodes[0].me();
    demo.publish_shipped(LEDGER, "ledger", |record| {
        record.object_type.reliability = Reliability::Durable;
        record.driver.name = "vsync".into();
        record
            .driver
            .options
            .insert("seeds".into(), format!("{}@{}", seed.key, seed.addr));
        record.policy = AccessPolicy::Keys(demo.identities.iter().map(|i| i.public()).collect());
    })
    .await?;
    println!("published  {LEDGER:<26} ledger, vsync driver, durable, policy: 3 keys");
    let mut hosts = Vec::new();
    for ((name, identity), node) in NAMES.iter().zip(demo.identities).zip(nodes) {
        let resolver = demo.resolver().await?;
        let options = JoinOptions {
            require: "durable".parse().map_err(anyhow::Error::msg)?,
            ..JoinOptions::default()
        };
        let prepared =
            prepare(demo.runtime, &resolver, LEDGER, identity.public(), &options).await?;
        let record = &prepared.verified.record;
        let how = VsyncJoin {
            seeds: liveobjects_host::join::seeds(record),
            found_if_alone: *name == "alice",
            durable: true,
            policy: record.policy.clone(),
            grant: None,
            evolution: liveobjects_host::driver::Evolution::starting_with(&prepared.verified),
            check_every: liveobjects_host::vsync::node_driver::DEFAULT_CHECK_EVERY,
        };
        let logic = prepared.replica_logic(LEDGER)?;
        let handle = node.join(demo.runtime, logic, LEDGER, how).await?;
        println!("joined     {name:<6} -> {LEDGER} (vsync)");
        hosts.push((node, handle));
    }
    Ok(Ledger { hosts })
}

/// Every replica's balances and total, which must agree (and conserve money).
async fn ledger_agreement(ledger: &Ledger) -> Result<()> {
    let mut seen = Vec::new();
    let mut totals = Vec::new();
    for (_, h) in &ledger.hosts {
        let accounts = h.call("accounts", &[]).await?.join("");
        let total = h.call("total", &[]).await?.join("");
        seen.push(format!("accounts {accounts}, total {total}"));
        totals.push(total);
    }
    report_agreement("ledger", "", &seen, usize::MAX)?;
    if totals.iter().any(|t| t != "100") {
        bail!(
            "the ledger's total is {totals:?}, not 100: money was lost; this is a bug, please report it"
        );
    }
    Ok(())
}

/// Publish the shipped census as a gossip aggregate and start a gossip agent per
/// host that resolves it by name (verified) and runs it: 100 ms rounds, 1 s
/// epochs, SWIM, a fresh domain secret.
async fn start_gossip(demo: &Demo<'_>) -> Result<Vec<GossipAgent>> {
    let bytes =
        liveobjects_objects::shipped("census").context("shipped census missing from this build")?;
    let mut record = ObjectRecord::new(CENSUS, 1, bytes, unix_now(), 3600);
    record.object_type.interface = AGGREGATE_INTERFACE.to_string();
    record.object_type.category = Category::GossipAggregate;
    record.object_type.reliability = Reliability::BestEffort;
    record.driver.name = "gossip".into();
    demo.client
        .publish(Signed::sign(&record, demo.owner), Some(bytes.to_vec()))
        .await?;
    println!(
        "published  {CENSUS:<26} census, gossip aggregate, logic sha256 {}",
        &LogicHash::of(bytes).to_hex()[..12]
    );
    // A public key is 32 unpredictable bytes: good enough for a demo's secret.
    let secret = Identity::generate().public().0;
    let mut agents = Vec::new();
    let mut first = None;
    for name in NAMES {
        let resolver = demo.resolver().await?;
        let (logic, _) = resolve_aggregate(demo.runtime, &resolver, CENSUS).await?;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let mut config = GossipConfig::lan(3);
        config.round = Duration::from_millis(100);
        config.epoch_rounds = 10;
        config.secret = Some(secret);
        let now = Instant::now();
        let mut node = GossipNode::new(HostId { addr, boot: 1 }, config, addr.port().into(), now);
        node.add_aggregate(CENSUS, SharedAggregate::new(logic.instantiate()?), 1.0, now);
        node.join(first.as_slice(), now);
        first.get_or_insert(addr);
        agents.push(GossipAgent::spawn(
            GossipSocket::new(socket, node),
            vec![CENSUS.to_string()],
        ));
        println!("gossip     {name:<6} {addr} runs {CENSUS}");
    }
    Ok(agents)
}

/// Wait until every host's chat shows `count` messages.
async fn settle(hosts: &[Host], count: u64) -> Result<()> {
    let want = vec![count.to_string()];
    wait_for("every message everywhere", || async {
        for h in hosts {
            if h.chat.call("count", &[]).await.ok().as_ref() != Some(&want) {
                return false;
            }
        }
        true
    })
    .await?;
    // Let the printers catch up before the next line of the script.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn agreement(hosts: &[Host]) -> Result<()> {
    for (what, pick) in [("chat", 0), ("counter", 1)] {
        let mut hashes = Vec::new();
        for h in hosts {
            let g = if pick == 0 { &h.chat } else { &h.counter };
            hashes.push(LogicHash::of(&g.snapshot().await?).to_hex());
        }
        report_agreement(what, "snapshot sha256 ", &hashes, 12)?;
    }
    Ok(())
}
