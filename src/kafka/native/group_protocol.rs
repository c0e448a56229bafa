//! The Kafka requests of iotpipe's own consumer: group membership
//! (FindCoordinator v1, JoinGroup v2, SyncGroup v1, Heartbeat v1,
//! LeaveGroup v1), offsets (OffsetCommit v2, OffsetFetch v1, ListOffsets v1)
//! and Fetch v4 to v7 (v7 where the broker speaks it, for fetch sessions).
//! Every version is a non-flexible one that both Kafka 4.0 (which removed
//! the oldest versions) and older brokers speak.
//!
//! Also Kafka's consumer protocol (protocol type `"consumer"`), carried as
//! opaque bytes inside JoinGroup and SyncGroup: subscriptions, assignments
//! and the `"roundrobin"` assignor the group leader runs.
//!
//! Requests are encoded whole, with their size prefix, by the producer's
//! [`Request`] (the connection sets their correlation id as it sends them);
//! responses are decoded from the body after the correlation id by its
//! [`Reader`]. Array counts are checked against the bytes left before
//! anything is reserved for them.

use super::protocol::{Malformed, Reader, Request};
use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;

pub const API_FETCH: i16 = 1;
/// Fetch v4 to v7: v7 adds fetch sessions (KIP-227), which the fetcher uses
/// where the broker speaks it.
pub const FETCH_VERSIONS: (i16, i16) = (4, 7);
/// The first Fetch version with sessions.
pub const FETCH_SESSION_VERSION: i16 = 7;
pub const API_LIST_OFFSETS: i16 = 2;
pub const LIST_OFFSETS_VERSION: i16 = 1;
pub const API_OFFSET_COMMIT: i16 = 8;
pub const OFFSET_COMMIT_VERSION: i16 = 2;
pub const API_OFFSET_FETCH: i16 = 9;
pub const OFFSET_FETCH_VERSION: i16 = 1;
pub const API_FIND_COORDINATOR: i16 = 10;
pub const FIND_COORDINATOR_VERSION: i16 = 1;
pub const API_JOIN_GROUP: i16 = 11;
pub const JOIN_GROUP_VERSION: i16 = 2;
pub const API_HEARTBEAT: i16 = 12;
pub const HEARTBEAT_VERSION: i16 = 1;
pub const API_LEAVE_GROUP: i16 = 13;
pub const LEAVE_GROUP_VERSION: i16 = 1;
pub const API_SYNC_GROUP: i16 = 14;
pub const SYNC_GROUP_VERSION: i16 = 1;

/// (api key, (lowest, highest) version, name) of every request the consumer
/// sends (for the ApiVersions check).
pub const CONSUMER_APIS: [(i16, (i16, i16), &str); 9] = [
    (API_FETCH, FETCH_VERSIONS, "Fetch"),
    (API_LIST_OFFSETS, (LIST_OFFSETS_VERSION, LIST_OFFSETS_VERSION), "ListOffsets"),
    (API_OFFSET_COMMIT, (OFFSET_COMMIT_VERSION, OFFSET_COMMIT_VERSION), "OffsetCommit"),
    (API_OFFSET_FETCH, (OFFSET_FETCH_VERSION, OFFSET_FETCH_VERSION), "OffsetFetch"),
    (API_FIND_COORDINATOR, (FIND_COORDINATOR_VERSION, FIND_COORDINATOR_VERSION), "FindCoordinator"),
    (API_JOIN_GROUP, (JOIN_GROUP_VERSION, JOIN_GROUP_VERSION), "JoinGroup"),
    (API_HEARTBEAT, (HEARTBEAT_VERSION, HEARTBEAT_VERSION), "Heartbeat"),
    (API_LEAVE_GROUP, (LEAVE_GROUP_VERSION, LEAVE_GROUP_VERSION), "LeaveGroup"),
    (API_SYNC_GROUP, (SYNC_GROUP_VERSION, SYNC_GROUP_VERSION), "SyncGroup"),
];

/// The encoded size of a STRING.
fn string_size(s: &str) -> usize {
    2 + s.len()
}

/// An INT64, which [`Request`] has no writer for: its two big-endian halves.
fn put_i64(r: &mut Request, v: i64) {
    r.i32((v >> 32) as i32);
    r.i32(v as i32);
}

/// BYTES: an INT32 length, then the bytes.
fn put_bytes(r: &mut Request, b: &[u8]) {
    let Ok(()) = r.nested(|buf| {
        buf.put_slice(b);
        Ok::<(), Infallible>(())
    });
}

/// A STRING outside a [`Request`] (the consumer protocol), cut as [`Request::string`] cuts it.
fn put_string(b: &mut Vec<u8>, s: &str) {
    let n = s.len().min(i16::MAX as usize);
    b.put_i16(n as i16);
    b.put_slice(&s.as_bytes()[..n]);
}

/// An array length outside a [`Request`].
fn put_len(b: &mut Vec<u8>, n: usize) {
    b.put_i32(i32::try_from(n).unwrap_or(i32::MAX));
}

/// FindCoordinator v1 for a consumer group (key type 0).
pub fn find_coordinator_request(client_id: &str, group: &str) -> BytesMut {
    let mut r = Request::new(API_FIND_COORDINATOR, FIND_COORDINATOR_VERSION, client_id, string_size(group) + 1);
    r.string(group);
    r.i8(0); // key type: group
    r.finish()
}

/// The broker that coordinates a group (or the error why there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinator {
    pub error: i16,
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

/// FindCoordinator v1: throttle, error, error message, node id, host, port.
/// A null host reads as empty (brokers send `""` with an error).
pub fn find_coordinator_response(body: &[u8]) -> Result<Coordinator, Malformed> {
    let mut r = Reader::new(body, "FindCoordinator");
    let _throttle = r.i32()?;
    let error = r.i16()?;
    let _message = r.string()?;
    let node_id = r.i32()?;
    let host = r.string()?.unwrap_or_default();
    let port = r.i32()?;
    Ok(Coordinator { error, node_id, host, port })
}

/// JoinGroup v2: `protocols` are `(name, metadata)` in order of preference;
/// `member_id` is empty on the first join.
pub fn join_group_request(
    client_id: &str,
    group: &str,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    member_id: &str,
    protocol_type: &str,
    protocols: &[(&str, &[u8])],
) -> BytesMut {
    let size = string_size(group)
        + 8
        + string_size(member_id)
        + string_size(protocol_type)
        + 4
        + protocols.iter().map(|(name, meta)| string_size(name) + 4 + meta.len()).sum::<usize>();
    let mut r = Request::new(API_JOIN_GROUP, JOIN_GROUP_VERSION, client_id, size);
    r.string(group);
    r.i32(session_timeout_ms);
    r.i32(rebalance_timeout_ms);
    r.string(member_id);
    r.string(protocol_type);
    r.len(protocols.len());
    for (name, meta) in protocols {
        r.string(name);
        put_bytes(&mut r, meta);
    }
    r.finish()
}

/// A JoinGroup answer: the generation joined, and for the leader every member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroup {
    pub error: i16,
    pub generation: i32,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// `(member id, subscription metadata)`; empty unless this member leads.
    pub members: Vec<(String, Vec<u8>)>,
}

/// JoinGroup v2: throttle, error, generation, protocol name, leader, member
/// id, members (member id, metadata). Null strings read as empty, null
/// metadata as empty.
pub fn join_group_response(body: &[u8]) -> Result<JoinGroup, Malformed> {
    let mut r = Reader::new(body, "JoinGroup");
    let _throttle = r.i32()?;
    let error = r.i16()?;
    let generation = r.i32()?;
    let protocol = r.string()?.unwrap_or_default();
    let leader = r.string()?.unwrap_or_default();
    let member_id = r.string()?.unwrap_or_default();
    let n = r.len()?;
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.string()?.ok_or(r.err("member without an id"))?;
        let metadata = r.bytes()?.unwrap_or_default().to_vec();
        members.push((id, metadata));
    }
    Ok(JoinGroup { error, generation, protocol, leader, member_id, members })
}

/// SyncGroup v1: `assignments` are `(member id, assignment)`, sent by the
/// leader only (the others send none).
pub fn sync_group_request(
    client_id: &str,
    group: &str,
    generation: i32,
    member_id: &str,
    assignments: &[(String, Vec<u8>)],
) -> BytesMut {
    let size = string_size(group)
        + 4
        + string_size(member_id)
        + 4
        + assignments.iter().map(|(id, a)| string_size(id) + 4 + a.len()).sum::<usize>();
    let mut r = Request::new(API_SYNC_GROUP, SYNC_GROUP_VERSION, client_id, size);
    r.string(group);
    r.i32(generation);
    r.string(member_id);
    r.len(assignments.len());
    for (id, a) in assignments {
        r.string(id);
        put_bytes(&mut r, a);
    }
    r.finish()
}

/// SyncGroup v1: throttle, error, this member's assignment (null → empty).
pub fn sync_group_response(body: &[u8]) -> Result<(i16, Vec<u8>), Malformed> {
    let mut r = Reader::new(body, "SyncGroup");
    let _throttle = r.i32()?;
    let error = r.i16()?;
    let assignment = r.bytes()?.unwrap_or_default().to_vec();
    Ok((error, assignment))
}

/// Heartbeat v1.
pub fn heartbeat_request(client_id: &str, group: &str, generation: i32, member_id: &str) -> BytesMut {
    let size = string_size(group) + 4 + string_size(member_id);
    let mut r = Request::new(API_HEARTBEAT, HEARTBEAT_VERSION, client_id, size);
    r.string(group);
    r.i32(generation);
    r.string(member_id);
    r.finish()
}

/// Heartbeat v1: throttle, error.
pub fn heartbeat_response(body: &[u8]) -> Result<i16, Malformed> {
    let mut r = Reader::new(body, "Heartbeat");
    let _throttle = r.i32()?;
    r.i16()
}

/// LeaveGroup v1.
pub fn leave_group_request(client_id: &str, group: &str, member_id: &str) -> BytesMut {
    let size = string_size(group) + string_size(member_id);
    let mut r = Request::new(API_LEAVE_GROUP, LEAVE_GROUP_VERSION, client_id, size);
    r.string(group);
    r.string(member_id);
    r.finish()
}

/// LeaveGroup v1: throttle, error.
pub fn leave_group_response(body: &[u8]) -> Result<i16, Malformed> {
    let mut r = Reader::new(body, "LeaveGroup");
    let _throttle = r.i32()?;
    r.i16()
}

/// Offsets to commit, grouped by topic: `(topic, [(partition, next offset)])`.
/// OffsetCommit v2, with the broker's retention (-1) and empty metadata.
pub fn offset_commit_request(
    client_id: &str,
    group: &str,
    generation: i32,
    member_id: &str,
    offsets: &[(&str, Vec<(i32, i64)>)],
) -> BytesMut {
    let size = string_size(group)
        + 4
        + string_size(member_id)
        + 8
        + 4
        + offsets.iter().map(|(t, ps)| string_size(t) + 4 + ps.len() * 14).sum::<usize>();
    let mut r = Request::new(API_OFFSET_COMMIT, OFFSET_COMMIT_VERSION, client_id, size);
    r.string(group);
    r.i32(generation);
    r.string(member_id);
    put_i64(&mut r, -1); // retention time: the broker's
    r.len(offsets.len());
    for (topic, partitions) in offsets {
        r.string(topic);
        r.len(partitions.len());
        for &(partition, offset) in partitions {
            r.i32(partition);
            put_i64(&mut r, offset);
            r.string(""); // metadata
        }
    }
    r.finish()
}

/// OffsetCommit v2 (no throttle field): `(topic, partition, error)` for every partition.
pub fn offset_commit_response(body: &[u8]) -> Result<Vec<(String, i32, i16)>, Malformed> {
    let mut r = Reader::new(body, "OffsetCommit");
    let mut out = Vec::new();
    for _ in 0..r.len()? {
        let topic = r.string()?.ok_or(r.err("topic without a name"))?;
        for _ in 0..r.len()? {
            let partition = r.i32()?;
            let error = r.i16()?;
            out.push((topic.clone(), partition, error));
        }
    }
    Ok(out)
}

/// OffsetFetch v1: the group's committed offsets of these partitions.
pub fn offset_fetch_request(client_id: &str, group: &str, topics: &[(&str, Vec<i32>)]) -> BytesMut {
    let size = string_size(group) + 4 + topics.iter().map(|(t, ps)| string_size(t) + 4 + ps.len() * 4).sum::<usize>();
    let mut r = Request::new(API_OFFSET_FETCH, OFFSET_FETCH_VERSION, client_id, size);
    r.string(group);
    r.len(topics.len());
    for (topic, partitions) in topics {
        r.string(topic);
        r.len(partitions.len());
        for &p in partitions {
            r.i32(p);
        }
    }
    r.finish()
}

/// OffsetFetch v1: `(topic, partition, committed offset (-1 = none), error)`.
pub fn offset_fetch_response(body: &[u8]) -> Result<Vec<(String, i32, i64, i16)>, Malformed> {
    let mut r = Reader::new(body, "OffsetFetch");
    let mut out = Vec::new();
    for _ in 0..r.len()? {
        let topic = r.string()?.ok_or(r.err("topic without a name"))?;
        for _ in 0..r.len()? {
            let partition = r.i32()?;
            let offset = r.i64()?;
            let _metadata = r.string()?;
            let error = r.i16()?;
            out.push((topic.clone(), partition, offset, error));
        }
    }
    Ok(out)
}

/// ListOffsets v1 at `timestamp` (-2 earliest, -1 latest) for every partition listed.
pub fn list_offsets_request(client_id: &str, timestamp: i64, topics: &[(&str, Vec<i32>)]) -> BytesMut {
    let size = 8 + topics.iter().map(|(t, ps)| string_size(t) + 4 + ps.len() * 12).sum::<usize>();
    let mut r = Request::new(API_LIST_OFFSETS, LIST_OFFSETS_VERSION, client_id, size);
    r.i32(-1); // replica id: a consumer
    r.len(topics.len());
    for (topic, partitions) in topics {
        r.string(topic);
        r.len(partitions.len());
        for &p in partitions {
            r.i32(p);
            put_i64(&mut r, timestamp);
        }
    }
    r.finish()
}

/// One partition of a ListOffsets answer: `(topic, partition, error, offset)`.
pub type ListedOffset<'a> = (Cow<'a, str>, i32, i16, i64);

/// ListOffsets v1, with the topics' names borrowed from the body.
pub fn list_offsets_response(body: &[u8]) -> Result<Vec<ListedOffset<'_>>, Malformed> {
    let mut r = Reader::new(body, "ListOffsets");
    let mut out = Vec::new();
    for _ in 0..r.len()? {
        let topic = r.str_ref()?.ok_or(r.err("topic without a name"))?;
        for _ in 0..r.len()? {
            let partition = r.i32()?;
            let error = r.i16()?;
            let _timestamp = r.i64()?;
            let offset = r.i64()?;
            out.push((topic.clone(), partition, error, offset));
        }
    }
    Ok(out)
}

/// Fetch settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchParams {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    /// 0 read uncommitted, 1 read committed.
    pub isolation_level: i8,
    pub partition_max_bytes: i32,
}

/// A fetch session's place in a request (Fetch v7, KIP-227): `id` 0 and
/// `epoch` 0 ask for a new session; a session's `id` with `epoch` 0 closes
/// it and asks for a new one; `epoch` ≥ 1 is an incremental fetch, which
/// names only the partitions that changed since the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionRef {
    pub id: i32,
    pub epoch: i32,
}

/// The partitions of a Fetch request: (topic, partition, fetch offset) to
/// read, and (topic, partition) to leave the session; consecutive entries
/// with the same topic form one topic entry (the caller keeps a topic's
/// partitions together).
pub struct FetchList<'a> {
    pub read: &'a [(&'a str, i32, i64)],
    /// v7: the partitions the session no longer reads; ignored before v7.
    pub forget: &'a [(&'a str, i32)],
}

/// The body size of a Fetch request, exactly.
fn fetch_size(version: i16, list: &FetchList<'_>) -> usize {
    let topics: usize = list.read.chunk_by(|a, b| a.0 == b.0).map(|run| string_size(run[0].0) + 4).sum();
    let per_partition = if version >= 5 { 24 } else { 16 };
    let mut size = 4 + 4 + 4 + 4 + 1 + 4 + topics + list.read.len() * per_partition;
    if version >= FETCH_SESSION_VERSION {
        let forgotten: usize = list.forget.chunk_by(|a, b| a.0 == b.0).map(|run| string_size(run[0].0) + 4).sum();
        size += 8 + 4 + forgotten + list.forget.len() * 4;
    }
    size
}

/// Fetch v4 to v7 (`version`): the partitions to read and, from v7, the
/// session and the partitions it forgets.
pub fn fetch_request(
    client_id: &str,
    version: i16,
    params: &FetchParams,
    session: SessionRef,
    list: &FetchList<'_>,
) -> BytesMut {
    let mut r = Request::new(API_FETCH, version, client_id, fetch_size(version, list));
    r.i32(-1); // replica id: a consumer
    r.i32(params.max_wait_ms);
    r.i32(params.min_bytes);
    r.i32(params.max_bytes);
    r.i8(params.isolation_level);
    if version >= FETCH_SESSION_VERSION {
        r.i32(session.id);
        r.i32(session.epoch);
    }
    r.len(list.read.chunk_by(|a, b| a.0 == b.0).count());
    for run in list.read.chunk_by(|a, b| a.0 == b.0) {
        r.string(run[0].0);
        r.len(run.len());
        for &(_, partition, offset) in run {
            r.i32(partition);
            put_i64(&mut r, offset);
            if version >= 5 {
                put_i64(&mut r, -1); // log start offset: a consumer's is unknown
            }
            r.i32(params.partition_max_bytes);
        }
    }
    if version >= FETCH_SESSION_VERSION {
        r.len(list.forget.chunk_by(|a, b| a.0 == b.0).count());
        for run in list.forget.chunk_by(|a, b| a.0 == b.0) {
            r.string(run[0].0);
            r.len(run.len());
            for &(_, partition) in run {
                r.i32(partition);
            }
        }
    }
    r.finish()
}

/// One partition of a Fetch answer, with its topic's name borrowed from
/// the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition<'a> {
    pub topic: Cow<'a, str>,
    pub partition: i32,
    pub error: i16,
    pub high_watermark: i64,
    /// `(producer_id, first_offset)` of the transactions aborted in the range; null → empty.
    pub aborted: Vec<(i64, i64)>,
    /// The record batches: a zero-copy slice of the response body; null → empty.
    pub records: Bytes,
}

/// A Fetch answer: from v7 an error for the whole request (a session the
/// broker no longer has, a stale session epoch) and the session's id (0:
/// no session); then the partitions in one flat list in the answer's
/// order, which allocates nothing per topic: a fetch without a session
/// lists every assigned partition, thousands of them when every tenant has
/// its own topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchAnswer<'a> {
    pub error: i16,
    pub session_id: i32,
    pub partitions: Vec<FetchedPartition<'a>>,
}

/// What a Fetch answer says before its partitions: enough for an answer
/// that is not used (its assignment since replaced) to close the session it
/// opened, without reading the partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FetchHeader {
    pub throttle_ms: i32,
    /// From v7: an error for the whole request; 0 before.
    pub error: i16,
    /// From v7: the session's id (0: no session); 0 before.
    pub session_id: i32,
}

/// The header of a Fetch v4 to v7 (`version`) answer: throttle, from v7
/// error and session id. The rest of the body is not read.
pub fn fetch_header(body: &[u8], version: i16) -> Result<FetchHeader, Malformed> {
    read_fetch_header(&mut Reader::new(body, "Fetch"), version)
}

fn read_fetch_header(r: &mut Reader<'_>, version: i16) -> Result<FetchHeader, Malformed> {
    let throttle_ms = r.i32()?;
    let (error, session_id) = if version >= FETCH_SESSION_VERSION { (r.i16()?, r.i32()?) } else { (0, 0) };
    Ok(FetchHeader { throttle_ms, error, session_id })
}

/// Fetch v4 to v7 (`version`): the header ([`fetch_header`]), then per
/// topic and partition: partition, error, high watermark, last stable
/// offset, from v5 log start offset, aborted transactions, records.
pub fn fetch_response(body: &Bytes, version: i16) -> Result<FetchAnswer<'_>, Malformed> {
    let mut r = Reader::new(body, "Fetch");
    let FetchHeader { error, session_id, .. } = read_fetch_header(&mut r, version)?;
    let mut partitions = Vec::new();
    for _ in 0..r.len()? {
        let topic = r.str_ref()?.ok_or(r.err("topic without a name"))?;
        let np = r.len()?;
        partitions.reserve(np);
        for _ in 0..np {
            let partition = r.i32()?;
            let error = r.i16()?;
            let high_watermark = r.i64()?;
            let _last_stable_offset = r.i64()?;
            if version >= 5 {
                let _log_start_offset = r.i64()?;
            }
            let na = r.len()?;
            let mut aborted = Vec::with_capacity(na);
            for _ in 0..na {
                aborted.push((r.i64()?, r.i64()?));
            }
            let records = r.bytes()?.map(|b| body.slice_ref(b)).unwrap_or_default();
            partitions.push(FetchedPartition {
                topic: topic.clone(),
                partition,
                error,
                high_watermark,
                aborted,
                records,
            });
        }
    }
    Ok(FetchAnswer { error, session_id, partitions })
}

/// Assignment v0: version i16 = 0, assigned [topic string, partitions [i32]], user_data bytes (null).
pub fn assignment(parts: &[(String, Vec<i32>)]) -> Vec<u8> {
    let size = 2 + 4 + parts.iter().map(|(t, ps)| string_size(t) + 4 + ps.len() * 4).sum::<usize>() + 4;
    let mut b = Vec::with_capacity(size);
    b.put_i16(0);
    put_len(&mut b, parts.len());
    for (topic, partitions) in parts {
        put_string(&mut b, topic);
        put_len(&mut b, partitions.len());
        for &p in partitions {
            b.put_i32(p);
        }
    }
    b.put_i32(-1); // user data: null
    b
}

/// The partitions of an assignment of any version ≥ 0 (later fields
/// ignored); empty input = nothing assigned.
pub fn parse_assignment(b: &[u8]) -> Result<Vec<(String, Vec<i32>)>, Malformed> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader::new(b, "consumer Assignment");
    if r.i16()? < 0 {
        return Err(r.err("negative version"));
    }
    topic_partitions(&mut r)
}

/// `[topic string, partitions [i32]]`, as assignments and subscriptions'
/// owned partitions carry them.
pub fn topic_partitions(r: &mut Reader) -> Result<Vec<(String, Vec<i32>)>, Malformed> {
    let n = r.len()?;
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let topic = r.string()?.ok_or(r.err("null topic"))?;
        let np = r.len()?;
        let mut partitions = Vec::with_capacity(np);
        for _ in 0..np {
            partitions.push(r.i32()?);
        }
        parts.push((topic, partitions));
    }
    Ok(parts)
}

/// An assignment of the whole group: member id → its partitions, by topic.
pub type Plan = BTreeMap<String, Vec<(String, Vec<i32>)>>;

/// The "roundrobin" assignor, as Kafka's RoundRobinAssignor: members sorted
/// by id; every partition of every topic any member subscribes to (and that
/// is in `partitions`, topic → partition count), sorted by (topic,
/// partition), given in turn to the next member (cyclically) that subscribes
/// to its topic. Every member gets an entry, maybe empty; its partitions are
/// grouped by topic, in (topic, partition) order. A member id listed twice
/// counts once, with the union of its subscriptions.
pub fn round_robin(members: &[(String, Vec<String>)], partitions: &BTreeMap<String, i32>) -> Plan {
    let mut by_id: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for (id, topics) in members {
        by_id.entry(id.as_str()).or_default().extend(topics.iter().map(String::as_str));
    }
    let mut ring: Vec<Seat> = by_id.into_iter().map(|(id, topics)| Seat { id, topics, given: Vec::new() }).collect();
    let subscribed: HashSet<&str> = ring.iter().flat_map(|s| s.topics.iter().copied()).collect();
    let mut next = 0;
    for (topic, &count) in partitions.iter().filter(|(t, _)| subscribed.contains(t.as_str())) {
        for p in 0..count.max(0) {
            // Someone subscribes to `topic`, so a lap finds them.
            let Some(at) =
                (0..ring.len()).map(|i| (next + i) % ring.len()).find(|&i| ring[i].topics.contains(topic.as_str()))
            else {
                break;
            };
            let given = &mut ring[at].given;
            match given.last_mut() {
                Some((t, ps)) if t == topic => ps.push(p),
                _ => given.push((topic.clone(), vec![p])),
            }
            next = (at + 1) % ring.len();
        }
    }
    ring.into_iter().map(|s| (s.id.to_owned(), s.given)).collect()
}

/// A member in [`round_robin`]'s ring (sorted by id): what it subscribes to and what it is given.
struct Seat<'a> {
    id: &'a str,
    topics: HashSet<&'a str>,
    given: Vec<(String, Vec<i32>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    const CLIENT: &str = "iotpipe";

    /// Reads back what a request wrote, field by field.
    struct Dec<'a>(&'a [u8]);

    impl<'a> Dec<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            assert!(self.0.len() >= n, "request shorter than expected");
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        }
        fn i8(&mut self) -> i8 {
            self.take(1)[0] as i8
        }
        fn i16(&mut self) -> i16 {
            i16::from_be_bytes(self.take(2).try_into().unwrap())
        }
        fn i32(&mut self) -> i32 {
            i32::from_be_bytes(self.take(4).try_into().unwrap())
        }
        fn i64(&mut self) -> i64 {
            i64::from_be_bytes(self.take(8).try_into().unwrap())
        }
        fn str(&mut self) -> String {
            let n = self.i16();
            assert!(n >= 0, "null string");
            String::from_utf8(self.take(n as usize).to_vec()).unwrap()
        }
        fn bytes(&mut self) -> Option<Vec<u8>> {
            let n = self.i32();
            (n >= 0).then(|| self.take(n as usize).to_vec())
        }
        fn end(&self) {
            assert!(self.0.is_empty(), "{} bytes left over", self.0.len());
        }
    }

    /// Checks the size prefix and the header, and returns the body's reader.
    fn request(req: &[u8], api: i16, version: i16) -> Dec<'_> {
        let mut d = Dec(req);
        assert_eq!(d.i32() as usize, req.len() - 4, "size prefix");
        assert_eq!(d.i16(), api, "api key");
        assert_eq!(d.i16(), version, "api version");
        assert_eq!(d.i32(), 0, "correlation id: the connection's to set");
        assert_eq!(d.str(), CLIENT, "client id");
        d
    }

    fn put_str(b: &mut BytesMut, s: &str) {
        b.put_i16(s.len() as i16);
        b.put_slice(s.as_bytes());
    }

    /// A response cut anywhere is an error, not a panic or a short answer.
    fn every_prefix_fails<T: std::fmt::Debug>(b: &[u8], parse: impl Fn(&[u8]) -> Result<T, Malformed>) {
        for cut in 0..b.len() {
            assert!(parse(&b[..cut]).is_err(), "{cut} of {} bytes parsed: {:?}", b.len(), parse(&b[..cut]));
        }
    }

    #[test]
    fn versions_are_ones_kafka_4_still_speaks() {
        // Kafka 4.0 (KIP-896) dropped: Fetch < 4, ListOffsets < 1, OffsetCommit < 2,
        // OffsetFetch < 1, FindCoordinator < 1, JoinGroup < 2, Heartbeat/LeaveGroup/SyncGroup < 1.
        let lowest = [(1, 4), (2, 1), (8, 2), (9, 1), (10, 1), (11, 2), (12, 1), (13, 1), (14, 1)];
        let mut keys = Vec::new();
        for (key, (version, highest), name) in CONSUMER_APIS {
            let &(_, min) = lowest.iter().find(|(k, _)| *k == key).unwrap();
            assert!(version >= min, "{name} v{version}");
            assert!(highest >= version, "{name} v{version}-v{highest}");
            assert!(!name.is_empty());
            keys.push(key);
        }
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), CONSUMER_APIS.len(), "each api once");
    }

    #[test]
    fn find_coordinator_request_layout() {
        let req = find_coordinator_request(CLIENT, "g1");
        let mut d = request(&req, API_FIND_COORDINATOR, 1);
        assert_eq!(d.str(), "g1");
        assert_eq!(d.i8(), 0, "key type group");
        d.end();
    }

    #[test]
    fn find_coordinator_response_with_and_without_message() {
        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i16(0);
        b.put_i16(-1); // null error message
        b.put_i32(3);
        put_str(&mut b, "kafka-3");
        b.put_i32(9093);
        let c = find_coordinator_response(&b).unwrap();
        assert_eq!(c, Coordinator { error: 0, node_id: 3, host: "kafka-3".into(), port: 9093 });
        every_prefix_fails(&b, find_coordinator_response);

        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i16(15);
        put_str(&mut b, "not available");
        b.put_i32(-1);
        put_str(&mut b, "");
        b.put_i32(-1);
        let c = find_coordinator_response(&b).unwrap();
        assert_eq!((c.error, c.node_id, c.host.as_str(), c.port), (15, -1, "", -1));
    }

    #[test]
    fn join_group_request_layout() {
        let sub = vec![0, 1, 2, 3];
        let req = join_group_request(CLIENT, "g", 10_000, 60_000, "m-1", "consumer", &[("roundrobin", &sub)]);
        let mut d = request(&req, API_JOIN_GROUP, 2);
        assert_eq!(d.str(), "g");
        assert_eq!(d.i32(), 10_000, "session timeout");
        assert_eq!(d.i32(), 60_000, "rebalance timeout");
        assert_eq!(d.str(), "m-1");
        assert_eq!(d.str(), "consumer");
        assert_eq!(d.i32(), 1, "protocols");
        assert_eq!(d.str(), "roundrobin");
        assert_eq!(d.bytes(), Some(sub));
        d.end();

        let req = join_group_request(CLIENT, "g", 1, 2, "", "consumer", &[]);
        let mut d = request(&req, API_JOIN_GROUP, 2);
        d.str();
        d.i32();
        d.i32();
        assert_eq!(d.str(), "", "empty member id on the first join");
        d.str();
        assert_eq!(d.i32(), 0);
        d.end();
    }

    #[test]
    fn join_group_response_for_the_leader() {
        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i16(0);
        b.put_i32(7);
        put_str(&mut b, "roundrobin");
        put_str(&mut b, "m-1");
        put_str(&mut b, "m-2");
        b.put_i32(2);
        put_str(&mut b, "m-1");
        b.put_i32(3);
        b.put_slice(&[1, 2, 3]);
        put_str(&mut b, "m-2");
        b.put_i32(-1); // null metadata
        let j = join_group_response(&b).unwrap();
        assert_eq!(
            j,
            JoinGroup {
                error: 0,
                generation: 7,
                protocol: "roundrobin".into(),
                leader: "m-1".into(),
                member_id: "m-2".into(),
                members: vec![("m-1".into(), vec![1, 2, 3]), ("m-2".into(), vec![])],
            }
        );
        every_prefix_fails(&b, join_group_response);

        // A huge member count is malformed, not an allocation.
        let mut h = BytesMut::new();
        h.put_i32(0);
        h.put_i16(0);
        h.put_i32(1);
        put_str(&mut h, "");
        put_str(&mut h, "");
        put_str(&mut h, "");
        h.put_i32(i32::MAX);
        assert!(join_group_response(&h).is_err());
        // A metadata length past the end too.
        let mut h = b[..b.len() - 4].to_vec();
        h.put_i32(i32::MAX);
        assert!(join_group_response(&h).is_err());
    }

    #[test]
    fn sync_group_request_layout() {
        let a = assignment(&[("t".into(), vec![0, 1])]);
        let req = sync_group_request(CLIENT, "g", 7, "m-1", &[("m-1".into(), a.clone()), ("m-2".into(), vec![])]);
        let mut d = request(&req, API_SYNC_GROUP, 1);
        assert_eq!(d.str(), "g");
        assert_eq!(d.i32(), 7, "generation");
        assert_eq!(d.str(), "m-1");
        assert_eq!(d.i32(), 2, "assignments");
        assert_eq!(d.str(), "m-1");
        assert_eq!(d.bytes(), Some(a));
        assert_eq!(d.str(), "m-2");
        assert_eq!(d.bytes(), Some(vec![]));
        d.end();
    }

    #[test]
    fn sync_group_response_with_and_without_assignment() {
        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i16(0);
        b.put_i32(2);
        b.put_slice(&[9, 8]);
        assert_eq!(sync_group_response(&b), Ok((0, vec![9, 8])));
        every_prefix_fails(&b, sync_group_response);

        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i16(27);
        b.put_i32(-1);
        assert_eq!(sync_group_response(&b), Ok((27, vec![])), "null assignment");
    }

    #[test]
    fn heartbeat_and_leave_group() {
        let req = heartbeat_request(CLIENT, "g", 5, "m");
        let mut d = request(&req, API_HEARTBEAT, 1);
        assert_eq!((d.str(), d.i32(), d.str()), ("g".into(), 5, "m".into()));
        d.end();
        let req = leave_group_request(CLIENT, "g", "m");
        let mut d = request(&req, API_LEAVE_GROUP, 1);
        assert_eq!((d.str(), d.str()), ("g".into(), "m".into()));
        d.end();

        let b = [0, 0, 0, 1, 0, 27];
        assert_eq!(heartbeat_response(&b), Ok(27));
        assert_eq!(leave_group_response(&b), Ok(27));
        every_prefix_fails(&b, heartbeat_response);
        every_prefix_fails(&b, leave_group_response);
    }

    #[test]
    fn offset_commit_request_layout() {
        let offsets = [("a", vec![(0, 10), (2, 1 << 40)]), ("b", vec![(1, 0)])];
        let req = offset_commit_request(CLIENT, "g", 3, "m", &offsets);
        let mut d = request(&req, API_OFFSET_COMMIT, 2);
        assert_eq!(d.str(), "g");
        assert_eq!(d.i32(), 3, "generation");
        assert_eq!(d.str(), "m");
        assert_eq!(d.i64(), -1, "retention time");
        assert_eq!(d.i32(), 2, "topics");
        for (topic, partitions) in &offsets {
            assert_eq!(d.str(), *topic);
            assert_eq!(d.i32() as usize, partitions.len());
            for &(p, o) in partitions {
                assert_eq!(d.i32(), p);
                assert_eq!(d.i64(), o);
                assert_eq!(d.i16(), 0, "metadata: empty, not null");
            }
        }
        d.end();
    }

    #[test]
    fn offset_commit_response_per_partition() {
        let mut b = BytesMut::new();
        b.put_i32(2);
        put_str(&mut b, "a");
        b.put_i32(2);
        b.put_i32(0);
        b.put_i16(0);
        b.put_i32(2);
        b.put_i16(22);
        put_str(&mut b, "b");
        b.put_i32(0);
        let r = offset_commit_response(&b).unwrap();
        assert_eq!(r, vec![("a".into(), 0, 0), ("a".into(), 2, 22)]);
        every_prefix_fails(&b, offset_commit_response);
        assert!(offset_commit_response(&i32::MAX.to_be_bytes()).is_err(), "huge topic count");
    }

    #[test]
    fn offset_fetch_request_layout() {
        let req = offset_fetch_request(CLIENT, "g", &[("a", vec![0, 1]), ("b", vec![])]);
        let mut d = request(&req, API_OFFSET_FETCH, 1);
        assert_eq!(d.str(), "g");
        assert_eq!(d.i32(), 2);
        assert_eq!(d.str(), "a");
        assert_eq!((d.i32(), d.i32(), d.i32()), (2, 0, 1));
        assert_eq!(d.str(), "b");
        assert_eq!(d.i32(), 0);
        d.end();
    }

    #[test]
    fn offset_fetch_response_with_null_metadata() {
        let mut b = BytesMut::new();
        b.put_i32(1);
        put_str(&mut b, "a");
        b.put_i32(2);
        b.put_i32(0);
        b.put_i64(42);
        put_str(&mut b, "");
        b.put_i16(0);
        b.put_i32(1);
        b.put_i64(-1);
        b.put_i16(-1); // null metadata
        b.put_i16(0);
        let r = offset_fetch_response(&b).unwrap();
        assert_eq!(r, vec![("a".into(), 0, 42, 0), ("a".into(), 1, -1, 0)]);
        every_prefix_fails(&b, offset_fetch_response);
        let mut h = BytesMut::new();
        h.put_i32(1);
        put_str(&mut h, "a");
        h.put_i32(i32::MAX);
        assert!(offset_fetch_response(&h).is_err(), "huge partition count");
    }

    #[test]
    fn list_offsets_request_layout() {
        let req = list_offsets_request(CLIENT, -2, &[("a", vec![3]), ("b", vec![0, 1])]);
        let mut d = request(&req, API_LIST_OFFSETS, 1);
        assert_eq!(d.i32(), -1, "replica id");
        assert_eq!(d.i32(), 2);
        assert_eq!(d.str(), "a");
        assert_eq!((d.i32(), d.i32(), d.i64()), (1, 3, -2));
        assert_eq!(d.str(), "b");
        assert_eq!((d.i32(), d.i32(), d.i64(), d.i32(), d.i64()), (2, 0, -2, 1, -2));
        d.end();
    }

    #[test]
    fn list_offsets_response_per_partition() {
        let mut b = BytesMut::new();
        b.put_i32(1);
        put_str(&mut b, "a");
        b.put_i32(2);
        b.put_i32(0);
        b.put_i16(0);
        b.put_i64(-1);
        b.put_i64(100);
        b.put_i32(1);
        b.put_i16(6);
        b.put_i64(-1);
        b.put_i64(-1);
        let r = list_offsets_response(&b).unwrap();
        assert_eq!(r, vec![("a".into(), 0, 0, 100), ("a".into(), 1, 6, -1)]);
        every_prefix_fails(&b, |b| list_offsets_response(b).map(|r| r.len()));
        assert!(list_offsets_response(&[0x7F, 0xFF, 0xFF, 0xFF, 0, 1, b'a']).is_err(), "huge count");
    }

    const PARAMS: FetchParams = FetchParams {
        max_wait_ms: 500,
        min_bytes: 1,
        max_bytes: 52_428_800,
        isolation_level: 1,
        partition_max_bytes: 1 << 20,
    };

    const NO_SESSION: SessionRef = SessionRef { id: 0, epoch: 0 };

    fn read_only<'a>(read: &'a [(&'a str, i32, i64)]) -> FetchList<'a> {
        FetchList { read, forget: &[] }
    }

    #[test]
    fn fetch_request_groups_consecutive_partitions_of_a_topic() {
        let parts = [("a", 0, 5), ("a", 2, 7), ("b", 1, 1 << 33), ("a", 1, 0)];
        let req = fetch_request(CLIENT, 4, &PARAMS, NO_SESSION, &read_only(&parts));
        let mut d = request(&req, API_FETCH, 4);
        assert_eq!(d.i32(), -1, "replica id");
        assert_eq!(d.i32(), 500);
        assert_eq!(d.i32(), 1);
        assert_eq!(d.i32(), 52_428_800);
        assert_eq!(d.i8(), 1);
        assert_eq!(d.i32(), 3, "a, b, then a again");
        for (topic, partitions) in [("a", vec![(0, 5), (2, 7)]), ("b", vec![(1, 1 << 33)]), ("a", vec![(1, 0)])] {
            assert_eq!(d.str(), topic);
            assert_eq!(d.i32() as usize, partitions.len());
            for (p, o) in partitions {
                assert_eq!((d.i32(), d.i64(), d.i32()), (p, o, 1 << 20));
            }
        }
        d.end();

        let req = fetch_request(CLIENT, 4, &PARAMS, NO_SESSION, &read_only(&[]));
        let mut d = request(&req, API_FETCH, 4);
        d.take(17);
        assert_eq!(d.i32(), 0);
        d.end();
    }

    #[test]
    fn fetch_v7_request_carries_the_session_and_what_it_forgets() {
        let read = [("a", 0, 5), ("a", 2, 7), ("b", 1, 9)];
        let forget = [("c", 0), ("c", 3), ("a", 1)];
        let session = SessionRef { id: 77, epoch: 12 };
        let list = FetchList { read: &read, forget: &forget };
        let req = fetch_request(CLIENT, 7, &PARAMS, session, &list);
        let mut d = request(&req, API_FETCH, 7);
        assert_eq!((d.i32(), d.i32(), d.i32(), d.i32(), d.i8()), (-1, 500, 1, 52_428_800, 1));
        assert_eq!((d.i32(), d.i32()), (77, 12), "session id and epoch");
        assert_eq!(d.i32(), 2);
        for (topic, partitions) in [("a", vec![(0, 5), (2, 7)]), ("b", vec![(1, 9)])] {
            assert_eq!(d.str(), topic);
            assert_eq!(d.i32() as usize, partitions.len());
            for (p, o) in partitions {
                assert_eq!((d.i32(), d.i64(), d.i64(), d.i32()), (p, o, -1, 1 << 20), "v5's log start offset: -1");
            }
        }
        assert_eq!(d.i32(), 2, "forgotten: c, then a");
        assert_eq!(d.str(), "c");
        assert_eq!((d.i32(), d.i32(), d.i32()), (2, 0, 3));
        assert_eq!(d.str(), "a");
        assert_eq!((d.i32(), d.i32()), (1, 1));
        d.end();
        let header = 4 + 2 + 2 + 4 + 2 + CLIENT.len();
        assert_eq!(req.len(), header + fetch_size(7, &list), "sized up front");
        // v4 leaves the session and the forgotten list out.
        let req = fetch_request(CLIENT, 4, &PARAMS, session, &list);
        assert_eq!(req.len(), header + fetch_size(4, &list));
        // Session 8, three log start offsets 24, forgotten: count 4, "c" and "a" 3 + 4 each, partitions 12.
        assert_eq!(fetch_size(7, &list) - fetch_size(4, &list), 8 + 24 + 4 + 7 + 7 + 12);
    }

    #[test]
    fn fetch_request_is_sized_up_front() {
        let names: Vec<String> = (0..1000).map(|i| format!("tenant-{i}.project")).collect();
        let parts: Vec<(&str, i32, i64)> =
            names.iter().flat_map(|n| (0..10).map(move |p| (n.as_str(), p, i64::from(p) * 1000))).collect();
        assert_eq!(parts.len(), 10_000);
        let header = 4 + 2 + 2 + 4 + 2 + CLIENT.len();
        for version in [4, 5, 7] {
            let req = fetch_request(CLIENT, version, &PARAMS, NO_SESSION, &read_only(&parts));
            assert_eq!(
                req.len(),
                header + fetch_size(version, &read_only(&parts)),
                "v{version}: the capacity asked for is exactly what is written"
            );
        }
    }

    #[test]
    fn fetch_response_with_records_and_nulls() {
        let mut b = BytesMut::new();
        b.put_i32(0); // throttle
        b.put_i32(1);
        put_str(&mut b, "t");
        b.put_i32(3);
        // Partition 0: records and an aborted transaction.
        b.put_i32(0);
        b.put_i16(0);
        b.put_i64(50);
        b.put_i64(48);
        b.put_i32(1);
        b.put_i64(7);
        b.put_i64(40);
        b.put_i32(4);
        b.put_slice(b"recs");
        // Partition 1: null aborted transactions, null records.
        b.put_i32(1);
        b.put_i16(1);
        b.put_i64(-1);
        b.put_i64(-1);
        b.put_i32(-1);
        b.put_i32(-1);
        // Partition 2: empty arrays.
        b.put_i32(2);
        b.put_i16(0);
        b.put_i64(9);
        b.put_i64(9);
        b.put_i32(0);
        b.put_i32(0);
        let body = b.freeze();
        let answer = fetch_response(&body, 4).unwrap();
        assert_eq!((answer.error, answer.session_id), (0, 0), "v4 has no session");
        let p = answer.partitions;
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.topic == "t"));
        assert!(matches!(p[0].topic, Cow::Borrowed(_)), "the topic's name is borrowed from the body");
        assert_eq!(
            p[0],
            FetchedPartition {
                topic: "t".into(),
                partition: 0,
                error: 0,
                high_watermark: 50,
                aborted: vec![(7, 40)],
                records: Bytes::from_static(b"recs")
            }
        );
        let at = p[0].records.as_ptr() as usize - body.as_ptr() as usize;
        assert_eq!(&body[at..at + 4], b"recs", "records are a slice of the body");
        assert_eq!((p[1].partition, p[1].error, p[1].high_watermark), (1, 1, -1));
        assert!(p[1].aborted.is_empty() && p[1].records.is_empty(), "nulls read as empty");
        assert!(p[2].aborted.is_empty() && p[2].records.is_empty());
        every_prefix_fails(&body, |b| fetch_response(&Bytes::copy_from_slice(b), 4).map(|a| a.partitions.len()));

        let mut h = BytesMut::new();
        h.put_i32(0);
        h.put_i32(1);
        put_str(&mut h, "t");
        h.put_i32(i32::MAX);
        assert!(fetch_response(&h.freeze(), 4).is_err(), "huge partition count");
        let mut h = body[..body.len() - 4].to_vec();
        h.put_i32(i32::MAX); // partition 2's records: longer than the response
        assert!(fetch_response(&Bytes::from(h), 4).is_err());
    }

    /// A Fetch v7 answer: throttle, error, session id, then one partition
    /// per topic — (topic, partition, high watermark, records; `None` null)
    /// — with its last stable offset at the high watermark, log start
    /// offset 2 and no aborted transactions.
    fn v7_answer(throttle: i32, error: i16, session_id: i32, topics: &[(&str, i32, i64, Option<&[u8]>)]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i32(throttle);
        b.put_i16(error);
        b.put_i32(session_id);
        b.put_i32(topics.len() as i32);
        for &(topic, partition, hw, records) in topics {
            put_str(&mut b, topic);
            b.put_i32(1);
            b.put_i32(partition);
            b.put_i16(0);
            b.put_i64(hw);
            b.put_i64(hw);
            b.put_i64(2); // log start offset
            b.put_i32(-1); // aborted: null
            match records {
                Some(r) => {
                    b.put_i32(r.len() as i32);
                    b.put_slice(r);
                }
                None => b.put_i32(-1),
            }
        }
        b.freeze()
    }

    #[test]
    fn fetch_v7_response_with_a_session_and_log_start_offsets() {
        let abc: Option<&[u8]> = Some(b"abc");
        let body = v7_answer(0, 0, 991, &[("t", 3, 50, abc), ("u", 0, 8, abc)]);
        let a = fetch_response(&body, 7).unwrap();
        assert_eq!((a.error, a.session_id), (0, 991));
        let got: Vec<_> =
            a.partitions.iter().map(|p| (&*p.topic, p.partition, p.high_watermark, &p.records[..])).collect();
        assert_eq!(got, [("t", 3, 50, &b"abc"[..]), ("u", 0, 8, &b"abc"[..])]);
        every_prefix_fails(&body, |b| fetch_response(&Bytes::copy_from_slice(b), 7).map(|a| a.partitions.len()));

        // A session the broker no longer has: the error, no partitions.
        let body = v7_answer(0, 70, 0, &[]);
        let a = fetch_response(&body, 7).unwrap();
        assert_eq!((a.error, a.session_id, a.partitions.len()), (70, 0, 0));
    }

    #[test]
    fn fetch_header_reads_throttle_error_and_session_and_agrees_with_fetch_response() {
        // v7: throttle, error, session id, then the topics (never read here).
        let body = v7_answer(25, 0, 991, &[("t", 0, 5, None)]);
        let head = fetch_header(&body, 7).unwrap();
        assert_eq!(head, FetchHeader { throttle_ms: 25, error: 0, session_id: 991 });
        let a = fetch_response(&body, 7).unwrap();
        assert_eq!((a.error, a.session_id), (head.error, head.session_id), "both read the same layout");
        // Only the 10 header bytes are read: the partitions may be cut or garbage.
        assert_eq!(fetch_header(&body[..10], 7), Ok(head));
        assert!(fetch_response(&body.slice(..10), 7).is_err());
        every_prefix_fails(&body[..10], |b| fetch_header(b, 7));
        // A session error, as fetch_response reads it.
        let e = v7_answer(0, 70, 0, &[]);
        assert_eq!(fetch_header(&e, 7), Ok(FetchHeader { throttle_ms: 0, error: 70, session_id: 0 }));
        assert_eq!(fetch_response(&e, 7).map(|a| (a.error, a.session_id)), Ok((70, 0)));

        // v4 to v6: the throttle only; no error, no session.
        let mut b = BytesMut::new();
        b.put_i32(3); // throttle
        b.put_i32(0); // no topics
        let body = b.freeze();
        for version in [4, 5, 6] {
            assert_eq!(fetch_header(&body, version), Ok(FetchHeader { throttle_ms: 3, error: 0, session_id: 0 }));
            let a = fetch_response(&body, version).unwrap();
            assert_eq!((a.error, a.session_id), (0, 0));
            every_prefix_fails(&body[..4], |b| fetch_header(b, version));
        }
    }

    #[test]
    fn assignment_round_trip_and_layout() {
        let parts = vec![("a".to_string(), vec![0, 2]), ("b".to_string(), vec![])];
        let a = assignment(&parts);
        let mut d = Dec(&a);
        assert_eq!(d.i16(), 0, "version");
        assert_eq!(d.i32(), 2);
        assert_eq!(d.str(), "a");
        assert_eq!((d.i32(), d.i32(), d.i32()), (2, 0, 2));
        assert_eq!(d.str(), "b");
        assert_eq!(d.i32(), 0);
        assert_eq!(d.bytes(), None, "null user data");
        d.end();
        assert_eq!(parse_assignment(&a).unwrap(), parts);

        assert_eq!(parse_assignment(&[]).unwrap(), vec![], "empty = nothing assigned");
        // v1 (no added fields, user data present): still read.
        let mut v1 = a.clone();
        v1[1] = 1;
        let n = v1.len();
        v1.truncate(n - 4);
        v1.put_i32(2);
        v1.put_slice(&[1, 2]);
        assert_eq!(parse_assignment(&v1).unwrap(), parts);
        assert!(parse_assignment(&a[..a.len() - 6]).is_err(), "truncated");
        assert!(parse_assignment(&[0, 0, 0, 0, 0, 1, 0, 1, b'a', 0x7F, 0, 0, 0]).is_err(), "huge count");
    }

    fn members(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter().map(|(id, ts)| (id.to_string(), ts.iter().map(|t| t.to_string()).collect())).collect()
    }

    fn counts(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn given(list: &[(&str, &[i32])]) -> Vec<(String, Vec<i32>)> {
        list.iter().map(|(t, ps)| (t.to_string(), ps.to_vec())).collect()
    }

    /// Every partition of the subscribed topics assigned exactly once.
    fn assert_each_once(
        out: &BTreeMap<String, Vec<(String, Vec<i32>)>>,
        partitions: &BTreeMap<String, i32>,
        subscribed: &[&str],
    ) {
        let mut seen: Vec<(String, i32)> =
            out.values().flatten().flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p))).collect();
        seen.sort();
        let subscribed: HashSet<&str> = subscribed.iter().copied().collect();
        let mut want: Vec<(String, i32)> = partitions
            .iter()
            .filter(|(t, _)| subscribed.contains(t.as_str()))
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn round_robin_with_different_subscriptions() {
        // Sorted c0, c1, c2. t0p0 → c0; t0p1 → c1; t0p2: c2 does not take t0, so c0;
        // t1p0 → c1; t1p1 → c2.
        let parts = counts(&[("t0", 3), ("t1", 2), ("unsubscribed", 4)]);
        let m = members(&[("c2", &["t1"]), ("c0", &["t0"]), ("c1", &["t0", "t1"])]);
        let out = round_robin(&m, &parts);
        let want: BTreeMap<String, Vec<(String, Vec<i32>)>> = [
            ("c0".to_string(), given(&[("t0", &[0, 2])])),
            ("c1".to_string(), given(&[("t0", &[1]), ("t1", &[0])])),
            ("c2".to_string(), given(&[("t1", &[1])])),
        ]
        .into();
        assert_eq!(out, want);
        assert_each_once(&out, &parts, &["t0", "t1"]);

        // Members with nothing to take get an empty entry, and change no one else's.
        let mut more = m.clone();
        more.extend(members(&[("b-none", &[]), ("c1a-gone", &["missing"])]));
        let out = round_robin(&more, &parts);
        assert_eq!(out["b-none"], vec![]);
        assert_eq!(out["c1a-gone"], vec![]);
        assert_eq!(out.len(), 5);
        assert_eq!(out.into_iter().filter(|(_, g)| !g.is_empty()).collect::<BTreeMap<_, _>>(), want);
    }

    #[test]
    fn round_robin_as_kafka_documents_it() {
        // RoundRobinAssignor's javadoc: t0, t1, t2 with 1, 2, 3 partitions; C0 takes t0,
        // C1 t0 and t1, C2 all three → C0 [t0p0], C1 [t1p0], C2 [t1p1, t2p0, t2p1, t2p2].
        let parts = counts(&[("t0", 1), ("t1", 2), ("t2", 3)]);
        let m = members(&[("C0", &["t0"]), ("C1", &["t0", "t1"]), ("C2", &["t0", "t1", "t2"])]);
        let out = round_robin(&m, &parts);
        assert_eq!(out["C0"], given(&[("t0", &[0])]));
        assert_eq!(out["C1"], given(&[("t1", &[0])]));
        assert_eq!(out["C2"], given(&[("t1", &[1]), ("t2", &[0, 1, 2])]));
        // And: C0, C1 both on t0, t1 with 3 partitions each → C0 [t0p0, t0p2, t1p1], C1 [t0p1, t1p0, t1p2].
        let parts = counts(&[("t0", 3), ("t1", 3)]);
        let m = members(&[("C1", &["t0", "t1"]), ("C0", &["t1", "t0"])]);
        let out = round_robin(&m, &parts);
        assert_eq!(out["C0"], given(&[("t0", &[0, 2]), ("t1", &[1])]));
        assert_eq!(out["C1"], given(&[("t0", &[1]), ("t1", &[0, 2])]));
        assert!(round_robin(&[], &parts).is_empty());
    }

    #[test]
    fn round_robin_balances_many_topics() {
        let names: Vec<String> = (0..10_000).map(|i| format!("t{i:05}")).collect();
        let parts: BTreeMap<String, i32> = names.iter().map(|n| (n.clone(), 1)).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        for n in [7, 10] {
            let m: Vec<(String, Vec<String>)> = (0..n).map(|i| (format!("m{i}"), names.clone())).collect();
            let out = round_robin(&m, &parts);
            assert_eq!(out.len(), n);
            let sizes: Vec<usize> = out.values().map(|g| g.iter().map(|(_, ps)| ps.len()).sum()).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "{n} members: {sizes:?}");
            assert_each_once(&out, &parts, &all);
        }
    }
}
