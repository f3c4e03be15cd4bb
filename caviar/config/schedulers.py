"""What each `search.scheduler` means, in one table, and ASHA's rung ladder, once.

Modules that need to know whether a scheduler judges trials at rungs, or what one of its trials
costs on average, ask `SCHEDULERS[name]` here instead of testing the name. The ladder is Ray's
rule (and PromotingASHA's): rungs at grace * eta**k below max_t. It is arithmetic on the config
alone, so it lives in the config layer, where the catalog's cost estimates need it too; the
scheduler (caviar.search.schedulers), the budget planner and the report's rung chart read it here.
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class SchedulerRule:
    """What a scheduler does with trials, as the planner, the catalog and the report need it."""

    name: str
    rungs: bool  # stops the bottom trials at rungs (ASHA): rungs may count seconds (search.fidelity)
    population: bool  # trials start together and copy each other's checkpoints as they train (PBT)

    def epochs_per_trial(self, max_epochs: int, grace: int, eta: int) -> float:
        """Expected epochs one trial trains: ASHA's average over its ladder; every trial to the end otherwise."""
        return asha_epochs_per_trial(max_epochs, min(grace, max_epochs), eta) if self.rungs else float(max_epochs)


SCHEDULERS = {
    "asha": SchedulerRule("asha", rungs=True, population=False),
    "random": SchedulerRule("random", rungs=False, population=False),
    "pbt": SchedulerRule("pbt", rungs=False, population=True),
}
