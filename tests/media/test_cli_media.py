"""`hearth media …` and `hearth live publish` as a user runs them: real processes, real files."""

import json
import subprocess
import sys
import threading
import time

from edge.media.slots import transcode_slot


def hearth(data_dir, *args, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "edge", "--data-dir", str(data_dir), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_probe_import_ls_rm(media, tmp_path):
    assert hearth(tmp_path, "init").returncode == 0
    r = hearth(tmp_path, "media", "probe", media["av"], "--json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["video"]["width"] == 640 and info["audio"]["codec"] == "aac"
    r = hearth(tmp_path, "media", "import", media["av"], "--name", "clip", "--ladder", "240p",
               "--segment-seconds", "1", "--preset", "ultrafast", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["name"] == "clip" and made["cid"].startswith("bafy")
    # no agent runs, so there is no URL to give (tests/media/test_agent_urls.py: the agent's own URL)
    assert made["url"] is None and "no agent is running" in made["url_missing"]
    assert [x["name"] for x in made["renditions"]] == ["240p", "audio"]
    listed = json.loads(hearth(tmp_path, "media", "ls", "--json").stdout)
    assert [x["name"] for x in listed] == ["clip"] and listed[0]["cid"] == made["cid"]
    assert json.loads(hearth(tmp_path, "pin", "ls", "--json").stdout)[0]["cid"] == made["cid"]
    r = hearth(tmp_path, "media", "rm", "clip", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"removed": "clip"}
    assert json.loads(hearth(tmp_path, "media", "ls", "--json").stdout) == []


def test_errors_are_one_line(media, tmp_path):
    assert hearth(tmp_path, "init").returncode == 0
    for args, words in ((("media", "probe", media["garbage"]), "not a media file"),
                        (("media", "import", media["unknown_codec"]), "cannot decode"),
                        (("media", "import", media["av"], "--ladder", "big"), "not a rung"),
                        (("live", "publish", "ftp://x/y", "--name", "x"), "live sources are")):
        r = hearth(tmp_path, *args)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_encoders_lists_software_at_least(tmp_path):
    r = hearth(tmp_path, "media", "encoders", "--json")
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["libx264"]["usable"] and any(x["chosen"] for x in rows.values())
    assert {"h264_nvenc", "h264_v4l2m2m", "h264_qsv", "h264_vaapi"} <= set(rows)
    for row in rows.values():
        assert row["usable"] or row["reason"] != "ok"


def test_live_publish_test_pattern(tmp_path):
    assert hearth(tmp_path, "init").returncode == 0
    r = hearth(tmp_path, "live", "publish", "testsrc", "--name", "pattern", "--duration", "3", "--ladder", "240p",
               "--segment-seconds", "1", "--preset", "ultrafast", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["segments"]["240p"] == 3 and summary["recording"].startswith("bafy")
    assert "live pattern: no agent is running to serve it yet" in r.stderr
    assert json.loads(hearth(tmp_path, "media", "ls", "--json").stdout)[0]["meta"]["recorded_live"] is True


def test_transcodes_wait_for_a_slot(media, tmp_path):
    assert hearth(tmp_path, "init").returncode == 0
    held = threading.Event()
    release = threading.Event()

    def hold():
        with transcode_slot(str(tmp_path), 1):
            held.set()
            release.wait(30)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    proc = subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", str(tmp_path), "media", "import",
                             media["noaudio"], "--ladder", "240p", "--preset", "ultrafast", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "HEARTH_MEDIA_JOBS": "1"})
    said = ""
    while "already running on this box" not in said:      # it found the slot taken and waits (or it ended)
        line = proc.stderr.readline()
        if not line:
            break
        said += line
    time.sleep(0.6)                                       # and another look at the slot (every 0.5 s)
    assert proc.poll() is None, "the import ran although the only slot was taken"
    release.set()
    out, err = proc.communicate(120)
    t.join()
    assert proc.returncode == 0 and out.strip().startswith("bafy")
    assert "already running on this box" in said + err


def test_live_ls_and_stop_say_to_start_the_agent_when_none_runs(tmp_path):
    assert hearth(tmp_path, "init").returncode == 0
    for args in (["ls"], ["ls", "--json"], ["stop", "cam"]):
        r = hearth(tmp_path, "live", *args)
        assert r.returncode == 1 and r.stdout == "", (args, r.stdout)
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and "Traceback" not in line, r.stderr
        assert "no agent is running" in line and "`hearth run`" in line, line
