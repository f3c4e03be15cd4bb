"""ASHA's settings that must agree with each other, in one place: what the rungs count (epochs or
seconds), where the first rung lies, and annealing at each rung. Each disagreement is a ValueError
naming the keys and the ways out (the schema's Config validator calls `rung_settings_problem`, and
caviar.config.loading turns the error into a ConfigError)."""

from __future__ import annotations

from typing import Any

from caviar.config.schedulers import SCHEDULERS

# `config` below is a caviar.config.schema.Config, which calls these from its validator (typed Any:
# importing the schema here, even for type checking, would make an import cycle).


def judges_at_rungs(config: Any) -> bool:
    """Whether any sweep of this experiment (a stage's, or the one) judges trials at ASHA's rungs."""
    search = config.search
    schedulers = {stage.scheduler_run(search.scheduler) for stage in config.stages} or {search.scheduler}
    return any(SCHEDULERS[name].rungs for name in schedulers)


def rung_settings_problem(config: Any) -> None:
    """A ValueError where `config`'s rung settings contradict each other; None where they agree."""
    search = config.search
    # The first rung at grace_period epochs: past max_epochs no trial would ever be judged (it was
    # once moved to the last epoch in silence). A staged experiment's stages set their own epochs.
    if not config.stages and SCHEDULERS[search.scheduler].rungs and search.grace_period > search.max_epochs:
        raise ValueError(f"search.grace_period ({search.grace_period}) is beyond search.max_epochs "
                         f"({search.max_epochs}): ASHA's first rung would come after a trial's last epoch; lower "
                         "search.grace_period or raise search.max_epochs (or use search.scheduler: random)")
    if search.fidelity == "seconds":
        if not config.budget and search.epoch_seconds is None:
            raise ValueError("search.fidelity: seconds converts ASHA's rungs from epochs to seconds at a measured "
                             "speed: add a budget (budget: 30m or --budget 30m), which measures it, or set "
                             "search.epoch_seconds yourself; or use search.fidelity: epochs")
        if not judges_at_rungs(config):
            raise ValueError("search.fidelity: seconds sets what ASHA's rungs count, but no sweep of this experiment "
                             f"uses ASHA (search.scheduler: {search.scheduler}); remove it or use scheduler: asha")
    if search.anneal == "rung":
        if search.fidelity != "epochs":
            raise ValueError("search.anneal: rung anneals each trial at the epochs of its rungs, so the rungs must count "
                             "epochs: set search.fidelity: epochs (or search.anneal: schedule to keep seconds)")
        if not judges_at_rungs(config):
            raise ValueError("search.anneal: rung anneals trials at ASHA's rungs, but no sweep of this experiment uses "
                             f"ASHA (search.scheduler: {search.scheduler}); remove it or use scheduler: asha")
