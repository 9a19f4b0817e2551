"""A client's requests about pieces of protected pins (docs/protocol.md, "Pieces of protected pins"): the owner
storing pieces and renewing or ending their leases, a leaving holder handing one over, an auditor, a reader.
Mixed into edge/transport/client.py's Client, which supplies request() and server_node.

Everything taken in is checked before it is returned: a whole piece against its Merkle root, a chunk against
the range asked for, a transfer receipt against the receiver's key; an audit proof is parsed with its bounds
and returned for the auditor to check (edge/protect/audit.py check), since only the auditor knows the challenge.
"""

import trio

from edge.errors import DecodeError, EdgeError
from edge.identity import verify
from edge.ipld.cid import CID
from edge.protect import audit, merkle
from edge.transport.pieces import receipt_message
from edge.wire import (Audit, AuditProof, GetManifest, GetPiece, LeaseOk, Manifest, Piece, ReleasePiece, RenewLease,
                       StoreOk, StorePiece, Transfer, TransferReceipt)
from edge.wire.messages import MAX_LEASES, MAX_PIECE, MAX_PIECE_CHUNK, Moved, ReadQuery, ReadSeen, Repaired, RepairPiece

REPAIR_TIMEOUT = 600.0   # seconds a new holder may take to fetch k pieces and compute its own
READ_QUERY_ITEMS = 256   # pieces asked about in one ReadQuery (about 16 KiB of body with 4 blocks each)


class PieceAnswerError(EdgeError):
    """A holder answered a piece request wrongly (bytes that do not match, a receipt that does not verify)."""


class PieceRequests:
    server_node: str

    async def store_piece(self, pin: CID, segment: int, index: int, data, lease: int, *,
                          root: bytes | None = None, chunk: int = MAX_PIECE_CHUNK, owner: str | None = None) -> bytes:
        """Send a whole piece (StorePiece, or Transfer on behalf of owner), chunk by chunk in order; returns the
        TransferReceipt's signature for a transfer (checked), b"" for a store. PeerRefused (code FULL: the
        holder's share has no room; BAD_REQUEST: it found the bytes do not match root) when refused."""
        view = memoryview(data).cast("B")
        size = len(view)
        if not 0 < size <= MAX_PIECE:
            raise ValueError(f"a piece is 1 to {MAX_PIECE} bytes, not {size}")
        root = merkle.build(view).root if root is None else root
        chunk = max(1, min(chunk, MAX_PIECE_CHUNK))
        offset = 0
        while True:
            part = bytes(view[offset:offset + chunk])

            def make(rid, o=offset, p=part):
                if owner is None:
                    return StorePiece(rid, pin, segment, index, root, size, lease, o, p)
                return Transfer(rid, pin, segment, index, root, size, lease, owner, o, p)
            reply = await self.request(make)
            offset += len(part)
            if isinstance(reply, TransferReceipt) and owner is not None and offset == size:
                if reply.root != root or not verify(self.server_node, receipt_message(
                        root, pin, self.identity_node, self.server_node, owner), reply.sig):
                    raise PieceAnswerError("the new holder's transfer receipt does not verify")
                return reply.sig
            if not isinstance(reply, StoreOk) or reply.have != offset:
                raise PieceAnswerError(f"a malformed answer to store-piece (have {getattr(reply, 'have', '?')}, "
                                       f"sent {offset})")
            if offset == size:
                if owner is not None:
                    raise PieceAnswerError("the new holder kept the piece without a receipt")
                return b""

    async def get_piece_range(self, root: bytes, offset: int, length: int, order: bytes = b"") -> tuple[bytes, int]:
        """(bytes offset.. of piece root, at most length and MAX_PIECE_CHUNK of them; the piece's size): not
        checked against the root (a range cannot be); get_piece checks the whole. order: a signed repair order
        (edge/protect/order.py) for a holder of the same segment, which is refused (`sibling`) without one."""
        reply = await self.request(lambda rid: GetPiece(rid, root, offset, min(length, MAX_PIECE_CHUNK), order))
        if not isinstance(reply, Piece) or reply.root != root or reply.offset != offset or \
                len(reply.data) > length or (len(reply.data) < min(length, MAX_PIECE_CHUNK) and
                                             offset + len(reply.data) != reply.total):
            raise PieceAnswerError("a malformed answer to get-piece")
        return reply.data, reply.total

    async def get_piece(self, root: bytes, size: int, order: bytes = b"") -> bytes:
        """The whole piece root of size bytes, checked against its Merkle root (PieceAnswerError if it does not
        match: a holder that lies)."""
        parts, offset = [], 0
        while offset < size:
            data, total = await self.get_piece_range(root, offset, MAX_PIECE_CHUNK, order)
            if total != size or not data:
                raise PieceAnswerError(f"the holder says the piece is {total} bytes, not {size}")
            parts.append(data)
            offset += len(data)
        piece = b"".join(parts)
        if (await trio.to_thread.run_sync(merkle.build, piece)).root != root:   # hashing off the Trio thread
            raise PieceAnswerError("the holder sent bytes that do not match the piece's root")
        return piece

    async def repair_piece(self, pin: CID, segment: int, index: int, order: bytes, sources, manifest: bytes,
                           root: bytes, lease_owner: str, timeout: float = REPAIR_TIMEOUT) -> int:
        """Ask the server, the new holder, to compute piece index of segment itself from k pieces it fetches
        from sources ((node id, endpoint) pairs) under the signed order, against the signed manifest; returns the
        bytes it says it fetched, once its signed receipt for root (the repairer as sender and lease owner)
        verifies. Waits up to timeout: the new holder's fetches are paced by the sources' upload limits."""
        saved, self.timeout = self.timeout, max(self.timeout, timeout)
        try:
            reply = await self.request(lambda rid: RepairPiece(rid, pin, segment, index, order, tuple(sources),
                                                               manifest))
        finally:
            self.timeout = saved
        if not isinstance(reply, Repaired) or reply.root != root or not verify(
                self.server_node, receipt_message(root, pin, self.identity_node, self.server_node, lease_owner),
                reply.sig):
            raise PieceAnswerError("the new holder's receipt for the repaired piece does not verify")
        return reply.fetched

    async def audit(self, root: bytes, nonce: bytes, secret: bytes, commit: bytes) -> audit.Proof:
        """Challenge the holder: the signed proof it answered, parsed (the caller checks it with audit.check)."""
        reply = await self.request(lambda rid: Audit(rid, root, nonce, secret, commit))
        if not isinstance(reply, AuditProof):
            raise PieceAnswerError("a malformed answer to audit")
        try:
            return audit.parse_proof(reply.proof)
        except DecodeError as exc:
            raise PieceAnswerError(f"a malformed audit proof: {exc}") from None

    async def read_query(self, items) -> tuple[bool, ...]:
        """For each (piece root, block numbers, (from, to) milliseconds ago) of items: whether the reads the holder
        served of that piece in that window together covered every one of the blocks (edge/transport/pieces.py)."""
        seen = []
        items = list(items)
        for start in range(0, len(items), READ_QUERY_ITEMS):
            part = items[start:start + READ_QUERY_ITEMS]
            reply = await self.request(lambda rid: ReadQuery(rid, tuple(r for r, _, _ in part),
                                                             tuple(tuple(b) for _, b, _ in part),
                                                             tuple(tuple(w) for _, _, w in part)))
            if not isinstance(reply, ReadSeen) or len(reply.seen) != len(part):
                raise PieceAnswerError("a malformed answer to a read query")
            seen += reply.seen
        return tuple(seen)

    async def renew_leases(self, roots, lease: int) -> tuple[bool, ...]:
        return await self._leases(lambda rid, r: RenewLease(rid, r, lease), roots)

    async def release_pieces(self, roots) -> tuple[bool, ...]:
        return await self._leases(ReleasePiece, roots)

    async def _leases(self, make, roots) -> tuple[bool, ...]:
        found = []
        roots = list(roots)
        for start in range(0, len(roots), MAX_LEASES):
            part = tuple(roots[start:start + MAX_LEASES])
            reply = await self.request(lambda rid: make(rid, part))
            if not isinstance(reply, LeaseOk) or len(reply.found) != len(part):
                raise PieceAnswerError("a malformed answer to a lease request")
            found += reply.found
        return tuple(found)

    async def moved(self, pin: CID, segment: int, index: int, root: bytes, to: str, sig: bytes) -> None:
        """Tell the owner (the server) that its piece now lives at `to`, with the new holder's receipt."""
        reply = await self.request(lambda rid: Moved(rid, pin, segment, index, root, to, sig))
        if not isinstance(reply, StoreOk):
            raise PieceAnswerError("a malformed answer to moved")

    async def put_manifest(self, pin: CID, data: bytes) -> None:
        reply = await self.request(lambda rid: Manifest(rid, pin, data))
        if not isinstance(reply, StoreOk) or reply.have != len(data):
            raise PieceAnswerError("a malformed answer to a manifest")

    async def get_manifest(self, pin: CID) -> bytes:
        """The manifest of pin a holder keeps (unchecked here: edge/protect/manifest.py checks its signature)."""
        reply = await self.request(lambda rid: GetManifest(rid, pin))
        if not isinstance(reply, Manifest) or reply.cid != pin:
            raise PieceAnswerError("a malformed answer to get-manifest")
        return reply.data
