"""Live as an agent service: the running agent owns each live stream `hearth live publish` hands it.

The control socket's live_publish starts a stream: edge/media/live.publish in a worker thread, which runs the
decoder in a process of its own (untrusted media is never decoded in the agent: a crash or an out-of-memory
in FFmpeg ends that stream, not the agent) and stores each segment as a block. The window is kept here in
memory (the gateway's playlists and the neighbours' entries are made from it; the store's record of the
stream is written only when it starts and when it ends). Each segment and each window, signed as a stream
entry, is published on the fan-out (edge/media/fanout.py) the moment it is cut. live_stop ends a stream as
Ctrl-C did (encoders flushed, the recording kept); live_status says what runs and what ended.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import trio

from edge.errors import EdgeError
from edge.media import live as live_mod
from edge.media import transcode as tc
from edge.media import vod
from edge.media.errors import MediaError
from edge.service import Handle
from edge.wire.streamentry import MAX_ENTRY, MAX_SEGMENTS, next_seq, serialize_entry, signed_size

log = logging.getLogger(__name__)
MAX_STREAMS = 8           # live streams one agent runs at once
KEEP_ENDED = 16           # ended streams' summaries kept for live_status


@dataclass
class LiveJob:
    name: str
    source: str
    stop: threading.Event = field(default_factory=threading.Event)
    meta: dict | None = None          # the window now (LiveSink.meta())
    seq: int = 0
    started: float = field(default_factory=time.time)
    summary: dict | None = None
    error: str | None = None
    on: str = "local"                 # where it is transcoded: here, a neighbour, or auto (edge/media/liveoffload.py)
    offloaded: object = None          # liveoffload.Offloaded while neighbours cut it

    def as_dict(self) -> dict:
        shown = self.source.rsplit("/", 1)[0] + "/<key>" if self.source.startswith("rtmp://") else self.source
        segments = {t["name"]: t["segments"][-1]["index"] + 1 if t["segments"] else 0
                    for t in (self.meta or {}).get("tracks", [])}
        return {"name": self.name, "source": shown, "running": self.summary is None and self.error is None,
                "segments": segments, "summary": self.summary, "error": self.error,
                "seconds": round(time.time() - self.started, 1), "on": self.on,
                "workers": list(self.offloaded.workers) if self.offloaded is not None else []}


class LiveService:
    def __init__(self, store, identity, fanout, config):
        self.store = store                # the blocking Store (the job's thread writes segments into it)
        self.identity = identity
        self.fanout = fanout
        self.config = config
        self.jobs: dict[str, LiveJob] = {}
        self._nursery = None
        self.agent = None                 # set by the agent: neighbours transcode with it (--on NODE|auto)

    # what the gateway and the neighbourhood read ------------------------------------------------------------

    def local(self, name: str) -> dict | None:
        """The live window of this node's running stream name, from memory."""
        job = self.jobs.get(name)
        return job.meta if job is not None and job.meta is not None and job.summary is None else None

    def rows(self) -> list[dict]:
        """The running streams as the store's name rows (the neighbourhood signs entries from them)."""
        return [_row(job) for job in self.jobs.values() if job.meta and job.summary is None and job.error is None]

    # the control socket -------------------------------------------------------------------------------------

    async def publish(self, request: dict) -> dict:
        name = str(request.get("name", ""))
        source = str(request.get("source", ""))
        vod.check_name(name)
        running = self.jobs.get(name)
        if running is not None and running.summary is None and running.error is None:
            raise EdgeError(f"stream {name} is live already; Ctrl-C in the `hearth live publish` following it ends it")
        if sum(1 for j in self.jobs.values() if j.summary is None and j.error is None) >= MAX_STREAMS:
            raise EdgeError(f"this agent runs {MAX_STREAMS} live streams already; stop one first")
        try:
            opts = tc.Options(seconds=float(request.get("segment_seconds", 2.0)),
                              encoder=str(request.get("encoder") or self.config.media_encoder),
                              preset=str(request.get("preset", "veryfast")),
                              duration=float(request.get("duration", 0)),
                              read_timeout=10.0 if "://" in source else 0.0)
            window = int(request.get("window", 6))
        except (TypeError, ValueError) as exc:
            raise EdgeError(f"a bad live request: {exc}") from None
        ladder, record = str(request.get("ladder", "720p,360p")), bool(request.get("record", True))
        if not 1 <= opts.seconds <= 10 or not 2 <= window <= 100:
            raise EdgeError("a live segment duration is 1..10 s and a window 2..100 segments")
        live_mod.source_spec(source)           # a bad source is said now, not in the log later
        for old in [n for n, j in self.jobs.items() if j.summary is not None or j.error is not None][:-KEEP_ENDED]:
            del self.jobs[old]
        on = str(request.get("on") or "local")
        if on not in ("local", "auto") and (self.agent is None or on not in self.agent.peers.peers):
            raise EdgeError(f"{on[:60]!r} is not a neighbour here; `hearth peers` lists them (or --on auto|local)")
        job = self.jobs[name] = LiveJob(name, source, on=on)
        self.fanout.open_stream(name)
        self._nursery.start_soon(self._run, job, ladder, opts, window, record)
        return job.as_dict()

    async def stop(self, request: dict) -> dict:
        job = self.jobs.get(str(request.get("name", "")))
        if job is None:
            raise EdgeError(f"no live stream {request.get('name')!r} here; `hearth live ls` lists this node's")
        job.stop.set()
        return job.as_dict()

    async def status(self, request: dict) -> list[dict]:
        return [j.as_dict() for j in self.jobs.values()]

    # the job ------------------------------------------------------------------------------------------------

    async def _run(self, job: LiveJob, ladder: str, opts: tc.Options, window: int, record: bool) -> None:
        token = trio.lowlevel.current_trio_token()

        def on_data(cid, data, cut):
            trio.from_thread.run_sync(self.fanout.publish_segment, job.name, cid, data, cut, trio_token=token)

        def on_window(meta):
            job.meta = meta
            job.seq = next_seq(job.seq)
            raw = _signed(_row(job), self.identity, job.seq)
            trio.from_thread.run_sync(self.fanout.publish_entry, job.name, raw, trio_token=token)

        def run():
            from edge.media.slots import transcode_slot
            with transcode_slot(self.config.data_dir, self.config.media_jobs, what=f"live {job.name}: {ladder}"):
                return live_mod.publish(self.store, job.source, name=job.name, ladder=ladder, opts=opts,
                                        window=window, record=record, stop=job.stop, on_data=on_data,
                                        on_window=on_window)
        try:
            why = await self._elsewhere(job, ladder)
            if why:
                from edge.media import liveoffload
                log.info("live %s: transcoded on %s (%s)", job.name, job.on, why)
                job.summary = await liveoffload.publish(self.agent, job, ladder, opts, window, record, job.on,
                                                        on_data, on_window, why)
            else:
                job.summary = await trio.to_thread.run_sync(run)   # the job's stop event ends it (drain sets it)
            log.info("live %s ended: %s", job.name, job.summary.get("segments"))
        except (MediaError, EdgeError, OSError) as exc:
            job.error = str(exc)
            log.warning("live %s failed: %s", job.name, exc)
        except Exception as exc:   # noqa: BLE001 - one stream's bug ends that stream, not the agent
            job.error = f"the live stream failed: {exc!r} (see the agent's log)"
            log.exception("live %s failed", job.name)
        finally:
            self.fanout.close_stream(job.name)

    async def _elsewhere(self, job: LiveJob, ladder: str) -> str:
        """Why job is transcoded on a neighbour ('' : here): named with --on, or auto and this box cannot keep up."""
        if job.on == "local" or self.agent is None:
            return ""
        if job.on != "auto":
            return "named with --on"
        if job.source.startswith("srt://"):
            return ""            # an SRT push is cut where it is pushed (liveoffload.publish says why)
        return await trio.to_thread.run_sync(cannot_keep_up, self.config, ladder, job.source)

    # the service --------------------------------------------------------------------------------------------

    def stats(self) -> dict:
        return {"streams": [j.as_dict() for j in self.jobs.values() if j.summary is None and j.error is None]}

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            handle = Handle("live", self.stats)

            async def drain():       # each stream ends as on Ctrl-C: its last segments cut, its recording kept
                for job in self.jobs.values():
                    job.stop.set()
                while any(j.summary is None and j.error is None for j in self.jobs.values()):
                    await trio.sleep(0.1)
            handle.drain = drain
            task_status.started(handle)
            await trio.sleep_forever()


def _row(job: LiveJob) -> dict:
    meta = job.meta
    return {"name": job.name, "cid": meta["tracks"][0]["init"], "meta": meta, "updated": int(time.time()),
            "kind": "stream"}


def _signed(row: dict, identity, seq: int) -> bytes:
    """The signed entry of a running stream's window (cut to its newest segments that fit, as OwnStreams does)."""
    from edge.discovery.streams import entry_of_row
    keep = MAX_SEGMENTS
    while True:
        entry = entry_of_row(row, identity.node_id, seq, keep)
        if keep <= 2 or signed_size(entry) <= MAX_ENTRY:
            return serialize_entry(entry, identity)
        keep //= 2


def absolute(source: str) -> str:
    """A file source as the agent (another working directory) finds it."""
    return source if "://" in source or source == live_mod.TEST_PATTERN else os.path.abspath(source)


def cannot_keep_up(config, ladder: str, source: str) -> str:
    """Why this box cannot cut ladder live ('' if it can): its media_jobs slots are all taken, its speed for the
    ladder (measured on first use and kept: edge/media/speed.py) is under real time, or the ladder does not fit
    its memory budget. Blocking (a worker thread's)."""
    from edge.governor import memory
    from edge.media import speed
    from edge.media.ladder import parse_ladder, plan
    from edge.media.slots import free_slots
    if free_slots(config.data_dir, config.media_jobs) == 0:
        return f"all {config.media_jobs} transcode slot(s) here are taken"
    measured = speed.live_speed(config.data_dir, ladder, encoder=config.media_encoder)   # once, then kept
    if measured is not None and measured < 1.0:
        return f"this box cuts {ladder} at {measured:.2f}x real time, too slow for live"
    if source == live_mod.TEST_PATTERN:   # a file is not opened in the agent: its size is the decoder's to find
        budget = memory.memory_budget()
        sizes = [(r.width, r.height) for r in plan(parse_ladder(ladder), 1280, 720)]
        if memory.plan_transcode(sizes, budget).estimate > budget - memory.RESERVE:
            return "the ladder does not fit this box's memory budget"
    return ""
