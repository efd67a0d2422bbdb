//! How a region view's members are cut into repair rings, and rings into a tree.
//!
//! Level 0 cuts the members (in the membership service's order) into rings of at
//! most `ring_size`, as equal as possible. Each ring's first host is its leader;
//! the leaders of level `L` form the rings of level `L + 1`, until one ring is
//! left. The leader of that top ring is the region's leader (always the first
//! member). With rings of 25 hosts, two levels cover 625 hosts and three 15,625.
//!
//! The overlay tree (for regions without IP multicast) is a `FANOUT`-ary tree over
//! the members other than the sender, in the same order.

use super::wire::HostNum;

/// Children per node of the overlay tree.
pub const FANOUT: usize = 4;

/// One ring this host belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Level in the tree of rings.
    pub level: u8,
    /// Index of the ring at its level.
    pub ring: u32,
    /// The ring's hosts; `nodes[0]` leads it.
    pub nodes: Vec<HostNum>,
    /// This host's place in `nodes`.
    pub pos: usize,
}

impl Role {
    /// Whether this host leads the ring.
    pub fn leads(&self) -> bool {
        self.pos == 0
    }

    /// Who the token goes to next.
    pub fn successor(&self) -> HostNum {
        self.nodes[(self.pos + 1) % self.nodes.len()]
    }
}

/// Cut `nodes` into `ceil(n / size)` rings of near-equal size.
fn cut(nodes: &[HostNum], size: usize) -> Vec<Vec<HostNum>> {
    let size = size.max(2);
    let rings = nodes.len().div_ceil(size).max(1);
    let base = nodes.len() / rings;
    let extra = nodes.len() % rings;
    let mut out = Vec::with_capacity(rings);
    let mut at = 0;
    for i in 0..rings {
        let len = base + usize::from(i < extra);
        out.push(nodes[at..at + len].to_vec());
        at += len;
    }
    out
}

/// The tree of rings: `levels[L][r]` is ring `r` of level `L`.
pub fn layout(members: &[HostNum], ring_size: usize) -> Vec<Vec<Vec<HostNum>>> {
    let mut levels = vec![cut(members, ring_size)];
    while levels.last().expect("one level").len() > 1 {
        let leaders: Vec<HostNum> = levels
            .last()
            .expect("one level")
            .iter()
            .map(|r| r[0])
            .collect();
        levels.push(cut(&leaders, ring_size));
    }
    levels
}

/// The rings `me` belongs to, lowest level first.
pub fn roles(levels: &[Vec<Vec<HostNum>>], me: HostNum) -> Vec<Role> {
    let mut out = Vec::new();
    for (level, rings) in levels.iter().enumerate() {
        for (index, nodes) in rings.iter().enumerate() {
            if let Some(pos) = nodes.iter().position(|n| *n == me) {
                out.push(Role {
                    level: level as u8,
                    ring: index as u32,
                    nodes: nodes.clone(),
                    pos,
                });
            }
        }
    }
    out
}

/// Where `me` forwards an overlay datagram of `sender`'s: its children in the tree
/// over `members` without the sender. The sender itself sends to the root.
pub fn overlay_children(members: &[HostNum], sender: HostNum, me: HostNum) -> Vec<HostNum> {
    let nodes: Vec<HostNum> = members.iter().copied().filter(|m| *m != sender).collect();
    if me == sender {
        return nodes.first().copied().into_iter().collect();
    }
    let Some(i) = nodes.iter().position(|n| *n == me) else {
        return Vec::new();
    };
    (FANOUT * i + 1..=FANOUT * i + FANOUT)
        .filter_map(|c| nodes.get(c).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_regions_have_one_ring() {
        let levels = layout(&[5, 6, 7], 25);
        assert_eq!(levels, vec![vec![vec![5, 6, 7]]]);
        let r = roles(&levels, 7);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].successor(), 5);
        assert!(roles(&levels, 5)[0].leads());
    }

    #[test]
    fn large_regions_form_a_tree_of_rings_of_bounded_size() {
        let members: Vec<HostNum> = (1..=700).collect();
        let levels = layout(&members, 25);
        assert_eq!(levels.len(), 3);
        for level in &levels {
            for ring in level {
                assert!(ring.len() <= 25 && !ring.is_empty());
            }
        }
        let total: usize = levels[0].iter().map(Vec::len).sum();
        assert_eq!(total, 700);
        // The first member leads at every level; others only at level 0 at most.
        assert_eq!(roles(&levels, 1).len(), 3);
        assert_eq!(roles(&levels, 2).len(), 1);
        assert_eq!(levels[2][0][0], 1);
    }

    #[test]
    fn the_overlay_tree_reaches_every_member_once() {
        let members: Vec<HostNum> = (1..=50).collect();
        let sender = 17;
        let mut reached = vec![0u32; 51];
        let mut frontier = overlay_children(&members, sender, sender);
        while let Some(n) = frontier.pop() {
            reached[n as usize] += 1;
            frontier.extend(overlay_children(&members, sender, n));
        }
        for m in members {
            assert_eq!(reached[m as usize], u32::from(m != sender), "member {m}");
        }
    }
}
