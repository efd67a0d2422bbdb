//! The sandbox around one replica: a deterministic, capability-free WASI, the
//! memory limiter, and the guest's captured stderr.
//!
//! Replicas must compute identical states, so nothing a guest can observe may differ
//! between hosts. Guests built with a WASI toolchain (Rust's `wasm32-wasip2` std,
//! componentize-py, ...) import WASI; we link wasmtime-wasi with:
//! - no preopened directories, no environment, no arguments, stdin closed, network
//!   uses all denied;
//! - a wall clock and a monotonic clock that both read the time of the event being
//!   delivered (the sender's timestamp), so they agree on every replica;
//! - "secure" and "insecure" random streams reseeded before every call from the
//!   object's name and the event's identity, so they agree on every replica;
//! - stdout discarded and stderr kept (last few KiB) to explain traps such as panics.
//!
//! `wasi:clocks/monotonic-clock.subscribe-*` (sleeping) is replaced by a trap: a
//! replica must never block its host on a timer.

use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Whether the guest read a clock or randomness during a batch of events.
///
/// What a read returns depends on the event being applied, and in a batch the host
/// cannot tell which one that is; so a batch whose guest read either is thrown away
/// and its events delivered one by one (see `Replica::deliver_batch`).
#[derive(Clone, Default)]
pub(crate) struct BatchWatch(Arc<BatchFlags>);

#[derive(Default)]
struct BatchFlags {
    open: AtomicBool,
    read: AtomicBool,
}

impl BatchWatch {
    /// A batch starts: watch for reads.
    pub(crate) fn open(&self) {
        self.0.read.store(false, Ordering::Relaxed);
        self.0.open.store(true, Ordering::Relaxed);
    }

    /// The batch ended; whether the guest read a clock or randomness during it.
    pub(crate) fn close(&self) -> bool {
        self.0.open.store(false, Ordering::Relaxed);
        self.0.read.swap(false, Ordering::Relaxed)
    }

    fn note_read(&self) {
        if self.0.open.load(Ordering::Relaxed) {
            self.0.read.store(true, Ordering::Relaxed);
        }
    }
}

/// The time every clock of the sandbox reports: the current event's timestamp.
#[derive(Clone, Default)]
pub(crate) struct EventClock {
    ms: Arc<AtomicU64>,
    watch: BatchWatch,
}

impl EventClock {
    /// A clock whose reads during a batch `watch` notes.
    pub(crate) fn new(watch: &BatchWatch) -> Self {
        EventClock {
            ms: Arc::default(),
            watch: watch.clone(),
        }
    }

    /// Set the time the guest will see, in milliseconds since the Unix epoch.
    pub(crate) fn set_ms(&self, ms: u64) {
        self.ms.store(ms, Ordering::Relaxed);
    }

    fn ns(&self) -> u64 {
        self.watch.note_read();
        self.ms.load(Ordering::Relaxed).saturating_mul(1_000_000)
    }
}

impl HostWallClock for EventClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.ns())
    }
}

impl HostMonotonicClock for EventClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.ns()
    }
}

/// A random stream fully determined by its seed: SHA-256 in counter mode.
///
/// Hand-written on purpose: a replica on another host (maybe another version of
/// `lo`) must produce the very same bytes from the same seed, so the algorithm is
/// fixed here rather than left to a crate whose generator may change.
///
/// Reseeding happens before every guest call but most calls never read randomness,
/// so `reseed` only records the seed material; the hash is computed on first use.
#[derive(Clone, Default)]
pub(crate) struct SeededRandom {
    state: Arc<Mutex<RandomState>>,
    watch: BatchWatch,
}

#[derive(Default)]
struct RandomState {
    /// Hasher that has absorbed the domain tag and the object's name.
    base: Sha256,
    /// Length-prefixed seed parts of the current call (buffer reused across calls).
    material: Vec<u8>,
    seed: Option<[u8; 32]>,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRandom {
    /// A stream for one object; every seed below is also bound to `object`. Reads
    /// during a batch are noted on `watch`.
    pub(crate) fn new(object: &[u8], watch: &BatchWatch) -> Self {
        let mut base = Sha256::new();
        base.update(b"liveobjects random v1");
        base.update((object.len() as u64).to_le_bytes());
        base.update(object);
        SeededRandom {
            state: Arc::new(Mutex::new(RandomState {
                base,
                ..Default::default()
            })),
            watch: watch.clone(),
        }
    }

    /// Restart the stream from a seed derived from the object and `parts`.
    pub(crate) fn reseed(&self, parts: &[&[u8]]) {
        let mut state = self.state.lock().expect("random state poisoned");
        state.material.clear();
        for part in parts {
            state
                .material
                .extend_from_slice(&(part.len() as u64).to_le_bytes());
            state.material.extend_from_slice(part);
        }
        state.seed = None;
        state.counter = 0;
        state.used = 32;
    }

    fn fill(&self, dst: &mut [u8]) {
        self.watch.note_read();
        let mut state = self.state.lock().expect("random state poisoned");
        let seed = match state.seed {
            Some(seed) => seed,
            None => {
                let mut hasher = state.base.clone();
                hasher.update(&state.material);
                let seed: [u8; 32] = hasher.finalize().into();
                state.seed = Some(seed);
                seed
            }
        };
        for byte in dst {
            if state.used == 32 {
                let mut hasher = Sha256::new();
                hasher.update(seed);
                hasher.update(state.counter.to_le_bytes());
                state.block = hasher.finalize().into();
                state.counter += 1;
                state.used = 0;
            }
            *byte = state.block[state.used];
            state.used += 1;
        }
    }
}

impl rand_core::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

/// How much of the guest's stderr we keep (the tail).
const STDERR_TAIL_BYTES: usize = 4096;

/// The guest's stderr: never blocks or fails, keeps only the last few KiB.
#[derive(Clone, Default)]
pub(crate) struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    /// Take what the guest wrote since the last call, as lossy UTF-8.
    pub(crate) fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.0.lock().expect("stderr poisoned"));
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().expect("stderr poisoned");
        tail.extend_from_slice(bytes);
        if tail.len() > STDERR_TAIL_BYTES {
            let cut = tail.len() - STDERR_TAIL_BYTES;
            tail.drain(..cut);
        }
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp2 is linked; the async (p3) path is never used.
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for StderrTail {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

/// Build the WASI context of one replica.
pub(crate) fn wasi_context(
    clock: &EventClock,
    random: &SeededRandom,
    insecure_seed: u128,
    stderr: &StderrTail,
) -> wasmtime_wasi::WasiCtx {
    wasmtime_wasi::WasiCtx::builder()
        .wall_clock(clock.clone())
        .monotonic_clock(clock.clone())
        .secure_random(random.clone())
        .insecure_random(random.clone())
        .insecure_random_seed(insecure_seed)
        .max_random_size(1 << 20)
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Which limit a guest hit; carried inside the trap error so the host can name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    /// The call used all its CPU fuel.
    #[error("it exceeded the CPU limit ({fuel} fuel per call)")]
    Cpu {
        /// Fuel given to each call.
        fuel: u64,
    },
    /// Linear memory would have grown beyond the cap.
    #[error("it exceeded the memory limit ({bytes} bytes; it asked for {requested})")]
    Memory {
        /// The cap.
        bytes: usize,
        /// The size it tried to grow to.
        requested: usize,
    },
    /// One multicast payload was larger than allowed.
    #[error("it exceeded the multicast size limit ({limit} bytes; it sent {size})")]
    MulticastSize {
        /// The cap.
        limit: usize,
        /// The payload's size.
        size: usize,
    },
    /// More multicasts in one call than allowed.
    #[error("it exceeded the multicast count limit ({limit} per call)")]
    MulticastCount {
        /// The cap.
        limit: usize,
    },
    /// One call caused an endless cascade of events (objects answering events with
    /// more events).
    #[error("it caused more than {limit} events in one call")]
    EventCascade {
        /// The cap.
        limit: usize,
    },
    /// The call ran past its wall-clock deadline (epoch interruption).
    #[error("it ran past its deadline ({ms} ms of wall-clock time per call)")]
    Deadline {
        /// The deadline.
        ms: u64,
    },
    /// A guest tried to sleep or wait on a timer.
    #[error("it tried to sleep or wait on a timer, which a live object may not do")]
    Blocking,
}

/// Caps a replica's linear memories (in total, over all its memories) and tables.
pub(crate) struct MemoryLimiter {
    pub(crate) memory_bytes: usize,
    pub(crate) table_elements: usize,
    /// Bytes of linear memory granted so far, summed over every memory.
    pub(crate) granted: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Memories never shrink, so the total is the sum of every grant.
        let total = self.granted.saturating_add(desired.saturating_sub(current));
        if total > self.memory_bytes {
            // Trap rather than return false: a guest that handles a failed grow would
            // be fine, but Rust and most runtimes abort on it anyway, and the trap
            // lets us name the limit.
            return Err(wasmtime::Error::new(Limit::Memory {
                bytes: self.memory_bytes,
                requested: total,
            }));
        }
        self.granted = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }

    fn instances(&self) -> usize {
        // Components instantiate several core instances (the object, shims, adapters).
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::TryRng;

    #[test]
    fn seeded_random_is_a_pure_function_of_its_seed() {
        let a = SeededRandom::new(b"obj", &BatchWatch::default());
        let b = SeededRandom::new(b"obj", &BatchWatch::default());
        a.reseed(&[b"event-1"]);
        b.reseed(&[b"event-1"]);
        let (mut x, mut y) = ([0u8; 100], [0u8; 100]);
        a.clone().try_fill_bytes(&mut x).unwrap();
        b.clone().try_fill_bytes(&mut y).unwrap();
        assert_eq!(x, y);
        b.reseed(&[b"event-2"]);
        b.clone().try_fill_bytes(&mut y).unwrap();
        assert_ne!(x, y, "a different event must give a different stream");
        let c = SeededRandom::new(b"other object", &BatchWatch::default());
        c.reseed(&[b"event-1"]);
        c.clone().try_fill_bytes(&mut y).unwrap();
        assert_ne!(x, y, "another object must get another stream");
    }

    #[test]
    fn seed_parts_are_length_prefixed() {
        let a = SeededRandom::new(b"obj", &BatchWatch::default());
        let b = SeededRandom::new(b"obj", &BatchWatch::default());
        a.reseed(&[b"ab", b"c"]);
        b.reseed(&[b"a", b"bc"]);
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        a.clone().try_fill_bytes(&mut x).unwrap();
        b.clone().try_fill_bytes(&mut y).unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn stderr_keeps_only_its_tail() {
        let tail = StderrTail::default();
        tail.push(&vec![b'a'; STDERR_TAIL_BYTES]);
        tail.push(b"the end");
        let text = tail.take();
        assert_eq!(text.len(), STDERR_TAIL_BYTES);
        assert!(text.ends_with("the end"));
        assert_eq!(tail.take(), "");
    }
}
