//! Cutting the writer's commit delay short.
//!
//! Under continuous load the writer waits up to `commit_delay` for more
//! appends before each commit, so that one `fdatasync` covers more records
//! (fewer fsyncs per message, less CPU). Nothing an appender waits on is
//! committed during that wait: when the appender cannot send more until
//! those records are acked — an MQTT session whose window is half taken by
//! records waiting for this commit — waiting longer only stalls it. The
//! appender then asks the writer to commit now ([`Hurry::ask`]); the writer
//! waits with [`Hurry::wait`] instead of sleeping. Appends themselves never
//! wake the writer (each wake-up is a context switch on the writer and a
//! futex call on the appender).

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

/// A request to commit without waiting out the delay.
#[derive(Default)]
pub struct Hurry {
    asked: Mutex<bool>,
    woken: Condvar,
}

impl Hurry {
    /// Ask the writer to end its current (or next) wait at once.
    pub fn ask(&self) {
        *self.asked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.woken.notify_one();
    }

    /// The writer: wait until `deadline`, or less if asked (before or
    /// during the wait); true when asked. The request is used up either
    /// way: the commit after this wait takes every record appended until then.
    pub fn wait(&self, deadline: Instant) -> bool {
        let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
        while !*asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            asked = self.woken.wait_timeout(asked, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        std::mem::replace(&mut *asked, false)
    }
}

/// When an appender should ask: once per commit, as soon as the records
/// it has handed to the writer and not yet seen committed reach half of
/// what it may hold unacked (its `window`).
#[derive(Debug)]
pub struct HurryAt {
    threshold: usize,
    unsettled: usize,
    asked: bool,
}

impl HurryAt {
    /// For an appender that may hold `window` records waiting for commits.
    pub fn new(window: usize) -> Self {
        Self { threshold: (window / 2).max(1), unsettled: 0, asked: false }
    }

    /// The window is known now to be `window` (it may change with the connection).
    pub fn set_window(&mut self, window: usize) {
        self.threshold = (window / 2).max(1);
    }

    /// `records` were handed to the writer: true when the writer should be asked now.
    #[must_use]
    pub fn submitted(&mut self, records: usize) -> bool {
        self.unsettled += records;
        if !self.asked && self.unsettled >= self.threshold {
            self.asked = true;
            return true;
        }
        false
    }

    /// `records` were committed (a commit happened): the next one may be asked for again.
    pub fn settled(&mut self, records: usize) {
        self.unsettled = self.unsettled.saturating_sub(records);
        self.asked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Longest wait for a wake-up that should come at once.
    const PROMPT: Duration = Duration::from_secs(5);

    #[test]
    fn a_wait_lasts_until_its_deadline_unless_asked() {
        let h = Hurry::default();
        let started = Instant::now();
        assert!(!h.wait(started + Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));

        // Asked before the wait: the wait returns at once, and uses the request up.
        h.ask();
        let started = Instant::now();
        assert!(h.wait(started + PROMPT));
        assert!(started.elapsed() < PROMPT);
        let started = Instant::now();
        assert!(!h.wait(started + Duration::from_millis(20)), "the request was used up");
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn asking_wakes_a_waiting_writer() {
        let h = Arc::new(Hurry::default());
        let writer = {
            let h = h.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                (h.wait(started + PROMPT), started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        h.ask();
        let (asked, waited) = writer.join().unwrap();
        assert!(asked && waited < PROMPT);
    }

    #[test]
    fn an_appender_asks_once_per_commit_at_half_its_window() {
        let mut at = HurryAt::new(100);
        assert!(!at.submitted(30));
        assert!(at.submitted(20), "50 of 100 waiting");
        assert!(!at.submitted(40), "asked already for this commit");
        at.settled(50);
        assert!(!at.submitted(1), "41 waiting after the commit");
        assert!(at.submitted(9), "50 waiting: asked again, for the next commit");
        at.set_window(10);
        at.settled(50);
        assert!(at.submitted(5), "half of a smaller window");
    }
}
