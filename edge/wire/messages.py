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
    FULL = 9                 # a holder's share (the disk it lends to neighbours) has no room for the piece
    SIBLING = 10             # a holder of the same segment asked for a piece without a valid repair order


@dataclass(frozen=True)
class Hello:
    node: str
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    caps: tuple[str, ...] = ()
    cert: bytes | None = None
    free: int | None = None     # bytes free on the sender's store disk (told only to an authenticated peer)
    operator: str = ""          # the operator key the client declares (as a Welcome does); "": its own
    TYPE = 1


@dataclass(frozen=True)
class Welcome:
    node: str
    version: int
    caps: tuple[str, ...] = ()
    cert: bytes | None = None   # a fleet node's certificate: it proves membership to clients as they do to it
    free: int | None = None     # bytes free on the server's store disk (no longer in mDNS, which anyone reads)
    operator: str = ""          # the operator key the server declares (one failure domain); "": its own
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


# Pieces of protected pins (nodes whose Welcome lists "pieces"; docs/protocol.md, "Pieces"). A piece travels in
# chunks of at most MAX_PIECE_CHUNK bytes, each within the frame limit; a piece is at most MAX_PIECE bytes.
MAX_PIECE = 16 << 20          # bytes of one piece (a segment is at most 8 MiB; k >= 1)
MAX_PIECE_CHUNK = 1 << 20     # bytes of a piece in one StorePiece, Transfer or Piece message
MAX_PROOF = 60 * 1024         # bytes of a signed audit proof (edge/protect/audit.py MAX_PROOF is under it)
NONCE = 16                    # bytes of an audit nonce
MAX_LEASES = 1024             # piece roots in one RenewLease or ReleasePiece
MAX_MANIFEST = 2 << 20        # bytes of a signed manifest
MAX_LEASE = 1 << 40           # a lease expiry, in seconds since the epoch
HASH = 32                     # bytes of a piece root, a Merkle node or a beacon
SIG = 64                      # bytes of an Ed25519 signature


@dataclass(frozen=True)
class StorePiece:
    """Bytes offset.. of piece index of segment segment of the protected pin manifest (its root CID), whose
    Merkle root is root and which is size bytes long: keep it until lease (seconds since the epoch). The chunks of
    one piece come in order; the holder checks the whole piece against root before it keeps it."""

    id: int
    manifest: CID
    segment: int
    index: int
    root: bytes
    size: int
    lease: int
    offset: int = 0
    data: bytes = field(repr=False, default=b"")
    TYPE = 32


@dataclass(frozen=True)
class StoreOk:
    """have: bytes of the piece the holder has now (== its size: the piece is whole, verified and kept); to a
    Manifest, its size once kept."""

    id: int
    have: int
    TYPE = 33


@dataclass(frozen=True)
class GetPiece:
    id: int
    root: bytes
    offset: int = 0
    length: int = MAX_PIECE_CHUNK
    order: bytes = b""      # a signed repair order (edge/protect/order.py), at most MAX_ORDER bytes; b"": none
    TYPE = 34


@dataclass(frozen=True)
class Piece:
    id: int
    root: bytes
    offset: int
    total: int
    data: bytes = field(repr=False, default=b"")
    TYPE = 35


@dataclass(frozen=True)
class Audit:
    """Prove you hold piece root. The auditor reveals secret, the beacon secret whose commitment it published
    before (with its previous Audit to this holder: commit is the one for its next epoch); the holder derives the
    leaves to prove from the beacon, the auditor, root and nonce (edge/protect/audit.py challenge)."""

    id: int
    root: bytes
    nonce: bytes
    secret: bytes
    commit: bytes
    TYPE = 36


@dataclass(frozen=True)
class AuditProof:
    """The holder's signed proof (edge/protect/audit.py serialize_proof: leaves, Merkle paths, signature)."""

    id: int
    proof: bytes = field(repr=False, default=b"")
    TYPE = 37


@dataclass(frozen=True)
class Transfer:
    """A leaving holder (or a repairer) hands a piece to a new holder: StorePiece's fields and the owner whose
    lease it is; the last chunk is answered by a TransferReceipt, the others by StoreOk."""

    id: int
    manifest: CID
    segment: int
    index: int
    root: bytes
    size: int
    lease: int
    owner: str
    offset: int = 0
    data: bytes = field(repr=False, default=b"")
    TYPE = 38


@dataclass(frozen=True)
class TransferReceipt:
    """The new holder's signature over (edge/transport/pieces.py receipt_message) the piece it now keeps."""

    id: int
    root: bytes
    sig: bytes
    TYPE = 39


@dataclass(frozen=True)
class RenewLease:
    """Keep these pieces (of pins the sender owns) until lease (seconds since the epoch)."""

    id: int
    roots: tuple[bytes, ...]
    lease: int
    TYPE = 40


@dataclass(frozen=True)
class ReleasePiece:
    """The sender no longer needs these pieces (it unpinned): the holder frees them."""

    id: int
    roots: tuple[bytes, ...]
    TYPE = 41


@dataclass(frozen=True)
class LeaseOk:
    """Answer to RenewLease or ReleasePiece: found[i] says whether roots[i] was a piece of the sender's here."""

    id: int
    found: tuple[bool, ...]
    TYPE = 42


@dataclass(frozen=True)
class GetManifest:
    id: int
    cid: CID
    TYPE = 43


@dataclass(frozen=True)
class Manifest:
    """The signed manifest of the protected pin cid (edge/protect/manifest.py): an answer to GetManifest, or, from
    the owner to a holder of its pieces, a request to keep it (answered by StoreOk)."""

    id: int
    cid: CID
    data: bytes = field(repr=False, default=b"")
    TYPE = 44


@dataclass(frozen=True)
class Moved:
    """A leaving holder tells the owner that piece (segment, index, root) of pin now lives at `to`, with the new
    holder's TransferReceipt signature as proof (answered by StoreOk, have = 0)."""

    id: int
    manifest: CID
    segment: int
    index: int
    root: bytes
    to: str
    sig: bytes
    TYPE = 45


MAX_ORDER = 512               # bytes of a signed repair order (edge/protect/order.py MAX_ORDER)
MAX_SOURCES = 256             # holders named in one RepairPiece
MAX_ENDPOINT = 256            # characters of one endpoint


@dataclass(frozen=True)
class RepairPiece:
    """The repairer asks the new holder of piece index of segment segment to compute it itself: data is the pin's
    signed manifest the repair starts from, order the signed repair order naming the new holder, sources the
    (node id, endpoint) of holders of the segment to fetch k pieces from. Answered by Repaired once the piece is
    computed, checked against its root and kept."""

    id: int
    manifest: CID
    segment: int
    index: int
    order: bytes
    sources: tuple[tuple[str, str], ...] = ()
    data: bytes = field(repr=False, default=b"")
    TYPE = 46


@dataclass(frozen=True)
class Repaired:
    """The new holder keeps piece root: fetched is the bytes it read from the sources, sig its TransferReceipt-style
    signature (edge/transport/pieces.py receipt_message, the repairer as sender and as lease owner)."""

    id: int
    root: bytes
    fetched: int
    sig: bytes
    TYPE = 47


TYPES = {cls.TYPE: cls for cls in (Hello, Welcome, Have, HaveReply, Get, Block, Put, PutOk, Probe, ProbeData,
                                   GetMany, Blocks, Error, ListStreams, Streams, StorePiece, StoreOk, GetPiece,
                                   Piece, Audit, AuditProof, Transfer, TransferReceipt, RenewLease, ReleasePiece,
                                   LeaseOk, GetManifest, Manifest, Moved)}
WITH_PAYLOAD = (Block, Put, ProbeData, Blocks, StorePiece, Piece, Transfer, Manifest)
MAX_SEEN_WINDOW = 3_600_000   # milliseconds back a ReadQuery may ask about


@dataclass(frozen=True)
class ReadQuery:
    """The auditor asks a holder: between windows[i][0] and windows[i][1] milliseconds ago, did the reads it served
    of piece roots[i] (whole or narrow, by any node) together cover every one of blocks[i] (16 KiB blocks)?"""

    id: int
    roots: tuple[bytes, ...]
    blocks: tuple[tuple[int, ...], ...]
    windows: tuple[tuple[int, int], ...]
    TYPE = 48


@dataclass(frozen=True)
class ReadSeen:
    """Answer to ReadQuery: seen[i] says whether such a read of roots[i] was served."""

    id: int
    seen: tuple[bool, ...]
    TYPE = 49


TYPES.update({RepairPiece.TYPE: RepairPiece, Repaired.TYPE: Repaired})   # repair by the new holder (issue 16)
TYPES.update({ReadQuery.TYPE: ReadQuery, ReadSeen.TYPE: ReadSeen})      # the auditor's check of sibling reads
WITH_PAYLOAD += (RepairPiece,)

# transcoding for neighbours (types 20-25), declared in edge/wire/jobs.py
from edge.wire.jobs import JOB_MESSAGES  # noqa: E402 - jobs.py imports nothing from here
TYPES.update({cls.TYPE: cls for cls in JOB_MESSAGES})
from edge.wire.jobs import LiveOutput  # noqa: E402 - a live transcode's output carries its bytes as a payload
WITH_PAYLOAD = WITH_PAYLOAD + (LiveOutput,)

# live fan-out (types 30, 31), declared in edge/wire/live.py
from edge.wire.live import LIVE_MESSAGES  # noqa: E402 - live.py imports nothing from here
TYPES.update({cls.TYPE: cls for cls in LIVE_MESSAGES})
from edge.wire.jobs import LiveFeed  # noqa: E402 - a pushed source's bytes travel as a payload
WITH_PAYLOAD = WITH_PAYLOAD + (LiveFeed,)
