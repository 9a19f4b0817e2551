"""This box's measured transcode speed per ladder, kept in the data directory (transcode-speed.json).

Measured once, on the first import of a ladder here (source seconds over wall seconds, the slot's wait not
counted), and kept: `--on auto` compares it with real time, and a node tells neighbours its speed for the
default ladder (EncodersInfo). Also the encoder its imports use, so the agent need not open encoders itself.
"""

import json
import os

from edge.atomic import write_atomic

FILE = "transcode-speed.json"


def _read(data_dir: str) -> dict:
    try:
        with open(os.path.join(data_dir, FILE)) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def measured(data_dir: str, ladder: str) -> float | None:
    """Times real time this box transcodes ladder at, or None before its first import of it."""
    speed = _read(data_dir).get("ladders", {}).get(ladder)
    return float(speed) if isinstance(speed, (int, float)) and speed > 0 else None


def live_key(ladder: str) -> str:
    """The key a live ladder's speed is kept under (measured by live_speed)."""
    return f"live {ladder}"


MEASURE_SECONDS = 4.0      # of the 720p test pattern cut through the ladder, as fast as it goes, to measure


def live_speed(data_dir: str, ladder: str, preset: str = "veryfast", encoder: str = "auto") -> float | None:
    """This box's speed cutting ladder live (times real time), measured once on first use and kept: the 720p test
    pattern through the ladder, as fast as it goes, in the live decoder process (edge/media/liveworker.py; the
    agent opens no encoder itself); timed from the process's plan to its end, so its start is not counted.
    Blocking (a worker thread's); None when the measurement failed."""
    import dataclasses
    import struct
    import subprocess
    import sys
    import time

    from edge.media import live
    from edge.media import transcode as tc
    known = measured(data_dir, live_key(ladder))
    if known is not None:
        return known
    url, fmt, options, _ = live.source_spec(live.TEST_PATTERN)
    opts = tc.Options(seconds=1.0, encoder=encoder, preset=preset, live=True, duration=MEASURE_SECONDS)
    job = {"url": url, "input_format": fmt, "input_options": options, "ladder": ladder,
           "options": dataclasses.asdict(opts)}
    proc = subprocess.Popen([sys.executable, "-m", "edge.media.liveworker", json.dumps(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    planned = ended = None
    try:
        while True:
            raw = proc.stdout.read(4)
            if len(raw) < 4:
                break
            header = json.loads(proc.stdout.read(struct.unpack(">I", raw)[0]))
            proc.stdout.read(header.get("size", 0))
            if header.get("t") == "plan":
                planned = time.monotonic()
            elif header.get("t") in ("done", "error"):
                ended = time.monotonic() if header["t"] == "done" else None
                break
    except (ValueError, OSError, AttributeError):
        ended = None
    finally:
        proc.stdout.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if planned is None or ended is None or ended <= planned:
        return None
    speed = MEASURE_SECONDS / (ended - planned)
    value = _read(data_dir)
    ladders = value.setdefault("ladders", {})
    if len(ladders) < 64:
        ladders[live_key(ladder)] = round(speed, 3)
        write_atomic(os.path.join(data_dir, FILE), json.dumps(value).encode())
    return speed


def encoder(data_dir: str) -> tuple[str, bool] | None:
    """(encoder name, hardware) the imports here used, or None before the first."""
    value = _read(data_dir).get("encoder")
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"][:64], bool(value.get("hardware"))
    return None


def record(data_dir: str, ladder: str, speed: float, encoder_name: str, hardware: bool) -> None:
    """Keep the first measurement of ladder (later ones do not replace it) and the encoder used."""
    value = _read(data_dir)
    ladders = value.setdefault("ladders", {})
    if ladder in ladders or speed <= 0 or len(ladders) >= 64:
        if value.get("encoder", {}).get("name") == encoder_name:
            return
    else:
        ladders[ladder] = round(speed, 3)
    value["encoder"] = {"name": encoder_name, "hardware": hardware}
    write_atomic(os.path.join(data_dir, FILE), json.dumps(value).encode())
