"""ASHA's rung ladder, once: where trials are judged, and what a trial costs on average.

Ray's rule (and PromotingASHA's): rungs at grace * eta**k below max_t. The ladder is arithmetic on
the config alone, so it lives in the config layer, where the catalog's cost estimates need it too;
the scheduler, the budget planner and the report's rung chart read it from here.
"""

from __future__ import annotations


def milestones(max_t: float, grace: float, eta: int) -> list[float]:
    """The rungs below max_t where ASHA judges trials: grace, grace * eta, grace * eta**2, ..."""
    found, t = [], grace
    while t < max_t:
        found.append(t)
        t *= eta
    return found


def rungs(max_epochs: int, grace: int, eta: int) -> list[int]:
    """ASHA's milestones below max_epochs, then max_epochs (where the survivors end)."""
    return [int(t) for t in milestones(max_epochs, grace, eta)] + [max_epochs]


def asha_epochs_per_trial(max_epochs: int, grace: int, eta: int) -> float:
    """Expected epochs of one trial under ASHA: every trial runs to the first rung, a 1/eta share
    of those to the next, and so on (the top share to max_epochs)."""
    total, previous = 0.0, 0
    for k, milestone in enumerate(rungs(max_epochs, grace, eta)):
        total += (milestone - previous) / eta**k
        previous = milestone
    return total
