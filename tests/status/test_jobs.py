"""The jobs on the status page: a transcode holding a slot reports where it is in its slot file, and the page
reads the slots some process holds (from /proc/locks, taking no lock itself)."""

import json
import os

from edge.media.slots import REPORT_EVERY, running, transcode_slot
from edge.status.report import _job


def test_a_held_slot_reports_its_transcode_and_a_free_one_nothing(tmp_path):
    data_dir = str(tmp_path)
    assert running(data_dir) == []
    with transcode_slot(data_dir, 2) as slot:
        assert running(data_dir) == [{}]                      # held, nothing reported yet
        slot.report("import film", 12.5, 50.0)
        [job] = running(data_dir)
        assert job["name"] == "import film" and job["done"] == 12.5 and job["total"] == 50.0
        assert job["pid"] == os.getpid()
        slot.report("import film", 20.0, 50.0)                 # within REPORT_EVERY: not written again
        assert running(data_dir)[0]["done"] == 12.5
        slot.report("import film", 50.0, 50.0, force=True)
        assert running(data_dir)[0]["done"] == 50.0 and REPORT_EVERY > 0
        assert _job(running(data_dir)[0]) == {"name": "import film", "done": 50.0, "total": 50.0, "percent": 100.0}
    assert running(data_dir) == []                            # released: nothing running
    assert all(os.path.getsize(tmp_path / n) == 0 for n in os.listdir(tmp_path))


def test_a_report_that_is_not_what_a_slot_writes_is_shown_safely():
    assert _job({"name": 5, "done": "x", "total": -1}) == {"name": "a transcode", "done": 0.0, "total": 0.0,
                                                         "percent": None}
    assert _job({"name": "live cam", "done": 30, "total": 0})["percent"] is None    # a live source: no total
    assert _job(json.loads('{"done": 9, "total": 3}'))["percent"] == 100.0
