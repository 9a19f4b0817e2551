"""The transport server's answers about pieces of protected pins (docs/protocol.md, "Pieces of protected pins"):
the holder's side, answered from its PieceStore (edge/store/pieces.py).

What writes (a chunk of a piece, a lease, a manifest) or reads SQLite runs in the put workers, within MAX_PUTS,
and its reply comes back through the serving thread, as a Put's does. What only reads a piece file (GetPiece,
at most 1 MiB, paid from the upload limit like a block; an Audit, at most 4 blocks of 16 KiB) is answered by
the serving thread itself, as a Get is. Every failure is a typed reply.

An auditor's beacon: the holder keeps, per auditor (its key), the secret it revealed last and the commitment it
gave to its next one, for MAX_AUDITORS auditors; a new secret must open that commitment. A record unused for
EPOCH_STALE is forgotten (an auditor that restarted and lost its secrets is taken at its word again then).
"""

import logging

from edge.errors import DecodeError
from edge.identity import public_key_of, verify
from edge.protect import audit, merkle
from edge.store.pieces import PieceError, PieceFull, PieceNotFound, PieceTaken
from edge.wire import (Audit, AuditProof, Error, ErrorCode, GetManifest, GetPiece, LeaseOk, Manifest, Piece,
                       ReleasePiece, RenewLease, StoreOk, StorePiece, Transfer, TransferReceipt)
from edge.wire.messages import Moved
from edge.wire.messages import MAX_PIECE_CHUNK

log = logging.getLogger(__name__)
PIECE_REQUESTS = (StorePiece, GetPiece, Audit, Transfer, RenewLease, ReleasePiece, GetManifest, Manifest, Moved)
MAX_AUDITORS = 4096
AUDIT_COST = 16         # requests an Audit is charged (it reads up to 64 KiB and signs): a flood of them is paced
EPOCH_STALE = 86400.0   # seconds after which an auditor's last commitment no longer binds it
RECEIPT_DOMAIN = b"hearth-transfer-v1\0"
NO_SHARE = "this node lends no disk to neighbours (share = 0); ask another"


def receipt_message(root: bytes, pin, sender: str, receiver: str, owner: str) -> bytes:
    """What a TransferReceipt signs: the piece, its pin, who handed it, who took it and whose lease it is."""
    return b"\0".join((RECEIPT_DOMAIN + root, bytes(pin), sender.encode(), receiver.encode(), owner.encode()))


class AnsweringPieces:
    """The piece half of the transport server's answers (mixed into TransportServer with Answering): it supplies
    pieces (a PieceStore or None), _epochs (an OrderedDict), identity, policy, metrics, held, clock, _submit,
    _done and _wake."""

    def _piece(self, route: bytes, peer, msg):
        rid = msg.id
        if type(msg) is Moved:   # to the owner, who may lend no disk itself
            return self._moved(peer, msg)
        if self.pieces is None or self.pieces.share <= 0:
            return Error(rid, ErrorCode.REFUSED, NO_SHARE)
        kind = type(msg)
        if kind is GetPiece:
            return self._get_piece(route, peer, msg)
        if kind is Audit:
            return self._audit(peer, msg)
        return self._submit(rid, self._in_worker, route, peer.node, msg)

    # the serving thread -----------------------------------------------------------------------------------------

    def _get_piece(self, route: bytes, peer, msg: GetPiece):
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
        reply = Piece(msg.id, msg.root, msg.offset, total, data)
        wait = self.policy.upload.debit(len(data))
        if wait <= 0:
            return reply
        self.held.hold(self.clock() + wait, route, peer, reply)
        return None

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

