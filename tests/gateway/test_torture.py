"""The gateway torture test (issue 14 acceptance, issue 20 findings 2, 5, 8, 11, 22).

A real agent (`python -m edge run`, fresh data directory, loopback only) whose store has a corrupt block, a file
whose blocks are held by no one and a malformed UnixFS file; its two neighbours are real transport servers in
this process: one lies (serves wrong bytes for its leaves) and one stalls (answers hello and Have, never a Get).
Clients (from 127.0.0.1 and .3) fire at least 10,000 gateway requests (real and random CIDs and paths, ranges past the end, raw and
CAR, aborted connections, slow readers, malformed HTTP, oversized heads), a few thousand garbage /webrtc offers
and a few thousand garbage control-socket requests, while a well-behaved client fetches a real file over and
over from 127.0.0.2. Asserted: the agent stays up, every answer has a status of issue 14 point 1 (or an ordinary HTTP answer to
a bad request), no wrong byte is ever sent (a body for real content matches it or is a prefix cut short), and
the well-behaved client is answered throughout. Printed: the counts and its p99 latency (never asserted).
"""

import collections
import io
import os
import random
import socket
import time

import h11
import pytest
import trio

from edge.identity import Identity
from edge.store import Store, content
from edge.ipld.car import read_car, serialize_header, serialize_section
from edge.ipld.cid import RAW, CID
from edge.store.importer import Chunker
from edge.transport.server import Policy, serve_transport

from tests.agent.netns import Node
from tests.agent.test_shutdown import free_port
from tests.gateway.faults import corrupt, leaves_held_by_no_one, malformed_file
from tests.test_fetch import liar

pytestmark = pytest.mark.trio

REQUESTS = int(os.environ.get("TORTURE_REQUESTS", 10_000))   # gateway requests (/webrtc, control on top)
WEBRTC = REQUESTS // 5
CONTROL = REQUESTS // 5
WORKERS = 24               # connections at once from the attackers
SLOW_HEADS = 40            # connections that send half a head and wait (each holds a slot until the timeout)
TIME_LIMIT = 240           # seconds: a hard bound on the whole test (it takes well under a minute here)
# every status the gateway may answer with: issue 14 point 1, and the ordinary answers to what a client asked
ALLOWED = {200, 201, 204, 206, 301, 304, 400, 404, 405, 408, 413, 415, 416, 429, 431, 500, 502, 503, 504, 507}
LEAF = 32 * 1024           # small leaves: many blocks per file, few bytes per request (the CPU goes on requests)
CHUNKER = Chunker(size=LEAF)
LINGER0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"   # SO_LINGER on, 0 s: close() sends a reset


def car_bytes(store, root) -> bytes:
    """The CAR the gateway sends for root: the header, then the DAG's blocks in walk order."""
    return serialize_header([root]) + b"".join(serialize_section(c, d) for c, d in content.walk_blocks(store, root))


class Content:
    """What the agent holds and what each CID should give."""

    def __init__(self, tmp_path, data_dir):
        rng = random.Random(1)
        self.good = rng.randbytes(2 * LEAF + 1000)        # a file whose blocks are all sound
        self.bad = rng.randbytes(6 * LEAF)                # its third leaf goes bad on disk
        self.bad_first = rng.randbytes(2 * LEAF)          # its first leaf goes bad
        self.lied = rng.randbytes(2 * LEAF + 5)           # only the liar holds it
        self.stalled = rng.randbytes(2 * LEAF + 7)        # only the staller holds it
        (tmp_path / "dir").mkdir()
        (tmp_path / "dir" / "a.txt").write_bytes(b"hello\n")
        (tmp_path / "dir" / "b.bin").write_bytes(self.good[:5000])
        with Store(str(tmp_path / "scratch")) as scratch:          # the sound copies, for the expected bytes
            self.roots = {}
            for name, data in (("good", self.good), ("bad", self.bad), ("bad_first", self.bad_first),
                               ("lied", self.lied), ("stalled", self.stalled)):
                (tmp_path / name).write_bytes(data)
                self.roots[name] = content.add(scratch, str(tmp_path / name), chunker=CHUNKER).cid
            self.roots["dir"] = content.add(scratch, str(tmp_path / "dir"), chunker=CHUNKER).cid
            self.cars = {n: car_bytes(scratch, self.roots[n]) for n in ("good", "bad", "dir")}
            self.raw = {n: scratch.get(self.roots[n]) for n in self.roots}
        with Store(data_dir) as store:
            for name in ("good", "bad", "bad_first", "dir"):
                content.add(store, str(tmp_path / name), chunker=CHUNKER)
            bad_leaves = [c for c, _ in content.walk_blocks(store, self.roots["bad"])][1:]
            corrupt(store, bad_leaves[2])
            first_leaf = [c for c, _ in content.walk_blocks(store, self.roots["bad_first"])][1]
            corrupt(store, first_leaf)
            self.roots["nobody"] = leaves_held_by_no_one(store)
            self.roots["malformed"], self.malformed_prefix = malformed_file(store, first_ok=True)
            self.roots["malformed_first"], _ = malformed_file(store, first_ok=False)
        self.files = {"good": self.good, "bad": self.bad, "bad_first": self.bad_first, "lied": self.lied,
                      "stalled": self.stalled, "malformed": self.malformed_prefix}


async def neighbour(nursery, tmp_path, name, data, kind):
    """A real transport server holding data: kind "liar" serves zeros for its leaves, "staller" answers
    hello and Have but never a Get, "honest" serves what it holds (hash-valid, if malformed)."""
    store = Store(str(tmp_path / name))
    (tmp_path / f"{name}.in").write_bytes(data)
    content.add(store, str(tmp_path / f"{name}.in"), chunker=CHUNKER)
    ident = Identity.generate()
    if kind == "liar":
        liar(store)
    elif kind == "staller":
        store.get_many = lambda cids: [None] * len(cids)   # every Get of a GetMany goes to _read_block ...
    server = await nursery.start(serve_transport, store, ident, Policy(), "tcp://127.0.0.1:0")
    endpoint = server.endpoint
    if kind == "staller":
        server.server._read_block = lambda *args, **kwargs: None  # ... which never answers
    return store, f"{ident.node_id}@127.0.0.1:{endpoint.rsplit(':', 1)[1]}"


class Tally:
    def __init__(self):
        self.statuses = collections.Counter()
        self.kinds = collections.Counter()
        self.cut = 0          # bodies cut off short (a failure after the headers)
        self.wrong = []       # (what, why): must stay empty
        self.no_answer = 0    # connections closed without a status though the client waited for one
        self.unanswered = collections.Counter()


async def exchange(port, data: bytes, *, read_limit=None, slow=False, abort_after=None, timeout=30.0,
                   half_close=False, local="127.0.0.1"):
    """Send data on a fresh connection; (status, headers, body, complete) from h11, or None if no response
    head came. read_limit/abort_after stop reading early; slow reads in small pieces with pauses; half_close
    ends the sending side after data (a request cut short is then seen at once, not after the server's
    timeout)."""
    conn = h11.Connection(h11.CLIENT)
    status, headers, body, complete = None, {}, bytearray(), False
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
        except OSError:
            return None, {}, b"", False
        try:
            await stream.send_all(data)
            if half_close:
                await stream.send_eof()
            got = 0
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    break          # a body cut off short: h11 says so when the connection closes early
                if event is h11.NEED_DATA:
                    if abort_after is not None and got >= abort_after:
                        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                        break
                    if slow:
                        await trio.sleep(0.05)
                    chunk = await stream.receive_some(4096 if slow else 65536)
                    got += len(chunk)
                    conn.receive_data(chunk)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                    if read_limit is not None and len(body) >= read_limit:
                        break
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()
    return status, headers, bytes(body), complete


def request(method, target, headers=()):
    lines = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def check_body(tally, what, status, headers, body, complete, expected: bytes | None, stopped=False):
    """A body for real content must match it from where the Content-Range says, or be a prefix cut short
    (stopped: the client stopped reading, so a short body is its own doing)."""
    if status is None:
        if not stopped:
            tally.no_answer += 1
            tally.unanswered[what] += 1
        return
    tally.statuses[status] += 1
    if status not in ALLOWED:
        tally.wrong.append((what, f"status {status}"))
    if status in (200, 206) and expected is not None:
        offset = 0
        if status == 206:
            offset = int(headers["content-range"].split()[1].split("-")[0])
        if body != expected[offset:offset + len(body)]:
            tally.wrong.append((what, f"{len(body)} bytes at {offset} differ from the content"))
        if complete and "content-length" in headers and len(body) != int(headers["content-length"]):
            tally.wrong.append((what, "a complete body of the wrong length"))
    if not complete and not stopped and status in (200, 206):
        tally.cut += 1


def gateway_case(rng, c: Content):
    """One request: (what, bytes to send, the content a 200/206 body must match or None, exchange options)."""
    r = rng.random()
    name = rng.choice(["good", "good", "good", "bad", "bad_first", "nobody", "lied", "malformed",
                       "malformed_first", "remote_malformed", "remote_malformed_first",
                       "stalled" if rng.random() < 0.05 else "good"])
    root = c.roots[name]
    expected = c.files.get(name)
    if r < 0.30:
        size = len(expected or b"x" * 100_000)
        first = rng.randrange(0, size * 2)
        last = first + rng.randrange(0, size)
        rng_header = rng.choice([f"Range: bytes={first}-{last}", f"Range: bytes={first}-", f"Range: bytes=-{last}",
                                 "Range: bytes=5-2", "Range: bytes=0-0", f"Range: bytes={size}-"])
        return f"range {name}", request("GET", f"/ipfs/{root}", [rng_header]), expected, {}
    if r < 0.40:
        return f"raw {name}", request("GET", f"/ipfs/{root}?format=raw"), c.raw.get(name), {}
    if r < 0.48:
        return f"car {name}", request("GET", f"/ipfs/{root}", ["Accept: application/vnd.ipld.car"]), \
            c.cars.get(name), {}
    if r < 0.58:
        cid = CID.for_block(rng.randbytes(16), RAW)
        return "random cid", request("GET", f"/ipfs/{cid}" + rng.choice(["", "/x", "?format=raw"])), None, {}
    if r < 0.64:
        leaf = rng.choice(["a.txt", "b.bin", "nosuch", "a.txt/deeper", "%2e%2e", ""])
        want = {"a.txt": b"hello\n", "b.bin": c.good[:5000]}.get(leaf)
        return "path", request("GET", f"/ipfs/{c.roots['dir']}/{leaf}"), want, {}
    if r < 0.68:
        return f"abort {name}", request("GET", f"/ipfs/{root}"), expected, {"abort_after": rng.randrange(0, 3 * LEAF)}
    if r < 0.70:
        return "slow reader", request("GET", f"/ipfs/{c.roots['good']}"), c.good, {"slow": True,
                                                                                  "read_limit": 2 * LEAF}
    if r < 0.82:
        bad = rng.choice([
            b"\x16\x03\x01" + rng.randbytes(200) + b"\r\n\r\n", b"GET //[x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /streams/%E2%82%AC HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /ipfs/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
            b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", rng.randbytes(rng.randrange(1, 2000)),
            b"GET /ipfs/" + rng.randbytes(40).hex().encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"DELETE /ipfs/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /player/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
        return "malformed", bad, None, {"half_close": True}
    if r < 0.90:
        n = rng.choice([20_000, 60_000, 200_000])
        head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-%d: %s\r\n" % (i, b"a" * 990) for i in range(n // 1000)) + b"\r\n"
        return "oversized head", head, None, {"half_close": True}
    method = rng.choice(["GET", "HEAD"])
    return f"{method.lower()} {name}", request(method, f"/ipfs/{root}"), expected, {}


# the status each whole GET must have (503 is always allowed: the connection cap): the right answer, not just one
# of the allowed ones
STATUS_OF = {"get good": {200}, "get bad": {200}, "get malformed": {200}, "get nobody": {404},
             "get lied": {502}, "get stalled": {504}, "get malformed_first": {502}, "get bad_first": {502, 404},
             "get remote_malformed": {200}, "get remote_malformed_first": {502},
             "random cid": {404}}


def webrtc_case(rng) -> bytes:
    body = rng.choice([b"", rng.randbytes(rng.randrange(1, 4000)), b"v=0\r\n" * rng.randrange(1, 3000),
                       b"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" + rng.randbytes(200),
                       b"m=application garbage\r\n" * 50])
    ctype = rng.choice([b"application/sdp", b"text/plain", b"application/sdp; x=\xff", b""])
    length = len(body) if rng.random() < 0.9 else rng.choice([0, len(body) + 10, 10_000_000])
    return (b"POST /webrtc HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % length + body)


def control_attack(path: str, n: int, seed: int) -> collections.Counter:
    """n garbage requests to the control socket (blocking, in a thread): random bytes, resets, half lines, bad
    JSON and valid but unknown commands; returns what came back."""
    rng = random.Random(seed)
    seen = collections.Counter()
    for _ in range(n):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            for _ in range(200):
                try:
                    s.connect(path)
                    break
                except BlockingIOError:
                    time.sleep(0.01)
            kind = rng.randrange(6)
            payload = [rng.randbytes(rng.randrange(1, 5000)), b'{"cmd": "status"}\n', b"[1, 2, 3]\n",
                       b'{"cmd": "fetch", "cid": "garbage"}\n', b'{"cmd": ' + b"[" * 3000 + b"\n",
                       b'{"cmd": "nosuch"}'][kind]
            try:
                s.sendall(payload)
                if rng.random() < 0.3:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)   # reset at close
                    seen["reset"] += 1
                    continue
                s.shutdown(socket.SHUT_WR)   # the end of a half line (else the agent waits for the rest)
                reply = s.recv(65536)
                seen["answered" if reply.startswith(b'{"ok"') else "closed"] += 1
            except OSError:
                seen["closed"] += 1
    return seen


async def test_gateway_torture(tmp_path):
    with trio.fail_after(TIME_LIMIT):
        await _torture(tmp_path)


async def _torture(tmp_path):
    async with trio.open_nursery() as nursery:
        # the agent's data directory is made by `hearth init` before the content goes in
        port = free_port()
        node = await trio.to_thread.run_sync(lambda: Node(None, str(tmp_path / "agent"), {
            "HEARTH_MDNS": "false", "HEARTH_GATEWAY_PORT": str(port)}))
        c = await trio.to_thread.run_sync(Content, tmp_path, str(tmp_path / "agent"))
        lying_store, lying = await neighbour(nursery, tmp_path, "liar", c.lied, "liar")
        stalling_store, stalling = await neighbour(nursery, tmp_path, "staller", c.stalled, "staller")
        # finding 2c: hash-valid, malformed UnixFS that the agent fetches, stores and must then answer cleanly
        honest_store, honest = await neighbour(nursery, tmp_path, "honest", b"", "honest")
        c.roots["remote_malformed"], c.files["remote_malformed"] = malformed_file(honest_store, first_ok=True)
        c.roots["remote_malformed_first"], _ = malformed_file(honest_store, first_ok=False)
        await trio.to_thread.run_sync(lambda: node.start("--port", str(free_port()), "--metrics-port", "0",
                                                         "--peer", lying, "--peer", stalling, "--peer", honest))
        try:
            await _fire(nursery, c, port, node)
        finally:
            await trio.to_thread.run_sync(node.stop)
            lying_store.close()
            stalling_store.close()
            honest_store.close()
            nursery.cancel_scope.cancel()


async def _fire(nursery, c, port, node):
    tally, webrtc, latencies = Tally(), Tally(), []
    done = trio.Event()
    t0 = time.monotonic()

    async def well_behaved():
        """Fetches the sound file again and again, as a player would, and checks every byte."""
        while not done.is_set():
            began = time.monotonic()
            status, _, body, complete = await exchange(port, request("GET", f"/ipfs/{c.roots['good']}"),
                                                       local="127.0.0.2")   # a viewer: a host of its own
            latencies.append(time.monotonic() - began)
            assert status == 200 and complete and body == c.good, \
                f"the well-behaved client got {status}, {len(body)} bytes, complete={complete}"
            await trio.sleep(0.05)

    count = {"gateway": 0, "webrtc": 0}

    async def attacker(seed):
        rng = random.Random(seed)
        while count["gateway"] < REQUESTS or count["webrtc"] < WEBRTC:
            if count["webrtc"] < WEBRTC and (rng.random() < 0.17 or count["gateway"] >= REQUESTS):
                count["webrtc"] += 1
                status, h, body, complete = await exchange(port, webrtc_case(rng), half_close=True)
                check_body(webrtc, "webrtc", status, h, body, complete, None)
                continue
            count["gateway"] += 1
            if count["gateway"] % 1000 == 0:
                print(f"{count['gateway']} gateway requests after {time.monotonic() - t0:.1f} s", flush=True)
            what, data, expected, opts = gateway_case(rng, c)
            status, h, body, complete = await exchange(port, data, **opts)
            tally.kinds[what.split()[0]] += 1
            stopped = opts.get("abort_after") is not None or opts.get("read_limit") is not None
            check_body(tally, what, status, h, body, complete, expected, stopped)
            if what in STATUS_OF and status not in STATUS_OF[what] | {503}:
                tally.wrong.append((what, f"status {status}, not {STATUS_OF[what]}"))

    control_seen = collections.Counter()

    async def control_garbage():
        path = os.path.join(node.data_dir, "control.sock")
        control_seen.update(await trio.to_thread.run_sync(control_attack, path, CONTROL, 7))

    slow_heads = collections.Counter()

    async def slow_head(i):
        """Half a request head, then silence: the server gives up on it (408) and closes."""
        status, _, _, _ = await exchange(port, b"GET /ipfs/" + b"x" * i + b" HTTP/1.1\r\nHo", timeout=30.0,
                                         local="127.0.0.3")   # a second attacker
        slow_heads[status] += 1

    async with trio.open_nursery() as inner:
        inner.start_soon(well_behaved)
        async with trio.open_nursery() as attackers:
            attackers.start_soon(control_garbage)
            for i in range(SLOW_HEADS):
                attackers.start_soon(slow_head, i)
            for i in range(WORKERS):
                attackers.start_soon(attacker, i)
        done.set()
    elapsed = time.monotonic() - t0

    assert node.proc.poll() is None, f"the agent exited: {node.logs()[-3000:]}"
    with open(f"/proc/{node.proc.pid}/stat") as f:
        ticks = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
    agent_cpu = ticks / os.sysconf("SC_CLK_TCK")
    status = await trio.to_thread.run_sync(node.status)   # the control socket still answers
    assert status["gateway_port"] == port
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"\ntorture: {count['gateway']} gateway requests, {count['webrtc']} /webrtc offers, {CONTROL} control "
          f"requests in {elapsed:.1f} s (the agent used {agent_cpu:.1f} s of CPU); gateway statuses {dict(sorted(tally.statuses.items()))}, "
          f"cut off {tally.cut}, no answer {dict(tally.unanswered)}; kinds {dict(tally.kinds)}; /webrtc statuses "
          f"{dict(sorted(webrtc.statuses.items()))}; control {dict(control_seen)}; half heads {dict(slow_heads)}; well-behaved client: "
          f"{len(lat)} fetches, p50 {lat[len(lat) // 2] * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {lat[-1] * 1000:.0f} ms")
    assert tally.wrong == [] and webrtc.wrong == [], (tally.wrong[:10], webrtc.wrong[:10])
    assert tally.no_answer == 0 and webrtc.no_answer == 0, (tally.unanswered, webrtc.unanswered)
    assert count["gateway"] >= REQUESTS and len(lat) > 0
    assert control_seen.get("answered", 0) > 0
    assert set(slow_heads) <= {408, 503, None}, slow_heads   # 503: past that address's share
