"""Spot checks of a transcode done elsewhere: is an output segment a faithful rendition of the source there?

A neighbour that transcodes for us could hand back anything that decodes. The requester keeps the source, so
it can check: it picks some output segments after the worker has committed to all of them (their CIDs are
signed), decodes each, and compares its pictures, shrunk to a small grey thumbnail, with its own decode of the
source over the same span. Shrinking hides the encoder's losses (what a lower rung is for) and keeps what a
forged segment cannot hide: other pictures, another moment, another scene.

How many to check: at least one output in five and at least two a job, and enough that a worker altering one
output in three goes unseen in at most 1% of jobs (the hypergeometric odds of picking no altered one; for a
small job that is most of its segments, for a 60 s 1080p ladder about one in five). The choice comes from the
system's CSPRNG, after the outputs are fixed, so a worker cannot know which outputs will be looked at.

PSNR of the thumbnails (8-bit grey, 64x36, shrunk by area averaging), measured by tests/media/test_spotcheck.py
(it prints them): honest 360p and 240p outputs of 720p test pattern score 49-53 dB (1080p-360p of 1080p: 48 dB
and more); the same rendition's segment from one second earlier or later (valid H.264 of the same scene at the
wrong moment: what a lazy or cheating worker would pass off) scores 24-27 dB; another scene less. THRESHOLD_DB
sits between, with 13 dB of room on the honest side for a low rung of noisier footage. It catches forged or
misplaced pictures, not a subtle edit of a few pixels.

Cost: the source is decoded only around the sampled segments (seeking past longer stretches), each sampled
output segment once; the offset search runs on a quarter of the pictures. benchmarks/offload.py prints the
check's CPU as a share of the transcode's."""

import io
import math
import secrets
from dataclasses import dataclass

import av

from edge.media.errors import MediaError

THUMB_W, THUMB_H = 64, 36
THRESHOLD_DB = 35.0        # a sampled segment whose thumbnails score under this is not the source's
SHARE = 5                  # at least one output in SHARE is checked ...
MINIMUM = 2                # ... and at least this many a job
ALTERED = 1 / 3            # the cheating rate the sample must catch ...
MISS = 0.01                # ... in all but this share of jobs
MARGIN = 0.5               # seconds of source decoded either side of a sampled segment
SEEK_GAP = 2.0             # a longer stretch of source between samples is skipped by seeking
MAX_SHIFT = 2              # frames the two decodes may be offset by (a boundary rounding, a dropped frame)
PERFECT_DB = 99.0          # the score of identical thumbnails
SEARCH_STRIDE = 4          # the offset is found on every 4th picture (the check's own CPU: see the benchmark)
INTERPOLATION = "AREA"             # an average over each thumbnail pixel's area: 1.6x cheaper than the default bilinear


class SpotCheckFailed(MediaError):
    """A sampled output segment is not a rendition of the source (or does not decode)."""


def miss_odds(n: int, altered: int, k: int) -> float:
    """The chance that k outputs drawn from n, of which `altered` are forged, include no forged one."""
    if altered <= 0:
        return 1.0
    if k > n - altered:
        return 0.0
    return math.comb(n - altered, k) / math.comb(n, k)


def sample_count(n: int) -> int:
    """How many of n outputs to check: ceil(n / SHARE), at least MINIMUM, raised until a worker that alters
    one output in three (at least one) is missed in at most MISS of jobs; never more than n."""
    if n <= 0:
        return 0
    altered = max(1, int(n * ALTERED))
    k = min(n, max(MINIMUM, math.ceil(n / SHARE)))
    while k < n and miss_odds(n, altered, k) > MISS:
        k += 1
    return k


def choose(outputs: list, rng=None) -> list:
    """sample_count(len(outputs)) of outputs, drawn without replacement by the CSPRNG (or rng, in tests)."""
    rng = rng or secrets.SystemRandom()
    return rng.sample(list(outputs), sample_count(len(outputs)))


@dataclass(frozen=True)
class Thumb:
    time: float      # seconds from the first picture of its decode
    pixels: bytes    # THUMB_W x THUMB_H grey


def _thumb(frame, rotation: int = 0) -> bytes:
    if rotation in (90, 270):   # the transcoder turns such a source upright: turn its thumbnail the same way
        small = frame.reformat(THUMB_H, THUMB_W, "gray", interpolation=INTERPOLATION)
        return _rotate(_plane(small, THUMB_H, THUMB_W), THUMB_H, THUMB_W, rotation)
    small = frame.reformat(THUMB_W, THUMB_H, "gray", interpolation=INTERPOLATION)
    data = _plane(small, THUMB_W, THUMB_H)
    return data[::-1] if rotation == 180 else data


def _plane(frame, w: int, h: int) -> bytes:
    plane = frame.planes[0]
    raw = bytes(plane)
    if plane.line_size == w:
        return raw[:w * h]
    return b"".join(raw[y * plane.line_size:y * plane.line_size + w] for y in range(h))


def _rotate(data: bytes, w: int, h: int, degrees: int) -> bytes:
    """A w x h grey picture turned clockwise by 90 or 270 degrees (h x w)."""
    if degrees == 90:
        return bytes(data[(h - 1 - y) * w + x] for x in range(w) for y in range(h))
    return bytes(data[y * w + (w - 1 - x)] for x in range(w) for y in range(h))


def _windows(spans) -> list[tuple[float, float]]:
    """spans widened by MARGIN, sorted, and merged where the gap between them is not worth a seek."""
    merged = []
    for a, b in sorted((a - MARGIN, b + MARGIN) for a, b in spans):
        if merged and a <= merged[-1][1] + SEEK_GAP:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def decode_thumbs(source, *, spans=None, rotation: int = 0, format: str | None = None) -> list[Thumb]:
    """Thumbnails of source's video (a path or bytes; with format, what av.open takes, e.g. a lavfi graph), each
    timed from the first picture; only those inside one of spans [(start, end), …] (give or take MARGIN) when
    given, seeking past long stretches between them. MediaError when it does not decode."""
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, format=format)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open for a spot check: {exc}") from None
    out: dict[float, Thumb] = {}
    try:
        if not container.streams.video:
            raise MediaError("no video to spot-check")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = container.decode(stream)
        origin = None
        last = 0.0
        for a, b in _windows(spans) if spans is not None else [(-math.inf, math.inf)]:
            if origin is not None and a > last + SEEK_GAP:   # skip what no sample needs
                container.seek(int(max(0.0, origin + a) / stream.time_base), stream=stream)
                frames = container.decode(stream)
            for frame in frames:
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                origin = t if origin is None else origin
                last = rel = t - origin
                if rel >= b:
                    break
                if rel >= a and rel not in out:
                    out[rel] = Thumb(rel, _thumb(frame, rotation))
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode for a spot check: {exc}") from None
    finally:
        container.close()
    return sorted(out.values(), key=lambda t: t.time)


def psnr(a: bytes, b: bytes) -> float:
    """PSNR in dB of two equal-sized 8-bit pictures (PERFECT_DB when identical)."""
    if len(a) != len(b) or not a:
        raise ValueError("pictures of different sizes")
    se = sum((x - y) * (x - y) for x, y in zip(a, b))
    if se == 0:
        return PERFECT_DB
    return min(PERFECT_DB, 10 * math.log10(255 * 255 * len(a) / se))


def _db(pairs) -> float:
    se = sum(sum((x - y) * (x - y) for x, y in zip(s.pixels, o.pixels)) for s, o in pairs)
    n = len(pairs) * THUMB_W * THUMB_H
    return PERFECT_DB if se == 0 else min(PERFECT_DB, 10 * math.log10(255 * 255 * n / se))


def score(source: list[Thumb], start: float, duration: float, output: list[Thumb]) -> float:
    """How well an output segment's thumbnails match the source's over [start, start + duration): the mean
    squared error of aligned pictures as PSNR, at the best of a few frame offsets (found on every SEARCH_STRIDE-th
    pair, then measured on all). 0 when there is nothing to compare (an output segment with no picture, or
    none of the source in that span)."""
    span = [t for t in source if start - 1e-3 <= t.time < start + duration - 1e-3]
    if not span or not output:
        return 0.0
    found = {}
    for shift in range(-MAX_SHIFT, MAX_SHIFT + 1):
        pairs = [(span[i + shift], o) for i, o in enumerate(output) if 0 <= i + shift < len(span)]
        if len(pairs) >= max(1, min(len(output), len(span)) // 2):
            found[shift] = pairs
    if not found:
        return 0.0
    best = max(found, key=lambda k: _db(found[k][::SEARCH_STRIDE]))
    return _db(found[best])


@dataclass(frozen=True)
class Sample:
    track: str
    index: int
    start: float
    duration: float


def check(source: list[Thumb], samples: list[Sample], read_output) -> list[tuple[Sample, float]]:
    """Score each sample: read_output(sample) gives the bytes of its track's init segment followed by the
    segment. SpotCheckFailed naming the first that scores under THRESHOLD_DB or does not decode; else the
    scores."""
    scores = []
    for s in samples:
        try:
            thumbs = decode_thumbs(read_output(s))
        except MediaError as exc:
            raise SpotCheckFailed(f"{s.track} segment {s.index} does not decode: {exc}") from None
        db = score(source, s.start, s.duration, thumbs)
        if db < THRESHOLD_DB:
            raise SpotCheckFailed(f"{s.track} segment {s.index} does not match the source there ({db:.1f} dB "
                                  f"against at least {THRESHOLD_DB:g})")
        scores.append((s, db))
    return scores


def samples_of(manifest: dict) -> list[Sample]:
    """Every video segment a stream.json lists (the outputs a spot check draws from)."""
    out = []
    for track in manifest.get("tracks", []):
        if track.get("kind") != "video":
            continue
        for seg in track.get("segments", []):
            out.append(Sample(str(track["name"]), int(seg["index"]), float(seg["start"]), float(seg["duration"])))
    return out


def spans(samples: list[Sample]) -> list[tuple[float, float]]:
    return [(s.start, s.start + s.duration) for s in samples]
