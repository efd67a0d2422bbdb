//! A minimal NATS client and server launcher shared by the benchmarks that measure
//! NATS in the same run as ours.
#![allow(dead_code)] // Each bench uses its own part.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A minimal NATS client for the benchmark: the text protocol is a few lines (CONNECT,
/// SUB, PUB, MSG, PING/PONG), and pulling in a full client crate for one benchmark
/// would cost more build time than this.
/// One connection to a NATS server.
pub struct Nats {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Nats {
    /// Connect to the server on loopback `port`.
    pub async fn connect(port: u16) -> Nats {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        let mut nats = Nats {
            reader: BufReader::new(r),
            writer: w,
        };
        let mut info = String::new();
        nats.reader.read_line(&mut info).await.unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        nats.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .await;
        nats
    }

    /// Write raw protocol bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Subscribe to `bench`.
    pub async fn subscribe(&mut self) {
        self.subscribe_to("bench").await
    }

    /// Subscribe to `subject` (wildcards allowed) and wait until the server has it.
    pub async fn subscribe_to(&mut self, subject: &str) {
        self.send(format!("SUB {subject} 1\r\nPING\r\n").as_bytes())
            .await;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            if line.starts_with("PONG") {
                return;
            }
        }
    }

    /// Wait for the next message; answer server PINGs on the way.
    pub async fn next_message(&mut self) {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.unwrap() == 0 {
                panic!("nats closed the connection");
            }
            if line.starts_with("PING") {
                self.send(b"PONG\r\n").await;
                continue;
            }
            if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.trim().rsplit(' ').next().unwrap().parse().unwrap();
                let mut body = vec![0u8; len + 2];
                self.reader.read_exact(&mut body).await.unwrap();
                return;
            }
        }
    }

    /// A PUB of `size` bytes to `bench`.
    pub fn publish_frame(size: usize) -> Vec<u8> {
        Self::publish_frame_to("bench", size)
    }

    /// A PUB of `size` bytes to `subject`.
    pub fn publish_frame_to(subject: &str, size: usize) -> Vec<u8> {
        let mut frame = format!("PUB {subject} {size}\r\n").into_bytes();
        frame.extend(std::iter::repeat_n(7u8, size));
        frame.extend_from_slice(b"\r\n");
        frame
    }
}

/// A `nats-server` child process (killed when dropped) and its port.
pub struct NatsServer(pub std::process::Child, pub u16);

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `nats-server` on a free loopback port, if it is installed.
pub async fn nats_server() -> Option<NatsServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let server = NatsServer(child, port);
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Some(server);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
