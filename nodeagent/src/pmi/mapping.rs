//! `PMI_process_mapping`: which ranks share a node (research §2.5).
//!
//! The format comes from MPICH and hydra. It is a vector of blocks
//! `(vector,(first_node,node_count,ranks_per_node),...)`, and each block puts
//! `ranks_per_node` consecutive ranks on each of the nodes
//! `first_node .. first_node + node_count`. The blocks are taken in order. If the vector
//! covers fewer ranks than the job has, it is applied again from the start, and
//! that is how round-robin placement is written: `(vector,(0,2,1))` for 4 ranks
//! means nodes 0,1,0,1. MPICH uses the mapping to decide which ranks it reaches
//! through shared memory, so getting it wrong makes MPICH try shared memory between hosts.
//!
//! The engine builds the mapping from the step's `tasks_per_node` (block
//! placement: the first `tasks_per_node[0]` ranks on node 0, and so on). It merges
//! consecutive nodes with equal counts, so `[2,2]` gives `(vector,(0,2,2))` and
//! `[3,2,2]` gives `(vector,(0,1,3),(1,2,2))`. The parser and [`clique`] are for
//! the Open MPI PMI-1 shim, which answers `PMI_Get_clique_size` and `PMI_Get_clique_ranks`
//! from this string (research §7.1).

use std::fmt;

use super::PmiError;

/// One `(first_node,node_count,ranks_per_node)` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Index of the first node of the block.
    pub first_node: u32,
    /// How many consecutive nodes the block spans.
    pub node_count: u32,
    /// Consecutive ranks placed on each of those nodes.
    pub ranks_per_node: u32,
}

/// A parsed or computed `PMI_process_mapping`. [`fmt::Display`] writes the wire form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessMapping {
    blocks: Vec<Block>,
}

impl ProcessMapping {
    /// Block placement from tasks per node, in node order. Nodes with zero tasks are
    /// skipped but still take up their node index.
    pub fn from_tasks_per_node(tasks_per_node: &[u32]) -> ProcessMapping {
        let mut blocks: Vec<Block> = Vec::new();
        for (node, &n) in (0u32..).zip(tasks_per_node) {
            if n == 0 {
                continue;
            }
            match blocks.last_mut() {
                Some(b) if b.ranks_per_node == n && b.first_node + b.node_count == node => b.node_count += 1,
                _ => blocks.push(Block { first_node: node, node_count: 1, ranks_per_node: n }),
            }
        }
        ProcessMapping { blocks }
    }

    /// Parses the wire form. ASCII whitespace is ignored.
    pub fn parse(s: &str) -> Result<ProcessMapping, PmiError> {
        let bad = |reason| PmiError::BadMapping { mapping: s.to_string(), reason };
        let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let inner = compact
            .strip_prefix("(vector")
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| bad("expected (vector,...)"))?;
        let mut blocks = Vec::new();
        let mut rest = inner;
        while !rest.is_empty() {
            let body = rest.strip_prefix(",(").ok_or_else(|| bad("expected ,( before a block"))?;
            let end = body.find(')').ok_or_else(|| bad("a block has no closing )"))?;
            let mut nums = body[..end].split(',').map(|n| n.parse::<u32>());
            let mut next = || nums.next().and_then(Result::ok).ok_or_else(|| bad("a block needs three integers"));
            let block = Block { first_node: next()?, node_count: next()?, ranks_per_node: next()? };
            if nums.next().is_some() {
                return Err(bad("a block needs three integers"));
            }
            block.first_node.checked_add(block.node_count).ok_or_else(|| bad("node index overflows"))?;
            blocks.push(block);
            rest = &body[end + 1..];
        }
        Ok(ProcessMapping { blocks })
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Ranks one pass over the vector places.
    fn ranks_per_pass(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.node_count) * u64::from(b.ranks_per_node)).sum()
    }

    /// The node of every rank of a job of `size` ranks, repeating the vector as needed.
    pub fn nodes_of_ranks(&self, size: u32) -> Result<Vec<u32>, PmiError> {
        if size > 0 && self.ranks_per_pass() == 0 {
            return Err(PmiError::BadMapping { mapping: self.to_string(), reason: "the mapping places no ranks" });
        }
        let mut nodes = Vec::with_capacity(size as usize);
        'fill: loop {
            for b in &self.blocks {
                for i in 0..b.node_count {
                    for _ in 0..b.ranks_per_node {
                        if nodes.len() == size as usize {
                            break 'fill;
                        }
                        nodes.push(b.first_node + i);
                    }
                }
            }
            if nodes.len() == size as usize {
                break;
            }
        }
        Ok(nodes)
    }

    /// The ranks on the same node as `rank` (including `rank`), in ascending order.
    pub fn clique(&self, size: u32, rank: u32) -> Result<Vec<u32>, PmiError> {
        if rank >= size {
            return Err(PmiError::RankOutOfRange { rank, size });
        }
        let nodes = self.nodes_of_ranks(size)?;
        let mine = nodes[rank as usize];
        Ok((0u32..).zip(&nodes).filter(|(_, &n)| n == mine).map(|(r, _)| r).collect())
    }
}

impl fmt::Display for ProcessMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(vector")?;
        for b in &self.blocks {
            write!(f, ",({},{},{})", b.first_node, b.node_count, b.ranks_per_node)?;
        }
        f.write_str(")")
    }
}

/// The `PMI_process_mapping` value for block placement with these tasks per node.
pub fn process_mapping(tasks_per_node: &[u32]) -> String {
    ProcessMapping::from_tasks_per_node(tasks_per_node).to_string()
}

/// The ranks sharing a node with `rank`, read from a `PMI_process_mapping` value.
pub fn clique(mapping: &str, size: u32, rank: u32) -> Result<Vec<u32>, PmiError> {
    ProcessMapping::parse(mapping)?.clique(size, rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_research_examples() {
        assert_eq!(process_mapping(&[4]), "(vector,(0,1,4))");
        assert_eq!(process_mapping(&[2]), "(vector,(0,1,2))");
        assert_eq!(process_mapping(&[2, 2]), "(vector,(0,2,2))");
        assert_eq!(process_mapping(&[3, 2, 2]), "(vector,(0,1,3),(1,2,2))");
        assert_eq!(process_mapping(&[1, 1, 1, 1]), "(vector,(0,4,1))");
        assert_eq!(process_mapping(&[2, 2, 3, 2, 2]), "(vector,(0,2,2),(2,1,3),(3,2,2))");
    }

    #[test]
    fn zero_task_nodes_keep_their_index() {
        assert_eq!(process_mapping(&[2, 0, 2]), "(vector,(0,1,2),(2,1,2))");
        assert_eq!(process_mapping(&[0, 3]), "(vector,(1,1,3))");
        assert_eq!(process_mapping(&[]), "(vector)");
        assert_eq!(ProcessMapping::parse("(vector)").unwrap(), ProcessMapping::default());
    }

    #[test]
    fn parse_inverts_build_for_many_shapes() {
        // proptest is not a nodeagent dependency: walk a deterministic family of shapes instead.
        let mut seed = 0x2545_f491_u32;
        for len in 0..12 {
            for _ in 0..40 {
                let tpn: Vec<u32> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed % 4
                    })
                    .collect();
                let s = process_mapping(&tpn);
                let parsed = ProcessMapping::parse(&s).unwrap();
                assert_eq!(parsed.to_string(), s);
                // Every rank lands on the node block placement puts it on.
                let size: u32 = tpn.iter().sum();
                let want: Vec<u32> =
                    (0u32..).zip(&tpn).flat_map(|(node, &n)| std::iter::repeat_n(node, n as usize)).collect();
                assert_eq!(parsed.nodes_of_ranks(size).unwrap(), want, "{tpn:?} {s}");
            }
        }
    }

    #[test]
    fn cliques() {
        let m = process_mapping(&[3, 2, 2]);
        assert_eq!(clique(&m, 7, 0).unwrap(), [0, 1, 2]);
        assert_eq!(clique(&m, 7, 2).unwrap(), [0, 1, 2]);
        assert_eq!(clique(&m, 7, 3).unwrap(), [3, 4]);
        assert_eq!(clique(&m, 7, 6).unwrap(), [5, 6]);
        assert_eq!(clique("(vector,(0,1,4))", 4, 1).unwrap(), [0, 1, 2, 3]);
        assert_eq!(clique(&m, 7, 7).unwrap_err(), PmiError::RankOutOfRange { rank: 7, size: 7 });
    }

    #[test]
    fn short_vectors_repeat() {
        // Round-robin over two nodes.
        let m = ProcessMapping::parse("(vector,(0,2,1))").unwrap();
        assert_eq!(m.nodes_of_ranks(5).unwrap(), [0, 1, 0, 1, 0]);
        assert_eq!(m.clique(5, 0).unwrap(), [0, 2, 4]);
        assert_eq!(m.clique(5, 3).unwrap(), [1, 3]);
        // A vector longer than the job is cut off.
        assert_eq!(ProcessMapping::parse("(vector,(0,2,2))").unwrap().nodes_of_ranks(3).unwrap(), [0, 0, 1]);
    }

    #[test]
    fn parse_tolerates_whitespace() {
        let m = ProcessMapping::parse(" (vector, (0,1,3), (1, 2, 2))\n").unwrap();
        assert_eq!(m.to_string(), "(vector,(0,1,3),(1,2,2))");
        assert_eq!(m.blocks()[1], Block { first_node: 1, node_count: 2, ranks_per_node: 2 });
    }

    #[test]
    fn parse_rejects_garbage() {
        for s in [
            "",
            "vector,(0,1,2)",
            "(vector,(0,1,2)",
            "(vector,(0,1))",
            "(vector,(0,1,2,3))",
            "(vector,(0,1,x))",
            "(vector,(0,1,2),)",
            "(vector(0,1,2))",
            "(vector,(-1,1,2))",
            "(vector,(4294967295,2,1))",
        ] {
            let err = ProcessMapping::parse(s).unwrap_err();
            assert!(matches!(err, PmiError::BadMapping { .. }), "{s:?}: {err:?}");
        }
        let err = ProcessMapping::parse("(vector,(0,1,0))").unwrap().nodes_of_ranks(2).unwrap_err();
        assert!(err.to_string().contains("places no ranks"), "{err}");
        assert_eq!(ProcessMapping::parse("(vector)").unwrap().nodes_of_ranks(0).unwrap(), Vec::<u32>::new());
    }
}
