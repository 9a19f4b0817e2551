"""Repair planning, pure: which pieces are unhealthy, which segments need repair, who repairs, who gets the new
pieces and where each fetches from. The clock is injected (`now`, seconds); nothing here sleeps or sends.

A piece is healthy while its holder is online, or offline for at most `repair_after` (default 4 h: a box
rebooting or a night's power cut must not cost a repair), has not failed an audit of that piece, and is not
disqualified by its reputation. health = (healthy − k)/(n − k): 1 with every piece healthy, 0 with just k. Below
the threshold (0.75) every unhealthy piece of the segment gets a new holder, chosen by placement (distinct nodes
and operators from the segment's remaining holders); each new holder fetches k healthy pieces (sources online
now) and computes only its own piece (edge/store/stripe.py's rebuild_piece), so a repair moves k × the piece
size per new piece, and the new piece is byte-identical to the lost one (its root in the manifest is unchanged).

The repairer is the owner while it is reachable (offline for at most repair_after); otherwise the online holder of
the manifest (every holder has it) with the smallest H(root CID ‖ node id): all nodes agree without talking.
"""

import hashlib
from dataclasses import dataclass

from edge.protect.placement import PlacementError, choose

REPAIR_AFTER = 4 * 3600.0
THRESHOLD = 0.75


@dataclass(frozen=True)
class NodeState:
    online: bool
    last_seen: float            # when it was last reachable (now, while online)
    disqualified: bool = False


def piece_healthy(state: NodeState | None, now: float, repair_after: float = REPAIR_AFTER,
                  failed: bool = False) -> bool:
    if state is None or failed or state.disqualified:
        return False
    return state.online or now - state.last_seen <= repair_after


def health(healthy: int, k: int, n: int) -> float:
    """(healthy − k)/(n − k); with n == k (no parity) 1 when all are healthy, else below any threshold."""
    if n == k:
        return 1.0 if healthy >= n else float(healthy - k)
    return (healthy - k) / (n - k)


@dataclass(frozen=True)
class Repair:
    segment: int
    piece: int
    new_holder: str
    sources: tuple              # (piece number, holder) of the k pieces to fetch
    bytes: int                  # what the new holder fetches: k × piece size


@dataclass(frozen=True)
class Plan:
    repairs: tuple
    waiting: tuple              # segments below the threshold that cannot be repaired now (too few sources online
                                # or no eligible node); retried at the next pass
    health: tuple               # per segment


def plan(holders, k: int, piece_sizes, states: dict, candidates, rng, now: float, *,
         repair_after: float = REPAIR_AFTER, threshold: float = THRESHOLD, failed=frozenset(), owner: str = "",
         operator_of=None) -> Plan:
    """The repairs due now. holders: per segment, the n holders' node ids; piece_sizes: per segment; states:
    node id -> NodeState; candidates: placement.Candidate for the nodes that may receive pieces; failed: the
    (segment, piece) pairs whose last audit failed; operator_of(node) -> its operator key or ''."""
    operator_of = operator_of or (lambda node: "")
    n = len(holders[0]) if holders else k
    repairs, waiting, healths = [], [], []
    for s, seg in enumerate(holders):
        good = [p for p, node in enumerate(seg)
                if piece_healthy(states.get(node), now, repair_after, (s, p) in failed)]
        h = health(len(good), k, n)
        healths.append(h)
        if h >= threshold:
            continue
        sources = [(p, seg[p]) for p in good if states[seg[p]].online][:k]
        bad = [p for p in range(n) if p not in good]
        if len(sources) < k:
            waiting.append(s)
            continue
        keep = [seg[p] for p in good]
        domains = {operator_of(node) or node for node in keep}
        try:
            chosen = choose(candidates, len(bad), piece_sizes[s], rng, exclude_nodes=set(keep) | {owner},
                            exclude_domains=domains)
        except PlacementError:
            waiting.append(s)
            continue
        for p, node in zip(bad, chosen):
            repairs.append(Repair(s, p, node, tuple(sources), k * piece_sizes[s]))
    return Plan(tuple(repairs), tuple(waiting), tuple(healths))


def repairer(root: bytes, owner: str, holders, states: dict, now: float, repair_after: float = REPAIR_AFTER):
    """Who repairs: the owner while reachable, else the online holder with the smallest H(root ‖ node id);
    None when no holder is online."""
    if piece_healthy(states.get(owner), now, repair_after):
        return owner
    online = sorted({node for seg in holders for node in seg if states.get(node) and states[node].online})
    if not online:
        return None
    return min(online, key=lambda node: hashlib.sha256(bytes(root) + node.encode()).digest())
