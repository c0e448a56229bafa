//! The one retry policy: exponential, capped, jittered. Every retry site of
//! iotpipe (MQTT reconnects, store connects and writes, Kafka deliveries)
//! waits what this module says, so that a fleet of processes that lost the
//! same broker at the same moment does not come back in lock-step.
//!
//! A wait is drawn uniformly from `[first, ceiling]`, where the ceiling
//! starts at twice `first` and doubles after every failure up to `max`.
//! That is "full jitter" (AWS, "Exponential Backoff And Jitter") above a
//! floor: the whole window is random, but never shorter than `first`, so a
//! failure that returns at once cannot turn into a hot loop (plain full
//! jitter draws from `[0, ceiling]` and may wait nothing at all), and a key
//! called `..._min` stays the shortest wait. Even the first retry is spread
//! (over `[first, 2 × first]`), which is the one that matters most after a
//! broker restart. With `first == max` there is nothing to spread: every
//! wait is `max`.
//!
//! A leaf module: it depends on `rand` and nothing of the crate.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// How long to wait before retry number `attempt` (0 = the first retry).
/// Stateless and `Copy`: sites that count attempts themselves (one count per
/// Kafka record) use [`RetryPolicy::delay`]; sites with one loop use a
/// [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    first: Duration,
    max: Duration,
}

impl RetryPolicy {
    /// Waits of at least `first` and at most `max` (a `first` above `max`
    /// is lowered to `max`).
    pub const fn new(first: Duration, max: Duration) -> Self {
        let first = if first.as_nanos() > max.as_nanos() { max } else { first };
        Self { first, max }
    }

    /// The shortest wait.
    pub const fn first(&self) -> Duration {
        self.first
    }

    /// The longest wait.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The longest wait before retry `attempt`: `first × 2^(attempt+1)`,
    /// capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 × any non-zero `first` is past every sensible cap; saturating
        // keeps a zero or huge `first` from overflowing.
        let factor = 1u32 << attempt.saturating_add(1).min(31);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `attempt`: uniform in `[first, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, jitter: &mut Jitter) -> Duration {
        jitter.0.gen_range(self.first..=self.ceiling(attempt))
    }

    /// A backoff with a random seed (each process, and each site, its own).
    pub fn backoff(self) -> Backoff {
        Backoff { policy: self, attempt: 0, jitter: Jitter::random() }
    }

    /// A backoff with a fixed seed: the same sequence every time (tests).
    pub fn backoff_seeded(self, seed: u64) -> Backoff {
        Backoff { policy: self, attempt: 0, jitter: Jitter::seeded(seed) }
    }
}

/// The random source of the jitter.
#[derive(Debug, Clone)]
pub struct Jitter(StdRng);

impl Jitter {
    /// Seeded from the thread's random generator (no system call).
    pub fn random() -> Self {
        Self::seeded(rand::random())
    }

    /// The same sequence for the same seed.
    pub fn seeded(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::random()
    }
}

/// One retry loop's state: the policy, the failures since the last success
/// and the jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
    jitter: Jitter,
}

impl Backoff {
    /// The wait before the next retry; every call counts one failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.policy.delay(self.attempt, &mut self.jitter);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// After a success: the next wait is a first one again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RetryPolicy {
        RetryPolicy::new(200 * MS, Duration::from_secs(30))
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<_> = (0..10).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]);
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30), "no overflow");
        assert_eq!(RetryPolicy::new(Duration::from_secs(1), 100 * MS).first(), 100 * MS, "first is at most max");
        let mut fixed = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(1)).backoff_seeded(7);
        assert!((0..20).all(|_| fixed.next_delay() == Duration::from_secs(1)), "first == max: no jitter");
    }

    /// On paused time: a loop that fails 30 times waits between `first` and
    /// the ceiling every time, the waits grow, and none is over the cap.
    #[tokio::test(start_paused = true)]
    async fn waits_grow_and_are_capped() {
        let p = policy();
        let mut b = p.backoff_seeded(1);
        let mut waits = Vec::new();
        for attempt in 0..30 {
            let start = Instant::now();
            let d = b.next_delay();
            tokio::time::sleep(d).await;
            // Paused time advances by the wait (rounded up to tokio's 1 ms tick).
            let waited = start.elapsed();
            assert!(waited >= d && waited <= d + MS, "{waited:?} for {d:?}");
            assert!(d >= p.first() && d <= p.ceiling(attempt), "attempt {attempt}: {d:?}");
            waits.push(d);
        }
        assert_eq!(b.attempts(), 30);
        // Growth: the late waits are, on average, far above the early ones.
        let early: Duration = waits[..3].iter().sum();
        let late: Duration = waits[27..].iter().sum();
        assert!(early <= 3 * 1600 * MS, "{early:?}");
        assert!(late > 3 * 5 * Duration::from_secs(1), "{late:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(30)));
        // And the cap is reached, not only approached: over many capped draws
        // the largest is close to it.
        let most = (0..200).map(|_| b.next_delay()).max().unwrap_or_default();
        assert!(most > Duration::from_secs(29), "{most:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reset_starts_over() {
        let p = policy();
        let mut b = p.backoff_seeded(2);
        for _ in 0..12 {
            let d = b.next_delay();
            tokio::time::sleep(d).await;
        }
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert_eq!(b.attempts(), 0);
        let start = Instant::now();
        tokio::time::sleep(b.next_delay()).await;
        let waited = start.elapsed();
        assert!(waited >= p.first() && waited <= p.ceiling(0) + MS, "{waited:?}");
    }

    /// The same seed gives the same waits; `delay` (per-record attempt
    /// counts) and `Backoff` (one loop) agree.
    #[test]
    fn seeded_is_reproducible() {
        let p = policy();
        let a: Vec<_> = {
            let mut b = p.backoff_seeded(42);
            (0..20).map(|_| b.next_delay()).collect()
        };
        let mut j = Jitter::seeded(42);
        let c: Vec<_> = (0..20).map(|n| p.delay(n, &mut j)).collect();
        assert_eq!(a, c);
    }

    /// The moments at which a retry loop tries again, on paused time, while
    /// every attempt fails.
    async fn retry_times(mut b: Backoff, attempts: usize) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut times = Vec::new();
        for _ in 0..attempts {
            tokio::time::sleep(b.next_delay()).await;
            times.push(t0.elapsed());
        }
        times
    }

    /// Two bridges lose the broker at the same instant (on one paused
    /// clock): their reconnects must not coincide. Without jitter both would
    /// retry at the same instants (ceilings or floors alike) and this fails.
    #[tokio::test(start_paused = true)]
    async fn two_instances_do_not_retry_in_lock_step() {
        let p = policy();
        let (ta, tb) = tokio::join!(
            tokio::spawn(retry_times(p.backoff_seeded(1), 10)),
            tokio::spawn(retry_times(p.backoff_seeded(2), 10))
        );
        let (ta, tb) = (ta.expect("task a"), tb.expect("task b"));
        let together = ta.iter().zip(&tb).filter(|(x, y)| x.abs_diff(**y) <= MS).count();
        assert_eq!(together, 0, "retries within 1 ms of each other: {ta:?} / {tb:?}");

        // Default (random) seeds, as in production: different every run, so
        // only "not the same schedule" is asserted (a chance coincidence of
        // one retry is possible, of all ten is not).
        let (ta, tb) =
            tokio::join!(tokio::spawn(retry_times(p.backoff(), 10)), tokio::spawn(retry_times(p.backoff(), 10)));
        let (ta, tb) = (ta.expect("task a"), tb.expect("task b"));
        let together = ta.iter().zip(&tb).filter(|(x, y)| x.abs_diff(**y) <= MS).count();
        assert!(together < 10, "the same schedule twice: {ta:?}");
    }

    /// A fleet: 100 instances' first retries spread over the whole window
    /// `[first, 2 × first]` instead of piling up on one instant.
    #[test]
    fn a_fleet_spreads_its_first_retry() {
        let p = policy();
        let firsts: Vec<_> = (0..100).map(|seed| p.backoff_seeded(seed).next_delay()).collect();
        let mut buckets = [0u32; 4];
        for d in &firsts {
            let i = ((d.as_millis() - 200) * 4 / 201) as usize;
            buckets[i] += 1;
        }
        assert!(buckets.iter().all(|&n| n >= 10), "{buckets:?}");
    }
}
