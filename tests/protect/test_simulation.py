"""Issue 16's simulation, one year in one process with the real placement, repair, audit, manifest and erasure
code (benchmarks/protect_sim.py): no segment lost, repair traffic within 30% of the model, no operator holding two
pieces of a segment, the cheater caught, the repairer taking over from a departed owner."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
import protect_sim  # noqa: E402


def test_a_year_of_churn():
    r = protect_sim.simulate(days=365, segments_n=30, seed=16)
    print("\n" + protect_sim.report(r))
    assert (r.k, r.m) == (8, 6)
    assert r.lost_segments == 0
    assert r.operator_violations == 0
    assert r.lost_pieces > 300 and r.offline_pieces > 300        # the year did churn
    assert 0.7 <= r.repair_bytes / r.model_bytes <= 1.3
    assert r.audits_failed > 0                                   # the day-100 cheater was caught
    assert r.repairer_after_owner                                # and repairs went on after the owner left
