//! The qsm driver's network shell: UDP sockets for data (socket2, IP multicast on an
//! interface named explicitly, batched receives through quinn-udp's `recvmmsg`)
//! and the QUIC control frames (membership and state transfer, over the mesh's
//! authenticated [`Transport`](crate::mesh::net::Transport)).
//!
//! Multicast never goes out on an interface the user did not choose: the sending
//! socket sets `IP_MULTICAST_IF` (`IPV6_MULTICAST_IF`) to the interface of the data
//! address (or the one named), with a TTL (hop limit) of 1, so datagrams stay on the
//! link. The receiving socket is bound to the domain's group port with
//! `IP_MULTICAST_ALL` off, so it receives only the groups it joined.

use super::core::PeerMessage;
use super::membership::{FromMembership, ToMembership};
use crate::mesh::net::{Peer, WireFrame};
use liveobjects_directory::record::{Grant, Signed};
use quinn_udp::{RecvMeta, UdpSocketState};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// ALPN of the qsm control plane (2: a joiner's state names its logic; 3: logic
/// epochs, upgrade views and the snapshot's epoch).
pub const ALPN: &[u8] = b"liveobjects-qsm/3";
/// Receive buffer asked of the kernel (bursts of a fast sender must fit).
const RECV_BUFFER: usize = 16 << 20;
/// Bytes per receive buffer (a GRO batch can fill it).
const RECV_CHUNK: usize = 64 * 1024;

/// A frame of the qsm control plane.
#[derive(Debug, Serialize, Deserialize)]
pub struct QsmFrame {
    /// The sender (checked against the QUIC connection).
    pub from: Peer,
    /// What it carries.
    pub body: QsmBody,
}

/// The content of a [`QsmFrame`].
#[derive(Debug, Serialize, Deserialize)]
pub enum QsmBody {
    /// A host to the membership service (with its grant, for joins of objects whose
    /// policy admits grant holders).
    Request {
        /// The request.
        message: ToMembership,
        /// The host's grant for the object.
        grant: Option<Signed<Grant>>,
    },
    /// The membership service to a host, numbered per host from its `Welcome`
    /// (1) on: a host that sees a gap registers again.
    Membership {
        /// Position in the service's messages to this host.
        seq: u64,
        /// The message.
        message: FromMembership<Peer>,
    },
    /// Host to host (state transfer).
    Peer(PeerMessage),
}

impl WireFrame for QsmFrame {
    const ALPN: &'static [u8] = ALPN;

    fn sender(&self) -> Peer {
        self.from
    }
}

/// The interface multicast goes out on and is received from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// IPv4: the interface's address.
    V4(Ipv4Addr),
    /// IPv6: the interface's index.
    V6(u32),
}

/// Errors setting up the data sockets.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A socket call failed.
    #[error("qsm data socket {what} ({addr}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The address involved.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The data address does not say which interface to use.
    #[error(
        "qsm needs the data address of a specific interface (got {0}); pass e.g. \
         --qsm-bind 127.0.0.1:0, or for IPv6 also --qsm-interface NAME"
    )]
    NoInterface(SocketAddr),
}

fn io_error(what: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> SocketError {
    move |source| SocketError::Io { what, addr, source }
}

/// A UDP socket with its quinn-udp state (for batched receives).
struct Receiver {
    socket: UdpSocket,
    state: UdpSocketState,
}

/// The data sockets of one host: one receiving unicast (at the address peers
/// know), one sending everything, and (once the group port is known) one
/// receiving the joined multicast groups.
pub struct DataSockets {
    unicast: Receiver,
    sender: Socket,
    multicast: Option<Receiver>,
    interface: Interface,
    local: SocketAddr,
    /// Datagrams the kernel would not take (the protocol repairs them).
    pub send_drops: u64,
    bufs: Vec<Vec<u8>>,
}

fn grow_receive_buffer(socket: &Socket) {
    // SO_RCVBUFFORCE works for root beyond net.core.rmem_max; otherwise take what
    // the kernel allows.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(socket, RECV_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    }
}

fn receiver(socket: Socket, addr: SocketAddr) -> Result<Receiver, SocketError> {
    socket
        .set_nonblocking(true)
        .map_err(io_error("set non-blocking", addr))?;
    let socket = UdpSocket::from_std(socket.into()).map_err(io_error("register", addr))?;
    let state = UdpSocketState::new((&socket).into()).map_err(io_error("configure", addr))?;
    Ok(Receiver { socket, state })
}

impl DataSockets {
    /// Bind the unicast socket at `data` (an interface's address; port 0 picks one)
    /// and aim multicast at that interface (for IPv6, the interface `name`).
    /// Returns the sockets and whether IP multicast works there.
    pub fn bind(data: SocketAddr, name: Option<&str>) -> Result<(DataSockets, bool), SocketError> {
        if data.ip().is_unspecified() {
            return Err(SocketError::NoInterface(data));
        }
        let domain = if data.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io_error("create", data))?;
        socket.bind(&data.into()).map_err(io_error("bind", data))?;
        grow_receive_buffer(&socket);
        let interface = match data.ip() {
            IpAddr::V4(ip) => Interface::V4(ip),
            IpAddr::V6(_) => {
                let name = name.ok_or(SocketError::NoInterface(data))?;
                Interface::V6(
                    rustix::net::netdevice::name_to_index(&socket, name)
                        .map_err(|e| io_error("find interface", data)(e.into()))?,
                )
            }
        };
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(data);
        // Sending has a socket of its own: quinn-udp forbids fragmentation on the
        // sockets it receives with (QUIC's path MTU discovery), and batched qsm
        // datagrams of 8 KiB need IP fragmentation on 1,500-byte links.
        let sender = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io_error("create", data))?;
        sender
            .bind(&SocketAddr::new(data.ip(), 0).into())
            .map_err(io_error("bind", data))?;
        let _ = sender.set_send_buffer_size(RECV_BUFFER);
        sender
            .set_nonblocking(true)
            .map_err(io_error("set non-blocking", data))?;
        // Multicast leaves only on the chosen interface, one hop at most.
        let multicast = match interface {
            Interface::V4(ip) => sender
                .set_multicast_if_v4(&ip)
                .and_then(|_| sender.set_multicast_ttl_v4(1))
                .and_then(|_| sender.set_multicast_loop_v4(true)),
            Interface::V6(index) => sender
                .set_multicast_if_v6(index)
                .and_then(|_| sender.set_multicast_hops_v6(1))
                .and_then(|_| sender.set_multicast_loop_v6(true)),
        };
        // Can this interface receive multicast at all? Join and leave a group.
        let multicast = multicast.is_ok() && probe(&sender, interface);
        let sockets = DataSockets {
            unicast: receiver(socket, data)?,
            sender,
            multicast: None,
            interface,
            local,
            send_drops: 0,
            bufs: vec![vec![0u8; RECV_CHUNK]; quinn_udp::BATCH_SIZE],
        };
        Ok((sockets, multicast))
    }

    /// Where unicast datagrams reach this host.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Open the socket receiving the domain's groups on `port`.
    pub fn open_groups(&mut self, port: u16) -> Result<(), SocketError> {
        if self.multicast.is_some() {
            return Ok(());
        }
        let (domain, any): (Domain, IpAddr) = match self.interface {
            Interface::V4(_) => (Domain::IPV4, Ipv4Addr::UNSPECIFIED.into()),
            Interface::V6(_) => (Domain::IPV6, Ipv6Addr::UNSPECIFIED.into()),
        };
        let addr = SocketAddr::new(any, port);
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io_error("create", addr))?;
        socket
            .set_reuse_address(true)
            .and_then(|_| socket.set_reuse_port(true))
            .map_err(io_error("share the group port", addr))?;
        match self.interface {
            Interface::V4(_) => socket.set_multicast_all_v4(false),
            Interface::V6(_) => {
                socket.set_only_v6(true).ok();
                socket.set_multicast_all_v6(false)
            }
        }
        .map_err(io_error("receive only joined groups", addr))?;
        socket.bind(&addr.into()).map_err(io_error("bind", addr))?;
        grow_receive_buffer(&socket);
        self.multicast = Some(receiver(socket, addr)?);
        Ok(())
    }

    fn group_socket(&self) -> Option<socket2::SockRef<'_>> {
        self.multicast
            .as_ref()
            .map(|r| socket2::SockRef::from(&r.socket))
    }

    /// Receive `group` from now on.
    pub fn join_group(&mut self, group: SocketAddr) -> Result<(), SocketError> {
        self.open_groups(group.port())?;
        let socket = self.group_socket().expect("just opened");
        match (group.ip(), self.interface) {
            (IpAddr::V4(g), Interface::V4(ip)) => socket.join_multicast_v4(&g, &ip),
            (IpAddr::V6(g), Interface::V6(index)) => socket.join_multicast_v6(&g, index),
            _ => Err(io::Error::other(
                "group and interface are of different families",
            )),
        }
        .map_err(io_error("join group", group))
    }

    /// Stop receiving `group`.
    pub fn leave_group(&mut self, group: SocketAddr) {
        let Some(socket) = self.group_socket() else {
            return;
        };
        let _ = match (group.ip(), self.interface) {
            (IpAddr::V4(g), Interface::V4(ip)) => socket.leave_multicast_v4(&g, &ip),
            (IpAddr::V6(g), Interface::V6(index)) => socket.leave_multicast_v6(&g, index),
            _ => Ok(()),
        };
    }

    /// Send one datagram now; if the kernel's buffer is full it is dropped and
    /// counted (the protocol repairs it, and the pacer backs off).
    pub fn send(&mut self, to: SocketAddr, bytes: &[u8]) {
        if self.sender.send_to(bytes, &to.into()).is_err() {
            self.send_drops += 1;
        }
    }

    /// Wait until either socket has datagrams.
    pub async fn readable(&self) {
        match &self.multicast {
            Some(m) => {
                tokio::select! {
                    _ = self.unicast.socket.readable() => {}
                    _ = m.socket.readable() => {}
                }
            }
            None => {
                let _ = self.unicast.socket.readable().await;
            }
        }
    }

    /// Hand every datagram waiting on both sockets to `handle` (at most `limit`
    /// batches per socket, so a flood cannot starve timers).
    pub fn receive(&mut self, limit: usize, mut handle: impl FnMut(&[u8])) {
        let DataSockets {
            unicast,
            multicast,
            bufs,
            ..
        } = self;
        for receiver in std::iter::once(unicast).chain(multicast.as_mut()) {
            for _ in 0..limit {
                let mut meta = [RecvMeta::default(); quinn_udp::BATCH_SIZE];
                let mut slices: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                let got = receiver.socket.try_io(Interest::READABLE, || {
                    receiver
                        .state
                        .recv((&receiver.socket).into(), &mut slices, &mut meta)
                });
                let Ok(n) = got else {
                    break;
                };
                for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                    let stride = m.stride.max(1);
                    for chunk in buf[..m.len].chunks(stride) {
                        handle(chunk);
                    }
                }
            }
        }
    }
}

fn probe(socket: &Socket, interface: Interface) -> bool {
    match interface {
        Interface::V4(ip) => {
            let g = Ipv4Addr::new(239, 255, 76, 254);
            let ok = socket.join_multicast_v4(&g, &ip).is_ok();
            let _ = socket.leave_multicast_v4(&g, &ip);
            ok
        }
        Interface::V6(index) => {
            let g: Ipv6Addr = "ff15::4c4f:fffe".parse().expect("valid");
            let ok = socket.join_multicast_v6(&g, index).is_ok();
            let _ = socket.leave_multicast_v6(&g, index);
            ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_multicast_reaches_a_joined_socket_only() {
        let (mut a, mc_a) = DataSockets::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let (mut b, _) = DataSockets::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let (mut c, _) = DataSockets::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        assert!(mc_a, "multicast works on lo");
        let port = 47_000 + (std::process::id() % 1000) as u16;
        let group: SocketAddr = SocketAddr::new(Ipv4Addr::new(239, 255, 76, 9).into(), port);
        let other: SocketAddr = SocketAddr::new(Ipv4Addr::new(239, 255, 76, 10).into(), port);
        b.join_group(group).unwrap();
        c.join_group(other).unwrap();
        a.send(group, b"hello group");
        a.send(b.local_addr(), b"hello b");
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 2 && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), b.readable()).await;
            b.receive(4, |d| got.push(d.to_vec()));
        }
        got.sort();
        assert_eq!(got, vec![b"hello b".to_vec(), b"hello group".to_vec()]);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut stray = Vec::new();
        c.receive(4, |d| stray.push(d.to_vec()));
        assert!(
            stray.is_empty(),
            "a socket that joined another group got {stray:?}"
        );
    }
}
