//! The mesh as a node's [`Driver`]: joins through the record's seeds (then any
//! extra seeds the node found, e.g. by gossip), or founds the group.

use super::core::{Config, Liveness};
use super::group::{GroupHandle, MeshNode};
use crate::driver::{
    BoxFuture, Driver, DriverInfo, Evolution, JoinRequest, JoinedObject, ObjectReport,
};
use crate::group::{GroupError, GroupNotice};
use crate::join::JoinError;
use crate::mesh::net::Peer;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::broadcast;

/// `lo node`'s mesh settings.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// UDP address for the mesh (QUIC).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// How often a node's mesh objects compare their replicas' states, in positions
/// of the order, unless their record says otherwise (`--driver-opt check-every=N`,
/// 0: never).
pub const DEFAULT_CHECK_EVERY: u64 = 1000;

/// The mesh driver of a node.
pub struct MeshDriver {
    node: MeshNode,
    /// How often objects' sequencers look for newer records.
    upgrade_poll: std::time::Duration,
}

impl MeshDriver {
    /// Start the mesh's QUIC endpoint; evidence of diverged replicas goes under
    /// `data_dir`'s `divergence/`.
    pub fn start(
        identity: &liveobjects_directory::keys::Identity,
        args: &MeshArgs,
        data_dir: &std::path::Path,
        upgrade_poll: std::time::Duration,
    ) -> Result<Self, String> {
        let mut node = MeshNode::start(
            identity,
            args.listen,
            Config {
                liveness: Liveness::PerPeer,
                check_every: DEFAULT_CHECK_EVERY,
                ..Config::default()
            },
        )
        .map_err(|e| format!("cannot start the mesh on {}: {e}", args.listen))?;
        node.keep_evidence_in(data_dir.join("divergence"));
        Ok(MeshDriver { node, upgrade_poll })
    }

    /// This host as a mesh peer.
    pub fn me(&self) -> Peer {
        self.node.me()
    }
}

impl Driver for MeshDriver {
    fn info(&self) -> &'static DriverInfo {
        crate::driver::driver("mesh").expect("mesh is in the table")
    }

    fn join<'a>(
        &'a self,
        request: JoinRequest<'a>,
    ) -> BoxFuture<'a, Result<Arc<dyn JoinedObject>, JoinError>> {
        Box::pin(async move {
            let evolution = Evolution {
                source: request.logic_source.clone(),
                poll_every: self.upgrade_poll,
                ..Evolution::starting_with(&request.prepared.verified)
            };
            let group = crate::join::join_mesh(
                &self.node,
                request.runtime,
                request.name,
                request.prepared,
                request.options,
                &evolution,
            )
            .await?;
            Ok(Arc::new(group) as Arc<dyn JoinedObject>)
        })
    }

    fn leave<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.node.leave(name))
    }

    fn report(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async { Vec::new() })
    }
}

impl JoinedObject for GroupHandle {
    fn call<'a>(
        &'a self,
        method: &'a str,
        args: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<String>, GroupError>> {
        Box::pin(GroupHandle::call(self, method, args))
    }

    fn report(&self) -> BoxFuture<'_, ObjectReport> {
        let report = ObjectReport::from_status(&self.status_now(), &self.replica().metrics());
        Box::pin(async move { report })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<u8>, GroupError>> {
        Box::pin(GroupHandle::snapshot(self))
    }

    fn interface(&self) -> Option<Arc<crate::runtime::ObjectInterface>> {
        self.status_now().interface
    }

    fn applied(&self) -> Option<broadcast::Receiver<crate::runtime::AppliedEvent>> {
        Some(self.replica().applied())
    }

    fn subscribe(&self) -> broadcast::Receiver<GroupNotice> {
        GroupHandle::subscribe(self)
    }
}
