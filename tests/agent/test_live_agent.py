"""Live as an agent service (issue 17, item 1), one agent on loopback: `hearth live publish` hands the stream to
the running agent, which serves the live window from memory (the store's record is written when the stream
starts and when it ends, not per segment), records it as today, ends it cleanly on Ctrl-C (or `hearth live stop`, with
`hearth live ls` listing its streams), and outlives a decoder that crashes (the decoder runs in a process of its
own)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from edge.control import ask
from edge.store import Store
from tests.agent.netns import Node, wait_for
from tests.agent.test_cli_agent import LOOPBACK
from tests.agent.test_shutdown import free_port


def publish(node: Node, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge", "--data-dir", node.data_dir, "live", "publish", "testsrc",
                             "--ladder", "240p", "--segment-seconds", "1", "--window", "4", "--preset", "ultrafast",
                             "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node.env)


def streams(node: Node) -> list[dict]:
    return ask(os.path.join(node.data_dir, "control.sock"), "live_status", timeout=10)


def playlist(url: str) -> str:
    """The 240p playlist ("" while the stream has none yet: 404)."""
    try:
        return urllib.request.urlopen(url + "240p/index.m3u8", timeout=10).read().decode()
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return ""


def decoders(pid: int) -> list[int]:
    """The agent's live decoder processes (its children running edge.media.liveworker)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"edge.media.liveworker" in cmd:
            out.append(int(entry))
    return out


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    node = Node(None, str(tmp_path_factory.mktemp("liveagent") / "node"),
                {**LOOPBACK, "HEARTH_GATEWAY_PORT": str(free_port())})
    node.start()
    try:
        yield node
    finally:
        node.stop(signal.SIGKILL)


def test_the_agent_runs_the_stream_serves_its_window_from_memory_and_records_it(agent):
    proc = publish(agent, "--name", "cam", "--duration", "6")
    url = agent.status()["gateway_url"] + "streams/cam/"
    wait_for("the live playlist with 3 segments", lambda: playlist(url).count(".m4s") >= 3, timeout=40)
    listed = [s for s in streams(agent) if s["name"] == "cam"]
    assert listed and listed[0]["running"]
    # the store's record holds the window as it was when the stream started; the gateway's is the one in memory
    store = Store(agent.data_dir)
    try:
        meta = store.name("cam")["meta"]
    finally:
        store.close()
    stored = next(len(t["segments"]) for t in meta["tracks"] if t["name"] == "240p")
    served = playlist(url).count(".m4s")
    print(f"\n240p segments in the store's record: {stored}; in the window the gateway serves: {served}")
    assert stored < served
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["segments"]["240p"] >= 5 and summary["recording"]
    recorded = playlist(url)                   # now an on-demand stream under the same name: the whole broadcast
    assert "#EXT-X-ENDLIST" in recorded and "00000.m4s" in recorded
    assert not any(s["running"] for s in streams(agent))


def test_ctrl_c_ends_the_stream_cleanly_and_a_decoder_crash_ends_only_its_stream(agent):
    proc = publish(agent, "--name", "stop")
    wait_for("the stream running", lambda: any(s["name"] == "stop" and s["segments"].get("240p", 0) >= 2
                                               for s in streams(agent)), timeout=40)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["recording"]
    crash = publish(agent, "--name", "crash", "--no-record")
    wait_for("the second stream running", lambda: any(s["name"] == "crash" and s["segments"].get("240p", 0) >= 1
                                                      for s in streams(agent)), timeout=40)
    victims = decoders(agent.proc.pid)
    assert victims, "no decoder process beside the agent"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)       # FFmpeg crashing (or the OOM killer) on a hostile stream
    out, err = crash.communicate(timeout=60)
    t0 = time.monotonic()
    assert agent.proc.poll() is None and agent.status()["services"]["live"] is not None
    print(f"\nthe decoder killed: the command said {err.strip().splitlines()[-1]!r}; the agent answers "
          f"({(time.monotonic() - t0) * 1000:.0f} ms)")
    assert "the decoder was killed by signal 9" in err + out


def hearth_live(node: Node, *args) -> subprocess.CompletedProcess:
    return node.run("live", *args, timeout=120)


def test_live_ls_lists_the_agents_streams_and_live_stop_ends_one_as_ctrl_c_does(agent):
    proc = publish(agent, "--name", "show", "--duration", "120")
    try:
        wait_for("the stream running", lambda: any(s["name"] == "show" and s["segments"].get("240p", 0) >= 2
                                                   for s in streams(agent)), timeout=40)
        r = hearth_live(agent, "ls", "--json")
        assert r.returncode == 0, r.stderr
        listed = {s["name"]: s for s in json.loads(r.stdout)}
        show = listed["show"]
        assert show["running"] and show["segments"]["240p"] >= 2 and show["source"] == "testsrc"
        r = hearth_live(agent, "ls")
        line = next(x for x in r.stdout.splitlines() if x.startswith("show "))
        assert r.returncode == 0 and "  live  " in line and "240p" in line, r.stdout
        # a name the agent does not run: one line that says where the running ones are listed
        r = hearth_live(agent, "stop", "nosuch")
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
        assert "no live stream 'nosuch' here" in r.stderr and "`hearth live ls`" in r.stderr
        t0 = time.monotonic()
        r = hearth_live(agent, "stop", "show", "--json")
        assert r.returncode == 0, r.stderr
        stopped = json.loads(r.stdout)
        print(f"\n`hearth live stop` returned {time.monotonic() - t0:.1f} s after it was run, the stream ended "
              f"with {stopped['summary']['segments']}")
        assert not stopped["running"] and stopped["error"] is None and stopped["summary"]["recording"]
        # the `hearth live publish` following it ends as after Ctrl-C: its summary, the recording kept
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out)["recording"] == stopped["summary"]["recording"]
        r = hearth_live(agent, "stop", "show")
        assert r.returncode == 0 and "live show had ended already" in r.stdout, r.stdout + r.stderr
        r = hearth_live(agent, "ls")
        line = next(x for x in r.stdout.splitlines() if x.startswith("show "))
        assert "  ended  " in line and f"recorded as {stopped['summary']['recording']}" in line, line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
