//! Per-peer heartbeats for all the groups of one host ([`Liveness::PerPeer`]).
//!
//! A host in many groups with the same peers would otherwise send one heartbeat per
//! group per member every period and wake every group's timer to do it (2,000
//! groups of 3 members: 40,000 heartbeats a second for nothing). Here the host
//! sends one [`Heartbeat`] per period to each peer it shares a group with. It is
//! the peer's liveness for every shared group at once, and it carries the
//! [`Progress`] of the groups that changed since the last period, plus a rolling
//! share of the others (all of them every [`REFRESH_PERIODS`] periods), which
//! repairs a lost heartbeat. The receiver hands a group only progress that differs
//! from what that peer said before, so an idle group wakes for nothing; a peer
//! silent for the suspect timeout is reported once per period, with its groups,
//! until they stop sharing it.
//!
//! Like [`MeshCore`](super::MeshCore) this is sans-IO: the shell feeds it
//! memberships, progress, heartbeats and time, and sends what it asks.

use super::{Config, MemberId, Millis, Progress};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

/// Every group's progress goes to its peers at least once per this many periods.
pub const REFRESH_PERIODS: usize = 10;

/// What a host sends a peer once per period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat<G> {
    /// The progress of groups both hosts are in (this host's member in each).
    pub progress: Vec<(G, Progress)>,
}

/// What [`PeerHeartbeats`] asks of its shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutput<Id, G> {
    /// Send this heartbeat to `to`.
    Transmit {
        /// The peer.
        to: Id,
        /// The heartbeat.
        heartbeat: Heartbeat<G>,
    },
    /// Nothing has been heard from `peer` for the suspect timeout: each of these
    /// groups should suspect it ([`MeshCore::handle_suspect`](super::MeshCore::handle_suspect)).
    Suspect {
        /// The silent peer.
        peer: Id,
        /// The groups this host shares with it.
        groups: Vec<G>,
    },
}

struct PeerState<G> {
    last_heard: Millis,
    /// Groups whose view holds both hosts.
    groups: BTreeSet<G>,
    /// The progress this peer last reported per group, as handed on.
    reported: HashMap<G, Progress>,
}

struct GroupState<Id> {
    /// Its members other than this host.
    peers: Vec<Id>,
    /// This host's progress in it (none while joining).
    progress: Option<Progress>,
}

/// One host's heartbeats and failure detection for all its mesh groups.
pub struct PeerHeartbeats<Id: MemberId, G: Ord + Clone + std::hash::Hash> {
    me: Id,
    period: Millis,
    suspect_after: Millis,
    peers: HashMap<Id, PeerState<G>>,
    groups: BTreeMap<G, GroupState<Id>>,
    /// Groups whose progress changed since the last period.
    changed: BTreeSet<G>,
    /// The last group refreshed (the next period goes on after it).
    refreshed_upto: Option<G>,
    next_period: Millis,
    outputs: VecDeque<PeerOutput<Id, G>>,
}

impl<Id: MemberId, G: Ord + Clone + std::hash::Hash> PeerHeartbeats<Id, G> {
    /// Heartbeats of host `me`, with the period and suspect timeout of `config`.
    pub fn new(me: Id, config: &Config, now: Millis) -> Self {
        PeerHeartbeats {
            me,
            period: config.heartbeat,
            suspect_after: config.suspect_after,
            peers: HashMap::new(),
            groups: BTreeMap::new(),
            changed: BTreeSet::new(),
            refreshed_upto: None,
            next_period: now,
            outputs: VecDeque::new(),
        }
    }

    /// `group`'s view is now `members` (this host among them or not; an empty list
    /// once the group is gone here). New peers count as heard now; what peers
    /// reported for the group is forgotten, so the next refresh reaches the group
    /// again (a report made before they were in its view did not count there).
    pub fn set_members(&mut self, now: Millis, group: &G, members: &[Id]) {
        let peers: Vec<Id> = members.iter().filter(|m| **m != self.me).cloned().collect();
        let old = match self.groups.get_mut(group) {
            Some(state) => std::mem::replace(&mut state.peers, peers.clone()),
            None => {
                self.groups.insert(
                    group.clone(),
                    GroupState {
                        peers: peers.clone(),
                        progress: None,
                    },
                );
                Vec::new()
            }
        };
        for gone in old.iter().filter(|p| !peers.contains(p)) {
            if let Some(state) = self.peers.get_mut(gone) {
                state.groups.remove(group);
                state.reported.remove(group);
                if state.groups.is_empty() {
                    self.peers.remove(gone);
                }
            }
        }
        for peer in &peers {
            let state = self.peers.entry(peer.clone()).or_insert_with(|| PeerState {
                last_heard: now,
                groups: BTreeSet::new(),
                reported: HashMap::new(),
            });
            state.groups.insert(group.clone());
            state.reported.remove(group);
        }
        if !peers.is_empty() && self.groups[group].progress.is_some() {
            self.changed.insert(group.clone());
        }
    }

    /// This host's progress in `group` (none while it joins).
    pub fn set_progress(&mut self, group: &G, progress: Option<Progress>) {
        let Some(state) = self.groups.get_mut(group) else {
            self.groups.insert(
                group.clone(),
                GroupState {
                    peers: Vec::new(),
                    progress,
                },
            );
            return;
        };
        if state.progress != progress {
            state.progress = progress;
            if !state.peers.is_empty() && progress.is_some() {
                self.changed.insert(group.clone());
            }
        }
    }

    /// `group` is gone from this host.
    pub fn remove_group(&mut self, now: Millis, group: &G) {
        self.set_members(now, group, &[]);
        self.groups.remove(group);
        self.changed.remove(group);
        if self.refreshed_upto.as_ref() == Some(group) {
            self.refreshed_upto = None;
        }
    }

    /// Something arrived from `peer`: it is alive.
    pub fn heard(&mut self, now: Millis, peer: &Id) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.last_heard = state.last_heard.max(now);
        }
    }

    /// A heartbeat from `from`: it is alive. Returns the progress to hand to each
    /// group, leaving out what `from` already reported for it.
    pub fn receive(
        &mut self,
        now: Millis,
        from: &Id,
        heartbeat: Heartbeat<G>,
    ) -> Vec<(G, Progress)> {
        self.heard(now, from);
        let Some(state) = self.peers.get_mut(from) else {
            // No group here has it in its view (yet): hand everything on, so a
            // joining group or an absent one can answer.
            return heartbeat.progress;
        };
        heartbeat
            .progress
            .into_iter()
            .filter(|(group, progress)| {
                state.reported.get(group) != Some(progress) && {
                    if state.groups.contains(group) {
                        state.reported.insert(group.clone(), *progress);
                    }
                    true
                }
            })
            .collect()
    }

    /// The shell could not hand `group` the progress `from` reported (its queue was
    /// full): hand it on again when it comes next.
    pub fn forget(&mut self, from: &Id, group: &G) {
        if let Some(state) = self.peers.get_mut(from) {
            state.reported.remove(group);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called: never
    /// while this host shares no group with anyone.
    pub fn poll_timeout(&self) -> Option<Millis> {
        (!self.peers.is_empty()).then_some(self.next_period)
    }

    /// Time passed: once per period, a heartbeat to every peer and a report of the
    /// silent ones.
    pub fn handle_timeout(&mut self, now: Millis) {
        if now < self.next_period {
            return;
        }
        self.next_period = now + self.period;
        let mut due = std::mem::take(&mut self.changed);
        due.extend(self.refresh_share());
        let mut heartbeats: HashMap<Id, Vec<(G, Progress)>> = HashMap::new();
        for group in &due {
            let Some(state) = self.groups.get(group) else {
                continue;
            };
            let Some(progress) = state.progress else {
                continue;
            };
            for peer in &state.peers {
                heartbeats
                    .entry(peer.clone())
                    .or_default()
                    .push((group.clone(), progress));
            }
        }
        let mut peers: Vec<&Id> = self.peers.keys().collect();
        peers.sort();
        for peer in peers {
            let state = &self.peers[peer];
            self.outputs.push_back(PeerOutput::Transmit {
                to: peer.clone(),
                heartbeat: Heartbeat {
                    progress: heartbeats.remove(peer).unwrap_or_default(),
                },
            });
            if now.saturating_sub(state.last_heard) > self.suspect_after {
                self.outputs.push_back(PeerOutput::Suspect {
                    peer: peer.clone(),
                    groups: state.groups.iter().cloned().collect(),
                });
            }
        }
    }

    /// The next share of groups to refresh: a tenth of them, in order, wrapping.
    fn refresh_share(&mut self) -> Vec<G> {
        let share = self.groups.len().div_ceil(REFRESH_PERIODS);
        let after = match &self.refreshed_upto {
            Some(last) => self
                .groups
                .range((Bound::Excluded(last.clone()), Bound::Unbounded)),
            None => self.groups.range(..),
        };
        let taken: Vec<G> = after.take(share).map(|(g, _)| g.clone()).collect();
        self.refreshed_upto = if taken.len() < share {
            None
        } else {
            taken.last().cloned()
        };
        taken
    }

    /// Next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<PeerOutput<Id, G>> {
        self.outputs.pop_front()
    }

    /// Peers this host shares a group with.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{Config, Liveness, MeshCore, Output};

    fn config() -> Config {
        Config {
            liveness: Liveness::PerPeer,
            ..Config::default()
        }
    }

    /// Three hosts, each in the same `groups` groups, with per-peer heartbeats:
    /// a tiny shell that routes group messages and heartbeats instantly.
    struct Hosts {
        now: Millis,
        heartbeats: Vec<PeerHeartbeats<u32, u32>>,
        /// [host][group]
        cores: Vec<Vec<MeshCore<u32>>>,
        alive: Vec<bool>,
        group_messages: usize,
        heartbeat_messages: usize,
        wakeups: usize,
    }

    impl Hosts {
        fn new(hosts: u32, groups: u32) -> Self {
            let mut cores: Vec<Vec<MeshCore<u32>>> = Vec::new();
            for host in 0..hosts {
                let row = (0..groups)
                    .map(|_| {
                        if host == 0 {
                            MeshCore::found(0, config(), 0)
                        } else {
                            MeshCore::join(host, 0, config(), 0)
                        }
                    })
                    .collect();
                cores.push(row);
            }
            let mut this = Hosts {
                now: 0,
                heartbeats: (0..hosts)
                    .map(|h| PeerHeartbeats::new(h, &config(), 0))
                    .collect(),
                cores,
                alive: vec![true; hosts as usize],
                group_messages: 0,
                heartbeat_messages: 0,
                wakeups: 0,
            };
            this.settle();
            this
        }

        /// Deliver every message and output until nothing moves.
        fn settle(&mut self) {
            loop {
                let mut moved = false;
                for host in 0..self.cores.len() {
                    if !self.alive[host] {
                        continue;
                    }
                    for group in 0..self.cores[host].len() {
                        while let Some(output) = self.cores[host][group].poll_output() {
                            moved = true;
                            match output {
                                Output::TakeSnapshot(cut) => {
                                    self.cores[host][group].snapshot_taken(cut, Vec::new())
                                }
                                Output::View(view) => {
                                    let g = group as u32;
                                    self.heartbeats[host].set_members(self.now, &g, &view.members)
                                }
                                _ => {}
                            }
                        }
                        let progress = self.cores[host][group].progress();
                        self.heartbeats[host].set_progress(&(group as u32), progress);
                        while let Some((to, message)) = self.cores[host][group].poll_transmit() {
                            moved = true;
                            self.group_messages += 1;
                            self.heartbeats[to as usize].heard(self.now, &(host as u32));
                            if self.alive[to as usize] {
                                self.cores[to as usize][group].handle_message(
                                    self.now,
                                    host as u32,
                                    message,
                                );
                            }
                        }
                    }
                    while let Some(output) = self.heartbeats[host].poll_output() {
                        moved = true;
                        match output {
                            PeerOutput::Transmit { to, heartbeat } => {
                                self.heartbeat_messages += 1;
                                if !self.alive[to as usize] {
                                    continue;
                                }
                                let from = host as u32;
                                let handed = self.heartbeats[to as usize]
                                    .receive(self.now, &from, heartbeat);
                                for (group, progress) in handed {
                                    self.cores[to as usize][group as usize]
                                        .handle_progress(self.now, from, progress);
                                }
                            }
                            PeerOutput::Suspect { peer, groups } => {
                                for group in groups {
                                    self.cores[host][group as usize].handle_suspect(self.now, peer);
                                }
                            }
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        /// Advance time by `ms`, one millisecond at a time, firing due timers.
        fn run(&mut self, ms: Millis) {
            for _ in 0..ms {
                self.now += 1;
                for host in 0..self.cores.len() {
                    if !self.alive[host] {
                        continue;
                    }
                    if self.heartbeats[host]
                        .poll_timeout()
                        .is_some_and(|t| t <= self.now)
                    {
                        self.heartbeats[host].handle_timeout(self.now);
                    }
                    for core in &mut self.cores[host] {
                        if core.poll_timeout().is_some_and(|t| t <= self.now) {
                            self.wakeups += 1;
                            core.handle_timeout(self.now);
                        }
                    }
                }
                self.settle();
            }
        }

        fn members(&self, host: usize, group: usize) -> Vec<u32> {
            self.cores[host][group].view().members.clone()
        }
    }

    #[test]
    fn idle_groups_cost_one_heartbeat_per_peer_and_no_group_timers() {
        let mut hosts = Hosts::new(3, 50);
        hosts.run(3_000);
        for group in 0..50 {
            assert_eq!(hosts.members(2, group), vec![0, 1, 2]);
        }
        hosts.cores[1][7].multicast(hosts.now, 0, b"x".to_vec());
        hosts.run(500);
        assert_eq!(hosts.cores[2][7].delivered(), hosts.cores[0][7].delivered());
        let (messages, heartbeats, wakeups) = (
            hosts.group_messages,
            hosts.heartbeat_messages,
            hosts.wakeups,
        );
        hosts.run(10_000);
        assert_eq!(hosts.group_messages, messages, "idle groups sent messages");
        assert_eq!(hosts.wakeups, wakeups, "idle groups woke their timers");
        // 3 hosts x 2 peers x 10 periods a second x 10 s, whatever the group count.
        assert_eq!(hosts.heartbeat_messages - heartbeats, 600);
        for host in 0..3 {
            assert!(
                hosts.cores[host][7].retained() <= 1,
                "host {host} keeps {} items of a stable group",
                hosts.cores[host][7].retained()
            );
        }
    }

    #[test]
    fn a_silent_host_is_excluded_from_every_group_it_was_in() {
        let mut hosts = Hosts::new(3, 20);
        hosts.run(2_000);
        hosts.alive[2] = false;
        hosts.run(2_500);
        for group in 0..20 {
            assert_eq!(
                hosts.members(0, group),
                vec![0, 1],
                "group {group} at host 0"
            );
            assert_eq!(
                hosts.members(1, group),
                vec![0, 1],
                "group {group} at host 1"
            );
        }
        assert_eq!(hosts.heartbeats[0].peer_count(), 1);
    }

    #[test]
    fn the_sequencer_host_falling_silent_moves_every_group_to_a_new_sequencer() {
        let mut hosts = Hosts::new(3, 10);
        hosts.run(2_000);
        hosts.alive[0] = false;
        hosts.run(3_000);
        for group in 0..10 {
            assert_eq!(hosts.members(1, group), vec![1, 2], "group {group}");
            assert!(hosts.cores[1][group].is_sequencer(), "group {group}");
            hosts.cores[2][group].multicast(hosts.now, 0, b"after".to_vec());
        }
        hosts.run(500);
        for group in 0..10 {
            assert_eq!(
                hosts.cores[1][group].delivered(),
                hosts.cores[2][group].delivered()
            );
        }
    }

    #[test]
    fn a_member_that_leaves_is_excluded_at_once_while_its_host_stays() {
        let mut hosts = Hosts::new(3, 2);
        hosts.run(2_000);
        hosts.cores[2][1].leave();
        hosts.settle();
        hosts.run(50);
        assert_eq!(
            hosts.members(0, 1),
            vec![0, 1],
            "the leaver is out of group 1"
        );
        assert_eq!(hosts.members(0, 0), vec![0, 1, 2], "group 0 keeps host 2");
        assert_eq!(hosts.members(1, 1), vec![0, 1]);
        hosts.heartbeats[2].remove_group(hosts.now, &1);
        let before = hosts.group_messages;
        hosts.run(3_000);
        assert_eq!(hosts.members(0, 0), vec![0, 1, 2], "host 2 is still alive");
        assert_eq!(hosts.group_messages, before, "a Left is never answered");
    }

    #[test]
    fn a_peer_reports_only_progress_that_changed() {
        let mut heartbeats = PeerHeartbeats::<u32, u32>::new(0, &config(), 0);
        heartbeats.set_members(0, &5, &[0, 1]);
        let progress = Progress {
            view: 2,
            delivered: 9,
            ordered: 9,
            stable: 0,
        };
        let beat = Heartbeat {
            progress: vec![(5, progress)],
        };
        assert_eq!(heartbeats.receive(1, &1, beat.clone()).len(), 1);
        assert!(heartbeats.receive(2, &1, beat.clone()).is_empty());
        heartbeats.forget(&1, &5);
        assert_eq!(heartbeats.receive(3, &1, beat.clone()).len(), 1);
        // A new view forgets what was reported: it may not have counted.
        heartbeats.set_members(4, &5, &[0, 1, 2]);
        assert_eq!(heartbeats.receive(5, &1, beat).len(), 1);
    }
}
