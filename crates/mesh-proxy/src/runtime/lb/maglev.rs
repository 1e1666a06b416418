//! Maglev consistent hashing (Envoy's MAGLEV): a lookup table of prime
//! size filled from each endpoint's permutation, weighted as Envoy weights
//! it; a request goes to `table[hash % size]`.

use super::hash::xxhash64;

/// Envoy's default `table_size`.
pub const DEFAULT_TABLE_SIZE: u64 = 65537;

/// A built table.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// Builds a table of `size` (should be prime) over endpoints named by
    /// `keys` with `weights`.
    pub fn build(keys: &[String], weights: &[u32], size: u64) -> Self {
        let size = size.clamp(1, 5_000_011);
        let max_weight = weights.iter().copied().max().unwrap_or(0);
        if keys.is_empty() || max_weight == 0 {
            return Self { table: Vec::new() };
        }
        struct Entry {
            offset: u64,
            skip: u64,
            weight: u64,
            target: u64,
            next: u64,
        }
        let mut entries: Vec<Entry> = keys
            .iter()
            .zip(weights)
            .map(|(k, w)| Entry {
                offset: xxhash64(k.as_bytes(), 0) % size,
                skip: if size > 1 {
                    xxhash64(k.as_bytes(), 1) % (size - 1) + 1
                } else {
                    1
                },
                weight: u64::from(*w),
                target: 0,
                next: 0,
            })
            .collect();
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < size {
            for (i, e) in entries.iter_mut().enumerate() {
                if filled >= size {
                    break;
                }
                // An endpoint of the maximum weight places one entry every
                // iteration; one of a third of it, every third iteration.
                if e.weight == 0 || iteration * e.weight < e.target {
                    continue;
                }
                e.target += u64::from(max_weight);
                let mut c = (e.offset + e.skip * e.next) % size;
                while table[c as usize] != u32::MAX {
                    e.next += 1;
                    c = (e.offset + e.skip * e.next) % size;
                }
                table[c as usize] = u32::try_from(i).unwrap_or(0);
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Self { table }
    }

    /// The endpoint index for `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn table_shares_follow_weights() {
        let m = Maglev::build(&keys(3), &[1, 1, 2], 65537);
        let mut counts = [0u32; 3];
        for slot in &m.table {
            counts[*slot as usize] += 1;
        }
        let share = f64::from(counts[2]) / 65537.0;
        assert!((0.45..0.55).contains(&share), "{counts:?}");
    }

    #[test]
    fn little_movement_when_an_endpoint_leaves() {
        let full = Maglev::build(&keys(5), &[1; 5], 65537);
        let fewer = Maglev::build(&keys(4), &[1; 4], 65537);
        let moved = (0..5_000u64)
            .map(|h| xxhash64(&h.to_le_bytes(), 0))
            .filter(|h| full.pick(*h).unwrap() < 4 && full.pick(*h) != fewer.pick(*h))
            .count();
        assert!(moved < 400, "{moved} keys moved");
    }
}
