"""The new holder's side of a repair (issue 16): it fetches k pieces itself and computes only its own.

The repairer (the owner, or the holder the manifest chain names when the owner is gone: edge/protection/repair.py
and custody.py) sends RepairPiece: the signed manifest the repair starts from, a signed repair order naming this
node for piece i of segment S (edge/protect/order.py) and the (node id, endpoint) of holders of S. This node
checks that the order is the sender's, names this node and that piece, and has not expired, and that the sender
is the manifest's owner, signer or a holder it names; that the piece fits its share; then fetches whole pieces
of S from the sources, presenting the order (a source that holds another piece of S itself would refuse a
co-holder without it), each checked against its root in the manifest, until k have verified; computes piece i
(edge/store/stripe.py rebuild_piece, off the Trio thread), checks it against its root, keeps it under the
sender's lease (as a StorePiece from the sender would) and answers Repaired: the bytes it fetched and its
signature over the receipt (edge/transport/pieces.py receipt_message). A repair thus costs k × the piece size of
the sources' uplinks (each paid from its upload limit, as any read) and nothing of the repairer's.

The serving thread hands the request over (RepairWork.order, never blocking); the work runs here, at most
MAX_REPAIRS at once (more: `busy`), and its answer goes back through the serving thread.
"""

import logging
import threading
import time

import trio

from edge.errors import DecodeError, EdgeError
from edge.protect import manifest as manifests
from edge.protect import merkle
from edge.protect import order as orders
from edge.service import Handle
from edge.store.pieces import LEASE_MAX, PieceError
from edge.store.stripe import rebuild_piece
from edge.transport.client import TransportError, open_client
from edge.transport.piececlient import PieceAnswerError
from edge.transport.pieces import receipt_message
from edge.wire import Error, ErrorCode
from edge.wire.messages import Repaired

log = logging.getLogger(__name__)
MAX_REPAIRS = 4          # repairs this node works on at once
FETCH_TIMEOUT = 30.0     # seconds one source may take per request


class RepairError(EdgeError):
    """A repair this node was asked for cannot be done (the message says why)."""


class RepairWork:
    """Repairs asked of this node: pieces (PieceStore), identity, cert (fleet), operator (declared in Hellos)."""

    def __init__(self, pieces, identity, cert: bytes | None = None, operator: str = ""):
        self.pieces, self.identity, self.cert, self.operator = pieces, identity, cert, operator
        self.stats = {"repairs": 0, "bytes_fetched": 0, "refused": 0}
        self._token = None
        self._nursery = None
        self._running = 0   # repairs taken: counted up on the serving thread, down on the Trio thread
        self._lock = threading.Lock()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        async with trio.open_nursery() as nursery:
            self._token, self._nursery = trio.lowlevel.current_trio_token(), nursery
            task_status.started(Handle("newholder", lambda: dict(self.stats, running=self._running)))
            await trio.sleep_forever()

    def order(self, sender: str, msg, reply):
        """From the serving thread: start the repair msg asks for; reply(answer) is called once it is done.
        Returns an Error at once when this node cannot take it now, else None."""
        if self._nursery is None:
            return Error(msg.id, ErrorCode.BUSY, "this node is starting; retry later")
        with self._lock:
            if self._running >= MAX_REPAIRS:
                return Error(msg.id, ErrorCode.BUSY, f"{MAX_REPAIRS} repairs run here already; ask another node")
            self._running += 1
        try:
            self._token.run_sync_soon(self._nursery.start_soon, self._work, sender, msg, reply)
        except trio.RunFinishedError:
            with self._lock:
                self._running -= 1
            return Error(msg.id, ErrorCode.BUSY, "this node is stopping")
        return None

    async def _work(self, sender: str, msg, reply) -> None:
        try:
            answer = await self.repair(sender, msg)
        except RepairError as exc:
            self.stats["refused"] += 1
            answer = Error(msg.id, ErrorCode.REFUSED, str(exc))
        except PieceError as exc:   # FULL and the like, from the piece store
            self.stats["refused"] += 1
            answer = Error(msg.id, ErrorCode.FULL if "does not fit" in str(exc) else ErrorCode.BAD_REQUEST, str(exc))
        except Exception:   # noqa: BLE001 - one repair's failure is its own
            log.exception("repairing a piece for %s failed", sender)
            answer = Error(msg.id, ErrorCode.INTERNAL, "this node failed to compute the piece; ask another")
        finally:
            with self._lock:
                self._running -= 1
        reply(answer)

    async def repair(self, sender: str, msg) -> Repaired:
        """msg (RepairPiece) from sender, checked, fetched, computed, kept: the Repaired answer."""
        me = self.identity.node_id
        try:
            order = orders.parse(msg.order)
            man = await trio.to_thread.run_sync(manifests.parse, msg.data)
        except (DecodeError, EdgeError, ValueError) as exc:
            raise RepairError(f"the repair order or manifest is not usable: {exc}") from None
        s, i = msg.segment, msg.index
        if order.signer != sender or order.holder != me or (order.segment, order.piece) != (s, i) or \
                str(order.pin) != str(msg.manifest) or str(man.root) != str(msg.manifest):
            raise RepairError("the repair order is not yours, or is for another piece")
        if order.expires <= time.time():
            raise RepairError("the repair order has expired")
        if sender not in {man.owner, man.signer, *man.holders}:
            raise RepairError("only the pin's owner or a holder its manifest names orders repairs")
        if s >= len(man.segments) or i >= man.n:
            raise RepairError(f"the manifest has no piece {i} of segment {s}")
        seg, size = man.segments[s], man.piece_size(s)
        root = seg.roots[i]
        fetched = 0
        if self.pieces.held(root) is None:
            if self.pieces.used() + size > self.pieces.share:
                raise PieceError(f"a piece of {size} bytes does not fit in this node's share")
            got, fetched = await self._fetch(man, s, i, msg)
            piece = await trio.to_thread.run_sync(rebuild_piece, got, man.k, man.m, seg.length, i)
            if (await trio.to_thread.run_sync(merkle.build, piece)).root != root:
                raise RepairError(f"piece {i} of segment {s} computed here does not match its root")
            await trio.to_thread.run_sync(self.pieces.receive, sender, sender, man.root, s, i, root, size,
                                          int(time.time() + LEASE_MAX), 0, piece)
            self.stats["repairs"] += 1
            self.stats["bytes_fetched"] += fetched
        sig = self.identity.sign(receipt_message(root, man.root, sender, me, sender))
        return Repaired(msg.id, root, fetched, sig)

    async def _fetch(self, man, s: int, i: int, msg) -> tuple[dict, int]:
        """k verified pieces of segment s other than i, from the sources msg names (only holders of s the
        manifest names are asked); (pieces by number, bytes fetched)."""
        seg, size = man.segments[s], man.piece_size(s)
        number = {man.holder_of(s, q): q for q in range(man.n) if q != i}
        got: dict[int, bytes] = {}
        fetched = 0
        for node, endpoint in msg.sources:
            q = number.get(node)
            if len(got) >= man.k:
                break
            if q is None or q in got:
                continue
            try:
                async with open_client(self.identity, endpoint, node, cert=self.cert, timeout=FETCH_TIMEOUT,
                                       operator=self.operator) as client:
                    got[q] = await client.get_piece(seg.roots[q], size, order=msg.order)
                fetched += size
            except (TransportError, PieceAnswerError, EdgeError) as exc:
                log.info("repair source %s gave no piece %d of segment %d: %s", node, q, s, exc)
        if len(got) < man.k:
            raise RepairError(f"only {len(got)} of the {man.k} pieces needed could be fetched from the sources")
        return got, fetched


async def start_new_holder(start, agent, config, transport) -> None:
    """The agent's wiring: repairs asked of this node (RepairPiece) are computed here."""
    if agent.pieces is None:
        return
    work = RepairWork(agent.pieces, agent.identity, agent.cert, config.operator)
    await start("newholder", work.serve)
    transport.server.repairing = work.order

