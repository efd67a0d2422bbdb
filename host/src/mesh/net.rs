//! The mesh's network shell: one QUIC endpoint per host, mutually authenticated with
//! certificates bound to the hosts' ed25519 identities, carrying length-prefixed
//! protocol frames between group members. The transport is generic over the frame
//! type ([`WireFrame`]): the qsm driver's control plane uses it too.
//!
//! - Every host presents a self-signed certificate made from its identity key. The
//!   dialing side checks that the server's key is the peer it meant to reach; the
//!   accepting side learns the client's key from its certificate. A frame whose
//!   claimed sender is not the authenticated key closes the connection.
//! - Each peer gets one outbound queue (bounded) and one writer task holding a QUIC
//!   unidirectional stream, so frames to a peer stay in order. When the queue is full
//!   or the link is down, frames are dropped: the protocol core retransmits, so no
//!   queue in the shell ever needs to grow without bound.
//! - Frames are bounded ([`MAX_FRAME_BYTES`]); a larger or undecodable frame closes
//!   the connection, and only that peer is affected.

use super::core::Message;
use super::core::peers::Heartbeat;
use liveobjects_directory::keys::{Identity, MemberName, PublicKey, member_label};
use liveobjects_directory::tls::HandshakeSignatures;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// ALPN protocol of the mesh (4: view changes are divergence checks, which
/// members of one group must all count alike).
pub const ALPN: &[u8] = b"liveobjects-mesh/4";
/// Largest frame accepted (a state transfer carries a whole snapshot).
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Frames are read in pieces of at most this many bytes.
const READ_CHUNK: usize = 16 << 10;
/// A writer gathers queued frames into one write up to about this many bytes.
const WRITE_BATCH_BYTES: usize = 64 << 10;
/// Bytes a reader takes from its stream at once (many small frames per read).
const READ_BUFFER: usize = 64 << 10;
/// Frames queued per peer before new ones are dropped (the core retransmits).
pub const PEER_QUEUE: usize = 4096;

/// A frame type a [`Transport`] carries.
pub trait WireFrame: Serialize + DeserializeOwned + Send + 'static {
    /// The ALPN protocol name of the endpoint.
    const ALPN: &'static [u8];
    /// Who the frame claims to come from (checked against the connection).
    fn sender(&self) -> Peer;
}

impl WireFrame for Frame {
    const ALPN: &'static [u8] = ALPN;

    fn sender(&self) -> Peer {
        self.from
    }
}

/// A member of a group: its identity key, where it listens, and the short name it
/// gave itself. A peer *is* its key and address: the name is a label that travels
/// with it (in views and frames) and takes no part in comparisons, so a peer
/// learned from a record's `seeds` (no name) is the same peer as the one that
/// joins.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct Peer {
    /// The host's public key.
    pub key: PublicKey,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its self-asserted name (`lo keygen --name`), if any.
    pub name: Option<MemberName>,
}

impl Peer {
    /// A peer known by key and address only.
    pub fn new(key: PublicKey, addr: SocketAddr) -> Self {
        Peer {
            key,
            addr,
            name: None,
        }
    }

    /// How the peer is shown: `alice (728c838b)@127.0.0.1:4001`.
    pub fn label(&self) -> String {
        format!("{}@{}", member_label(&self.key, self.name), self.addr)
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.addr) == (other.key, other.addr)
    }
}

impl Eq for Peer {}

impl std::hash::Hash for Peer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.key, self.addr).hash(state);
    }
}

impl PartialOrd for Peer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Peer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.key, self.addr).cmp(&(other.key, other.addr))
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// One frame on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frame {
    /// The sending host.
    pub from: Peer,
    /// What it carries.
    pub body: Body,
}

/// What a [`Frame`] carries.
#[derive(Debug, Serialize, Deserialize)]
pub enum Body {
    /// A protocol message of one group.
    Group {
        /// The object (group) it belongs to.
        object: String,
        /// The protocol message (boxed: it is most of the frame's size).
        message: Box<Message<Peer>>,
        /// The sender's permission to join (sent with join requests to objects
        /// whose policy admits grant holders).
        grant: Option<liveobjects_directory::record::Signed<liveobjects_directory::record::Grant>>,
    },
    /// The host's heartbeat for every group it shares with the receiver.
    Heartbeat(Heartbeat<String>),
}

/// A frame received from an authenticated peer.
pub struct Inbound<F = Frame> {
    /// The frame.
    pub frame: F,
}

/// Failure to start the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Binding failed.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// TLS setup failed.
    #[error("mesh TLS setup: {0}")]
    Tls(String),
}

/// The host's QUIC endpoint for the mesh (or, with another frame type, the qsm
/// control plane).
pub struct Transport<F: WireFrame = Frame> {
    endpoint: quinn::Endpoint,
    me: Peer,
    client_config: quinn::ClientConfig,
    links: Mutex<HashMap<Peer, mpsc::Sender<Vec<u8>>>>,
    /// The latest connection each peer dialed to us.
    incoming: Mutex<HashMap<PublicKey, quinn::Connection>>,
    frames: std::marker::PhantomData<fn() -> F>,
    /// Frames queued for any peer since the start.
    frames_sent: AtomicU64,
}

/// The ed25519 key in a certificate (see [`liveobjects_directory::tls`]).
pub use liveobjects_directory::tls::ed25519_key_of;

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        Duration::from_secs(10)
            .try_into()
            .expect("valid idle timeout"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(8u32.into());
    Arc::new(t)
}

impl<F: WireFrame> Transport<F> {
    /// Bind `listen` and start accepting peers; inbound frames go to `inbound`.
    pub fn start(
        identity: &Identity,
        listen: SocketAddr,
        inbound: mpsc::Sender<Inbound<F>>,
    ) -> Result<Arc<Transport<F>>, NetError> {
        let tls = |e: &dyn std::fmt::Display| NetError::Tls(e.to_string());
        let signatures = HandshakeSignatures::default();
        let (cert, key) = liveobjects_directory::tls::certificate(identity, "liveobjects-mesh")
            .map_err(|e| NetError::Tls(e.0))?;
        let mut server = rustls::ServerConfig::builder_with_provider(signatures.provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(Arc::new(AnyEd25519Peer(signatures.clone())))
            .with_single_cert(vec![cert.clone()], key.clone_key().into())
            .map_err(|e| tls(&e))?;
        server.alpn_protocols = vec![F::ALPN.to_vec()];
        let server =
            quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| tls(&e))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server));
        server_config.transport_config(transport_config());
        let mut client = rustls::ClientConfig::builder_with_provider(signatures.provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ExpectedPeer(signatures)))
            .with_client_auth_cert(vec![cert], key.into())
            .map_err(|e| tls(&e))?;
        client.alpn_protocols = vec![F::ALPN.to_vec()];
        let client =
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| tls(&e))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client));
        client_config.transport_config(transport_config());
        let endpoint =
            quinn::Endpoint::server(server_config, listen).map_err(|e| NetError::Bind {
                addr: listen,
                reason: e.to_string(),
            })?;
        let addr = endpoint.local_addr().map_err(|e| NetError::Bind {
            addr: listen,
            reason: e.to_string(),
        })?;
        let transport = Arc::new(Transport {
            endpoint: endpoint.clone(),
            me: Peer {
                key: identity.public(),
                addr,
                name: identity.name(),
            },
            client_config,
            links: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
            frames: std::marker::PhantomData,
            frames_sent: AtomicU64::new(0),
        });
        tokio::spawn(accept_loop(endpoint, inbound, Arc::downgrade(&transport)));
        Ok(transport)
    }

    /// This host as a peer.
    pub fn me(&self) -> Peer {
        self.me
    }

    /// How many frames this endpoint has queued for its peers since it started
    /// (what an idle host's traffic is measured by).
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(Ordering::Relaxed)
    }

    /// Queue a frame for `to`. Never waits: if the peer's queue is full the frame is
    /// dropped (the protocol retransmits).
    pub fn send(self: &Arc<Self>, to: Peer, frame: &F) {
        let body = postcard::to_allocvec(frame).expect("encoding to a Vec cannot fail");
        if body.len() > MAX_FRAME_BYTES {
            tracing::warn!(
                "dropping a {} byte frame to {to:?}: over the frame limit",
                body.len()
            );
            return;
        }
        let mut bytes = Vec::with_capacity(4 + body.len());
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&body);
        let mut links = self.links.lock().expect("links lock");
        let link = links.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(writer(self.clone(), to, rx));
            tx
        });
        if link.try_send(bytes).is_ok() {
            self.frames_sent.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::debug!("queue to {to:?} full or closed; dropping a frame");
            if link.is_closed() {
                links.remove(&to);
            }
        }
    }

    /// Queue raw bytes for `to`, written to the stream as they are (no length prefix,
    /// no checks). For tests and fuzzing of the receiving side only.
    pub fn send_raw_for_tests(self: &Arc<Self>, to: Peer, bytes: Vec<u8>) {
        let mut links = self.links.lock().expect("links lock");
        let link = links.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(writer(self.clone(), to, rx));
            tx
        });
        let _ = link.try_send(bytes);
    }

    /// A peer dialed us again while its previous connection still looked alive:
    /// it restarted (a crashed process never closes its connections). Our own
    /// link to it then points at the dead process and would stay silent until
    /// the idle timeout, so drop it; the next frame dials afresh.
    fn peer_redialed(&self, key: PublicKey, connection: &quinn::Connection) {
        let previous = self
            .incoming
            .lock()
            .expect("incoming lock")
            .insert(key, connection.clone());
        if let Some(old) = previous
            && old.close_reason().is_none()
        {
            old.close(3u32.into(), b"superseded by a new connection");
            self.links
                .lock()
                .expect("links lock")
                .retain(|peer, _| peer.key != key);
        }
    }

    /// Stop: close every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"closing");
    }

    async fn connect(&self, to: Peer) -> Option<quinn::Connection> {
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), to.addr, "liveobjects-mesh")
            .ok()?;
        let connection = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .ok()?
            .ok()?;
        // The verifier accepted an ed25519 certificate; check it is the one we dialed.
        let key = peer_key(&connection)?;
        if key != to.key {
            tracing::warn!("{} answered as {key}, not {}; closing", to.addr, to.key);
            connection.close(1u32.into(), b"wrong identity");
            return None;
        }
        Some(connection)
    }
}

fn peer_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    ed25519_key_of(certs.first()?)
}

/// Writes length-prefixed frames (already encoded) to `to`, in order, several per
/// write when they queue up.
async fn writer<F: WireFrame>(
    transport: Arc<Transport<F>>,
    to: Peer,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let mut stream: Option<quinn::SendStream> = None;
    while let Some(mut bytes) = rx.recv().await {
        // Frames queued meanwhile leave in the same write: one pass through the
        // connection's lock and its driver for a burst instead of one per frame.
        while bytes.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => bytes.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if stream.is_none() {
            if let Some(connection) = transport.connect(to).await {
                stream = connection.open_uni().await.ok();
            }
            if stream.is_none() {
                // Link down: drop these frames; try again with the next one.
                continue;
            }
        }
        let s = stream.as_mut().expect("just set");
        if s.write_all(&bytes).await.is_err() {
            stream = None;
        }
    }
}

async fn accept_loop<F: WireFrame>(
    endpoint: quinn::Endpoint,
    inbound: mpsc::Sender<Inbound<F>>,
    transport: std::sync::Weak<Transport<F>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let inbound = inbound.clone();
        let transport = transport.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            let Some(key) = peer_key(&connection) else {
                connection.close(1u32.into(), b"no ed25519 certificate");
                return;
            };
            if let Some(t) = transport.upgrade() {
                t.peer_redialed(key, &connection);
            }
            let remote = connection.remote_address();
            while let Ok(stream) = connection.accept_uni().await {
                let inbound = inbound.clone();
                let connection = connection.clone();
                tokio::spawn(async move {
                    if let Err(reason) = read_frames(stream, key, remote, &inbound).await {
                        tracing::warn!("closing the connection of {key}: {reason}");
                        connection.close(2u32.into(), reason.as_bytes());
                    }
                });
            }
        });
    }
}

async fn read_frames<F: WireFrame>(
    stream: quinn::RecvStream,
    key: PublicKey,
    remote: SocketAddr,
    inbound: &mpsc::Sender<Inbound<F>>,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    // Buffered: small frames come many to a read instead of two reads each.
    let mut stream = tokio::io::BufReader::with_capacity(READ_BUFFER, stream);
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return Ok(()); // Stream ended or connection closed.
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(format!("frame of {len} bytes exceeds {MAX_FRAME_BYTES}"));
        }
        // Grow the buffer as bytes arrive, not to the claimed length up front: a
        // peer that claims 64 MiB and sends nothing must not cost 64 MiB.
        let mut bytes = Vec::with_capacity(len.min(READ_CHUNK));
        while bytes.len() < len {
            let start = bytes.len();
            bytes.resize(start + (len - start).min(READ_CHUNK), 0);
            stream
                .read_exact(&mut bytes[start..])
                .await
                .map_err(|e| format!("truncated frame: {e}"))?;
        }
        let frame: F = postcard::from_bytes(&bytes).map_err(|e| format!("malformed frame: {e}"))?;
        // The claimed sender must be the authenticated key, at the address it talks
        // from (each host uses one endpoint to listen and to dial), so replies can
        // never be aimed at a third party.
        let from = frame.sender();
        if from.key != key || from.addr != remote {
            return Err(format!(
                "frame claims to come from {from:?}, but the connection is {key} at {remote}"
            ));
        }
        // Full: drop (the protocol retransmits) rather than block the connection.
        let _ = inbound.try_send(Inbound { frame });
    }
}

/// Accepts a client certificate if it carries an ed25519 key (checked by the TLS
/// handshake signature); which keys may take part is decided per group.
#[derive(Debug)]
struct AnyEd25519Peer(HandshakeSignatures);

impl ClientCertVerifier for AnyEd25519Peer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        ed25519_key_of(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .ok_or_else(|| rustls::Error::General("not an ed25519 certificate".into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Accepts the server's certificate if it carries an ed25519 key; the caller then
/// checks that the key is the peer it dialed.
#[derive(Debug)]
struct ExpectedPeer(HandshakeSignatures);

impl ServerCertVerifier for ExpectedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Which key it must be is checked right after the handshake (`connect`).
        ed25519_key_of(end_entity)
            .map(|_| ServerCertVerified::assertion())
            .ok_or_else(|| rustls::Error::General("not an ed25519 certificate".into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
