"""Crash safety: SIGKILL a real `hearth add` process at random moments, many times, and check the store each time.

After every kill the store must open, `verify` must find no corrupt or missing block and no pin with a
missing block, and every CID the process printed (printed = acknowledged: the pin is committed first) must
still be pinned and read back byte for byte. Every round adds fresh bytes, so each kill lands in real writes.
Every few rounds GC runs (all of the above must still hold), then the oldest acknowledged content is unpinned
so the test's disk use stays bounded.
"""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

from edge.store import Store, content
from edge.ipld.cid import parse_cid

KILLS = 24
FILES = 3
FILE_BYTES = 24 << 20


def _add_all(store_dir, paths):
    cmd = [sys.executable, "-m", "edge", "--data-dir", store_dir, "add", "-q", "--no-progress"]
    script = ";".join([
        "import subprocess, sys",
        f"cmd = {cmd!r}",
        f"paths = {paths!r}",
        "[print(subprocess.run(cmd + [p], check=True, capture_output=True, text=True).stdout.strip() + ' ' + p, "
        "flush=True) for p in paths]",
    ])
    # a process group, so the kill takes the running `hearth add` with the driver
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def _fresh_inputs(tmp_path, rng, round_):
    paths, digests = [], {}
    for i in range(FILES):
        path = str(tmp_path / f"input{i}")
        data = rng.randbytes(FILE_BYTES)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
        digests[path] = (round_, hashlib.sha256(data).hexdigest())
    return paths, digests


def test_sigkill_during_adds_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(20261125)
    paths, _ = _fresh_inputs(tmp_path, rng, -1)
    store_dir = str(tmp_path / "store")
    subprocess.run([sys.executable, "-m", "edge", "--data-dir", store_dir, "init"], check=True, capture_output=True)
    acknowledged = {}
    start = time.monotonic()
    proc = _add_all(store_dir, paths)
    out, _ = proc.communicate()
    full_run = time.monotonic() - start   # how long an uninterrupted run takes here
    assert proc.returncode == 0
    for line in out.splitlines():
        cid, path = line.split(" ", 1)
        acknowledged[cid] = path
    with Store(store_dir) as s:
        for cid in list(acknowledged):
            s.unpin(parse_cid(cid))
        s.gc()
    acknowledged.clear()

    killed_mid_add = survived = 0
    for round_ in range(KILLS):
        paths, digests = _fresh_inputs(tmp_path, rng, round_)
        proc = _add_all(store_dir, paths)
        time.sleep(rng.uniform(0.05, full_run))
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        lines = out.splitlines()
        killed_mid_add += len(lines) < FILES
        for line in lines:
            cid, path = line.split(" ", 1)
            acknowledged[cid] = digests[path]
        with Store(store_dir) as s:
            report = s.verify()
            assert report.corrupt == [] and report.missing == [] and report.damaged_pins == [], (round_, report)
            pinned = {p["cid"] for p in s.pins()}
            for pin in pinned:
                assert s.dag(parse_cid(pin))[1] == []
            for cid, (added_in, digest) in acknowledged.items():
                assert cid in pinned, f"round {round_}: {cid}, acknowledged in round {added_in}, is not pinned"
                h = hashlib.sha256()
                for piece in content.cat(s, cid):
                    h.update(piece)
                assert h.hexdigest() == digest, f"round {round_}: {cid} reads back different bytes"
            if round_ % 6 == 5:
                s.gc()
                assert s.verify().ok
                survived += len(acknowledged)
                for cid in [c for c, (added_in, _) in acknowledged.items() if added_in <= round_ - 3]:
                    s.unpin(parse_cid(cid))
                    del acknowledged[cid]
                s.gc()
    assert killed_mid_add >= KILLS // 2, "the kills should mostly land while an add runs"
    assert survived, "some adds should have finished between kills"
