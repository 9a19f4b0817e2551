"""Transcoding for neighbours, end to end: four agents in network namespaces (real mDNS, ZeroMQ with CURVE,
stores, FFmpeg). A asks; B and C transcode for anyone (transcode_for = any); D does too, but cheats (every
third video segment is another moment's: tests/agent/cheating_worker.py). A's own transcode_for is the open
mode's default, none.

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.agent.netns import Lan, Node, can_use_netns, wait_for
from tests.media.conftest import FFMPEG, ffmpeg
from tests.media.test_vod import check_video_rendition, master_variants

why_not = can_use_netns() or (None if FFMPEG else "ffmpeg is not installed")
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")
CHEAT = os.path.join(os.path.dirname(__file__), "cheating_worker.py")


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobs")
    net = Lan(4)
    nodes = []
    try:
        for i, ns in enumerate(net.names, 1):
            env = {"HEARTH_PEER_EXPIRY": "30"} | ({"HEARTH_TRANSCODE_FOR": "any"} if i > 1 else {})
            nodes.append(Node(ns, str(d / f"node{i}"), env))
        nodes[3].wrap = [sys.executable, CHEAT, "agent"]
        for node in nodes:
            node.start()
        for node in nodes:
            wait_for(f"{node.ns} seeing the three others",
                     lambda: sum(p["rtt_ms"] is not None for p in node.peers()) == 3, timeout=30)
        sources = {}
        for key, seconds in (("short", 4), ("long", 10)):
            sources[key] = str(d / f"{key}.mp4")
            ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
                   "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                   "-shortest", sources[key])
        yield nodes, sources, d
    finally:
        for node in nodes:
            _kill_jobs(node)
            node.stop(signal.SIGKILL)
        net.close()


def _kill_jobs(node):
    """End the job processes the agent started (a SIGKILLed agent leaves them running), by their ids."""
    if node.proc is None or node.proc.poll() is not None:
        return
    children = subprocess.run(["pgrep", "-P", str(node.proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def imported(node, *args) -> tuple[dict, str]:
    t0 = time.monotonic()
    r = node.run("media", "import", *args, "--segment-seconds", "2", "--preset", "ultrafast", "--json", timeout=240)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    print(f"import {' '.join(args[1:])}: {time.monotonic() - t0:.1f} s wall; {r.stderr.strip()}")
    return result, r.stderr


def exported(node, cid, dest):
    node.hearth("get", cid, "-o", str(dest))
    return dest


def test_a_neighbour_transcodes_and_the_ladder_passes_the_local_checks(lan, tmp_path):
    (a, b, c, d), sources, _ = lan
    remote, said = imported(a, sources["short"], "--on", b.node_id, "--name", "remote", "--ladder", "360p,240p")
    assert remote["worker"] == b.node_id and "transcoding on " + b.node_id in said
    assert remote["spot_check"]["checked"] >= 2 and remote["spot_check"]["min_db"] >= 35
    local, _ = imported(a, sources["short"], "--on", "local", "--name", "local", "--ladder", "360p,240p")
    assert "worker" not in local
    # the same checks as tests/media/test_vod.py makes of a local import, on what A stores
    for result, where in ((remote, tmp_path / "remote"), (local, tmp_path / "local")):
        root = exported(a, result["cid"], where)
        d360 = check_video_rendition(root, "360p", 640, 360, tmp_path)
        d240 = check_video_rendition(root, "240p", 426, 240, tmp_path)
        assert d360 == d240 and abs(sum(d360) - 4.0) < 0.1
        _, variants = master_variants(root)
        assert [uri for _, uri in variants] == ["360p/index.m3u8", "240p/index.m3u8"]
    assert [r["name"] for r in remote["renditions"]] == [r["name"] for r in local["renditions"]]
    streams = {s["name"]: s for s in json.loads(a.hearth("media", "ls", "--json"))}
    assert streams["remote"]["cid"] == remote["cid"] and streams["remote"]["meta"]["duration"] > 3.9
    # B holds no stream of its own for it, and lets the output go once A has it
    assert json.loads(b.hearth("media", "ls", "--json")) == []
    listed = json.loads(a.hearth("jobs", "--json"))
    assert [(j["peer"], j["state"]) for j in listed["on"]] == [(b.node_id, "done")]
    print(a.hearth("jobs"))
    wait_for("B forgetting the finished job", lambda: json.loads(b.hearth("jobs", "--json"))["for"] == [],
             timeout=10)


def test_a_cheating_worker_is_caught_and_the_job_redone_elsewhere(lan):
    (a, b, c, d), sources, _ = lan
    result, said = imported(a, sources["short"], "--on", d.node_id, "--name", "checked", "--ladder", "360p,240p")
    assert "failed its spot check" in said and "does not match the source" in said, said
    assert result["worker"] in (b.node_id, c.node_id)
    jobs = {j["peer"]: j for j in json.loads(a.hearth("jobs", "--json"))["on"]}
    assert jobs[d.node_id]["state"] == "failed" and jobs[d.node_id]["message"].startswith("rejected")
    # and it is not asked again, even by name
    r = a.run("media", "import", sources["short"], "--on", d.node_id, "--ladder", "240p", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["worker"] in (b.node_id, c.node_id), r.stderr
    assert "not asked again" in r.stderr


def test_auto_sends_the_job_to_a_neighbour_when_this_box_has_no_free_slot(lan):
    (a, b, c, d), sources, _ = lan
    from edge.media.slots import transcode_slot
    here, _ = imported(a, sources["short"], "--on", "auto", "--name", "free", "--ladder", "240p")
    assert "worker" not in here   # a free slot: done here
    with transcode_slot(a.data_dir, 1, what="import other.mp4"):   # media_jobs = 1, taken by another import
        assert [h["what"] for h in json.loads(a.hearth("jobs", "--json"))["here"]] == ["import other.mp4"]
        result, said = imported(a, sources["short"], "--on", "auto", "--name", "busy", "--ladder", "240p")
    assert "transcode slot(s) here are taken" in said and result["worker"] in (b.node_id, c.node_id)


LYING_REQUESTER = """
import json, sys, trio
from edge.identity import KEY_FILE, Identity
from edge.ipld.cid import parse_cid
from edge.transport.client import open_client
from edge.wire.jobs import JobQuery, JobSubmit
data_dir, endpoint, worker, cid = sys.argv[1:]

async def main():
    me = Identity.load(data_dir + "/" + KEY_FILE)
    async with open_client(me, endpoint, worker) as client:
        await client.request(lambda rid: JobSubmit(rid, "liar", parse_cid(cid), 1000, 4000, "240p", 2000))
        while True:
            state = await client.request(lambda rid: JobQuery(rid, "liar"))
            if state.state in ("done", "failed", "cancelled"):
                print(json.dumps({"state": state.state, "message": state.message}))
                return
            await trio.sleep(0.2)
trio.run(main)
"""


def test_a_requester_cannot_make_a_worker_fetch_more_than_the_job_said(lan):
    (a, b, c, d), sources, _ = lan
    big = lan[2] / "big.bin"
    big.write_bytes(os.urandom(3 << 20))   # new to B, which must fetch it from A
    cid = json.loads(a.hearth("add", "--json", str(big)))["cid"]   # A holds 3 MiB; the job says 1,000 bytes
    endpoint = next(f"tcp://{p['verified'][0]}:{p['port']}" for p in a.peers() if p["node"] == b.node_id)
    r = subprocess.run(["ip", "netns", "exec", a.ns, sys.executable, "-c", LYING_REQUESTER, a.data_dir, endpoint,
                        b.node_id, cid], capture_output=True, text=True, env=a.env, timeout=60)
    assert r.returncode == 0, r.stderr
    verdict = json.loads(r.stdout)
    assert verdict["state"] == "failed" and "more than the" in verdict["message"], verdict


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes(lan):
    (a, b, c, d), sources, _ = lan
    proc = subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", a.data_dir, "media", "import",
                             sources["long"], "--on", b.node_id, "--name", "survivor", "--ladder", "720p,360p",
                             "--segment-seconds", "2", "--preset", "ultrafast", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=a.env)
    t0 = time.monotonic()
    wait_for("B running the job", lambda: any(j["state"] == "running"
                                              for j in json.loads(b.hearth("jobs", "--json"))["for"]), timeout=60)
    _kill_jobs(b)
    b.stop(signal.SIGKILL)
    killed = time.monotonic() - t0
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    result = json.loads(out)
    print(f"B killed {killed:.1f} s into the job; done on {result['worker'][:12]} {time.monotonic() - t0:.1f} s "
          f"after the start; {err.strip()}")
    assert result["worker"] == c.node_id and "stopped answering" in err
    assert abs(result["duration"] - 10.0) < 0.2


def test_a_node_that_transcodes_for_no_one_refuses(lan):
    (a, b, c, d), sources, _ = lan
    # A keeps the open mode's default, transcode_for = none: it does not list transcode, and refuses a job
    offers = json.loads(subprocess.run([sys.executable, "-c", f"""
import json
from edge.control import ask
print(json.dumps(ask({os.path.join(c.data_dir, 'control.sock')!r}, 'offers')))"""],
                                       capture_output=True, text=True, env=c.env, check=True).stdout)
    assert a.node_id not in {o["node"] for o in offers} and d.node_id in {o["node"] for o in offers}
    r = c.run("media", "import", sources["short"], "--on", a.node_id, "--ladder", "240p", "--segment-seconds", "2",
              "--preset", "ultrafast", "--json", timeout=240)
    assert r.returncode == 0, r.stderr
    assert "does not transcode for you (transcode_for = none)" in r.stderr, r.stderr
    assert json.loads(r.stdout).get("worker") != a.node_id
