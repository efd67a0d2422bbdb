//! The vsync network shell: request/reply calls between members over the same
//! mutually authenticated QUIC transport as the mesh (certificates bound to each
//! host's ed25519 key), on its own endpoint and ALPN.
//!
//! A call is one frame out and one frame back, matched by a request number. A
//! reply is accepted only from the peer the request went to, and a frame whose
//! claimed sender is not the authenticated key closes the connection (checked by
//! the transport). Requests are served concurrently, at most
//! [`MAX_SERVING`] at once; beyond that a request is dropped and its caller times
//! out and retries (Raft retries by itself), so a flood costs bounded memory.

use super::group::{Link, Reply, Rpc};
use super::types::Member;
use crate::mesh::net::{Inbound, NetError, Peer, Transport, WireFrame};
use liveobjects_directory::keys::{Identity, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// ALPN protocol of vsync endpoints.
pub const ALPN: &[u8] = b"liveobjects-vsync/2";
/// Requests served at once; more are dropped (their callers retry).
pub const MAX_SERVING: usize = 1024;
/// Inbound frames queued before the transport drops more.
const INBOUND_QUEUE: usize = 8192;

/// One frame between vsync endpoints.
#[derive(Debug, Serialize, Deserialize)]
pub struct VsyncFrame {
    /// The sender (its key is checked against the connection).
    pub from: Peer,
    /// The group (object name) it concerns.
    pub group: String,
    /// The request number (a reply carries its request's).
    pub id: u64,
    /// A request or a reply.
    pub body: Body,
}

/// What a [`VsyncFrame`] carries.
#[derive(Debug, Serialize, Deserialize)]
pub enum Body {
    /// A call to serve.
    Request(Rpc),
    /// The answer to one of our calls.
    Reply(Reply),
}

impl WireFrame for VsyncFrame {
    const ALPN: &'static [u8] = ALPN;

    fn sender(&self) -> Peer {
        self.from
    }
}

/// Serves the requests of one group: `(from, request) -> reply`.
pub type Handler =
    Arc<dyn Fn(Member, Rpc) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

struct Inner {
    transport: Arc<Transport<VsyncFrame>>,
    /// Calls waiting for a reply: request number -> (the peer asked, where to answer).
    pending: Mutex<HashMap<u64, (PublicKey, oneshot::Sender<Reply>)>>,
    next_id: AtomicU64,
    handlers: Mutex<HashMap<String, Handler>>,
}

/// A host's vsync endpoint: a [`Link`] for its groups' calls and the server of
/// their requests.
#[derive(Clone)]
pub struct QuicLink {
    inner: Arc<Inner>,
}

impl QuicLink {
    /// Listen on `listen` (QUIC) as `identity`. Must run inside a tokio runtime.
    pub fn start(identity: &Identity, listen: SocketAddr) -> Result<QuicLink, NetError> {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let transport = Transport::start(identity, listen, tx)?;
        let link = QuicLink {
            inner: Arc::new(Inner {
                transport,
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                handlers: Mutex::new(HashMap::new()),
            }),
        };
        tokio::spawn(link.clone().receive(rx));
        Ok(link)
    }

    /// This endpoint as a member (key and address).
    pub fn me(&self) -> Member {
        self.inner.transport.me().into()
    }

    /// Serve requests for `group` with `handler` (replacing any earlier one).
    pub fn serve(&self, group: &str, handler: Handler) {
        self.inner
            .handlers
            .lock()
            .expect("handlers")
            .insert(group.to_string(), handler);
    }

    /// Stop serving `group`: its requests are answered [`Reply::NoGroup`].
    pub fn unserve(&self, group: &str) {
        self.inner.handlers.lock().expect("handlers").remove(group);
    }

    /// Close every connection.
    pub fn close(&self) {
        self.inner.transport.close();
    }

    async fn receive(self, mut rx: mpsc::Receiver<Inbound<VsyncFrame>>) {
        let serving = Arc::new(Semaphore::new(MAX_SERVING));
        while let Some(Inbound { frame }) = rx.recv().await {
            let VsyncFrame {
                from,
                group,
                id,
                body,
            } = frame;
            match body {
                Body::Reply(reply) => {
                    let mut pending = self.inner.pending.lock().expect("pending");
                    // Only the peer asked may answer.
                    if pending.get(&id).is_some_and(|(to, _)| *to == from.key)
                        && let Some((_, answer)) = pending.remove(&id)
                    {
                        let _ = answer.send(reply);
                    }
                }
                Body::Request(rpc) => {
                    let Ok(permit) = serving.clone().try_acquire_owned() else {
                        tracing::debug!("vsync: {MAX_SERVING} requests in service; dropping one");
                        continue;
                    };
                    let handler = self
                        .inner
                        .handlers
                        .lock()
                        .expect("handlers")
                        .get(&group)
                        .cloned();
                    let link = self.clone();
                    tokio::spawn(async move {
                        let reply = match handler {
                            Some(handler) => handler(from.into(), rpc).await,
                            None => Reply::NoGroup,
                        };
                        let me = link.inner.transport.me();
                        let frame = VsyncFrame {
                            from: me,
                            group,
                            id,
                            body: Body::Reply(reply),
                        };
                        link.inner.transport.send(from, &frame);
                        drop(permit);
                    });
                }
            }
        }
    }
}

impl Link for QuicLink {
    async fn call(
        &self,
        to: Member,
        group: &str,
        rpc: Rpc,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, reply) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .expect("pending")
            .insert(id, (to.key, answer));
        let frame = VsyncFrame {
            from: self.inner.transport.me(),
            group: group.to_string(),
            id,
            body: Body::Request(rpc),
        };
        self.inner.transport.send(to.into(), &frame);
        let result = tokio::time::timeout(timeout, reply).await;
        self.inner.pending.lock().expect("pending").remove(&id);
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(format!("{to:?}: the call was dropped")),
            Err(_) => Err(format!(
                "{:?} did not answer within {timeout:?}",
                Peer::from(to)
            )),
        }
    }
}
