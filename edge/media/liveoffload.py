"""A live stream transcoded on a neighbour, the requester's side (`hearth live publish --on NODE|auto`; the
worker's side is edge/media/livejobs.py, the wire edge/wire/jobs.py, types 26-29).

The agent keeps owning the stream: the window, ENDLIST, the recording, the fan-out and /api/streams come from
the same LiveSink as a stream cut here (edge/media/live.py). Only the transcode moves. The source goes to the
worker as the import's does: the test pattern by name (the worker makes it), a file by CID (the worker fetches
it, every block checked, and plays it in real time); an RTMP push is taken by this node's gate and its FLV
forwarded as it arrives (edge/media/livefeed.py: a replacement starts at the latest keyframe). The worker's
outputs come back one by one as they are cut (LivePull; one output in flight, so a slow store here slows the
worker's decoder, not memory); each is used only once its bytes give the CID the worker signed for this job and
sequence number. Nothing is decoded in the agent.

Spot checks: the first MINIMUM video segments of each worker and then one in SHARE at random (the system's
CSPRNG, after the worker signed the segment) are decoded in a process of their own (edge/media/livecheck.py)
and scored against this node's own decode of the source over the same span with the import's measure and
threshold (edge/media/spotcheck.py). The source there is the file, the test pattern made again, or, for a push
(not kept whole here), the span of its FLV that the segment came from, taken from the feed's bounded ring and
written to a scratch file (edge/media/livefeed.py says how the worker's output times map to the push's); a span
that has left the ring (the checks fell behind) is skipped and counted, not failed. A push's video segments must
also run on in time (each starts at or after its track's previous end, never before the worker's first picture),
so a worker cannot date its outputs back out of the ring's reach. A worker whose segment fails, whose signature
does not verify, that stops answering for two segments' time (3 to 6 s) or whose job fails is dropped (a failed
check or signature: distrusted, as for imports) and replaced: another neighbour (auto), or this box; the stream
goes on after an EXT-X-DISCONTINUITY (LiveSink.discontinuity). A file's replacement resumes where the last segment
stored here ended (LiveSubmit's start; this box's own fallback the same way), so the viewer sees no part of it
twice; the test pattern starts again, a push at its latest keyframe. `hearth jobs` lists each worker's job;
`hearth jobs cancel ID` and
`hearth live stop` end the stream as Ctrl-C does (the worker cuts its last segments, they are stored, the
recording kept).
"""

import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict

import trio

from edge.identity import verify
from edge.logsafe import printable
from edge.media import live as live_mod
from edge.media import livefeed
from edge.media import spotcheck
from edge.media.errors import MediaError
from edge.media.jobs import FINISHED, Job, remember, tell_cancel
from edge.media.package import Segment
from edge.store import content
from edge.transport.client import TransportError, open_client
from edge.wire.jobs import JobCancel, JobState, LiveOutput, LivePull, LiveSubmit, live_statement

log = logging.getLogger(__name__)
CHECKER = [sys.executable, "-m", "edge.media.livecheck"]
LOST_AFTER = 6.0           # seconds a worker may not answer before it is replaced (two segments' time if less)
IDLE_POLL = 0.05           # seconds between pulls while the worker has nothing new
ENDING = 20.0              # seconds a worker has to cut its last segments once asked to end
CHECKS_WAITING = 4         # sampled segments waiting for their check (past it, a sample is skipped)
TIME_SLACK = 0.05          # seconds a push's segment may start before its track's previous end (rounding)
ASK_TIMEOUT = 3.0


class Replace(Exception):
    """The worker is dropped: why (and whether it is distrusted)."""

    def __init__(self, why: str, distrust: bool = False):
        super().__init__(why)
        self.distrust = distrust


class Offloaded:
    """One live stream cut by neighbours, fed into sink (its LiveSink) until stop is set."""

    def __init__(self, agent, sink, stop, *, source: str, ladder: str, opts, record: bool):
        self.agent = agent
        self.sink = sink
        self.stop = stop                  # threading.Event: live_stop, drain, or `hearth jobs cancel`
        self.source = source              # "testsrc", a file's path or rtmp://…
        self.feed = None                  # livefeed.FlvFeed of an RTMP push
        self.ladder = ladder
        self.opts = opts
        self.record = record
        self.tracks: dict = {}
        self.order: list[str] = []
        self.latency: list[float] = []    # seconds from a segment's cut on the worker to stored here
        self.stalls: list[float] = []     # seconds between the last segment before a switch and the first after
        self.checks: list[float] = []     # dB of each live spot check passed
        self.check_skipped = 0            # sampled segments of a push whose span had left the ring
        self.check_cpu = 0.0              # CPU seconds of the check processes
        self.workers: list[str] = []
        self.offset = 0.0                 # where in a file the current worker started (seconds; spot checks add it)
        self.starts: list[float] = []     # that, for each worker
        self.dropped: list[dict] = []     # {"node", "why"} of each worker dropped
        self.last_stored = 0.0
        self.switched_at = None
        self.cid = None                   # the file's CID (a file source)
        self.size = 0
        self.error = None

    # the stream -----------------------------------------------------------------------------------------------

    async def run(self, on: str) -> tuple[list, str | None]:
        """Cut the stream on neighbours (on: a node, or auto) and, when none is left, here; (tracks, error)."""
        if self.feed is None and self.source != live_mod.TEST_PATTERN:
            self.size = await trio.to_thread.run_sync(os.path.getsize, self.source)
            added = await trio.to_thread.run_sync(lambda: content.add(self.agent.store.sync, self.source, pin=False))
            self.cid = added.cid
            await self.agent.store.run(self.agent.store.sync.pin, added.cid, name=self._pin())
        exclude: set = set()
        try:
            while not self.stop.is_set() and not self._over() and not (self.feed and self.feed.ended):
                try:
                    node = await self.agent.offloads._pick("auto" if exclude else on,
                                                           exclude | set(self.agent.offloads.distrusted), self.ladder)
                except MediaError as exc:
                    if not exclude and on != "auto":      # the named one will not do (distrusted): as for imports,
                        exclude.add(on)                     # another may
                        self.dropped.append({"node": on, "why": str(exc)})
                        continue
                    log.info("live %s: no neighbour to cut it (%s); cutting it here", self.sink.name, exc)
                    await self._switch()
                    await self._here()
                    break
                await self._switch()
                try:
                    await self._on(node)
                    break                                    # ended as asked, or the source ended
                except Replace as exc:
                    exclude.add(node)
                    self.dropped.append({"node": node, "why": str(exc)})
                    self.switched_at = self.last_stored or None   # the stall: from its last segment stored
                    if exc.distrust:
                        self.agent.offloads.distrusted[node] = str(exc)
                    log.warning("live %s: dropped worker %s (%s); replacing it", self.sink.name, node, exc)
        finally:
            if self.cid is not None:
                await self.agent.store.run(self.agent.store.sync.unpin_named, self._pin())
        ranked = [self.tracks[n] for n in self.order if n in self.tracks]
        return ranked + [t for t in self.tracks.values() if t not in ranked], self.error

    def _pin(self) -> str:
        return f"live source {self.sink.name}"

    async def _switch(self) -> None:
        """Before another encoder's segments: a discontinuity, once any segment was cut."""
        if any(t.segments for t in self.tracks.values()):
            await trio.to_thread.run_sync(self.sink.discontinuity)

    def _over(self) -> bool:
        """Whether --duration is cut already (a worker dropped at the very end is not replaced)."""
        return bool(self.opts.duration) and self._cut() >= self.opts.duration - self.opts.seconds / 2

    def _cut(self) -> float:
        """Seconds of the stream cut so far (its timeline runs on across switches: LiveSink)."""
        return max((t.segments[-1][1] + t.segments[-1][2] for t in self.tracks.values() if t.segments), default=0.0)

    def _resume_at(self) -> float:
        """Where in a file the next worker starts: the end of the last video segment stored, on the rung furthest
        on (one a segment behind skips it: every rung's segment n stays one span), to the millisecond the wire
        carries (the stream's timeline is the file's: each worker resumed where the last stopped); 0 for the test
        pattern and a push."""
        if self.cid is None:
            return 0.0
        ends = [t.segments[-1][1] + t.segments[-1][2] for t in self.tracks.values() if t.segments and t.kind == "video"]
        return round(max(ends, default=self._cut()), 3)

    def _remaining(self) -> float:
        """--duration less what was cut already (a replacement cuts only the rest); 0: no end set."""
        if not self.opts.duration:
            return 0.0
        return max(self.opts.seconds, self.opts.duration - self._cut())

    async def _here(self) -> None:
        """The rest of the stream cut on this box (its media_jobs slot, the decoder process as a local stream)."""
        from edge.media.slots import transcode_slot
        url, fmt, options, realtime = live_mod.source_spec(self.source)
        opts = asdict(self.opts)
        self.offset = self._resume_at()
        opts.update(live=True, realtime=realtime, duration=self._remaining(), start=self.offset)
        publisher = livefeed.FeedPublisher(self.feed) if self.feed is not None else None
        if publisher:
            opts["read_timeout"] = 0.0            # the gate watches the publisher's silence
        job = {"url": url, "input_format": fmt, "input_options": options, "ladder": self.ladder, "options": opts}
        config = self.agent.config

        def run():
            with transcode_slot(config.data_dir, config.media_jobs, what=f"live {self.sink.name}: {self.ladder}"):
                return live_mod._run_decoder(job, self.sink, self.stop, None, live_mod.WATCHDOG, publisher, 10.0, None)
        self.workers.append("here")
        self.starts.append(self.offset)
        tracks, self.error = await trio.to_thread.run_sync(run)
        for t in tracks:
            mine = self.tracks.setdefault(t.name, t)
            if mine is not t:
                mine.segments.extend(t.segments)
        self.order = self.order or [t.name for t in tracks]

    # one worker -----------------------------------------------------------------------------------------------

    async def _on(self, node: str) -> None:
        """Pull the stream's outputs from node until it ends; Replace when node must be dropped."""
        offloads = self.agent.offloads
        source = "flv" if self.feed is not None else str(self.cid or live_mod.TEST_PATTERN)
        job = Job(secrets.token_hex(6), "on", node, source, self.size,
                  self._remaining(), self.ladder, self.opts.seconds, self.opts.encoder, self.opts.preset,
                  self.sink.name, state="running")
        job.live = self
        remember(offloads.jobs, job)
        peer = self.agent.peers.peers.get(node)
        self.offset = self._resume_at()
        try:
            if peer is None:
                raise Replace(f"neighbour {node} is gone")
            async with open_client(self.agent.identity, peer.endpoint(), node, cert=self.agent.cert,
                                   timeout=ASK_TIMEOUT) as client:
                try:
                    state = await client.request(lambda rid: LiveSubmit(
                        rid, job.id, job.source, self.size, int(job.duration * 1000), self.ladder,
                        int(self.opts.seconds * 1000), self.opts.encoder or "auto", self.opts.preset,
                        int(round(self.offset * 1000))))
                except TransportError as exc:
                    raise Replace(f"it refused the job: {exc}") from None
                if isinstance(state, JobState) and state.state in ("failed", "cancelled"):
                    raise Replace(f"its job ended {state.state}: {printable(state.message)}")
                self.workers.append(node)
                self.starts.append(self.offset)
                checks_in, checks_out = trio.open_memory_channel(CHECKS_WAITING)
                self.fed_failed, feeding, dropped = [], trio.CancelScope(), None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._checking, checks_out, node, nursery.cancel_scope, job)
                    if self.feed is not None:
                        nursery.start_soon(self._feeding, peer, node, job, feeding)
                    try:
                        await self._pull(client, job, checks_in)
                    except Replace as exc:        # raised outside the nursery: a plain exception, not a group
                        dropped = exc
                        nursery.cancel_scope.cancel()
                    feeding.cancel()
                    await checks_in.aclose()
                if dropped is not None:
                    raise dropped
                if job.message.startswith("rejected"):
                    raise Replace(job.message[len("rejected: "):], distrust=True)
            if not job.cancelled:
                job.state, job.finished = "done", time.time()
        except Replace as exc:
            job.state, job.finished = "failed", time.time()
            job.message = job.message or str(exc)
            with trio.move_on_after(ASK_TIMEOUT) as cleanup:
                cleanup.shield = True
                await self._tell_end(peer, job)
            raise
        except TransportError as exc:
            job.state, job.message, job.finished = "failed", str(exc), time.time()
            raise Replace(f"it failed: {exc}") from None
        finally:
            if job.state == "running":                       # cancelled (the agent stops): let the worker go now
                job.state, job.finished = "cancelled", time.time()
                with trio.move_on_after(ASK_TIMEOUT) as cleanup:
                    cleanup.shield = True
                    await self._tell_end(peer, job)

    async def _feeding(self, peer, node: str, job, scope) -> None:
        """The push to the worker, on a connection of its own (the pulls go on beside it), until scope ends."""
        with scope:
            await self._feed(peer, node, job)

    async def _feed(self, peer, node: str, job) -> None:
        try:
            async with open_client(self.agent.identity, peer.endpoint(), node, cert=self.agent.cert,
                                   timeout=ASK_TIMEOUT) as client:
                await livefeed.feeding(client, job.id, self.feed, self.fed_failed)
        except (TransportError, OSError) as exc:
            self.fed_failed.append(f"it did not take the push: {exc}")

    async def _tell_end(self, peer, job) -> None:
        await tell_cancel(self.agent, peer, job.id, ASK_TIMEOUT)

    async def _pull(self, client, job: Job, checks) -> None:
        seq, buf, header, signature = 0, bytearray(), b"", b""
        heard = time.monotonic()
        ending = None
        while True:
            if ending is None and (self.stop.is_set() or job.cancelled):
                self.stop.set()                               # `hearth jobs cancel` ends the stream too
                ending = time.monotonic()
                try:
                    await client.request(lambda rid: JobCancel(rid, job.id))
                except TransportError:
                    return
            if ending is not None and time.monotonic() - ending > ENDING:
                return                                        # what it did not send in time is not waited for
            if self.feed is not None and self.fed_failed and ending is None:
                raise Replace(self.fed_failed[0])
            try:
                reply = await client.request(lambda rid: LivePull(rid, job.id, seq, len(buf)))
            except TransportError as exc:
                if getattr(exc, "code", None) is not None:
                    raise Replace(f"the worker lost the job: {exc}") from None
                lost = min(LOST_AFTER, max(ASK_TIMEOUT, 2 * self.opts.seconds))   # two segments' silence at most
                if time.monotonic() - heard >= lost:
                    raise Replace(f"the worker stopped answering for {lost:g} s") from None
                continue
            heard = time.monotonic()
            if isinstance(reply, JobState):
                job.done, job.speed = reply.done_ms / 1000, reply.speed / 1000
                if reply.state == "done":
                    return
                if reply.state in FINISHED:
                    if ending is not None:
                        return
                    raise Replace(f"its job ended {reply.state}: {printable(reply.message)}")
                await trio.sleep(IDLE_POLL)
                continue
            if not isinstance(reply, LiveOutput) or reply.seq != seq or reply.offset != len(buf) \
                    or (buf and (reply.header != header or reply.signature != signature)):
                raise Replace("the worker sent an output out of order", distrust=True)
            header, signature = reply.header, reply.signature
            buf += reply.data
            if len(buf) < reply.total:
                continue
            data = bytes(buf)
            cid = (await trio.to_thread.run_sync(content.bytes_dag, data))[0].cid
            if not verify(job.peer, live_statement(job.id, seq, cid, header), signature):
                raise Replace(f"its signature of output {seq} does not verify", distrust=True)
            await self._use(json.loads(header), data, checks)
            seq, buf = seq + 1, bytearray()

    async def _use(self, header: dict, data: bytes, checks) -> None:
        """A verified output into the sink, as the local publisher stores its decoder's frames."""
        kind = header.get("t") if isinstance(header, dict) else None
        try:
            if kind == "plan":
                self.order = self.order or [n for n in header.get("tracks", []) if isinstance(n, str)][:16]
            elif kind == "init":
                track = live_mod._track(header.get("track"), self.tracks)
                await trio.to_thread.run_sync(self.sink.init, track, data)
            elif kind == "segment":
                track = live_mod._track(header.get("track"), self.tracks)
                seg = Segment(live_mod._number(header, "index", int, 10 ** 7),
                              live_mod._number(header, "start", float, 1e9),
                              live_mod._number(header, "duration", float, 1e5), data,
                              bool(header.get("independent", True)))
                stored = await trio.to_thread.run_sync(self.sink.segment, track, seg)
                track.segments.append((stored.index, stored.start, stored.duration, len(data)))
                now = time.time()
                cut = header.get("cut")
                if isinstance(cut, (int, float)):
                    self.latency.append(now - cut)
                if self.switched_at is not None:
                    self.stalls.append(now - self.switched_at)
                    self.switched_at = None
                self.last_stored = now
                if track.kind == "video" and self._sampled(track.name, seg):
                    try:
                        checks.send_nowait((track.name, seg))
                    except trio.WouldBlock:
                        log.info("live %s: a spot check skipped (%d waiting)", self.sink.name, CHECKS_WAITING)
        except ValueError as exc:
            raise Replace(f"it sent a bad output ({exc})", distrust=True) from None

    def _sampled(self, track: str, seg: Segment) -> bool:
        """Whether to check this video segment: the first MINIMUM of each worker, then one in SHARE at random.
        A push's segments must run on in time (Replace, distrusted, if not): see the module's docstring."""
        self._seen = getattr(self, "_seen", {})
        key = (self.workers[-1], track)
        if self.feed is not None:
            self._ends = getattr(self, "_ends", {})
            if seg.start < max(0.0, self._ends.get(key, 0.0)) - TIME_SLACK:
                raise Replace(f"its segment {seg.index} starts at {seg.start:.3f} s, before the end of the one "
                              f"before it ({self._ends.get(key, 0.0):.3f} s)", distrust=True)
            self._ends[key] = seg.start + seg.duration
        self._seen[key] = self._seen.get(key, 0) + 1
        return self._seen[key] <= spotcheck.MINIMUM or secrets.randbelow(spotcheck.SHARE) == 0

    async def _checking(self, checks, node: str, scope, job) -> None:
        """Spot-check sampled segments one at a time, each in a process; a failure drops the worker."""
        async for track_name, seg in checks:
            init = self.sink.tracks.get(track_name, {}).get("init")
            why = await self._check(init, seg)
            if why:
                job.message = f"rejected: {why}"
                log.warning("live %s: worker %s failed a spot check: %s", self.sink.name, node, why)
                scope.cancel()
                return

    async def _check(self, init_cid: str | None, seg: Segment) -> str:
        """'' when seg (with its track's init segment) is the source there (or, for a push, when its span has
        left the ring: counted in check_skipped), else why not."""
        if init_cid is None:
            return "a segment came before its init segment"

        def write():   # the output and, for a push, its source span, in files (store and disk: not on Trio's thread)
            spec = {"source": self.source, "start": self.offset + seg.start, "duration": seg.duration}
            if self.feed is not None:
                span = self.feed.span(seg.start, seg.duration)
                if span is None:
                    return None, None
            d = tempfile.mkdtemp(prefix="livecheck-")
            if self.feed is not None:
                spec.update(source=os.path.join(d, "source.flv"), start=round(span[1], 6))
                with open(spec["source"], "wb") as f:
                    f.write(span[0])
            spec["output"] = os.path.join(d, "output.mp4")
            with open(spec["output"], "wb") as f:
                f.write(b"".join(content.cat(self.agent.store.sync, init_cid)) + seg.data)
            return d, spec
        d, spec = await trio.to_thread.run_sync(write)
        if d is None:
            self.check_skipped += 1
            log.info("live %s: segment %d not checked: its source has left the ring", self.sink.name, seg.index)
            return ""
        try:
            proc = await trio.run_process([*CHECKER, json.dumps(spec)], capture_stdout=True, capture_stderr=True,
                                          check=False)
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, d, True)
        try:
            result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            log.warning("live spot check failed to run: %s", printable(proc.stderr.decode()[-300:]))
            return ""                          # our own checker failed: no verdict on the worker
        if isinstance(result.get("cpu"), (int, float)):
            self.check_cpu += result["cpu"]
        if "error" in result:
            return f"segment {seg.index}: {result['error']}"
        if result["db"] < spotcheck.THRESHOLD_DB:
            return (f"segment {seg.index} does not match the source there ({result['db']:.1f} dB against at least "
                    f"{spotcheck.THRESHOLD_DB:g})")
        self.checks.append(result["db"])
        return ""

    def figures(self) -> dict:
        def pct(values):
            v = sorted(values)
            p99 = v[min(len(v) - 1, int(len(v) * 0.99))] if v else 0
            return {"p50": round(v[len(v) // 2] * 1000, 1), "p99": round(p99 * 1000, 1), "count": len(v)} if v else {}
        return {"workers": self.workers, "starts_s": self.starts, "dropped": self.dropped,
                "cut_to_stored_ms": pct(self.latency),
                "stalls_s": [round(s, 3) for s in self.stalls], "spot_checks": len(self.checks),
                "spot_check_min_db": round(min(self.checks), 1) if self.checks else None,
                "spot_check_db": [round(x, 1) for x in self.checks], "spot_checks_skipped": self.check_skipped,
                "spot_check_cpu_s": round(self.check_cpu, 2)}


async def publish(agent, job, ladder: str, opts, window: int, record: bool, on: str, on_data, on_window,
                  why: str = "") -> dict:
    """Run live job (edge/media/liveservice.py's LiveJob) with its transcode on neighbours; its summary."""
    live_mod.source_spec(job.source)
    if job.source.startswith("srt://"):
        raise MediaError("an SRT source is cut on the node it is pushed to; publish it with --on local, or push "
                         "it to the neighbour that should transcode it (an RTMP push can be cut elsewhere)")
    opts.live = True
    store = agent.store.sync
    gate = publisher = None
    if job.source.startswith("rtmp://"):        # taken here, its key checked; the FLV forwarded to the worker
        from edge.media.rtmpgate import RtmpGate
        gate = RtmpGate(job.source)
        await trio.to_thread.run_sync(gate.listen)
    record_dir = await trio.to_thread.run_sync(store.scratch_dir, "live-") if record else None
    try:
        sink = live_mod.LiveSink(store, job.name, opts.seconds, window, record_dir, on_data, on_window)
        run = Offloaded(agent, sink, job.stop, source=job.source, ladder=ladder, opts=opts, record=record)
        job.offloaded = run
        if gate is not None:
            run.feed = livefeed.FlvFeed()
            publisher = await trio.to_thread.run_sync(livefeed.pushed, gate, run.feed, job.stop,
                                                      opts.read_timeout or 10.0)
            if publisher is None:
                return {"name": job.name, "segments": {}, "cut_to_listed_ms": {}}
        tracks, error = await run.run(on)
        summary = await trio.to_thread.run_sync(live_mod.finish, store, sink, tracks, error, record)
        summary["offload"] = {**run.figures(), "why": why}
        return summary
    finally:
        if publisher is not None:
            publisher.close()
        if gate is not None:
            gate.close()
        if record_dir:
            await trio.to_thread.run_sync(shutil.rmtree, record_dir, True)
