"""The jobs on the status page: the transcodes holding this box's slots (what each slot's holder wrote), and the
jobs this node runs for neighbours or hands to them, read from a real agent."""

import os

import pytest

from edge.agent import Agent
from edge.config import load_config
from edge.identity import Identity
from edge.media.slots import running, transcode_slot
from edge.status.report import jobs_of
from edge.store import Store

pytestmark = pytest.mark.trio


async def test_a_transcode_holding_a_slot_is_listed_and_a_free_slot_is_not(tmp_path):
    config = load_config(env={}, flags={"data_dir": str(tmp_path / "me"), "mdns": False})
    os.makedirs(config.data_dir)
    with Store(config.data_dir) as mine:
        agent = Agent(config, Identity.generate(), mine)
        assert jobs_of(agent, running(config.data_dir, config.media_jobs)) == {
            "transcodes": 0, "slots": 1, "here": [], "neighbours": []}
        with transcode_slot(config.data_dir, config.media_jobs, what="import film.mp4: 240p"):
            jobs = jobs_of(agent, running(config.data_dir, config.media_jobs))
            [here] = jobs["here"]
            assert jobs["transcodes"] == 1 and here["what"] == "import film.mp4: 240p" and here["pid"] == os.getpid()
        assert jobs_of(agent, running(config.data_dir, config.media_jobs))["here"] == []
