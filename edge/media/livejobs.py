"""Live transcodes for neighbours, the worker's side (`hearth live publish --on NODE|auto` on the requester;
wire: edge/wire/jobs.py, types 26-29).

A LiveSubmit is checked as a JobSubmit is (transcode_for, the requester's budget, room: edge/media/jobs.py's
Worker, which hands it here). The job runs the live decoder process (edge/media/liveworker.py: untrusted media
is decoded there, never in the agent) in one of this box's media_jobs slots, on the test pattern or on the
requester's file (fetched by CID, every block checked, then played in real time; from LiveSubmit's start, where
a replaced worker's successor resumes: edge/media/transcode.py seeks to the keyframe at or before it and drops the
frames before it), or on an RTMP push to the
requester, whose FLV bytes it sends as they arrive (LiveFeed: at most FEED_WINDOW chunks held here, BUSY past
it; they go into the decoder's standard input as it reads, so a slow decoder slows the requester's feed). Each
plan, init segment and media segment the process sends becomes an output: numbered, its CID computed as the requester will store it,
signed (live_statement), and kept in a small outbox until the requester pulls it (LivePull, answered from the
serving thread without waiting). A full outbox stops the reading of the process's frames, so a requester that
does not pull slows the decoder, not this agent's memory. The requester's budget is charged with each segment's
duration as it is cut. JobCancel ends the job as Ctrl-C ends a live stream: SIGTERM, the encoders flushed, the
last segments cut and pullable; the job is done when the process has ended and its outputs are pulled.
"""

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict

import trio

from edge.ipld.cid import parse_cid
from edge.logsafe import printable
from edge.media import live as live_mod
from edge.media import transcode as tc
from edge.store import content
from edge.wire import Error, ErrorCode
from edge.wire.jobs import FEED_WINDOW, MAX_CHUNK, MAX_HEADER, LiveFeed, LiveOutput, LivePull, live_statement

log = logging.getLogger(__name__)
RUNNER = [sys.executable, "-m", "edge.media.liveworker"]   # the decoder process (a test swaps in a cheating one)
OUTBOX = 8                 # outputs cut and not yet pulled, at most (then the decoder's frames wait)
PULLED_AFTER = 30.0        # seconds without a pull before a running job is taken for abandoned and ended


class LiveRun:
    """A live job's worker-side state: the outbox (shared with the serving thread under lock) and the process."""

    def __init__(self, start: float = 0.0):
        self.start = start                # seconds into the file to start at (a replaced worker's successor)
        self.lock = threading.Lock()
        self.outputs: deque = deque()     # (seq, header bytes, data, signature)
        self.next_seq = 0                 # the seq the next output gets
        self.room = trio.Event()
        self.proc = None
        self.ended = False                # the process has ended: no output after those in the outbox
        self.stopping = False
        self.pulled = time.monotonic()
        self.feed: deque = deque()        # LiveFeed chunks (bytes, end) not yet written to the decoder
        self.feed_seq = 0                 # the seq the next LiveFeed must have
        self.fed = None                   # trio.Event: a chunk came (set from the serving thread)

    def take_feed(self, msg: LiveFeed) -> str:
        """Keep msg's bytes for the decoder: '' (taken, or taken before), 'busy' (the window is full), or why not."""
        with self.lock:
            if msg.seq < self.feed_seq:
                return ""                 # sent again after a lost reply
            if msg.seq > self.feed_seq:
                return f"feed chunk {msg.seq} came before {self.feed_seq}"
            if len(self.feed) >= FEED_WINDOW:
                return "busy"
            self.feed.append((msg.data, msg.end))
            self.feed_seq += 1
            return ""

    def pull(self, msg: LivePull) -> LiveOutput | None:
        """The output msg asks for, from its offset, or None; forgets the outputs before it."""
        with self.lock:
            self.pulled = time.monotonic()
            while self.outputs and self.outputs[0][0] < msg.seq:
                self.outputs.popleft()
            if not self.outputs or self.outputs[0][0] != msg.seq:
                return None
            seq, header, data, signature = self.outputs[0]
        offset = min(msg.offset, len(data))
        return LiveOutput(msg.id, msg.job, seq, len(data), offset, header, signature,
                          data[offset:offset + MAX_CHUNK])

    def empty(self) -> bool:
        with self.lock:
            return not self.outputs


def answer(worker, node: str, msg):
    """LiveSubmit and LivePull from the admitted peer node, in the serving thread (under worker.lock): a reply."""
    job = worker.jobs.get((node, msg.job))
    if isinstance(msg, LiveFeed):
        if job is None or job.live is None or job.source != "flv":
            return Error(msg.id, ErrorCode.NOT_FOUND, f"no live job {msg.job} fed by you here")
        why = job.live.take_feed(msg)
        if why == "busy":
            return Error(msg.id, ErrorCode.BUSY, f"{FEED_WINDOW} chunks wait for the decoder; send it again")
        if why:
            return Error(msg.id, ErrorCode.BAD_REQUEST, why)
        if worker.token is not None and job.live.fed is not None:
            worker.token.run_sync_soon(job.live.fed.set)
        return job.wire_state(msg.id)
    if isinstance(msg, LivePull):
        if job is None or job.live is None:
            return Error(msg.id, ErrorCode.NOT_FOUND, f"no live job {msg.job} from you here")
        out = job.live.pull(msg)
        if out is None:
            if job.state == "running" and job.live.ended and job.live.empty():
                job.state = "done"    # the process ended and every output was pulled
                job.finished = time.time()
            return job.wire_state(msg.id)
        if worker.token is not None:
            worker.token.run_sync_soon(job.live.room.set)
        return out
    if job is not None:
        return job.wire_state(msg.id)
    if not 1000 <= msg.segment_ms <= 10_000:
        return Error(msg.id, ErrorCode.BAD_REQUEST, "live segments are 1-10 s")
    return worker.admit(node, msg, msg.source, msg.size, (msg.duration_ms or msg.segment_ms) / 1000, live=True)


async def run(worker, job, scratch_dir) -> None:
    """Run the live job (in Trio, inside the worker's slot limiter): fetch the file if it is one, start the
    decoder, turn its frames into signed outputs until it ends."""
    agent = worker.agent
    run_state = job.live
    fed = job.source == "flv"
    start = 0.0                                          # a file only (the wire says so too)
    if job.source == live_mod.TEST_PATTERN:
        url, fmt, options, _ = live_mod.source_spec(job.source)
    elif fed:                                            # an RTMP push to the requester: its FLV, as it comes
        url, fmt, options = "pipe:0", "flv", {}
    else:
        from edge.media.jobs import JobError, fetch_from
        job.state = "fetching"
        await fetch_from(agent, job.peer, parse_cid(job.source), job.size + job.size // 50 + (64 << 10))
        path = os.path.join(await scratch_dir(), "source")
        await agent.store.run(content.get, agent.store.sync, job.source, path)
        if await trio.to_thread.run_sync(os.path.getsize, path) > job.size:
            raise JobError(f"the source is larger than the {job.size} bytes the job said")
        url, fmt, options, start = path, None, {}, run_state.start
    job.state = "running"
    opts = tc.Options(seconds=job.seconds, encoder=agent.config.media_encoder if job.encoder == "auto" else job.encoder,
                      preset=job.preset, duration=job.duration if job.live_duration else 0.0, live=True,
                      realtime=not fed,                  # a push comes at its own pace
                      start=start)
    spec = {"url": url, "input_format": fmt, "input_options": options, "ladder": job.ladder, "options": asdict(opts),
            "slot": {"data_dir": agent.config.data_dir, "jobs": agent.config.media_jobs,
                     "what": f"live job {job.id} for {job.peer[:16]}: {job.ladder}"}}
    proc = await trio.lowlevel.open_process([*RUNNER, json.dumps(spec)], stdout=subprocess.PIPE,
                                            stdin=subprocess.PIPE if fed else subprocess.DEVNULL,
                                            start_new_session=True)
    run_state.proc = proc
    if fed:                                              # ends with the process (its input closed, or broken)
        run_state.fed = trio.Event()
        worker.nursery.start_soon(_feeding, run_state, proc.stdin)
    started = time.monotonic()
    charged = "audio"
    try:
        reader = _Frames(proc.stdout)
        while True:
            frame = await reader.next()
            if frame is None:
                break
            header, data = frame
            kind = header.get("t")
            if kind == "progress":
                job.done = float(header.get("seconds", 0) or 0)
                job.speed = job.done / max(time.monotonic() - started, 1e-3)
                continue
            if kind == "error":
                job.message = printable(str(header.get("message", "")), 300)
                continue
            if kind not in ("plan", "init", "segment"):
                continue
            if kind == "plan":
                charged = (header.get("tracks") or ["audio"])[0]   # the budget counts source seconds: one track's
            if kind == "segment" and (header.get("track") or {}).get("name") == charged:
                worker.charge(job.peer, float(header.get("duration", 0) or 0))
            header["cut"] = round(time.time(), 4)        # the requester prints cut here -> stored there
            raw = json.dumps(header).encode()
            if len(raw) > MAX_HEADER:
                continue
            cid = (await trio.to_thread.run_sync(content.bytes_dag, data))[0].cid
            while len(run_state.outputs) >= OUTBOX:      # the requester has not pulled: wait (back-pressure)
                run_state.room = trio.Event()
                with trio.move_on_after(1.0):
                    await run_state.room.wait()
                if time.monotonic() - run_state.pulled > PULLED_AFTER:
                    raise _Abandoned()
            with run_state.lock:
                seq = run_state.next_seq
                run_state.next_seq += 1
                signature = agent.identity.sign(live_statement(job.id, seq, cid, raw))
                run_state.outputs.append((seq, raw, data, signature))
    except _Abandoned:
        job.message = f"its requester pulled nothing for {PULLED_AFTER:.0f} s"
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.terminate()
                with trio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await proc.stdout.aclose()
            if proc.stdin is not None:
                await proc.stdin.aclose()
            run_state.ended = True
    if job.message and not run_state.stopping:
        from edge.media.jobs import JobError
        raise JobError(job.message)
    # done once its outputs are pulled (answer()); one that nobody pulls is let go after PULLED_AFTER
    while not run_state.empty() and time.monotonic() - run_state.pulled < PULLED_AFTER:
        await trio.sleep(0.2)
    if job.state == "running":
        job.state, job.finished = "done", time.time()


async def _feeding(run_state: LiveRun, stdin) -> None:
    """The requester's LiveFeed chunks into the decoder's standard input, in order, as it reads them; closed at
    the push's end. A requester that stops both feeding and pulling for PULLED_AFTER ends the job (the decoder
    is told to end; the outbox's wait for pulls then lets the job go)."""
    try:
        while True:
            if run_state.stopping:       # JobCancel: the decoder sees the end of its input (and SIGTERM)
                await stdin.aclose()
                return
            with run_state.lock:
                chunk = run_state.feed.popleft() if run_state.feed else None
            if chunk is None:
                run_state.fed = trio.Event()
                if run_state.feed:
                    continue
                with trio.move_on_after(1.0):
                    await run_state.fed.wait()
                if run_state.ended:
                    return
                if time.monotonic() - run_state.pulled > PULLED_AFTER:
                    await stdin.aclose()   # a decoder waiting on its input sees the end (SIGTERM alone: not)
                    return
                continue
            data, end = chunk
            if data:
                await stdin.send_all(data)
            if end:
                await stdin.aclose()     # the decoder reads to the end, flushes and cuts its last segments
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return                           # the decoder ended: its frames say why (this task is the worker's:
                                         # nothing may escape it)


def stop(job) -> None:
    """JobCancel of a running live job: end it as a live stream ends (SIGTERM: flush, cut the last segments)."""
    job.live.stopping = True
    if job.live.proc is not None and job.live.proc.returncode is None:
        job.live.proc.terminate()


class _Abandoned(Exception):
    pass


class _Frames:
    """The decoder process's frames (edge/media/liveworker.py: length, JSON header, payload), read in Trio."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = bytearray()

    async def _read(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(max(65536, n - len(self.buf)))
            if not chunk:
                return None
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def next(self):
        raw = await self._read(4)
        if raw is None:
            return None
        n = struct.unpack(">I", raw)[0]
        if n > live_mod.MAX_HEADER:
            return None
        header = json.loads(await self._read(n) or b"null")
        size = header.get("size", 0) if isinstance(header, dict) else -1
        if not isinstance(size, int) or not 0 <= size <= live_mod.MAX_PAYLOAD:
            return None
        data = await self._read(size) if size else b""
        if data is None:
            return None
        return header, data


def rmtree(path) -> None:
    shutil.rmtree(path, ignore_errors=True)
