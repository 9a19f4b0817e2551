"""A holder's audit record: a beta reputation with forgetting (as Storj's audit score). Each audit multiplies
alpha and beta by the forgetting factor λ and adds 1 to alpha for a pass or to beta for a failure (a stall the
auditor gave up on after its retries counts as a failure). The score α/(α+β) weighs the last 1/(1−λ) audits
most, so an old failure is forgiven by steady passes and a good past does not shield a node that stops holding.

A node is proven once it has passed PROVEN audits: until then placement gives it a smaller share (placement.py).
Below DISQUALIFY its pieces count as unhealthy and are repaired elsewhere (repair.py). A single failed proof
already marks that piece unhealthy: the reputation is about the node, not the piece.
"""

from dataclasses import dataclass

FORGET = 0.95          # the last ~20 audits weigh most
PROVEN = 8             # passed audits before a node's share is no longer held back
DISQUALIFY = 0.6


@dataclass(frozen=True)
class Reputation:
    alpha: float = 1.0     # a new node starts with the benefit of one pass: neither trusted nor condemned
    beta: float = 0.0
    passed: int = 0
    failed: int = 0

    @property
    def score(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def proven(self) -> bool:
        return self.passed >= PROVEN

    @property
    def disqualified(self) -> bool:
        return self.score < DISQUALIFY

    def record(self, passed: bool, forget: float = FORGET) -> "Reputation":
        """The record after one more audit."""
        return Reputation(forget * self.alpha + (1.0 if passed else 0.0),
                          forget * self.beta + (0.0 if passed else 1.0),
                          self.passed + bool(passed), self.failed + (not passed))
