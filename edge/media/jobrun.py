"""The process a transcode for a neighbour runs in: `python -m edge.media.jobrun JOB_JSON`.

The agent starts it for each job it takes (untrusted media is never decoded in the agent: a crash or an
out-of-memory in FFmpeg ends this process and fails the job, nothing more). It does what `hearth media import`
does, in a media_jobs slot: transcode the source file into the ladder and store the stream directory, pinned
under the job's pin name (no stream is named here), then records this box's speed for the ladder. Standard
output carries JSON lines: {"t": "progress", "seconds": S} about once a second, then {"t": "done", ...the
import's summary} or {"t": "error", "message": one line}.
"""

import json
import logging
import os
import sys
import threading
import time


def run(job: dict, emit) -> int:
    from edge.config import load_config, store_settings
    from edge.media import speed, vod
    from edge.media import transcode as tc
    from edge.media.errors import MediaError
    from edge.media.slots import transcode_slot
    from edge.store import Store
    from edge.store.errors import StoreError

    data_dir = job["data_dir"]
    last = [0.0]

    def progress(p):
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            emit({"t": "progress", "seconds": round(p.seconds, 3)})
    try:
        config = load_config(flags={"data_dir": data_dir})
        encoder = config.media_encoder if job["encoder"] == "auto" else job["encoder"]   # this box's choice
        opts = tc.Options(seconds=job["seconds"], encoder=encoder, preset=job["preset"],
                          duration=job["duration"])
        with transcode_slot(data_dir, config.media_jobs, what=job.get("what", "")):
            store = Store(data_dir, **store_settings(config))
            try:
                result = vod.import_file(store, job["source"], name=job["name"], ladder=job["ladder"], opts=opts,
                                         progress=progress, pin_as=job["pin"])
            finally:
                store.close()
        if result.elapsed > 0:
            chosen = tc.encoders.choose(opts.encoder)
            speed.record(data_dir, job["ladder"], result.duration / result.elapsed, chosen.name, chosen.hardware)
        emit({"t": "done", **result.as_dict()})
        return 0
    except (MediaError, StoreError) as exc:
        emit({"t": "error", "message": str(exc)})
        return 2


def encoders(emit) -> int:
    """Print the encoder imports here would use: {"t": "encoder", "name": …, "hardware": …}."""
    from edge.media import encoders as enc
    from edge.media.errors import MediaError
    try:
        chosen = enc.choose("auto")
    except MediaError as exc:
        emit({"t": "error", "message": str(exc)})
        return 2
    emit({"t": "encoder", "name": chosen.name, "hardware": chosen.hardware})
    return 0


def _end_with_parent() -> None:
    """Exit when the agent that started this process is gone (killed: no one would take the result; the
    output is only pinned once whole, so nothing half-made stays named)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(4)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    _end_with_parent()
    logging.basicConfig(level=logging.WARNING, format="transcode job: %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                    # a stray print from a library goes to stderr, never into the lines

    def emit(line: dict):
        out.write(json.dumps(line) + "\n")
        out.flush()
    if argv == ["--encoders"]:
        return encoders(emit)
    return run(json.loads(argv[0]), emit)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
