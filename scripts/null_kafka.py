#!/usr/bin/env python3
"""A Kafka broker that acknowledges every produce request and keeps nothing:
the bridge's own cost at any number of topics, without a stand-in's
per-partition work in the way (scripts/bench_scale.py --kafka-stand-in null).

It speaks just what iotpipe's native producer and topic creator send, in
the non-flexible versions: ApiVersions v0, Metadata v4, InitProducerId v0-v1,
CreateTopics v0 and Produce v3-v7. Every topic exists, with --partitions
partitions led by this broker; a produce request is answered with
consecutive offsets per partition. Not a Kafka: nothing can be read back.

    python3 scripts/null_kafka.py --port 9092 [--partitions 1]
"""

import argparse
import asyncio
import struct

API_PRODUCE, API_METADATA, API_VERSIONS, API_CREATE_TOPICS, API_INIT_PRODUCER_ID = 0, 3, 18, 19, 22
# (api key, min version, max version) this broker answers.
APIS = [(API_PRODUCE, 3, 7), (API_METADATA, 4, 4), (API_VERSIONS, 0, 0), (API_CREATE_TOPICS, 0, 0),
        (API_INIT_PRODUCER_ID, 0, 1)]


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
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class Broker:
    def __init__(self, host, port, partitions):
        self.host, self.port, self.partitions = host, port, partitions
        self.offsets = {}
        self.topics = set()
        self.producer_id = 0

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
        out = []
        topics = r.take(">i")
        out.append(struct.pack(">i", topics))
        for _ in range(topics):
            name = r.string()
            parts = r.take(">i")
            out.append(string(name) + struct.pack(">i", parts))
            for _ in range(parts):
                index = r.take(">i")
                records = r.blob()
                # Every batch's record count: last offset delta + 1.
                count, at = 0, 0
                while at + 61 <= len(records):
                    length = struct.unpack_from(">i", records, at + 8)[0]
                    count += struct.unpack_from(">i", records, at + 23)[0] + 1
                    at += 12 + length
                key = (name, index)
                base = self.offsets.get(key, 0)
                self.offsets[key] = base + count
                out.append(struct.pack(">ihqq", index, 0, base, -1))
                if version >= 5:
                    out.append(struct.pack(">q", 0))
        out.append(struct.pack(">i", 0))  # throttle
        return b"".join(out)

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

    def answer(self, body):
        r = Reader(body)
        api, version, correlation = r.take(">h"), r.take(">h"), r.take(">i")
        r.string()  # client id
        if api == API_VERSIONS:
            out = struct.pack(">hi", 0, len(APIS)) + b"".join(struct.pack(">hhh", *a) for a in APIS)
        elif api == API_METADATA:
            out = self.metadata(r)
        elif api == API_PRODUCE:
            out = self.produce(r, version)
        elif api == API_INIT_PRODUCER_ID:
            self.producer_id += 1
            out = struct.pack(">ihqh", 0, 0, self.producer_id, 0)
        elif api == API_CREATE_TOPICS:
            out = self.create_topics(r)
        else:
            return None
        return struct.pack(">ii", len(out) + 4, correlation) + out

    async def serve(self, reader, writer):
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                reply = self.answer(await reader.readexactly(size))
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
    a = ap.parse_args()
    broker = Broker(a.host, a.port, a.partitions)
    server = await asyncio.start_server(broker.serve, a.host, a.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
