//! A bounded set of per-(tenant, project) series that evicts the pairs
//! touched least recently, for labels whose values come from input: the
//! number of series stays at the cap whatever the number of tenants, a pair
//! that comes back after eviction starts a new series (Prometheus treats it
//! as a counter reset), and no label value is reserved for an overflow
//! bucket, so no real tenant name can collide with one.

use std::collections::HashMap;

/// When full, this share of the pairs (the least recently touched) goes at
/// once, so that a stream of new pairs costs one scan per tenth of the cap,
/// not one per pair.
const EVICT_FRACTION: usize = 10;

/// The cap of a `PairSeries::default()`.
pub const DEFAULT_PAIR_SERIES: usize = 5000;

pub struct PairSeries<V> {
    cap: usize,
    len: usize,
    /// tenant -> project -> (value, last touch); nested so that a lookup
    /// borrows the two `&str`s instead of allocating a key.
    map: HashMap<String, HashMap<String, (V, u64)>>,
    clock: u64,
    evicted: u64,
}

impl<V: Default> Default for PairSeries<V> {
    fn default() -> Self {
        Self::new(DEFAULT_PAIR_SERIES)
    }
}

impl<V: Default> PairSeries<V> {
    pub fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), len: 0, map: HashMap::new(), clock: 0, evicted: 0 }
    }

    /// Apply `f` to the value of a pair, created (evicting the least
    /// recently touched pairs when at the cap) if new; marks it as the most
    /// recently touched. A known pair (every message's case) costs one
    /// lookup of the tenant and one of the project, and no allocation.
    pub fn touch(&mut self, tenant: &str, project: &str, f: impl FnOnce(&mut V)) {
        self.clock += 1;
        if let Some(slot) = self.map.get_mut(tenant).and_then(|ps| ps.get_mut(project)) {
            slot.1 = self.clock;
            f(&mut slot.0);
            return;
        }
        if self.len >= self.cap {
            self.evict();
        }
        self.len += 1;
        let mut value = V::default();
        f(&mut value);
        self.map.entry(tenant.to_string()).or_default().insert(project.to_string(), (value, self.clock));
    }

    /// Pairs dropped to stay at the cap, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Every pair with its value, sorted by tenant then project.
    pub fn sorted(&self) -> Vec<(&str, &str, &V)> {
        let mut rows: Vec<_> =
            self.map.iter().flat_map(|(t, ps)| ps.iter().map(move |(p, (v, _))| (t.as_str(), p.as_str(), v))).collect();
        rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        rows
    }

    fn evict(&mut self) {
        let mut touches: Vec<u64> = self.map.values().flat_map(|ps| ps.values().map(|(_, at)| *at)).collect();
        let n = (self.cap / EVICT_FRACTION).clamp(1, touches.len().max(1));
        if touches.is_empty() {
            return;
        }
        let (_, threshold, _) = touches.select_nth_unstable(n - 1);
        let threshold = *threshold;
        let mut dropped = 0;
        for ps in self.map.values_mut() {
            ps.retain(|_, (_, at)| {
                let keep = *at > threshold;
                dropped += usize::from(!keep);
                keep
            });
        }
        self.map.retain(|_, ps| !ps.is_empty());
        self.len -= dropped;
        self.evicted += dropped as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_pair_and_evicts_the_least_recently_touched() {
        let mut s: PairSeries<u64> = PairSeries::new(20);
        for i in 0..20 {
            s.touch(&format!("t{i}"), "p", |n| *n += 1);
        }
        // t0 is touched again: t1 and t2 are now the oldest.
        s.touch("t0", "p", |n| *n += 1);
        s.touch("new", "p", |n| *n += 1);
        assert_eq!(s.len(), 19, "a tenth of the cap went at once, then the new pair came in");
        assert_eq!(s.evicted(), 2);
        let rows = s.sorted();
        assert!(rows.iter().any(|r| r.0 == "t0" && *r.2 == 2));
        assert!(!rows.iter().any(|r| r.0 == "t1" || r.0 == "t2"));
        assert!(rows.iter().any(|r| r.0 == "new"));
    }

    #[test]
    fn stays_at_the_cap_under_a_stream_of_new_pairs() {
        let mut s: PairSeries<u64> = PairSeries::new(1000);
        for i in 0..100_000 {
            s.touch(&format!("tenant-{i}"), &format!("project-{}", i % 7), |n| *n += 1);
            assert!(s.len() <= 1000);
        }
        assert!(s.evicted() >= 99_000);
        // The newest pairs are the ones kept.
        assert!(s.sorted().iter().any(|r| r.0 == "tenant-99999"));
    }

    #[test]
    fn a_tenant_named_like_an_overflow_bucket_is_just_a_tenant() {
        let mut s: PairSeries<u64> = PairSeries::new(2);
        s.touch("other", "other", |n| *n += 5);
        s.touch("a", "b", |n| *n += 1);
        s.touch("c", "d", |n| *n += 1);
        let rows = s.sorted();
        assert_eq!(rows.len(), 2);
        assert!(!rows.iter().any(|r| r.0 == "other"), "evicted, not merged into a shared bucket");
    }
}
