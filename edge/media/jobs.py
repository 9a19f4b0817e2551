"""Transcoding for neighbours, the worker's side: jobs a neighbour hands this node (wire: edge/wire/jobs.py).

The transport's serving thread answers the job messages through Worker.answer, which never waits: it checks
who asks (transcode_for: none, fleet or any), the asker's budget (transcode_budget seconds of source an hour)
and room (media_jobs running and as many queued), records the job and hands it to the agent's Trio thread.
There each job, media_jobs at a time, fetches the source's DAG from the neighbours (every block checked
against its CID), writes it to a scratch file, and runs the import in a process of its own
(edge/media/jobrun.py: the same pipeline as `hearth media import`, in a media_jobs slot). The output stays
pinned here until the requester ends the job or KEEP_OUTPUT has passed; the JobState that says done carries
its root CID and this node's signature of the job statement.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import trio

from edge.fetch import Fetch
from edge.ipld.cid import CID, parse_cid
from edge.logsafe import printable
from edge.media import livejobs, speed
from edge.store import content
from edge.transport.client import TransportError, open_client
from edge.wire import Error, ErrorCode
from edge.wire.jobs import (MAX_SPEED, Encoders, EncodersInfo, JobCancel, JobState, JobSubmit,
                            LiveFeed, LivePull, LiveSubmit, job_statement)

log = logging.getLogger(__name__)
RUNNER = [sys.executable, "-m", "edge.media.jobrun"]   # the job's process (a test swaps in a cheating one)
KEEP_OUTPUT = 3600.0       # seconds a finished job's output stays pinned for its requester
KEEP_FINISHED = 16         # finished jobs remembered (for `hearth jobs` and the requester's last query)
MAX_SOURCE = 8 << 30       # bytes of source a job may bring
BUDGET_WINDOW = 3600.0
DEFAULT_LADDER = "1080p,720p,480p,360p"
FINISHED = ("done", "failed", "cancelled")
ACTIVE = ("queued", "fetching", "running")


def transcode_policy(setting: str, admission: str) -> str:
    """transcode_for as it applies: auto is fleet in fleet mode, none in open mode."""
    if setting == "auto":
        return "fleet" if admission == "fleet" else "none"
    return setting


@dataclass
class Job:
    """A job, on either side: role "for" (this node transcodes for peer) or "on" (peer transcodes for us)."""

    id: str
    role: str
    peer: str
    source: CID
    size: int
    duration: float
    ladder: str
    seconds: float
    encoder: str = "auto"
    preset: str = "veryfast"
    name: str = "stream"         # the stream's name (in its stream.json)
    state: str = "queued"
    done: float = 0.0            # seconds of source done
    speed: float = 0.0           # times real time
    output: CID | None = None
    signature: bytes | None = None
    message: str = ""
    created: float = field(default_factory=time.time)
    finished: float = 0.0
    scope: object = None         # the Trio cancel scope running it
    limit: int = 0               # bytes of output the requester will fetch at most
    cancelled: bool = False
    live: object = None          # a live transcode: its state (edge/media/livejobs.py, liveoffload.py)
    live_duration: bool = False  # a live job that stops after duration (else when its requester ends it)

    def as_dict(self) -> dict:
        elapsed = (self.finished or time.time()) - self.created
        return {"id": self.id, "role": self.role, "peer": self.peer, "state": self.state, "source": str(self.source),
                "duration": round(self.duration, 3), "done": round(self.done, 3), "speed": round(self.speed, 3),
                "ladder": self.ladder, "output": str(self.output) if self.output else None,
                "message": self.message, "elapsed": round(elapsed, 1), "live": self.live is not None}

    def wire_state(self, rid: int) -> JobState:
        return JobState(rid, self.id, self.state, int(self.done * 1000), min(MAX_SPEED, int(self.speed * 1000)),
                        self.output if self.state == "done" else None,
                        self.signature if self.state == "done" else None, self.message[:500])


def remember(jobs: dict, job: Job) -> None:
    """Keep job; forget the oldest finished ones past KEEP_FINISHED (not an output still pinned here for its
    requester: that one goes when it is released)."""
    jobs[(job.peer, job.id)] = job
    done = sorted((j for j in jobs.values() if j.state in FINISHED and not (j.role == "for" and j.state == "done")),
                  key=lambda j: j.finished)
    for old in done[:max(0, len(done) - KEEP_FINISHED)]:
        jobs.pop((old.peer, old.id), None)


class Worker:
    """The jobs this node runs for neighbours. answer() runs in the transport's serving thread; the rest in
    Trio (serve() is the service)."""

    def __init__(self, agent):
        self.agent = agent
        config = agent.config
        self.policy = transcode_policy(config.transcode_for, config.admission)
        self.slots = config.media_jobs
        self.budget = config.transcode_budget
        self.jobs: dict[tuple[str, str], Job] = {}
        self.spent: dict[str, list[tuple[float, float]]] = {}   # requester -> (when, seconds of source) this hour
        self.lock = threading.Lock()
        self.token = None
        self.nursery = None
        self.limiter = None
        self.encoder = ("libx264", False)
        self.learning = None          # the encoder: None until a neighbour first asks, then being or been learnt

    # the serving thread ------------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.policy != "none"

    def allows(self, node: str) -> bool:
        # in fleet mode the transport admitted only members: fleet means every peer that got this far
        return self.policy == "any" or (self.policy == "fleet" and self.agent.config.admission == "fleet")

    def answer(self, node: str, msg):
        """The reply to a job message from the admitted peer node (a JobState, EncodersInfo or Error)."""
        if isinstance(msg, Encoders):
            if self.learning is None and self.token is not None:   # first asked: find out (until then, x264)
                self.learning = True
                self.token.run_sync_soon(self.nursery.start_soon, self._learn_encoder)
            with self.lock:
                running = sum(1 for j in self.jobs.values() if j.state not in FINISHED)
            known = speed.measured(self.agent.config.data_dir, DEFAULT_LADDER) or 0.0
            return EncodersInfo(msg.id, self.encoder[0], self.encoder[1], self.slots, max(0, self.slots - running),
                                min(MAX_SPEED, int(known * 1000)), self.allows(node))
        if not self.allows(node):
            return Error(msg.id, ErrorCode.REFUSED, f"this node does not transcode for you (transcode_for = "
                                                    f"{self.policy})")
        with self.lock:
            if isinstance(msg, (LiveSubmit, LivePull, LiveFeed)):
                return livejobs.answer(self, node, msg)
            job = self.jobs.get((node, msg.job))
            if isinstance(msg, JobSubmit):
                return job.wire_state(msg.id) if job is not None else self._submit(node, msg)
            if job is None:
                return Error(msg.id, ErrorCode.NOT_FOUND, f"no job {msg.job} from you here")
            if isinstance(msg, JobCancel):
                self._cancel(job)
            return job.wire_state(msg.id)

    def _submit(self, node: str, msg: JobSubmit):
        if not 1000 <= msg.segment_ms <= 30_000 or msg.duration_ms <= 0:
            return Error(msg.id, ErrorCode.BAD_REQUEST, "segments must be 1-30 s and the duration positive")
        return self.admit(node, msg, msg.source, msg.size, msg.duration_ms / 1000)

    def admit(self, node: str, msg, source, size: int, duration: float, live: bool = False):
        """Take a job (an import's JobSubmit, or a LiveSubmit charged as it runs) if there is room and budget."""
        if self.token is None:
            return Error(msg.id, ErrorCode.BUSY, "this node is starting; retry later")
        waiting = [j for j in self.jobs.values() if j.state not in FINISHED]
        if len(waiting) >= 2 * self.slots:
            return Error(msg.id, ErrorCode.BUSY, f"{len(waiting)} jobs running or queued here (media_jobs = "
                                                 f"{self.slots}); try another node")
        if size > MAX_SOURCE:
            return Error(msg.id, ErrorCode.TOO_LARGE, f"a source of {size} bytes is over {MAX_SOURCE}")
        now = time.time()
        for who in list(self.spent):   # the ledger keeps the last hour only, so it stays as small as that
            self.spent[who] = [(t, d) for t, d in self.spent[who] if now - t < BUDGET_WINDOW]
            if not self.spent[who]:
                del self.spent[who]
        spent = sum(d for _, d in self.spent.get(node, ()))
        if spent + (msg.segment_ms / 1000 if live else duration) > self.budget:   # live: charged as it is cut
            return Error(msg.id, ErrorCode.BUSY, f"your transcode budget here is spent ({spent:.0f} of "
                                                 f"{self.budget:.0f} s of source this hour)")
        job = Job(msg.job, "for", node, source, size, duration, msg.ladder, msg.segment_ms / 1000, msg.encoder,
                  msg.preset, getattr(msg, "name", "stream"))
        if live:
            job.live, job.live_duration = livejobs.LiveRun(msg.start_ms / 1000), msg.duration_ms > 0
        else:
            self.spent.setdefault(node, []).append((now, job.duration))
        remember(self.jobs, job)
        self.token.run_sync_soon(self._start, job)
        return job.wire_state(msg.id)

    def charge(self, node: str, seconds: float) -> None:
        """Count seconds of a live job's source against node's budget (the job ends once it is spent)."""
        with self.lock:
            self.spent.setdefault(node, []).append((time.time(), seconds))
            spent = sum(d for _, d in self.spent[node])
        if spent > self.budget:
            raise JobError(f"your transcode budget here is spent ({self.budget:.0f} s of source this hour)")

    def _cancel(self, job: Job) -> None:
        """Stop a job, or (finished) let its output go."""
        job.cancelled = True
        if job.live is not None and job.state == "running":   # a live job ends as a live stream does
            self.token.run_sync_soon(livejobs.stop, job)
            return
        if job.state == "done":
            self.token.run_sync_soon(self.nursery.start_soon, self._release, job)
        elif job.state not in FINISHED:
            self._finish(job, "cancelled", "cancelled by its requester")
            if job.scope is not None:
                self.token.run_sync_soon(job.scope.cancel)

    # the control socket (Trio) --------------------------------------------------------------------------------

    def listed(self) -> list[dict]:
        with self.lock:
            return [j.as_dict() for j in sorted(self.jobs.values(), key=lambda j: j.created)]

    def cancel(self, job_id: str) -> dict | None:
        """`hearth jobs cancel ID` for a job run here for a neighbour."""
        with self.lock:
            for job in self.jobs.values():
                if job.id == job_id:
                    self._cancel(job)
                    return job.as_dict()
        return None

    # Trio ---------------------------------------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        if not job.cancelled:
            self.nursery.start_soon(self._run, job)

    def _finish(self, job: Job, state: str, message: str = "") -> None:
        job.state, job.message, job.finished = state, message, time.time()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        from edge.service import Handle
        self.limiter = trio.CapacityLimiter(self.slots)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            task_status.started(Handle("jobs", self.stats))
            while True:
                await trio.sleep(60)
                for job in list(self.jobs.values()):
                    if job.state == "done" and time.time() - job.finished > KEEP_OUTPUT:
                        nursery.start_soon(self._release, job)

    def stats(self) -> dict:
        with self.lock:
            states = [j.state for j in self.jobs.values()]
        return {"transcode_for": self.policy, "running": states.count("running") + states.count("fetching"),
                "queued": states.count("queued"), "finished": sum(s in FINISHED for s in states)}

    async def _learn_encoder(self) -> None:
        """The encoder imports here use: from the speed file, else asked of a process (the agent opens no
        encoder itself); learnt when a neighbour first asks, so an agent that nobody asks spends nothing."""
        known = speed.encoder(self.agent.config.data_dir)
        if known:
            self.encoder = known
            return
        proc = await trio.run_process([*RUNNER, "--encoders"], capture_stdout=True, capture_stderr=True,
                                      check=False)
        try:
            line = json.loads(proc.stdout.decode().splitlines()[-1])
            if line.get("t") == "encoder":
                self.encoder = (str(line["name"])[:64], bool(line["hardware"]))
        except (ValueError, IndexError, KeyError):
            log.info("could not learn this box's encoder: %s", printable(proc.stderr.decode()[-200:]))

    def _pin_name(self, job: Job) -> str:
        return f"job {job.peer[:16]} {job.id}"

    async def _release(self, job: Job) -> None:
        try:
            await self.agent.store.run(self.agent.store.sync.unpin_named, self._pin_name(job))
        except Exception as exc:   # noqa: BLE001 - a store that fails: the pin stays, the log says so
            log.warning("releasing the output of job %s failed: %s", job.id, exc)
        with self.lock:
            self.jobs.pop((job.peer, job.id), None)

    async def _run(self, job: Job) -> None:
        scratch = None
        with trio.CancelScope() as scope:
            job.scope = scope
            try:
                async with self.limiter:
                    if job.cancelled:
                        return
                    if job.live is not None:
                        async def scratch_dir():
                            nonlocal scratch
                            scratch = await self.agent.store.run(self.agent.store.sync.scratch_dir, "job-")
                            return scratch
                        await livejobs.run(self, job, scratch_dir)
                        log.info("live job %s for %s: %s", job.id, job.peer, job.state)
                        return
                    job.state = "fetching"
                    await fetch_from(self.agent, job.peer, job.source, job.size + job.size // 50 + (64 << 10))
                    scratch = await self.agent.store.run(self.agent.store.sync.scratch_dir, "job-")
                    path = os.path.join(scratch, "source")
                    await self.agent.store.run(content.get, self.agent.store.sync, str(job.source), path)
                    if os.path.getsize(path) > job.size:
                        raise JobError(f"the source is larger than the {job.size} bytes the job said")
                    job.state = "running"
                    output, made = await self._transcode(job, path)
                    job.output, job.speed = output, made
                    job.signature = self.agent.identity.sign(job_statement(job.id, job.source, output))
                    self._finish(job, "done")
                    log.info("transcoded job %s for %s: %s at %.2fx real time", job.id, job.peer, output, made)
            except JobError as exc:
                self._finish(job, "failed", str(exc))
                log.info("job %s for %s failed: %s", job.id, job.peer, exc)
            except Exception as exc:   # noqa: BLE001 - a fetch or store failure fails this job only
                self._finish(job, "failed", f"this node failed: {exc}")
                log.warning("job %s for %s failed: %s", job.id, job.peer, printable(repr(exc)))
            finally:
                if scratch:
                    await trio.to_thread.run_sync(shutil.rmtree, scratch, True)
        if scope.cancelled_caught and job.state not in FINISHED:
            self._finish(job, "cancelled", "cancelled")

    async def _transcode(self, job: Job, path: str) -> tuple[CID, float]:
        spec = {"data_dir": self.agent.config.data_dir, "source": path, "name": job.name,
                "pin": self._pin_name(job), "ladder": job.ladder, "seconds": job.seconds, "encoder": job.encoder,
                "preset": job.preset, "duration": job.duration,
                "what": f"job {job.id} for {job.peer[:16]}: {job.name}, {job.ladder}"}
        done = None
        proc = await trio.lowlevel.open_process([*RUNNER, json.dumps(spec)], stdout=subprocess.PIPE)
        try:
            async for line in _lines(proc.stdout):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if value.get("t") == "progress":
                    job.done = float(value.get("seconds", 0))
                    elapsed = time.time() - job.created
                    job.speed = job.done / elapsed if elapsed > 0 else 0.0
                elif value.get("t") in ("done", "error"):
                    done = value
        finally:
            with trio.CancelScope(shield=True):   # a cancelled job's process ends with it
                if proc.returncode is None and done is None:
                    proc.terminate()
                await proc.wait()
                await proc.stdout.aclose()
        if done is None:
            raise JobError(f"the transcoding process ended without a result (status {proc.returncode})")
        if done["t"] == "error":
            raise JobError(str(done.get("message", "failed"))[:400])
        job.done = float(done.get("duration", job.done))
        return parse_cid(str(done["cid"])), job.done / max(float(done.get("elapsed", 0)), 1e-3)


class _Tally(dict):
    """A fetch's counters: each increment also goes to the agent's (its metrics), and this fetch's own bytes
    stay here to be held against its bound."""

    def __init__(self, shared):
        super().__init__(blocks=0, bytes=0, failures=0)
        self.shared = shared

    def __setitem__(self, key, value):
        self.shared[key] += value - self.get(key, 0)
        super().__setitem__(key, value)


async def fetch_from(agent, node: str, root: CID, limit: int) -> int:
    """Fetch root's DAG from neighbour node (the one that holds it: a job's requester, or its worker), every
    block checked against its CID, and at most limit bytes of it (JobError past that: a neighbour cannot make
    this node fetch more than the job can need). From the best neighbours when node is not in the peer table."""
    peer = agent.peers.peers.get(node)
    tally = _Tally(agent.fetched)
    with trio.CancelScope() as scope:
        def stored():
            if tally["bytes"] > limit:
                scope.cancel()
        if peer is None:
            fetched = await agent.fetch_dag(root, on_stored=stored)
        else:
            async with open_client(agent.identity, peer.endpoint(), node, cert=agent.cert, timeout=10) as client:
                fetched = await Fetch(agent.store, {node: client}, {node: 1.0}, tally, stored).dag(root)
    if scope.cancelled_caught:
        raise JobError(f"{root} holds more than the {limit} bytes the job can need")
    return fetched


class JobError(Exception):
    """A job failed for a reason its requester is told."""


async def _lines(stream, limit: int = 1 << 16):
    buf = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode(errors="replace")
        if len(buf) > limit:
            buf = b""


async def tell_cancel(agent, peer, job_id: str, timeout: float) -> None:
    """Ask peer (a worker, or None when it is gone) to drop job job_id; one that cannot be reached or refuses is
    left alone: it ends the job itself once nobody asks after it."""
    if peer is None:
        return
    try:
        async with open_client(agent.identity, peer.endpoint(), peer.node, cert=agent.cert, timeout=timeout) as client:
            await client.request(lambda rid: JobCancel(rid, job_id))
    except (TransportError, OSError):
        pass
