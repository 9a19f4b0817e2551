"""The auditor's check that a proof was not rebuilt from sibling pieces during the challenge (issue 16).

A holder that deleted its piece can answer an audit by reading the challenged 16 KiB blocks of k sibling pieces
and decoding (docs/protection.md, "A holder that rebuilds answers from sibling pieces"). The challenged leaves
are secret until the challenge, so the reads it rebuilds from fall between the challenge and the answer, and for
every challenged block it needs that block of k siblings, however it reads them (narrowly, or each piece whole
from its first byte). Holders remember every read they serve (edge/transport/pieces.py), within a horizon of a few
seconds, so after every few proofs of a holder (owner.py PROOFS_EACH) the auditor (the owner) asks every other
holder of each audited segment, one ReadQuery per holder and one item per challenged block, whether the reads it
served between that challenge and its answer covered the block.

A proof is suspect when every challenged block was so read from at least k siblings (fewer if the holder itself
holds other pieces of the segment): what the cheat must do. k, not 1: a sibling that lies in ReadSeen could as
well hand the cheat its blocks outside the protocol, so asking fewer buys nothing against collusion, while every
sibling more an honest coincidence must hit makes it rarer. An honest reader that happens to read k pieces past
those blocks within the holder's window (milliseconds to a second) looks the same, so a suspect proof is not
failed at once: the holder is audited again at once with a fresh challenge, its siblings asked again, up to
RECHECKS times, and only a proof suspect every time fails (a cheat must read again every time; an honest holder
needs the coincidence RECHECKS + 1 times in a row: docs/protection.md gives the model).

A holder that did not answer its own audit this round is away and not asked; one that does not answer the query,
or refuses it as reaching past what it remembers, is skipped: its silence fails nobody.
"""

import logging
import math
import time

import trio

from edge.errors import EdgeError
from edge.transport.client import TransportError, open_client
from edge.transport.piececlient import PieceAnswerError
from edge.wire.messages import MAX_SEEN_WINDOW

log = logging.getLogger(__name__)
TIMEOUT = 5.0   # seconds a sibling may take to answer
RECHECKS = 2    # fresh audits of a suspect proof before it fails: a busy file's honest coincidence (a few % of
                # audits with 5 ms read buckets) must then recur three times in a row, a cheat's every time


async def sibling_reads(protector, man, results: dict, proven) -> int:
    """Check every proof of proven ((holder, segment, piece, challenged blocks, when it was asked, when it answered:
    time.monotonic)); each suspect one is audited again at once (protector.reprove) and failed, in results (node ->
    its audit result, owner.py), when every answer is suspect too or one fails. The proofs failed."""
    failed = 0
    for node, s, p, *_ in await _suspects(protector, man, results, proven):
        r = results[node]
        cleared = False
        for _ in range(RECHECKS):
            r["rechecked"] += 1
            passed, why, again = await protector.reprove(man, node, s, p)
            if not passed:
                break
            if not await _suspects(protector, man, results, [again]):
                cleared = True
                break
        if cleared:
            continue
        failed += 1
        r["passed"] -= 1
        r["failed"] += 1
        r["bad"].append((s, p))
        r["why"] = why or (f"the challenged blocks of piece {p} of segment {s} were read from k of its siblings "
                           f"during the audit, {RECHECKS + 1} times in a row: the proof was rebuilt, not held")
    return failed


async def _suspects(protector, man, results: dict, proven) -> list:
    """The proofs of proven whose every challenged block k siblings (less those the holder holds) saw read."""
    asks: dict[str, list] = {}
    need = {}
    for i, proof in enumerate(proven):
        node, s, p, blocks, asked, answered = proof
        own = sum(1 for q in range(man.n) if q != p and man.holder_of(s, q) == node)
        need[i] = max(1, man.k - own)
        for q in range(man.n):
            sibling = man.holder_of(s, q)
            if q != p and sibling != node and results.get(sibling, {}).get("reached", True):   # away: not asked
                for b in blocks:
                    asks.setdefault(sibling, []).append((man.segments[s].roots[q], (b,), (asked, answered),
                                                         (i, b)))
    seen: dict[tuple, int] = {}

    async def ask(sibling, items):
        peer = protector.peers.peers.get(sibling)
        if peer is None:
            return
        try:
            opened = time.monotonic()
            async with open_client(protector.identity, peer.endpoint(), sibling, cert=protector.cert,
                                   timeout=TIMEOUT) as client:
                # each window in milliseconds ago, as the sibling counts them when the query reaches it, later
                # than now: each window opens earlier by the handshake's time (two round trips); a sibling that
                # took longer to answer than that may have counted from later still, so what it did not see is
                # asked once more, opening earlier by the time it took
                slack, todo = time.monotonic() - opened, items
                for _ in range(2):
                    now = time.monotonic()
                    hits = await client.read_query([(root, blocks, (min(MAX_SEEN_WINDOW,
                                                                        math.ceil((now - a + slack) * 1000)),
                                                                    min(MAX_SEEN_WINDOW, int((now - b) * 1000))))
                                                    for root, blocks, (a, b), _ in todo])
                    took = time.monotonic() - now
                    for hit, (_, _, _, key) in zip(hits, todo):
                        if hit:
                            seen[key] = seen.get(key, 0) + 1
                    todo = [item for hit, item in zip(hits, todo) if not hit]
                    if not todo or took <= slack:
                        break
                    slack = took
        except (TransportError, PieceAnswerError, EdgeError) as exc:
            log.info("could not ask %s who read its pieces: %s", sibling, exc)
    async with trio.open_nursery() as nursery:
        for sibling, items in asks.items():
            nursery.start_soon(ask, sibling, items)
    return [proof for i, proof in enumerate(proven) if all(seen.get((i, b), 0) >= need[i] for b in proof[3])]
