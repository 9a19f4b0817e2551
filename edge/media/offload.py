"""Transcoding for neighbours, the requester's side: this node hands an import to a neighbour and brings the
stream directory back (`hearth media import FILE --on NODE|auto`; wire: edge/wire/jobs.py).

The command stores the source (pinned while the job runs) and asks the agent to offload it; the agent picks
the worker (named, or with auto the neighbour that accepts, has a free slot and is fastest, a hardware encoder
first), submits the job and asks how it goes every POLL seconds. A worker that does not answer for LOST_AFTER
seconds (killed, unplugged) fails the job; so does one whose signature of its output does not verify. Once it
says done, the agent fetches the output's DAG (every block checked against its CID) and lets the worker forget
it. The command then spot-checks the output against the source (edge/media/spotcheck.py) and names the stream,
or reports the worker (`job_checked`), which is then not asked again, and tries another or itself.
"""

import logging
import secrets
import time

import trio

from edge.identity import verify
from edge.ipld.cid import parse_cid
from edge.logsafe import printable
from edge.media.errors import MediaError
from edge.media.jobs import ACTIVE, FINISHED, Job, JobError, fetch_from, remember, tell_cancel
from edge.transport.client import TransportError, open_client
from edge.wire.jobs import Encoders, EncodersInfo, JobCancel, JobQuery, JobState, JobSubmit, job_statement

log = logging.getLogger(__name__)
POLL = 0.5
LOST_AFTER = 6.0           # seconds without an answer before a worker is given up on
ASK_TIMEOUT = 3.0
MAX_OFFLOADS = 8           # jobs this node has out at once


class Offloads:
    """The jobs this node has handed to neighbours; the control socket's handlers (all in Trio)."""

    def __init__(self, agent):
        self.agent = agent
        self.jobs: dict[tuple[str, str], Job] = {}
        self.distrusted: dict[str, str] = {}   # node -> why (its output failed a check, or its signature)
        self.nursery = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        from edge.service import Handle
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started(Handle("offloads", lambda: {"out": sum(j.state in ACTIVE
                                                                       for j in self.jobs.values()),
                                                            "distrusted": len(self.distrusted)}))
            await trio.sleep_forever()

    def _find(self, job_id: str) -> Job:
        for job in self.jobs.values():
            if job.id == job_id:
                return job
        raise MediaError(f"no job {job_id!r} here; `hearth jobs` lists them")

    # control handlers -----------------------------------------------------------------------------------------

    async def offload(self, request: dict) -> dict:
        """Start a job on request["on"] (a node id, or auto), avoiding request["exclude"]; its record."""
        if sum(j.state in ACTIVE for j in self.jobs.values()) >= MAX_OFFLOADS:
            raise MediaError(f"{MAX_OFFLOADS} jobs are already out on neighbours; wait for one to finish")
        exclude = set(request.get("exclude") or ()) | set(self.distrusted)
        on = str(request.get("on", "auto"))
        node = await self._pick(on, exclude, str(request["ladder"]))
        job = Job(secrets.token_hex(6), "on", node, parse_cid(str(request["source"])), int(request["size"]),
                  float(request["duration"]), str(request["ladder"]), float(request["seconds"]),
                  str(request.get("encoder", "auto")), str(request.get("preset", "veryfast")),
                  str(request.get("name", "stream")))
        job.limit = int(request["max_output"])   # bytes of output the job can need (the command's estimate)
        remember(self.jobs, job)
        self.nursery.start_soon(self._drive, job)
        return job.as_dict()

    async def job(self, request: dict) -> dict:
        return self._find(str(request.get("id", ""))).as_dict()

    async def checked(self, request: dict) -> dict:
        """The command's verdict on a job's output: ok, or why it failed (the worker is not asked again)."""
        job = self._find(str(request.get("id", "")))
        if request.get("ok"):
            job.state = "done"
        else:
            why = str(request.get("why", "its output failed a spot check"))[:300]
            self.distrusted[job.peer] = why
            job.state, job.message = "failed", f"rejected: {why}"
            log.warning("neighbour %s transcoded job %s wrongly (%s); not asking it again", job.peer, job.id, why)
        job.finished = time.time()
        return job.as_dict()

    async def cancel(self, job_id: str) -> dict | None:
        for job in self.jobs.values():
            if job.id == job_id:
                job.cancelled = True
                if job.state not in FINISHED:
                    job.state, job.message, job.finished = "cancelled", "cancelled here", time.time()
                    if job.scope is not None:
                        job.scope.cancel()
                return job.as_dict()
        return None

    # picking a worker -----------------------------------------------------------------------------------------

    async def offers(self, exclude=()) -> list[tuple[str, EncodersInfo]]:
        """(node, what it offers) of each neighbour that answers Encoders, asked at once."""
        found = []

        async def ask(peer):
            try:
                async with open_client(self.agent.identity, peer.endpoint(), peer.node, cert=self.agent.cert,
                                       timeout=ASK_TIMEOUT) as client:
                    if "transcode" not in client.welcome.caps:
                        return
                    info = await client.request(lambda rid: Encoders(rid))
                    if isinstance(info, EncodersInfo):
                        found.append((peer.node, info))
            except (TransportError, OSError) as exc:
                log.info("neighbour %s offers no transcoding: %s", peer.node, exc)
        async with trio.open_nursery() as nursery:
            for peer in self.agent.peers.best():
                if peer.node not in exclude and not peer.rejected:
                    nursery.start_soon(ask, peer)
        return found

    async def _pick(self, on: str, exclude: set, ladder: str) -> str:
        if on != "auto":
            if on not in self.agent.peers.peers:
                raise MediaError(f"{printable(on, 60)} is not a neighbour here; `hearth peers` lists them")
            if on in self.distrusted:
                raise MediaError(f"{on} is not asked again: {self.distrusted[on]}")
            return on
        offers = [(n, i) for n, i in await self.offers(exclude) if i.accepts and i.free > 0]
        if not offers:
            raise MediaError("no neighbour takes a transcode now (none lists transcode with a free slot and a "
                             "transcode_for that allows this node)")
        offers.sort(key=lambda o: (o[1].hardware, o[1].speed, o[1].free), reverse=True)
        return offers[0][0]

    # running one ----------------------------------------------------------------------------------------------

    async def _drive(self, job: Job) -> None:
        with trio.CancelScope() as scope:
            job.scope = scope
            try:
                await self._run(job)
            except (MediaError, TransportError) as exc:
                job.state, job.message, job.finished = "failed", str(exc), time.time()
                log.info("job %s on %s failed: %s", job.id, job.peer, exc)
            except Exception as exc:   # noqa: BLE001 - one job fails, not the agent
                job.state, job.message, job.finished = "failed", f"failed here: {exc!r}", time.time()
                log.warning("job %s on %s failed: %s", job.id, job.peer, printable(repr(exc)))
        if scope.cancelled_caught:
            with trio.move_on_after(ASK_TIMEOUT) as cleanup:
                cleanup.shield = True
                await self._tell_cancel(job)

    async def _tell_cancel(self, job: Job) -> None:
        await tell_cancel(self.agent, self.agent.peers.peers.get(job.peer), job.id, ASK_TIMEOUT)

    async def _run(self, job: Job) -> None:
        peer = self.agent.peers.peers.get(job.peer)
        if peer is None:
            raise MediaError(f"neighbour {job.peer} is gone")
        async with open_client(self.agent.identity, peer.endpoint(), peer.node, cert=self.agent.cert,
                               timeout=ASK_TIMEOUT) as client:
            state = await client.request(lambda rid: JobSubmit(
                rid, job.id, job.source, job.size, int(job.duration * 1000), job.ladder, int(job.seconds * 1000),
                job.encoder, job.preset, job.name))
            silent_since = None
            while not isinstance(state, JobState) or state.state not in FINISHED:
                await trio.sleep(POLL)
                try:
                    state = await client.request(lambda rid: JobQuery(rid, job.id))
                    silent_since = None
                except TransportError as exc:
                    if getattr(exc, "code", None) is not None:   # it answered, with an error: the job is gone
                        raise MediaError(f"the worker lost the job: {exc}") from None
                    silent_since = silent_since or time.monotonic()
                    if time.monotonic() - silent_since >= LOST_AFTER:
                        raise MediaError(f"the worker stopped answering for {LOST_AFTER:g} s") from None
                    continue
                if isinstance(state, JobState):
                    job.done, job.speed = state.done_ms / 1000, state.speed / 1000
                    job.state = "running" if state.state in ("fetching", "running") else job.state
            if state.state != "done":
                raise MediaError(f"the worker's job ended {state.state}: {printable(state.message)}")
            if state.output is None or state.signature is None or \
                    not verify(job.peer, job_statement(job.id, job.source, state.output), state.signature):
                self.distrusted[job.peer] = "its signature of a job's output did not verify"
                raise MediaError("the worker's signature of its output does not verify")
            job.output, job.signature, job.state = state.output, state.signature, "fetching"
            try:
                await fetch_from(self.agent, job.peer, state.output, job.limit)
            except JobError as exc:
                self.distrusted[job.peer] = str(exc)
                raise MediaError(f"the worker's output: {exc}") from None
            try:
                await client.request(lambda rid: JobCancel(rid, job.id))   # it may let the output go
            except TransportError:
                pass
        job.state = "fetched"   # the command checks it and names the stream (then: done, or failed)
