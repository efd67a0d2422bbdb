//! qsm as a node's [`Driver`]. The driver starts with the first qsm object
//! joined, in the domain that object's record names (a node takes part in one qsm
//! domain).

use super::core::QsmConfig;
use super::driver::{QsmHandle, QsmNode, QsmSettings, QsmStatus};
use crate::driver::{BoxFuture, Driver, DriverInfo, JoinRequest, JoinedObject, ObjectReport};
use crate::group::{GroupError, GroupNotice};
use crate::join::JoinError;
use crate::mesh::net::Peer;
use liveobjects_directory::keys::Identity;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, broadcast};

/// How long `lo status` waits for a qsm replica's status or snapshot: qsm
/// replicas still answer from their own task, so a busy one is reported as busy.
const STATUS_WAIT: Duration = Duration::from_millis(300);

/// `lo node`'s qsm settings.
#[derive(clap::Args, Debug, Clone)]
pub struct QsmArgs {
    /// Run qsm objects: the UDP data address (an interface's address; port 0 picks
    /// one). Multicast goes out on that interface only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub qsm_bind: SocketAddr,
    /// The QUIC address of qsm's control plane (default: the data address' IP).
    #[arg(long, value_name = "ADDR")]
    pub qsm_control: Option<SocketAddr>,
    /// The interface's name (needed for IPv6 multicast).
    #[arg(long, value_name = "NAME")]
    pub qsm_interface: Option<String>,
    /// Never use IP multicast for qsm (regions with this host use the overlay).
    #[arg(long)]
    pub qsm_no_multicast: bool,
}

/// The qsm driver of a node.
pub struct QsmDriver {
    identity: Identity,
    settings: QsmSettings,
    running: Mutex<Option<Arc<QsmNode>>>,
    /// How often an object's oldest member looks for a newer record.
    upgrade_poll: std::time::Duration,
}

impl QsmDriver {
    /// A driver that starts on the first join; an object's oldest member looks
    /// for a newer record every `upgrade_poll` while the object is used.
    pub fn new(identity: &Identity, args: &QsmArgs, upgrade_poll: std::time::Duration) -> Self {
        QsmDriver {
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
            running: Mutex::new(None),
            upgrade_poll,
        }
    }

    /// The qsm node for the domain served by `membership`, started if needed.
    async fn node_for(&self, membership: Peer) -> Result<Arc<QsmNode>, String> {
        let mut running = self.running.lock().await;
        if let Some(q) = running.as_ref() {
            return Ok(q.clone());
        }
        let node = QsmNode::start(&self.identity, self.settings.clone(), membership)
            .map_err(|e| format!("cannot start qsm: {e}"))?;
        let node = Arc::new(node);
        *running = Some(node.clone());
        Ok(node)
    }
}

impl Driver for QsmDriver {
    fn info(&self) -> &'static DriverInfo {
        crate::driver::driver("qsm").expect("qsm is in the table")
    }

    fn join<'a>(
        &'a self,
        request: JoinRequest<'a>,
    ) -> BoxFuture<'a, Result<Arc<dyn JoinedObject>, JoinError>> {
        Box::pin(async move {
            let name = request.name;
            let failed = |reason: String| JoinError::Type {
                name: name.to_string(),
                reason,
            };
            let membership =
                crate::join::membership_of(&request.prepared.verified.record).map_err(failed)?;
            let qsm = self.node_for(membership).await.map_err(failed)?;
            let handle = crate::join::join_qsm(
                &qsm,
                request.runtime,
                name,
                request.prepared,
                request.options,
                crate::driver::Evolution {
                    source: request.logic_source.clone(),
                    poll_every: self.upgrade_poll,
                    ..crate::driver::Evolution::starting_with(&request.prepared.verified)
                },
            )
            .await?;
            Ok(Arc::new(handle) as Arc<dyn JoinedObject>)
        })
    }

    fn leave<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let qsm = self.running.lock().await.clone();
            if let Some(q) = qsm {
                q.leave(name).await;
            }
        })
    }

    fn report(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            let qsm = self.running.lock().await.clone();
            let Some(q) = qsm else {
                return Vec::new();
            };
            match tokio::time::timeout(STATUS_WAIT, q.status()).await {
                Ok(Some(status)) => report_lines(&status),
                Ok(None) => vec!["qsm (stopped)".to_string()],
                Err(_) => vec![format!("qsm (busy: no status within {STATUS_WAIT:?})")],
            }
        })
    }
}

/// The driver's lines of `lo status`.
fn report_lines(q: &QsmStatus) -> Vec<String> {
    let mut lines = Vec::new();
    let s = &q.stats;
    lines.push(format!(
        "qsm host {}  data {}  {}  membership {}@{}  objects {}",
        s.host,
        q.data,
        if q.multicast { "multicast" } else { "overlay" },
        q.membership.key.short(),
        q.membership.addr,
        s.objects
    ));
    if let Some(r) = &s.region {
        lines.push(format!(
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
        ));
    }
    for st in &s.streams {
        let rate = q
            .send_rates
            .iter()
            .find(|(id, _)| *id == st.region)
            .map(|(_, r)| *r)
            .unwrap_or(0.0);
        lines.push(format!(
            "    sending to region {}: {:.1} KB/s (limit {:.1} MB/s)  sent {} msgs, re-multicast {}, unacked {}",
            st.region,
            rate / 1e3,
            st.rate / 1e6,
            st.messages,
            st.retransmitted,
            st.in_flight
        ));
    }
    let d = &s.drops;
    if d.total() > 0 || q.send_drops > 0 {
        lines.push(format!(
            "    dropped datagrams: {} forged, {} replayed, {} malformed, {} foreign; {} not sent",
            d.forged, d.replayed, d.malformed, d.foreign, q.send_drops
        ));
    }
    lines
}

impl JoinedObject for QsmHandle {
    fn call<'a>(
        &'a self,
        method: &'a str,
        args: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<String>, GroupError>> {
        Box::pin(QsmHandle::call(self, method, args))
    }

    fn report(&self) -> BoxFuture<'_, ObjectReport> {
        Box::pin(async move { self.report_now().await })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<u8>, GroupError>> {
        Box::pin(QsmHandle::snapshot(self))
    }

    fn applied(&self) -> Option<broadcast::Receiver<crate::runtime::AppliedEvent>> {
        self.replica().map(|r| r.applied())
    }

    fn interface(&self) -> Option<Arc<crate::runtime::ObjectInterface>> {
        QsmHandle::interface(self)
    }

    fn subscribe(&self) -> broadcast::Receiver<GroupNotice> {
        QsmHandle::subscribe(self)
    }
}
