"""Where a segment's pieces go: n distinct nodes of n distinct operators (a node may declare an operator key;
nodes of one operator are one failure domain, a node without one is its own), chosen by score with
power-of-two choices: for each piece draw two eligible candidates at random and take the better. The random
pair spreads load (no node is everyone's first choice, Mitzenmacher's result), the comparison steers away from
full, flaky, far or dishonest nodes.

score = uptime × audit score × (free share ÷ share budget) × 1/(1 + RTT/50 ms), and × NEW_NODE for a node that
is not yet proven (reputation.py) while some candidate is: a new node takes a smaller share until it has passed
its audits; in a new neighbourhood nobody is proven and all are equal. A candidate whose free share is below the
piece size is never chosen (the holder would refuse it: FULL).
"""

from dataclasses import dataclass, field

from edge.errors import EdgeError
from edge.protect.reputation import Reputation

NEW_NODE = 0.25
RTT_SCALE = 0.050


class PlacementError(EdgeError):
    """Fewer eligible nodes of distinct operators than pieces to place."""


@dataclass(frozen=True)
class Candidate:
    node: str
    operator: str = ""           # "" = the node is its own operator
    share: int = 0               # bytes it lends to neighbours
    free: int = 0                # of which still free
    uptime: float = 1.0          # fraction of the recent past it was reachable
    rtt: float = 0.0             # seconds
    reputation: Reputation = field(default_factory=Reputation)

    @property
    def domain(self) -> str:
        return self.operator or self.node


def domains(candidates) -> int:
    """N for the k+m choice (manifest.defaults, parse_protect): the distinct operators among the eligible
    candidates, not their node ids. Placement puts at most one piece of a segment on each operator, so three
    boxes of one household count once: counted as three, auto would ask for more pieces than can be placed."""
    return len({c.domain for c in candidates})


def score(c: Candidate, anyone_proven: bool) -> float:
    if c.share <= 0 or c.free <= 0 or c.reputation.disqualified:
        return 0.0
    s = c.uptime * c.reputation.score * (c.free / c.share) / (1.0 + c.rtt / RTT_SCALE)
    if anyone_proven and not c.reputation.proven:
        s *= NEW_NODE
    return s


def choose(candidates, count: int, piece_size: int, rng, *, exclude_nodes=(), exclude_domains=()) -> list[str]:
    """`count` node ids for pieces of `piece_size` bytes, on distinct nodes and distinct operators, none of the
    excluded (the segment's other holders and their operators, the owner). PlacementError when too few."""
    used_nodes, used_domains = set(exclude_nodes), set(exclude_domains)
    pool = [c for c in candidates if c.free >= piece_size and c.node not in used_nodes
            and c.domain not in used_domains and not c.reputation.disqualified]
    anyone_proven = any(c.reputation.proven for c in candidates)
    chosen = []
    while len(chosen) < count:
        pool = [c for c in pool if c.node not in used_nodes and c.domain not in used_domains]
        if not pool:
            raise PlacementError(f"{count} pieces of {piece_size} bytes need {count} nodes of distinct operators "
                                 f"with that much free share; only {len(chosen)} were found")
        a, b = rng.choice(pool), rng.choice(pool)
        best = a if score(a, anyone_proven) >= score(b, anyone_proven) else b
        chosen.append(best.node)
        used_nodes.add(best.node)
        used_domains.add(best.domain)
    return chosen


def place_pin(candidates, piece_sizes, n: int, rng, *, owner: str = "") -> list[list[str]]:
    """Holders for every segment of a pin ([piece size per segment] → [[n node ids] per segment]), each node's
    free share reduced by what it is given as the pin is placed."""
    by_node = {c.node: c for c in candidates if c.node != owner}
    out = []
    for size in piece_sizes:
        chosen = choose(list(by_node.values()), n, size, rng)
        for node in chosen:
            c = by_node[node]
            by_node[node] = Candidate(c.node, c.operator, c.share, c.free - size, c.uptime, c.rtt, c.reputation)
        out.append(chosen)
    return out
