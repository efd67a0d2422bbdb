//! The thin tokio shell around [`GossipNode`]: one UDP socket, one timer.

use super::GossipNode;
use super::core::MAX_DATAGRAM;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::UdpSocket;

/// A gossip node on a real UDP socket.
pub struct GossipSocket {
    socket: UdpSocket,
    node: GossipNode,
    buffer: Vec<u8>,
}

impl GossipSocket {
    /// Run `node` on `socket` (bound to the node's address).
    pub fn new(socket: UdpSocket, node: GossipNode) -> Self {
        GossipSocket {
            socket,
            node,
            buffer: vec![0; MAX_DATAGRAM + 1],
        }
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The node, to query it or to feed it commands.
    pub fn node(&mut self) -> &mut GossipNode {
        &mut self.node
    }

    /// Wait for one datagram or the node's next timeout, handle it, and send what
    /// the node asked to send. Dropping the future (to serve a command, or at a
    /// deadline) loses at most the datagram being sent at that moment, which
    /// gossip tolerates like any loss; nothing received is lost.
    pub async fn step(&mut self) -> io::Result<()> {
        self.flush().await;
        let deadline = tokio::time::Instant::from_std(self.node.poll_timeout());
        tokio::select! {
            received = self.socket.recv_from(&mut self.buffer) => {
                match received {
                    Ok((len, from)) => {
                        if let Err(e) = self.node.handle_datagram(from, &self.buffer[..len], Instant::now()) {
                            tracing::debug!(%from, "gossip datagram dropped: {e}");
                        }
                    }
                    // On Linux a previous send to a closed port is reported on the
                    // next receive; that peer's death is SWIM's business, not an error.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                self.node.handle_timeout(Instant::now());
            }
        }
        self.flush().await;
        Ok(())
    }

    async fn flush(&mut self) {
        while let Some(transmit) = self.node.poll_transmit() {
            if let Err(e) = self.socket.send_to(&transmit.bytes, transmit.to).await {
                tracing::debug!(to = %transmit.to, "gossip send failed: {e}");
            }
        }
    }
}
