//! Sets of `u64` values kept as disjoint half-open intervals: counter values
//! reserved and closed, in memory proportional to the number of runs of
//! consecutive values rather than to the values.

use std::collections::BTreeMap;

/// A set of disjoint half-open intervals of `u64`, merged when adjacent.
#[derive(Debug, Default)]
pub(crate) struct Intervals {
    pub(crate) map: BTreeMap<u64, u64>,
    pub(crate) total: u64,
}

impl Intervals {
    /// Length of the overlap of `[a, b)` with the set.
    pub(crate) fn overlap(&self, a: u64, b: u64) -> u64 {
        if a >= b {
            return 0;
        }
        let mut n = 0;
        // The interval starting at or before `a`, then every one starting
        // inside [a, b).
        if let Some((&s, &e)) = self.map.range(..=a).next_back() {
            n += e.min(b).saturating_sub(s.max(a));
        }
        for (&s, &e) in self.map.range(a.saturating_add(1)..b) {
            n += e.min(b).saturating_sub(s);
        }
        n
    }

    /// Inserts `[a, b)`; returns how much of it was already present.
    pub(crate) fn insert(&mut self, a: u64, b: u64) -> u64 {
        if a >= b {
            return 0;
        }
        let dup = self.overlap(a, b);
        let (mut start, mut end) = (a, b);
        if let Some((&s, &e)) = self.map.range(..=a).next_back() {
            if e >= a {
                start = s;
                end = end.max(e);
            }
        }
        let covered: Vec<u64> = self.map.range(start..=end).map(|(&s, _)| s).collect();
        for s in covered {
            if let Some(e) = self.map.remove(&s) {
                end = end.max(e);
            }
        }
        self.map.insert(start, end);
        self.total += (b - a) - dup;
        dup
    }

    /// True when all of `[a, b)` is in the set.
    pub(crate) fn contains(&self, a: u64, b: u64) -> bool {
        a >= b || self.overlap(a, b) == b - a
    }

    /// Up to `limit` values of `[a, b)` not in the set.
    pub(crate) fn missing_in(&self, a: u64, b: u64, limit: usize, out: &mut Vec<u64>) {
        if a >= b {
            return;
        }
        let mut cur = a;
        if let Some((_, &e)) = self.map.range(..=a).next_back() {
            cur = cur.max(e);
        }
        for (&s, &e) in self.map.range(a..b) {
            while cur < s.min(b) && out.len() < limit {
                out.push(cur);
                cur += 1;
            }
            cur = cur.max(e);
        }
        while cur < b && out.len() < limit {
            out.push(cur);
            cur += 1;
        }
    }

    /// The maximal sub-ranges of `[a, b)` not in the set, in order.
    pub(crate) fn gaps(&self, a: u64, b: u64) -> Vec<std::ops::Range<u64>> {
        let mut out = Vec::new();
        if a >= b {
            return out;
        }
        let mut cur = a;
        if let Some((_, &e)) = self.map.range(..=a).next_back() {
            cur = cur.max(e);
        }
        for (&s, &e) in self.map.range(a..b) {
            if cur < s {
                out.push(cur..s);
            }
            cur = cur.max(e);
        }
        if cur < b {
            out.push(cur..b);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The interval set against a plain set of values, on random inserts.
    #[test]
    fn intervals_match_a_reference_set() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut iv = Intervals::default();
            let mut reference = BTreeSet::new();
            for _ in 0..30 {
                let a = next() % 100;
                let b = a + next() % 12;
                let already = (a..b).filter(|v| reference.contains(v)).count() as u64;
                assert_eq!(iv.overlap(a, b), already);
                assert_eq!(iv.contains(a, b), already == b - a);
                assert_eq!(iv.insert(a, b), already);
                reference.extend(a..b);
                assert_eq!(iv.total, reference.len() as u64);
                // Disjoint, non-adjacent, sorted.
                let spans: Vec<(u64, u64)> = iv.map.iter().map(|(&s, &e)| (s, e)).collect();
                assert!(spans.windows(2).all(|w| w[0].1 < w[1].0));
                let gaps: Vec<u64> = iv.gaps(0, 120).into_iter().flatten().collect();
                let mut missing = Vec::new();
                iv.missing_in(0, 120, 1000, &mut missing);
                let expected: Vec<u64> = (0..120).filter(|v| !reference.contains(v)).collect();
                assert_eq!(missing, expected);
                assert_eq!(gaps, expected);
            }
        }
    }
}
