//! The in-order ack sequencer (MQTT-4.6.0-2: PUBACKs go out in the order the
//! PUBLISHes arrived). Pure: no I/O, no clock.
//!
//! Every received message gets a sequence number and the connection epoch it
//! arrived on. Downstream completes sequence numbers in any order;
//! `drain_ready` releases the ack tokens of the longest completed prefix.
//! Entries from an earlier epoch are never acked: their connection is gone,
//! a packet id from it may already name another message on the new
//! connection, and the broker redelivers them anyway.

use std::collections::VecDeque;

#[derive(Debug)]
struct Entry<T> {
    epoch: u64,
    /// What the ack needs (packet id and QoS); `None` for QoS 0.
    token: Option<T>,
    done: bool,
}

#[derive(Debug)]
pub struct Sequencer<T> {
    entries: VecDeque<Entry<T>>,
    /// Sequence number of `entries[0]`.
    base: u64,
    /// Entries holding a token (QoS 1 or 2): what the broker counts as unacked.
    tokens: usize,
}

/// What one `drain_ready` released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Tokens dropped because their epoch has ended (the broker will redeliver).
    pub abandoned: u64,
}

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Self { entries: VecDeque::new(), base: 0, tokens: 0 }
    }
}

impl<T> Sequencer<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a received message; returns its sequence number.
    pub fn push(&mut self, epoch: u64, token: Option<T>) -> u64 {
        self.tokens += usize::from(token.is_some());
        self.entries.push_back(Entry { epoch, token, done: false });
        self.base + self.entries.len() as u64 - 1
    }

    /// Mark a sequence number durable. Unknown or already released numbers are ignored.
    pub fn complete(&mut self, seq: u64) -> bool {
        let Some(idx) = seq.checked_sub(self.base) else { return false };
        match self.entries.get_mut(usize::try_from(idx).unwrap_or(usize::MAX)) {
            Some(e) if !e.done => {
                e.done = true;
                true
            }
            _ => false,
        }
    }

    /// Release, in arrival order, the tokens of the completed prefix of the
    /// current epoch into `out`; entries of ended epochs are dropped.
    pub fn drain_ready(&mut self, current_epoch: u64, out: &mut impl Extend<T>) -> Drained {
        let mut drained = Drained::default();
        while let Some(front) = self.entries.front() {
            if front.epoch < current_epoch {
                if let Some(Entry { token: Some(_), .. }) = self.entries.pop_front() {
                    drained.abandoned += 1;
                    self.tokens -= 1;
                }
            } else if front.done {
                if let Some(Entry { token: Some(t), .. }) = self.entries.pop_front() {
                    out.extend(Some(t));
                    self.tokens -= 1;
                }
            } else {
                break;
            }
            self.base += 1;
        }
        drained
    }

    /// Messages registered and not yet released.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registered entries with a token (QoS 1 or 2) not yet released: the
    /// messages the broker still waits for a PUBACK of.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn acks_wait_for_the_head_of_the_line() {
        let mut s = Sequencer::new();
        let a = s.push(0, Some('a'));
        let b = s.push(0, Some('b'));
        let c = s.push(0, Some('c'));
        let mut out = vec![];
        s.complete(c);
        s.complete(b);
        s.drain_ready(0, &mut out);
        assert!(out.is_empty(), "a is not durable yet");
        s.complete(a);
        s.drain_ready(0, &mut out);
        assert_eq!(out, ['a', 'b', 'c']);
        assert!(s.is_empty());
    }

    #[test]
    fn tokens_count_what_still_waits_for_an_ack() {
        let mut s = Sequencer::new();
        let a = s.push(0, Some(1));
        let _qos0 = s.push(0, None);
        let c = s.push(0, Some(3));
        assert_eq!((s.len(), s.tokens()), (3, 2));
        let mut out = vec![];
        s.complete(c);
        s.drain_ready(0, &mut out);
        assert_eq!(s.tokens(), 2, "c waits behind a");
        s.complete(a);
        s.drain_ready(0, &mut out);
        assert_eq!((s.len(), s.tokens()), (2, 1), "a released; the QoS 0 entry holds c back");
        let _new = s.push(1, Some(1));
        s.drain_ready(1, &mut out);
        assert_eq!((s.len(), s.tokens()), (1, 1), "the ended connection's entries are dropped");
    }

    #[test]
    fn qos0_entries_keep_their_place_but_produce_no_ack() {
        let mut s = Sequencer::new();
        let a = s.push(0, None);
        let b = s.push(0, Some(2));
        let mut out = vec![];
        s.complete(b);
        s.drain_ready(0, &mut out);
        assert!(out.is_empty());
        s.complete(a);
        s.drain_ready(0, &mut out);
        assert_eq!(out, [2]);
    }

    #[test]
    fn entries_of_an_ended_connection_are_never_acked() {
        let mut s = Sequencer::new();
        let old_done = s.push(0, Some(1));
        let _old_pending = s.push(0, Some(2));
        let new = s.push(1, Some(1)); // same packet id, new connection
        s.complete(old_done);
        s.complete(new);
        let mut out = vec![];
        let d = s.drain_ready(1, &mut out);
        assert_eq!(out, [1]);
        assert_eq!(d.abandoned, 2);
        assert!(s.is_empty());
        assert!(!s.complete(0), "a released number is ignored");
    }

    #[test]
    fn completing_twice_or_unknown_is_harmless() {
        let mut s: Sequencer<u8> = Sequencer::new();
        let a = s.push(0, Some(1));
        assert!(s.complete(a));
        assert!(!s.complete(a));
        assert!(!s.complete(99));
    }

    proptest! {
        /// Whatever the completion order, acks come out in arrival order, each once.
        #[test]
        fn acks_are_released_in_arrival_order(order in Just((0..200u64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut s = Sequencer::new();
            for i in 0..200u64 { s.push(0, Some(i)); }
            let mut out = vec![];
            for seq in order {
                s.complete(seq);
                s.drain_ready(0, &mut out);
                prop_assert!(out.windows(2).all(|w| w[0] + 1 == w[1]));
                prop_assert_eq!(s.tokens(), 200 - out.len());
            }
            prop_assert_eq!(out, (0..200u64).collect::<Vec<_>>());
        }
    }
}
