"""The transport server's answers: each request a neighbour sends, parsed, checked against its peer's standing
(admitted, within its rate, within what may be held for the upload limit) and answered from the store, in the
serving thread (edge/transport/server.py runs the loop). A Put goes to a small worker pool (it writes and
fsyncs) and its reply comes back through the serving thread. Every failure is a typed reply; nothing a peer
sends stops the server.

A request costs tokens by what it asks for (a Have of 1,024 CIDs is 1,024 lookups, an Audit AUDIT_COST). A GetMany's blocks are read
from the store a group at a time (one native call) and the small ones go back several to a Blocks message.
In a fleet, the Welcome carries this node's certificate: members check it as it checks theirs.
"""

import logging
import os

import zmq

from edge.errors import DecodeError
from edge.fleet.certificates import CertificateError, check_certificate
from edge.identity import curve_public_of
from edge.kernels import HASH_LANES
from edge.store.errors import BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull
from edge.transport.accounting import Peer
from edge.transport.pieces import AUDIT_COST, PIECE_REQUESTS, AnsweringPieces
from edge.wire.messages import MAX_BODY, ListStreams, Streams
from edge.wire.live import LiveWant
from edge.wire import (MAX_PROBE, Audit, SUPPORTED_VERSIONS, Block, Blocks, Error, ErrorCode, Get, GetMany, Have, HaveReply,
                       Hello, Probe, ProbeData, Put, PutOk, Welcome, parse_message)
from edge.wire.jobs import Encoders, JobCancel, JobQuery, JobSubmit, LiveFeed, LivePull, LiveSubmit

log = logging.getLogger(__name__)
BLOCKS_BYTES = 128 << 10   # a Blocks reply is sent once it carries this much (a larger block goes alone)
READ_GROUP = 32        # blocks of a GetMany read from the store in one call (a client's GetMany is
                       # up to half its window: 32 of a window of 64 in one read)
MAX_PUTS = 16          # writes queued or running at once, over all peers; more get BUSY
CAPS = ("store", "probe", "getmany", "streams")
PIECE_CAPS = ("pieces",)   # a node that lends disk to neighbours (share > 0) holds pieces
SAY_HELLO = "say hello (with a valid certificate in a fleet) first"
PROBE_FILLER = bytes(MAX_PROBE)   # what a throughput probe gets (the link encrypts it; its content is nothing)
JOB_REQUESTS = (Encoders, JobSubmit, JobQuery, JobCancel, LiveSubmit, LivePull, LiveFeed)


class LiveAnswers:
    """Answering LiveWant (where to subscribe to a live stream of this node's) through the agent's fan-out
    (edge/media/fanout.py, set as the server's `live`; None: this node publishes no live stream)."""

    live = None

    def _live_want(self, peer: Peer, msg: LiveWant):
        answer = self.live.source_for(peer.node, msg) if self.live is not None else None
        if answer is None:
            return Error(msg.id, ErrorCode.NOT_FOUND, f"no live stream {msg.name!r} here")
        return answer


class Answering(AnsweringPieces, LiveAnswers):
    """How the serving thread answers requests: the request-handling half of TransportServer, which supplies
    store, pieces, identity, policy, metrics (Counters), book (PeerBook), held (Held), clock, draining, _send,
    _puts and _putting, _done and _wake; and jobs, the agent's transcode worker (edge/media/jobs.py), or None.
    Pieces are answered by edge/transport/pieces.py."""

    jobs = None

    def _take(self, router: zmq.Socket, head: zmq.Frame, body: list[bytes]) -> int:
        """Answer one message (reads and hellos here; a put goes to the workers); returns how many requests it
        held (the blocks of a GetMany each count)."""
        route = head.bytes
        user_id = head.get("User-Id")
        if user_id is None:
            return 1   # not CURVE-authenticated: cannot happen with curve_server set
        peer = self.book.peer(user_id)
        if peer.upload is None:   # once per peer: the address its connection comes from decides its link class
            peer.upload = self.policy.upload_lane(_address(head))
        try:
            msg = parse_message(body, max_payload=self.policy.max_payload)
        except DecodeError as exc:
            self.metrics.inc("requests")
            self.metrics.inc("bad_requests")
            self._send(router, route, Error(0, ErrorCode.BAD_REQUEST, str(exc)))
            return 1
        if type(msg) is GetMany:
            self.metrics.inc("requests", len(msg.cids))
            if self.draining or not peer.admitted:
                return self._get_many_refused(router, route, peer, msg)
            self._get_many(router, route, peer, msg)
            return len(msg.cids)
        # a Have costs a lookup per CID: it is charged that many requests (and counted so); one larger than
        # the burst (a tight configured rate) takes a full bucket, so it can still be answered
        cost = max(1, len(msg.cids)) if type(msg) is Have else AUDIT_COST if type(msg) is Audit else 1
        self.metrics.inc("requests", cost)
        rid = getattr(msg, "id", 0)
        if self.draining or not peer.take(self.policy.rate, self.policy.burst, self.clock(),
                                          min(cost, max(1, int(self.policy.burst)))):
            self.metrics.inc("busy")
            self._send(router, route, Error(rid, ErrorCode.BUSY, "this node is shutting down; try another"
                                            if self.draining else "too many requests; slow down"))
            return 1
        try:
            reply = self._answer(route, peer, msg)
        except Exception:   # a bug or an unexpected OS error (a failing card): this request fails, not the server
            log.exception("answering %r failed", msg)
            self.metrics.inc("errors")
            reply = Error(rid, ErrorCode.INTERNAL, "this node failed to answer; try another")
        if reply is not None:
            self._send(router, route, reply)
        return 1

    def _get_many(self, router: zmq.Socket, route: bytes, peer: Peer, msg: GetMany) -> None:
        """Answer each Get of a GetMany as a Get is answered; the blocks that can go now travel together in
        Blocks replies (one message, one encryption, for many small blocks), the rest each on its own: an Error,
        or a Block held for the upload limit. The store reads and checks them about a Blocks reply's worth at a
        time (READ_GROUP small blocks; large ones a pair at a time where the hashing kernel takes two at once, else one
        by one, so the socket's thread encrypts and sends them while the next are read and checked: read 8 at
        once, a 256 KiB block waited for seven others before it went; with SHA-NI's two lanes a pair is checked in
        about the time one took alone)."""
        ids, sizes, datas, size = [], [], [], 0
        granted = peer.take_up_to(len(msg.cids), self.policy.rate, self.policy.burst, self.clock())
        # the lane of this peer's link class (the governor's caps; each lane also counts what it carried, so
        # every block pays through it, limited or not)
        upload, held, served, served_bytes = peer.upload, self.held, 0, 0
        # the first HASH_LANES blocks' sizes say how many to read next (a pair of 256 KiB blocks is checked in
        # one kernel call; 1 KiB blocks then go READ_GROUP at a time)
        count, start, group = len(msg.cids), 0, HASH_LANES
        while start < count:
            end = min(count, start + group)
            cids = msg.cids[start:min(granted, end)]
            read = self._read_group(cids) if cids and not held.queue else [None] * len(cids)
            try:   # every one a block's bytes (the common case; an error or None has no length)
                lens, whole = list(map(len, read)), True
            except TypeError:
                lens, whole = [len(got) for got in read if type(got) is bytes], False
            got_bytes = sum(lens)
            group = max(HASH_LANES, min(READ_GROUP, BLOCKS_BYTES * len(read) // got_bytes)) if got_bytes else \
                READ_GROUP
            if whole and end <= granted and not held.queue and got_bytes and \
                    size + got_bytes - lens[-1] < BLOCKS_BYTES and upload.count_unlimited(got_bytes):
                # the common case of a link without a cap, for the whole group at once: each block read and
                # checked, none held, none filling a Blocks reply before the last (the same replies as the
                # loop below gives; per-block Python was a large share of a small block's serving CPU)
                ids.extend(range(msg.id + start, msg.id + end))
                sizes.extend(lens)
                datas.extend(read)
                size += got_bytes
                served += end - start
                served_bytes += got_bytes
                if size >= BLOCKS_BYTES:
                    self._send(router, route, Blocks(tuple(ids), tuple(sizes), _joined(datas)))
                    ids, sizes, datas, size = [], [], [], 0
                start = end
                continue
            for i in range(start, end):
                rid, cid = msg.id + i, msg.cids[i]
                got = read[i - start] if i < granted else None
                if type(got) is bytes and not held.queue:
                    # the common case, answered as _answer_read answers it (a whole block the store read and
                    # checked, nothing held back) without a Block per block: µs that count for small blocks
                    total = len(got)
                    wait = upload.debit_within(total)
                    served += 1
                    served_bytes += total
                    if wait is None:   # its lane is as far ahead as it may be: held unpaid, as _answer_read does
                        held.hold(self.clock() + upload.behind(), route, peer, Block(rid, cid, 0, total, got),
                                  paid=False)
                        continue
                    if wait > 0:   # over the upload limit: held back, as _answer_read holds it
                        held.hold(self.clock() + wait, route, peer, Block(rid, cid, 0, total, got))
                        continue
                    ids.append(rid)
                    sizes.append(total)
                    datas.append(got)
                    size += total
                    if size >= BLOCKS_BYTES:
                        self._send(router, route, Blocks(tuple(ids), tuple(sizes), _joined(datas)))
                        ids, sizes, datas, size = [], [], [], 0
                    continue
                if i >= granted:
                    self.metrics.inc("busy")
                    reply = Error(rid, ErrorCode.BUSY, "too many requests; slow down")
                else:
                    try:   # with blocks held for the upload limit, each is read as a Get is (bounds first)
                        reply = self._read_block(route, peer, rid, cid) if got is None else \
                            self._answer_read(route, peer, rid, cid, got)
                    except Exception:   # as in _take: this request fails, not the server
                        log.exception("answering a get of %s failed", cid)
                        self.metrics.inc("errors")
                        reply = Error(rid, ErrorCode.INTERNAL, "this node failed to answer; try another")
                if type(reply) is Block:
                    ids.append(rid)
                    sizes.append(reply.total)
                    datas.append(reply.data)
                    size += reply.total
                    if size >= BLOCKS_BYTES:
                        self._send(router, route, Blocks(tuple(ids), tuple(sizes), _joined(datas)))
                        ids, sizes, datas, size = [], [], [], 0
                elif reply is not None:
                    self._send(router, route, reply)
            start = end
        if served:
            self.metrics.inc("blocks_served", served)
            self.metrics.inc("bytes_served", served_bytes)
        if ids:
            self._send(router, route, Blocks(tuple(ids), tuple(sizes), _joined(datas)))

    def _read_group(self, cids) -> list:
        """store.get_many, or, if that fails as a whole (a bug), each one's exception."""
        try:
            return self.store.get_many(cids)
        except Exception as exc:   # noqa: BLE001 - each request of the group gets INTERNAL below
            log.exception("reading %d blocks failed", len(cids))
            return [exc] * len(cids)

    def _get_many_refused(self, router: zmq.Socket, route: bytes, peer: Peer, msg: GetMany) -> int:
        """Every Get of a GetMany told no: the node is draining, or the peer has not said hello."""
        if self.draining:
            self.metrics.inc("busy", len(msg.cids))
            code, text = ErrorCode.BUSY, "this node is shutting down; try another"
        else:
            self.book.refused(peer, "a request before an accepted hello")
            code, text = ErrorCode.REFUSED, SAY_HELLO
        for get in msg.gets():
            self._send(router, route, Error(get.id, code, text))
        return len(msg.cids)

    def _answer(self, route: bytes, peer: Peer, msg):
        if isinstance(msg, Hello):
            return self._hello(peer, msg)
        if not peer.admitted:
            self.book.refused(peer, "a request before an accepted hello")
            return Error(getattr(msg, "id", 0), ErrorCode.REFUSED, SAY_HELLO)
        if isinstance(msg, (Get, Have)):
            return self._read(route, peer, msg)
        if isinstance(msg, ListStreams):
            return self._list_streams(msg)
        if isinstance(msg, Put):
            return self._put(route, peer, msg)
        if isinstance(msg, Probe):
            return self._probe(peer, msg)
        if isinstance(msg, JOB_REQUESTS):
            if self.jobs is None:
                return Error(msg.id, ErrorCode.REFUSED, "this node takes no transcode jobs")
            return self.jobs.answer(peer.node, msg)   # never waits: it hands the work to the agent
        if isinstance(msg, PIECE_REQUESTS):
            return self._piece(route, peer, msg)
        if isinstance(msg, LiveWant):
            return self._live_want(peer, msg)
        return Error(getattr(msg, "id", 0), ErrorCode.BAD_REQUEST, f"{type(msg).__name__} is not a request")

    def _hello(self, peer: Peer, msg: Hello):
        common = set(msg.versions) & set(SUPPORTED_VERSIONS)
        if not common:
            return Error(0, ErrorCode.UNSUPPORTED_VERSION,
                         f"no common protocol version (this node speaks {list(SUPPORTED_VERSIONS)})")
        try:
            expected = curve_public_of(msg.node)
        except DecodeError as exc:
            return Error(0, ErrorCode.BAD_REQUEST, str(exc))
        if expected != peer.key:
            self.book.refused(peer, f"its transport key does not belong to the node id it gave ({msg.node})")
            return Error(0, ErrorCode.REFUSED, "the transport key does not match the node id")
        if self.policy.admission == "fleet":
            try:
                check_certificate(msg.cert or b"", self.policy.fleet_key, msg.node)
            except CertificateError as exc:
                self.book.refused(peer, f"not admitted to the fleet: {exc}")
                return Error(0, ErrorCode.REFUSED, f"not admitted to this fleet: {exc}")
        peer.node, peer.admitted = msg.node, True
        peer.operator = msg.operator
        if msg.operator and self.pieces is not None:
            self._note_operator(msg.node, msg.operator)   # a co-holder's operator (edge/transport/pieces.py)
        self.metrics.inc("hellos")
        caps = CAPS
        if self.pieces is not None and self.pieces.share > 0:
            caps += PIECE_CAPS
        if self.jobs is not None and self.jobs.accepting:
            caps += ("transcode",)
        return Welcome(self.identity.node_id, max(common), caps,
                       self.policy.cert if self.policy.admission == "fleet" else None, self._free(),
                       self.policy.operator)

    def _free(self) -> int | None:
        """Bytes free on the store's disk, for the Welcome: told only to a peer that proved its key."""
        try:
            fs = os.statvfs(self.store.root)
        except (AttributeError, OSError):
            return None
        return fs.f_bavail * fs.f_frsize

    def _read(self, route: bytes, peer: Peer, msg):
        """Answer a Have or Get from the store."""
        if isinstance(msg, Have):
            return HaveReply(msg.id, tuple(self.store.has(c) for c in msg.cids))
        return self._read_block(route, peer, msg.id, msg.cid, msg.offset, msg.length)

    def _read_block(self, route: bytes, peer: Peer, rid: int, cid, offset: int = 0, length: int | None = None):
        """The Block answering a get (every block read is checked against its CID), an Error, or None: a block
        the upload limit cannot pay for now is held back until it can, while other requests are answered."""
        if self.held.queue and self.held.full(peer, 1):
            return self._spent(rid)   # before reading: a peer that keeps asking costs no disk or hashing
        try:
            data = self.store.get(cid)
        except Exception as exc:   # noqa: BLE001 - _answer_read says what each kind means
            data = exc
        return self._answer_read(route, peer, rid, cid, data, offset, length)

    def _answer_read(self, route: bytes, peer: Peer, rid: int, cid, data, offset: int = 0,
                     length: int | None = None):
        """_read_block's answer, given what the store gave: the block's bytes or the exception it raised."""
        if isinstance(data, Exception):
            if isinstance(data, (BlockNotFound, CorruptBlock)):
                self.metrics.inc("not_found")
                return Error(rid, ErrorCode.NOT_FOUND, f"this node does not hold {cid}")
            if isinstance(data, StoreError):
                log.error("reading %s failed: %s", cid, data)
            else:   # a bug, or an OS error from a failing card
                log.error("reading %s failed", cid, exc_info=data)
            self.metrics.inc("errors")
            return Error(rid, ErrorCode.INTERNAL, "this node failed to answer; try another")
        total = len(data)
        if offset or length is not None:
            if offset > total:
                return Error(rid, ErrorCode.BAD_REQUEST, f"offset {offset} is past the block's {total} bytes")
            end = total if length is None else min(total, offset + length)
            data = data[offset:end]
        size = len(data)
        if self.held.queue and self.held.full(peer, size):
            return self._spent(rid)
        wait = peer.upload.debit_within(size)
        metrics = self.metrics
        metrics.inc("blocks_served")
        metrics.inc("bytes_served", size)
        reply = Block(rid, cid, offset, total, data)
        if wait is None:   # its lane is as far ahead as it may be: held unpaid until it is not (server.py)
            self.held.hold(self.clock() + peer.upload.behind(), route, peer, reply, paid=False)
            return None
        if wait <= 0:
            return reply
        self.held.hold(self.clock() + wait, route, peer, reply)
        return None

    def _spent(self, rid: int) -> Error:
        self.metrics.inc("busy")
        return Error(rid, ErrorCode.BUSY, "this node's upload limit is spent; retry later")

    def _probe(self, peer: Peer, msg: Probe):
        """A throughput probe: filler bytes, paid from the upload limit like a block (a probe cannot get round
        the household's cap). It never makes the node wait: if the limit cannot pay for it now, BUSY (the
        prober tries again later)."""
        if not peer.upload.take_now(msg.size):
            self.metrics.inc("busy")
            return Error(msg.id, ErrorCode.BUSY, "the upload limit is spent; probe later")
        self.metrics.inc("probes")
        self.metrics.inc("probe_bytes", msg.size)
        return ProbeData(msg.id, memoryview(PROBE_FILLER)[:msg.size])

    def _list_streams(self, msg: ListStreams) -> Streams:
        """This node's signed stream entries from msg.start on (those named msg.name only, when given), as
        many as fit in one body. self.streams: (name, signed bytes) pairs, replaced whole by the agent's streams
        service (edge/discovery/streams.py)."""
        chosen = [data for name, data in self.streams if not msg.name or name == msg.name]
        out, room = [], MAX_BODY - 256
        for data in chosen[msg.start:]:
            if len(data) + 4 > room:
                break
            out.append(data)
            room -= len(data) + 4
        return Streams(msg.id, tuple(out), len(chosen))

    def _put(self, route: bytes, peer: Peer, msg: Put):
        if self.policy.admission == "open" and peer.key not in self._writers:
            self.book.refused(peer, "a put from a node not allowed to write")
            return Error(msg.id, ErrorCode.REFUSED, "this node does not accept writes from you")
        return self._submit(msg.id, self._store_put, route, msg)

    def _submit(self, rid: int, fn, *args):
        """fn(*args) in a put worker (it hands its reply to the serving thread), or BUSY while MAX_PUTS are
        queued or running."""
        if self._putting >= MAX_PUTS:
            self.metrics.inc("busy")
            return Error(rid, ErrorCode.BUSY, "this node is busy writing; retry later")
        self._putting += 1
        self._puts.submit(fn, *args)
        return None

    def _store_put(self, route: bytes, msg: Put) -> None:
        """In a put worker: store the block, then hand the reply to the serving thread."""
        try:
            stored = self.store.put(msg.cid, msg.data, verify=True)
            reply = PutOk(msg.id, stored > 0)
        except DecodeError as exc:
            reply = Error(msg.id, ErrorCode.BAD_REQUEST, str(exc))
        except (QuotaExceeded, StoreFull) as exc:
            reply = Error(msg.id, ErrorCode.QUOTA, str(exc))
        except StoreError as exc:
            log.error("storing %s failed: %s", msg.cid, exc)
            reply = Error(msg.id, ErrorCode.INTERNAL, "this node failed to store the block; try another")
        except BaseException:
            log.exception("storing %s failed", msg.cid)
            reply = Error(msg.id, ErrorCode.INTERNAL, "this node failed to store the block; try another")
        self._done.append((route, reply))   # the serving thread sends it and counts the put as done
        self._wake()


def _address(head: zmq.Frame) -> str | None:
    """The address a message's connection comes from (libzmq's Peer-Address), None where it has none."""
    try:
        return head.get("Peer-Address")
    except (zmq.ZMQError, ValueError, AttributeError):
        return None


def _joined(datas: list) -> bytes:
    return datas[0] if len(datas) == 1 else b"".join(datas)

