"""The HTTP vocabulary the gateway's routes share: content types, cache headers, byte ranges, CORS, and the answer
to each way a request can fail (a response already started is cut off instead, by edge.transport.http)."""

import mimetypes
import os
import re
import urllib.parse

from edge.errors import DecodeError
from edge.fetch import FetchError, HoldersFailed, HoldersStalled, NoHolder
from edge.gateway.budget import OverBudget
from edge.governor.wear import WearBudgetSpent
from edge.store.errors import BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull
from edge.transport.client import TransportError
from edge.transport.http import Request, Response

IMMUTABLE = "public, max-age=29030400, immutable"
NAMED = "public, max-age=10"
RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".m4s": "video/iso.segment", ".mp4": "video/mp4",
         ".ts": "video/mp2t", ".json": "application/json", ".html": "text/html; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8",
         ".md": "text/markdown; charset=utf-8", ".m4a": "audio/mp4", ".vtt": "text/vtt"}
RETRY_AFTER = 5                       # seconds: what a 503 asks a client to wait


class Unsatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single `bytes=` range, None to send the whole; Unsatisfiable if the range
    lies outside the content. Several ranges are answered with the whole (allowed by RFC 9110)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None                     # not a form we serve; the whole body is a valid answer
    if not m.group(1):                  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise Unsatisfiable("an empty suffix range")
        return (max(0, size - n), size - 1) if size else _unsatisfiable(size)
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        _unsatisfiable(size)
    return first, min(last, size - 1)


def _unsatisfiable(size):
    raise Unsatisfiable(f"the content has {size} bytes")


def content_type(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def wants(request: Request, fmt: str, mime: str) -> bool:
    return request.query.get("format") == fmt or mime in request.headers.get("accept", "")


class Stalled(FetchError):
    """A fetch running for a reader brought nothing new for FETCH_IDLE seconds."""


def failure_response(exc: BaseException) -> Response | None:
    """The answer to a request that failed with exc, by what went wrong; None for a bug (the server answers 500
    with an error id)."""
    via_fetch = isinstance(exc, FetchFailed)
    if via_fetch:
        exc = exc.cause
    if isinstance(exc, Unsatisfiable):
        return Response.text(416, f"range not satisfiable: {exc}")
    if isinstance(exc, OverBudget):
        return Response.text(429, str(exc), {"retry-after": str(exc.retry_after)})
    if isinstance(exc, (QuotaExceeded, StoreFull)):
        return Response.text(507, f"this node has no room for it: {msg(exc)}")
    if isinstance(exc, WearBudgetSpent):
        return Response.text(507, f"this node caches nothing more today: {msg(exc)}")
    if isinstance(exc, (NoHolder, BlockNotFound, FileNotFoundError)):
        return Response.text(404, f"not found: {msg(exc)}")
    if isinstance(exc, (Stalled, HoldersStalled)):
        return Response.text(504, f"the neighbours holding it did not answer in time: {msg(exc)}")
    if isinstance(exc, CorruptBlock):
        return Response.text(502, f"a block on this node is corrupt and was quarantined: {exc}")
    if isinstance(exc, DecodeError):   # hash-valid content that is not what its format allows
        return Response.text(502, f"the content is malformed: {exc}")
    if isinstance(exc, StoreError):
        return Response.text(503, f"the store cannot answer now: {exc}", {"retry-after": str(RETRY_AFTER)})
    if isinstance(exc, (HoldersFailed, FetchError, TransportError)):
        return Response.text(502, f"the neighbours holding it failed to give it: {msg(exc)}")
    if via_fetch and isinstance(exc, Exception):   # any other end of a fetch (a DAG past this node's bounds…)
        return Response.text(502, f"fetching it from neighbours failed: {msg(exc)}")
    return None


class FetchFailed(Exception):
    """The fetch a reader waited on ended with cause (raised as its own object per reader)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def quoted(text: str) -> str:
    """text from a request as it may go in a header or a message: percent-encoded past printable ASCII."""
    return urllib.parse.quote(text, safe="/:@!$&'()*+,;=-._~")


def cors() -> dict:
    # Only on content public by design, the trustless /ipfs/ answers (browser IPFS clients need them from any
    # origin) and a stream's files (a page elsewhere may play a stream from this box). /api/ and /webrtc carry
    # none: only this node's own pages (same origin) read them.
    return {"access-control-allow-origin": "*"}


def msg(exc) -> str:
    return exc.args[0] if exc.args else str(exc)
