#!/usr/bin/env python3
"""A Kafka broker that does as little as a broker can: the bridge's and the
sink's own cost at any number of topics, without a stand-in's per-partition
work in the way (scripts/bench_scale.py --kafka-stand-in null|memory).

It speaks just what iotpipe's native producer, topic creator and consumer
send, in the non-flexible versions: ApiVersions v0, Metadata v4,
InitProducerId v0-v1, CreateTopics v0, Produce v3-v7, and with --keep Fetch
v4-v7, ListOffsets v1, OffsetFetch v1, OffsetCommit v2, FindCoordinator v1,
JoinGroup v2, SyncGroup v1, Heartbeat v1 and LeaveGroup v1. Every topic
exists, with --partitions partitions led by this broker; a produce request
is answered with consecutive offsets per partition. Without --keep nothing
is kept; with it the record batches are kept in memory as they came (their
base offset set) and served to Fetch, for a group of one member at a time
(each join is a new generation, its member the leader). Fetch v7 keeps
fetch sessions as Kafka does (KIP-227): a full fetch opens one, an
incremental fetch names only the partitions that changed and is answered
only for partitions with records or a new high watermark, and a partition
that returned records moves to the end of its session's order. With
--evict-sessions-every N every Nth incremental fetch finds its session gone
(error 70), as when a broker's session cache evicts it. Not a Kafka: no
replication, no retention, no transactions.

    python3 scripts/null_kafka.py --port 9092 [--partitions 1] [--keep]
                                  [--evict-sessions-every N] [--stats SECONDS]
"""

import argparse
import asyncio
import bisect
import struct
import sys

API_PRODUCE, API_METADATA, API_VERSIONS, API_CREATE_TOPICS, API_INIT_PRODUCER_ID = 0, 3, 18, 19, 22
API_FETCH, API_LIST_OFFSETS, API_OFFSET_COMMIT, API_OFFSET_FETCH = 1, 2, 8, 9
API_FIND_COORDINATOR, API_JOIN_GROUP, API_HEARTBEAT, API_LEAVE_GROUP, API_SYNC_GROUP = 10, 11, 12, 13, 14
# (api key, min version, max version) this broker answers.
APIS = [(API_PRODUCE, 3, 7), (API_METADATA, 4, 4), (API_VERSIONS, 0, 0), (API_CREATE_TOPICS, 0, 0),
        (API_INIT_PRODUCER_ID, 0, 1)]
# The consumer's, answered with --keep.
CONSUMER_APIS = [(API_FETCH, 4, 7), (API_LIST_OFFSETS, 1, 1), (API_OFFSET_COMMIT, 2, 2), (API_OFFSET_FETCH, 1, 1),
                 (API_FIND_COORDINATOR, 1, 1), (API_JOIN_GROUP, 2, 2), (API_HEARTBEAT, 1, 1),
                 (API_LEAVE_GROUP, 1, 1), (API_SYNC_GROUP, 1, 1)]


I16, I32 = struct.Struct(">h"), struct.Struct(">i")
FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH = 70, 71
# Sessions kept at most; the oldest goes first, as in Kafka's session cache.
MAX_SESSIONS = 1000


class Session:
    """A fetch session: (topic, partition) -> [encoded topic name, fetch offset,
    partition max bytes, the high watermark last answered, the offset after
    the records last answered], in answer order."""

    def __init__(self, sid):
        self.id, self.epoch, self.parts = sid, 1, {}


class Reader:
    def __init__(self, buf, at=0):
        self.buf, self.at = buf, at

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.at)
        self.at += struct.calcsize(fmt)
        return v[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.buf[self.at:self.at + n].decode()
        self.at += n
        return s

    def blob(self):
        n = self.take(">i")
        if n < 0:
            return b""
        b = self.buf[self.at:self.at + n]
        self.at += n
        return b


def string(s):
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def blob(b):
    return struct.pack(">i", len(b)) + b


def per_partition(r, each):
    """Read a request's [topic [partition ...]] array and answer it alike:
    `each(topic, r)` reads one partition's fields and returns its answer."""
    topics = r.take(">i")
    out = [struct.pack(">i", topics)]
    for _ in range(topics):
        name = r.string()
        parts = r.take(">i")
        out.append(string(name) + struct.pack(">i", parts))
        out.extend(each(name, r) for _ in range(parts))
    return b"".join(out)


class Log:
    """One partition's batches, kept as they came with their base offsets set."""

    def __init__(self):
        self.lasts, self.batches, self.next = [], [], 0

    def append(self, records, count):
        base = self.next
        self.next += count
        if records:
            at = 0
            while at + 61 <= len(records):
                length = struct.unpack_from(">i", records, at + 8)[0]
                batch = bytearray(records[at:at + 12 + length])
                delta = struct.unpack_from(">i", batch, 23)[0]
                struct.pack_into(">q", batch, 0, base)
                self.batches.append(bytes(batch))
                self.lasts.append(base + delta)
                base += delta + 1
                at += 12 + length
        return self.next - count

    def read(self, offset, limit):
        return self.read_to(offset, limit)[0]

    def read_to(self, offset, limit):
        """The batches from `offset` up to `limit` bytes (at least one), and
        the offset after them."""
        i = bisect.bisect_left(self.lasts, offset)
        out, size = [], 0
        while i < len(self.batches) and (not out or size + len(self.batches[i]) <= limit):
            out.append(self.batches[i])
            size += len(self.batches[i])
            i += 1
        return b"".join(out), (self.lasts[i - 1] + 1 if out else offset)


class Broker:
    def __init__(self, host, port, partitions, keep=False, evict_every=0):
        self.host, self.port, self.partitions, self.keep = host, port, partitions, keep
        self.evict_every = evict_every
        self.sessions, self.next_session = {}, 1
        # repeats: records answered again in a session because the consumer
        # did not name the partition at its new offset.
        self.stats = {"full": 0, "incremental": 0, "sessions_opened": 0, "sessions_lost": 0, "partitions_named": 0,
                      "repeats": 0}
        self.offsets = {}
        self.logs = {}
        self.committed = {}
        self.topics = set()
        self.producer_id = 0
        self.generation = 0
        self.members = 0
        self.assignments = {}

    def metadata(self, r):
        n = r.take(">i")
        names = [r.string() for _ in range(n)] if n >= 0 else sorted(self.topics)
        self.topics.update(names)
        out = [struct.pack(">ii", 0, 1), struct.pack(">i", 0), string(self.host), struct.pack(">ih", self.port, -1),
               struct.pack(">h", -1), struct.pack(">ii", 0, len(names))]
        for name in names:
            out.append(struct.pack(">h", 0) + string(name) + struct.pack(">bi", 0, self.partitions))
            for p in range(self.partitions):
                out.append(struct.pack(">hiiiiii", 0, p, 0, 1, 0, 1, 0))
        return b"".join(out)

    def produce(self, r, version):
        r.string()  # transactional id
        r.take(">h")  # acks
        r.take(">i")  # timeout

        def each(name, r):
            index = r.take(">i")
            records = r.blob()
            # Every batch's record count: last offset delta + 1.
            count, at = 0, 0
            while at + 61 <= len(records):
                length = struct.unpack_from(">i", records, at + 8)[0]
                count += struct.unpack_from(">i", records, at + 23)[0] + 1
                at += 12 + length
            key = (name, index)
            if self.keep:
                base = self.logs.setdefault(key, Log()).append(records, count)
            else:
                base = self.offsets.get(key, 0)
                self.offsets[key] = base + count
            return struct.pack(">ihqq", index, 0, base, -1) + (struct.pack(">q", 0) if version >= 5 else b"")
        return per_partition(r, each) + struct.pack(">i", 0)  # throttle

    def create_topics(self, r):
        n = r.take(">i")
        out = [struct.pack(">i", n)]
        for _ in range(n):
            name = r.string()
            r.take(">i")
            r.take(">h")
            for _ in range(r.take(">i")):
                r.take(">i")
                for _ in range(r.take(">i")):
                    r.take(">i")
            for _ in range(r.take(">i")):
                r.string()
                r.string()
            self.topics.add(name)
            out.append(string(name) + struct.pack(">h", 0))
        return b"".join(out)

    async def fetch(self, r, version):
        r.take(">i")  # replica id
        max_wait, _min_bytes, max_bytes = r.take(">i"), r.take(">i"), r.take(">i")
        r.take(">b")  # isolation level
        sid, epoch = (r.take(">i"), r.take(">i")) if version >= 7 else (0, -1)
        # Read inline, without a call per field: a consumer of a topic per
        # tenant lists thousands of topics in every fetch.
        part = struct.Struct(">iqqi" if version >= 5 else ">iqi")
        asked, buf, at = [], r.buf, r.at
        (topics,) = I32.unpack_from(buf, at)
        at += 4
        for _ in range(topics):
            (size,) = I16.unpack_from(buf, at)
            encoded = buf[at:at + 2 + size]  # the name as the answer repeats it
            name = buf[at + 2:at + 2 + size].decode()
            (n,) = I32.unpack_from(buf, at + 2 + size)
            at += 6 + size
            # (partition, offset, [log start offset,] partition max bytes) × n, in one call.
            fields = part.iter_unpack(buf[at:at + part.size * n])
            parts = [(f[0], f[1], f[-1]) for f in fields] if version >= 5 else list(fields)
            asked.append((name, encoded, parts))
            self.stats["partitions_named"] += n
            at += part.size * n
        forgotten = []
        if version >= 7:
            (topics,) = I32.unpack_from(buf, at)
            at += 4
            for _ in range(topics):
                (size,) = I16.unpack_from(buf, at)
                name = buf[at + 2:at + 2 + size].decode()
                (n,) = I32.unpack_from(buf, at + 2 + size)
                at += 6 + size
                forgotten.extend((name, p) for (p,) in struct.iter_unpack(">i", buf[at:at + 4 * n]))
                at += 4 * n
        r.at = at

        def head(error, session_id):
            return struct.pack(">ihi", 0, error, session_id) if version >= 7 else I32.pack(0)

        if epoch > 0:
            self.stats["incremental"] += 1
            session = self.sessions.get(sid)
            if session is not None and self.evict_every and self.stats["incremental"] % self.evict_every == 0:
                del self.sessions[sid]
                session = None
            if session is None:
                self.stats["sessions_lost"] += 1
                return head(FETCH_SESSION_ID_NOT_FOUND, 0) + I32.pack(0)
            if session.epoch != epoch:
                return head(INVALID_FETCH_SESSION_EPOCH, 0) + I32.pack(0)
            for name, encoded, parts in asked:
                for index, offset, part_max in parts:
                    kept = session.parts.get((name, index))
                    if kept is None:
                        session.parts[(name, index)] = [encoded, offset, part_max, -1, -1]
                    else:
                        kept[1], kept[2] = offset, part_max
            for key in forgotten:
                session.parts.pop(key, None)
            session.epoch = 1 if epoch == 2**31 - 1 else epoch + 1
            out, found = self.incremental_answer(session, max_bytes, version)
            if not found:
                await asyncio.sleep(min(max_wait, 100) / 1000)
                out, _ = self.incremental_answer(session, max_bytes, version)
            return head(0, sid) + out

        self.stats["full"] += 1
        session_id = 0
        if sid:
            self.sessions.pop(sid, None)
        if epoch == 0:
            session = Session(self.next_session)
            self.next_session += 1
            for name, encoded, parts in asked:
                for index, offset, part_max in parts:
                    session.parts[(name, index)] = [encoded, offset, part_max, -1, -1]
            if len(self.sessions) >= MAX_SESSIONS:
                del self.sessions[next(iter(self.sessions))]
            self.sessions[session.id] = session
            self.stats["sessions_opened"] += 1
            session_id = session.id
        out, found = self.full_answer(asked, max_bytes, version)
        if not found:
            await asyncio.sleep(min(max_wait, 100) / 1000)
            out, _ = self.full_answer(asked, max_bytes, version)
        if session_id:
            # What the answer told of each partition, for the next incremental one.
            session = self.sessions.get(session_id)
            for key, kept in (session.parts.items() if session else ()):
                log = self.logs.get(key)
                kept[3] = log.next if log else 0
        return head(0, session_id) + out

    def full_answer(self, asked, max_bytes, version):
        """Every partition asked, in the order asked."""
        logs, v5 = self.logs, version >= 5
        empty = struct.Struct(">ihqqqiI" if v5 else ">ihqqiI")
        with_records = struct.Struct(">ihqqqii" if v5 else ">ihqqii")
        out, total = [I32.pack(len(asked))], 0
        for name, encoded, parts in asked:
            out.append(encoded)
            out.append(I32.pack(len(parts)))
            for index, offset, part_max in parts:
                log = logs.get((name, index))
                hw = log.next if log is not None else 0
                if log is None or offset >= hw or total >= max_bytes:
                    out.append(empty.pack(index, 0, hw, hw, 0, -1, 0) if v5 else empty.pack(index, 0, hw, hw, -1, 0))
                    continue
                records = log.read(offset, min(part_max, max_bytes - total) if total else part_max)
                total += len(records)
                n = len(records)
                out.append(with_records.pack(index, 0, hw, hw, 0, -1, n) if v5 else
                           with_records.pack(index, 0, hw, hw, -1, n))
                out.append(records)
        return b"".join(out), total > 0

    def incremental_answer(self, session, max_bytes, version):
        """The session's partitions with records or a new high watermark, in
        the session's order; those with records then move to its end."""
        logs = self.logs
        head = struct.Struct(">ihqqqii")  # v7: with the log start offset
        runs, total, moved = [], 0, []
        for key, kept in session.parts.items():
            encoded, offset, part_max, last_hw, served_to = kept
            log = logs.get(key)
            hw = log.next if log is not None else 0
            records = b""
            if log is not None and offset < hw and total < max_bytes:
                records, kept[4] = log.read_to(offset, min(part_max, max_bytes - total) if total else part_max)
                if offset < served_to:
                    self.stats["repeats"] += 1
            if not records and hw == last_hw:
                continue
            kept[3] = hw
            total += len(records)
            if records:
                moved.append(key)
            answer = head.pack(key[1], 0, hw, hw, 0, -1, len(records)) + records
            if runs and runs[-1][0] == encoded:
                runs[-1][1].append(answer)
            else:
                runs.append((encoded, [answer]))
        for key in moved:
            session.parts[key] = session.parts.pop(key)
        out = [I32.pack(len(runs))]
        for encoded, answers in runs:
            out.append(encoded)
            out.append(I32.pack(len(answers)))
            out.extend(answers)
        return b"".join(out), total > 0

    def list_offsets(self, r):
        r.take(">i")  # replica id

        def each(name, r):
            index, ts = r.take(">i"), r.take(">q")
            log = self.logs.get((name, index))
            offset = (log.next if log else 0) if ts == -1 else 0
            return struct.pack(">ihqq", index, 0, -1, offset)
        return per_partition(r, each)

    def offset_fetch(self, r):
        group = r.string()

        def each(name, r):
            index = r.take(">i")
            offset = self.committed.get((group, name, index), -1)
            return struct.pack(">iq", index, offset) + string("") + struct.pack(">h", 0)
        return per_partition(r, each)

    def offset_commit(self, r):
        group = r.string()
        r.take(">i")  # generation
        r.string()  # member
        r.take(">q")  # retention

        def each(name, r):
            index, offset = r.take(">i"), r.take(">q")
            r.string()  # metadata
            self.committed[(group, name, index)] = offset
            return struct.pack(">ih", index, 0)
        return per_partition(r, each)

    def join_group(self, r):
        r.string()
        r.take(">i")
        r.take(">i")
        member = r.string()
        r.string()  # protocol type
        protocols = [(r.string(), r.blob()) for _ in range(r.take(">i"))]
        if not member:
            self.members += 1
            member = f"member-{self.members}"
        self.generation += 1
        name, metadata = protocols[0]
        return (struct.pack(">ihi", 0, 0, self.generation) + string(name) + string(member) + string(member)
                + struct.pack(">i", 1) + string(member) + blob(metadata))

    def sync_group(self, r):
        r.string()
        r.take(">i")
        member = r.string()
        for _ in range(r.take(">i")):
            who = r.string()
            self.assignments[who] = r.blob()
        return struct.pack(">ih", 0, 0) + blob(self.assignments.get(member, b""))

    def answer_consumer(self, api, r):
        if api == API_LIST_OFFSETS:
            return self.list_offsets(r)
        if api == API_OFFSET_FETCH:
            return self.offset_fetch(r)
        if api == API_OFFSET_COMMIT:
            return self.offset_commit(r)
        if api == API_FIND_COORDINATOR:
            return struct.pack(">ih", 0, 0) + string(None) + struct.pack(">i", 0) + string(self.host) + \
                struct.pack(">i", self.port)
        if api == API_JOIN_GROUP:
            return self.join_group(r)
        if api == API_SYNC_GROUP:
            return self.sync_group(r)
        if api in (API_HEARTBEAT, API_LEAVE_GROUP):
            return struct.pack(">ih", 0, 0)
        return None

    async def answer(self, body):
        r = Reader(body)
        api, version, correlation = r.take(">h"), r.take(">h"), r.take(">i")
        r.string()  # client id
        if api == API_VERSIONS:
            apis = APIS + (CONSUMER_APIS if self.keep else [])
            out = struct.pack(">hi", 0, len(apis)) + b"".join(struct.pack(">hhh", *a) for a in apis)
        elif api == API_METADATA:
            out = self.metadata(r)
        elif api == API_PRODUCE:
            out = self.produce(r, version)
        elif api == API_INIT_PRODUCER_ID:
            self.producer_id += 1
            out = struct.pack(">ihqh", 0, 0, self.producer_id, 0)
        elif api == API_CREATE_TOPICS:
            out = self.create_topics(r)
        elif self.keep and api == API_FETCH:
            out = await self.fetch(r, version)
        elif self.keep:
            out = self.answer_consumer(api, r)
            if out is None:
                return None
        else:
            return None
        return struct.pack(">ii", len(out) + 4, correlation) + out

    async def serve(self, reader, writer):
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                reply = await self.answer(await reader.readexactly(size))
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--partitions", type=int, default=1, help="partitions of every topic")
    ap.add_argument("--keep", action="store_true", help="keep the records in memory and serve them to consumers")
    ap.add_argument("--evict-sessions-every", type=int, default=0, metavar="N",
                    help="every Nth incremental fetch finds its session gone (0: never)")
    ap.add_argument("--stats", type=float, default=0, metavar="SECONDS",
                    help="print the fetch counters to stderr this often, when they changed (0: never)")
    a = ap.parse_args()
    broker = Broker(a.host, a.port, a.partitions, a.keep, a.evict_sessions_every)
    server = await asyncio.start_server(broker.serve, a.host, a.port)
    async with server:
        if a.stats > 0:
            asyncio.ensure_future(print_stats(broker, a.stats))
        await server.serve_forever()


async def print_stats(broker, every):
    last = None
    while True:
        await asyncio.sleep(every)
        if broker.stats != last:
            last = dict(broker.stats)
            print("fetch " + " ".join(f"{k}={v}" for k, v in last.items()), file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
