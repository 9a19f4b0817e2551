"""The HTTP gateway (part of `hearth run`): streams for players, content and trustless blocks by CID.

    GET /                              the player page (lists the streams, plays any of them)
    GET /api/streams                   the streams as JSON
    GET /streams/NAME/                 the player page for one stream
    GET /streams/NAME/PATH             a file of the stream (master.m3u8, 720p/index.m3u8, 720p/00001.m4s …)
    GET /ipfs/CID[/PATH]               a UnixFS file (byte ranges), or a directory listing as JSON
    GET /ipfs/CID?format=raw           the block itself, application/vnd.ipld.raw   (or Accept: that type)
    GET /ipfs/CID[/PATH]?format=car    a CAR v1 of the DAG, application/vnd.ipld.car (or Accept: that type)
    GET /player/…                      the player's own files, hls.js included, served from this node

Everything served by CID is immutable and cached for a year; names change, so their answers are cached
briefly. Blocks this node lacks are fetched from neighbours when the agent can (`fetch`), within a budget per
client address and in all (anyone on the LAN may ask; no one may make the node fill its disk from a stranger).

What a failure is answered with (a response already started is cut off instead, by edge.transport.http):
    404  not here, and no neighbour has it               502  this node's copy is corrupt and no neighbour
                                                              gives a good one, or it is malformed, or the
    504  the neighbours that have it stalled                  neighbours holding it failed or lied
    429  this client's fetch budget is spent (Retry-After)  507  the quota or the disk is full
    503  draining for a stop, or the store busy (Retry-After)  500  a bug, with an id that is also in the log
"""

import collections
import json
import logging
import mimetypes
import os
import re
import time
import urllib.parse

from edge.errors import DecodeError, EdgeError
from edge.fetch import FetchError, HoldersFailed, HoldersStalled, NoHolder
from edge.media.package import MASTER, Track, master_playlist, media_playlist, segment_name, variants
from edge.store import content, exporter
from edge.ipld.car import serialize_header, serialize_section
from edge.ipld.cid import CID, parse_cid
from edge.store.service import AsyncStore
from edge.store.errors import BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull
from edge.transport.client import TransportError
from edge.transport.http import Request, Response

log = logging.getLogger(__name__)

WEB_DIR = os.path.join(os.path.dirname(__file__), "web")
IMMUTABLE = "public, max-age=29030400, immutable"
NAMED = "public, max-age=10"
RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".m4s": "video/iso.segment", ".mp4": "video/mp4",
         ".ts": "video/mp2t", ".json": "application/json", ".html": "text/html; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8",
         ".md": "text/markdown; charset=utf-8", ".m4a": "audio/mp4", ".vtt": "text/vtt"}
CHUNK_LIMIT = 4
READ_THREADS = 4
FETCH_IDLE = 30.0      # seconds a reader waits for a fetch from neighbours that brings nothing new
# What gateway requests (anyone on the LAN, unauthenticated) may make this node fetch from neighbours and store,
# in a sliding window: enough for a household's viewing of what neighbours hold, not for filling the disk. The
# agent takes the byte amounts from its settings (gateway_fetch_client, gateway_fetch_total).
FETCH_WINDOW = 3600.0                 # seconds
FETCH_PER_CLIENT = 256 << 20          # bytes per client address in the window
FETCH_ALL_CLIENTS = 1 << 30           # bytes for all clients together in the window
FETCH_CLIENTS = 4096                  # client addresses remembered (the oldest is forgotten past it)
RETRY_AFTER = 5                       # seconds: what a 503 asks a client to wait


class OverBudget(EdgeError):
    """A client's (or every client's) fetch budget is spent; retry_after: seconds until there is room."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Stalled(FetchError):
    """A fetch running for a reader brought nothing new for FETCH_IDLE seconds."""


class FetchBudget:
    """Bytes fetched for gateway clients in a sliding window, per client address and in all. Counted in
    one-minute buckets, so memory is bounded by FETCH_CLIENTS x 60 small entries."""

    def __init__(self, per_client: int = FETCH_PER_CLIENT, total: int = FETCH_ALL_CLIENTS,
                 window: float = FETCH_WINDOW, clock=time.monotonic):
        self.per_client, self.total, self.window, self.clock = per_client, total, window, clock
        self._spent: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._all: collections.deque = collections.deque()

    def _sum(self, buckets: collections.deque, now: float) -> int:
        while buckets and buckets[0][0] <= now - self.window:
            buckets.popleft()
        return sum(n for _, n in buckets)

    def check(self, client: str) -> None:
        """OverBudget if client (or all clients) may not start a fetch now."""
        if not self.per_client or not self.total:
            raise OverBudget("this node fetches nothing from neighbours for gateway clients (gateway_fetch_client "
                             "or gateway_fetch_total is 0); content it holds is still served", int(self.window))
        now = self.clock()
        mine = self._spent.get(client)
        if mine is not None and self._sum(mine, now) >= self.per_client:
            raise OverBudget(f"this client has had {self.per_client >> 20} MiB fetched from neighbours in the "
                             f"last {self.window / 60:g} minutes; content this node holds is still served",
                             self._wait(mine, now))
        if self._sum(self._all, now) >= self.total:
            raise OverBudget(f"gateway clients have had {self.total >> 20} MiB fetched from neighbours in the last "
                             f"{self.window / 60:g} minutes; content this node holds is still served",
                             self._wait(self._all, now))

    def spend(self, client: str, n: int) -> None:
        now = self.clock()
        minute = now - now % 60
        mine = self._spent.pop(client, None) or collections.deque()
        self._spent[client] = mine            # most recent last: the oldest client is forgotten first
        while len(self._spent) > FETCH_CLIENTS:
            self._spent.popitem(last=False)
        for buckets in (mine, self._all):
            if buckets and buckets[-1][0] == minute:
                buckets[-1][1] += n
            else:
                buckets.append([minute, n])

    def _wait(self, buckets: collections.deque, now: float) -> int:
        return max(1, int(buckets[0][0] + self.window - now) + 1) if buckets else 1


class Unsatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single `bytes=` range, None to send the whole; Unsatisfiable if the range
    lies outside the content. Several ranges are answered with the whole (allowed by RFC 9110)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None                     # not a form we serve; the whole body is a valid answer
    if not m.group(1):                  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise Unsatisfiable("an empty suffix range")
        return (max(0, size - n), size - 1) if size else _unsatisfiable(size)
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        _unsatisfiable(size)
    return first, min(last, size - 1)


def _unsatisfiable(size):
    raise Unsatisfiable(f"the content has {size} bytes")


def content_type(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _wants(request: Request, fmt: str, mime: str) -> bool:
    return request.query.get("format") == fmt or mime in request.headers.get("accept", "")


class Gateway:
    """Routes requests to the store. `fetch(cid)` (async, optional) brings a missing DAG from neighbours;
    `fetch_later(cid)` (optional) starts that on its own and returns a handle (edge.fetch.Background) that a
    file's body waits on block by block, so the first bytes go out while the rest arrive."""

    def __init__(self, store, *, fetch=None, fetch_later=None, web_dir: str = WEB_DIR, webrtc=None,
                 draining=lambda: False, budget: FetchBudget | None = None):
        self.store = store                # blocking: handed only to work that runs on the face's threads
        self.face = AsyncStore(store, read_threads=READ_THREADS)   # the store for this Trio code
        self.draining = draining          # true while the agent stops: new requests get 503
        self.budget = budget or FetchBudget()
        self._charged: dict = {}          # id(Background) -> [client, bytes charged so far]
        self.webrtc = webrtc              # (bridge, WebRTCService) when browsers may use data channels
        self.fetch = fetch
        self.fetch_later = fetch_later
        self.web_dir = web_dir
        self.served_bytes = 0
        self.requests = 0

    async def _run(self, fn, *args):
        """Blocking work that reads the store (a walk of a DAG, the next piece of a file), on a read thread."""
        return await self.face.run(fn, *args)

    async def __call__(self, request: Request) -> Response:
        self.requests += 1
        if self.draining():
            return Response.text(503, "this node is stopping; retry shortly (or ask another node)",
                                 {"retry-after": str(RETRY_AFTER), "connection": "close"})
        try:
            return await self._route(request)
        except Exception as exc:   # noqa: BLE001 - mapped by type below; what is not mapped goes on (a 500)
            resp = failure_response(exc)
            if resp is None:
                raise
            return resp

    async def _route(self, request: Request) -> Response:
        if request.path == "/webrtc" or request.path.startswith("/webrtc/"):
            return await self._signal(request)
        if request.method not in ("GET", "HEAD"):
            if request.method == "OPTIONS":   # a preflight: other origins only for what is public by design
                public = request.path.startswith(("/ipfs/", "/streams/"))
                return Response(204, {"allow": "GET, HEAD, OPTIONS", **(_cors() if public else {})})
            return Response.text(405, f"{request.method} is not served here; use GET or HEAD", {"allow": "GET, HEAD"})
        path = request.path
        if path in ("/", "/index.html"):
            return self._static("player.html")
        if path.startswith("/player/"):
            return self._static(path[len("/player/"):])
        if path in ("/api/streams", "/api/streams/"):
            return await self._streams()
        if path.startswith("/streams/"):
            return await self._stream(request)
        if path.startswith("/ipfs/"):
            return await self._ipfs(request, path[len("/ipfs/"):])
        return Response.text(404, f"nothing at {_quoted(path)}; try / for the player, /api/streams, /ipfs/CID")

    # WebRTC signaling: one exchange, in the manner of WHEP -------------------------------------------------

    async def _signal(self, request: Request) -> Response:
        from edge.transport.webrtc import SignalingError
        if self.webrtc is None:
            return Response.text(404, "WebRTC is off on this node; fetch over HTTP")
        bridge, service = self.webrtc
        if request.path == "/webrtc" and request.method == "POST":
            if not request.headers.get("content-type", "").startswith("application/sdp"):
                return Response.text(415, "POST the SDP offer with Content-Type: application/sdp")
            try:
                sid, answer = await bridge.call(service.answer, request.body.decode("utf-8", "replace"),
                                                request.peer)
            except SignalingError as exc:
                return Response.text(exc.status, str(exc))
            return Response(201, {"content-type": "application/sdp", "location": f"/webrtc/{sid}",
                                  "cache-control": "no-store"}, answer.encode())
        if request.path.startswith("/webrtc/") and request.method == "DELETE":
            closed = await bridge.call(service.close, request.path[len("/webrtc/"):])
            return Response(200 if closed else 404, {})
        return Response.text(405, "POST an SDP offer to /webrtc; DELETE /webrtc/ID ends a session",
                             {"allow": "POST, DELETE"})

    # static files ---------------------------------------------------------------------------------------------

    def _static(self, name: str) -> Response:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            return Response.text(404, f"no player file {name!r}")
        path = os.path.join(self.web_dir, name)
        if not os.path.isfile(path):
            vendor = os.path.join(self.web_dir, "vendor", name)
            if not os.path.isfile(vendor):
                hint = " (run `make build`, which installs hls.js)" if name.startswith("hls") else ""
                return Response.text(404, f"no player file {name!r}{hint}")
            path = vendor
        with open(path, "rb") as f:
            body = f.read()
        return Response(200, {"content-type": content_type(name), "cache-control": "public, max-age=300"}, body)

    # streams --------------------------------------------------------------------------------------------------

    async def _streams(self) -> Response:
        rows = await self.face.names("stream")
        out = [{"name": r["name"], "cid": r["cid"], **r["meta"], "url": f"/streams/{r['name']}/{MASTER}"}
               for r in rows]
        body = json.dumps(sorted(out, key=lambda o: o["name"]), indent=1).encode()
        # no CORS header: only this node's own pages read what it holds (a page elsewhere could list it)
        return Response(200, {"content-type": "application/json", "cache-control": "no-cache"}, body)

    async def _stream(self, request: Request) -> Response:
        rest = request.path[len("/streams/"):]
        name, _, sub = rest.partition("/")
        if not name:
            return await self._streams()
        if not _:
            return Response(301, {"location": f"/streams/{_quoted(name)}/"})
        if not sub:
            return self._static("player.html")
        if sub == "cids.json":
            return await self._stream_cids(name)
        row = await self.face.name(name)
        if row is None or row["kind"] != "stream":
            return Response.text(404, f"no stream named {name!r} on this node; /api/streams lists them")
        if row["meta"].get("kind") == "live":
            return await self._live(request, row["meta"], sub)
        resp = await self._file(request, f"{row['cid']}/{sub}", cache=NAMED)
        resp.headers["x-ipfs-path"] = f"/ipfs/{row['cid']}/{sub}"
        return resp

    async def _stream_cids(self, name: str) -> Response:
        """{path in the stream: CID} for every init segment and segment, so a page can fetch them from anyone
        (a data channel, another node) and check what it gets."""
        row = await self.face.name(name)
        if row is None or row["kind"] != "stream":
            return Response.text(404, f"no stream named {name!r} on this node")
        meta = row["meta"]
        out = {}
        if meta.get("kind") == "live":
            for t in meta["tracks"]:
                out[f"{t['name']}/init.mp4"] = t["init"]
                for seg in t["segments"]:
                    out[f"{t['name']}/{segment_name(seg['index'])}"] = seg["cid"]
            cache = "no-cache"
        else:
            out = await self._run(_stream_files, self.store.get, row["cid"])
            cache = NAMED
        return Response(200, {"content-type": "application/json", "cache-control": cache, **_cors()},
                        json.dumps(out).encode())

    async def _live(self, request: Request, meta: dict, sub: str) -> Response:
        """A live stream: playlists made from the publisher's record of its window; files by their CIDs."""
        tracks = {t["name"]: t for t in meta["tracks"]}
        fresh = {"content-type": TYPES[".m3u8"], "cache-control": "no-cache", **_cors()}
        if sub == MASTER:
            return Response(200, fresh, live_master(meta).encode())
        track_name, _, leaf = sub.partition("/")
        t = tracks.get(track_name)
        if t is None:
            return Response.text(404, f"the live stream has no track {track_name!r}")
        if leaf == "index.m3u8":
            return Response(200, fresh, live_playlist(meta, t).encode())
        if leaf == "init.mp4":
            cid = t["init"]
        else:
            m = re.fullmatch(r"(\d{5,})\.m4s", leaf)
            seg = next((x for x in t["segments"] if m and x["index"] == int(m.group(1))), None)
            if seg is None:
                return Response.text(404, f"segment {leaf} is not in the live window")
            cid = seg["cid"]
        resp = await self._file(request, cid, cache=IMMUTABLE)
        resp.headers["content-type"] = content_type(leaf)
        resp.headers["x-ipfs-path"] = f"/ipfs/{cid}"
        return resp

    # content by CID -------------------------------------------------------------------------------------------

    async def _ipfs(self, request: Request, rest: str) -> Response:
        root_text = rest.split("/", 1)[0]
        try:
            root = parse_cid(root_text)
        except DecodeError as exc:
            return Response.text(400, f"{_quoted(root_text)!r} is not a CID: {exc}")
        car = _wants(request, "car", CAR_TYPE)
        job = await self._ensure(root, request.peer, whole=car)
        if _wants(request, "raw", RAW_TYPE):
            if "/" in rest.strip("/"):
                return Response.text(400, "format=raw is for a bare CID (one block); use format=car for a path")
            data = await self._read(job, self.store.get, root, client=request.peer)
            return Response(200, {"content-type": RAW_TYPE, "cache-control": IMMUTABLE, "etag": f'"{root}.raw"',
                                  "x-content-type-options": "nosniff", **_cors()}, data)
        if car:
            return await self._car(rest)
        return await self._file(request, rest, cache=IMMUTABLE, job=job)

    async def _ensure(self, root: CID, client: str = "", whole: bool = False):
        """Have root's DAG fetched from neighbours if this node lacks part of it and the agent can, spending
        client's budget. Returns the fetch still running (edge.fetch.Background) that reads may wait on, or None
        (all here, or, for whole, the whole fetch is over)."""
        if self.fetch is None:
            return None
        has = await self.face.has(root)
        missing = [] if not has else (await self.face.dag(root))[1]
        if has and not missing:
            return None
        self.budget.check(client)
        if self.fetch_later is not None:
            job = self._background(root, client)
            if not whole:
                return job
            seen = -1
            while seen != job.batches and not job.done:   # the whole DAG, while it keeps coming
                seen = job.batches
                await _more_came(job, seen)
            if job.error is not None:
                raise FetchFailed(job.error)
            return None
        try:
            await self.fetch(root)
        except Exception as exc:      # noqa: BLE001 - the read below then says plainly what is missing
            log.info("gateway: fetching %s from neighbours failed: %s", root, exc)
        return None

    def _background(self, root: CID, client: str):
        """The fetch of root running on its own (started if none runs); what it brings is charged to client."""
        job = self.fetch_later(root)
        if id(job) not in self._charged:      # a new fetch: what it brings is charged to who started it
            self._charged[id(job)] = [client, 0]
            job.listeners.append(self._charge)
        return job

    async def _replace(self, corrupt: CorruptBlock, client: str, tried: set) -> None:
        """A block of this node's turned out corrupt (the store has quarantined it and struck it from the
        catalog): fetch a good copy from neighbours, as for a block this node lacks, spending client's budget.
        Raises corrupt (a 502) when no neighbour gives one, or when this block was replaced once already in
        this request (a disk that corrupts what it is given)."""
        cid = corrupt.cid
        if self.fetch is None or cid is None or cid in tried:
            raise corrupt
        tried.add(cid)
        self.budget.check(client)
        log.info("gateway: block %s here is corrupt; fetching a good copy from neighbours", cid)
        try:
            if self.fetch_later is None:
                await self.fetch(cid)
            else:
                await self._background(cid, client).finished()
        except OverBudget:
            raise
        except Exception as exc:   # noqa: BLE001 - no neighbour gave a good copy: the corrupt block is the answer
            log.info("gateway: no good copy of %s from neighbours: %s", cid, exc)
            raise corrupt from None

    def _charge(self, job) -> None:
        """After each batch a fetch stores: charge its bytes to the client that started it; past the budget,
        stop it (its readers get 429)."""
        entry = self._charged.get(id(job))
        if entry is None:
            return
        client, charged = entry
        now = job.bytes
        self.budget.spend(client, now - charged)
        entry[1] = now
        if job.done:
            self._charged.pop(id(job), None)
            return
        try:
            self.budget.check(client)
        except OverBudget as exc:
            log.info("gateway: stopped fetching %s for %s: %s", job.root, client, exc)
            self._charged.pop(id(job), None)
            job.stop(exc)

    async def _read(self, job, fn, *args, client: str = "", replaced: set | None = None):
        """fn(*args) in a worker thread; a block not here yet is waited for (outside the thread) while job
        brings more, and a corrupt one replaced from neighbours, then fn runs again."""
        replaced = set() if replaced is None else replaced
        while True:
            seen = job.batches if job is not None else 0
            try:
                return await self._run(fn, *args)
            except BlockNotFound as exc:
                if not await _more_came(job, seen, exc.cid):
                    raise
            except CorruptBlock as exc:
                await self._replace(exc, client, replaced)

    async def _file(self, request: Request, path: str, cache: str, job=None) -> Response:
        replaced: set = set()   # corrupt blocks replaced from neighbours for this request (each once)
        node = await self._read(job, _resolve, self.store.get, path, client=request.peer, replaced=replaced)
        if node.kind == "directory":
            index = await self._read(job, _dir_entries, self.store.get, node, client=request.peer,
                                     replaced=replaced)
            if "index.html" in index:
                return await self._file(request, path.rstrip("/") + "/index.html", cache, job)
            body = json.dumps([{"name": n, "cid": c, "size": s} for n, (c, s) in sorted(index.items())],
                              indent=1).encode()
            return Response(200, {"content-type": "application/json", "cache-control": cache,
                                  "etag": f'"{node.cid}.dir"', **_cors()}, body)
        if node.kind != "file":
            return Response.text(404, f"{path} is a {node.kind}")
        etag = f'"{node.cid}"'
        headers = {"content-type": content_type(path), "cache-control": cache, "etag": etag,
                   "accept-ranges": "bytes", "x-ipfs-roots": str(node.cid), **_cors()}
        if etag in request.headers.get("if-none-match", ""):
            return Response(304, headers)
        span = None if request.headers.get("if-range", etag) != etag else parse_range(
            request.headers.get("range"), node.size)
        status, offset, length = 200, 0, node.size
        if span is not None:
            offset, last = span
            length = last - offset + 1
            status = 206
            headers["content-range"] = f"bytes {offset}-{last}/{node.size}"
        if request.method == "HEAD":
            return Response(status, {**headers, "content-length": str(length)})
        body = self._stream_file(node, offset, length, job, request.peer, replaced)
        try:   # the first chunk before the headers: a failure there is answered with its status
            first = await body.__anext__() if length else b""
        except StopAsyncIteration:
            first = b""
        except BaseException:
            await body.aclose()
            raise
        return Response(status, headers, _prepend(first, body), length=length)

    async def _stream_file(self, node, offset: int, length: int, job=None, client: str = "",
                           replaced: set | None = None):
        """The bytes of a file, block by block; when a block is still coming from a neighbour, wait for it
        outside the reading thread and go on from where the body got to (a corrupt block is replaced from
        neighbours first)."""
        replaced = set() if replaced is None else replaced
        done = object()
        sent = 0
        while sent < length:
            it = exporter.iter_file(self.store.get, node, offset + sent, length - sent)
            while True:
                seen = job.batches if job is not None else 0
                try:
                    chunk = await self._run(next, it, done)
                except BlockNotFound as exc:
                    if not await _more_came(job, seen, exc.cid):
                        raise
                    break   # a new reader from where the body got to
                except CorruptBlock as exc:
                    await self._replace(exc, client, replaced)
                    break
                if chunk is done:
                    return
                sent += len(chunk)
                self.served_bytes += len(chunk)
                yield chunk

    async def _car(self, rest: str) -> Response:
        parts = [p for p in rest.split("/") if p]
        root = parse_cid(parts[0])

        async def body():
            yield serialize_header([root])
            # the blocks that prove the path, then the whole DAG under its end
            node_cid = root
            for name in parts[1:]:
                data = await self.face.get(node_cid)
                yield serialize_section(node_cid, data)
                node = await self._run(exporter.load, lambda c: data if c == node_cid else self.store.get(c),
                                       node_cid)
                entries = await self._run(_dir_entries, self.store.get, node)
                if name not in entries:
                    return              # the CAR ends where the path does; a verifier sees it is incomplete
                node_cid = parse_cid(entries[name][0])
            blocks = content.walk_blocks(self.store, node_cid)
            done = object()
            while True:
                item = await self._run(next, blocks, done)
                if item is done:
                    return
                cid, data = item
                self.served_bytes += len(data)
                yield serialize_section(cid, data)

        await self.face.get(root)     # a missing root is a 404, not an empty CAR
        return Response(200, {"content-type": f"{CAR_TYPE}; version=1", "cache-control": IMMUTABLE,
                              "etag": f'"{rest}.car"', "x-content-type-options": "nosniff", **_cors()}, body())


def failure_response(exc: BaseException) -> Response | None:
    """The answer to a request that failed with exc, by what went wrong; None for a bug (the server answers 500
    with an error id)."""
    via_fetch = isinstance(exc, FetchFailed)
    if via_fetch:
        exc = exc.cause
    if isinstance(exc, Unsatisfiable):
        return Response.text(416, f"range not satisfiable: {exc}")
    if isinstance(exc, OverBudget):
        return Response.text(429, str(exc), {"retry-after": str(exc.retry_after)})
    if isinstance(exc, (QuotaExceeded, StoreFull)):
        return Response.text(507, f"this node has no room for it: {_msg(exc)}")
    if isinstance(exc, (NoHolder, BlockNotFound, FileNotFoundError)):
        return Response.text(404, f"not found: {_msg(exc)}")
    if isinstance(exc, (Stalled, HoldersStalled)):
        return Response.text(504, f"the neighbours holding it did not answer in time: {_msg(exc)}")
    if isinstance(exc, CorruptBlock):
        return Response.text(502, f"a block on this node is corrupt and was quarantined: {exc}")
    if isinstance(exc, DecodeError):   # hash-valid content that is not what its format allows
        return Response.text(502, f"the content is malformed: {exc}")
    if isinstance(exc, StoreError):
        return Response.text(503, f"the store cannot answer now: {exc}", {"retry-after": str(RETRY_AFTER)})
    if isinstance(exc, (HoldersFailed, FetchError, TransportError)):
        return Response.text(502, f"the neighbours holding it failed to give it: {_msg(exc)}")
    if via_fetch and isinstance(exc, Exception):   # any other end of a fetch (a DAG past this node's bounds…)
        return Response.text(502, f"fetching it from neighbours failed: {_msg(exc)}")
    return None


class FetchFailed(Exception):
    """The fetch a reader waited on ended with cause (raised as its own object per reader)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


async def _more_came(job, seen: int, missing=None) -> bool:
    """After a block was not found: have the fetch still running (if any) get that block next, and wait for it
    to store more; False if none came because the fetch is over without error. The fetch's error (no holder,
    holders that lied or stalled, a spent budget, the quota) is raised as FetchFailed; a fetch that brings
    nothing for FETCH_IDLE raises Stalled."""
    if job is None:
        return False
    if missing is not None:
        job.want(missing)
    if await job.wait(seen, FETCH_IDLE):
        return True
    if job.error is not None:
        raise FetchFailed(job.error)
    if not job.done:
        raise Stalled(f"nothing came from the neighbours for {FETCH_IDLE:g} s")
    return False


async def _prepend(first: bytes, rest):
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


def live_playlist(meta: dict, track: dict) -> str:
    window = track["segments"][-meta.get("window", 6):]
    return media_playlist([(segment_name(s["index"]), s["duration"]) for s in window], init_uri="init.mp4",
                          target=meta["segment_seconds"], ended=bool(meta.get("ended")),
                          media_sequence=window[0]["index"] if window else 0)


def live_master(meta: dict) -> str:
    tracks = []
    for t in meta["tracks"]:
        tr = Track(t["name"], t["kind"], t["codec"], t["width"], t["height"], t["frame_rate"], t["kbps"],
                   [(s["index"], 0.0, s["duration"], s["bytes"]) for s in t["segments"]])
        if not tr.segments:     # nothing measured yet: announce the configured rate with VBV headroom
            tr.segments = [(0, 0.0, 1.0, tr.kbps * 1000 * 3 // 16)]
        tracks.append(tr)
    vs, audio = variants(tracks)
    return master_playlist(vs, audio)


def _resolve(get, path: str):
    """exporter.resolve, except that a name under a file is the client's mistake (FileNotFoundError, a 404),
    not the DecodeError that malformed content raises (a 502)."""
    parts = [p for p in path.split("/") if p]
    node = exporter.load(get, parse_cid(parts[0]))
    for i in range(1, len(parts)):
        if node.kind != "directory":
            raise FileNotFoundError(f"{'/'.join(parts[:i])} is a {node.kind}; there is nothing under it")
        node = exporter.resolve(get, f"{node.cid}/{parts[i]}")
    return node


def _stream_files(get, root: str) -> dict[str, str]:
    top = exporter.resolve(get, root)
    out = {}
    for name, (cid, _) in _dir_entries(get, top).items():
        child = exporter.load(get, parse_cid(cid))
        if child.kind == "directory":
            for leaf, (leaf_cid, _) in _dir_entries(get, child).items():
                if leaf.endswith((".m4s", ".mp4")):
                    out[f"{name}/{leaf}"] = leaf_cid
    return out


def _dir_entries(get, node) -> dict[str, tuple[str, int]]:
    if node.kind != "directory":
        raise FileNotFoundError(f"{node.cid} is a {node.kind}, not a directory")
    return {name: (str(cid), size) for name, cid, size in exporter.list_dir(get, node)}


def _quoted(text: str) -> str:
    """text from a request as it may go in a header or a message: percent-encoded past printable ASCII."""
    return urllib.parse.quote(text, safe="/:@!$&'()*+,;=-._~")


def _cors() -> dict:
    # Only on content public by design, the trustless /ipfs/ answers (browser IPFS clients need them from any
    # origin) and a stream's files (a page elsewhere may play a stream from this box). /api/ and /webrtc carry
    # none: only this node's own pages (same origin) read them.
    return {"access-control-allow-origin": "*"}


def _msg(exc) -> str:
    return exc.args[0] if exc.args else str(exc)
