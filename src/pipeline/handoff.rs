//! Journal records handed from the ingest to the feed in memory (the
//! bridge's journal mode).
//!
//! Every message is journaled and fsync'd before it is acked to MQTT, and
//! the feed forwards from the journal. While the feed keeps up, the records
//! it would read back from the disk are the ones the ingest has just
//! committed: reading, checking and decoding them again is the costliest
//! part of journal mode. So, after its commit, the ingest offers each batch
//! here with the messages it was encoded from, and the feed takes them from
//! memory as long as they follow, without a gap, the record it needs next.
//!
//! The journal stays the one source of truth: a batch is offered only once
//! it is durable, and whatever is not taken from here (a batch that does
//! not fit, one offered while the feed reads the disk, the backlog after a
//! restart) is read from the journal as before. Records come out in
//! journal order either way.
//!
//! ```text
//! feed: disk ──(caught up: resume)──► memory ──(queue empty after a gap)──► disk
//! ```
//!
//! Bounded by records and bytes; the queue only holds records that are
//! committed and not yet read by the feed.

use crate::record::Inbound;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// What the feed gets from [`Handoff::take`].
#[derive(Debug)]
pub enum Take {
    /// The records from the one it asked for on were added to its run.
    Taken,
    /// Nothing yet: wait with [`Handoff::wait`].
    Empty,
    /// A record the feed needs is not here: read it from the journal.
    Gap,
}

/// The queue between the ingest and the feed; share it behind an `Arc`.
pub struct Handoff {
    state: Mutex<State>,
    /// Woken when a batch is offered (taken or refused).
    offered: Notify,
    max_records: usize,
    max_bytes: usize,
}

struct State {
    /// Committed records the feed has not taken, in journal order, without gaps.
    queue: VecDeque<(Inbound, usize)>,
    /// Journal sequence number of the queue's first record (of the next
    /// accepted one when the queue is empty).
    head: u64,
    /// Bytes of `queue` (journal size).
    bytes: usize,
    /// Batches are accepted (from the feed's `resume` until a gap): the
    /// next one must start right after the queue.
    accepting: bool,
}

impl State {
    /// The record after the queue's last.
    fn tail(&self) -> u64 {
        self.head.saturating_add(self.queue.len() as u64)
    }

    /// Move the first `n` records (at most the queue's) to the back of `out`.
    fn move_to(&mut self, n: usize, out: &mut VecDeque<(Inbound, usize)>) {
        let n = n.min(self.queue.len());
        let mut bytes = 0;
        out.extend(self.queue.drain(..n).inspect(|(_, size)| bytes += size));
        self.bytes -= bytes;
        self.head += n as u64;
    }

    fn clear(&mut self, head: u64) {
        self.queue.clear();
        self.bytes = 0;
        self.head = head;
    }
}

impl Handoff {
    /// A queue holding at most `max_records` records and `max_bytes` bytes
    /// (a batch larger than that alone is not taken: the feed reads it from
    /// the journal).
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State { queue: VecDeque::new(), head: 0, bytes: 0, accepting: false }),
            offered: Notify::new(),
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ingest: the batch starting at journal record `first` is committed.
    /// Taken when it follows the queue's last record (records the feed has
    /// already read from the journal are dropped); otherwise, or when it
    /// does not fit, it is left to the journal, and so is everything after
    /// it until the feed has read the journal up to date again. Each message
    /// comes with its size in the journal (its share of the window).
    pub fn offer(&self, first: u64, mut msgs: Vec<(Inbound, usize)>) {
        let mut s = self.state();
        if !s.accepting {
            return;
        }
        let tail = s.tail();
        let end = first.saturating_add(msgs.len() as u64);
        if end <= tail {
            return; // the feed read all of it from the journal
        }
        if first > tail {
            // Not expected (batches are offered in order): a gap.
            s.accepting = false;
            drop(s);
            self.offered.notify_one();
            return;
        }
        let skip = usize::try_from(tail - first).unwrap_or(usize::MAX).min(msgs.len());
        let records = msgs.len() - skip;
        let bytes: usize = msgs[skip..].iter().map(|(_, n)| n).sum();
        if s.queue.len() + records > self.max_records || s.bytes.saturating_add(bytes) > self.max_bytes {
            s.accepting = false;
        } else {
            // Without the records already read: the rest goes over as one copy.
            msgs.drain(..skip);
            s.queue.extend(msgs);
            s.bytes += bytes;
        }
        drop(s);
        self.offered.notify_one();
    }

    /// The feed: record `next` and up to `max` - 1 after it, if `next` is
    /// here, onto the back of `run`, each with its share of the window in
    /// bytes (its size in the journal); one lock for all of them.
    pub fn take(&self, next: u64, max: usize, run: &mut VecDeque<(Inbound, usize)>) -> Take {
        let mut s = self.state();
        if s.head == next {
            if !s.queue.is_empty() {
                s.move_to(max.max(1), run);
                return Take::Taken;
            }
            if s.accepting {
                return Take::Empty;
            }
        }
        // A gap, or the feed is not where the queue is (cannot happen while
        // it takes in order): the journal has it.
        s.accepting = false;
        s.clear(next);
        Take::Gap
    }

    /// The feed: it has read every committed record from the journal and
    /// needs `next`: take batches again from the one that starts there.
    pub fn resume(&self, next: u64) {
        let mut s = self.state();
        s.clear(next);
        s.accepting = true;
    }

    /// The feed, after [`Self::take`] found nothing: wait until record
    /// `next` is here or a gap is known (a batch was offered since).
    pub async fn wait(&self, next: u64) {
        loop {
            let offered = self.offered.notified();
            tokio::pin!(offered);
            offered.as_mut().enable();
            {
                let s = self.state();
                if !(s.accepting && s.head == next && s.queue.is_empty()) {
                    return;
                }
            }
            offered.await;
        }
    }

    /// (records, bytes) queued now.
    #[cfg(test)]
    pub fn in_use(&self) -> (usize, usize) {
        let s = self.state();
        (s.queue.len(), s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::encoded_len;
    use bytes::Bytes;

    /// Messages `from`.. as offered: each with its size in the journal.
    fn msgs(from: u64, n: u64) -> Vec<(Inbound, usize)> {
        (from..from + n)
            .map(|i| {
                let m = Inbound {
                    topic: format!("t/{i}"),
                    payload: Bytes::from(vec![b'x'; 10]),
                    received_ms: i64::try_from(i).unwrap(),
                    redelivered: false,
                };
                let n = encoded_len(&m);
                (m, n)
            })
            .collect()
    }

    /// Take record `next` alone: its `received_ms`.
    fn took(h: &Handoff, next: u64) -> i64 {
        let mut run = VecDeque::new();
        match h.take(next, 1, &mut run) {
            Take::Taken => {
                assert_eq!(run.len(), 1);
                let (m, n) = run.pop_front().unwrap();
                assert_eq!(n, encoded_len(&m));
                m.received_ms
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn take(h: &Handoff, next: u64) -> Take {
        h.take(next, 1, &mut VecDeque::new())
    }

    #[test]
    fn nothing_is_taken_before_the_feed_resumes() {
        let h = Handoff::new(100, 1 << 20);
        h.offer(0, msgs(0, 5));
        assert_eq!(h.in_use().0, 0);
        assert!(matches!(take(&h, 0), Take::Gap));
    }

    #[test]
    fn batches_that_follow_each_other_come_out_in_order() {
        let h = Handoff::new(100, 1 << 20);
        h.resume(10);
        h.offer(10, msgs(10, 3));
        h.offer(13, msgs(13, 2));
        assert!(matches!(take(&h, 9), Take::Gap), "asked for a record before the queue");
        h.resume(10);
        h.offer(10, msgs(10, 3));
        h.offer(13, msgs(13, 2));
        for want in 10..15 {
            assert_eq!(took(&h, want as u64), want);
        }
        assert!(matches!(take(&h, 15), Take::Empty));
        assert_eq!(h.in_use(), (0, 0));
    }

    #[test]
    fn what_the_feed_already_read_from_the_journal_is_dropped() {
        let h = Handoff::new(100, 1 << 20);
        h.resume(20);
        h.offer(10, msgs(10, 5)); // all before 20
        h.offer(15, msgs(15, 8)); // 15..23: 20, 21, 22 are new
        assert_eq!(h.in_use().0, 3);
        for want in 20..23 {
            assert_eq!(took(&h, want as u64), want);
        }
    }

    #[test]
    fn a_batch_that_does_not_fit_leaves_a_gap_after_the_queue() {
        let h = Handoff::new(4, 1 << 20);
        h.resume(0);
        h.offer(0, msgs(0, 3));
        h.offer(3, msgs(3, 2)); // 5 > 4 records
        h.offer(5, msgs(5, 1)); // after the gap: refused too
        assert_eq!(h.in_use().0, 3);
        for want in 0..3 {
            assert_eq!(took(&h, want as u64), want);
        }
        assert!(matches!(take(&h, 3), Take::Gap));
        // Read from the journal up to date, the feed takes batches again.
        h.resume(6);
        h.offer(6, msgs(6, 1));
        assert_eq!(took(&h, 6), 6);
    }

    #[test]
    fn the_byte_bound_holds_and_a_batch_out_of_order_is_a_gap() {
        let one = msgs(0, 1)[0].1;
        let h = Handoff::new(100, one * 2);
        h.resume(0);
        h.offer(0, msgs(0, 3));
        assert_eq!(h.in_use(), (0, 0));
        assert!(matches!(take(&h, 0), Take::Gap));
        h.resume(0);
        h.offer(1, msgs(1, 1)); // 0 is missing
        assert!(matches!(take(&h, 0), Take::Gap));
    }

    #[test]
    fn a_run_is_taken_under_one_lock_up_to_its_limit() {
        let h = Handoff::new(100, 1 << 20);
        h.resume(0);
        h.offer(0, msgs(0, 5));
        let mut run = VecDeque::new();
        assert!(matches!(h.take(0, 3, &mut run), Take::Taken));
        assert_eq!(run.iter().map(|(m, _)| m.received_ms).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(h.in_use(), (2, 2 * msgs(0, 1)[0].1));
        // The next run starts after what the last one took.
        assert!(matches!(h.take(3, 64, &mut run), Take::Taken));
        assert_eq!(run.iter().map(|(m, _)| m.received_ms).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(h.in_use(), (0, 0));
        assert!(matches!(h.take(5, 64, &mut run), Take::Empty));
    }

    #[tokio::test]
    async fn an_offer_wakes_the_waiting_feed() {
        let h = std::sync::Arc::new(Handoff::new(100, 1 << 20));
        h.resume(0);
        let waiting = h.clone();
        let feed = tokio::spawn(async move {
            loop {
                let mut run = VecDeque::new();
                match waiting.take(0, 8, &mut run) {
                    Take::Taken => return run[0].0.received_ms,
                    Take::Empty => waiting.wait(0).await,
                    Take::Gap => panic!("no gap"),
                }
            }
        });
        tokio::task::yield_now().await;
        h.offer(0, msgs(0, 1));
        assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(5), feed).await.unwrap().unwrap(), 0);
    }
}
