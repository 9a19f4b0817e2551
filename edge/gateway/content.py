"""Content by CID (/ipfs/): UnixFS files with byte ranges, directory listings, raw blocks, CARs. A block this node
lacks is fetched from neighbours when the agent can, within the client's budget: a file's body waits for each
block outside the reading thread while the fetch brings it, and a corrupt block is replaced from neighbours."""

import json
import logging

from edge.errors import DecodeError
from edge.gateway.answers import (CAR_TYPE, IMMUTABLE, RAW_TYPE, FetchFailed, Stalled, content_type, cors,
                                  parse_range, quoted, wants)
from edge.gateway.budget import OverBudget
from edge.ipld.car import serialize_header, serialize_section
from edge.ipld.cid import CID, parse_cid
from edge.store import content, exporter
from edge.store.errors import BlockNotFound, CorruptBlock
from edge.transport.http import Request, Response

log = logging.getLogger(__name__)
FETCH_IDLE = 30.0      # seconds a reader waits for a fetch from neighbours that brings nothing new


class ContentRoutes:
    """The /ipfs/ routes of Gateway, which supplies store, fetch, fetch_later, budget, _charged, counters and _run."""

    async def _ipfs(self, request: Request, rest: str) -> Response:
        root_text = rest.split("/", 1)[0]
        try:
            root = parse_cid(root_text)
        except DecodeError as exc:
            return Response.text(400, f"{quoted(root_text)!r} is not a CID: {exc}")
        car = wants(request, "car", CAR_TYPE)
        job = await self._ensure(root, request.peer, whole=car)
        if wants(request, "raw", RAW_TYPE):
            if "/" in rest.strip("/"):
                return Response.text(400, "format=raw is for a bare CID (one block); use format=car for a path")
            data = await self._read(job, self.store.get, root, client=request.peer)
            return Response(200, {"content-type": RAW_TYPE, "cache-control": IMMUTABLE, "etag": f'"{root}.raw"',
                                  "x-content-type-options": "nosniff", **cors()}, data)
        if car:
            return await self._car(rest)
        return await self._file(request, rest, cache=IMMUTABLE, job=job)

    async def _ensure(self, root: CID, client: str = "", whole: bool = False):
        """Have root's DAG fetched from neighbours if this node lacks part of it and the agent can, spending
        client's budget. Returns the fetch still running (edge.fetch.Background) that reads may wait on, or None
        (all here, or, for whole, the whole fetch is over)."""
        if self.fetch is None:
            return None
        has = await self._run(self.store.has, root)
        missing = [] if not has else (await self._run(self.store.dag, root))[1]
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
        node = await self._read(job, resolve, self.store.get, path, client=request.peer, replaced=replaced)
        if node.kind == "directory":
            index = await self._read(job, dir_entries, self.store.get, node, client=request.peer,
                                     replaced=replaced)
            if "index.html" in index:
                return await self._file(request, path.rstrip("/") + "/index.html", cache, job)
            body = json.dumps([{"name": n, "cid": c, "size": s} for n, (c, s) in sorted(index.items())],
                              indent=1).encode()
            return Response(200, {"content-type": "application/json", "cache-control": cache,
                                  "etag": f'"{node.cid}.dir"', **cors()}, body)
        if node.kind != "file":
            return Response.text(404, f"{path} is a {node.kind}")
        etag = f'"{node.cid}"'
        headers = {"content-type": content_type(path), "cache-control": cache, "etag": etag,
                   "accept-ranges": "bytes", "x-ipfs-roots": str(node.cid), **cors()}
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
                self.counters.inc("bytes", len(chunk))
                yield chunk

    async def _car(self, rest: str) -> Response:
        parts = [p for p in rest.split("/") if p]
        root = parse_cid(parts[0])

        async def body():
            yield serialize_header([root])
            # the blocks that prove the path, then the whole DAG under its end
            node_cid = root
            for name in parts[1:]:
                data = await self._run(self.store.get, node_cid)
                yield serialize_section(node_cid, data)
                node = await self._run(exporter.load, lambda c: data if c == node_cid else self.store.get(c),
                                       node_cid)
                entries = await self._run(dir_entries, self.store.get, node)
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
                self.counters.inc("bytes", len(data))
                yield serialize_section(cid, data)

        await self._run(self.store.get, root)     # a missing root is a 404, not an empty CAR
        return Response(200, {"content-type": f"{CAR_TYPE}; version=1", "cache-control": IMMUTABLE,
                              "etag": f'"{rest}.car"', "x-content-type-options": "nosniff", **cors()}, body())


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


def resolve(get, path: str):
    """exporter.resolve, except that a name under a file is the client's mistake (FileNotFoundError, a 404),
    not the DecodeError that malformed content raises (a 502)."""
    parts = [p for p in path.split("/") if p]
    node = exporter.load(get, parse_cid(parts[0]))
    for i in range(1, len(parts)):
        if node.kind != "directory":
            raise FileNotFoundError(f"{'/'.join(parts[:i])} is a {node.kind}; there is nothing under it")
        node = exporter.resolve(get, f"{node.cid}/{parts[i]}")
    return node


def dir_entries(get, node) -> dict[str, tuple[str, int]]:
    if node.kind != "directory":
        raise FileNotFoundError(f"{node.cid} is a {node.kind}, not a directory")
    return {name: (str(cid), size) for name, cid, size in exporter.list_dir(get, node)}
