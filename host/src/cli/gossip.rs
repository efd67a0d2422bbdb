//! `lo gossip`: run this host in a gossip domain and print membership changes and
//! the aggregates (census, average, max) as each epoch finishes.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use liveobjects_host::gossip::core::DomainSecret;
use liveobjects_host::gossip::net::GossipSocket;
use liveobjects_host::gossip::node_driver::boot_number;
use liveobjects_host::gossip::{Event, GossipConfig, GossipNode, HostId};
use liveobjects_host::join::{JoinError, resolve_aggregate};
use liveobjects_host::runtime::{AggregateLogic, Runtime, SharedAggregate};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Arguments of `lo gossip`.
#[derive(Args, Debug)]
pub struct GossipArgs {
    /// UDP address to gossip on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Hosts to join through, by UDP address (repeat or separate with commas).
    #[arg(long = "seed", value_delimiter = ',', value_name = "ADDR")]
    seeds: Vec<SocketAddr>,
    /// Aggregate objects to run: a published one by name (lo://zone/census,
    /// verified through the directory), a shipped one (census, average, max), or
    /// NAME=FILE.wasm (repeat or separate with commas).
    #[arg(
        long = "object",
        value_delimiter = ',',
        default_values = ["census", "average", "max"]
    )]
    objects: Vec<String>,
    /// This host's number: a value, or `loadavg` (the 1-minute load average,
    /// re-read every epoch).
    #[arg(long, default_value = "loadavg")]
    input: String,
    /// Milliseconds per gossip round.
    #[arg(long, default_value_t = 200)]
    round_ms: u64,
    /// Rounds per aggregation epoch (must exceed log2(hosts) + 5 or so).
    #[arg(long, default_value_t = 25)]
    epoch_rounds: u32,
    /// Expected number of hosts; tunes SWIM's suspicion timeout.
    #[arg(long, default_value_t = 16)]
    expected_hosts: u32,
    /// Run without SWIM: Cyclon's aging alone removes dead hosts.
    #[arg(long)]
    no_swim: bool,
    /// Stop after this many seconds (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Print one JSON object per line (for scripts) instead of text.
    #[arg(long)]
    json: bool,
    /// The gossip domain's shared secret (64 hex digits): every datagram is then
    /// authenticated, and only hosts with the secret take part. Without it anyone
    /// who can send UDP to this host can lie to it.
    #[arg(long, env = "LO_GOSSIP_SECRET", value_name = "HEX", value_parser = liveobjects_host::gossip::node_driver::parse_secret)]
    secret: Option<DomainSecret>,
    /// The directory to resolve lo:// objects with.
    #[command(flatten)]
    target: super::directory::DirectoryTarget,
    // Last: its help heading applies to what follows it.
    #[command(flatten)]
    pub(crate) runtime: super::RuntimeArgs,
}

enum Input {
    Fixed(f64),
    LoadAverage,
}

impl Input {
    fn read(&self) -> f64 {
        match self {
            Input::Fixed(value) => *value,
            Input::LoadAverage => std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|text| text.split_whitespace().next()?.parse().ok())
                .unwrap_or(f64::NAN),
        }
    }
}

/// Run `lo gossip`.
pub fn gossip(runtime: Runtime, args: GossipArgs) -> Result<()> {
    let input = match args.input.as_str() {
        "loadavg" => Input::LoadAverage,
        text => Input::Fixed(
            text.parse()
                .with_context(|| format!("--input {text:?} is neither a number nor `loadavg`"))?,
        ),
    };
    let mut objects = Vec::new();
    let mut seeds = args.seeds.clone();
    for spec in &args.objects {
        let (name, logic) = if spec.starts_with("lo://") {
            let (logic, record_seeds) = resolve_published(&runtime, &args.target, spec)?;
            seeds.extend(record_seeds);
            (spec.clone(), logic)
        } else {
            match spec.split_once('=') {
                Some((name, file)) => (
                    name.to_string(),
                    runtime.load_aggregate_file(Path::new(file))?,
                ),
                None => {
                    let Some(bytes) = liveobjects_objects::shipped(spec) else {
                        bail!(
                            "--object {spec:?}: no shipped aggregate of that name (census, \
                             average, max); give lo://NAME or NAME=FILE.wasm for your own"
                        );
                    };
                    (spec.clone(), runtime.load_aggregate_bytes(spec, bytes)?)
                }
            }
        };
        let instance = logic
            .instantiate()
            .with_context(|| format!("starting aggregate object {name}"))?;
        objects.push((name, SharedAggregate::new(instance)));
    }
    if args.round_ms == 0 {
        bail!("--round-ms must be at least 1");
    }

    super::tokio()?.block_on(async move {
        let socket = tokio::net::UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot bind UDP {}", args.listen))?;
        let addr = socket.local_addr()?;
        let boot = boot_number();
        let mut config = GossipConfig::lan(args.expected_hosts);
        config.round = Duration::from_millis(args.round_ms);
        config.epoch_rounds = args.epoch_rounds;
        if args.no_swim {
            config.swim = None;
        }
        config.secret = args.secret;
        let now = Instant::now();
        let mut node = GossipNode::new(
            HostId { addr, boot },
            config,
            boot ^ u64::from(addr.port()),
            now,
        );
        let first = input.read();
        for (name, code) in &objects {
            node.add_aggregate(name, code.clone(), first, now);
        }
        node.join(&seeds, now);
        let mut shell = GossipSocket::new(socket, node);
        print_line(
            args.json,
            serde_json::json!({"event": "listening", "addr": addr.to_string()}),
            &format!("gossiping on {addr} (boot {boot}); seeds: {seeds:?}"),
        );

        let deadline = (args.duration > 0).then(|| now + Duration::from_secs(args.duration));
        let mut last_read = Instant::now();
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let step = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), shell.step()).await.ok(),
                    None => Some(shell.step().await),
                }
            };
            tokio::select! {
                result = step => match result {
                    Some(result) => result.context("gossip socket failed")?,
                    None => break,
                },
                _ = &mut ctrl_c => break,
            }
            // The number counts from the next epoch a host starts; refresh it once
            // a second so that epoch gets a current reading.
            if last_read.elapsed() >= Duration::from_secs(1) {
                last_read = Instant::now();
                let value = input.read();
                for (name, _) in &objects {
                    shell.node().set_input(name, value);
                }
            }
            while let Some(event) = shell.node().poll_event() {
                report(args.json, &event);
            }
        }
        shell.node().leave(Instant::now());
        // Best effort: tell peers we are going before the socket closes.
        let _ = tokio::time::timeout(Duration::from_millis(200), shell.step()).await;
        let stats = shell.node().stats();
        print_line(
            args.json,
            serde_json::json!({
                "event": "stopped",
                "rounds": stats.rounds,
                "datagrams_sent": stats.datagrams_sent,
                "bytes_sent": stats.bytes_sent,
                "datagrams_dropped": stats.datagrams_dropped,
            }),
            &format!(
                "stopped after {} rounds: sent {} datagrams ({} bytes), dropped {} bad ones",
                stats.rounds, stats.datagrams_sent, stats.bytes_sent, stats.datagrams_dropped
            ),
        );
        Ok(())
    })
}

/// Resolve a published aggregate: verify its record, check it is a gossip
/// aggregate, fetch and verify its logic. Returns it with the seeds its record
/// lists (driver option `seeds=ADDR,...`).
fn resolve_published(
    runtime: &Runtime,
    target: &super::directory::DirectoryTarget,
    name: &str,
) -> Result<(std::sync::Arc<AggregateLogic>, Vec<SocketAddr>)> {
    super::tokio()?.block_on(async {
        let resolver = super::directory::resolver(target).await?;
        let (logic, verified) = resolve_aggregate(runtime, &resolver, name)
            .await
            .map_err(|e| match e {
                JoinError::Type { reason, .. } => anyhow!("cannot run {name}: {reason}"),
                other => other.into(),
            })?;
        let record = &verified.record;
        let mut seeds = Vec::new();
        if let Some(list) = record.driver.options.get("seeds") {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                seeds.push(item.parse().with_context(|| {
                    format!("{name}: record seed {item:?} is not an ADDR:PORT")
                })?);
            }
        }
        Ok((logic, seeds))
    })
}

fn report(json: bool, event: &Event) {
    match event {
        Event::MemberUp(id) => print_line(
            json,
            serde_json::json!({"event": "up", "host": id.addr.to_string(), "boot": id.boot}),
            &format!("up       {}", id.addr),
        ),
        Event::MemberDown(id) => print_line(
            json,
            serde_json::json!({"event": "down", "host": id.addr.to_string(), "boot": id.boot}),
            &format!("down     {}", id.addr),
        ),
        Event::Estimate {
            object,
            epoch,
            value,
        } => print_line(
            json,
            serde_json::json!({"event": "estimate", "object": object, "epoch": epoch, "value": value}),
            &format!("{object:<8} epoch {epoch:>5}: {value:.3}"),
        ),
        // Cards answer requests this command never makes, and it computes every
        // aggregate itself (no shares are handed out).
        Event::Card { .. } | Event::Share(_) => {}
        Event::AggregateFailed { object, error } => print_line(
            json,
            serde_json::json!({"event": "failed", "object": object, "error": error}),
            &format!("{object}: {error}"),
        ),
    }
}

fn print_line(json: bool, value: serde_json::Value, text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{text}")
    };
    let _ = out.flush();
}
