//! A fetch session with one broker (Fetch v7, KIP-227). After a full fetch
//! the broker keeps the partitions asked for and their fetch offsets; every
//! later, incremental fetch names only the partitions that were added, whose
//! offset moved, or that are to be forgotten, and its answer names only the
//! partitions with news (records, a new high watermark, an error). Without
//! a session a consumer of a topic per tenant sends, and gets back, every
//! assigned partition on every fetch.
//!
//! The rules kept here: epoch 0 asks for a new session, closing the one
//! named by the id sent; the answer gives the new session's id, 0 when the
//! broker keeps none (then every fetch stays full); each incremental fetch
//! carries the next epoch, 1 after `i32::MAX`. Any doubt (an error, a lost
//! connection, a new assignment) goes back to a full fetch.

use super::group_protocol::SessionRef;

/// The broker has no session by the id sent (evicted, restarted).
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// The epoch sent is not the one the broker expects.
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

/// The session with one broker, as the next request must name it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    id: i32,
    epoch: i32,
}

impl Session {
    /// What the next request carries.
    pub fn next(self) -> SessionRef {
        SessionRef { id: self.id, epoch: self.epoch }
    }

    /// Whether the next fetch is incremental: it names only what changed.
    pub fn incremental(self) -> bool {
        self.id != 0 && self.epoch > 0
    }

    /// The broker answered, without error, a request that carried `sent`,
    /// giving `answered_id` as its session.
    pub fn answered(&mut self, sent: SessionRef, answered_id: i32) {
        *self = if sent.epoch > 0 {
            Self { id: sent.id, epoch: if sent.epoch == i32::MAX { 1 } else { sent.epoch + 1 } }
        } else if answered_id == 0 {
            Self::default()
        } else {
            Self { id: answered_id, epoch: 1 }
        };
    }

    /// Start over with a full fetch, which also closes this session at the
    /// broker.
    pub fn restart(&mut self) {
        self.epoch = 0;
    }

    /// A session the broker created for a request whose answer was not
    /// used: the next full fetch closes it.
    pub fn close_later(&mut self, answered_id: i32) {
        *self = Self { id: answered_id, epoch: 0 };
    }

    /// No session at all: the broker moved to a new address.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_fetch_opens_a_session_and_epochs_count_up_and_wrap() {
        let mut s = Session::default();
        assert_eq!(s.next(), SessionRef { id: 0, epoch: 0 });
        assert!(!s.incremental());
        s.answered(s.next(), 41);
        assert_eq!(s.next(), SessionRef { id: 41, epoch: 1 });
        assert!(s.incremental());
        s.answered(s.next(), 41);
        assert_eq!(s.next(), SessionRef { id: 41, epoch: 2 });
        let mut at_end = Session { id: 41, epoch: i32::MAX };
        at_end.answered(at_end.next(), 41);
        assert_eq!(at_end.next(), SessionRef { id: 41, epoch: 1 }, "after i32::MAX comes 1, never 0");
    }

    #[test]
    fn a_broker_without_sessions_keeps_every_fetch_full() {
        let mut s = Session::default();
        for _ in 0..3 {
            s.answered(s.next(), 0);
            assert_eq!(s.next(), SessionRef { id: 0, epoch: 0 });
            assert!(!s.incremental());
        }
    }

    #[test]
    fn a_restart_closes_the_old_session_and_opens_a_new_one() {
        let mut s = Session::default();
        s.answered(s.next(), 7);
        s.answered(s.next(), 7);
        s.restart();
        assert_eq!(s.next(), SessionRef { id: 7, epoch: 0 }, "the old id with epoch 0 closes it");
        assert!(!s.incremental());
        s.answered(s.next(), 8);
        assert_eq!(s.next(), SessionRef { id: 8, epoch: 1 });
        s.close_later(9);
        assert_eq!(s.next(), SessionRef { id: 9, epoch: 0 });
        s.clear();
        assert_eq!(s.next(), SessionRef { id: 0, epoch: 0 });
    }
}
