"""The transport server's answers about pieces of protected pins (docs/protocol.md, "Pieces of protected pins"):
the holder's side, answered from its PieceStore (edge/store/pieces.py).

What writes (a chunk of a piece, a lease, a manifest) or reads SQLite runs in the put workers, within MAX_PUTS,
and its reply comes back through the serving thread, as a Put's does. What only reads a piece file (GetPiece,
at most 1 MiB, paid from the upload limit like a block; an Audit, at most 4 blocks of 16 KiB) is answered by
the serving thread itself, as a Get is. Every failure is a typed reply.

Every read served (whole or narrow, by anyone) is remembered (ReadMemory): which 16 KiB blocks it covered, as a
bit per block in the time bucket (BUCKET seconds of the serving clock) it was served in, over the last BUCKETS
buckets (HORIZON). Reads only add bits: no number of reads within the horizon erases another's, and a piece read
within the horizon is never forgotten; past MAX_READ_PIECES such pieces a read of another piece is refused (BUSY)
until one falls out of the horizon. The pin's owner or custodian asks (ReadQuery) after every few proofs of a holder
whether reads served between a challenge and its answer (the window widened to bucket edges) together covered
every block asked about, which a holder answering from its siblings' blocks must read
(edge/protection/siblings.py). A query reaching past the horizon is refused: not known, rather than not seen.

Sibling reads (docs/protection.md, "A holder that rebuilds answers from sibling pieces"): a GetPiece from a node
that holds (or held) another piece of the same segment, by node id or by the operator its Hello declared, is served
only with a valid repair order naming it (edge/protect/order.py), or as one whole read of the piece from its first
byte, in order, once a day per (requester's operator or node, piece); else it is refused with `sibling`.

An auditor's beacon: the holder keeps, per auditor (its key), the secret it revealed last and the commitment it
gave to its next one, for MAX_AUDITORS auditors; a new secret must open that commitment. A record unused for
EPOCH_STALE is forgotten (an auditor that restarted and lost its secrets is taken at its word again then).
"""

import collections
import logging
import time

from edge.errors import DecodeError
from edge.identity import public_key_of, verify
from edge.protect import audit, merkle
from edge.store.pieces import PieceError, PieceFull, PieceNotFound, PieceTaken
from edge.wire import (Audit, AuditProof, Error, ErrorCode, GetManifest, GetPiece, LeaseOk, Manifest, Piece,
                       ReleasePiece, RenewLease, StoreOk, StorePiece, Transfer, TransferReceipt)
from edge.wire.messages import Moved
from edge.wire.messages import MAX_PIECE_CHUNK, ReadQuery, ReadSeen, RepairPiece
from edge.protect import order as orders

log = logging.getLogger(__name__)
PIECE_REQUESTS = (StorePiece, GetPiece, Audit, Transfer, RenewLease, ReleasePiece, GetManifest, Manifest, Moved,
                  RepairPiece, ReadQuery)
MAX_AUDITORS = 4096
AUDIT_COST = 16         # requests an Audit is charged (it reads up to 64 KiB and signs): a flood of them is paced
EPOCH_STALE = 86400.0   # seconds after which an auditor's last commitment no longer binds it
RECEIPT_DOMAIN = b"hearth-transfer-v1\0"
NO_SHARE = "this node lends no disk to neighbours (share = 0); ask another"
WHOLE_EVERY = 86400.0   # seconds: a co-holder may read a piece whole once in this time without a repair order
WHOLE_IDLE = 600.0      # seconds a whole read may pause between chunks and go on
MAX_WHOLE = 4096        # whole reads remembered (the oldest forgotten first)
MAX_OPERATORS = 4096    # node -> operator declared in its Hello, remembered
MAX_READ_PIECES = 256   # pieces read within the horizon that are remembered (8 MiB at most, below) ...
BUCKET = 0.005          # ... seconds a time bucket spans: a query's window widens to bucket edges, by 2 x this at most
BUCKETS = 1024          # ... buckets remembered: the horizon
HORIZON = BUCKET * BUCKETS   # 5.12 s: the owner asks after every few proofs of a holder (owner.py), within it


class ReadMarks:
    """Which 16 KiB blocks of one piece the reads served touched, per time bucket: a ring of BUCKETS slots, each
    the bucket's number and a bitmap of blocks (a Python int), reused when the clock comes round to it. A read only
    sets bits in its bucket, so reads can never push another out; at most BUCKETS x blocks / 8 bytes a piece (32 KiB
    for a 4 MiB piece's 256 blocks), plus the lists' and ints' own overhead (16 KiB)."""

    __slots__ = ("stamps", "bits", "latest")

    def __init__(self):
        self.stamps, self.bits, self.latest = [-1] * BUCKETS, [0] * BUCKETS, -1

    def add(self, when: float, first: int, last: int) -> None:
        n = int(when // BUCKET)
        i = n % BUCKETS
        if self.stamps[i] != n:   # the slot held a bucket one horizon or more ago: its reads are past the horizon
            self.stamps[i], self.bits[i] = n, 0
        self.bits[i] |= ((1 << (last - first + 1)) - 1) << first
        self.latest = max(self.latest, n)

    def active(self, now: float) -> bool:
        """Whether a read was served within the horizon (then the piece must not be forgotten)."""
        return self.latest > int(now // BUCKET) - BUCKETS

    def covered(self, blocks, since: float, until: float) -> bool:
        """Whether reads served in the buckets overlapping [since, until] together covered every one of blocks
        (ReadMemory.covered checks the horizon first)."""
        lo, hi = int(since // BUCKET), int(until // BUCKET)
        seen, stamps, bits = 0, self.stamps, self.bits
        for n in range(max(lo, hi - BUCKETS + 1), hi + 1):   # at most BUCKETS slots, however wide the window
            if stamps[n % BUCKETS] == n:
                seen |= bits[n % BUCKETS]
        return all(seen >> b & 1 for b in blocks)


class ReadMemory:
    """The ReadMarks of up to MAX_READ_PIECES pieces, least recently read first. Only a piece not read within the
    horizon is forgotten; a read of a new piece while MAX_READ_PIECES others were read within it is refused
    (admit is False: BUSY), so a flood of reads of other pieces cannot erase what was read. An honest reader pays
    nothing unless this node served reads of more than MAX_READ_PIECES distinct pieces within one horizon (for
    pieces of 1.5-4 MiB, 75-200 MB/s of upload for 5 s, beyond a home link): then it retries a little later.
    Memory: MAX_READ_PIECES x BUCKETS x blocks / 8, 8 MiB for 256 pieces of 4 MiB (12 MiB with the overhead)."""

    def __init__(self):
        self.pieces: collections.OrderedDict = collections.OrderedDict()

    def admit(self, root: bytes, now: float) -> bool:
        """Whether a read of root may be served and remembered now."""
        pieces = self.pieces
        if root in pieces or len(pieces) < MAX_READ_PIECES:
            return True
        while pieces and not next(iter(pieces.values())).active(now):   # the least recently read first
            pieces.popitem(last=False)
        return len(pieces) < MAX_READ_PIECES

    def add(self, root: bytes, now: float, first: int, last: int) -> None:
        marks = self.pieces.get(root)
        if marks is None:
            marks = self.pieces[root] = ReadMarks()
        marks.add(now, first, last)
        self.pieces.move_to_end(root)

    def covered(self, root: bytes, blocks, since: float, until: float, now: float) -> bool | None:
        """Whether reads of root served in [since, until] (widened to bucket edges) covered every one of blocks;
        None (not known) when since is past the horizon."""
        if int(since // BUCKET) <= int(now // BUCKET) - BUCKETS:
            return None
        marks = self.pieces.get(root)
        return marks is not None and marks.covered(blocks, since, until)


def receipt_message(root: bytes, pin, sender: str, receiver: str, owner: str) -> bytes:
    """What a TransferReceipt signs: the piece, its pin, who handed it, who took it and whose lease it is."""
    return b"\0".join((RECEIPT_DOMAIN + root, bytes(pin), sender.encode(), receiver.encode(), owner.encode()))


class AnsweringPieces:
    """The piece half of the transport server's answers (mixed into TransportServer with Answering): it supplies
    pieces (a PieceStore or None), _epochs, _operators, _whole (OrderedDicts), _reads (a ReadMemory), identity, policy,
    metrics, held, clock, _submit, _done, _late, _wake and repairing."""

    def _piece(self, route: bytes, peer, msg):
        rid = msg.id
        if type(msg) is Moved:   # to the owner, who may lend no disk itself
            return self._moved(peer, msg)
        if self.pieces is None or self.pieces.share <= 0:
            return Error(rid, ErrorCode.REFUSED, NO_SHARE)
        kind = type(msg)
        if kind is GetPiece:
            refused = self._sibling(peer, msg)
            return refused if refused is not None else self._get_piece(route, peer, msg)
        if kind is RepairPiece:
            return self._repair(route, peer, msg)
        if kind is ReadQuery:
            return self._read_query(peer, msg)
        if kind is Audit:
            return self._audit(peer, msg)
        return self._submit(rid, self._in_worker, route, peer.node, msg)

    # the serving thread -----------------------------------------------------------------------------------------

    def _get_piece(self, route: bytes, peer, msg: GetPiece):
        if not self._reads.admit(msg.root, self.clock()):
            self.metrics.inc("busy")
            return Error(msg.id, ErrorCode.BUSY, "this node remembers the reads of as many pieces as it may now; "
                                                 "retry in a few seconds")
        if self.held.queue and self.held.full(peer, msg.length):
            self.metrics.inc("busy")
            return Error(msg.id, ErrorCode.BUSY, "this node's upload limit is spent; retry later")
        try:
            data, total = self.pieces.read(msg.root, msg.offset, min(msg.length, MAX_PIECE_CHUNK))
        except (PieceNotFound, FileNotFoundError):   # a piece released while being read is gone too
            self.metrics.inc("not_found")
            return Error(msg.id, ErrorCode.NOT_FOUND, f"this node holds no piece {msg.root.hex()[:16]}")
        except PieceError as exc:
            return Error(msg.id, ErrorCode.BAD_REQUEST, str(exc))
        self.metrics.inc("pieces_served")
        self.metrics.inc("bytes_served", len(data))
        self._remember(msg.root, msg.offset, len(data))
        reply = Piece(msg.id, msg.root, msg.offset, total, data)
        wait = peer.upload.debit_within(len(data))   # the lane of the peer's link class, as a block pays
        if wait is None:   # its lane is as far ahead as it may be: held unpaid until it is not (server.py)
            self.held.hold(self.clock() + peer.upload.behind(), route, peer, reply, paid=False)
            return None
        if wait <= 0:
            return reply
        self.held.hold(self.clock() + wait, route, peer, reply)
        return None

    def _note_operator(self, node: str, operator: str) -> None:
        known = self._operators
        known[node] = operator
        known.move_to_end(node)
        while len(known) > MAX_OPERATORS:
            known.popitem(last=False)

    def _sibling(self, peer, msg: GetPiece):
        """None when msg may be served to peer; an Error (`sibling`) when peer holds another piece of that segment
        (by node id, or by the operator it declared) and has neither a valid repair order naming it nor a whole
        read of the piece left today."""
        held = self.pieces.held(msg.root)
        if held is None:
            return None   # not found: _get_piece says so
        signers, segments = self.pieces.family(held.pin)
        others = segments.get(held.segment, frozenset()) - {self.identity.node_id}
        operators = self._operators
        domain = peer.operator or peer.node
        if peer.node not in others and not (peer.operator and any(operators.get(n) == peer.operator for n in others)):
            return None
        now = self.clock()
        if msg.order:
            try:
                order = orders.parse(msg.order)
                why = orders.check(order, held.pin, held.segment, peer.node, signers, time.time())
                if not why and peer.operator and operators.get(order.signer) == peer.operator:
                    why = "the repair order is signed by a node of your own operator"
            except DecodeError as exc:
                why = str(exc)
            if not why:
                self.metrics.inc("sibling_ordered")
                return None
            return self._refuse_sibling(msg, why)
        whole = self._whole
        key = (domain, msg.root)
        read = whole.get(key)   # [when it began, the next offset, the last chunk's time]
        length = min(msg.length, MAX_PIECE_CHUNK, held.size - msg.offset)
        if msg.offset == 0 and (read is None or now - read[0] >= WHOLE_EVERY):
            whole[key] = [now, length, now]
        elif read is not None and msg.offset == read[1] and 0 < read[1] < held.size and now - read[2] <= WHOLE_IDLE:
            read[1], read[2] = read[1] + length, now
        else:
            return self._refuse_sibling(msg, "you hold a piece of this segment: read it with a repair order, or "
                                             "read this piece whole, in order, once a day")
        whole.move_to_end(key)
        while len(whole) > MAX_WHOLE:
            whole.popitem(last=False)
        if msg.offset == 0:
            self.metrics.inc("sibling_whole_reads")
        return None

    def _remember(self, root: bytes, offset: int, length: int) -> None:
        """Remember a read served of piece root: when, and the blocks it covered (whoever read, however)."""
        self._reads.add(root, self.clock(), offset // merkle.SUBTREE, (offset + max(length, 1) - 1) // merkle.SUBTREE)

    def _read_query(self, peer, msg: ReadQuery):
        """Whether the reads served of each piece in its window together covered every block asked; asked only
        by a node that may order repairs of the pin (its owner or a custodian), about pieces held here."""
        now = self.clock()
        seen = []
        for root, blocks, (since, until) in zip(msg.roots, msg.blocks, msg.windows):
            since, until = now - since / 1000, now - until / 1000
            held = self.pieces.held(root)
            if held is None:
                seen.append(False)
                continue
            if peer.node not in self.pieces.family(held.pin)[0]:
                return Error(msg.id, ErrorCode.REFUSED, "only the pin's owner or a custodian asks who read its pieces")
            hit = self._reads.covered(root, blocks, since, until, now)
            if hit is None:
                return Error(msg.id, ErrorCode.REFUSED, f"this node remembers reads for {HORIZON:.1f} s only; "
                                                        "whether these were read is not known")
            seen.append(hit)
        return ReadSeen(msg.id, tuple(seen))

    def _refuse_sibling(self, msg: GetPiece, why: str):
        self.metrics.inc("sibling_refused")
        return Error(msg.id, ErrorCode.SIBLING, why)

    def _repair(self, route: bytes, peer, msg: RepairPiece):
        """The repairer asks this node to compute a piece itself (edge/protection/newholder.py): handed to the
        agent's side, whose answer comes back through the serving thread."""
        if self.repairing is None:
            return Error(msg.id, ErrorCode.REFUSED, "this node computes no repaired pieces; push the piece")

        def reply(answer) -> None:   # from the agent's Trio thread
            self._late.append((route, answer))
            self._wake()
        return self.repairing(peer.node, msg, reply)

    def _audit(self, peer, msg: Audit):
        auditor = peer.key   # the CURVE key the connection proved; the challenge names the Ed25519 key
        beacon = self._beacon(auditor, msg)
        if isinstance(beacon, Error):
            return beacon
        try:
            proof = self.pieces.audit(self.identity, msg.root, msg.nonce, beacon, public_key_of(peer.node))
        except (PieceNotFound, FileNotFoundError):
            self.metrics.inc("not_found")
            return Error(msg.id, ErrorCode.NOT_FOUND, f"this node holds no piece {msg.root.hex()[:16]}")
        except merkle.ProofError as exc:   # the copy is damaged: say it is lost rather than send a failing proof
            log.error("piece %s is damaged: %s", msg.root.hex()[:16], exc)
            self.metrics.inc("audits_failed")
            return Error(msg.id, ErrorCode.NOT_FOUND, "this node's copy of the piece is damaged")
        self.metrics.inc("audits_answered")
        return AuditProof(msg.id, audit.serialize_proof(proof))

    def _moved(self, peer, msg: Moved):
        """A leaving holder's word that one of this node's pieces moved: checked against the new holder's receipt
        here, then handed to the owner's side (edge/protection/repair.py Repairs.moved, thread-safe), which checks
        it against the manifest and publishes the next version."""
        if self.moved is None:
            return Error(msg.id, ErrorCode.REFUSED, "this node keeps no protected pins; a piece moved is news to "
                                                    "its owner only")
        if not verify(msg.to, receipt_message(msg.root, msg.manifest, peer.node, msg.to, self.identity.node_id),
                      msg.sig):
            return Error(msg.id, ErrorCode.BAD_REQUEST, "the new holder's transfer receipt does not verify")
        self.moved(peer.node, msg)
        return StoreOk(msg.id, 0)

    def _beacon(self, auditor: bytes, msg: Audit):
        """The beacon of msg's revealed secret, checked against the auditor's earlier commitment; or an Error."""
        epochs = self._epochs
        last, now = epochs.get(auditor), self.clock()
        if last is not None and now - last[2] > EPOCH_STALE:
            last = None
        if last is not None and msg.secret != last[0] and audit.commitment(msg.secret) != last[1]:
            return Error(msg.id, ErrorCode.REFUSED, "the revealed beacon secret does not open the commitment you "
                                                    "gave before; this challenge is refused")
        try:
            beacon = audit.open_beacon(msg.secret, audit.commitment(msg.secret))
        except DecodeError as exc:
            return Error(msg.id, ErrorCode.BAD_REQUEST, str(exc))
        if last is None or msg.secret != last[0]:   # a new epoch: remember its secret and the next commitment
            epochs[auditor] = (msg.secret, msg.commit, now)
        else:
            epochs[auditor] = (*last[:2], now)
        epochs.move_to_end(auditor)
        while len(epochs) > MAX_AUDITORS:
            epochs.popitem(last=False)
        return beacon

    # the put workers ------------------------------------------------------------------------------------------------

    def _in_worker(self, route: bytes, sender: str, msg) -> None:
        """In a put worker: the piece store's part of a request, then its reply handed to the serving thread."""
        try:
            reply = self._write(sender, msg)
        except PieceFull as exc:
            self.metrics.inc("pieces_full")
            reply = Error(msg.id, ErrorCode.FULL, str(exc))
        except PieceNotFound as exc:
            reply = Error(msg.id, ErrorCode.NOT_FOUND, str(exc))
        except PieceTaken as exc:
            reply = Error(msg.id, ErrorCode.REFUSED, str(exc))
        except PieceError as exc:
            reply = Error(msg.id, ErrorCode.BAD_REQUEST, str(exc))
        except BaseException:
            log.exception("answering %s failed", type(msg).__name__)
            reply = Error(msg.id, ErrorCode.INTERNAL, "this node failed to answer; try another")
        self._done.append((route, reply))   # the serving thread sends it and counts the work as done
        self._wake()

    def _write(self, sender: str, msg):
        store, kind = self.pieces, type(msg)
        if kind in (StorePiece, Transfer):
            owner = msg.owner if kind is Transfer else sender
            have = store.receive(sender, owner, msg.manifest, msg.segment, msg.index, msg.root, msg.size, msg.lease,
                                 msg.offset, msg.data)
            if have < msg.size:
                return StoreOk(msg.id, have)
            self.metrics.inc("pieces_stored")
            if kind is StorePiece:
                return StoreOk(msg.id, have)
            me = self.identity.node_id
            return TransferReceipt(msg.id, msg.root, self.identity.sign(
                receipt_message(msg.root, msg.manifest, sender, me, owner)))
        if kind is RenewLease:
            return LeaseOk(msg.id, tuple(store.renew(sender, msg.roots, msg.lease)))
        if kind is ReleasePiece:
            return LeaseOk(msg.id, tuple(store.release(sender, msg.roots)))
        if kind is Manifest:
            store.keep_manifest(sender, msg.cid, msg.data)
            return StoreOk(msg.id, len(msg.data))
        data = store.manifest(msg.cid)   # GetManifest
        if data is None:
            return Error(msg.id, ErrorCode.NOT_FOUND, f"this node keeps no manifest of {msg.cid}")
        return Manifest(msg.id, msg.cid, data)

