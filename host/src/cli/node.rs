//! `lo node`, `lo join`, `lo status`, `lo leave`, and `lo call lo://...`.

use super::directory::{DirectoryTarget, KeyArg};
use anyhow::{Context, Result, bail};
use clap::Args;
use liveobjects_directory::client::{Client, Resolver, SeenVersions};
use liveobjects_host::mesh::core::Config;
use liveobjects_host::mesh::group::MeshNode;
use liveobjects_host::node::{ControlRequest, ControlResponse, Node, QsmLauncher, request};
use liveobjects_host::qsm::core::QsmConfig;
use liveobjects_host::qsm::driver::QsmSettings;
use liveobjects_host::runtime::Runtime;
use liveobjects_host::vsync::group::GroupConfig;
use liveobjects_host::vsync::host::{VsyncNode, VsyncSettings};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the node's control socket is.
#[derive(Args, Debug, Clone)]
pub struct ControlArg {
    /// The node's control socket (default: ~/.local/share/liveobjects/node.sock).
    #[arg(long, env = "LO_CONTROL", value_name = "SOCKET")]
    control: Option<PathBuf>,
}

impl ControlArg {
    fn path(&self) -> Result<PathBuf> {
        match &self.control {
            Some(p) => Ok(p.clone()),
            None => Ok(super::data_dir()?.join("node.sock")),
        }
    }
}

/// `lo node`
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// UDP address for the mesh (QUIC).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Also gossip on this UDP address: the node then runs SWIM membership and the
    /// census, publishes which objects it hosts, and finds members that way when
    /// the seeds a record lists do not answer.
    #[arg(long, value_name = "ADDR")]
    gossip: Option<SocketAddr>,
    /// Gossip hosts to join through (repeat or separate with commas).
    #[arg(long = "gossip-seed", value_delimiter = ',', value_name = "ADDR")]
    gossip_seeds: Vec<SocketAddr>,
    /// The gossip domain's shared secret (64 hex digits; see `lo gossip --secret`).
    #[arg(
        long,
        env = "LO_GOSSIP_SECRET",
        value_name = "HEX",
        value_parser = super::gossip::parse_secret
    )]
    gossip_secret: Option<liveobjects_host::gossip::core::DomainSecret>,
    /// Run qsm objects: the UDP data address (an interface's address; port 0 picks
    /// one). Multicast goes out on that interface only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    qsm_bind: SocketAddr,
    /// The QUIC address of qsm's control plane (default: the data address' IP).
    #[arg(long, value_name = "ADDR")]
    qsm_control: Option<SocketAddr>,
    /// The interface's name (needed for IPv6 multicast).
    #[arg(long, value_name = "NAME")]
    qsm_interface: Option<String>,
    /// Never use IP multicast for qsm (regions with this host use the overlay).
    #[arg(long)]
    qsm_no_multicast: bool,
    /// UDP address of the vsync endpoint (QUIC). Durable members must come back
    /// on the address they had, since their group remembers it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    vsync_listen: SocketAddr,
    /// Where durable vsync objects keep their logs (default:
    /// ~/.local/share/liveobjects/vsync-KEY/).
    #[arg(long, value_name = "DIR")]
    vsync_data: Option<PathBuf>,
    /// A vsync group snapshots its object every this many log entries (and drops
    /// older entries).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    vsync_snapshot_every: u64,
    #[command(flatten)]
    control: ControlArg,
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    target: DirectoryTarget,
}

/// `lo join`
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The object's name.
    name: String,
    /// Aspects the object must provide, e.g. total-order,encrypted.
    #[arg(long, default_value = "")]
    require: String,
    /// Start the group if no member answers (the first host of an object).
    #[arg(long)]
    found: bool,
    /// Join and return, without the interactive session.
    #[arg(long)]
    no_interactive: bool,
    #[command(flatten)]
    control: ControlArg,
}

/// `lo status`
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    control: ControlArg,
}

/// `lo leave`
#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// The object's name.
    name: String,
    #[command(flatten)]
    control: ControlArg,
}

pub fn node(runtime: Runtime, args: NodeArgs) -> Result<()> {
    let identity = super::directory::load_identity(&args.key)?;
    let root = super::directory::root_key(&args.target)?;
    let control = args.control.path()?;
    super::tokio()?.block_on(async move {
        let mesh = MeshNode::start(&identity, args.listen, Config::default())?;
        let vsync_data = match &args.vsync_data {
            Some(dir) => dir.clone(),
            None => super::data_dir()?.join(format!("vsync-{}", identity.public())),
        };
        let vsync = VsyncNode::start(
            &identity,
            args.vsync_listen,
            VsyncSettings {
                data_dir: vsync_data,
                group: GroupConfig {
                    snapshot_every: args.vsync_snapshot_every.max(1),
                    ..GroupConfig::default()
                },
            },
        )?;
        let vsync_me = vsync.me();
        let client = Client::connect(args.target.directory).await?;
        // Each node identity keeps its own version memory (the CLI's, or another
        // node's, may be in use meanwhile).
        let seen = SeenVersions::open(
            &super::data_dir()?.join(format!("seen-versions-node-{}.redb", identity.public())),
        )?;
        let resolver = Resolver::new(client, root, Some(seen));
        let me = mesh.me();
        let runtime = Arc::new(runtime);
        let gossip = match args.gossip {
            Some(addr) => Some(
                super::gossip::start_agent(&runtime, addr, &args.gossip_seeds, args.gossip_secret)
                    .await?,
            ),
            None => None,
        };
        let qsm = QsmLauncher {
            identity: identity.clone(),
            settings: QsmSettings {
                data: args.qsm_bind,
                control: args
                    .qsm_control
                    .unwrap_or_else(|| SocketAddr::new(args.qsm_bind.ip(), 0)),
                interface: args.qsm_interface.clone(),
                multicast: !args.qsm_no_multicast,
                config: QsmConfig::default(),
            },
        };
        let node = Node::new(
            mesh,
            vsync,
            runtime,
            resolver,
            gossip.as_ref().map(|(agent, _)| agent.clone()),
            Some(qsm),
        );
        let mut out = std::io::stdout();
        let _ = writeln!(out, "node listening on {} key {}", me.addr, me.key);
        let _ = writeln!(out, "vsync listening on {}", vsync_me.addr);
        if let Some((_, addr)) = &gossip {
            let _ = writeln!(out, "gossip on {addr}");
        }
        let _ = writeln!(out, "control socket {}", control.display());
        let _ = out.flush();
        node.serve(&control)
            .await
            .with_context(|| format!("serving the control socket {}", control.display()))
    })
}

fn expect(response: ControlResponse) -> Result<ControlResponse> {
    match response {
        ControlResponse::Error(e) => bail!("{e}"),
        other => Ok(other),
    }
}

pub fn join(args: JoinArgs) -> Result<()> {
    let path = args.control.path()?;
    let rt = super::tokio()?;
    let joined = rt.block_on(request(
        &path,
        &ControlRequest::Join {
            name: args.name.clone(),
            require: args.require.clone(),
            found_if_alone: args.found,
        },
    ))?;
    match expect(joined)? {
        ControlResponse::Joined { version, members } => println!(
            "joined {} (record version {version}), {members} member(s)",
            args.name
        ),
        other => bail!("unexpected answer {other:?}"),
    }
    if args.no_interactive {
        return Ok(());
    }
    // Live notices from the node, printed as they arrive.
    let watch_path = path.clone();
    let name = args.name.clone();
    rt.spawn(async move {
        let Ok(mut stream) = tokio::net::UnixStream::connect(&watch_path).await else {
            return;
        };
        if liveobjects_host::node::write_message(&mut stream, &ControlRequest::Watch { name })
            .await
            .is_err()
        {
            return;
        }
        while let Ok(Some(ControlResponse::Notice(text))) =
            liveobjects_host::node::read_message(&mut stream).await
        {
            println!("  * {text}");
        }
    });
    eprintln!(
        "type METHOD ARGS (e.g. post \"hello\"), Ctrl-D to quit (you stay joined; `lo leave` leaves)"
    );
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words = match super::split_words(line.trim()) {
            Ok(w) if !w.is_empty() => w,
            Ok(_) => continue,
            Err(e) => {
                println!("error: {e}");
                continue;
            }
        };
        let answer = rt.block_on(request(
            &path,
            &ControlRequest::Call {
                name: args.name.clone(),
                method: words[0].clone(),
                args: words[1..].to_vec(),
            },
        ))?;
        match answer {
            ControlResponse::Results(results) => {
                for r in results {
                    println!("{r}");
                }
            }
            ControlResponse::Error(e) => println!("error: {e}"),
            other => println!("unexpected answer {other:?}"),
        }
    }
    Ok(())
}

/// `lo call lo://NAME METHOD ARGS` through the node.
pub fn call(name: &str, method: &str, args: &[String], control: &ControlArg) -> Result<()> {
    let path = control.path()?;
    let answer = super::tokio()?.block_on(request(
        &path,
        &ControlRequest::Call {
            name: name.to_string(),
            method: method.to_string(),
            args: args.to_vec(),
        },
    ))?;
    match expect(answer)? {
        ControlResponse::Results(results) => {
            for r in results {
                println!("{r}");
            }
            Ok(())
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

pub fn status(args: StatusArgs) -> Result<()> {
    let answer =
        super::tokio()?.block_on(request(&args.control.path()?, &ControlRequest::Status))?;
    let ControlResponse::Status {
        key,
        addr,
        objects,
        gossip,
        qsm,
        vsync_addr,
    } = expect(answer)?
    else {
        bail!("unexpected answer");
    };
    println!("node {addr} key {key}");
    println!("vsync {vsync_addr}");
    if let Some(g) = gossip {
        println!(
            "gossip {}  {} other live host(s)  census {}",
            g.addr,
            g.members,
            g.census
                .map(|c| format!("{c:.0}"))
                .unwrap_or_else(|| "(first epoch running)".into())
        );
    }
    if let Some(q) = qsm {
        print_qsm(&q);
    }
    if objects.is_empty() {
        println!("(no objects joined)");
    }
    for o in objects {
        println!(
            "{}  driver {}  {} member(s){}  events applied {}  state {} bytes sha256 {}",
            o.name,
            o.driver,
            o.members.len(),
            if o.sequencer && o.driver == "vsync" {
                ", leader"
            } else if o.sequencer {
                ", sequencer"
            } else if o.member {
                ""
            } else {
                ", joining"
            },
            o.events_applied,
            o.state_bytes,
            o.state_digest
        );
        println!("    members: {}", o.members.join(" "));
    }
    Ok(())
}

fn print_qsm(q: &liveobjects_host::qsm::driver::QsmStatus) {
    let s = &q.stats;
    println!(
        "qsm host {}  data {}  {}  membership {}@{}  objects {}",
        s.host,
        q.data,
        if q.multicast { "multicast" } else { "overlay" },
        q.membership.key.short(),
        q.membership.addr,
        s.objects
    );
    if let Some(r) = &s.region {
        println!(
            "    region {}: {} host(s), ring of {}{}, {}{}  received {} msgs ({:.0}/s), loss repaired {}",
            r.id,
            r.members,
            r.ring_size,
            if r.levels > 1 {
                format!(" ({} levels)", r.levels)
            } else {
                String::new()
            },
            if r.overlay { "overlay" } else { "multicast" },
            if r.leader { ", leader" } else { "" },
            r.received,
            q.receive_rate,
            r.repaired
        );
    }
    for st in &s.streams {
        let rate = q
            .send_rates
            .iter()
            .find(|(id, _)| *id == st.region)
            .map(|(_, r)| *r)
            .unwrap_or(0.0);
        println!(
            "    sending to region {}: {:.1} KB/s (limit {:.1} MB/s)  sent {} msgs, re-multicast {}, unacked {}",
            st.region,
            rate / 1e3,
            st.rate / 1e6,
            st.messages,
            st.retransmitted,
            st.in_flight
        );
    }
    let d = &s.drops;
    if d.total() > 0 || q.send_drops > 0 {
        println!(
            "    dropped datagrams: {} forged, {} replayed, {} malformed, {} foreign; {} not sent",
            d.forged, d.replayed, d.malformed, d.foreign, q.send_drops
        );
    }
}

pub fn leave(args: LeaveArgs) -> Result<()> {
    let answer = super::tokio()?.block_on(request(
        &args.control.path()?,
        &ControlRequest::Leave {
            name: args.name.clone(),
        },
    ))?;
    expect(answer)?;
    println!("left {}", args.name);
    Ok(())
}
