"""Transcoding for neighbours (protocol version 1, types 20-25): what a worker offers, a job, its state.

A requester asks a neighbour whose Welcome lists "transcode" what it offers (Encoders -> EncodersInfo), hands
it a job (JobSubmit: the source, already in the requester's store, by CID; the ladder and options), asks how it
goes (JobQuery) and ends it (JobCancel: stops a running job, or lets the worker forget a finished one). Every
one of them is answered by a JobState, or an Error (refused: transcode_for does not allow you; busy: no slot or
queue place, or your budget is spent). A done job's JobState carries the output's root CID and the worker's
Ed25519 signature of job_statement(...): the worker vouches for every segment under that root.

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


JOB_MESSAGES = (Encoders, EncodersInfo, JobSubmit, JobQuery, JobCancel, JobState)
