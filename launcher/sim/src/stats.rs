//! Summaries of samples (wall-clock costs in ns, simulated waits in µs).

/// Mean and percentiles of a set of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Sum of the samples.
    pub total: u128,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Summary {
    /// Summarise `samples` (sorted in place). Percentiles are nearest-rank.
    pub fn of(samples: &mut [u64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let total: u128 = samples.iter().map(|&x| u128::from(x)).sum();
        let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Summary {
            count: n,
            total,
            mean: total as f64 / n as f64,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: samples[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.count, s.p50, s.p95, s.p99, s.max), (100, 50, 95, 99, 100));
        assert_eq!(s.mean, 50.5);
        assert_eq!(Summary::of(&mut []), Summary::default());
    }
}
