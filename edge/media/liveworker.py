"""The decoder process of `hearth live publish`: untrusted media is decoded here, never beside the store writer.

Started by edge.media.live with its job as a JSON argument; reads the source (a file, the test pattern, an
FFmpeg URL, or FLV on standard input from the RTMP gate), transcodes it into the ladder and writes each init
segment and media segment to standard output as a frame:

    4-byte big-endian header length, a JSON header {"t": ..., "size": N, ...}, N bytes of payload

Frames: plan (the video renditions, in ladder order), init, segment, progress (about once a second: the
parent's watchdog), done, error (a MediaError's one-line text). This process opens no store and holds no
secret: if a decoder bug crashes it or makes it hang, the publisher (its parent) stores what came before,
ends the stream cleanly and says what happened. SIGTERM asks for a proper end (encoders flushed).
"""

import json
import logging
import os
import signal
import struct
import sys
import threading
import time

from edge.media import transcode as tc
from edge.media.errors import MediaError
from edge.media.ladder import parse_ladder, plan


def track_header(track) -> dict:
    return {"name": track.name, "kind": track.kind, "codec": track.codec, "width": track.width,
            "height": track.height, "frame_rate": track.frame_rate, "kbps": track.kbps}


def _slot(slot: dict | None):
    """A live job run for a neighbour (edge/media/livejobs.py) holds one of this box's media_jobs slots, or
    fails at once when none is free (the requester then asks another); the agent's own streams hold theirs
    in the publisher."""
    import contextlib

    from edge.media.slots import transcode_slot
    if not slot:
        return contextlib.nullcontext()
    return transcode_slot(slot["data_dir"], slot["jobs"], wait=0.0, what=slot.get("what", ""))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="decoder: %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    job = json.loads(argv[0])
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                    # a stray print from a library goes to stderr, never into the frames
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent decides; it sends SIGTERM
    lock = threading.Lock()

    def send(header: dict, data: bytes = b""):
        header["size"] = len(data)
        raw = json.dumps(header).encode()
        with lock:                   # renditions cut segments on their own threads
            out.write(struct.pack(">I", len(raw)) + raw)
            out.write(data)
            out.flush()

    class PipeSink(tc.Sink):
        def init(self, track, data):
            send({"t": "init", "track": track_header(track)}, data)

        def segment(self, track, seg):
            send({"t": "segment", "track": track_header(track), "index": seg.index, "start": seg.start,
                  "duration": seg.duration, "independent": seg.independent}, seg.data)

    rungs = parse_ladder(job["ladder"])

    def renditions(info):
        chosen = plan(rungs, info.video.width, info.video.height) if info.video else []
        send({"t": "plan", "tracks": [r.name for r in chosen]})
        return chosen

    last = [0.0]

    def progress(p):
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            send({"t": "progress", "seconds": p.seconds, "frames": p.frames})

    try:
        with _slot(job.get("slot")):
            _, tracks = tc.transcode(job["url"], renditions, PipeSink(), tc.Options(**job["options"]),
                                     progress=progress, stop=stop, input_options=job["input_options"],
                                     input_format=job["input_format"])
        send({"t": "done", "tracks": [t.name for t in tracks]})
        return 0
    except MediaError as exc:
        send({"t": "error", "message": str(exc)})
        return 2
    except BrokenPipeError:
        return 3                     # the publisher is gone: nothing to tell


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:
        os._exit(3)
