//! vsync as a node's [`Driver`]: one endpoint, the groups of the objects joined.

use super::group::GroupConfig;
use super::host::{VsyncHandle, VsyncJoin, VsyncNode, VsyncSettings};
use crate::driver::{
    BoxFuture, Driver, DriverInfo, Evolution, JoinRequest, JoinedObject, ObjectReport,
};
use crate::group::{GroupError, GroupNotice};
use crate::join::JoinError;
use liveobjects_directory::record::Reliability;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::broadcast;

/// `lo node`'s vsync settings.
#[derive(clap::Args, Debug, Clone)]
pub struct VsyncArgs {
    /// UDP address of the vsync endpoint (QUIC). Durable members must come back
    /// on the address they had, since their group remembers it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub vsync_listen: SocketAddr,
    /// Where durable vsync objects keep their logs (default:
    /// ~/.local/share/liveobjects/vsync-KEY/).
    #[arg(long, value_name = "DIR")]
    pub vsync_data: Option<PathBuf>,
    /// A vsync group snapshots its object every this many log entries (and drops
    /// older entries).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub vsync_snapshot_every: u64,
}

/// How often a node's vsync objects compare their replicas' states, in log
/// positions, unless their record says otherwise (`--driver-opt check-every=N`,
/// 0: never).
pub const DEFAULT_CHECK_EVERY: u64 = 1000;

/// The vsync driver of a node.
pub struct VsyncDriver {
    node: VsyncNode,
    /// How often objects' leaders look for newer records.
    upgrade_poll: std::time::Duration,
}

impl VsyncDriver {
    /// Start the endpoint; durable logs go to `--vsync-data` or
    /// `data_dir/vsync-KEY/`.
    pub fn start(
        identity: &liveobjects_directory::keys::Identity,
        args: &VsyncArgs,
        data_dir: &Path,
        upgrade_poll: std::time::Duration,
    ) -> Result<Self, String> {
        let data = match &args.vsync_data {
            Some(dir) => dir.clone(),
            None => data_dir.join(format!("vsync-{}", identity.public())),
        };
        let node = VsyncNode::start(
            identity,
            args.vsync_listen,
            VsyncSettings {
                data_dir: data,
                group: GroupConfig {
                    snapshot_every: args.vsync_snapshot_every.max(1),
                    ..GroupConfig::default()
                },
                evidence: Some(data_dir.join("divergence")),
            },
        )
        .map_err(|e| format!("cannot start vsync on {}: {e}", args.vsync_listen))?;
        Ok(VsyncDriver { node, upgrade_poll })
    }

    /// Lines `lo node` prints when it is up.
    pub fn banner(&self) -> Vec<String> {
        vec![format!("vsync listening on {}", self.node.me().addr)]
    }
}

impl Driver for VsyncDriver {
    fn info(&self) -> &'static DriverInfo {
        crate::driver::driver("vsync").expect("vsync is in the table")
    }

    fn join<'a>(
        &'a self,
        request: JoinRequest<'a>,
    ) -> BoxFuture<'a, Result<Arc<dyn JoinedObject>, JoinError>> {
        Box::pin(async move {
            let record = &request.prepared.verified.record;
            let mut seeds = crate::join::seeds(record);
            for extra in &request.options.extra_seeds {
                if !seeds.contains(extra) {
                    seeds.push(*extra);
                }
            }
            let check_every = crate::join::check_every_option(record)
                .map_err(|reason| JoinError::Type {
                    name: request.name.to_string(),
                    reason,
                })?
                .unwrap_or(DEFAULT_CHECK_EVERY);
            let how = VsyncJoin {
                seeds,
                found_if_alone: request.options.found_if_alone,
                durable: record.object_type.reliability == Reliability::Durable,
                policy: record.policy.clone(),
                grant: request.options.grant.clone(),
                evolution: Evolution {
                    source: request.logic_source.clone(),
                    poll_every: self.upgrade_poll,
                    ..Evolution::starting_with(&request.prepared.verified)
                },
                check_every,
            };
            let budgets = crate::join::budgets_for(request.runtime, request.name, record)?;
            let handle = self
                .node
                .join_with(
                    request.runtime,
                    request.prepared.replica_logic(request.name)?,
                    request.name,
                    how,
                    &budgets,
                )
                .await
                .map_err(|e| match e {
                    GroupError::NoMembers { object, tried } => JoinError::NoMembers {
                        name: object,
                        tried,
                    },
                    other => JoinError::Group(other),
                })?;
            Ok(Arc::new(handle) as Arc<dyn JoinedObject>)
        })
    }

    fn leave<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.node.leave(name))
    }

    fn report(&self) -> BoxFuture<'_, Vec<String>> {
        let line = format!("vsync {}", self.node.me().addr);
        Box::pin(async move { vec![line] })
    }
}

impl JoinedObject for VsyncHandle {
    fn call<'a>(
        &'a self,
        method: &'a str,
        args: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<String>, GroupError>> {
        Box::pin(VsyncHandle::call(self, method, args))
    }

    fn report(&self) -> BoxFuture<'_, ObjectReport> {
        let report = self.report_now();
        Box::pin(async move { report })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<u8>, GroupError>> {
        Box::pin(VsyncHandle::snapshot(self))
    }

    fn interface(&self) -> Option<Arc<crate::runtime::ObjectInterface>> {
        VsyncHandle::interface(self)
    }

    fn applied(&self) -> Option<broadcast::Receiver<crate::runtime::AppliedEvent>> {
        Some(self.replica().applied())
    }

    fn subscribe(&self) -> broadcast::Receiver<GroupNotice> {
        VsyncHandle::subscribe(self)
    }
}
