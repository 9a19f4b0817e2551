"""A graceful exit (`hearth leave`, issue 16): every piece this node holds for its neighbours goes to a new holder
before the box is unplugged, so no owner pays for a repair.

For each piece held: its pin's manifest (kept here beside the piece) names the segment's other holders; a new
holder is chosen by placement among the neighbours whose Welcome lists "pieces", away from those holders, their
operators and the owner. The piece is read back, checked against its root, and handed over with Transfer (the
owner's lease goes with it); the new holder verifies it against its root and signs a TransferReceipt. Then the
owner is told with Moved (the receipt is its proof), and it publishes the next manifest version
(edge/protection/repair.py); an owner away now hears nothing, and its repair rebuilds the piece elsewhere once
this node has been away longer than repair_after. Only after a piece is handed over is the copy here released.
A leave killed half-way leaves the rest here, unmoved; the owners' repair finishes the job.
"""

import contextlib
import logging
import random
import time

import trio

from edge.errors import DecodeError, EdgeError
from edge.ipld.cid import parse_cid
from edge.protect import manifest as manifests
from edge.protect import merkle
from edge.protect.placement import PlacementError, choose
from edge.protection.owner import HELLO_TIMEOUT, _candidate, eligible
from edge.transport.client import TransportError, open_client
from edge.transport.piececlient import PieceAnswerError

log = logging.getLogger(__name__)
TRIES = 3   # new holders tried for one piece before it is left for the owner's repair


async def leave(pieces, identity, peers, cert: bytes | None = None, rng=None, upload: int = 0) -> dict:
    """Hand every piece in pieces (a PieceStore) to a new holder and tell its owner; a summary, with "safe" true
    when nothing is left here. upload: bytes per second the hand-overs may take (0: no limit)."""
    rng = rng or random.SystemRandom()
    t0 = time.monotonic()
    held = await trio.to_thread.run_sync(pieces.pieces)
    stats = {"pieces": len(held), "moved": 0, "bytes": 0, "owners_told": 0, "owners_away": 0, "left": 0,
             "to": []}
    async with contextlib.AsyncExitStack() as stack:
        clients = await eligible(identity, peers, cert, stack)
        candidates = {node: _candidate(peers.peers.get(node), c) for node, c in clients.items()}
        manifests_here: dict[str, manifests.Manifest | None] = {}
        for h in held:
            if h.pin not in manifests_here:
                manifests_here[h.pin] = await trio.to_thread.run_sync(_manifest, pieces, h.pin)
            man = manifests_here[h.pin]
            taken = {identity.node_id, h.owner}
            if man is not None and h.segment < len(man.segments):
                taken |= {man.holder_of(h.segment, p) for p in range(man.n)}
            to, sig = await _hand_over(pieces, h, clients, candidates, taken, rng)
            if to is None:
                stats["left"] += 1
                continue
            stats["moved"] += 1
            stats["bytes"] += h.size
            stats["to"].append(to)
            if await _tell_owner(identity, peers, cert, h, to, sig):
                stats["owners_told"] += 1
            else:
                stats["owners_away"] += 1
            await trio.to_thread.run_sync(pieces.release, h.owner, [h.root])
            if upload > 0:   # paced by the upload limit
                await trio.sleep(h.size / upload)
    stats["to"] = sorted(set(stats["to"]))
    stats["safe"] = stats["left"] == 0
    stats["seconds"] = round(time.monotonic() - t0, 3)
    return stats


def _manifest(pieces, pin: str):
    """The pin's manifest kept here (blocking: reads a file), or None when absent or not valid."""
    try:
        raw = pieces.manifest(parse_cid(pin))
        return manifests.parse(raw) if raw else None
    except (DecodeError, EdgeError, ValueError) as exc:
        log.info("no usable manifest of %s here: %s", pin, exc)
        return None


async def _hand_over(pieces, h, clients, candidates, taken: set, rng) -> tuple[str | None, bytes]:
    """(new holder, its receipt signature) of piece h, or (None, b"") when no neighbour took it."""
    data, total = await trio.to_thread.run_sync(pieces.read, h.root, 0, h.size)
    if total != h.size or await trio.to_thread.run_sync(lambda: merkle.build(data).root) != h.root:
        log.error("piece %s here is damaged; left for its owner's repair", h.root.hex()[:16])
        return None, b""
    domains = {candidates[n].domain for n in taken if n in candidates}
    refused: set[str] = set()
    for _ in range(TRIES):
        pool = [c for node, c in candidates.items() if node not in taken | refused]
        try:
            [to] = choose(pool, 1, h.size, rng, exclude_domains=domains)
        except PlacementError:
            break
        try:
            sig = await clients[to].store_piece(parse_cid(h.pin), h.segment, h.index, data, int(h.lease),
                                                root=h.root, owner=h.owner)
            return to, sig
        except (TransportError, PieceAnswerError, EdgeError) as exc:
            log.info("neighbour %s did not take piece %s: %s", to, h.root.hex()[:16], exc)
            refused.add(to)
    return None, b""


async def _tell_owner(identity, peers, cert, h, to: str, sig: bytes) -> bool:
    peer = peers.peers.get(h.owner)
    if peer is None:
        return False
    try:
        async with open_client(identity, peer.endpoint(), h.owner, cert=cert, timeout=HELLO_TIMEOUT) as client:
            await client.moved(parse_cid(h.pin), h.segment, h.index, h.root, to, sig)
        return True
    except (TransportError, PieceAnswerError, EdgeError) as exc:
        log.info("owner %s did not hear that piece %s moved (its repair will notice): %s", h.owner,
                 h.root.hex()[:16], exc)
        return False


def control_handlers(agent, config) -> dict:
    """The control socket's `leave` (`hearth leave`): this node's pieces handed over, paced by its upload limit."""
    async def leave_now(request):
        return await leave(agent.pieces, agent.identity, agent.peers, agent.cert, upload=config.upload_limit)
    return {"leave": leave_now}
