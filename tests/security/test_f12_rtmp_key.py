"""Finding 12: the RTMP stream key was not checked, and untrusted FLV was decoded inside the store writer.

On 53df6de `hearth live publish rtmp://0.0.0.0:1935/live/KEY` handed the port to FFmpeg's RTMP listener, which
only warns about a wrong app or stream name: a push to /whatever/WRONGKEY was recorded. The decoder ran in the
publishing process, beside the open store. Here real pushes (Debian's ffmpeg CLI in the role of OBS) go to the
gate (edge/media/rtmpgate.py) on loopback: wrong app, wrong key and garbage are refused and nothing is
recorded, the right key is; and the decoder process is crashed and hung for real (signals) while the
publisher's store stays whole.
"""

import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from edge.media import live
from edge.media import rtmp, rtmpgate
from edge.media import transcode as tc
from edge.media.errors import MediaError
from edge.media.rtmp import amf_encode
from edge.media.rtmpgate import RtmpGate
from edge.store import Store

from tests.media.helpers import run_publisher

pytestmark = [pytest.mark.attack,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg CLI plays the encoder")]

KEY = "k3y-0f-the-r1ght-length-ZpQ7"


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def push(url: str, seconds: float = 4.0) -> subprocess.CompletedProcess:
    """A few seconds of test pattern and tone pushed as an encoder would (H.264 + AAC in RTMP)."""
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac",
         "-f", "flv", url], capture_output=True, text=True, timeout=60)


def wait_listening(port: int):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the publisher never listened")


def test_f12_wrong_app_wrong_key_and_garbage_refused_right_key_recorded(store, caplog):
    caplog.set_level(logging.INFO, logger="edge.media")
    port = free_port()
    thread, box = run_publisher(store, f"rtmp://127.0.0.1:{port}/live/{KEY}", name="cam", ladder="240p",
                                opts=tc.Options(seconds=1.0, preset="ultrafast", read_timeout=5.0))
    wait_listening(port)
    # the pushes of finding 12: a wrong app with a wrong key, then the right app with a wrong key
    for path in ("whatever/WRONGKEY", "live/WRONGKEY", f"live/{KEY}x", f"live/{KEY[:-1]}"):
        refused = push(f"rtmp://127.0.0.1:{port}/{path}", seconds=2)
        print(f"push to /{path.split('/')[0]}/<wrong>: ffmpeg exit {refused.returncode}: "
              f"{refused.stderr.strip().splitlines()[-1:] if refused.stderr else ''}")
        assert refused.returncode != 0
        assert store.name("cam") is None and not store.pins(), "a refused push was recorded"
    # garbage and a web request at the port: closed, the publisher goes on waiting
    for junk in (os.urandom(4000), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x03" + os.urandom(3073) + b"\xff" * 600):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(junk)
            s.settimeout(15)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    assert thread.is_alive() and store.name("cam") is None
    # the right key: recorded
    pushed = push(f"rtmp://127.0.0.1:{port}/live/{KEY}", seconds=4)
    assert pushed.returncode == 0, pushed.stderr
    thread.join(90)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
    summary = box["summary"]
    print("recorded:", summary)
    assert summary["segments"]["240p"] >= 3 and summary["segments"]["audio"] >= 3
    assert "decoder_error" not in summary
    assert store.name("cam")["meta"]["kind"] == "vod"
    text = caplog.text
    print(text)
    assert "refused an RTMP connection from 127.0.0.1" in text      # (a flood is one line a second)
    assert KEY not in text                    # the secret is never logged
    assert store.verify().ok


def test_f12_gate_bounds_time_size_and_connections():
    """The gate alone: slow, oversized and crowding connections are closed, and none of them stops a good one
    from being accepted."""
    gate = RtmpGate(f"rtmp://127.0.0.1:0/live/{KEY}", within=2.0)
    port = gate.listen()
    try:
        # crowding: one address gets MAX_PENDING_PER_ADDRESS slots; the rest are closed at once
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(rtmpgate.MAX_PENDING_PER_ADDRESS + 3)]
        closed = 0
        for s in idle:
            s.settimeout(1.0)
            try:
                closed += s.recv(1) == b""
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed += 1
        print(f"{len(idle)} idle connections from one address: {closed} closed at once")
        assert closed >= 3
        # slow: the held ones are closed once PUBLISH_WITHIN (here 2 s) is up
        for s in idle:
            s.settimeout(10)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
            s.close()
        # oversized: a connect command bigger than MAX_COMMAND is refused without being buffered whole
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"\x03" + bytes(1536))
            s.recv(1)
            big = amf_encode("connect") + amf_encode(1) + amf_encode({"app": "live", "pad": "x" * 60000})
            header = bytes([3]) + b"\0\0\0" + len(big).to_bytes(3, "big") + bytes([20]) + b"\0\0\0\0"
            s.sendall(bytes(3072) + header)
            got = b""
            try:
                while chunk := s.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
            assert len(got) <= 1 + 2 * 1536         # the handshake, then closed: no _result
        assert gate.winner is None and gate.refused >= 4
    finally:
        gate.close()


def test_f12_decoder_crash_and_hang_leave_the_store_whole(store):
    """The decoder is its own process: killed by SIGSEGV mid-broadcast, or stopped (a hang), the publisher keeps
    what was stored, ends the stream and says why."""
    for how, sig in (("crash", signal.SIGSEGV), ("hang", signal.SIGSTOP)):
        pids = []
        stop = threading.Event()
        thread, box = run_publisher(store, "testsrc", name=f"t-{how}", ladder="240p", stop=stop, window=3,
                                    opts=tc.Options(seconds=1.0, preset="ultrafast"), watchdog=4.0,
                                    on_decoder=pids.append)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            meta = (store.name(f"t-{how}") or {}).get("meta", {})
            if sum(len(t["segments"]) for t in meta.get("tracks", [])) >= 4:
                break
            time.sleep(0.2)
        assert pids and thread.is_alive()
        os.kill(pids[0], sig)
        thread.join(60)
        assert not thread.is_alive(), f"the publisher did not survive its decoder's {how}"
        assert "error" not in box, box.get("error")
        summary = box["summary"]
        print(f"decoder {how}: {summary.get('decoder_error')}; kept {summary['segments']}")
        assert summary["decoder_error"] and summary["recording"]
        assert ("signal 11" in summary["decoder_error"]) if how == "crash" else ("hung" in summary["decoder_error"])
        name = store.name(f"t-{how}")
        assert name["meta"]["kind"] == "vod" and name["meta"]["recorded_live"]
        assert not [p for p in store.pins() if p["name"] == f"live t-{how}"]
        with pytest.raises(ProcessLookupError):
            os.kill(pids[0], 0)               # reaped, not left behind
    assert store.verify().ok


def test_f12_bad_rtmp_urls(store):
    for url in ("rtmp://0.0.0.0:1935/live", "rtmp://0.0.0.0:1935/", "rtmp://0.0.0.0:99999/live/k", "rtmp:///live/k"):
        with pytest.raises(MediaError, match="rtmp://"):
            live.publish(store, url, name="x")
    assert store.name("x") is None


def test_f12_chunk_parser_rebuilds_timestamps_like_ffmpeg():
    """Timestamps through full, delta and bare headers, an extended timestamp, and a message split into
    chunks: what the FLV the decoder sees is made from."""
    a, b = socket.socketpair()
    try:
        reader = rtmpgate._Reader(b, time.monotonic() + 10)
        chunks = rtmp.ChunkStream(b, reader)
        chunks.max_message = rtmp.MAX_MESSAGE
        body = bytes(range(256)) * 2
        wire = bytearray()
        wire += bytes([0x04]) + (1000).to_bytes(3, "big") + (300).to_bytes(3, "big") + bytes([9]) + struct.pack("<I", 1)
        wire += body[:128] + bytes([0xC4]) + body[128:256] + bytes([0xC4]) + body[256:300]    # fmt 0, 3 chunks
        wire += bytes([0x84]) + (40).to_bytes(3, "big") + bytes(300)[:128] + bytes([0xC4]) + bytes(128) \
            + bytes([0xC4]) + bytes(44)                                                         # fmt 2: +40
        wire += bytes([0xC4]) + bytes(128) + bytes([0xC4]) + bytes(128) + bytes([0xC4]) + bytes(44)  # fmt 3: +40 again
        wire += bytes([0x04]) + b"\xff\xff\xff" + (5).to_bytes(3, "big") + bytes([8]) + struct.pack("<I", 1) \
            + (0x01234567).to_bytes(4, "big") + b"hello"                                        # extended
        a.sendall(bytes(wire))
        got = [chunks.message() for _ in range(4)]
        assert [(t, ts, len(p)) for t, _, ts, p in got] == [(9, 1000, 300), (9, 1040, 300), (9, 1080, 300),
                                                           (8, 0x01234567, 5)]
        assert got[0][3] == body[:300]
    finally:
        a.close()
        b.close()


def test_f12_cli_waits_through_garbage_and_stops_cleanly(tmp_path):
    """`hearth live publish rtmp://…` as a user runs it: garbage at the port is refused and it goes on waiting;
    SIGTERM before any publisher ends it with a message and nothing recorded; the key is not printed."""
    import json
    import sys
    env = {**os.environ, "HEARTH_GATEWAY_PORT": "0"}
    base = [sys.executable, "-m", "edge", "--data-dir", str(tmp_path)]
    assert subprocess.run([*base, "init"], capture_output=True, env=env, timeout=60).returncode == 0
    port = free_port()
    proc = subprocess.Popen([*base, "live", "publish", f"rtmp://127.0.0.1:{port}/live/{KEY}", "--name", "cam",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_listening(port)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"\x00" + os.urandom(2000))      # not RTMP's version byte
                s.settimeout(15)
                try:
                    assert s.recv(65536) == b""             # closed by the gate, nothing answered
                except ConnectionResetError:
                    pass
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(err)
    assert proc.returncode == 0, err
    assert json.loads(out)["segments"] == {} and "recording" not in json.loads(out)
    assert "waiting for a publisher on rtmp://127.0.0.1:" in err and KEY not in err
    assert "refused an RTMP connection" in err and "not RTMP" in err
    ls = subprocess.run([*base, "media", "ls", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(ls.stdout) == []
