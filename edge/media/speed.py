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
