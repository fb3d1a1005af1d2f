//! A latency histogram with fixed buckets, as atomics: recording is a few relaxed additions, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds of the buckets of a [`Latency`] histogram, in milliseconds; a last bucket, without
/// a bound (`+Inf`), takes the rest.
pub const LATENCY_BUCKETS_MS: [f64; 13] =
    [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// The bounds of [`LATENCY_BUCKETS_MS`] in nanoseconds, to compare durations without floats.
const BOUNDS_NS: [u64; 13] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Durations counted by bucket, with their sum and count. Each counter is read on its own, so a
/// snapshot taken while others record may be off by the observations in progress.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// Observations per bucket (not cumulative): `buckets[i]` counts those at most
    /// `BOUNDS_NS[i]` and above the bound before; the last one those above every bound.
    buckets: [AtomicU64; 14],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub(crate) fn record(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> Latency {
        let mut cumulative = [0; 13];
        let mut total = 0;
        for (i, bucket) in self.buckets[..13].iter().enumerate() {
            total += bucket.load(Ordering::Relaxed);
            cumulative[i] = total;
        }
        Latency {
            cumulative,
            sum_ms: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of a latency histogram, shaped for Prometheus: cumulative counts per bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Observations at most [`LATENCY_BUCKETS_MS`]`[i]` milliseconds, at index `i` (cumulative).
    pub cumulative: [u64; 13],
    /// The sum of every observation, in milliseconds.
    pub sum_ms: f64,
    /// Observations in all (the `+Inf` bucket).
    pub count: u64,
}

impl Latency {
    /// The buckets as (upper bound in milliseconds, cumulative count) pairs, `+Inf` not included.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        LATENCY_BUCKETS_MS.iter().copied().zip(self.cumulative.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_in_nanoseconds_match_the_bounds_in_milliseconds() {
        for (ms, ns) in LATENCY_BUCKETS_MS.iter().zip(BOUNDS_NS) {
            assert_eq!((ms * 1e6).round() as u64, ns);
        }
    }

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(50)); // 0.05 ms: le 0.1
        h.record(Duration::from_micros(100)); // exactly 0.1 ms: le 0.1
        h.record(Duration::from_micros(101)); // le 0.25
        h.record(Duration::from_millis(3)); // le 5
        h.record(Duration::from_secs(2)); // +Inf only
        let l = h.snapshot();
        assert_eq!(l.count, 5);
        let cumulative: Vec<(f64, u64)> = l.buckets().collect();
        assert_eq!(cumulative[0], (0.1, 2));
        assert_eq!(cumulative[1], (0.25, 3));
        assert_eq!(cumulative[4], (2.5, 3));
        assert_eq!(cumulative[5], (5.0, 4));
        assert_eq!(cumulative[12], (1000.0, 4));
        assert!((l.sum_ms - 2003.251).abs() < 1e-6, "{}", l.sum_ms);
    }

    #[test]
    fn cumulative_counts_never_decrease() {
        let h = LatencyHistogram::default();
        for us in [1, 300, 300, 7_000, 90_000, 400_000, 999_000] {
            h.record(Duration::from_micros(us));
        }
        let l = h.snapshot();
        assert!(l.cumulative.windows(2).all(|w| w[0] <= w[1]), "{:?}", l.cumulative);
        assert_eq!(l.cumulative[12], l.count);
    }
}
