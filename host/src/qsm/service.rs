//! The membership service's shell: the [`Membership`] core behind a QUIC endpoint
//! (the mesh's authenticated transport, with qsm frames), on its own thread.
//!
//! A host registers by sending `Hello`; its identity is the key its QUIC
//! certificate proves and the address it talks from. Joins are authorized before
//! the core sees them ([`Authorize`]): by default the object's record is resolved
//! through the directory and must name the qsm driver with this service as its
//! `membership`, and the joiner's key must satisfy the record's access policy.
//!
//! The service is one process per domain. If it stops, regions that exist keep
//! delivering, but joins, leaves and failure handling wait until it is back (and
//! hosts then register again).

use super::membership::{FromMembership, Membership, MembershipConfig, Micros, ToMembership};
use super::net::{QsmBody, QsmFrame};
use super::thread::ServiceThread;
use crate::mesh::net::{Inbound, NetError, Peer, Transport};
use liveobjects_directory::client::Resolver;
use liveobjects_directory::keys::{Identity, PublicKey};
use liveobjects_directory::record::{Grant, Signed};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Frames queued from the network before the service drops new ones (hosts
/// repeat joins and heartbeats).
const INBOUND_QUEUE: usize = 65_536;

/// A boxed future, for [`Authorize`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Decides whether a host may join an object.
pub trait Authorize: Send + Sync + 'static {
    /// `Ok` to admit `host` to `object`, or the reason it may not.
    fn authorize(
        &self,
        object: String,
        host: PublicKey,
        grant: Option<Signed<Grant>>,
    ) -> BoxFuture<Result<(), String>>;
}

/// Admits every host to every object (tests and closed networks).
pub struct AdmitAll;

impl Authorize for AdmitAll {
    fn authorize(
        &self,
        _object: String,
        _host: PublicKey,
        _grant: Option<Signed<Grant>>,
    ) -> BoxFuture<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Checks joins against the objects' verified directory records.
pub struct DirectoryPolicy {
    resolver: Arc<Resolver>,
    service: PublicKey,
}

impl DirectoryPolicy {
    /// Authorize with records resolved (and verified) by `resolver`, for the
    /// service whose key is `service`.
    pub fn new(resolver: Arc<Resolver>, service: PublicKey) -> Self {
        DirectoryPolicy { resolver, service }
    }
}

impl Authorize for DirectoryPolicy {
    fn authorize(
        &self,
        object: String,
        host: PublicKey,
        grant: Option<Signed<Grant>>,
    ) -> BoxFuture<Result<(), String>> {
        let resolver = self.resolver.clone();
        let service = self.service;
        Box::pin(async move {
            let verified = resolver
                .resolve(&object)
                .await
                .map_err(|e| format!("cannot verify {object}: {e}"))?;
            let record = &verified.record;
            if record.driver.name != "qsm" {
                return Err(format!(
                    "{object} uses the {} driver, not qsm",
                    record.driver.name
                ));
            }
            let named = record
                .driver
                .options
                .get("membership")
                .and_then(|m| m.split_once('@'))
                .and_then(|(key, _)| key.parse::<PublicKey>().ok());
            if named != Some(service) {
                return Err(format!(
                    "{object}'s record names another qsm membership service"
                ));
            }
            Grant::check(
                &record.policy,
                &object,
                host,
                grant.as_ref(),
                liveobjects_directory::server::unix_now(),
            )
        })
    }
}

/// A running membership service (stopped when dropped).
pub struct MembershipServer {
    me: Peer,
    _thread: ServiceThread,
}

impl MembershipServer {
    /// Listen on `listen` (QUIC) as `identity` and serve the domain `config`.
    /// Runs on a thread of its own.
    pub fn start(
        identity: &Identity,
        listen: SocketAddr,
        config: MembershipConfig,
        authorize: Arc<dyn Authorize>,
    ) -> Result<MembershipServer, NetError> {
        let identity = identity.clone();
        let (thread, me) = ServiceThread::spawn("qsm-membership", NetError::Tls, move |stop| {
            let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
            let transport = Transport::<QsmFrame>::start(&identity, listen, tx)?;
            let me = transport.me();
            Ok((me, serve(transport, rx, config, authorize, stop)))
        })?;
        Ok(MembershipServer {
            me,
            _thread: thread,
        })
    }

    /// The service's key and address, as records name it (`membership=KEY@ADDR`).
    pub fn peer(&self) -> Peer {
        self.me
    }
}

async fn serve(
    transport: Arc<Transport<QsmFrame>>,
    mut inbound: mpsc::Receiver<Inbound<QsmFrame>>,
    config: MembershipConfig,
    authorize: Arc<dyn Authorize>,
    mut stop: oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let now = || started.elapsed().as_micros() as Micros;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system's random source failed");
    let mut core: Membership<Peer> = Membership::new(config, seed, now());
    let (authorized_tx, mut authorized) =
        mpsc::channel::<(Peer, Result<String, (String, String)>)>(1024);
    let mut seqs: HashMap<Peer, u64> = HashMap::new();
    let me = transport.me();
    loop {
        while let Some((to, message)) = core.poll_transmit() {
            let seq = seqs.entry(to).or_insert(0);
            if matches!(message, FromMembership::Welcome { .. }) {
                *seq = 0;
            }
            *seq += 1;
            let frame = QsmFrame {
                from: me,
                body: QsmBody::Membership { seq: *seq, message },
            };
            transport.send(to, &frame);
        }
        let deadline = started + Duration::from_micros(core.poll_timeout());
        tokio::select! {
            _ = &mut stop => break,
            Some(Inbound { frame }) = inbound.recv() => {
                let QsmBody::Request { message, grant } = frame.body else {
                    continue;
                };
                match message {
                    ToMembership::Join { object } => {
                        let check = authorize.authorize(object.clone(), frame.from.key, grant);
                        let tx = authorized_tx.clone();
                        let from = frame.from;
                        tokio::spawn(async move {
                            let outcome = match check.await {
                                Ok(()) => Ok(object),
                                Err(reason) => Err((object, reason)),
                            };
                            let _ = tx.send((from, outcome)).await;
                        });
                    }
                    other => core.handle(now(), &frame.from, other),
                }
            }
            Some((from, outcome)) = authorized.recv() => match outcome {
                Ok(object) => core.handle(now(), &from, ToMembership::Join { object }),
                Err((object, reason)) => {
                    tracing::info!("qsm membership: refusing {} in {object}: {reason}", from.key);
                    let seq = seqs.entry(from).or_insert(0);
                    *seq += 1;
                    let frame = QsmFrame {
                        from: me,
                        body: QsmBody::Membership {
                            seq: *seq,
                            message: FromMembership::JoinRefused { object, reason },
                        },
                    };
                    transport.send(from, &frame);
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(now()),
        }
    }
    transport.close();
}
