"""A player's fetches without a browser, for tests/agent/test_live_fanout.py: run inside a node's namespace, it
polls a live media playlist on the node's gateway every POLL seconds for `seconds`, fetches each segment new in it
(and the init segment) and prints, as JSON, when each segment index first became listed and fetched. SIGTERM
ends it early (after the fetch under way), with the same output."""

import json
import re
import signal
import sys
import time
import urllib.error
import urllib.request

POLL = 0.05


def main(base: str, seconds: float) -> None:
    seen: dict[int, list] = {}
    errors = 0
    end = time.time() + seconds
    init = None
    stopped = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    while time.time() < end and not stopped:
        try:
            text = urllib.request.urlopen(base + "index.m3u8", timeout=5).read().decode()
            if init is None:
                init = len(urllib.request.urlopen(base + "init.mp4", timeout=5).read())
            for name in re.findall(r"^(\d+)\.m4s$", text, re.M):
                index = int(name)
                if index not in seen:
                    listed = time.time()
                    data = urllib.request.urlopen(base + f"{name}.m4s", timeout=5).read()
                    seen[index] = [listed, time.time(), len(data)]
        except (urllib.error.URLError, OSError, ValueError):
            errors += 1
        time.sleep(POLL)
    print(json.dumps({"segments": seen, "errors": errors, "init": init}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
