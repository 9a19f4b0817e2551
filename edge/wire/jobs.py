"""Transcoding for neighbours (protocol version 1, types 20-25): what a worker offers, a job, its state.

A requester asks a neighbour whose Welcome lists "transcode" what it offers (Encoders -> EncodersInfo), hands
it a job (JobSubmit: the source, already in the requester's store, by CID; the ladder and options), asks how it
goes (JobQuery) and ends it (JobCancel: stops a running job, or lets the worker forget a finished one). Every
one of them is answered by a JobState, or an Error (refused: transcode_for does not allow you; busy: no slot or
queue place, or your budget is spent). A done job's JobState carries the output's root CID and the worker's
Ed25519 signature of job_statement(...): the worker vouches for every segment under that root.

Live transcodes (types 26-29) run on the same jobs: LiveSubmit starts one, LivePull takes its outputs one by
one as they are cut (LiveOutput, each signed), JobQuery and JobCancel (which ends it as a live stream ends:
the last segments cut) as above.

Parsed by edge/wire/codec.py (parse_job, job_body); limits here.
"""

import re
from dataclasses import dataclass

from edge.ipld.cid import CID

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")   # chosen by the requester; unique per requester
STATES = ("queued", "fetching", "running", "done", "failed", "cancelled")
MAX_SLOTS = 64
MAX_SPEED = 1_000_000          # thousandths of real time (1000x)
MAX_DURATION_MS = 24 * 3600 * 1000
MAX_SOURCE = 1 << 40
SIGNATURE = 64


def job_statement(job: str, source: CID, output: CID) -> bytes:
    """What a worker signs for a finished job: the job, the source it was given and the output it made."""
    return b"hearth transcode v1\n" + job.encode() + b"\n" + bytes(source) + b"\n" + bytes(output)


@dataclass(frozen=True)
class Encoders:
    """What do you offer me? (a node whose Welcome lists "transcode")"""

    id: int
    TYPE = 20


@dataclass(frozen=True)
class EncodersInfo:
    id: int
    encoder: str               # the encoder its jobs use by default (a hardware one if it works)
    hardware: bool
    slots: int                 # media_jobs
    free: int                  # slots free now
    speed: int                 # thousandths of real time for the default ladder, 0 until measured
    accepts: bool              # whether transcode_for lets it take jobs from the asker
    TYPE = 21


@dataclass(frozen=True)
class JobSubmit:
    id: int
    job: str
    source: CID                # a UnixFS file the requester holds
    size: int                  # its bytes (the worker refuses more than it would take)
    duration_ms: int           # of the source: the worker transcodes no more than this
    ladder: str
    segment_ms: int
    encoder: str = "auto"
    preset: str = "veryfast"
    name: str = "stream"       # the stream's name, written into its stream.json
    TYPE = 22


@dataclass(frozen=True)
class JobQuery:
    id: int
    job: str
    TYPE = 23


@dataclass(frozen=True)
class JobCancel:
    id: int
    job: str
    TYPE = 24


@dataclass(frozen=True)
class JobState:
    id: int
    job: str
    state: str                 # one of STATES
    done_ms: int = 0           # of the source transcoded so far
    speed: int = 0             # thousandths of real time, once known
    output: CID | None = None  # done: the stream directory's root
    signature: bytes | None = None   # done: the worker's signature of job_statement(job, source, output)
    message: str = ""          # failed: why
    TYPE = 25


# live transcodes (types 26-29): `hearth live publish --on NODE|auto` (edge/media/liveoffload.py, livejobs.py)

MAX_HEADER = 4096              # a live output's JSON header (the decoder's frame header)
MAX_CHUNK = 1 << 20            # bytes of a live output per LiveOutput (a larger segment comes in several)
MAX_OUTPUT = 64 << 20          # bytes of one live output (edge/media/live.py's MAX_PAYLOAD)
LIVE_SOURCE = re.compile(r"testsrc\Z|flv\Z|b[a-z2-7]{20,120}\Z")   # the test pattern, a pushed FLV stream
MAX_FEED = 256 << 10           # bytes of a pushed source per LiveFeed                    # (LiveFeed), a file's CID


def live_statement(job: str, seq: int, output: CID, header: bytes) -> bytes:
    """What a worker signs for each output of a live job: the job, its place in the job's outputs, the output's
    CID (as content.bytes_dag makes it: the CID the requester stores it under) and its header."""
    return (b"hearth live transcode v1\n" + job.encode() + b"\n" + seq.to_bytes(8, "big") + b"\n" + bytes(output)
            + b"\n" + header)


@dataclass(frozen=True)
class LiveSubmit:
    """Transcode a live source for me: the test pattern (made on the worker), a file I hold (by CID, played
    in real time from start_ms: the keyframe at or before it, the frames before it decoded and dropped), or
    "flv": an RTMP push to me, whose FLV bytes I send as they arrive (LiveFeed). Answered by a JobState (or an
    Error, as JobSubmit); then LivePull until it says done."""

    id: int
    job: str
    source: str                # "testsrc", "flv" or the CID of a UnixFS file
    size: int                  # the file's bytes (0 for the test pattern)
    duration_ms: int           # stop after this much (0: when the requester ends it, JobCancel)
    ladder: str
    segment_ms: int
    encoder: str = "auto"
    preset: str = "veryfast"
    start_ms: int = 0          # a file only: where in it to start (a replaced worker's successor resumes there)
    TYPE = 26


@dataclass(frozen=True)
class LivePull:
    """Send me output seq (the job's outputs are numbered from 0), from byte offset; the worker forgets the
    outputs before seq. Answered by a LiveOutput, or a JobState when seq is not there yet (or never will be)."""

    id: int
    job: str
    seq: int
    offset: int = 0
    TYPE = 27


@dataclass(frozen=True)
class LiveOutput:
    """Output seq of a live job, bytes offset..offset+len(data) of its total: a plan, an init segment or a media
    segment as the decoder process sent it (header: its JSON header), with the worker's signature of
    live_statement(job, seq, CID of the whole output, header)."""

    id: int
    job: str
    seq: int
    total: int
    offset: int
    header: bytes
    signature: bytes
    data: bytes
    TYPE = 28


@dataclass(frozen=True)
class LiveFeed:
    """Bytes seq (numbered from 0) of a pushed source's FLV stream (LiveSubmit's source "flv"), for the worker's
    decoder; end: the push ended after them. Answered by a JobState (a seq already taken: the same), an Error
    BUSY while the worker holds its FEED_WINDOW chunks not yet decoded (the requester sends it again a moment
    later), BAD_REQUEST for a seq out of order."""

    id: int
    job: str
    seq: int
    end: bool
    data: bytes
    TYPE = 29


FEED_WINDOW = 16               # LiveFeed chunks a worker holds not yet decoded, at most (then BUSY)

JOB_MESSAGES = (Encoders, EncodersInfo, JobSubmit, JobQuery, JobCancel, JobState, LiveSubmit, LivePull, LiveOutput, LiveFeed)
