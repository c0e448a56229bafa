//! Kafka record batches (magic 2), written straight from the bridge's
//! records: the records section is sized before it is written, so a record
//! costs its own bytes and nothing else; compressed as a whole with lz4
//! (frame format, independent 64 KiB blocks) or zstd. Also the partitioner,
//! the same as librdkafka's default (`consistent_random`: CRC-32 of the key
//! modulo the partition count), so that switching producers keeps every
//! device on its partition.

use crate::record::Outbound;
use bytes::{BufMut, BytesMut};

/// The compressions the native producer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    /// `kafka.compression`; `None` for the ones only librdkafka writes.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "lz4" => Some(Self::Lz4),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    fn attribute(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }
}

/// Who writes the batch (idempotence) and where it starts in the partition's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

/// Bytes of the batch header before the records section.
const HEADER_LEN: usize = 61;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn varint_len(v: i64) -> usize {
    let mut u = zigzag(v);
    let mut n = 1;
    while u >= 0x80 {
        u >>= 7;
        n += 1;
    }
    n
}

fn put_varint(buf: &mut Vec<u8>, v: i64) {
    let mut u = zigzag(v);
    while u >= 0x80 {
        buf.push((u as u8) | 0x80);
        u >>= 7;
    }
    buf.push(u as u8);
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One record's body length (everything after its own length varint).
fn body_len(out: &Outbound, ts_delta: i64, offset_delta: i64) -> usize {
    let key = out.key.as_deref().map_or(0, str::len);
    let mut n = 1 + varint_len(ts_delta) + varint_len(offset_delta);
    n += match &out.key {
        Some(_) => varint_len(len_i64(key)) + key,
        None => 1,
    };
    n += varint_len(len_i64(out.value.len())) + out.value.len();
    let headers: usize = out
        .headers
        .iter()
        .map(|(k, v)| varint_len(len_i64(k.len())) + k.len() + varint_len(len_i64(v.len())) + v.len())
        .sum();
    n + varint_len(len_i64(out.headers.len())) + headers
}

fn put_record(buf: &mut Vec<u8>, out: &Outbound, ts_delta: i64, offset_delta: i64) {
    put_varint(buf, len_i64(body_len(out, ts_delta, offset_delta)));
    buf.push(0);
    put_varint(buf, ts_delta);
    put_varint(buf, offset_delta);
    match &out.key {
        Some(k) => {
            put_varint(buf, len_i64(k.len()));
            buf.extend_from_slice(k.as_bytes());
        }
        None => put_varint(buf, -1),
    }
    put_varint(buf, len_i64(out.value.len()));
    buf.extend_from_slice(&out.value);
    put_varint(buf, len_i64(out.headers.len()));
    for (k, v) in out.headers.iter() {
        put_varint(buf, len_i64(k.len()));
        buf.extend_from_slice(k.as_bytes());
        put_varint(buf, len_i64(v.len()));
        buf.extend_from_slice(v.as_bytes());
    }
}

/// At least the size of one record in a batch, uncompressed (for batch
/// limits): every varint counted at its largest, so nothing is encoded to
/// know it.
pub fn record_size(out: &Outbound) -> usize {
    // Length, attributes, timestamp delta, offset delta, key length, value
    // length, header count.
    const FIXED: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
    let headers: usize = out.headers.iter().map(|(k, v)| 10 + k.len() + v.len()).sum();
    FIXED + out.key.as_deref().map_or(0, str::len) + out.value.len() + headers
}

/// Writes batches; keeps its scratch buffers between batches.
#[derive(Default)]
pub struct Encoder {
    records: Vec<u8>,
    compressed: Vec<u8>,
    lz4: super::lz4::FrameWriter,
}

impl Encoder {
    /// Append one batch of `records` (at least one) to `dst`.
    pub fn encode<'a>(
        &mut self,
        dst: &mut BytesMut,
        records: impl Iterator<Item = &'a Outbound> + Clone,
        compression: Compression,
        producer: Producer,
    ) -> std::io::Result<()> {
        let mut first_ts = None;
        let mut max_ts = i64::MIN;
        let mut count = 0i64;
        self.records.clear();
        for out in records {
            let base = *first_ts.get_or_insert(out.timestamp_ms);
            max_ts = max_ts.max(out.timestamp_ms);
            put_record(&mut self.records, out, out.timestamp_ms.saturating_sub(base), count);
            count += 1;
        }
        let base_ts = first_ts.unwrap_or(0);
        let section: &[u8] = match compression {
            Compression::None => &self.records,
            Compression::Lz4 => self.lz4.compress(&self.records)?,
            Compression::Zstd => {
                self.compressed = zstd::bulk::compress(&self.records, 3)?;
                &self.compressed
            }
        };
        let start = dst.len();
        dst.reserve(HEADER_LEN + section.len());
        dst.put_i64(0); // base offset: the broker assigns it
        let batch_len = i32::try_from(HEADER_LEN - 12 + section.len()).unwrap_or(i32::MAX);
        dst.put_i32(batch_len);
        dst.put_i32(-1); // partition leader epoch
        dst.put_i8(2); // magic
        let crc_at = dst.len();
        dst.put_u32(0);
        dst.put_i16(compression.attribute());
        let last_delta = i32::try_from(count - 1).unwrap_or(i32::MAX);
        dst.put_i32(last_delta);
        dst.put_i64(base_ts);
        dst.put_i64(max_ts.max(base_ts));
        dst.put_i64(producer.id);
        dst.put_i16(producer.epoch);
        dst.put_i32(producer.base_sequence);
        dst.put_i32(i32::try_from(count).unwrap_or(i32::MAX));
        dst.put_slice(section);
        let crc = crc32c::crc32c(&dst[crc_at + 4..]);
        dst[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
        debug_assert_eq!(dst.len() - start, HEADER_LEN + section.len());
        Ok(())
    }
}

/// CRC-32 (IEEE, as zlib), the hash of librdkafka's default partitioner:
/// crc32fast's, sixteen bytes at a time (a byte at a time from a table was
/// 3% of the bridge's CPU with keys of about 30 bytes).
fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The partition of a record: CRC-32 of the key modulo the count, or a
/// random one for a record without a key (`consistent_random`).
pub fn partition_for(key: Option<&str>, partitions: usize, random: impl FnOnce() -> usize) -> usize {
    match key {
        Some(k) if !k.is_empty() && partitions > 0 => crc32(k.as_bytes()) as usize % partitions,
        _ if partitions > 0 => random() % partitions,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::headers::HeaderList;
    use crate::record::RecordId;
    use bytes::Bytes;

    fn out(key: Option<&str>, value: &str, ts: i64) -> Outbound {
        Outbound {
            id: RecordId::derive(None, 0, "t", b"x"),
            topic: "t".into(),
            key: key.map(String::from),
            value: Bytes::from(value.to_string()),
            headers: HeaderList::default(),
            timestamp_ms: ts,
            reason: None,
        }
    }

    fn read_varint(b: &[u8], at: &mut usize) -> i64 {
        let (mut u, mut shift) = (0u64, 0);
        loop {
            let byte = b[*at];
            *at += 1;
            u |= u64::from(byte & 0x7F) << shift;
            if byte < 0x80 {
                break;
            }
            shift += 7;
        }
        ((u >> 1) as i64) ^ -((u & 1) as i64)
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        // Bit by bit, as zlib defines it, for every length up to 300.
        let reference = |data: &[u8]| {
            let mut c = !0u32;
            for &b in data {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            !c
        };
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for n in 0..=data.len() {
            assert_eq!(crc32(&data[..n]), reference(&data[..n]), "{n} bytes");
        }
    }

    #[test]
    fn keys_keep_their_partition() {
        let p = partition_for(Some("acme/p1/dev-1"), 12, || unreachable!());
        assert_eq!(p, crc32(b"acme/p1/dev-1") as usize % 12);
        assert_eq!(partition_for(Some("acme/p1/dev-1"), 12, || 0), p);
        assert_eq!(partition_for(None, 12, || 13), 1);
        assert_eq!(partition_for(Some(""), 4, || 6), 2);
    }

    #[test]
    fn varints_zigzag() {
        for v in [0i64, -1, 1, 63, -64, 64, 300, -300, i64::MAX, i64::MIN] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut at = 0;
            assert_eq!(read_varint(&b, &mut at), v);
        }
    }

    #[test]
    fn batch_layout_crc_and_records() {
        let mut records = [out(Some("k1"), "{\"a\":1}", 1_000), out(None, "v2", 1_005)];
        records[0].headers = crate::record::headers::encode_record(&crate::record::headers::RecordMeta {
            tenant_id: "acme",
            project_id: "p1",
            device_id: "d",
            mqtt_topic: "a/b",
            id: RecordId::derive(None, 0, "t", b"x"),
            received_ms: 1_000,
            event_ms: None,
        });
        let mut enc = Encoder::default();
        let mut dst = BytesMut::new();
        let producer = Producer { id: 42, epoch: 3, base_sequence: 7 };
        enc.encode(&mut dst, records.iter(), Compression::None, producer).unwrap();
        let b = &dst[..];
        let batch_len = i32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
        assert_eq!(batch_len, b.len() - 12);
        assert_eq!(b[16], 2, "magic");
        let crc = u32::from_be_bytes(b[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&b[21..]));
        assert_eq!(i32::from_be_bytes(b[23..27].try_into().unwrap()), 1, "last offset delta");
        assert_eq!(i64::from_be_bytes(b[27..35].try_into().unwrap()), 1_000);
        assert_eq!(i64::from_be_bytes(b[35..43].try_into().unwrap()), 1_005);
        assert_eq!(i64::from_be_bytes(b[43..51].try_into().unwrap()), 42);
        assert_eq!(i16::from_be_bytes(b[51..53].try_into().unwrap()), 3);
        assert_eq!(i32::from_be_bytes(b[53..57].try_into().unwrap()), 7);
        assert_eq!(i32::from_be_bytes(b[57..61].try_into().unwrap()), 2);
        // First record: length, attributes, deltas, key, value, headers.
        let mut at = HEADER_LEN;
        let len = read_varint(b, &mut at) as usize;
        let body_start = at;
        assert_eq!(len, body_len(&records[0], 0, 0));
        assert_eq!(b[at], 0);
        at += 1;
        assert_eq!(read_varint(b, &mut at), 0);
        assert_eq!(read_varint(b, &mut at), 0);
        assert_eq!(read_varint(b, &mut at), 2);
        assert_eq!(&b[at..at + 2], b"k1");
        at += 2;
        assert_eq!(read_varint(b, &mut at), 7);
        at += 7;
        let n = read_varint(b, &mut at);
        assert_eq!(n, records[0].headers.iter().count() as i64);
        for (k, v) in records[0].headers.iter() {
            let kl = read_varint(b, &mut at) as usize;
            assert_eq!(&b[at..at + kl], k.as_bytes());
            at += kl;
            let vl = read_varint(b, &mut at) as usize;
            assert_eq!(&b[at..at + vl], v.as_bytes());
            at += vl;
        }
        assert_eq!(at - body_start, len);
        // Second record: timestamp delta 5, offset delta 1, null key.
        let _ = read_varint(b, &mut at);
        at += 1;
        assert_eq!(read_varint(b, &mut at), 5);
        assert_eq!(read_varint(b, &mut at), 1);
        assert_eq!(read_varint(b, &mut at), -1);
        let sizes: usize = records.iter().map(record_size).sum();
        assert!(sizes >= b.len() - HEADER_LEN, "record_size bounds what a record takes");
    }

    #[test]
    fn compressed_sections_decompress_to_the_plain_one() {
        let records: Vec<Outbound> = (0..500).map(|i| out(Some("k"), &format!("{{\"n\":{i}}}"), 5)).collect();
        let producer = Producer { id: -1, epoch: -1, base_sequence: -1 };
        let mut enc = Encoder::default();
        let mut plain = BytesMut::new();
        enc.encode(&mut plain, records.iter(), Compression::None, producer).unwrap();
        for c in [Compression::Lz4, Compression::Zstd] {
            let mut dst = BytesMut::new();
            enc.encode(&mut dst, records.iter(), c, producer).unwrap();
            assert!(dst.len() < plain.len() / 2, "{c:?} compresses");
            assert_eq!(i16::from_be_bytes(dst[21..23].try_into().unwrap()), c.attribute());
            let section = &dst[HEADER_LEN..];
            let raw = match c {
                Compression::Lz4 => {
                    let mut d = lz4_flex::frame::FrameDecoder::new(section);
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut d, &mut v).unwrap();
                    v
                }
                _ => zstd::bulk::decompress(section, 1 << 20).unwrap(),
            };
            assert_eq!(raw, plain[HEADER_LEN..]);
            assert_eq!(u32::from_be_bytes(dst[17..21].try_into().unwrap()), crc32c::crc32c(&dst[21..]));
        }
    }
}
