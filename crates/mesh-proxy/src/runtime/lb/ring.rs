//! Ketama-style hash ring (Envoy's RING_HASH): each endpoint owns a number
//! of points proportional to its weight; a request goes to the first point
//! at or after its hash, wrapping around.

use super::hash::xxhash64;

/// Envoy's default `minimum_ring_size`.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's default `maximum_ring_size` is 8M; rings are capped lower here
/// to bound memory (16 bytes a point).
pub const MAX_RING_SIZE: u64 = 1 << 20;

/// A built ring.
#[derive(Debug)]
pub struct Ring {
    /// `(point, endpoint index)`, sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds a ring over endpoints named by `keys` with `weights`.
    pub fn build(keys: &[String], weights: &[u32], min_size: u64, max_size: u64) -> Self {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 || keys.is_empty() {
            return Self { points: Vec::new() };
        }
        let max_size = max_size.clamp(1, MAX_RING_SIZE);
        let min_size = min_size.clamp(1, max_size);
        // As Envoy: scale so the lightest endpoint still gets a point.
        let min_weight = weights
            .iter()
            .copied()
            .filter(|w| *w > 0)
            .min()
            .unwrap_or(1) as f64
            / total as f64;
        let scale = ((min_size as f64 * min_weight).ceil() / min_weight).min(max_size as f64);
        let mut points = Vec::with_capacity(scale as usize + keys.len());
        let mut target = 0.0;
        let mut made = 0u64;
        for (i, (key, w)) in keys.iter().zip(weights).enumerate() {
            target += scale * (f64::from(*w) / total as f64);
            let mut n = 0u64;
            while (made as f64) < target {
                let point = xxhash64(format!("{key}_{n}").as_bytes(), 0);
                points.push((point, u32::try_from(i).unwrap_or(u32::MAX)));
                n += 1;
                made += 1;
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint index for `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|(p, _)| *p < hash);
        let (_, index) = self.points[if i == self.points.len() { 0 } else { i }];
        Some(index as usize)
    }

    /// How many points the ring has.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn points_follow_weights() {
        let ring = Ring::build(&keys(2), &[1, 3], 1024, MAX_RING_SIZE);
        assert!(ring.len() >= 1024);
        let mut counts = [0u32; 2];
        for h in 0..20_000u64 {
            counts[ring.pick(xxhash64(&h.to_le_bytes(), 0)).unwrap()] += 1;
        }
        let share = f64::from(counts[1]) / 20_000.0;
        assert!((0.65..0.85).contains(&share), "{counts:?}");
    }

    #[test]
    fn same_hash_same_endpoint_and_little_movement_on_removal() {
        let full = Ring::build(&keys(5), &[1; 5], 1024, MAX_RING_SIZE);
        let fewer = Ring::build(&keys(4), &[1; 4], 1024, MAX_RING_SIZE);
        let mut moved = 0;
        for h in 0..5_000u64 {
            let hash = xxhash64(&h.to_le_bytes(), 0);
            let a = full.pick(hash).unwrap();
            assert_eq!(full.pick(hash), Some(a));
            if a < 4 && fewer.pick(hash) != Some(a) {
                moved += 1;
            }
        }
        // Keys of the removed endpoint move; of the rest, only those taken
        // by the points the remaining endpoints gain (the ring keeps its
        // size, so each keeps about four fifths of its share).
        assert!(moved < 1_200, "{moved} keys moved");
    }

    #[test]
    fn empty_ring_picks_nothing() {
        assert_eq!(Ring::build(&[], &[], 1024, 1024).pick(1), None);
    }
}
