//! Which way the next batch goes in: binary `COPY` while no duplicates are
//! seen, `INSERT .. ON CONFLICT DO NOTHING` for a while after one was.
//!
//! Rows already stored reach the sink after a restart or a rebalance (the
//! records between the last database commit and the last offset commit)
//! and when the bridge sent a message twice; they come in runs, right after
//! such an event. A `COPY` that meets one fails and the batch is written
//! again by `INSERT`, so each conflict costs one wasted `COPY`; the next
//! [`INSERT_AFTER_CONFLICT`] batches go by `INSERT` straight away, which
//! bounds that waste to one batch in that many even when duplicates never
//! stop. A `COPY` refused for another reason where the `INSERT` of the same
//! batch then worked turns `COPY` off for the store's lifetime.

use super::batch::Method;

/// Batches written by `INSERT` after a `COPY` met a row already stored.
pub const INSERT_AFTER_CONFLICT: u32 = 100;

/// The choice of [`Method`] for the next batch.
#[derive(Debug, Default)]
pub struct MethodPolicy {
    /// Batches still to go by `INSERT` after the last conflict.
    insert_left: u32,
    /// `COPY` failed where `INSERT` worked: not tried again.
    copy_refused: bool,
}

impl MethodPolicy {
    /// How the next batch is written.
    pub fn next(&self) -> Method {
        if self.copy_refused || self.insert_left > 0 {
            Method::Insert
        } else {
            Method::Copy
        }
    }

    /// A batch was written by `method`.
    pub fn written(&mut self, method: Method) {
        if method == Method::Insert {
            self.insert_left = self.insert_left.saturating_sub(1);
        }
    }

    /// A `COPY` met a row already stored: the batch goes again by `INSERT`,
    /// and so do the next [`INSERT_AFTER_CONFLICT`] batches.
    pub fn conflict(&mut self) {
        self.insert_left = INSERT_AFTER_CONFLICT + 1;
    }

    /// A `COPY` failed for another reason and the `INSERT` of the same
    /// batch worked: `COPY` is not tried again.
    pub fn refuse_copy(&mut self) {
        self.copy_refused = true;
    }

    /// `COPY` was turned off by [`Self::refuse_copy`].
    pub fn copy_refused(&self) -> bool {
        self.copy_refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_until_a_conflict_then_inserts_for_a_while() {
        let mut p = MethodPolicy::default();
        assert_eq!(p.next(), Method::Copy);
        p.written(Method::Copy);
        assert_eq!(p.next(), Method::Copy);
        p.conflict();
        // The conflicting batch itself, then INSERT_AFTER_CONFLICT more.
        for i in 0..=INSERT_AFTER_CONFLICT {
            assert_eq!(p.next(), Method::Insert, "batch {i} after the conflict");
            p.written(Method::Insert);
        }
        assert_eq!(p.next(), Method::Copy);
    }

    #[test]
    fn a_conflict_during_the_insert_spell_starts_it_again() {
        let mut p = MethodPolicy::default();
        p.conflict();
        for _ in 0..50 {
            p.written(Method::Insert);
        }
        p.conflict();
        for _ in 0..=INSERT_AFTER_CONFLICT {
            assert_eq!(p.next(), Method::Insert);
            p.written(Method::Insert);
        }
        assert_eq!(p.next(), Method::Copy);
    }

    #[test]
    fn a_refused_copy_is_not_tried_again() {
        let mut p = MethodPolicy::default();
        p.refuse_copy();
        assert!(p.copy_refused());
        for _ in 0..10 * INSERT_AFTER_CONFLICT {
            assert_eq!(p.next(), Method::Insert);
            p.written(Method::Insert);
        }
    }
}
