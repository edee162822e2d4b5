//! Slurm's compressed hostlist form (`node[1-3,5],gpu7`), which tools read
//! from `SLURM_JOB_NODELIST`.

/// Compress names, keeping first-appearance order of prefixes.
pub fn compress(names: &[String]) -> String {
    // Group by (prefix, digit width) preserving order of first appearance.
    let mut groups: Vec<(String, usize, Vec<u64>)> = Vec::new();
    let mut plain: Vec<(usize, String)> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let digits = n.chars().rev().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 18 {
            plain.push((i, n.clone()));
            continue;
        }
        let (prefix, num) = n.split_at(n.len() - digits);
        let width = if num.starts_with('0') && num.len() > 1 { num.len() } else { 0 };
        let v: u64 = num.parse().expect("ascii digits");
        match groups.iter_mut().find(|(p, w, _)| p == prefix && *w == width) {
            Some(g) => g.2.push(v),
            None => groups.push((prefix.to_string(), width, vec![v])),
        }
    }
    let mut out: Vec<String> = Vec::new();
    for (prefix, width, mut nums) in groups {
        nums.sort_unstable();
        nums.dedup();
        if nums.len() == 1 {
            out.push(format!("{prefix}{:0width$}", nums[0]));
            continue;
        }
        let mut ranges: Vec<String> = Vec::new();
        let mut i = 0;
        while i < nums.len() {
            let start = nums[i];
            let mut end = start;
            while i + 1 < nums.len() && nums[i + 1] == end + 1 {
                i += 1;
                end = nums[i];
            }
            ranges.push(if start == end {
                format!("{start:0width$}")
            } else {
                format!("{start:0width$}-{end:0width$}")
            });
            i += 1;
        }
        out.push(format!("{prefix}[{}]", ranges.join(",")));
    }
    out.extend(plain.into_iter().map(|(_, n)| n));
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::compress;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ranges_and_singletons() {
        assert_eq!(compress(&v(&["node1", "node2", "node3", "node5"])), "node[1-3,5]");
        assert_eq!(compress(&v(&["node1"])), "node1");
        assert_eq!(compress(&v(&["a01", "a02", "b7", "login"])), "a[01-02],b7,login");
    }
}
