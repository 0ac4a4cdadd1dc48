//! Zipf-distributed key picking for the hot-keys scenario.
//!
//! Key `k` (0-based) is picked with probability proportional to `1 / (k+1)^s`. With
//! 100 keys an exact inverse-CDF table is tiny and faster than rejection sampling.

use rand::Rng;

/// A Zipf sampler over keys `0..n`.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// Cumulative weights; the last one is the total.
    cdf: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n >= 1` keys with exponent `s >= 0` (0 is uniform).
    pub fn new(n: usize, s: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(n >= 1, "zipf needs at least one key");
        anyhow::ensure!(s.is_finite() && s >= 0.0, "zipf exponent must be >= 0");
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect();
        Ok(Self { cdf })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false: a sampler has at least one key.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The probability of key `k` (0 outside `0..n`).
    pub fn probability(&self, k: usize) -> f64 {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let below = k
            .checked_sub(1)
            .and_then(|i| self.cdf.get(i))
            .copied()
            .unwrap_or(0.0);
        self.cdf.get(k).map_or(0.0, |c| (c - below) / total)
    }

    /// Picks a key in `0..n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let u = rng.gen::<f64>() * total;
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn samples_stay_within_bounds() {
        let z = Zipf::new(100, 1.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..100_000 {
            assert!(z.sample(&mut rng) < 100);
        }
        let one = Zipf::new(1, 1.0).unwrap();
        assert_eq!(one.sample(&mut rng), 0);
    }

    #[test]
    fn frequencies_follow_the_law() {
        let z = Zipf::new(100, 1.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(42);
        let mut counts = [0u32; 100];
        let draws = 200_000;
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        // Key 0 has probability 1/H(100) ~ 0.193; key 1 half of that.
        let f0 = f64::from(counts[0]) / f64::from(draws);
        assert!((f0 - z.probability(0)).abs() < 0.01, "f0 = {f0}");
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((ratio - 2.0).abs() < 0.15, "ratio = {ratio}");
        assert!(counts[99] > 0, "the coldest key is still picked");
    }

    #[test]
    fn exponent_zero_is_uniform_and_bad_input_is_refused() {
        let z = Zipf::new(4, 0.0).unwrap();
        assert!((z.probability(3) - 0.25).abs() < 1e-12);
        assert_eq!(z.probability(4), 0.0);
        assert!(Zipf::new(0, 1.0).is_err());
        assert!(Zipf::new(10, -1.0).is_err());
    }
}
