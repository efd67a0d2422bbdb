//! Random peer sampling with Cyclon (Voulgaris, Gavidia, van Steen 2005).
//!
//! Every host keeps a *partial view*: at most `capacity` entries `(host, age)`. Each
//! round it ages every entry, removes the oldest one `Q` and sends `Q` a random
//! subset of its view plus a fresh entry for itself; `Q` answers with a random
//! subset of its own view, and both fill free slots (or the slots of the entries
//! they sent) with what they received. The result is an overlay close to a random
//! graph, so the push-pull exchanges that pick peers from it spread information in
//! O(log N) rounds, while no host ever holds more than `capacity` entries.
//!
//! Dead hosts disappear without a failure detector: shuffles never put a dead host
//! back with age 0 (only a host itself does that), its entries only get older, and
//! the oldest entry is the one removed at each shuffle. SWIM's down notices (when
//! SWIM runs) remove them sooner. (A host SWIM reports up is offered with age 0;
//! if SWIM was wrong, its down notice removes the entry again.)
//!
//! Hand-written because no maintained crate offers a sans-IO Cyclon; it is about a
//! hundred lines.

use super::HostId;
use rand::RngExt;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// One entry of a partial view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The host.
    pub id: HostId,
    /// Rounds since the host itself put this entry into circulation.
    pub age: u16,
}

/// Shuffles waiting for a reply, oldest first; at most this many are remembered.
const MAX_PENDING: usize = 4;

/// A Cyclon partial view.
#[derive(Debug, Clone)]
pub struct Sampler {
    me: HostId,
    capacity: usize,
    shuffle_length: usize,
    view: Vec<Entry>,
    /// For each shuffle sent and not yet answered: the target and what we sent.
    pending: VecDeque<(SocketAddr, Vec<HostId>)>,
}

impl Sampler {
    /// An empty view of at most `capacity` entries, exchanging `shuffle_length`
    /// entries per shuffle.
    pub fn new(me: HostId, capacity: usize, shuffle_length: usize) -> Self {
        Sampler {
            me,
            capacity: capacity.max(1),
            shuffle_length: shuffle_length.clamp(1, capacity.max(1)),
            view: Vec::with_capacity(capacity),
            pending: VecDeque::new(),
        }
    }

    /// Change this host's own identity (after SWIM renewed it).
    pub fn set_me(&mut self, me: HostId) {
        self.me = me;
    }

    /// The entries of the view.
    pub fn entries(&self) -> &[Entry] {
        &self.view
    }

    /// Whether `addr` is in the view.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.view.iter().any(|e| e.id.addr == addr)
    }

    /// A uniformly random host of the view.
    pub fn sample(&self, rng: &mut impl RngExt) -> Option<HostId> {
        self.view.choose(rng).map(|e| e.id)
    }

    /// Add `id` if there is room (used for seeds and for hosts SWIM reports up).
    pub fn offer(&mut self, id: HostId) {
        self.merge(&[Entry { id, age: 0 }], &mut Vec::new());
    }

    /// Put `id` in place of a random entry (or add it if there is room), unless it
    /// is already in the view.
    pub fn replace_random(&mut self, id: HostId, rng: &mut impl RngExt) {
        if id.addr == self.me.addr || self.contains(id.addr) {
            return;
        }
        let entry = Entry { id, age: 0 };
        if self.view.len() < self.capacity {
            self.view.push(entry);
        } else {
            let index = rng.random_range(0..self.view.len());
            self.view[index] = entry;
        }
    }

    /// Drop the entries of `id` and of older boots of its host (SWIM reported it
    /// down); a newer boot of the same host stays.
    pub fn remove_down(&mut self, id: HostId) {
        self.view
            .retain(|e| e.id.addr != id.addr || e.id.boot > id.boot);
    }

    /// Start a shuffle: age the view, take out the oldest entry and return it with
    /// the entries to send it. `None` if the view is empty.
    pub fn start_shuffle(&mut self, rng: &mut impl RngExt) -> Option<(HostId, Vec<Entry>)> {
        for entry in &mut self.view {
            entry.age = entry.age.saturating_add(1);
        }
        let oldest = (0..self.view.len()).max_by_key(|&i| (self.view[i].age, i))?;
        let target = self.view.swap_remove(oldest).id;
        let mut sent: Vec<Entry> = self
            .view
            .sample(rng, self.shuffle_length - 1)
            .copied()
            .collect();
        sent.push(Entry {
            id: self.me,
            age: 0,
        });
        self.remember(target.addr, &sent);
        Some((target, sent))
    }

    /// Answer a shuffle from `from`: pick a random subset to send back, then take
    /// in what `from` sent.
    pub fn answer_shuffle(
        &mut self,
        from: HostId,
        received: &[Entry],
        rng: &mut impl RngExt,
    ) -> Vec<Entry> {
        let reply: Vec<Entry> = self
            .view
            .iter()
            .filter(|e| e.id.addr != from.addr)
            .copied()
            .collect::<Vec<_>>()
            .sample(rng, self.shuffle_length)
            .copied()
            .collect();
        let mut replaceable: Vec<HostId> = reply.iter().map(|e| e.id).collect();
        self.merge(received, &mut replaceable);
        reply
    }

    /// Take in the reply to a shuffle we sent to `from`.
    pub fn take_reply(&mut self, from: SocketAddr, received: &[Entry]) {
        let mut replaceable = match self.pending.iter().position(|(addr, _)| *addr == from) {
            Some(index) => self
                .pending
                .remove(index)
                .map(|(_, s)| s)
                .unwrap_or_default(),
            // An unsolicited reply only fills free slots.
            None => Vec::new(),
        };
        self.merge(received, &mut replaceable);
    }

    fn remember(&mut self, target: SocketAddr, sent: &[Entry]) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending
            .push_back((target, sent.iter().map(|e| e.id).collect()));
    }

    /// Add `received` to the view: refresh entries we have, fill free slots, then
    /// replace entries listed in `replaceable` (those we just gave away).
    fn merge(&mut self, received: &[Entry], replaceable: &mut Vec<HostId>) {
        for incoming in received {
            if incoming.id.addr == self.me.addr {
                continue;
            }
            if let Some(existing) = self.view.iter_mut().find(|e| e.id.addr == incoming.id.addr) {
                // A higher boot number is a restarted host: the older identity is gone.
                if incoming.id.boot > existing.id.boot {
                    *existing = *incoming;
                } else if incoming.id.boot == existing.id.boot {
                    existing.age = existing.age.min(incoming.age);
                }
                continue;
            }
            if self.view.len() < self.capacity {
                self.view.push(*incoming);
                continue;
            }
            while let Some(victim) = replaceable.pop() {
                if let Some(slot) = self.view.iter_mut().find(|e| e.id == victim) {
                    *slot = *incoming;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn host(n: u16) -> HostId {
        HostId {
            addr: SocketAddr::from(([10, 0, 0, 1], n)),
            boot: 1,
        }
    }

    #[test]
    fn view_never_exceeds_capacity_and_never_holds_itself() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut sampler = Sampler::new(host(0), 5, 3);
        for n in 0..50 {
            let received: Vec<Entry> = (n..n + 4)
                .map(|i| Entry {
                    id: host(i),
                    age: 0,
                })
                .collect();
            sampler.answer_shuffle(host(100), &received, &mut rng);
            assert!(sampler.entries().len() <= 5);
            assert!(!sampler.contains(host(0).addr));
        }
    }

    #[test]
    fn shuffle_takes_out_the_oldest_entry_and_sends_itself_fresh() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut sampler = Sampler::new(host(0), 4, 2);
        sampler.offer(host(1));
        sampler.offer(host(3));
        // Both age to 1; the tie goes to the later entry, host(3).
        let (first, _) = sampler.start_shuffle(&mut rng).unwrap();
        assert_eq!(first, host(3));
        sampler.offer(host(2));
        // host(1) is now older than host(2).
        let (target, sent) = sampler.start_shuffle(&mut rng).unwrap();
        assert_eq!(target, host(1));
        assert!(sent.contains(&Entry {
            id: host(0),
            age: 0
        }));
        assert!(!sampler.contains(host(1).addr));
    }

    #[test]
    fn a_restarted_host_replaces_its_old_identity() {
        let mut sampler = Sampler::new(host(0), 4, 2);
        sampler.offer(host(1));
        let restarted = HostId { boot: 2, ..host(1) };
        sampler.offer(restarted);
        assert_eq!(sampler.entries().len(), 1);
        assert_eq!(sampler.entries()[0].id, restarted);
    }
}
