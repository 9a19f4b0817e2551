"""A gateway client for the chaos test, run inside a network namespace (`python -m tests.agent.chaos_client
PLAN`): threads that GET /ipfs/CID, mostly with a Range, from the nodes' gateways until the stop file appears
or the deadline passes, and check every byte received against the original file.

A body is right when it is the exact bytes of the range asked for, or a prefix of them cut short (a node
killed, a block found corrupt mid-response). Anything else is a wrong byte, recorded with where it happened.
Writes a JSON summary to the plan's "out" path.

PLAN is a JSON file: {"gateways": ["10.x.0.1:4800", ...], "files": {cid: path of the original}, "stop": path,
"seconds": float, "threads": int, "seed": int, "out": path, "timeout": seconds per socket operation}.
"""

import collections
import http.client
import json
import os
import random
import re
import sys
import threading
import time

CHUNK = 64 * 1024
NO_ANSWER_PAUSE = 0.2   # seconds a thread waits after a gateway did not answer at all
RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)$")


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.whole = 0                       # complete and byte-exact
        self.cut_short = 0                   # a right prefix, then the body ended
        self.bytes_checked = 0
        self.statuses = collections.Counter()   # status -> count (the 2xx included)
        self.errors = collections.Counter()     # no answer: exception name -> count
        self.wrong = []                      # every wrong answer, described
        self.samples = {}                    # status -> the first body of that status (not 2xx), for the report

    def as_dict(self) -> dict:
        return {"requests": self.requests, "whole": self.whole, "cut_short": self.cut_short,
                "bytes_checked": self.bytes_checked, "statuses": dict(self.statuses), "errors": dict(self.errors),
                "wrong": self.wrong,
                "samples": self.samples}


def one_request(gateway: str, cid: str, data: bytes, rng: random.Random, timeout: float, tally: Tally):
    size = len(data)
    kind = rng.random()
    if kind < 0.1:
        first, last, header = 0, size - 1, None                      # the whole file
    elif kind < 0.25:
        first = rng.randrange(size)
        last, header = size - 1, f"bytes={first}-"                    # from a point to the end
    else:
        first = rng.randrange(size)
        last = min(size - 1, first + rng.randrange(1, 1 << 20))
        header = f"bytes={first}-{last}"
    host, port = gateway.rsplit(":", 1)
    where = f"{gateway} /ipfs/{cid} {header or 'whole'}"
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    got = bytearray()
    try:
        try:
            conn.request("GET", f"/ipfs/{cid}", headers={"Range": header} if header else {})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            with tally.lock:
                tally.requests += 1
                tally.errors[type(exc).__name__] += 1
            time.sleep(NO_ANSWER_PAUSE)   # the node is down: ask again soon, not in a busy loop
            return
        status = resp.status
        if status == 200:
            first, last = 0, size - 1
        elif status == 206:
            m = RANGE.match(resp.headers.get("content-range", ""))
            if not m or int(m[3]) != size or (header and (int(m[1]), int(m[2])) != (first, last)):
                with tally.lock:
                    tally.requests += 1
                    tally.statuses[status] += 1
                    tally.wrong.append(f"{where}: content-range {resp.headers.get('content-range')!r}")
                return
        if status in (200, 206) and int(resp.headers.get("content-length", -1)) != last - first + 1:
            with tally.lock:
                tally.requests += 1
                tally.statuses[status] += 1
                tally.wrong.append(f"{where}: content-length {resp.headers.get('content-length')} for "
                                   f"{last - first + 1} bytes")
            return
        try:
            while True:
                piece = resp.read(CHUNK)
                if not piece:
                    break
                got += piece
        except http.client.IncompleteRead as exc:
            got += exc.partial
        except (OSError, http.client.HTTPException):
            pass   # what came before the cut is checked below
    finally:
        conn.close()
    with tally.lock:
        tally.requests += 1
        tally.statuses[status] += 1
        if status not in (200, 206):
            tally.samples.setdefault(str(status), f"{where}: {bytes(got[:300]).decode(errors='replace').strip()}")
            return
        want = data[first:last + 1]
        tally.bytes_checked += len(got)
        if len(got) > len(want) or got != want[:len(got)]:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            tally.wrong.append(f"{where}: status {status}, {len(got)} bytes for {len(want)}, first wrong byte "
                               f"at {first + at}")
        elif len(got) == len(want):
            tally.whole += 1
        else:
            tally.cut_short += 1


def main(plan_path: str) -> None:
    with open(plan_path) as f:
        plan = json.load(f)
    files = {}
    for cid, path in plan["files"].items():
        with open(path, "rb") as f:
            files[cid] = f.read()
    tally = Tally()
    deadline = time.monotonic() + plan["seconds"]

    failed = []

    def worker(seed):
        rng = random.Random(seed)
        cids = sorted(files)
        try:
            while time.monotonic() < deadline and not os.path.exists(plan["stop"]):
                cid = rng.choice(cids)
                one_request(rng.choice(plan["gateways"]), cid, files[cid], rng, plan["timeout"], tally)
        except BaseException:
            failed.append(seed)   # a bug here: the summary is still written, and the exit status says so
            raise

    threads = [threading.Thread(target=worker, args=(plan["seed"] * 100 + i,)) for i in range(plan["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tmp = plan["out"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(tally.as_dict(), f)
    os.replace(tmp, plan["out"])
    if failed:
        sys.exit(f"{len(failed)} client thread(s) failed; see the tracebacks above")


if __name__ == "__main__":
    main(sys.argv[1])
