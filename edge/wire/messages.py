"""Node-to-node messages (protocol version 1): their types, limits and error codes. See docs/protocol.md.

They are written to and read from frames by edge/wire/codec.py (serialize_message, parse_message).
"""

import enum
from dataclasses import dataclass, field

from edge.ipld.cid import CID

MAGIC = b"HE"
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_BODY = 64 * 1024
MAX_HAVE = 1024
MAX_PAYLOAD = 2 << 20
MAX_ID = (1 << 63) - 1
MAX_TEXT = 512
MAX_PROBE = 256 * 1024   # bytes a throughput probe may ask for
MAX_GET_MANY = 64        # CIDs one GetMany may ask for (and entries one Blocks reply may carry)
MAX_CERT = 4096          # bytes of a fleet certificate in a Hello or Welcome
MAX_FREE = 1 << 62       # the free bytes a Hello or Welcome may claim
MAX_STREAMS = 256        # stream entries one node lists (ListStreams pages through them)


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 1          # the request could not be parsed or makes no sense
    UNSUPPORTED_VERSION = 2  # no protocol version in common
    NOT_FOUND = 3            # this node does not hold the block
    TOO_LARGE = 4            # a frame or a range over the limit
    REFUSED = 5              # admission or policy says no (not in the fleet, writes not allowed)
    QUOTA = 6                # the store is full or over its quota
    BUSY = 7                 # the peer is over its request rate; retry later
    INTERNAL = 8             # this node failed; the request may be retried elsewhere


@dataclass(frozen=True)
class Hello:
    node: str
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    caps: tuple[str, ...] = ()
    cert: bytes | None = None
    free: int | None = None     # bytes free on the sender's store disk (told only to an authenticated peer)
    TYPE = 1


@dataclass(frozen=True)
class Welcome:
    node: str
    version: int
    caps: tuple[str, ...] = ()
    cert: bytes | None = None   # a fleet node's certificate: it proves membership to clients as they do to it
    free: int | None = None     # bytes free on the server's store disk (no longer in mDNS, which anyone reads)
    TYPE = 2


@dataclass(frozen=True)
class Have:
    id: int
    cids: tuple[CID, ...]
    TYPE = 3


@dataclass(frozen=True)
class HaveReply:
    id: int
    have: tuple[bool, ...]
    TYPE = 4


@dataclass(frozen=True)
class Get:
    id: int
    cid: CID
    offset: int = 0
    length: int | None = None
    TYPE = 5


@dataclass(frozen=True)
class Block:
    id: int
    cid: CID
    offset: int
    total: int
    data: bytes = field(repr=False, default=b"")
    TYPE = 6


@dataclass(frozen=True)
class Put:
    id: int
    cid: CID
    data: bytes = field(repr=False, default=b"")
    TYPE = 7


@dataclass(frozen=True)
class PutOk:
    id: int
    stored: bool
    TYPE = 8


@dataclass(frozen=True)
class Probe:
    """Send me size bytes of filler: a throughput probe (nodes whose Welcome lists the "probe" capability)."""

    id: int
    size: int
    TYPE = 9


@dataclass(frozen=True)
class ProbeData:
    id: int
    data: bytes = field(repr=False, default=b"")
    TYPE = 10


@dataclass(frozen=True)
class GetMany:
    """Whole blocks, several in one message (nodes whose Welcome lists "getmany"): entry i is the Get of
    cids[i] with request id id + i, answered by a Blocks reply that carries it or by its own Block or Error."""

    id: int
    cids: tuple[CID, ...]
    TYPE = 11

    def gets(self):
        return [Get(self.id + i, cid) for i, cid in enumerate(self.cids)]


@dataclass(frozen=True)
class Blocks:
    """Several whole blocks in one message: the block answering request ids[i] is sizes[i] bytes of the payload,
    after those of the entries before it. The receiver knows the CID it asked for under each id, and checks.
    On the wire ids and sizes are byte strings of big-endian integers (8 and 4 bytes each): read in one call."""

    ids: tuple[int, ...]
    sizes: tuple[int, ...]
    data: bytes = field(repr=False, default=b"")
    TYPE = 12

    def parts(self):
        """(request id, block bytes) of each entry."""
        if len(self.ids) == 1:
            yield self.ids[0], self.data
            return
        off = 0
        for rid, size in zip(self.ids, self.sizes):
            yield rid, self.data[off:off + size]
            off += size


@dataclass(frozen=True)
class ListStreams:
    """The streams you publish, as signed entries (edge/wire/streamentry.py), from the start-th on; only those
    of name when name is given (nodes whose Welcome lists "streams")."""

    id: int
    start: int = 0
    name: str = ""
    TYPE = 13


@dataclass(frozen=True)
class Streams:
    """Signed stream entries (each at most streamentry.MAX_ENTRY bytes; as many as fit in a body), and how many
    the sender lists in all (at most MAX_STREAMS): the asker asks again from where this page ends."""

    id: int
    entries: tuple[bytes, ...] = field(repr=False, default=())
    total: int = 0
    TYPE = 14


@dataclass(frozen=True)
class Error:
    id: int
    code: ErrorCode
    message: str
    TYPE = 15


TYPES = {cls.TYPE: cls for cls in (Hello, Welcome, Have, HaveReply, Get, Block, Put, PutOk, Probe, ProbeData,
                                   GetMany, Blocks, Error, ListStreams, Streams)}
WITH_PAYLOAD = (Block, Put, ProbeData, Blocks)

# live fan-out (types 30, 31), declared in edge/wire/live.py
from edge.wire.live import LIVE_MESSAGES  # noqa: E402 - after TYPES, which it extends
TYPES.update({cls.TYPE: cls for cls in LIVE_MESSAGES})
