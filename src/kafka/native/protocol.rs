//! The few Kafka requests the native producer sends (the consumer's are in
//! `group_protocol.rs`): ApiVersions v0,
//! Metadata v4, InitProducerId v0–v4 (v2 on in the flexible encoding; some
//! brokers answer only v3 and later) and Produce v3–v8 (the record-batch
//! versions before the flexible encoding). Requests are encoded whole, with
//! their size prefix and a correlation id of 0 that the connection sets as it
//! sends them ([`set_correlation_id`]); responses are decoded from the body
//! after the size prefix, by [`Reader`] (the consumer's too).

use bytes::{BufMut, BytesMut};
use std::borrow::Cow;

pub const API_PRODUCE: i16 = 0;
pub const API_METADATA: i16 = 3;
pub const API_VERSIONS: i16 = 18;
pub const API_INIT_PRODUCER_ID: i16 = 22;

/// The Produce versions this encoder speaks (request layout identical across
/// them; responses gain fields).
pub const PRODUCE_VERSIONS: (i16, i16) = (3, 8);
pub const METADATA_VERSION: i16 = 4;
pub const INIT_PRODUCER_ID_VERSIONS: (i16, i16) = (0, 4);
/// The first flexible (tagged fields, compact strings) InitProducerId version.
const INIT_PRODUCER_ID_FLEXIBLE: i16 = 2;

/// A response that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} response: {detail}")]
pub struct Malformed {
    pub what: &'static str,
    pub detail: &'static str,
}

/// Where a finished request's API version and correlation id are: after
/// the size prefix (4 bytes) and the api key (2).
const VERSION_AT: std::ops::Range<usize> = 6..8;
const CORRELATION_AT: std::ops::Range<usize> = 8..12;

/// A request under construction: the size prefix is patched in by [`Request::finish`].
pub struct Request {
    buf: BytesMut,
}

impl Request {
    /// Request header v1: api key, version, correlation id (0: the
    /// connection sets it as it sends the request), client id.
    pub fn new(api_key: i16, version: i16, client_id: &str, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + 16 + client_id.len());
        buf.put_i32(0);
        buf.put_i16(api_key);
        buf.put_i16(version);
        buf.put_i32(0);
        let mut r = Self { buf };
        r.string(client_id);
        r
    }

    pub fn i8(&mut self, v: i8) {
        self.buf.put_i8(v);
    }

    pub fn i16(&mut self, v: i16) {
        self.buf.put_i16(v);
    }

    pub fn i32(&mut self, v: i32) {
        self.buf.put_i32(v);
    }

    pub fn string(&mut self, s: &str) {
        self.buf.put_i16(i16::try_from(s.len()).unwrap_or(i16::MAX));
        self.buf.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
    }

    pub fn null_string(&mut self) {
        self.buf.put_i16(-1);
    }

    /// An array length.
    pub fn len(&mut self, n: usize) {
        self.buf.put_i32(i32::try_from(n).unwrap_or(i32::MAX));
    }

    /// Bytes written by `write`, after their length.
    pub fn nested<E>(&mut self, write: impl FnOnce(&mut BytesMut) -> Result<(), E>) -> Result<(), E> {
        let at = self.buf.len();
        self.buf.put_i32(0);
        write(&mut self.buf)?;
        let n = i32::try_from(self.buf.len() - at - 4).unwrap_or(i32::MAX);
        self.buf[at..at + 4].copy_from_slice(&n.to_be_bytes());
        Ok(())
    }

    /// The finished request, size prefix included; still writable, as its
    /// correlation id is set when it goes out.
    pub fn finish(mut self) -> BytesMut {
        let size = i32::try_from(self.buf.len() - 4).unwrap_or(i32::MAX);
        self.buf[..4].copy_from_slice(&size.to_be_bytes());
        self.buf
    }
}

/// Set a finished request's correlation id ([`super::conn::Conn`] does, as it sends it).
pub fn set_correlation_id(request: &mut [u8], id: i32) {
    if let Some(field) = request.get_mut(CORRELATION_AT) {
        field.copy_from_slice(&id.to_be_bytes());
    }
}

/// Set a finished request's API version (a Produce request is encoded
/// before the connection that agrees its version may exist).
pub fn set_version(request: &mut [u8], version: i16) {
    if let Some(field) = request.get_mut(VERSION_AT) {
        field.copy_from_slice(&version.to_be_bytes());
    }
}

/// Reads a response body.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    /// The error of this response, with `detail`.
    pub fn err(&self, detail: &'static str) -> Malformed {
        Malformed { what: self.what, detail }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn i8(&mut self) -> Result<i8, Malformed> {
        Ok(self.take(1)?[0] as i8)
    }

    pub fn i16(&mut self) -> Result<i16, Malformed> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i64(&mut self) -> Result<i64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn unsigned_varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..35).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    /// Skip a flexible version's tagged fields.
    pub fn tagged_fields(&mut self) -> Result<(), Malformed> {
        for _ in 0..self.unsigned_varint()? {
            self.unsigned_varint()?;
            let size = usize::try_from(self.unsigned_varint()?).unwrap_or(usize::MAX);
            self.take(size)?;
        }
        Ok(())
    }

    /// A nullable string (`None` for null), owned: [`Reader::str_ref`]
    /// copied out of the body.
    pub fn string(&mut self) -> Result<Option<String>, Malformed> {
        Ok(self.str_ref()?.map(Cow::into_owned))
    }

    /// A nullable string borrowed from the body (`None` for null; copied
    /// only where it is not UTF-8).
    pub fn str_ref(&mut self) -> Result<Option<Cow<'a, str>>, Malformed> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let b = self.take(n as usize)?;
        Ok(Some(String::from_utf8_lossy(b)))
    }

    /// Nullable bytes (`None` for null), borrowed from the body.
    pub fn bytes(&mut self) -> Result<Option<&'a [u8]>, Malformed> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(None);
        }
        let n = usize::try_from(n).map_err(|_| self.err("truncated"))?;
        self.take(n).map(Some)
    }

    /// An array length; null arrays read as empty.
    pub fn len(&mut self) -> Result<usize, Malformed> {
        let n = self.i32()?;
        let n = usize::try_from(n.max(0)).unwrap_or(0);
        // Every element takes at least one byte: a larger count is garbage,
        // not a reason to reserve memory.
        if n > self.buf.len() {
            return Err(self.err("array longer than the response"));
        }
        Ok(n)
    }
}

/// ApiVersions v0: which versions of each API the broker speaks.
pub fn api_versions_request(client_id: &str) -> BytesMut {
    Request::new(API_VERSIONS, 0, client_id, 0).finish()
}

/// One API a broker speaks: `(api_key, min version, max version)`.
pub type ApiRange = (i16, i16, i16);

/// The error code of the response, and the APIs.
pub fn api_versions_response(body: &[u8]) -> Result<(i16, Vec<ApiRange>), Malformed> {
    let mut r = Reader::new(body, "ApiVersions");
    let error = r.i16()?;
    let n = r.len()?;
    let mut apis = Vec::with_capacity(n);
    for _ in 0..n {
        apis.push((r.i16()?, r.i16()?, r.i16()?));
    }
    Ok((error, apis))
}

/// The highest version in `ours` the broker also speaks.
pub fn pick_version(apis: &[ApiRange], key: i16, ours: (i16, i16)) -> Option<i16> {
    let &(_, min, max) = apis.iter().find(|(k, _, _)| *k == key)?;
    let v = max.min(ours.1);
    (v >= ours.0 && v >= min).then_some(v)
}

/// Metadata v4 for `topics` (never "all topics").
pub fn metadata_request(client_id: &str, topics: &[&str], auto_create: bool) -> BytesMut {
    let size: usize = topics.iter().map(|t| t.len() + 2).sum();
    let mut r = Request::new(API_METADATA, METADATA_VERSION, client_id, size + 8);
    r.len(topics.len());
    for t in topics {
        r.string(t);
    }
    r.i8(i8::from(auto_create));
    r.finish()
}

/// Metadata v4 for every topic of the cluster (a consumer's regex subscription).
pub fn metadata_request_all(client_id: &str) -> BytesMut {
    let mut r = Request::new(API_METADATA, METADATA_VERSION, client_id, 8);
    r.i32(-1);
    r.i8(0);
    r.finish()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMeta {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub error: i16,
    pub name: String,
    /// `(partition, error, leader)`, in partition order.
    pub partitions: Vec<(i32, i16, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub brokers: Vec<BrokerMeta>,
    /// The controller's node id (-1: unknown).
    pub controller: i32,
    pub topics: Vec<TopicMeta>,
}

pub fn metadata_response(body: &[u8]) -> Result<Metadata, Malformed> {
    let mut r = Reader::new(body, "Metadata");
    let _throttle = r.i32()?;
    let n = r.len()?;
    let mut brokers = Vec::with_capacity(n);
    for _ in 0..n {
        let node_id = r.i32()?;
        let host = r.string()?.ok_or(r.err("broker without a host"))?;
        let port = r.i32()?;
        let _rack = r.string()?;
        brokers.push(BrokerMeta { node_id, host, port });
    }
    let _cluster_id = r.string()?;
    let controller = r.i32()?;
    let n = r.len()?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        let error = r.i16()?;
        let name = r.string()?.ok_or(r.err("topic without a name"))?;
        let _internal = r.i8()?;
        let np = r.len()?;
        let mut partitions = Vec::with_capacity(np);
        for _ in 0..np {
            let perr = r.i16()?;
            let index = r.i32()?;
            let leader = r.i32()?;
            for _ in 0..r.len()? {
                r.i32()?; // replicas
            }
            for _ in 0..r.len()? {
                r.i32()?; // in-sync replicas
            }
            partitions.push((index, perr, leader));
        }
        partitions.sort_unstable();
        topics.push(TopicMeta { error, name, partitions });
    }
    Ok(Metadata { brokers, controller, topics })
}

/// InitProducerId for an idempotent (non-transactional) producer.
pub fn init_producer_id_request(client_id: &str, version: i16) -> BytesMut {
    let mut r = Request::new(API_INIT_PRODUCER_ID, version, client_id, 24);
    if version >= INIT_PRODUCER_ID_FLEXIBLE {
        r.i8(0); // header: no tagged fields
        r.i8(0); // transactional id: null (compact)
        r.i32(60_000);
        if version >= 3 {
            r.buf.put_i64(-1); // no current producer id
            r.i16(-1);
        }
        r.i8(0); // no tagged fields
    } else {
        r.null_string();
        r.i32(60_000);
    }
    r.finish()
}

/// `(error, producer_id, epoch)`.
pub fn init_producer_id_response(body: &[u8], version: i16) -> Result<(i16, i64, i16), Malformed> {
    let mut r = Reader::new(body, "InitProducerId");
    if version >= INIT_PRODUCER_ID_FLEXIBLE {
        r.tagged_fields()?;
    }
    let _throttle = r.i32()?;
    let error = r.i16()?;
    Ok((error, r.i64()?, r.i16()?))
}

/// The outcome of one partition's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionResult {
    pub topic: String,
    pub partition: i32,
    pub error: i16,
    pub base_offset: i64,
    /// v8: the broker's message for the error.
    pub message: Option<String>,
}

pub fn produce_response(body: &[u8], version: i16) -> Result<Vec<PartitionResult>, Malformed> {
    let mut r = Reader::new(body, "Produce");
    let mut out = Vec::new();
    for _ in 0..r.len()? {
        let topic = r.string()?.ok_or(r.err("topic without a name"))?;
        for _ in 0..r.len()? {
            let partition = r.i32()?;
            let error = r.i16()?;
            let base_offset = r.i64()?;
            let _log_append_time = r.i64()?;
            if version >= 5 {
                let _log_start_offset = r.i64()?;
            }
            let mut message = None;
            if version >= 8 {
                for _ in 0..r.len()? {
                    r.i32()?;
                    r.string()?;
                }
                message = r.string()?;
            }
            out.push(PartitionResult { topic: topic.clone(), partition, error, base_offset, message });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(req: &[u8]) -> &[u8] {
        let size = i32::from_be_bytes([req[0], req[1], req[2], req[3]]) as usize;
        assert_eq!(size, req.len() - 4, "size prefix");
        &req[4..]
    }

    #[test]
    fn request_header_and_size() {
        let mut req = api_versions_request("iotpipe");
        let b = body(&req);
        assert_eq!(&b[..2], &API_VERSIONS.to_be_bytes());
        assert_eq!(&b[2..4], &0i16.to_be_bytes());
        assert_eq!(&b[4..8], &0i32.to_be_bytes(), "correlation id: set as it goes out");
        assert_eq!(&b[8..10], &7i16.to_be_bytes());
        assert_eq!(&b[10..], b"iotpipe");
        set_correlation_id(&mut req, 7);
        set_version(&mut req, 3);
        let b = body(&req);
        assert_eq!(&b[..2], &API_VERSIONS.to_be_bytes());
        assert_eq!(&b[2..4], &3i16.to_be_bytes());
        assert_eq!(&b[4..8], &7i32.to_be_bytes());
        assert_eq!(&b[8..], &body(&api_versions_request("iotpipe"))[8..], "nothing else changed");
    }

    #[test]
    fn nullable_bytes_are_borrowed_and_checked() {
        let mut b = BytesMut::new();
        b.put_i32(-1);
        b.put_i32(2);
        b.put_slice(b"ab");
        b.put_i32(5);
        b.put_slice(b"cd");
        let mut r = Reader::new(&b, "test");
        assert_eq!(r.bytes(), Ok(None));
        assert_eq!(r.bytes(), Ok(Some(&b"ab"[..])));
        assert_eq!(r.bytes(), Err(Malformed { what: "test", detail: "truncated" }));
    }

    #[test]
    fn versions_are_picked_within_both_ranges() {
        let apis = [(API_PRODUCE, 0, 11), (API_METADATA, 0, 12), (API_INIT_PRODUCER_ID, 0, 0)];
        assert_eq!(pick_version(&apis, API_PRODUCE, PRODUCE_VERSIONS), Some(8));
        assert_eq!(pick_version(&[(API_PRODUCE, 0, 5)], API_PRODUCE, PRODUCE_VERSIONS), Some(5));
        assert_eq!(pick_version(&[(API_PRODUCE, 0, 2)], API_PRODUCE, PRODUCE_VERSIONS), None);
        assert_eq!(pick_version(&[(API_PRODUCE, 9, 11)], API_PRODUCE, PRODUCE_VERSIONS), None);
        assert_eq!(pick_version(&apis, API_INIT_PRODUCER_ID, INIT_PRODUCER_ID_VERSIONS), Some(0));
        assert_eq!(
            pick_version(&[(API_INIT_PRODUCER_ID, 0, 5)], API_INIT_PRODUCER_ID, INIT_PRODUCER_ID_VERSIONS),
            Some(4)
        );
        assert_eq!(pick_version(&apis, 99, (0, 1)), None);
    }

    #[test]
    fn metadata_response_reads_brokers_and_leaders() {
        let mut b = BytesMut::new();
        b.put_i32(0); // throttle
        b.put_i32(1);
        b.put_i32(1);
        b.put_i16(9);
        b.put_slice(b"127.0.0.1");
        b.put_i32(9092);
        b.put_i16(-1);
        b.put_i16(-1); // cluster id
        b.put_i32(1);
        b.put_i32(1); // topics
        b.put_i16(0);
        b.put_i16(1);
        b.put_slice(b"t");
        b.put_i8(0);
        b.put_i32(2);
        for p in [1, 0] {
            b.put_i16(0);
            b.put_i32(p);
            b.put_i32(1);
            b.put_i32(1);
            b.put_i32(1);
            b.put_i32(1);
            b.put_i32(1);
        }
        let m = metadata_response(&b).unwrap();
        assert_eq!(m.brokers, vec![BrokerMeta { node_id: 1, host: "127.0.0.1".into(), port: 9092 }]);
        assert_eq!(m.controller, 1);
        assert_eq!(m.topics[0].partitions, vec![(0, 0, 1), (1, 0, 1)], "sorted by partition");
        assert!(metadata_response(&b[..b.len() - 3]).is_err(), "truncated");
    }

    #[test]
    fn init_producer_id_in_both_encodings() {
        let v0 = init_producer_id_request("c", 0);
        assert_eq!(&body(&v0)[11..], &[0xFF, 0xFF, 0, 0, 0xEA, 0x60]);
        let v4 = init_producer_id_request("c", 4);
        assert_eq!(
            &body(&v4)[11..],
            &[0, 0, 0, 0, 0xEA, 0x60, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0]
        );
        // A flexible response: header tagged fields, then the fields, then its own tagged fields.
        let flexible = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 0];
        assert_eq!(init_producer_id_response(&flexible, 4), Ok((0, 9, 2)));
        assert_eq!(init_producer_id_response(&flexible[1..], 1), Ok((0, 9, 2)));
        // One tagged field (tag 1, 2 bytes) in the header is skipped.
        let tagged = [1u8, 1, 2, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0];
        assert_eq!(init_producer_id_response(&tagged, 3), Ok((0, 5, 1)));
    }

    #[test]
    fn a_huge_array_count_is_malformed_not_an_allocation() {
        let mut b = BytesMut::new();
        b.put_i16(0);
        b.put_i32(i32::MAX);
        assert!(api_versions_response(&b).is_err());
    }

    #[test]
    fn produce_response_by_version() {
        for version in [3i16, 5, 8] {
            let mut b = BytesMut::new();
            b.put_i32(1);
            b.put_i16(1);
            b.put_slice(b"t");
            b.put_i32(1);
            b.put_i32(4);
            b.put_i16(46);
            b.put_i64(100);
            b.put_i64(-1);
            if version >= 5 {
                b.put_i64(0);
            }
            if version >= 8 {
                b.put_i32(0);
                b.put_i16(2);
                b.put_slice(b"no");
            }
            b.put_i32(0); // throttle
            let r = produce_response(&b, version).unwrap();
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].partition, r[0].error, r[0].base_offset), (4, 46, 100));
            assert_eq!(r[0].message.as_deref(), (version >= 8).then_some("no"));
        }
    }
}
