//! Kafka record batches (magic 2) read back: the decoder of the `records`
//! of one partition in a Fetch response, for iotpipe's own consumer. The
//! counterpart of `batch.rs`, the producer's encoder.
//!
//! Every byte comes from the network: lengths and counts are checked
//! against the bytes that are there before anything is sliced, nothing is
//! allocated according to a length the batch declares, and a compressed
//! records section is decompressed into a reused scratch buffer, cut off
//! at the caller's bound. A batch is checked whole (CRC-32C, then every
//! record) before its first record is handed out, so a bad batch hands out
//! nothing; the ones before it have been.
//!
//! Transactions follow the Java consumer (`read_committed`): a producer id
//! is aborted from the first batch that reaches the `first_offset` of an
//! aborted transaction of its, until its ABORT marker; its transactional
//! data batches in between are skipped. Control batches are never handed out.

use super::codec_error::CodecError;
use super::lz4;
use std::collections::HashSet;
use std::fmt;
use std::io::Read;

/// Bytes of the batch header before the records section.
const HEADER_LEN: usize = 61;
/// Base offset and batch length: the bytes `batchLength` does not count.
const PREFIX_LEN: usize = 12;
/// Where the magic byte is, the same in every message format.
const MAGIC_AT: usize = 16;
/// Where the CRC-covered part starts (`attributes`).
const CRC_FROM: usize = 21;

const CODEC_MASK: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// The largest zstd window accepted, the Java consumer's (zstd's default
/// limit, 128 MiB): a producer at compression level 22 needs it. The
/// window is address space; the pages written are bounded by the output,
/// which `max_decompressed` cuts off.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// The start of a snappy section in xerial's framing (Java producers);
/// then two i32 versions, then blocks each behind its i32 length.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;

/// One record, borrowed from the (possibly decompressed) batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: i64,
    /// Epoch ms: the batch's max timestamp for LogAppendTime batches (attribute bit 3), else first_timestamp + delta.
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Header (key, value) pairs; a null header value is None.
    pub headers: Headers<'a>,
}

/// A record's headers, read lazily from its bytes (checked when the record
/// was read, so iterating cannot fail).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Headers<'a> {
    raw: &'a [u8],
    count: usize,
}

impl<'a> Headers<'a> {
    /// The (key, value) pairs in order; a null value is `None`.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
        let mut r = Reader::new(self.raw);
        (0..self.count).map_while(move |_| header(&mut r).ok())
    }

    pub fn len(&self) -> usize {
        self.count
    }
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Why a batch could not be read; `base_offset` says which.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("record batch at offset {base_offset} fails its CRC-32C check")]
    Crc { base_offset: i64 },
    #[error(
        "record batch at offset {base_offset} has message format v{magic}; this consumer reads v2 (Kafka 0.11 and later)"
    )]
    Magic { base_offset: i64, magic: i8 },
    #[error(
        "record batch at offset {base_offset} names compression codec {codec}; known are 0 (none), 1 (gzip), 2 (snappy), 3 (lz4) and 4 (zstd)"
    )]
    Compression { base_offset: i64, codec: u8 },
    #[error("record batch at offset {base_offset}: its {codec} records do not decompress: {detail}")]
    Decompress { base_offset: i64, codec: &'static str, detail: String },
    #[error("record batch at offset {base_offset} decompresses to more than {limit} bytes")]
    TooLarge { base_offset: i64, limit: usize },
    #[error("record batch at offset {base_offset} is malformed: {detail}")]
    Malformed { base_offset: i64, detail: &'static str },
}

/// What one partition's records section held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The offset to fetch next: one past the last record of the last COMPLETE batch
    /// (base_offset + last_offset_delta + 1), including batches that were skipped
    /// (control batches, aborted transactional batches, records below `from`);
    /// `from` itself when no complete batch was there.
    pub next_offset: i64,
    /// Records handed to the callback.
    pub records: usize,
    /// True when the section ended in a partial batch (normal: the broker cuts at max bytes).
    pub truncated: bool,
}

/// Scratch buffers kept between calls (decompression output), so a steady consumer does not allocate per batch.
#[derive(Default)]
pub struct Decoder {
    /// Decompressed records sections.
    scratch: Vec<u8>,
    /// zstd's context, with its window buffers.
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
    /// This call's aborted transactions not reached yet, the lowest first offset last.
    pending: Vec<(i64, i64)>,
    /// Producer ids in an aborted transaction at the current batch.
    aborting: HashSet<i64>,
}

impl Decoder {
    /// Decode `section`, calling `each` for every data record with offset >= `from`, in order.
    /// `aborted` is the Fetch response's aborted-transactions list `(producer_id, first_offset)`
    /// (read_committed isolation): transactional data batches of an aborted transaction are skipped,
    /// with the Java consumer's algorithm (a producer id becomes "aborted" once a batch's last offset
    /// reaches the entry's first_offset; its ABORT control batch (control record key type 0) ends that).
    /// Control batches (attribute bit 5) are never handed out.
    /// `max_decompressed` bounds one batch's decompressed size (larger → BatchError::TooLarge).
    /// On an error in batch N, the batches before N have already been handed to `each`;
    /// the error says which batch (base_offset), and the caller will not advance past it.
    pub fn decode(
        &mut self,
        section: &[u8],
        from: i64,
        aborted: &[(i64, i64)],
        max_decompressed: usize,
        mut each: impl FnMut(Record<'_>),
    ) -> Result<Decoded, BatchError> {
        self.pending.clear();
        self.pending.extend_from_slice(aborted);
        self.pending.sort_unstable_by_key(|&(_, first)| std::cmp::Reverse(first));
        self.aborting.clear();
        // Records below it are not handed out: `from`, then past every
        // complete batch, so no record is handed out twice or out of order.
        let mut out = Decoded { next_offset: from, records: 0, truncated: false };
        let mut rest = section;
        while !rest.is_empty() {
            let Some((batch, after)) = split_batch(rest)? else {
                out.truncated = true;
                break;
            };
            rest = after;
            if !self.skipped(&batch, max_decompressed)? && batch.end > out.next_offset {
                let data = payload(&mut self.scratch, &mut self.zstd, &batch, max_decompressed)?;
                check_records(data, &batch).map_err(|d| batch.malformed(d))?;
                out.records += emit(data, &batch, out.next_offset, &mut each).map_err(|d| batch.malformed(d))?;
            }
            out.next_offset = out.next_offset.max(batch.end);
        }
        Ok(out)
    }

    /// Whether the batch is not handed out (control, or data of an aborted
    /// transaction), keeping the aborted producers up to date.
    fn skipped(&mut self, batch: &Batch<'_>, max_decompressed: usize) -> Result<bool, BatchError> {
        let control = batch.attributes & CONTROL != 0;
        if batch.producer_id < 0 || (self.pending.is_empty() && self.aborting.is_empty()) {
            return Ok(control);
        }
        while let Some(&(producer_id, first_offset)) = self.pending.last() {
            if first_offset >= batch.end {
                break;
            }
            self.pending.pop();
            self.aborting.insert(producer_id);
        }
        if !self.aborting.contains(&batch.producer_id) {
            return Ok(control);
        }
        if control {
            let data = payload(&mut self.scratch, &mut self.zstd, batch, max_decompressed)?;
            check_records(data, batch).map_err(|d| batch.malformed(d))?;
            if is_abort_marker(data).map_err(|d| batch.malformed(d))? {
                self.aborting.remove(&batch.producer_id);
            }
            return Ok(true);
        }
        Ok(batch.attributes & TRANSACTIONAL != 0)
    }
}

/// One complete batch whose magic and CRC are good.
struct Batch<'a> {
    base_offset: i64,
    /// One past its last offset.
    end: i64,
    last_offset_delta: i32,
    attributes: i16,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    record_count: i32,
    /// The records section as sent (compressed or not).
    records: &'a [u8],
}

impl Batch<'_> {
    fn malformed(&self, detail: &'static str) -> BatchError {
        BatchError::Malformed { base_offset: self.base_offset, detail }
    }
}

/// The first batch of `rest` and what follows it; `None` when the batch is
/// not all there.
fn split_batch(rest: &[u8]) -> Result<Option<(Batch<'_>, &[u8])>, BatchError> {
    let mut r = Reader::new(rest);
    let (Some(base_offset), Some(batch_len)) = (r.i64(), r.i32()) else {
        return Ok(None);
    };
    let malformed = |detail| BatchError::Malformed { base_offset, detail };
    if let Some(&magic) = rest.get(MAGIC_AT) {
        if magic != 2 {
            return Err(BatchError::Magic { base_offset, magic: magic as i8 });
        }
    }
    let len = usize::try_from(batch_len).ok().filter(|&n| n >= HEADER_LEN - PREFIX_LEN);
    let len = len.ok_or(malformed("its length is shorter than a batch header"))?;
    let Some((whole, after)) = rest.split_at_checked(PREFIX_LEN + len) else {
        return Ok(None);
    };
    let mut r = Reader::new(whole);
    r.skip(MAGIC_AT + 1);
    let crc = r.u32().ok_or(malformed("the header is cut short"))?;
    if whole.get(CRC_FROM..).map(crc32c::crc32c) != Some(crc) {
        return Err(BatchError::Crc { base_offset });
    }
    let header =
        (|| Some((r.i16()?, r.i32()?, r.i64()?, r.i64()?, r.i64()?, r.i16()?, r.i32()?, r.i32()?, r.rest())))();
    let Some((attributes, last_offset_delta, first_timestamp, max_timestamp, producer_id, _, _, count, records)) =
        header
    else {
        return Err(malformed("the header is cut short"));
    };
    if base_offset < 0 {
        return Err(malformed("its base offset is negative"));
    }
    if last_offset_delta < 0 || count < 0 {
        return Err(malformed("its last offset delta or record count is negative"));
    }
    let end = base_offset.checked_add(i64::from(last_offset_delta) + 1).ok_or(malformed("its offsets overflow"))?;
    let batch = Batch {
        base_offset,
        end,
        last_offset_delta,
        attributes,
        first_timestamp,
        max_timestamp,
        producer_id,
        record_count: count,
        records,
    };
    Ok(Some((batch, after)))
}

/// The batch's records section uncompressed: its own bytes, or `scratch`
/// holding them decompressed.
fn payload<'s>(
    scratch: &'s mut Vec<u8>,
    zstd: &mut Option<zstd::zstd_safe::DCtx<'static>>,
    batch: &Batch<'s>,
    limit: usize,
) -> Result<&'s [u8], BatchError> {
    let base_offset = batch.base_offset;
    let codec = (batch.attributes & CODEC_MASK) as u8;
    let name = match codec {
        0 => return Ok(batch.records),
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => return Err(BatchError::Compression { base_offset, codec }),
    };
    let input = batch.records;
    let done = if codec == 3 {
        // Not cleared: the lz4 reader keeps the buffer's length (see lz4.rs).
        lz4::decompress(input, limit, scratch)
    } else {
        scratch.clear();
        match codec {
            1 => read_bounded(flate2::read::MultiGzDecoder::new(input), limit, scratch),
            2 => snappy(input, limit, scratch),
            _ => zstd_into(input, limit, scratch, zstd),
        }
        .map(|()| scratch.len())
    };
    match done {
        Ok(n) if n <= limit => Ok(&scratch[..n]),
        Ok(_) | Err(CodecError::TooLarge) => Err(BatchError::TooLarge { base_offset, limit }),
        Err(CodecError::Failed(detail)) => Err(BatchError::Decompress { base_offset, codec: name, detail }),
    }
}

/// Everything `r` yields into `out`, up to one byte past `limit` (which
/// the caller takes as too large).
fn read_bounded(r: impl Read, limit: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    r.take(cap).read_to_end(out)?;
    Ok(())
}

/// zstd through the kept context (its window buffers are reused).
fn zstd_into(
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
    ctx: &mut Option<zstd::zstd_safe::DCtx<'static>>,
) -> Result<(), CodecError> {
    if ctx.is_none() {
        let mut new = zstd::zstd_safe::DCtx::try_create().ok_or("no memory for a zstd context")?;
        new.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
            .map_err(zstd::zstd_safe::get_error_name)?;
        *ctx = Some(new);
    }
    let ctx = ctx.as_mut().ok_or("no zstd context")?;
    let op = zstd::stream::raw::Decoder::with_context(ctx);
    read_bounded(zstd::stream::zio::Reader::new(input, op), limit, out)
}

/// Snappy as Kafka writes it: xerial's framing (Java) or one raw block
/// (librdkafka). Each block's declared size is checked against `limit`
/// before anything is allocated for it.
fn snappy(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    if !input.starts_with(&XERIAL_MAGIC) {
        return snappy_block(input, limit, out);
    }
    let mut r = Reader::new(input.get(XERIAL_HEADER_LEN..).ok_or("the xerial header is cut short")?);
    while !r.is_empty() {
        let len = r.i32().ok_or("a xerial block length is cut short")?;
        let block = usize::try_from(len).ok().and_then(|n| r.take(n));
        snappy_block(block.ok_or("a xerial block length is negative or past the end")?, limit, out)?;
    }
    Ok(())
}

fn snappy_block(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    let len = snap::raw::decompress_len(block)?;
    if len > limit.saturating_sub(start) {
        return Err(CodecError::TooLarge);
    }
    out.resize(start + len, 0);
    let dst = out.get_mut(start..).unwrap_or_default();
    let n = snap::raw::Decoder::new().decompress(block, dst)?;
    out.truncate(start + n);
    Ok(())
}

/// A record, as read.
struct Raw<'a> {
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Headers<'a>,
}

/// That the records section holds exactly `record_count` well-formed
/// records, with offset deltas increasing within the batch's range.
fn check_records(data: &[u8], batch: &Batch<'_>) -> Result<(), &'static str> {
    let mut r = Reader::new(data);
    let mut previous = -1i32;
    for _ in 0..batch.record_count {
        if r.is_empty() {
            return Err("it holds fewer records than its record count");
        }
        let rec = record(&mut r)?;
        if rec.offset_delta <= previous || rec.offset_delta > batch.last_offset_delta {
            return Err("its record offsets are out of order or past its last offset delta");
        }
        previous = rec.offset_delta;
    }
    if !r.is_empty() {
        return Err("bytes follow its last record (more records than its record count?)");
    }
    Ok(())
}

/// Hands the records at or past `floor` to `each`; the section was checked.
fn emit(data: &[u8], batch: &Batch<'_>, floor: i64, each: &mut impl FnMut(Record<'_>)) -> Result<usize, &'static str> {
    let log_append = batch.attributes & LOG_APPEND_TIME != 0;
    let mut r = Reader::new(data);
    let mut n = 0;
    for _ in 0..batch.record_count {
        let rec = record(&mut r)?;
        let offset = batch.base_offset + i64::from(rec.offset_delta);
        if offset < floor {
            continue;
        }
        let timestamp_ms =
            if log_append { batch.max_timestamp } else { batch.first_timestamp.saturating_add(rec.timestamp_delta) };
        each(Record { offset, timestamp_ms, key: rec.key, value: rec.value, headers: rec.headers });
        n += 1;
    }
    Ok(n)
}

/// Whether a control batch's (checked) records section starts with an
/// ABORT marker: a key of version i16 and type i16, type 0.
fn is_abort_marker(data: &[u8]) -> Result<bool, &'static str> {
    if data.is_empty() {
        return Ok(false);
    }
    let key = record(&mut Reader::new(data))?.key.unwrap_or_default();
    let mut k = Reader::new(key);
    match (k.i16(), k.i16()) {
        (Some(version), Some(kind)) if version >= 0 => Ok(kind == 0),
        _ => Err("a control record's key is not a version and a type"),
    }
}

fn record<'a>(r: &mut Reader<'a>) -> Result<Raw<'a>, &'static str> {
    let len = usize::try_from(r.varint()?).map_err(|_| "a record length is negative")?;
    let body = r.take(len).ok_or("a record runs past the end of its batch")?;
    let mut b = Reader::new(body);
    b.take(1).ok_or("a record ends inside its fields")?; // attributes, unused
    let timestamp_delta = b.varlong()?;
    let offset_delta = b.varint()?;
    let key = b.nullable()?;
    let value = b.nullable()?;
    let count = usize::try_from(b.varint()?).map_err(|_| "a header count is negative")?;
    // A header takes at least its two lengths.
    if count > b.remaining() / 2 {
        return Err("a header count is larger than its record");
    }
    let raw = b.rest_slice();
    for _ in 0..count {
        header(&mut b)?;
    }
    if !b.is_empty() {
        return Err("a record is longer than its fields");
    }
    Ok(Raw { timestamp_delta, offset_delta, key, value, headers: Headers { raw, count } })
}

fn header<'a>(r: &mut Reader<'a>) -> Result<(&'a [u8], Option<&'a [u8]>), &'static str> {
    let key = r.nullable()?.ok_or("a header key is null")?;
    Ok((key, r.nullable()?))
}

/// Reads from a slice, never past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn rest_slice(&self) -> &'a [u8] {
        self.buf
    }

    /// All that is left.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.buf.split_at_checked(n)?;
        self.buf = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) {
        self.buf = self.buf.get(n..).unwrap_or_default();
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn i16(&mut self) -> Option<i16> {
        self.array().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_be_bytes)
    }

    /// An unsigned LEB128 of at most `max` bytes.
    fn unsigned(&mut self, max: usize) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for i in 0..max {
            let (&byte, tail) = self.buf.split_first().ok_or("a varint runs past the end")?;
            self.buf = tail;
            v |= u64::from(byte & 0x7F) << (7 * i);
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint is longer than its type allows")
    }

    /// A zigzag varint (32-bit, at most 5 bytes).
    fn varint(&mut self) -> Result<i32, &'static str> {
        let u = u32::try_from(self.unsigned(5)?).map_err(|_| "a varint is out of range")?;
        Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
    }

    /// A zigzag varlong (64-bit, at most 10 bytes).
    fn varlong(&mut self) -> Result<i64, &'static str> {
        let u = self.unsigned(10)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A length-prefixed byte string; length -1 is null.
    fn nullable(&mut self) -> Result<Option<&'a [u8]>, &'static str> {
        match self.varint()? {
            -1 => Ok(None),
            n => {
                let n = usize::try_from(n).map_err(|_| "a length is below -1")?;
                self.take(n).map(Some).ok_or("a key or value runs past the end of its record")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::batch::{Compression, Encoder, Producer};
    use super::*;
    use crate::record::headers::{encode_record, HeaderList, RecordMeta};
    use crate::record::{Outbound, RecordId};
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;
    use std::io::Write;

    const MIB: usize = 1 << 20;

    /// A record as handed out, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Got {
        offset: i64,
        ts: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    }

    impl From<Record<'_>> for Got {
        fn from(r: Record<'_>) -> Self {
            assert_eq!(r.headers.iter().count(), r.headers.len());
            Got {
                offset: r.offset,
                ts: r.timestamp_ms,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers: r.headers.iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect(),
            }
        }
    }

    fn decode_all(
        section: &[u8],
        from: i64,
        aborted: &[(i64, i64)],
        limit: usize,
    ) -> (Vec<Got>, Result<Decoded, BatchError>) {
        let mut got = Vec::new();
        let res = Decoder::default().decode(section, from, aborted, limit, |r| got.push(Got::from(r)));
        (got, res)
    }

    fn ok(section: &[u8], from: i64) -> (Vec<Got>, Decoded) {
        let (got, res) = decode_all(section, from, &[], MIB);
        let d = res.unwrap();
        assert_eq!(d.records, got.len());
        (got, d)
    }

    fn out(key: Option<&str>, value: &str, ts: i64, headers: bool) -> Outbound {
        let id = RecordId::derive(None, ts, "t", value.as_bytes());
        let headers = if headers {
            encode_record(&RecordMeta {
                tenant_id: "acme",
                project_id: "p1",
                device_id: value,
                mqtt_topic: "a/b",
                id,
                received_ms: ts,
                event_ms: None,
            })
        } else {
            HeaderList::default()
        };
        Outbound {
            id,
            topic: "t".into(),
            key: key.map(String::from),
            value: Bytes::from(value.to_string()),
            headers,
            timestamp_ms: ts,
            reason: None,
        }
    }

    /// What the decoder should hand out for `records` at `base`.
    fn expect(records: &[Outbound], base: i64) -> Vec<Got> {
        (0..)
            .zip(records)
            .map(|(i, o)| Got {
                offset: base + i,
                ts: o.timestamp_ms,
                key: o.key.as_ref().map(|k| k.as_bytes().to_vec()),
                value: Some(o.value.to_vec()),
                headers: o.headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))).collect(),
            })
            .collect()
    }

    /// One batch from the producer's encoder, at `base`.
    fn encoded(records: &[Outbound], compression: Compression, base: i64) -> Vec<u8> {
        let mut dst = BytesMut::new();
        let producer = Producer { id: -1, epoch: -1, base_sequence: -1 };
        Encoder::default().encode(&mut dst, records.iter(), compression, producer).unwrap();
        dst[..8].copy_from_slice(&base.to_be_bytes());
        dst.to_vec()
    }

    fn put_varint(buf: &mut Vec<u8>, v: i64) {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        while u >= 0x80 {
            buf.push((u as u8) | 0x80);
            u >>= 7;
        }
        buf.push(u as u8);
    }

    fn put_bytes(buf: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                put_varint(buf, b.len() as i64);
                buf.extend_from_slice(b);
            }
            None => put_varint(buf, -1),
        }
    }

    /// A record for the test builder.
    #[derive(Debug, Clone)]
    struct TRec {
        ts_delta: i64,
        offset_delta: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    }

    fn trec(offset_delta: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> TRec {
        TRec {
            ts_delta: offset_delta * 10,
            offset_delta,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        }
    }

    fn put_trec(buf: &mut Vec<u8>, r: &TRec) {
        let mut body = vec![0u8];
        put_varint(&mut body, r.ts_delta);
        put_varint(&mut body, r.offset_delta);
        put_bytes(&mut body, r.key.as_deref());
        put_bytes(&mut body, r.value.as_deref());
        put_varint(&mut body, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_bytes(&mut body, Some(k));
            put_bytes(&mut body, v.as_deref());
        }
        put_varint(buf, body.len() as i64);
        buf.extend_from_slice(&body);
    }

    fn plain_section(records: &[TRec]) -> Vec<u8> {
        let mut s = Vec::new();
        for r in records {
            put_trec(&mut s, r);
        }
        s
    }

    /// The test's own batch writer: header fields as given, CRC computed.
    struct Spec {
        base: i64,
        attributes: i16,
        last_offset_delta: i32,
        count: i32,
        first_ts: i64,
        max_ts: i64,
        producer_id: i64,
    }

    impl Spec {
        fn new(base: i64, records: &[TRec]) -> Self {
            let last = records.iter().map(|r| r.offset_delta).max().unwrap_or(0);
            Spec {
                base,
                attributes: 0,
                last_offset_delta: last as i32,
                count: records.len() as i32,
                first_ts: 1_000,
                max_ts: 1_000 + last * 10,
                producer_id: -1,
            }
        }

        fn build(&self, section: &[u8]) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&self.base.to_be_bytes());
            b.extend_from_slice(&((HEADER_LEN - 12 + section.len()) as i32).to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.push(2);
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&self.attributes.to_be_bytes());
            b.extend_from_slice(&self.last_offset_delta.to_be_bytes());
            b.extend_from_slice(&self.first_ts.to_be_bytes());
            b.extend_from_slice(&self.max_ts.to_be_bytes());
            b.extend_from_slice(&self.producer_id.to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&0i32.to_be_bytes());
            b.extend_from_slice(&self.count.to_be_bytes());
            b.extend_from_slice(section);
            fix_crc(&mut b);
            b
        }
    }

    fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn snappy_raw(b: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(b).unwrap()
    }

    /// xerial's framing, in blocks of `block` bytes.
    fn snappy_xerial(b: &[u8], block: usize) -> Vec<u8> {
        let mut s = XERIAL_MAGIC.to_vec();
        s.extend_from_slice(&1i32.to_be_bytes());
        s.extend_from_slice(&1i32.to_be_bytes());
        for chunk in b.chunks(block) {
            let c = snappy_raw(chunk);
            s.extend_from_slice(&(c.len() as i32).to_be_bytes());
            s.extend_from_slice(&c);
        }
        s
    }

    fn lz4(b: &[u8]) -> Vec<u8> {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn malformed(res: Result<Decoded, BatchError>, base: i64) -> &'static str {
        match res {
            Err(BatchError::Malformed { base_offset, detail }) if base_offset == base => detail,
            other => panic!("expected Malformed at {base}, got {other:?}"),
        }
    }

    #[test]
    fn encoder_batches_round_trip() {
        let mut section = Vec::new();
        let mut want = Vec::new();
        let mut base = 100;
        for (i, c) in [Compression::None, Compression::Lz4, Compression::Zstd].into_iter().enumerate() {
            let records: Vec<Outbound> = (0..50)
                .map(|n| {
                    let key = (n % 3 != 0).then(|| format!("dev-{n}"));
                    out(key.as_deref(), &format!("{{\"batch\":{i},\"n\":{n}}}"), 1_700_000_000_000 + n * 7, n % 2 == 0)
                })
                .collect();
            section.extend(encoded(&records, c, base));
            want.extend(expect(&records, base));
            base += 50;
        }
        let (got, d) = ok(&section, 100);
        assert_eq!(got, want);
        assert_eq!(d, Decoded { next_offset: 250, records: 150, truncated: false });
        assert!(got
            .iter()
            .any(|g| g.headers.len() == 6 && g.headers[0] == (b"tenant_id".to_vec(), Some(b"acme".to_vec()))));
        assert!(got.iter().any(|g| g.key.is_none()));
        // The same decoder again, its scratch buffers reused.
        let mut dec = Decoder::default();
        for _ in 0..2 {
            let mut n = 0;
            let d = dec.decode(&section, 0, &[], MIB, |_| n += 1).unwrap();
            assert_eq!((n, d.next_offset), (150, 250));
        }
    }

    #[test]
    fn gzip_and_snappy_batches() {
        let mut records: Vec<TRec> = (0..40)
            .map(|i| trec(i, Some(format!("k{i}").as_bytes()), Some(format!("value number {i}").as_bytes())))
            .collect();
        records[3].value = None;
        records[4].key = None;
        records[5].headers = vec![(b"h1".to_vec(), Some(b"v1".to_vec())), (b"h2".to_vec(), None)];
        let plain = plain_section(&records);
        let spec = |base, codec| Spec { attributes: codec, ..Spec::new(base, &records) };
        let mut section = spec(0, 1).build(&gzip(&plain));
        section.extend(spec(40, 2).build(&snappy_raw(&plain)));
        section.extend(spec(80, 2).build(&snappy_xerial(&plain, 100)));
        section.extend(spec(120, 0).build(&plain));
        let (got, d) = ok(&section, 0);
        assert_eq!(d, Decoded { next_offset: 160, records: 160, truncated: false });
        for (batch, base) in [0i64, 40, 80, 120].into_iter().enumerate() {
            let g = &got[batch * 40..(batch + 1) * 40];
            for (i, r) in (0..).zip(g) {
                assert_eq!(r.offset, base + i);
                assert_eq!(r.ts, 1_000 + i * 10);
                assert_eq!(r.key, records[i as usize].key);
                assert_eq!(r.value, records[i as usize].value);
                assert_eq!(r.headers, records[i as usize].headers);
            }
        }
        assert_eq!(got[5].headers[1], (b"h2".to_vec(), None), "a null header value is None");
        assert_eq!(got[3].value, None);
        assert_eq!(got[4].key, None);
    }

    #[test]
    fn from_inside_a_batch_skips_the_records_before_it() {
        let records: Vec<Outbound> = (0..5).map(|n| out(Some("k"), &format!("v{n}"), 10 + n, false)).collect();
        let mut section = encoded(&records, Compression::None, 100);
        section.extend(encoded(&records, Compression::Lz4, 105));
        let (got, d) = ok(&section, 102);
        assert_eq!(got.iter().map(|g| g.offset).collect::<Vec<_>>(), (102..110).collect::<Vec<_>>());
        assert_eq!(got[0], expect(&records, 100)[2]);
        assert_eq!(d, Decoded { next_offset: 110, records: 8, truncated: false });
        // Past all of it: nothing, and still past the batches.
        let (got, d) = ok(&section, 107);
        assert_eq!(got.len(), 3);
        assert_eq!(d.next_offset, 110);
        let (got, d) = ok(&section, 500);
        assert!(got.is_empty());
        assert_eq!(d.next_offset, 500);
    }

    #[test]
    fn a_partial_last_batch_is_truncation_not_an_error() {
        let records: Vec<Outbound> = (0..3).map(|n| out(None, &format!("v{n}"), n, true)).collect();
        let first = encoded(&records, Compression::None, 7);
        let second = encoded(&records, Compression::Zstd, 10);
        let third = encoded(&records, Compression::None, 13);
        let mut section = [first.clone(), second.clone(), third.clone()].concat();
        section.truncate(section.len() - 1);
        let (got, d) = ok(&section, 7);
        assert_eq!(got.len(), 6);
        assert_eq!(d, Decoded { next_offset: 13, records: 6, truncated: true });
        for cut in [1, 11, 12, 16, 17, 60, 61, third.len() - 1] {
            let (got, d) = ok(&third[..cut], 13);
            assert!(got.is_empty(), "cut {cut}");
            assert_eq!(d, Decoded { next_offset: 13, records: 0, truncated: true }, "cut {cut}");
        }
        let (_, d) = ok(&[], 13);
        assert_eq!(d, Decoded { next_offset: 13, records: 0, truncated: false });
    }

    #[test]
    fn a_crc_mismatch_names_its_batch_after_the_earlier_ones() {
        let records: Vec<Outbound> = (0..4).map(|n| out(Some("k"), &format!("v{n}"), n, false)).collect();
        let mut bad = encoded(&records, Compression::None, 4);
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let section = [encoded(&records, Compression::None, 0), bad, encoded(&records, Compression::None, 8)].concat();
        let (got, res) = decode_all(&section, 0, &[], MIB);
        assert!(matches!(res, Err(BatchError::Crc { base_offset: 4 })), "{res:?}");
        assert_eq!(got, expect(&records, 0));
        assert_eq!(res.unwrap_err().to_string(), "record batch at offset 4 fails its CRC-32C check");
    }

    #[test]
    fn old_formats_and_unknown_codecs_are_named() {
        let records: Vec<Outbound> = (0..2).map(|n| out(Some("k"), "v", n, false)).collect();
        let mut v1 = encoded(&records, Compression::None, 3);
        v1[16] = 1;
        let (_, res) = decode_all(&v1, 0, &[], MIB);
        let e = res.unwrap_err();
        assert!(matches!(e, BatchError::Magic { base_offset: 3, magic: 1 }), "{e:?}");
        assert!(e.to_string().contains("v1; this consumer reads v2"), "{e}");
        // A legacy message is shorter than a v2 header: still the magic.
        let legacy =
            [&3i64.to_be_bytes()[..], &14i32.to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]]
                .concat();
        assert!(matches!(decode_all(&legacy, 0, &[], MIB).1, Err(BatchError::Magic { magic: 0, .. })));

        let plain = plain_section(&[trec(0, None, Some(b"x"))]);
        let spec = Spec { attributes: 7, ..Spec::new(9, &[trec(0, None, None)]) };
        let (_, res) = decode_all(&spec.build(&plain), 0, &[], MIB);
        assert!(matches!(res, Err(BatchError::Compression { base_offset: 9, codec: 7 })), "{res:?}");
    }

    #[test]
    fn corrupt_compressed_sections_fail_to_decompress() {
        let records: Vec<Outbound> = (0..20).map(|n| out(Some("k"), &format!("value {n}"), n, false)).collect();
        let mut lz = encoded(&records, Compression::Lz4, 5);
        lz[HEADER_LEN] ^= 0xFF; // the frame's magic number
        fix_crc(&mut lz);
        let (got, res) = decode_all(&lz, 0, &[], MIB);
        assert!(got.is_empty());
        assert!(matches!(res, Err(BatchError::Decompress { base_offset: 5, codec: "lz4", .. })), "{res:?}");
        // Cut short inside the frame.
        let mut short = encoded(&records, Compression::Zstd, 5);
        let cut_section = short[HEADER_LEN..short.len() - 4].to_vec();
        short = Spec { attributes: 4, ..Spec::new(5, &[trec(19, None, None)]) }.build(&cut_section);
        let (_, res) = decode_all(&short, 0, &[], MIB);
        assert!(matches!(res, Err(BatchError::Decompress { codec: "zstd", .. })), "{res:?}");
        for (codec, section) in [(1i16, b"not gzip".to_vec()), (2, vec![0xFF; 8]), (2, XERIAL_MAGIC.to_vec())] {
            let batch = Spec { attributes: codec, ..Spec::new(0, &[trec(0, None, None)]) }.build(&section);
            let (_, res) = decode_all(&batch, 0, &[], MIB);
            assert!(matches!(res, Err(BatchError::Decompress { .. })), "codec {codec}: {res:?}");
        }
    }

    #[test]
    fn decompression_bombs_are_cut_off() {
        let zeros = vec![0u8; 10 * MIB];
        let rec = [trec(0, None, None)];
        for (codec, section) in [
            (4i16, zstd::bulk::compress(&zeros, 3).unwrap()),
            (3, lz4(&zeros)),
            (1, gzip(&zeros)),
            (2, snappy_raw(&zeros)),
            (2, snappy_xerial(&zeros, 64 * 1024)),
        ] {
            assert!(section.len() < MIB, "codec {codec}");
            let batch = Spec { attributes: codec, ..Spec::new(11, &rec) }.build(&section);
            let (_, res) = decode_all(&batch, 0, &[], MIB);
            assert!(matches!(res, Err(BatchError::TooLarge { base_offset: 11, limit: MIB })), "codec {codec}: {res:?}");
        }
        // A raw snappy block declaring 2 GiB is refused before anything is allocated.
        let lying = [0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x00];
        let batch = Spec { attributes: 2, ..Spec::new(0, &rec) }.build(&lying);
        assert!(matches!(decode_all(&batch, 0, &[], MIB).1, Err(BatchError::TooLarge { .. })));
        // Just at the limit is fine.
        let plain = plain_section(&[trec(0, None, Some(&vec![7u8; 1000]))]);
        let batch = Spec { attributes: 4, ..Spec::new(0, &rec) }.build(&zstd::bulk::compress(&plain, 3).unwrap());
        assert_eq!(decode_all(&batch, 0, &[], plain.len()).1.unwrap().records, 1);
        assert!(matches!(decode_all(&batch, 0, &[], plain.len() - 1).1, Err(BatchError::TooLarge { .. })));
    }

    /// A control batch of `producer_id` at `base`: type 0 abort, 1 commit.
    fn control(base: i64, producer_id: i64, kind: i16) -> Vec<u8> {
        let key = [0i16.to_be_bytes(), kind.to_be_bytes()].concat();
        let value = [&0i16.to_be_bytes()[..], &5i32.to_be_bytes()].concat();
        let recs = [trec(0, Some(&key), Some(&value))];
        Spec { attributes: CONTROL | TRANSACTIONAL, producer_id, ..Spec::new(base, &recs) }.build(&plain_section(&recs))
    }

    fn data(base: i64, producer_id: i64, transactional: bool, n: i64) -> Vec<u8> {
        let recs: Vec<TRec> = (0..n).map(|i| trec(i, None, Some(format!("{}", base + i).as_bytes()))).collect();
        let attributes = if transactional { TRANSACTIONAL } else { 0 };
        Spec { attributes, producer_id, ..Spec::new(base, &recs) }.build(&plain_section(&recs))
    }

    #[test]
    fn control_batches_and_aborted_transactions_are_skipped() {
        let section = [
            data(0, 7, true, 2),  // producer 7's aborted transaction
            data(2, 8, true, 2),  // producer 8's, committed below
            data(4, 7, false, 1), // producer 7, not transactional: handed out
            control(5, 7, 0),     // ABORT of 7
            control(6, 8, 1),     // COMMIT of 8
            data(7, 7, true, 2),  // producer 7's next transaction, committed
            control(9, 7, 1),     // COMMIT of 7
            data(10, 9, true, 1), // producer 9's, aborted from 10 on
            control(11, 9, 0),    // ABORT of 9
        ]
        .concat();
        let offsets = |aborted: &[(i64, i64)], from| {
            let (got, res) = decode_all(&section, from, aborted, MIB);
            let d = res.unwrap();
            assert_eq!((d.next_offset, d.truncated), (12, false));
            got.iter().map(|g| g.offset).collect::<Vec<_>>()
        };
        // read_committed, in any order of the list.
        assert_eq!(offsets(&[(9, 10), (7, 0)], 0), [2, 3, 4, 7, 8]);
        assert_eq!(offsets(&[(7, 0), (9, 10)], 3), [3, 4, 7, 8]);
        // read_uncommitted: only the control batches go.
        assert_eq!(offsets(&[], 0), [0, 1, 2, 3, 4, 7, 8, 10]);
        // A section of control batches only still moves on.
        let (got, res) = decode_all(&control(20, 3, 1), 0, &[], MIB);
        assert!(got.is_empty());
        assert_eq!(res.unwrap(), Decoded { next_offset: 21, records: 0, truncated: false });
    }

    #[test]
    fn log_append_time_batches_use_their_max_timestamp() {
        let recs = [trec(0, None, Some(b"a")), trec(1, None, Some(b"b"))];
        let spec = Spec { attributes: LOG_APPEND_TIME, max_ts: 99_000, ..Spec::new(0, &recs) };
        let (got, _) = ok(&spec.build(&plain_section(&recs)), 0);
        assert_eq!(got.iter().map(|g| g.ts).collect::<Vec<_>>(), [99_000, 99_000]);
        let spec = Spec { max_ts: 99_000, ..Spec::new(0, &recs) };
        let (got, _) = ok(&spec.build(&plain_section(&recs)), 0);
        assert_eq!(got.iter().map(|g| g.ts).collect::<Vec<_>>(), [1_000, 1_010]);
    }

    #[test]
    fn malformed_batches_are_errors_and_hand_out_nothing() {
        let good = [trec(0, Some(b"k"), Some(b"v")), trec(1, None, Some(b"w"))];
        let plain = plain_section(&good);
        let build = |spec: Spec, section: &[u8]| [data(0, -1, false, 3), spec.build(section)].concat();
        let check = |batch: Vec<u8>, why: &str| {
            let (got, res) = decode_all(&batch, 0, &[], MIB);
            let detail = malformed(res, 3);
            assert_eq!(got.len(), 3, "{why}: the batch before was handed out, none of this one");
            detail
        };
        // Record count too high, too low.
        check(build(Spec { count: 3, ..Spec::new(3, &good) }, &plain), "count 3");
        check(build(Spec { count: 1, ..Spec::new(3, &good) }, &plain), "count 1");
        // Trailing garbage.
        check(build(Spec::new(3, &good), &[&plain[..], &[0]].concat()), "trailing");
        // Offsets out of order, past the last offset delta.
        let swapped = [trec(1, None, None), trec(0, None, None)];
        check(build(Spec::new(3, &swapped), &plain_section(&swapped)), "swapped");
        check(build(Spec { last_offset_delta: 0, ..Spec::new(3, &good) }, &plain), "past the last delta");
        // A record's length longer / shorter than its fields.
        let mut longer = plain.clone();
        longer[0] += 2;
        check(build(Spec::new(3, &good), &longer), "longer");
        let mut shorter = plain.clone();
        shorter[0] -= 2;
        check(build(Spec::new(3, &good), &shorter), "shorter");
        // A key length below -1; a header count past the record; a null header key; a 6-byte varint.
        let mut rec = vec![0u8, 0, 0];
        put_varint(&mut rec, -2);
        let mut framed = Vec::new();
        put_varint(&mut framed, rec.len() as i64);
        framed.extend(&rec);
        let one = [trec(0, None, None)];
        check(build(Spec::new(3, &one), &framed), "key -2");
        let mut rec = vec![0u8, 0, 0, 1, 1];
        put_varint(&mut rec, i32::MAX as i64);
        let mut framed = Vec::new();
        put_varint(&mut framed, rec.len() as i64);
        framed.extend(&rec);
        assert_eq!(check(build(Spec::new(3, &one), &framed), "headers"), "a header count is larger than its record");
        let mut rec = vec![0u8, 0, 0, 1, 1, 2, 1, 1];
        let mut framed = Vec::new();
        put_varint(&mut framed, rec.len() as i64);
        framed.append(&mut rec);
        assert_eq!(check(build(Spec::new(3, &one), &framed), "null header key"), "a header key is null");
        let framed = [0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        check(build(Spec::new(3, &one), &framed), "long varint");
        // A negative record length.
        check(build(Spec::new(3, &one), &[0x01]), "negative length");
        // Header fields: negative base offset, count, last delta; a batch length shorter than a header.
        check(build(Spec { last_offset_delta: -1, ..Spec::new(3, &good) }, &plain), "negative delta");
        check(build(Spec { count: -1, ..Spec::new(3, &good) }, &plain), "negative count");
        let mut short = Spec::new(3, &good).build(&plain);
        short[8..12].copy_from_slice(&48i32.to_be_bytes());
        check([data(0, -1, false, 3), short].concat(), "short length");
        let mut neg = Spec::new(3, &good).build(&plain);
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        check([data(0, -1, false, 3), neg].concat(), "negative length");
        let (_, res) = decode_all(&Spec::new(-3, &good).build(&plain), -10, &[], MIB);
        malformed(res, -3);
        let (_, res) =
            decode_all(&Spec { last_offset_delta: 5, ..Spec::new(i64::MAX - 2, &good) }.build(&plain), 0, &[], MIB);
        malformed(res, i64::MAX - 2);
    }

    #[test]
    fn an_empty_batch_moves_the_offset_on() {
        // What compaction leaves: no records, the last offset delta kept.
        let spec = Spec { count: 0, last_offset_delta: 9, ..Spec::new(30, &[]) };
        let (got, d) = ok(&spec.build(&[]), 30);
        assert!(got.is_empty());
        assert_eq!(d, Decoded { next_offset: 40, records: 0, truncated: false });
    }

    #[test]
    fn reader_varints_match_the_encoding() {
        for v in [0i64, 1, -1, 63, -64, 64, 300, -300, i32::MAX as i64, i32::MIN as i64] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Reader::new(&b);
            assert_eq!(r.varint(), Ok(v as i32), "{v}");
            assert!(r.is_empty());
        }
        for v in [i64::MAX, i64::MIN, 1 << 40, -(1 << 40)] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Reader::new(&b).varlong(), Ok(v));
            assert!(Reader::new(&b).varint().is_err(), "{v} is no varint");
        }
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[0xFF; 11]).varlong().is_err());
    }

    /// A valid section of several batches (codecs mixed) and its records.
    fn section_of(batches: &[(u8, Vec<TRec>)]) -> (Vec<u8>, Vec<(usize, i64)>) {
        let mut section = Vec::new();
        let mut starts = Vec::new();
        let mut base = 0;
        for (codec, recs) in batches {
            let plain = plain_section(recs);
            let body = match codec {
                0 => plain,
                1 => gzip(&plain),
                2 => snappy_raw(&plain),
                3 => lz4(&plain),
                _ => zstd::bulk::compress(&plain, 1).unwrap(),
            };
            let spec = Spec { attributes: i16::from(*codec), ..Spec::new(base, recs) };
            starts.push((section.len(), base));
            section.extend(spec.build(&body));
            base += i64::from(spec.last_offset_delta) + 1;
        }
        (section, starts)
    }

    fn any_trec() -> impl Strategy<Value = TRec> {
        let bytes = || proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12));
        let headers = proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..5), bytes()), 0..3);
        (any::<i64>(), bytes(), bytes(), headers).prop_map(|(ts_delta, key, value, headers)| TRec {
            ts_delta,
            offset_delta: 0,
            key,
            value,
            headers,
        })
    }

    fn any_batches() -> impl Strategy<Value = Vec<(u8, Vec<TRec>)>> {
        let batch = (0u8..5, proptest::collection::vec((any_trec(), 1i64..3), 0..6)).prop_map(|(codec, recs)| {
            let mut delta = -1;
            let recs = recs
                .into_iter()
                .map(|(mut r, gap)| {
                    delta += gap;
                    r.offset_delta = delta;
                    r
                })
                .collect();
            (codec, recs)
        });
        proptest::collection::vec(batch, 1..5)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300), from in -2i64..50) {
            let _ = decode_all(&b, from, &[(1, 0), (-1, 5)], 4096);
        }

        /// Garbage behind a good header and CRC reaches the record parser and the decompressors.
        #[test]
        fn arbitrary_records_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            codec in 0i16..5, count in -1i32..8, last in -1i32..8, control in any::<bool>(),
        ) {
            let attributes = codec | if control { CONTROL | TRANSACTIONAL } else { 0 };
            let spec = Spec { attributes, count, last_offset_delta: last, producer_id: 1, ..Spec::new(0, &[]) };
            let _ = decode_all(&spec.build(&body), 0, &[(1, 0)], 4096);
        }

        /// One byte changed in a valid batch, with the CRC made to fit.
        #[test]
        fn a_changed_byte_never_panics(batches in any_batches(), at in any::<proptest::sample::Index>(), byte in any::<u8>()) {
            let (mut section, starts) = section_of(&batches);
            let at = at.index(section.len());
            section[at] = byte;
            let i = starts.iter().rposition(|&(start, _)| start <= at).unwrap_or(0);
            let (start, end) = (starts[i].0, starts.get(i + 1).map_or(section.len(), |s| s.0));
            if at >= start + CRC_FROM {
                fix_crc(&mut section[start..end]);
            }
            let _ = decode_all(&section, 0, &[(1, 0)], 4096);
        }

        #[test]
        fn a_valid_section_cut_anywhere_hands_out_whole_batches(batches in any_batches()) {
            let (section, starts) = section_of(&batches);
            let (all, d) = ok(&section, 0);
            let ends: Vec<(usize, i64)> = starts.iter().skip(1).copied().chain([(section.len(), d.next_offset)]).collect();
            prop_assert_eq!(all.len(), batches.iter().map(|(_, r)| r.len()).sum::<usize>());
            for cut in 0..=section.len() {
                let (got, d) = ok(&section[..cut], 0);
                let whole = ends.iter().take_while(|(end, _)| *end <= cut).last();
                prop_assert_eq!(d.next_offset, whole.map_or(0, |w| w.1));
                prop_assert_eq!(d.truncated, !ends.iter().any(|(end, _)| *end == cut) && cut != 0);
                prop_assert!(got.windows(2).all(|w| w[0].offset < w[1].offset), "no record twice");
                prop_assert_eq!(&got[..], &all[..got.len()]);
                prop_assert!(got.iter().all(|g| g.offset < d.next_offset));
            }
        }

        /// A consumer fetching from its next offset, each fetch cut at a
        /// size (at least the first batch, as the broker does), sees every
        /// record once.
        #[test]
        fn fetching_on_from_next_offset_sees_every_record_once(
            batches in any_batches(),
            sizes in proptest::collection::vec(0usize..400, 1..40),
        ) {
            let (section, starts) = section_of(&batches);
            let (all, end) = ok(&section, 0);
            let mut seen = Vec::new();
            let mut from = 0;
            let mut dec = Decoder::default();
            for size in sizes.iter().cycle().take(200) {
                if from >= end.next_offset {
                    break;
                }
                // The broker starts at the batch holding `from`.
                let i = starts.iter().rposition(|&(_, base)| base <= from).unwrap_or(0);
                let start = starts[i].0;
                let first_end = starts.get(i + 1).map_or(section.len(), |s| s.0);
                let stop = (start + size).max(first_end).min(section.len());
                let d = dec.decode(&section[start..stop], from, &[], MIB, |r| seen.push(Got::from(r))).unwrap();
                prop_assert!(d.next_offset > from);
                from = d.next_offset;
            }
            prop_assert_eq!(seen, all);
        }
    }
}
