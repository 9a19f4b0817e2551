"""The player and the streams: the player's page (/watch/) and its own files, the stream list, a stream's files
(a live one's playlists made from the publisher's record of its window), and the CIDs of a stream's segments.

The list and the streams are the neighbourhood's: this node's own, and those its neighbours publish (their signed
entries, edge/discovery/streams.py). /watch/NAME/ (the player) and /streams/NAME/FILE are this node's NAME if it
has one, else the nearest publisher's; NAME@NODE names the publisher. A neighbour's stream is fetched from the nearest holders
through the fetch path /ipfs/ uses (within the client's budget); a live one's playlist is made from the window
its publisher signs: followed on the live fan-out (edge/media/fanout.py) once a viewer asks for it, its
segments then served from memory; asked of the publisher for each playlist until the fan-out has it."""

import functools
import json
import os
import re

from edge.gateway.answers import IMMUTABLE, NAMED, TYPES, content_type, cors, quoted
from edge.gateway.content import dir_entries
from edge.ipld.cid import parse_cid
from edge.media.package import MASTER, Track, master_playlist, media_playlist, segment_name, variants
from edge.store import exporter
from edge.transport.http import Request, Response

WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "web")


class StreamRoutes:
    """The player's and the streams' routes of Gateway, which supplies store, web_dir, _run and _file."""

    def _watch(self, rest: str) -> Response:
        """/watch/ (the stream list, playing the first) and /watch/NAME/ (that stream): the player's page."""
        name, slash, more = rest.partition("/")
        if name and not slash:
            return Response(301, {"location": f"/watch/{quoted(name)}/"})
        if more:
            return Response.text(404, f"nothing at /watch/{quoted(rest)}; a stream's player is /watch/NAME/")
        return self._static("player.html")

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

    async def _streams(self) -> Response:
        rows = await self._run(self.store.names, "stream")
        me = self.neighbourhood.node_id if self.neighbourhood else None
        out = [{"name": r["name"], "cid": r["cid"], **r["meta"], "url": f"/streams/{r['name']}/{MASTER}",
                "page": f"/watch/{r['name']}/", "publisher": me, "held": [me] if me else [], "local": True}
               for r in rows]
        theirs = self.neighbourhood.entries() if self.neighbourhood else []
        held = await self._run(lambda: [self.store.has(e.root) for e in theirs])   # one thread hop for all
        for e, here in zip(theirs, held):
            page = f"/watch/{e.name}@{e.publisher}/"
            out.append({"name": e.name, "cid": str(e.root), "kind": e.kind, "publisher": e.publisher,
                        "held": [e.publisher, *([me] if here else [])], "local": False,
                        "tracks": [{"name": t.name, "kind": t.kind, "codec": t.codec, "width": t.width,
                                    "height": t.height, "kbps": t.kbps} for t in e.tracks],
                        "duration": e.duration / 1000, "ended": e.ended, "updated": e.updated,
                        "page": page, "url": f"/streams/{e.name}@{e.publisher}/{MASTER}"})
        body = json.dumps(sorted(out, key=lambda o: (o["name"], not o["local"], o["publisher"] or "")),
                          indent=1).encode()
        # no CORS header: only this node's own pages read what it holds (a page elsewhere could list it)
        return Response(200, {"content-type": "application/json", "cache-control": "no-cache"}, body)

    async def _stream(self, request: Request) -> Response:
        rest = request.path[len("/streams/"):]
        name, _, sub = rest.partition("/")
        if not name:
            return await self._streams()
        if not _:
            return Response(301, {"location": f"/streams/{quoted(name)}/"})
        if not sub:   # the player's page for a stream is /watch/NAME/ (this URL is what a stream was shared as)
            return Response(301, {"location": f"/watch/{quoted(name)}/"})
        name, _, publisher = name.partition("@")
        row = None
        if not publisher or (self.neighbourhood and publisher == self.neighbourhood.node_id):
            row = await self._run(self.store.name, name)
        if row is None or row["kind"] != "stream":
            entry = self.neighbourhood.pick(name, publisher or None) if self.neighbourhood else None
            if entry is None:
                return Response.text(404, f"no stream named {name!r} on this node or its neighbours; /api/streams "
                                          "lists them")
            return await self._remote(request, entry, sub)
        if row["meta"].get("kind") == "live" and self.live and self.live[0].local(name) is not None:
            row = {**row, "meta": self.live[0].local(name)}    # a stream the agent runs: its window in memory
        if sub == "cids.json":
            return await self._stream_cids(name, row)
        if row["meta"].get("kind") == "live":
            return await self._live(request, row["meta"], sub)
        resp = await self._file(request, f"{row['cid']}/{sub}", cache=NAMED)
        resp.headers["x-ipfs-path"] = f"/ipfs/{row['cid']}/{sub}"
        return resp

    async def _stream_cids(self, name: str, row: dict) -> Response:
        """{path in the stream: CID} for every init segment and segment, so a page can fetch them from anyone
        (a data channel, another node) and check what it gets."""
        if row is None or row["kind"] != "stream":
            return Response.text(404, f"no stream named {name!r} on this node")
        meta = row["meta"]
        if meta.get("kind") == "live":
            out = _live_cids(meta)
            cache = "no-cache"
        else:
            out = await self._run(_stream_files, self.store.get, row["cid"])
            cache = NAMED
        return Response(200, {"content-type": "application/json", "cache-control": cache, **cors()},
                        json.dumps(out).encode())

    async def _remote(self, request: Request, entry, sub: str) -> Response:
        """A neighbour's stream: its files fetched from the nearest holders (the fetch /ipfs/ uses), a live one's
        playlists made from the window its publisher signs now."""
        if entry.live:
            fanout = self.live[1] if self.live else None
            if fanout is not None:
                fanout.want(entry)             # a viewer here: follow the stream on the fan-out
            held = fanout.window(entry.publisher, entry.name) if fanout is not None else None
            data = None
            if held is not None:               # followed: the window and its segments are in memory
                entry = held[0]
                data = functools.partial(fanout.segment, entry.publisher, entry.name)
            elif sub == MASTER or sub.endswith(".m3u8") or sub == "cids.json":
                entry = await self.neighbourhood.fresh(entry)
            meta = live_meta(entry)
            if sub == "cids.json":
                cids = _live_cids(meta)        # only what the data channel can give (in the store already)
                if held is not None:
                    cids = {k: v for k, v in cids.items() if fanout.cached(entry.publisher, entry.name, parse_cid(v))}
                else:
                    cids = await self._run(lambda: {k: v for k, v in cids.items() if self.store.has(parse_cid(v))})
                return Response(200, {"content-type": "application/json", "cache-control": "no-cache", **cors()},
                                json.dumps(cids).encode())
            return await self._live(request, meta, sub, remote=True, data=data)
        job = await self._ensure(entry.root, request.peer)
        if sub == "cids.json":
            out = await self._read(job, _stream_files, self.store.get, str(entry.root), client=request.peer)
            return Response(200, {"content-type": "application/json", "cache-control": NAMED, **cors()},
                            json.dumps(out).encode())
        resp = await self._file(request, f"{entry.root}/{sub}", cache=NAMED, job=job)
        resp.headers["x-ipfs-path"] = f"/ipfs/{entry.root}/{sub}"
        return resp

    async def _live(self, request: Request, meta: dict, sub: str, remote: bool = False, data=None) -> Response:
        """A live stream: playlists made from the publisher's record of its window; files by their CIDs (from
        await data(cid), the fan-out's memory, where followed; else fetched from neighbours when remote)."""
        tracks = {t["name"]: t for t in meta["tracks"]}
        fresh = {"content-type": TYPES[".m3u8"], "cache-control": "no-cache", **cors()}
        if sub == MASTER:
            return Response(200, fresh, live_master(meta).encode())
        track_name, _, leaf = sub.partition("/")
        t = tracks.get(track_name)
        if t is None:
            return Response.text(404, f"the live stream has no track {track_name!r}")
        if leaf == "index.m3u8":
            return Response(200, fresh, live_playlist(meta, t).encode())
        init = re.fullmatch(r"init-(\d{1,6})\.mp4", leaf)   # the init segment of an epoch after a switch
        if leaf == "init.mp4":
            cid = t.get("first_init") or t["init"]
        elif init:
            seg = next((x for x in t["segments"] if x.get("epoch") == int(init.group(1)) and x.get("init")), None)
            if seg is None:
                return Response.text(404, f"{leaf} is not in the live window")
            cid = seg["init"]
        else:
            m = re.fullmatch(r"(\d{5,})\.m4s", leaf)
            seg = next((x for x in t["segments"] if m and x["index"] == int(m.group(1))), None)
            if seg is None:
                return Response.text(404, f"segment {leaf} is not in the live window")
            cid = seg["cid"]
        held = await data(parse_cid(cid)) if data is not None else None
        if held is not None:
            return Response(200, {"content-type": content_type(leaf), "cache-control": IMMUTABLE,
                                  "x-ipfs-path": f"/ipfs/{cid}", **cors()}, bytes(held))
        job = await self._ensure(parse_cid(cid), request.peer) if remote else None
        resp = await self._file(request, cid, cache=IMMUTABLE, job=job)
        resp.headers["content-type"] = content_type(leaf)
        resp.headers["x-ipfs-path"] = f"/ipfs/{cid}"
        return resp


def live_meta(entry) -> dict:
    """A neighbour's live entry in the shape of a publisher's record of its window (what _live reads): a segment
    of a later encoder epoch carries "epoch" and its "init", the first epoch's init is "first_init", as
    edge/media/live.py's LiveSink records them, so live_playlist marks the switch as the publisher's does."""
    tracks = []
    for t in entry.tracks:
        init = str(t.init or entry.root)
        segments = []
        for s in t.segments:
            seg = {"index": s.index, "duration": s.duration_us / 1e6, "cid": str(s.cid), "bytes": s.size}
            epoch = t.epoch_of(s.index)
            if epoch is not None and epoch.number:
                seg["epoch"], seg["init"] = epoch.number, str(epoch.init)
            segments.append(seg)
        track = {"name": t.name, "kind": t.kind, "codec": t.codec, "width": t.width, "height": t.height,
                 "frame_rate": t.fps / 1000, "kbps": t.kbps, "init": init, "segments": segments}
        if t.epochs and t.epochs[0].number == 0:
            track["first_init"] = str(t.epochs[0].init)
        tracks.append(track)
    return {"kind": "live", "ended": entry.ended, "segment_seconds": entry.seconds / 1000,
            "window": entry.window or 6, "tracks": tracks}


def _live_cids(meta: dict) -> dict[str, str]:
    out = {}
    for t in meta["tracks"]:
        out[f"{t['name']}/init.mp4"] = t.get("first_init") or t["init"]   # what _live serves under each name
        for seg in t["segments"]:
            if seg.get("epoch") and seg.get("init"):
                out[f"{t['name']}/init-{seg['epoch']}.mp4"] = seg["init"]
            out[f"{t['name']}/{segment_name(seg['index'])}"] = seg["cid"]
    return out


def live_playlist(meta: dict, track: dict) -> str:
    """The window's media playlist. Segments of a later epoch (another encoder took over: edge/media/live.py's
    LiveSink.discontinuity) are preceded by EXT-X-DISCONTINUITY and their epoch's init segment; the window's first
    segment gives EXT-X-DISCONTINUITY-SEQUENCE (tags that slid out of the window are counted there)."""
    window = track["segments"][-meta.get("window", 6):]
    first = window[0].get("epoch", 0) if window else 0
    breaks = {}
    for i, s in enumerate(window):
        if i and s.get("epoch", 0) != window[i - 1].get("epoch", 0):
            breaks[i] = f"init-{s['epoch']}.mp4" if s.get("init") else None
    init = f"init-{first}.mp4" if first and window[0].get("init") else "init.mp4"
    return media_playlist([(segment_name(s["index"]), s["duration"]) for s in window], init_uri=init,
                          target=meta["segment_seconds"], ended=bool(meta.get("ended")),
                          media_sequence=window[0]["index"] if window else 0, discontinuity_sequence=first,
                          breaks=breaks)


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


def _stream_files(get, root: str) -> dict[str, str]:
    top = exporter.resolve(get, root)
    out = {}
    for name, (cid, _) in dir_entries(get, top).items():
        child = exporter.load(get, parse_cid(cid))
        if child.kind == "directory":
            for leaf, (leaf_cid, _) in dir_entries(get, child).items():
                if leaf.endswith((".m4s", ".mp4")):
                    out[f"{name}/{leaf}"] = leaf_cid
    return out
