"""Ray Tune schedulers as caviar configures them: ASHA that waits for rivals, and PBT.

Asynchronous successive halving (Ray's ASHAScheduler) decides at a rung the moment a trial
reaches it, against whatever trials reached it before. With few slots the first trials reach
each rung alone and go through unopposed: on a 2-slot machine the first two trials of the default
experiment (one at lr 1e-6) ran 4 and 5 epochs before any other trial started (issue 10).

:class:`PatientASHA` keeps Ray's rule and adds one: a promotion decided while fewer than
`min_rung_trials` trials had reached that rung is *provisional*. The trial keeps training, and at
each of its later results the decision is taken again; once `min_rung_trials` trials have reached
the rung it is final, and a trial below that rung's cutoff then stops. So no trial passes a rung
on the evidence of one or two rivals, and no trial waits (nothing is paused: slots stay busy).
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search.sample import Domain

from caviar.space import DEPENDENT_SAMPLERS


class PatientASHA(ASHAScheduler):
    """ASHA whose early promotions are provisional until `min_rung_trials` trials reached the rung."""

    def __init__(self, *args: Any, min_rung_trials: int = 3, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._min_rung_trials = min_rung_trials
        self._provisional: dict[str, set[float]] = {}  # trial_id -> milestones passed on thin evidence

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None or self._time_attr not in result or self._metric not in result:
            return super().on_trial_result(tune_controller, trial, result)
        before = {milestone for milestone, recorded in bracket._rungs if trial.trial_id in recorded}
        action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.CONTINUE:
            self._provisional.pop(trial.trial_id, None)
            return action
        pending = self._provisional.setdefault(trial.trial_id, set())
        for milestone, recorded in bracket._rungs:
            if trial.trial_id in recorded and milestone not in before and len(recorded) < self._min_rung_trials:
                pending.add(milestone)  # just passed this rung with too few rivals to judge
        for milestone, recorded in bracket._rungs:
            if milestone not in pending or len(recorded) < self._min_rung_trials:
                continue
            pending.discard(milestone)  # enough trials now: the decision becomes final
            cutoff = bracket.cutoff(recorded)
            if cutoff is not None and recorded[trial.trial_id] < cutoff:
                self._num_stopped += 1
                self._provisional.pop(trial.trial_id, None)
                return TrialScheduler.STOP
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._provisional.pop(trial.trial_id, None)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._provisional.pop(trial.trial_id, None)
        super().on_trial_remove(tune_controller, trial)


# What PBT may change when it copies a better trial into a worse one: the optimisation
# hyperparameters that can change mid-training without rebuilding the network. Multiplying a
# log-scale value by 0.8 or 1.2 (Ray's default perturbation) keeps it on its scale.
PBT_MUTABLE = ("lr", "weight_decay", "momentum", "dropout")


def pbt_scheduler(domains: dict[str, Any], interval: int, seed: int | None) -> PopulationBasedTraining:
    """Ray's PopulationBasedTraining over the searched entries of PBT_MUTABLE, every `interval` epochs.

    `domains` are the Ray Tune domains of the space (caviar.space.to_param_space): PBT resamples
    from them with probability `resample_probability`, else perturbs the current value.
    """
    mutations = {name: _independent(domains[name]) for name in PBT_MUTABLE if isinstance(domains.get(name), Domain)}
    return PopulationBasedTraining(
        time_attr="epoch",
        perturbation_interval=interval,
        hyperparam_mutations=mutations,
        quantile_fraction=0.25,  # the bottom quarter copies the top quarter (Ray's default)
        resample_probability=0.25,
        synch=False,
        custom_explore_fn=_clip_to_meaning,
    )


def _independent(domain: Domain) -> Domain:
    """PBT resamples without the rest of the config: an lr drawn per optimizer (caviar.space) is
    resampled log-uniformly over all its ranges instead (a mismatch is selected out like any
    bad value); perturbing x0.8/x1.2 keeps it near the copied trial's value."""
    if isinstance(domain.get_sampler(), DEPENDENT_SAMPLERS):
        return tune.loguniform(domain.lower, domain.upper)
    return domain


def _clip_to_meaning(config: dict[str, Any]) -> dict[str, Any]:
    """A perturbed value stays within what the parameter can mean (dropout < 1, momentum < 1)."""
    if "dropout" in config:
        config["dropout"] = min(max(float(config["dropout"]), 0.0), 0.9)
    if "momentum" in config:
        config["momentum"] = min(max(float(config["momentum"]), 0.0), 0.9999)
    return config
