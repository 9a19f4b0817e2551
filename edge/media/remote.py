"""`hearth media import FILE --on NODE|auto`: the import done by a neighbour, checked and named here.

Runs in the command's process, beside the store (as a local import does): the source is stored and pinned
while the job runs; the agent (asked through `ask`, the control socket) picks the worker, runs the job and
fetches the output; this process spot-checks the output against the source (edge/media/spotcheck.py: decoding
the worker's segments and the source happens here, never in the agent) and names the stream. A worker whose
job fails or whose output fails a check is reported and left out; the job goes to another neighbour, and
after ATTEMPTS or when none is left, it is done here.
"""

import json
import os
import re
import time

from edge.governor import memory
from edge.media import spotcheck
from edge.media.errors import MediaError
from edge.media.jobs import ACTIVE
from edge.media.ladder import parse_ladder, plan
from edge.media.probe import probe
from edge.media.slots import free_slots
from edge.media.vod import check_name, estimate_bytes, stream_meta
from edge.store import content

ATTEMPTS = 3
POLL = 0.5


def should_offload(data_dir: str, media_jobs: int, source: str, ladder: str, *, budget: int | None = None) -> str:
    """Why this box cannot keep up with an import now ('' if it can): its media_jobs slots are all taken, or
    the ladder does not fit its memory budget even with the encoders at their leanest (edge/governor/memory.py;
    budget: that module's, unless given)."""
    if free_slots(data_dir, media_jobs) == 0:
        return f"all {media_jobs} transcode slot(s) here are taken"
    info = probe(source)
    if info.video is not None:
        budget = memory.memory_budget() if budget is None else budget
        sizes = [(r.width, r.height) for r in plan(parse_ladder(ladder), info.video.width, info.video.height)]
        fit = memory.plan_transcode(sizes, budget)
        if fit.estimate > budget - memory.RESERVE:
            return (f"the ladder needs about {fit.estimate >> 20} MiB, more than this box's memory budget leaves "
                    f"a transcode ({max(0, budget - memory.RESERVE) >> 20} MiB)")
    return ""


def import_elsewhere(store, source: str, ask, *, name: str | None, ladder: str, opts, on: str,
                     note=lambda text: None, progress=None) -> dict | None:
    """Have a neighbour import source (on: a node id or auto); the stream's summary once its output passed
    the spot checks and is named here, or None when no neighbour could do it (the caller imports locally)."""
    name = check_name(name or re.sub(r"[^A-Za-z0-9._-]", "-", os.path.splitext(os.path.basename(source))[0])
                      .lstrip("._-") or "stream")
    info = probe(source)
    if info.video is None:   # nothing to spot-check, and sound alone is cheap to encode
        note("a source without video is transcoded here")
        return None
    renditions = plan(parse_ladder(ladder), info.video.width, info.video.height)
    # what the output can weigh: the ladder at its peak rates, twice over, and room for the playlists
    max_output = 2 * estimate_bytes(renditions, info.duration, info.audio is not None) + (4 << 20)
    started = time.monotonic()
    pin = f"job source {name}"
    added = content.add(store, source, pin=False)
    store.pin(added.cid, name=pin)
    try:
        exclude: list[str] = []
        for attempt in range(ATTEMPTS):
            try:
                job = ask("offload", source=str(added.cid), size=os.path.getsize(source),
                          duration=info.duration, ladder=ladder, seconds=opts.seconds, encoder=opts.encoder,
                          preset=opts.preset, name=name, on=on if attempt == 0 else "auto", exclude=exclude,
                          max_output=max_output)
            except ConnectionError as exc:
                if attempt == 0 and on != "auto":   # that one will not do: another may
                    note(f"{exc}; asking another neighbour")
                    exclude.append(on)
                    continue
                note(f"no neighbour for this transcode: {exc}")
                return None
            note(f"transcoding on {job['peer']} (job {job['id']})")
            while job["state"] in ACTIVE:
                time.sleep(POLL)
                job = ask("job", id=job["id"])
                if progress:
                    progress(job["done"])
            if job["state"] == "cancelled":
                raise MediaError(f"job {job['id']} was cancelled (hearth jobs cancel)")
            if job["state"] != "fetched":
                note(f"the job on {job['peer']} failed: {job['message']}")
                exclude.append(job["peer"])
                continue
            try:
                checked = check_output(store, source, job["output"], info.video.rotation)
            except spotcheck.SpotCheckFailed as exc:
                ask("job_checked", id=job["id"], ok=False, why=str(exc))
                note(f"the output of {job['peer']} failed its spot check ({exc}); not asking it again")
                exclude.append(job["peer"])
                continue
            manifest = _manifest(store, job["output"])
            meta = stream_meta(manifest)
            store.set_name(name, content.parse_target(job["output"]), "stream", meta)
            ask("job_checked", id=job["id"], ok=True)
            return {"name": name, "cid": job["output"], "duration": round(meta["duration"], 3),
                    "renditions": meta["tracks"], "encoder": manifest.get("encoder", ""),
                    "segment_seconds": manifest.get("segment_seconds"), "elapsed": round(time.monotonic() - started, 3),
                    "worker": job["peer"], "job": job["id"], "spot_check": checked}
        return None
    finally:
        store.unpin_named(pin)


def _manifest(store, root: str) -> dict:
    raw = b"".join(content.cat(store, f"{root}/stream.json"))
    if len(raw) > 4 << 20:
        raise spotcheck.SpotCheckFailed("its stream.json is implausibly large")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise spotcheck.SpotCheckFailed("its stream.json is not JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tracks"), list):
        raise spotcheck.SpotCheckFailed("its stream.json lists no tracks")
    return manifest


def check_output(store, source: str, root: str, rotation: int = 0) -> dict:
    """Spot-check the stream directory at root against source; SpotCheckFailed if a sample fails. What was
    checked: {"checked", "of", "min_db", "cpu_s"}."""
    t0 = time.process_time()
    try:
        outputs = spotcheck.samples_of(_manifest(store, root))
    except (KeyError, TypeError, ValueError) as exc:
        raise spotcheck.SpotCheckFailed(f"its stream.json is malformed: {exc}") from None
    if not outputs:
        raise spotcheck.SpotCheckFailed("it holds no video segment")
    chosen = spotcheck.choose(outputs)
    thumbs = spotcheck.decode_thumbs(source, spans=spotcheck.spans(chosen), rotation=rotation)

    def read(sample):
        try:
            return (b"".join(content.cat(store, f"{root}/{sample.track}/init.mp4"))
                    + b"".join(content.cat(store, f"{root}/{sample.track}/{sample.index:05d}.m4s")))
        except Exception as exc:   # noqa: BLE001 - a missing or unreadable file is a failed check
            raise spotcheck.SpotCheckFailed(f"{sample.track} segment {sample.index} cannot be read: {exc}") \
                from None
    scores = spotcheck.check(thumbs, chosen, read)
    return {"checked": len(scores), "of": len(outputs), "min_db": round(min(db for _, db in scores), 1),
            "cpu_s": round(time.process_time() - t0, 3)}

