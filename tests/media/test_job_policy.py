"""Who a worker takes transcode jobs from, how many, and how much (Worker.answer, as the transport's serving
thread calls it), and the speed this box keeps per ladder."""

import types

import pytest
import trio

from edge.config import load_config
from edge.identity import Identity
from edge.ipld.cid import CID
from edge.media import speed
from edge.media.jobs import Worker, transcode_policy
from edge.wire import Error, ErrorCode
from edge.wire.jobs import Encoders, EncodersInfo, JobCancel, JobQuery, JobState, JobSubmit

SOURCE = CID.for_block(b"source")
TAKEN = ("queued", "fetching")   # taken: waiting for a slot, or in one (its fetch waits here for ever)


def test_transcode_for_defaults_to_fleet_in_fleet_mode_and_none_in_open_mode():
    assert transcode_policy("auto", "fleet") == "fleet" and transcode_policy("auto", "open") == "none"
    assert transcode_policy("any", "open") == "any" and transcode_policy("none", "fleet") == "none"


def submit(job, seconds=10.0, rid=1):
    return JobSubmit(rid, job, SOURCE, 1 << 20, int(seconds * 1000), "360p", 2000)


def run_worker(tmp_path, env, check):
    """A Worker serving in Trio (its jobs' fetches wait for ever: nothing runs past "fetching"); check(worker)
    runs in a thread, as the serving thread calls answer()."""
    config = load_config(env={"HEARTH_DATA_DIR": str(tmp_path), **env})
    waiting = trio.Event()

    async def fetch_dag(root, **_):
        await waiting.wait()
    # no neighbour in the peer table: a job's fetch goes to fetch_dag, which waits for ever
    agent = types.SimpleNamespace(config=config, identity=Identity.generate(), fetch_dag=fetch_dag, store=None,
                                  peers=types.SimpleNamespace(peers={}), fetched={"blocks": 0, "bytes": 0, "failures": 0})
    worker = Worker(agent)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            await trio.to_thread.run_sync(check, worker)
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_open_mode_refuses_and_says_why(tmp_path):
    def check(worker):
        assert not worker.accepting
        reply = worker.answer("hnsomeone", submit("j1"))
        assert isinstance(reply, Error) and reply.code == ErrorCode.REFUSED
        assert "transcode_for = none" in reply.message
        info = worker.answer("hnsomeone", Encoders(2))
        assert isinstance(info, EncodersInfo) and not info.accepts and info.slots == 1
    run_worker(tmp_path, {}, check)


def test_slots_queue_and_budget_bound_what_a_worker_takes(tmp_path):
    def check(worker):
        assert worker.accepting
        first = worker.answer("hna", submit("j1", 600))
        assert isinstance(first, JobState) and first.state in TAKEN
        again = worker.answer("hna", submit("j1", 600))   # the same job: its state, not a second one
        assert again.job == "j1" and again.state in TAKEN
        assert worker.answer("hnb", submit("j2", 600)).state in TAKEN   # media_jobs = 2: 4 may wait
        # past its budget (1,000 s of source an hour), a requester is told busy; another is not
        spent = worker.answer("hna", submit("j3", 600))
        assert isinstance(spent, Error) and spent.code == ErrorCode.BUSY and "budget" in spent.message
        assert worker.answer("hnc", submit("j4", 10)).state in TAKEN
        assert worker.answer("hnd", submit("j5", 10)).state in TAKEN
        full = worker.answer("hne", submit("j6", 10))
        assert isinstance(full, Error) and full.code == ErrorCode.BUSY and "media_jobs = 2" in full.message
        assert isinstance(worker.answer("hne", JobQuery(3, "j1")), Error)   # one requester cannot see another's
        assert worker.answer("hna", JobCancel(4, "j1")).state == "cancelled"
        assert worker.answer("hne", submit("j6", 10)).state in TAKEN    # the cancelled one made room
        info = worker.answer("hna", Encoders(5))
        assert info.accepts and info.slots == 2 and info.free == 0
    run_worker(tmp_path, {"HEARTH_TRANSCODE_FOR": "any", "HEARTH_MEDIA_JOBS": "2",
                          "HEARTH_TRANSCODE_BUDGET": "1000"}, check)


@pytest.mark.parametrize("segment, duration", [(500, 1000), (40_000, 1000), (2000, 0)])
def test_a_job_that_makes_no_sense_is_refused(tmp_path, segment, duration):
    def check(worker):
        reply = worker.answer("hna", JobSubmit(1, "j", SOURCE, 1, duration, "360p", segment))
        assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_REQUEST
    run_worker(tmp_path, {"HEARTH_TRANSCODE_FOR": "any"}, check)


def test_speed_is_measured_once_per_ladder_and_kept(tmp_path):
    d = str(tmp_path)
    assert speed.measured(d, "720p") is None and speed.encoder(d) is None
    speed.record(d, "720p", 2.5, "libx264", False)
    speed.record(d, "720p", 9.0, "libx264", False)   # kept: the first measurement
    speed.record(d, "360p", 7.0, "libx264", False)
    assert speed.measured(d, "720p") == 2.5 and speed.measured(d, "360p") == 7.0
    assert speed.encoder(d) == ("libx264", False)
    (tmp_path / speed.FILE).write_text("[not, json")
    assert speed.measured(d, "720p") is None


def test_a_slot_says_what_holds_it_and_lets_go(tmp_path):
    from edge.media.slots import free_slots, running, transcode_slot
    d = str(tmp_path)
    assert free_slots(d, 2) == 2 and running(d, 2) == []
    with transcode_slot(d, 2, what="import a.mp4: 720p"):
        assert free_slots(d, 2) == 1
        [held] = running(d, 2)
        assert held["what"] == "import a.mp4: 720p" and held["slot"] == 0 and held["pid"] > 0
    assert free_slots(d, 2) == 2 and running(d, 2) == []


def test_auto_offloads_when_the_slots_are_taken_or_the_ladder_does_not_fit_the_memory_budget(media, tmp_path):
    from edge.governor import memory
    from edge.media.remote import should_offload
    from edge.media.slots import transcode_slot
    d = str(tmp_path)
    roomy = 8 << 30
    assert should_offload(d, 1, media["av"], "360p,240p", budget=roomy) == ""
    with transcode_slot(d, 1, what="another import"):
        assert "slot(s) here are taken" in should_offload(d, 1, media["av"], "360p,240p", budget=roomy)
    tight = memory.RESERVE + (8 << 20)   # a box with next to nothing left for the encoders
    assert "memory budget" in should_offload(d, 1, media["av"], "360p,240p", budget=tight)
