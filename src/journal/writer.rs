//! Group commit: one thread owns the active segment; appends queue up while
//! it fsyncs, and the next batch takes all of them in one write and one
//! `fdatasync`. Each append's future resolves only after the fsync that
//! covers its records, so the async runtime never waits on the disk. An
//! append may carry many records ([`Batch`]): one request, one completion.
//! A batch comes laid out as frames: the writer numbers its records, fills
//! in their headers and writes the batch's own buffer (one gathered write
//! for all the batches of a commit), so records are not copied again here.

use super::batch::Batch;
use super::direct::{self, DirectSegment};
use super::prealloc::{self, Preparation};
use super::segment::{self, SegmentInfo};
use super::shared::Shared;
use super::JournalError;
use bytes::Bytes;
use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// A message to the writer thread.
pub enum Request {
    /// Append records (their frames are already reserved against `max_size`).
    Append {
        /// The records, in order.
        batch: Batch,
        /// Resolved with the first record's sequence number after the fsync
        /// that covers the last one, or the error.
        done: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// Commit what is queued before this, then stop.
    Shutdown {
        /// Resolved once the thread has stopped and released the directory lock.
        done: oneshot::Sender<()>,
    },
}

/// A cloneable handle that appends records; obtained from `Journal::appender`.
#[derive(Clone)]
pub struct Appender {
    shared: Arc<Shared>,
    tx: Sender<Request>,
}

impl Appender {
    pub(super) fn new(shared: Arc<Shared>, tx: Sender<Request>) -> Self {
        Self { shared, tx }
    }

    /// Append a record; resolves with its sequence number once it is fsync'd.
    ///
    /// Fails at once with `Full` when the journal is at `max_size` (the caller
    /// should stop acking upstream and retry later), with `TooLarge` for a
    /// payload bigger than a segment, and with `Closed` after `close()`.
    /// Dropping the future does not withdraw the record: it is still written.
    pub async fn append(&self, payload: Bytes) -> Result<u64, JournalError> {
        self.enqueue(payload)?.await
    }

    /// Commit what was appended without waiting out the rest of the commit
    /// delay: the caller cannot append more until it is committed (`hurry.rs`).
    pub fn hurry(&self) {
        self.shared.hurry.ask();
    }

    /// Most bytes the writer takes into one group commit (`max_batch`): a
    /// useful upper size for a [`Batch`].
    pub fn max_batch_bytes(&self) -> usize {
        usize::try_from(self.shared.cfg.max_batch.bytes()).unwrap_or(usize::MAX)
    }

    /// Hand `payload` to the writer now (so records keep the order of the
    /// calls) and return a future that resolves after its fsync. Errors that
    /// need no I/O (`Full`, `TooLarge`, `Closed`) come back at once.
    pub fn enqueue(
        &self,
        payload: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<u64, JournalError>> + Send + 'static, JournalError> {
        let mut batch = Batch::new();
        batch.push(&payload);
        self.enqueue_batch(batch).map_err(|(error, _)| error)
    }

    /// [`Self::enqueue`] for every record of `batch`, all or none: the
    /// future resolves with the first record's sequence number once the
    /// fsync covering the last record is done. A refused batch comes back
    /// with the error (on `Full` a smaller one may still fit).
    pub fn enqueue_batch(
        &self,
        batch: Batch,
    ) -> Result<impl std::future::Future<Output = Result<u64, JournalError>> + Send + 'static, (JournalError, Batch)>
    {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err((JournalError::Closed, batch));
        }
        let max = self.shared.cfg.max_record();
        let largest = batch.largest() as u64;
        if largest > max {
            return Err((JournalError::TooLarge { size: largest, max }, batch));
        }
        let bytes = batch.frame_bytes();
        if let Err(error) = self.shared.reserve(bytes) {
            return Err((error, batch));
        }
        let (done, rx) = oneshot::channel();
        if let Err(std::sync::mpsc::SendError(req)) = self.tx.send(Request::Append { batch, done }) {
            self.shared.release(bytes);
            let batch = match req {
                Request::Append { batch, .. } => batch,
                Request::Shutdown { .. } => Batch::new(),
            };
            return Err((JournalError::Closed, batch));
        }
        Ok(async move { rx.await.unwrap_or(Err(JournalError::Closed)) })
    }
}

/// A staged batch waiting for the fsync of its last record.
struct Pending {
    first_seq: u64,
    done: oneshot::Sender<Result<u64, JournalError>>,
}

/// The writer thread's state.
pub struct Writer {
    shared: Arc<Shared>,
    /// The active segment, opened for appending.
    file: File,
    active_first: u64,
    /// Bytes of the active segment on disk (written and fsync'd).
    active_len: u64,
    /// Sequence number the next staged record gets.
    next_seq: u64,
    /// Frames staged for the next write, in order (sealed batches).
    staged: Vec<Vec<u8>>,
    /// Bytes of `staged`.
    staged_bytes: u64,
    pending: Vec<Pending>,
    /// Set after a failed write or fsync: nothing more is written.
    failed: Option<String>,
    /// The active segment was zero-filled to `segment_size` before its first record.
    preallocated: bool,
    /// Direct writes to the active segment (`direct.rs`): a preallocated
    /// one, with `direct_io` on, on a filesystem that takes them.
    direct: Option<DirectSegment>,
    /// The next segment, being zero-filled in the background.
    next: Option<Preparation>,
}

impl Writer {
    /// A writer appending to the segment `active_first`, `active_len` bytes
    /// long (`preallocated`: zero-filled to its full size).
    pub fn new(
        shared: Arc<Shared>,
        file: File,
        active_first: u64,
        active_len: u64,
        next_seq: u64,
        preallocated: bool,
    ) -> Self {
        let mut writer = Self {
            shared,
            file,
            active_first,
            active_len,
            next_seq,
            staged: Vec::new(),
            staged_bytes: 0,
            pending: Vec::new(),
            failed: None,
            preallocated,
            direct: None,
            next: None,
        };
        writer.open_direct();
        writer
    }

    /// Write the active segment with direct I/O if it is preallocated and
    /// the filesystem takes it, else buffered (a failure to open it for
    /// direct I/O is only logged: the buffered path does not need it).
    fn open_direct(&mut self) {
        self.direct = None;
        let cfg = &self.shared.cfg;
        if !self.preallocated || !cfg.direct_io || cfg.segment_size.bytes() % direct::BLOCK as u64 != 0 {
            return;
        }
        let path = segment::path(&self.shared.dir, self.active_first);
        match DirectSegment::open(&path, self.active_len) {
            Ok(Some(d)) => self.direct = Some(d),
            Ok(None) => {
                tracing::info!(path = %path.display(), "The filesystem refused direct I/O; writing this journal segment through the page cache.");
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "Could not open a journal segment for direct I/O; writing it through the page cache.");
            }
        }
    }

    /// Start the thread. It holds `lock` (the directory lock) until it has
    /// stopped, and only then confirms a `Shutdown`.
    pub fn spawn(self, rx: Receiver<Request>, lock: Arc<File>) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("journal-writer".into()).spawn(move || {
            let done = self.run(rx);
            drop(lock);
            if let Some(done) = done {
                let _ = done.send(());
            }
        })
    }

    /// Serve requests until `Shutdown` (returned, to be confirmed) or until every sender is gone.
    fn run(mut self, rx: Receiver<Request>) -> Option<oneshot::Sender<()>> {
        let max_batch = self.shared.cfg.max_batch.bytes();
        let delay = self.shared.cfg.commit_delay.get();
        let mut last_commit: Option<Instant> = None;
        let mut carry: Option<Request> = None;
        let mut shutdown = None;
        while shutdown.is_none() {
            let mut next = match carry.take() {
                Some(r) => Some(r),
                None => rx.recv().ok(),
            };
            if next.is_none() {
                break; // every sender is gone
            }
            // Under continuous load, wait up to `commit_delay` for more.
            let mut deadline =
                last_commit.filter(|t| !delay.is_zero() && t.elapsed() <= delay).map(|_| Instant::now() + delay);
            // The batch: everything that queued up while the last fsync ran.
            while let Some(req) = next.take() {
                match req {
                    Request::Shutdown { done } => {
                        shutdown = Some(done);
                        break;
                    }
                    Request::Append { batch, done } => {
                        if self.staged_bytes > 0 && self.staged_bytes + batch.frame_bytes() > max_batch {
                            carry = Some(Request::Append { batch, done });
                            break;
                        }
                        self.stage(batch, done);
                    }
                }
                next = rx.try_recv().ok();
                if let (None, Some(until)) = (&next, deadline) {
                    if Instant::now() < until && self.staged_bytes < max_batch {
                        // Wait out the rest of the delay and take what
                        // queued meanwhile, rather than wake for each append
                        // (a context switch here and a futex wake-up for the
                        // appender, per append); an appender that cannot
                        // send more until this commit ends the wait (`hurry.rs`).
                        if self.shared.hurry.wait(until) {
                            // Asked: what queued until now is this commit.
                            deadline = None;
                        }
                        next = rx.try_recv().ok();
                    }
                }
            }
            self.commit();
            last_commit = Some(Instant::now());
            self.prepare_next();
        }
        if let Some(req) = carry {
            self.refuse(req);
        }
        while let Ok(req) = rx.try_recv() {
            self.refuse(req);
        }
        self.shared.committed.send_modify(|c| c.closed = true);
        self.tidy();
        shutdown
    }

    /// Once a preallocated active segment is half full, zero-fill the next
    /// one in the background (only then: its appends need no new blocks, so
    /// the preparation cannot take space they were promised).
    fn prepare_next(&mut self) {
        let half = self.shared.cfg.segment_size.bytes() / 2;
        if self.preallocated && self.next.is_none() && self.failed.is_none() && self.active_len > half {
            self.next = Preparation::start(self.shared.dir.clone(), self.shared.cfg.clone());
        }
    }

    /// On the way out: stop a preparation and remove its file, and cut the
    /// active segment's zeros (recovery would, after a crash).
    fn tidy(&mut self) {
        if let Some(p) = self.next.take() {
            if p.cancel().is_some() {
                let _ = std::fs::remove_file(self.shared.dir.join(segment::PREPARED));
            }
        }
        if self.preallocated && self.failed.is_none() {
            if let Err(error) = self.seal() {
                let path = segment::path(&self.shared.dir, self.active_first);
                tracing::warn!(path = %path.display(), %error, "Could not cut a preallocated journal segment to its records; the next open does.");
            }
        }
    }

    /// Cut a preallocated active segment to its records and make that durable.
    fn seal(&mut self) -> io::Result<()> {
        self.file.set_len(self.active_len)?;
        self.file.sync_all()
    }

    /// Number a batch's records and stage their frames for the group commit,
    /// rolling to a new segment first whenever the next record would not
    /// fit (committing what is staged, so a batch may span segments).
    fn stage(&mut self, mut batch: Batch, done: oneshot::Sender<Result<u64, JournalError>>) {
        let first_seq = self.next_seq;
        let segment_size = self.shared.cfg.segment_size.bytes();
        while !batch.is_empty() && self.failed.is_none() {
            let staged = self.active_len + self.staged_bytes;
            let fit = batch.fitting(segment_size.saturating_sub(staged));
            if fit == 0 && staged > segment::EMPTY_LEN {
                self.commit();
                if self.failed.is_none() {
                    if let Err(error) = self.roll() {
                        self.fail(self.next_seq, &error);
                    }
                }
                continue;
            }
            // An empty segment takes a record even if it is larger (at most
            // a segment's worth: the appender checks).
            let rest = batch.split_off(fit.max(1));
            let records = batch.len() as u64;
            self.staged_bytes += batch.frame_bytes();
            self.staged.push(batch.seal(self.next_seq));
            self.next_seq += records;
            batch = rest;
        }
        match &self.failed {
            Some(reason) => {
                self.shared.release(batch.frame_bytes());
                let _ = done.send(Err(JournalError::Poisoned(reason.clone())));
            }
            None => self.pending.push(Pending { first_seq, done }),
        }
    }

    /// Write and fsync the staged frames, publish them, resolve their appends.
    /// A batch only completes in the commit after its last record is
    /// staged; a commit in the middle of a batch (a segment roll) writes its
    /// first records without completing it.
    fn commit(&mut self) {
        if self.pending.is_empty() && self.staged.is_empty() {
            return;
        }
        if self.failed.is_none() && !self.staged.is_empty() {
            if let Err(error) = self.write_and_sync() {
                self.fail(self.active_first, &error);
            }
        }
        let written = self.staged_bytes;
        self.staged.clear();
        self.staged_bytes = 0;
        match &self.failed {
            None => {
                if written > 0 {
                    self.active_len += written;
                    self.shared.grew(written, true);
                    if let Some(last) = self.shared.segments().last_mut() {
                        last.len = self.active_len;
                    }
                    self.publish();
                }
                for p in self.pending.drain(..) {
                    let _ = p.done.send(Ok(p.first_seq));
                }
            }
            Some(reason) => {
                // Staged frames are exactly the bytes reserved and not written.
                self.shared.release(written);
                for p in self.pending.drain(..) {
                    let _ = p.done.send(Err(JournalError::Poisoned(reason.clone())));
                }
            }
        }
    }

    /// One write and one `fdatasync` per `max_batch` bytes (a batch is at most
    /// that, unless one record alone is larger: then it goes in several).
    fn write_and_sync(&mut self) -> io::Result<()> {
        let staged = std::mem::take(&mut self.staged);
        let result = self.write_staged(&staged);
        self.staged = staged;
        result
    }

    fn write_staged(&mut self, staged: &[Vec<u8>]) -> io::Result<()> {
        let chunk = usize::try_from(self.shared.cfg.max_batch.bytes()).unwrap_or(usize::MAX).max(1);
        let mut parts = staged.iter().map(Vec::as_slice).filter(|b| !b.is_empty());
        let mut part = parts.next();
        let mut slices = Vec::with_capacity(staged.len());
        while part.is_some() {
            // Up to `chunk` bytes, gathered from the staged batches in order.
            slices.clear();
            let mut room = chunk;
            while let Some(bytes) = part.filter(|_| room > 0) {
                let (now, later) = bytes.split_at(bytes.len().min(room));
                slices.push(IoSlice::new(now));
                room -= now.len();
                part = if later.is_empty() { parts.next() } else { Some(later) };
            }
            self.write_chunk(&mut slices)?;
            self.file.sync_data()?;
            self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Write one chunk after the last record: directly if the segment is
    /// written so, else (or if the filesystem refuses the alignment) with
    /// a buffered gathered write at the same offset.
    fn write_chunk(&mut self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        if let Some(d) = &mut self.direct {
            if d.write(slices)? {
                return Ok(());
            }
            let end = d.end();
            let path = segment::path(&self.shared.dir, self.active_first);
            tracing::info!(path = %path.display(), "The filesystem refused an aligned direct write; writing this journal segment through the page cache.");
            self.direct = None;
            // Direct writes do not move the buffered handle's position.
            self.file.seek(SeekFrom::Start(end))?;
        }
        write_all_gathered(&mut self.file, slices)
    }

    /// Close the active segment and start one at `next_seq`: the prepared
    /// one if there is one (waiting for its preparation), else one prepared
    /// now, else a growing one.
    fn roll(&mut self) -> io::Result<()> {
        let window = u32::try_from(self.shared.cfg.max_batch.bytes()).unwrap_or(u32::MAX);
        if self.preallocated {
            // Readers and recovery take a sealed segment's file length as its end.
            self.seal()?;
        }
        let prepared = match self.next.take() {
            Some(p) => p.finish(),
            None if self.shared.preallocate => prealloc::prepare_now(&self.shared.dir, &self.shared.cfg),
            None => None,
        };
        (self.file, self.preallocated) = prealloc::create(&self.shared.dir, prepared, self.next_seq, window)?;
        self.active_first = self.next_seq;
        self.active_len = segment::EMPTY_LEN;
        self.open_direct();
        self.shared.segments().push(SegmentInfo { first_seq: self.next_seq, len: segment::EMPTY_LEN });
        self.shared.grew(segment::EMPTY_LEN, false);
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        // Called once every staged record is written: all of them are committed.
        let (next_seq, active_first, active_len) = (self.next_seq, self.active_first, self.active_len);
        self.shared.committed.send_modify(|c| {
            c.next_seq = next_seq;
            c.active_first = active_first;
            c.active_len = active_len;
        });
    }

    /// Stop writing for good after an error on the segment `segment_first`.
    fn fail(&mut self, segment_first: u64, error: &io::Error) {
        let path = segment::path(&self.shared.dir, segment_first);
        tracing::error!(path = %path.display(), %error, "Journal write failed; appends are refused until the journal is reopened.");
        self.failed = Some(format!("{}: {error}", path.display()));
    }

    fn refuse(&self, req: Request) {
        match req {
            Request::Append { batch, done } => {
                self.shared.release(batch.frame_bytes());
                let _ = done.send(Err(JournalError::Closed));
            }
            Request::Shutdown { done } => {
                let _ = done.send(());
            }
        }
    }
}

/// Write every byte of `slices` (emptied on the way) with as few `writev`
/// calls as the kernel takes.
fn write_all_gathered(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the journal segment took no bytes")),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
