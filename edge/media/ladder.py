"""The ABR ladder: which renditions to make from a source, never upscaling.

A rung is named by its short side (`720p` is 1280x720 for a landscape source and 720x1280 for a portrait
one) with a video bit rate; `parse_ladder("1080p,720p:2500k,360p")` reads the `--ladder` option. The plan
keeps the source's aspect ratio, rounds sides to even numbers (H.264 4:2:0 needs them) and drops rungs
taller than the source; a source smaller than every rung gets one rung at its own size.
"""

import re
from dataclasses import dataclass

from edge.media.errors import MediaError

# Short side -> video kbit/s and H.264 level-friendly defaults (close to Apple's HLS authoring table).
DEFAULT_BITRATES = {2160: 14000, 1440: 9000, 1080: 5000, 720: 2800, 540: 1800, 480: 1200, 360: 700, 240: 400,
                    144: 200}
DEFAULT_LADDER = "1080p,720p,480p,360p"
AUDIO_KBPS = 128
MIN_SIDE, MAX_SIDE = 64, 4320


@dataclass(frozen=True)
class Rung:
    name: str           # '720p'
    short_side: int
    kbps: int            # target video bit rate

    def __str__(self):
        return f"{self.name}:{self.kbps}k"


@dataclass(frozen=True)
class Rendition:
    """A rung fitted to one source."""

    name: str
    width: int
    height: int
    kbps: int

    @property
    def maxrate_kbps(self) -> int:
        return self.kbps * 3 // 2

    @property
    def bufsize_kbits(self) -> int:
        return self.kbps * 2


def _default_kbps(side: int) -> int:
    known = sorted(DEFAULT_BITRATES)
    for k in known:
        if side <= k:
            return int(DEFAULT_BITRATES[k] * (side / k) ** 2) if side < k else DEFAULT_BITRATES[k]
    return int(DEFAULT_BITRATES[known[-1]] * (side / known[-1]) ** 2)


def parse_ladder(text: str) -> list[Rung]:
    """Rungs from 'NAMEp[:RATEk|:RATEM],…', tallest first; MediaError saying what is accepted."""
    rungs = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)p(?::(\d+(?:\.\d+)?)([kKmM]))?", part)
        if not m:
            raise MediaError(f"{part!r} is not a rung; write rungs as 720p or 720p:2500k (short side in pixels, "
                             "optional video bit rate in k or M bit/s), separated by commas")
        side = int(m.group(1))
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise MediaError(f"{part!r}: a rung's short side must be {MIN_SIDE}..{MAX_SIDE} pixels")
        if m.group(2):
            kbps = float(m.group(2)) * (1000 if m.group(3) in "mM" else 1)
            if not 50 <= kbps <= 200_000:
                raise MediaError(f"{part!r}: a video bit rate must be 50k..200M")
        else:
            kbps = _default_kbps(side)
        rungs.append(Rung(f"{side}p", side, int(kbps)))
    if not rungs:
        raise MediaError("the ladder is empty; give at least one rung, e.g. --ladder 720p,360p")
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise MediaError(f"the ladder {text!r} names a rung twice")
    return sorted(rungs, key=lambda r: -r.short_side)


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def plan(rungs: list[Rung], width: int, height: int) -> list[Rendition]:
    """The renditions for a source of width x height (as displayed): never larger than the source."""
    if width < 2 or height < 2:
        raise MediaError(f"a {width}x{height} picture is too small to transcode")
    short = min(width, height)
    out = []
    for rung in rungs:
        if rung.short_side > short:
            continue
        scale = rung.short_side / short
        w, h = _even(width * scale), _even(height * scale)
        if width <= height:
            w = rung.short_side if rung.short_side % 2 == 0 else _even(rung.short_side)
        else:
            h = rung.short_side if rung.short_side % 2 == 0 else _even(rung.short_side)
        out.append(Rendition(rung.name, w, h, rung.kbps))
    if not out:
        side = short - short % 2
        out.append(Rendition(f"{side}p", _even(width), _even(height), _default_kbps(side)))
    return out
