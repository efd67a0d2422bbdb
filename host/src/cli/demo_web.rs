//! `lo demo --web`: the demo's directory and three hosts (alice, bob, carol), each
//! a full node serving the HTTP API and the web page on loopback. They share a
//! chat room, a counter and a ticker over the mesh driver, and a live document
//! that embeds all three; the URL of each host's page is printed. Open two of them
//! side by side: what one does appears on the other.

use super::demo::{EmbeddedDirectory, NAMES};
use anyhow::{Context, Result, bail};
use clap::Parser;
use liveobjects_directory::record::{AccessPolicy, Reliability};
use liveobjects_host::driver::DriverArgs;
use liveobjects_host::node::Node;
use liveobjects_host::runtime::Runtime;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOM: &str = "lo://demo/rooms/lobby";
const COUNTER: &str = "lo://demo/counters/hits";
const TICKER: &str = "lo://demo/markets/ticker";
const DOC: &str = "lo://demo/docs/welcome";

/// The drivers' settings as `lo node` takes them, all defaults: every address
/// on loopback port 0.
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    drivers: DriverArgs,
}

/// One host: a node and where its page is.
struct WebHost {
    name: &'static str,
    node: Arc<Node>,
    url: String,
}

pub(super) async fn run(runtime: &Arc<Runtime>, duration: u64, interval: f64) -> Result<()> {
    let embedded = EmbeddedDirectory::start().await?;
    let demo = embedded.demo(runtime);
    let (dir, identities) = (&embedded.dir, &embedded.identities);

    // Three nodes, each with every driver and an HTTP API on a free loopback port.
    let mut hosts = Vec::new();
    for (name, identity) in NAMES.iter().zip(identities) {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let drivers = Defaults::parse_from(["lo"])
            .drivers
            .start(identity, &data, runtime)
            .await
            .map_err(anyhow::Error::msg)?;
        let node = Node::new(drivers, runtime.clone(), demo.resolver().await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding an HTTP API on loopback")?;
        let at = listener.local_addr()?;
        let serving = node.clone();
        tokio::spawn(async move {
            let options = liveobjects_host::http::HttpOptions::default();
            if let Err(e) = liveobjects_host::http::serve(serving, listener, options).await {
                tracing::error!("the HTTP API on {at} stopped: {e}");
            }
        });
        hosts.push(WebHost {
            name,
            node,
            url: format!("http://{at}/"),
        });
    }

    // The objects: mesh, only these three keys, alice's node as the seed. The
    // ticker promises only reliable FIFO (embedding it where total order is
    // required is refused: try it on the page).
    let me = hosts[0].node.me();
    let seed = format!("{}@{}", me.key, me.addr);
    let policy = AccessPolicy::Keys(identities.iter().map(|i| i.public()).collect());
    for (name, object, reliability) in [
        (ROOM, "chat", Reliability::TotalOrder),
        (COUNTER, "counter", Reliability::TotalOrder),
        (TICKER, "ticker", Reliability::ReliableFifo),
        (DOC, "doc", Reliability::TotalOrder),
    ] {
        demo.publish_shipped(name, object, |record| {
            record.object_type.reliability = reliability;
            record.driver.name = "mesh".into();
            record.driver.options.insert("seeds".into(), seed.clone());
            record.policy = policy.clone();
        })
        .await?;
        println!("published  {name:<26} {object}, {reliability}");
    }
    for (i, host) in hosts.iter().enumerate() {
        for name in [ROOM, COUNTER, TICKER, DOC] {
            host.node
                .join_object(name, "", i == 0)
                .await
                .with_context(|| format!("{} joining {name}", host.name))?;
        }
    }

    // The document: text, and the three objects embedded (the host checks each
    // reference's type before the call runs).
    let alice = &hosts[0].node;
    let doc_calls: [(&str, String); 6] = [
        ("set-title", "\"Welcome to liveobjects\"".into()),
        (
            "add-text",
            "\"This document is a live object; so is everything embedded in it. \
             Open this page on another host and post in the chat.\""
                .into(),
        ),
        ("embed", embed_arg(ROOM, "total-order")),
        ("embed", embed_arg(COUNTER, "total-order")),
        (
            "add-text",
            "\"The ticker below gives reliable FIFO, which is all the document asks of it.\""
                .into(),
        ),
        ("embed", embed_arg(TICKER, "reliable-fifo")),
    ];
    for (method, arg) in &doc_calls {
        alice
            .call_object(DOC, method, &[arg])
            .await
            .with_context(|| format!("building the document: {method}({arg})"))?;
    }
    alice
        .call_object(
            ROOM,
            "post",
            &["\"welcome! this room is live on all three hosts\""],
        )
        .await?;

    println!();
    for host in &hosts {
        println!(
            "web        {:<6} {}#/object/{}",
            host.name,
            host.url,
            DOC.replace(':', "%3A").replace('/', "%2F")
        );
    }
    println!();
    if duration == 0 {
        println!(
            "Live: the ticker moves every {interval}s, the counter every fifth. Ctrl-C to stop."
        );
    } else {
        println!(
            "Live for {duration}s: the ticker moves every {interval}s, the counter every fifth."
        );
    }
    let start = Instant::now();
    let step = Duration::from_secs_f64(interval.max(0.05));
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if duration != 0 && start.elapsed() >= Duration::from_secs(duration) {
            break;
        }
        tick += 1;
        let host = &hosts[(tick as usize) % hosts.len()];
        let price = 10_000 + (tick * 37 % 200) as i64 - 100;
        if let Err(e) = host
            .node
            .call_object(TICKER, "publish", &["\"ACME\"", &price.to_string()])
            .await
        {
            bail!("{} publishing a quote: {e}", host.name);
        }
        if tick.is_multiple_of(5)
            && let Err(e) = host.node.call_object(COUNTER, "add", &["1"]).await
        {
            bail!("{} adding to the counter: {e}", host.name);
        }
    }
    println!(
        "Stopped after {tick} quotes and {} counter updates.",
        tick / 5
    );
    embedded.server.shutdown().await;
    Ok(())
}

/// An `object-ref` argument in WAVE.
fn embed_arg(name: &str, require: &str) -> String {
    format!("{{name: {name:?}, require: [{require:?}]}}")
}
