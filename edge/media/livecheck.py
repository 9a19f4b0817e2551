"""The process a live spot check runs in: `python -m edge.media.livecheck CHECK_JSON` (started by
edge/media/liveoffload.py; untrusted media is never decoded in the agent).

CHECK_JSON: {"source": a file's path (for an RTMP push, the FLV span the segment came from, its start timed from
the span's first picture: edge/media/livefeed.py) or "testsrc", "output": a file holding the output's init segment and
media segment, "start": seconds, "duration": seconds}. It decodes the source over [start, start + duration)
(the test pattern is made again, frame for frame, as the worker made it) and the output, and scores them as an
import's spot check does (edge/media/spotcheck.py: thumbnails, PSNR, THRESHOLD_DB). Prints one JSON line:
{"db": score} or {"error": one line}, with "cpu": this process's CPU seconds.
"""

import json
import sys
import time


def check(spec: dict) -> dict:
    from edge.media import live, spotcheck
    from edge.media.errors import MediaError
    start, duration = float(spec["start"]), float(spec["duration"])
    try:
        if spec["source"] == live.TEST_PATTERN:
            graph, fmt, _, _ = live.source_spec(live.TEST_PATTERN)
            thumbs = spotcheck.decode_thumbs(graph, spans=[(start, start + duration)], format=fmt)
        else:
            thumbs = spotcheck.decode_thumbs(spec["source"], spans=[(start, start + duration)])
    except MediaError as exc:
        return {"error": f"the source does not decode there: {exc}"}
    with open(spec["output"], "rb") as f:
        output = f.read()
    try:
        shown = spotcheck.decode_thumbs(output)
    except MediaError as exc:
        return {"error": f"the segment does not decode: {exc}"}
    return {"db": round(spotcheck.score(thumbs, start, duration, shown), 2)}


def main(argv: list[str]) -> int:
    result = check(json.loads(argv[0]))
    result["cpu"] = round(time.process_time(), 3)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
