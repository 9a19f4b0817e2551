"""The bodies of the piece messages (protected pins: store, read, audit, hand over, lease, manifest): written
as DAG-CBOR maps and read back with every field checked and bounded. edge/wire/codec.py frames them.

Sizes are bounded before anything is built: a chunk of a piece is at most MAX_PIECE_CHUNK bytes (and the frame
limit), a piece at most MAX_PIECE, a signed audit proof at most MAX_PROOF bytes (its fields are read by
edge/protect/audit.py parse_proof, a row above), a lease list holds at most MAX_LEASES roots, a manifest at
most MAX_MANIFEST bytes.
"""

from edge.errors import DecodeError
from edge.identity import public_key_of
from edge.wire.canonical import pack_bits, unpack_bits
from edge.wire.messages import (HASH, MAX_LEASE, MAX_LEASES, MAX_MANIFEST, MAX_PIECE, MAX_PROOF, NONCE,
                                MAX_PIECE_CHUNK, SIG, Audit, AuditProof, GetManifest, GetPiece, LeaseOk, Manifest,
                                Piece, ReleasePiece, RenewLease, StoreOk, StorePiece, Transfer, TransferReceipt)
from edge.wire.messages import (MAX_ENDPOINT, MAX_ORDER, MAX_SEEN_WINDOW, MAX_SOURCES, Moved, ReadQuery, ReadSeen,
                                Repaired, RepairPiece)

PIECE_TYPES = (StorePiece, StoreOk, GetPiece, Piece, Audit, AuditProof, Transfer, TransferReceipt, RenewLease,
               ReleasePiece, LeaseOk, GetManifest, Manifest, Moved, RepairPiece, Repaired, ReadQuery, ReadSeen)
MAX_BLOCKS_ASKED = 16   # blocks named per root in a ReadQuery (an audit challenges 4 leaves)
MAX_SEGMENTS = 1 << 20
MAX_INDEX = 255      # pieces of a segment are numbered 0 .. n-1, n = k + m <= 256 (the codec's limit)


def piece_body(msg) -> dict:
    """The body map of a piece message (its payload, if any, is msg.data)."""
    kind = type(msg)
    if kind in (StorePiece, Transfer):
        body = {"id": msg.id, "manifest": bytes(msg.manifest), "segment": msg.segment, "index": msg.index,
                "root": msg.root, "size": msg.size, "lease": msg.lease, "offset": msg.offset}
        if kind is Transfer:
            body["owner"] = msg.owner
        return body
    if kind is StoreOk:
        return {"id": msg.id, "have": msg.have}
    if kind is GetPiece:
        body = {"id": msg.id, "root": msg.root, "offset": msg.offset, "length": msg.length}
        if msg.order:   # only when one is presented: a plain GetPiece is as before
            body["order"] = msg.order
        return body
    if kind is RepairPiece:
        return {"id": msg.id, "manifest": bytes(msg.manifest), "segment": msg.segment, "index": msg.index,
                "order": msg.order, "sources": [list(s) for s in msg.sources]}
    if kind is Repaired:
        return {"id": msg.id, "root": msg.root, "fetched": msg.fetched, "sig": msg.sig}
    if kind is ReadQuery:
        return {"id": msg.id, "roots": list(msg.roots), "blocks": [list(b) for b in msg.blocks],
                "windows": [list(w) for w in msg.windows]}
    if kind is ReadSeen:
        return {"id": msg.id, "n": len(msg.seen), "seen": pack_bits(msg.seen)}
    if kind is Piece:
        return {"id": msg.id, "root": msg.root, "offset": msg.offset, "total": msg.total}
    if kind is Audit:
        return {"id": msg.id, "root": msg.root, "nonce": msg.nonce, "secret": msg.secret, "commit": msg.commit}
    if kind is AuditProof:
        return {"id": msg.id, "proof": msg.proof}
    if kind is TransferReceipt:
        return {"id": msg.id, "root": msg.root, "sig": msg.sig}
    if kind is RenewLease:
        return {"id": msg.id, "roots": list(msg.roots), "lease": msg.lease}
    if kind is ReleasePiece:
        return {"id": msg.id, "roots": list(msg.roots)}
    if kind is LeaseOk:
        return {"id": msg.id, "n": len(msg.found), "found": pack_bits(msg.found)}
    if kind in (GetManifest, Manifest):
        return {"id": msg.id, "cid": bytes(msg.cid)}
    if kind is Moved:
        return {"id": msg.id, "manifest": bytes(msg.manifest), "segment": msg.segment, "index": msg.index,
                "root": msg.root, "to": msg.to, "sig": msg.sig}
    raise TypeError(f"not a piece message: {msg!r}")




def _fixed(b, key: str, size: int) -> bytes:
    v = b.get(key, (bytes,))
    if len(v) != size:
        raise DecodeError(f"{b.kind}: field {key!r} must be {size} bytes, not {len(v)}")
    return v


def _roots(b) -> tuple[bytes, ...]:
    raw = b.get("roots", (list,))
    if not 1 <= len(raw) <= MAX_LEASES:
        raise DecodeError(f"{b.kind}: {len(raw)} piece roots; 1 to {MAX_LEASES} are allowed")
    if not all(type(r) is bytes and len(r) == HASH for r in raw):
        raise DecodeError(f"{b.kind}: every piece root must be {HASH} bytes")
    return tuple(raw)


def _order(b, required: bool) -> bytes:
    v = b.get("order", (bytes,), required, b"")
    if len(v) > MAX_ORDER or (required and not v):
        raise DecodeError(f"{b.kind}: a repair order is {1 if required else 0} to {MAX_ORDER} bytes, not {len(v)}")
    return v


def _sources(b) -> tuple[tuple[str, str], ...]:
    raw = b.get("sources", (list,))
    if not 1 <= len(raw) <= MAX_SOURCES:
        raise DecodeError(f"{b.kind}: {len(raw)} sources; 1 to {MAX_SOURCES} are allowed")
    out = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
                and 0 < len(pair[1]) <= MAX_ENDPOINT):
            raise DecodeError(f"{b.kind}: a source is [node id, endpoint of 1 to {MAX_ENDPOINT} characters]")
        try:
            public_key_of(pair[0])
        except DecodeError as exc:
            raise DecodeError(f"{b.kind}: source: {exc}") from None
        out.append((pair[0], pair[1]))
    return tuple(out)


def _chunk(kind: str, data, offset: int, size: int, max_payload: int) -> bytes:
    limit = min(MAX_PIECE_CHUNK, max_payload)
    if len(data) > limit:
        raise DecodeError(f"{kind}: a chunk of {len(data)} bytes is over the {limit}-byte limit")
    if offset + len(data) > size:
        raise DecodeError(f"{kind}: the chunk runs past the piece's {size} bytes")
    return bytes(data)


def parse_piece(cls, b, frames, max_payload: int):
    """The piece message of class cls from its body (codec's _Body: typed, bounded fields) and frames."""
    kind = cls.__name__
    if cls in (StorePiece, Transfer):
        size = b.uint("size", high=MAX_PIECE)
        if size == 0:
            raise DecodeError(f"{kind}: a piece has at least one byte")
        offset = b.uint("offset", high=MAX_PIECE)
        fields = (b.uint("id"), b.cid("manifest"), b.uint("segment", high=MAX_SEGMENTS),
                  b.uint("index", high=MAX_INDEX), _fixed(b, "root", HASH), size, b.uint("lease", high=MAX_LEASE))
        data = _chunk(kind, frames[2], offset, size, max_payload)
        if cls is StorePiece:
            return StorePiece(*fields, offset, data)
        owner = b.text("owner")
        try:
            public_key_of(owner)
        except DecodeError as exc:
            raise DecodeError(f"Transfer: owner: {exc}") from None
        return Transfer(*fields, owner, offset, data)
    if cls is StoreOk:
        return StoreOk(b.uint("id"), b.uint("have", high=max(MAX_PIECE, MAX_MANIFEST)))
    if cls is GetPiece:
        return GetPiece(b.uint("id"), _fixed(b, "root", HASH), b.uint("offset", high=MAX_PIECE),
                        b.uint("length", high=MAX_PIECE_CHUNK), _order(b, required=False))
    if cls is RepairPiece:
        data = frames[2]
        if len(data) > min(MAX_MANIFEST, max_payload) or not data:
            raise DecodeError(f"RepairPiece: a manifest of 1 to {min(MAX_MANIFEST, max_payload)} bytes is needed, "
                              f"not {len(data)}")
        return RepairPiece(b.uint("id"), b.cid("manifest"), b.uint("segment", high=MAX_SEGMENTS),
                           b.uint("index", high=MAX_INDEX), _order(b, required=True), _sources(b), bytes(data))
    if cls is ReadQuery:
        roots = _roots(b)
        raw = b.get("blocks", (list,))
        if len(raw) != len(roots) or not all(
                isinstance(bl, list) and 1 <= len(bl) <= MAX_BLOCKS_ASKED and
                all(type(x) is int and 0 <= x < MAX_PIECE for x in bl) for bl in raw):
            raise DecodeError(f"ReadQuery: blocks lists 1 to {MAX_BLOCKS_ASKED} block numbers for each root")
        windows = b.get("windows", (list,))
        if len(windows) != len(roots) or not all(
                isinstance(w, list) and len(w) == 2 and all(type(x) is int for x in w) and
                0 <= w[1] <= w[0] <= MAX_SEEN_WINDOW for w in windows):
            raise DecodeError(f"ReadQuery: windows gives [from, to] milliseconds ago, {MAX_SEEN_WINDOW} >= from >= "
                              "to >= 0, for each root")
        return ReadQuery(b.uint("id"), roots, tuple(tuple(bl) for bl in raw), tuple(tuple(w) for w in windows))
    if cls is ReadSeen:
        n = b.uint("n", high=MAX_LEASES)
        return ReadSeen(b.uint("id"), unpack_bits(b.get("seen", (bytes,)), n, "ReadSeen"))
    if cls is Repaired:
        return Repaired(b.uint("id"), _fixed(b, "root", HASH), b.uint("fetched", high=MAX_SOURCES * MAX_PIECE),
                        _fixed(b, "sig", SIG))
    if cls is Piece:
        total = b.uint("total", high=MAX_PIECE)
        offset = b.uint("offset", high=MAX_PIECE)
        return Piece(b.uint("id"), _fixed(b, "root", HASH), offset, total,
                     _chunk(kind, frames[2], offset, total, max_payload))
    if cls is Audit:
        return Audit(b.uint("id"), _fixed(b, "root", HASH), _fixed(b, "nonce", NONCE), _fixed(b, "secret", HASH),
                     _fixed(b, "commit", HASH))
    if cls is AuditProof:
        proof = b.get("proof", (bytes,))
        if not 1 <= len(proof) <= MAX_PROOF:
            raise DecodeError(f"AuditProof: a proof is 1 to {MAX_PROOF} bytes, not {len(proof)}")
        return AuditProof(b.uint("id"), proof)
    if cls is TransferReceipt:
        return TransferReceipt(b.uint("id"), _fixed(b, "root", HASH), _fixed(b, "sig", SIG))
    if cls is RenewLease:
        return RenewLease(b.uint("id"), _roots(b), b.uint("lease", high=MAX_LEASE))
    if cls is ReleasePiece:
        return ReleasePiece(b.uint("id"), _roots(b))
    if cls is LeaseOk:
        n = b.uint("n", high=MAX_LEASES)
        return LeaseOk(b.uint("id"), unpack_bits(b.get("found", (bytes,)), n, "LeaseOk"))
    if cls is GetManifest:
        return GetManifest(b.uint("id"), b.cid("cid"))
    if cls is Moved:
        to = b.text("to")
        try:
            public_key_of(to)
        except DecodeError as exc:
            raise DecodeError(f"Moved: to: {exc}") from None
        return Moved(b.uint("id"), b.cid("manifest"), b.uint("segment", high=MAX_SEGMENTS),
                     b.uint("index", high=MAX_INDEX), _fixed(b, "root", HASH), to, _fixed(b, "sig", SIG))
    data = frames[2]
    if len(data) > min(MAX_MANIFEST, max_payload) or not data:
        raise DecodeError(f"Manifest: 1 to {min(MAX_MANIFEST, max_payload)} bytes are allowed, not {len(data)}")
    return Manifest(b.uint("id"), b.cid("cid"), bytes(data))
