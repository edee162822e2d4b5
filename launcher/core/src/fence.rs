//! The PMI fence allgather: per-node put deltas merged in node-rank order.
//!
//! A job step's fence completes when the deltas of all its nodes are in; every
//! node then gets the concatenation of all deltas, in node-rank order, so every
//! replica applies the same puts in the same order (the last put of a key wins
//! everywhere). A contribution covers a contiguous range of node ranks: today each
//! agent sends its own delta (a range of one) straight to the controller. A tree over agents fits
//! the same contract: a subtree root that concatenates its own and its
//! children's deltas in node-rank order (subtrees are contiguous ranges) sends
//! one contribution for the whole range. The merged result is byte-for-byte the
//! same, and the answer goes back only to the contributors, which pass it down
//! their subtrees.

use std::collections::BTreeMap;

/// PMI key-value puts, in put order.
pub type Puts = Vec<(String, String)>;

/// One fence being gathered over node ranks `0..nodes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceGather {
    nodes: u32,
    /// First node rank of a contribution → (number of node ranks it covers, its puts).
    parts: BTreeMap<u32, (u32, Puts)>,
    covered: u32,
}

impl FenceGather {
    /// A fence over `nodes` node ranks, nothing received yet.
    pub fn new(nodes: u32) -> Self {
        FenceGather { nodes, parts: BTreeMap::new(), covered: 0 }
    }

    /// Add the delta of node ranks `first..first + count`. Returns false, and
    /// changes nothing, for an empty or out-of-range range or one that overlaps
    /// a contribution already received (such as a resend after a reconnect).
    pub fn add(&mut self, first: u32, count: u32, puts: Puts) -> bool {
        let Some(end) = first.checked_add(count) else { return false };
        if count == 0 || end > self.nodes {
            return false;
        }
        let before = self.parts.range(..=first).next_back();
        if before.is_some_and(|(&f, &(c, _))| f + c > first) {
            return false;
        }
        if self.parts.range(first..end).next().is_some() {
            return false;
        }
        self.parts.insert(first, (count, puts));
        self.covered += count;
        true
    }

    /// Whether every node rank is covered.
    pub fn complete(&self) -> bool {
        self.covered == self.nodes
    }

    /// The first node rank of each contribution received: who gets the answer.
    pub fn contributors(&self) -> impl Iterator<Item = u32> + '_ {
        self.parts.keys().copied()
    }

    /// The merged delta: every contribution's puts, in node-rank order.
    pub fn merged(self) -> Puts {
        self.parts.into_values().flat_map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(node: u32) -> Puts {
        vec![(format!("k{node}"), format!("v{node}")), ("shared".into(), format!("{node}"))]
    }

    #[test]
    fn single_hop_merges_in_node_rank_order() {
        let mut g = FenceGather::new(3);
        for n in [2, 0, 1] {
            assert!(!g.complete());
            assert!(g.add(n, 1, delta(n)));
        }
        assert!(g.complete());
        assert!(!g.add(1, 1, delta(9)), "a resend is ignored");
        assert_eq!(g.contributors().collect::<Vec<_>>(), [0, 1, 2]);
        let m = g.merged();
        assert_eq!(m, [delta(0), delta(1), delta(2)].concat());
        assert_eq!(m.last().unwrap(), &("shared".to_string(), "2".to_string()), "the last node's put wins");
    }

    #[test]
    fn a_tree_of_contiguous_subtrees_gives_the_same_bytes() {
        // 10 nodes; subtree roots 0, 4 and 7 each merge their range in node-rank order.
        let flat: Puts = (0..10).flat_map(delta).collect();
        let mut g = FenceGather::new(10);
        for (first, count) in [(7, 3), (0, 4), (4, 3)] {
            let sub: Puts = (first..first + count).flat_map(delta).collect();
            assert!(g.add(first, count, sub));
        }
        assert!(g.complete());
        assert_eq!(g.contributors().collect::<Vec<_>>(), [0, 4, 7]);
        assert_eq!(g.merged(), flat);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut g = FenceGather::new(4);
        assert!(!g.add(0, 0, vec![]));
        assert!(!g.add(3, 2, vec![]));
        assert!(!g.add(u32::MAX, 2, vec![]));
        assert!(g.add(1, 2, vec![]));
        assert!(!g.add(0, 2, vec![]), "overlaps 1..3 from below");
        assert!(!g.add(2, 1, vec![]), "inside 1..3");
        assert!(!g.add(0, 4, vec![]), "covers 1..3");
        assert!(g.add(0, 1, vec![]) && g.add(3, 1, vec![]));
        assert!(g.complete());
    }
}
