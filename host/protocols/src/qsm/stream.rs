//! The buffers of one stream (one sender into one region view): the sender's side
//! ([`SendStream`]: everything not yet acknowledged by the whole region, paced by
//! a rate) and a receiver's side ([`InStream`]: what arrived, what is missing, what
//! was handed on, and a repair cache until the region reports it stable).

use super::membership::Micros;
use super::wire::{HostNum, Key, Message, RegionId};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// A message in a sender's buffer.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub msg: Message,
    /// The host-wide order in which messages were multicast; a stream created
    /// after this message never carried it (see `QsmHost::retire_stream`).
    pub ordinal: u64,
    /// When it was last transmitted (0: not yet).
    pub last_sent: Micros,
}

/// Rate pacing with a token bucket, adapted from the region's reports (like TCP's
/// slow start and congestion avoidance, driven by per-round loss and backlog
/// reports instead of per-packet acks): each clean report grows the rate by 25%
/// (slow start) or 1%, a congested one cuts it by 30%, at most once per interval.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// Bytes per second.
    pub rate: f64,
    tokens: f64,
    last: Micros,
    slow_start: bool,
    last_decrease: Micros,
    min: f64,
    max: f64,
}

impl Pacer {
    pub fn new(rate: f64, min: f64, max: f64, now: Micros) -> Self {
        Pacer {
            rate,
            // One datagram may go at once.
            tokens: 1.0,
            last: now,
            slow_start: true,
            last_decrease: 0,
            min,
            max,
        }
    }

    /// Burst allowed: two milliseconds at the current rate, at least one datagram.
    fn burst(&self, datagram: usize) -> f64 {
        (self.rate * 0.002).max(datagram as f64)
    }

    pub fn refill(&mut self, now: Micros, datagram: usize) {
        if now > self.last {
            let dt = (now - self.last) as f64 / 1e6;
            self.tokens = (self.tokens + dt * self.rate).min(self.burst(datagram));
            self.last = now;
        }
    }

    pub fn ready(&self) -> bool {
        self.tokens > 0.0
    }

    pub fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }

    /// When the bucket is positive again.
    pub fn next_ready(&self) -> Micros {
        if self.tokens > 0.0 {
            return self.last;
        }
        self.last + ((-self.tokens) / self.rate * 1e6).ceil() as Micros + 1
    }

    /// A report from the region: `congested` if it saw loss or a growing backlog.
    /// Decreases at most once per `interval` (one report round).
    pub fn report(&mut self, congested: bool, now: Micros, interval: Micros) {
        if congested {
            if now >= self.last_decrease + interval {
                self.rate = (self.rate * 0.7).max(self.min);
                self.slow_start = false;
                self.last_decrease = now;
            }
        } else if self.slow_start {
            self.rate = (self.rate * 1.25).min(self.max);
        } else {
            self.rate = (self.rate * 1.01).min(self.max);
        }
    }
}

/// Counters of one sending stream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SendCounters {
    pub messages: u64,
    pub bytes: u64,
    pub datagrams: u64,
    pub retransmitted: u64,
}

/// This host's stream into one region view.
pub(crate) struct SendStream {
    pub region: RegionId,
    pub group: SocketAddr,
    pub overlay: bool,
    pub members: Vec<HostNum>,
    pub key: Key,
    /// Messages multicast before this ordinal were never put on this stream.
    pub created_ordinal: u64,
    /// Every member consumed everything up to here.
    pub acked: u64,
    /// Highest stream seq transmitted at least once.
    pub sent: u64,
    /// Messages `acked + 1 ..= acked + buffer.len()`.
    pub buffer: VecDeque<Outgoing>,
    pub bytes: usize,
    /// Ranges the region lost: re-multicast them.
    pub lost: VecDeque<(u64, u64)>,
    pub pacer: Pacer,
    /// When the region last acknowledged (or the first message went out after a
    /// quiet spell).
    pub last_heard: Micros,
    /// When `acked` last advanced (or the first message went out after a quiet
    /// spell).
    pub last_progress: Micros,
    pub counters: SendCounters,
}

impl SendStream {
    /// The seq the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.acked + self.buffer.len() as u64 + 1
    }

    /// Messages not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.buffer.len() as u64
    }

    pub fn push(&mut self, msg: Message, ordinal: u64) -> u64 {
        let seq = self.next_seq();
        self.bytes += msg.encoded_bound();
        self.buffer.push_back(Outgoing {
            msg,
            ordinal,
            last_sent: 0,
        });
        seq
    }

    pub fn get(&self, seq: u64) -> Option<&Outgoing> {
        if seq <= self.acked {
            return None;
        }
        self.buffer.get((seq - self.acked - 1) as usize)
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Outgoing> {
        if seq <= self.acked {
            return None;
        }
        self.buffer.get_mut((seq - self.acked - 1) as usize)
    }

    /// Free everything up to `upto`; returns the freed messages.
    pub fn ack(&mut self, upto: u64, now: Micros) -> Vec<Outgoing> {
        let upto = upto.min(self.sent);
        let mut freed = Vec::new();
        while self.acked < upto {
            let Some(out) = self.buffer.pop_front() else {
                break;
            };
            self.bytes -= out.msg.encoded_bound();
            self.acked += 1;
            freed.push(out);
        }
        if !freed.is_empty() {
            self.last_progress = now;
        }
        while self.lost.front().is_some_and(|(_, to)| *to <= self.acked) {
            self.lost.pop_front();
        }
        if let Some(front) = self.lost.front_mut() {
            front.0 = front.0.max(self.acked + 1);
        }
        freed
    }
}

/// Outcome of offering a message to an [`InStream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insert {
    New,
    Duplicate,
    OutOfWindow,
}

/// A receiver's state of one sender's stream into its region.
#[derive(Debug)]
pub(crate) struct InStream {
    /// Seq of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<Message>>,
    /// Everything up to here has arrived.
    pub contig: u64,
    /// Everything up to here was handed on (delivered, held back or buffered).
    pub consumed: u64,
    /// Highest seq heard of (data, status or a token).
    pub max_seen: u64,
    /// Highest seq already reported missing (so loss is counted once).
    pub reported_upto: u64,
    /// Messages that arrived through repair.
    pub repaired: u64,
    /// Messages received (first copies).
    pub received: u64,
}

impl Default for InStream {
    fn default() -> Self {
        InStream {
            base: 1,
            slots: VecDeque::new(),
            contig: 0,
            consumed: 0,
            max_seen: 0,
            reported_upto: 0,
            repaired: 0,
            received: 0,
        }
    }
}

impl InStream {
    #[cfg(test)]
    fn new() -> Self {
        InStream::default()
    }

    /// Messages held (for reordering and repair).
    pub fn held(&self) -> usize {
        self.slots.len()
    }

    /// Store `msg` as `seq`, unless it is old, already here, or more than `limit`
    /// past the oldest message kept.
    pub fn insert(&mut self, seq: u64, msg: Message, limit: u64) -> Insert {
        if seq <= self.contig || seq < self.base {
            return Insert::Duplicate;
        }
        if seq >= self.base + limit {
            return Insert::OutOfWindow;
        }
        let index = (seq - self.base) as usize;
        if index >= self.slots.len() {
            self.slots.resize(index + 1, None);
        }
        if self.slots[index].is_some() {
            return Insert::Duplicate;
        }
        self.slots[index] = Some(msg);
        self.received += 1;
        self.max_seen = self.max_seen.max(seq);
        while let Some(Some(_)) = self.slots.get((self.contig + 1 - self.base) as usize) {
            self.contig += 1;
        }
        Insert::New
    }

    /// The next message to hand on, if it has arrived.
    pub fn next_to_consume(&self) -> Option<&Message> {
        if self.consumed >= self.contig {
            return None;
        }
        self.slots
            .get((self.consumed + 1 - self.base) as usize)
            .and_then(Option::as_ref)
    }

    pub fn mark_consumed(&mut self) {
        self.consumed += 1;
    }

    /// A message still held, for repairing a peer.
    pub fn get(&self, seq: u64) -> Option<&Message> {
        if seq < self.base {
            return None;
        }
        self.slots
            .get((seq - self.base) as usize)
            .and_then(Option::as_ref)
    }

    /// Forget messages every member has consumed.
    pub fn forget_upto(&mut self, stable: u64) {
        let upto = stable.min(self.consumed);
        while self.base <= upto && !self.slots.is_empty() {
            self.slots.pop_front();
            self.base += 1;
        }
        if self.slots.is_empty() && self.base <= upto {
            self.base = upto + 1;
        }
    }

    /// Missing ranges between what arrived and `upto`, at most `max` of them.
    pub fn missing(&self, upto: u64, max: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let end = self.base + self.slots.len() as u64;
        let mut run: Option<u64> = None;
        let mut seq = self.contig + 1;
        while seq <= upto && out.len() < max {
            if seq >= end {
                // Past the slots, everything up to `upto` is missing.
                out.push((run.take().unwrap_or(seq), upto));
                break;
            }
            match (self.get(seq).is_some(), run) {
                (false, None) => run = Some(seq),
                (true, Some(s)) => {
                    out.push((s, seq - 1));
                    run = None;
                }
                _ => {}
            }
            seq += 1;
        }
        if let Some(s) = run
            && out.len() < max
        {
            out.push((s, upto));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qsm::wire::MessageBody;
    use bytes::Bytes;

    fn msg(seq: u64) -> Message {
        Message {
            object: 1,
            body: MessageBody::Event {
                seq,
                timestamp_ms: 0,
                payload: Bytes::new(),
            },
        }
    }

    #[test]
    fn in_stream_tracks_gaps_contiguity_and_duplicates() {
        let mut s = InStream::new();
        assert_eq!(s.insert(2, msg(2), 100), Insert::New);
        assert_eq!(s.insert(4, msg(4), 100), Insert::New);
        assert_eq!(s.contig, 0);
        assert_eq!(s.missing(6, 10), vec![(1, 1), (3, 3), (5, 6)]);
        assert_eq!(s.insert(1, msg(1), 100), Insert::New);
        assert_eq!(s.contig, 2);
        assert_eq!(s.insert(2, msg(2), 100), Insert::Duplicate);
        assert_eq!(s.insert(500, msg(500), 100), Insert::OutOfWindow);
        assert!(s.next_to_consume().is_some());
        s.mark_consumed();
        s.mark_consumed();
        assert!(s.next_to_consume().is_none());
        s.forget_upto(5);
        assert!(s.get(1).is_none() && s.get(2).is_none());
        assert!(s.get(4).is_some());
        assert_eq!(s.insert(3, msg(3), 100), Insert::New);
        assert_eq!(s.contig, 4);
        assert_eq!(s.insert(1, msg(1), 100), Insert::Duplicate);
    }

    #[test]
    fn missing_ranges_are_bounded_in_count() {
        let mut s = InStream::new();
        for seq in (2..40).step_by(2) {
            s.insert(seq, msg(seq), 1000);
        }
        assert_eq!(s.missing(40, 3), vec![(1, 1), (3, 3), (5, 5)]);
        assert_eq!(s.missing(0, 3), Vec::<(u64, u64)>::new());
    }

    #[test]
    fn pacer_backs_off_on_congestion_and_grows_otherwise() {
        let mut p = Pacer::new(1e6, 1e4, 1e9, 0);
        p.report(false, 0, 100);
        assert_eq!(p.rate, 1.25e6);
        p.report(true, 1000, 100);
        assert_eq!(p.rate, 1.25e6 * 0.7);
        // A second loss report within the same round does not cut again.
        p.report(true, 1050, 100);
        assert_eq!(p.rate, 1.25e6 * 0.7);
        p.report(false, 2000, 100);
        assert!((p.rate - 1.25e6 * 0.7 * 1.01).abs() < 1e-6);
        p.refill(1_000_000, 8192);
        assert!(p.ready());
        p.spend(1_000_000);
        assert!(!p.ready());
        assert!(p.next_ready() > 1_000_000);
    }
}
