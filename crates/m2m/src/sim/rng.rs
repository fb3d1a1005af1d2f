//! A small deterministic pseudo-random generator: the same `--seed` gives the same fleet, the same
//! routes and the same pedestrians.

/// SplitMix64: tiny, fast and well spread; simulations need repeatability, not unpredictability.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator of machine `n` of kind `kind` in a run seeded with `seed`; different kinds and
    /// machines draw independent streams.
    pub(crate) fn for_machine(seed: u64, kind: &str, n: u64) -> Rng {
        // FNV-1a over the kind, so that "lamps" and "factory" with the same seed differ.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in kind.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = Rng(seed ^ h ^ n.wrapping_mul(0xa076_1d64_78bd_642f));
        rng.next_u64();
        rng
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Sensor noise: between `-amp` and `amp`, most often near 0 (triangular).
    pub(crate) fn noise(&mut self, amp: f64) -> f64 {
        (self.unit() + self.unit() - 1.0) * amp
    }

    /// The wait before the next event of a Poisson process with mean interval `mean`.
    pub(crate) fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_machines_differ() {
        let draw = |kind, n| {
            let mut r = Rng::for_machine(7, kind, n);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw("lamps", 1), draw("lamps", 1));
        assert_ne!(draw("lamps", 1), draw("lamps", 2));
        assert_ne!(draw("lamps", 1), draw("factory", 1));
    }

    #[test]
    fn units_stay_in_range() {
        let mut r = Rng::for_machine(1, "x", 0);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!((-2.0..=2.0).contains(&r.noise(2.0)));
        }
    }
}
