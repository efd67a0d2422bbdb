//! `lo qsm-membership`: the membership service of a qsm domain.

use super::directory::{DirectoryTarget, KeyArg};
use anyhow::{Context, Result};
use clap::Args;
use liveobjects_directory::client::{Resolver, SeenVersions};
use liveobjects_host::qsm::membership::MembershipConfig;
use liveobjects_host::qsm::service::{DirectoryPolicy, MembershipServer};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

/// `lo qsm-membership`
#[derive(Args, Debug)]
pub struct MembershipArgs {
    /// QUIC address to listen on (hosts register here).
    #[arg(long, default_value = "127.0.0.1:4500")]
    listen: SocketAddr,
    /// The domain's number (datagrams of other domains are ignored).
    #[arg(long, default_value_t = 1)]
    domain: u32,
    /// UDP port of every region's multicast group.
    #[arg(long, default_value_t = 47_600)]
    group_port: u16,
    /// Hosts per repair ring.
    #[arg(long, default_value_t = 25)]
    ring_size: usize,
    /// A host silent this long (milliseconds) is declared failed.
    #[arg(long, default_value_t = 2_000)]
    failure_timeout_ms: u64,
    /// Use the overlay (unicast fan-out tree) for every region, even where IP
    /// multicast works.
    #[arg(long)]
    overlay: bool,
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    target: DirectoryTarget,
}

pub fn membership(args: MembershipArgs) -> Result<()> {
    let identity = super::directory::load_identity(&args.key)?;
    super::tokio()?.block_on(async move {
        // Its own version memory: the CLI's may be in use meanwhile.
        let root = super::directory::root_key(&args.target)?;
        let client = args.target.client().await?;
        let seen = SeenVersions::open(&super::data_dir()?.join(format!(
            "seen-versions-qsm-membership-{}.redb",
            identity.public()
        )))?;
        let resolver = Arc::new(Resolver::new(client, root, Some(seen)));
        let config = MembershipConfig {
            domain: args.domain,
            ring_size: args.ring_size,
            heartbeat_timeout: args.failure_timeout_ms * 1000,
            group_port: args.group_port,
            force_overlay: args.overlay,
            ..MembershipConfig::default()
        };
        let policy = Arc::new(DirectoryPolicy::new(resolver, identity.public()));
        let server = MembershipServer::start(&identity, args.listen, config, policy)
            .with_context(|| format!("starting the qsm membership service on {}", args.listen))?;
        let me = server.peer();
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "qsm membership listening on {} key {}",
            me.addr, me.key
        );
        let _ = writeln!(
            out,
            "publish qsm objects with --driver qsm --driver-opt membership={}@{}",
            me.key, me.addr
        );
        let _ = out.flush();
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        drop(server);
        Ok(())
    })
}
