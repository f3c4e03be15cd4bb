"""Ray Tune schedulers as caviar configures them: ASHA that promotes, and PBT.

Ray's ASHAScheduler is the "stopping" form of asynchronous successive halving: a trial that reaches
a rung goes on if it beats the rung's cutoff among whichever trials got there first. With few
slots the first trials reach every rung alone and go through unopposed: on a 2-slot machine a
few early trials can take most of a budgeted search.

:class:`PromotingASHA` is the form of the ASHA paper (Li et al. 2020, Algorithm 2): a trial that
reaches a rung waits there (Ray pauses it; its checkpoint is the rung's), and a free slot goes to
a waiting trial only when it is in the top 1/eta of the trials that reached its rung, judged once
at least `min_rung_trials` (and eta) have; otherwise a new trial starts. So no trial passes a rung
on the evidence of one or two rivals, and the slots go to new trials until there is evidence.
When no new trial can start and none runs, the waiting trials that never made their rung's top
are stopped, and the sweep ends.

Rungs count epochs, or seconds of training (`time_attr="time_total_s"`, search.fidelity), so that
trials of different speeds are compared after equal time. A trial reports at the end of an epoch,
which rarely falls on a rung in seconds: its score there is read off the straight line between
its last report before the rung and its first after, so a slow config is not judged after more
time than a fast one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search.sample import Domain

from caviar.config.schedulers import milestones
from caviar.search.space import DEPENDENT_SAMPLERS

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController


class PromotingASHA(FIFOScheduler):
    """Asynchronous successive halving by promotion: trials wait at rungs until they are in the top
    1/`reduction_factor` of a rung that `min_rung_trials` trials have reached."""

    def __init__(self, time_attr: str = "epoch", metric: str | None = None, mode: str | None = None,
                 max_t: float = 100, grace_period: float = 1, reduction_factor: int = 3, min_rung_trials: int = 3):
        super().__init__()
        self._time_attr, self._metric, self._mode = time_attr, metric, mode
        self._max_t, self._eta = max_t, reduction_factor
        self._min_trials = max(reduction_factor, min_rung_trials)
        self._milestones: list[float] = milestones(max_t, grace_period, reduction_factor)
        self._scores: list[dict[str, float]] = [{} for _ in self._milestones]  # rung -> trial id -> score
        self._promoted: list[set[str]] = [set() for _ in self._milestones]
        self._waiting: dict[str, int] = {}  # trial id -> the rung it is paused at
        self._last: dict[str, tuple[float, float]] = {}  # trial id -> (time, score) of its last report

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def _sign(self) -> float:
        return -1.0 if self._mode == "min" else 1.0

    def promotable(self, rung: int, trial_id: str) -> bool:
        """In the top 1/eta of its rung, the rung reached by enough trials, and not promoted yet."""
        scores = self._scores[rung]
        if trial_id in self._promoted[rung] or len(scores) < self._min_trials:
            return False
        top = sorted(scores, key=lambda tid: -scores[tid])[: len(scores) // self._eta]
        return trial_id in top

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        t = float(result[self._time_attr])
        if t >= self._max_t or result.get("diverged"):
            return TrialScheduler.STOP
        score = self._sign() * float(result[self._metric])
        before = self._last.get(trial.trial_id)
        self._last[trial.trial_id] = (t, score)
        for rung, milestone in enumerate(self._milestones):
            if t >= milestone and trial.trial_id not in self._scores[rung]:
                self._scores[rung][trial.trial_id] = score_at(milestone, before, (t, score))
                if self.promotable(rung, trial.trial_id):
                    self._promoted[rung].add(trial.trial_id)
                else:
                    self._waiting[trial.trial_id] = rung
                    return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        trials = {trial.trial_id: trial for trial in tune_controller.get_trials()}
        for rung in reversed(range(len(self._milestones))):  # promotions first, highest rung first
            waiting = [tid for tid, r in self._waiting.items() if r == rung]
            for tid in sorted(waiting, key=lambda tid: -self._scores[rung][tid]):
                trial = trials.get(tid)
                if trial is not None and trial.status == Trial.PAUSED and self.promotable(rung, tid):
                    self._promoted[rung].add(tid)
                    del self._waiting[tid]
                    return trial
        for trial in trials.values():
            if trial.status == Trial.PENDING:
                return trial
        busy = any(trial.status in (Trial.RUNNING, Trial.PENDING) for trial in trials.values())
        waiting = [tid for tid in self._waiting if tid in trials and trials[tid].status == Trial.PAUSED]
        if busy or not waiting:
            return None
        if tune_controller.search_alg.is_finished():
            # No new rival can come: each rung's top goes on, highest rung first (at least its best,
            # however few reached it, so a sweep always trains its best trial to the end); the rest lost.
            finalist = self._finalist(waiting)
            if finalist is not None:
                self._promoted[self._waiting.pop(finalist)].add(finalist)
                return trials[finalist]
            for tid in waiting:
                del self._waiting[tid]
                _stop_paused(tune_controller, trials[tid])
            return None
        # Idle, yet no new trial comes: the searcher holds back while the waiting trials count as live
        # (search.max_concurrent). Free a place by stopping a trial that has lost its rung, or else
        # let the best waiting trial go on (highest rung first), so the sweep never stalls.
        losers = [tid for tid in waiting if len(self._scores[self._waiting[tid]]) >= self._min_trials]
        if losers:
            worst = min(losers, key=lambda tid: self._scores[self._waiting[tid]][tid])
            del self._waiting[worst]
            _stop_paused(tune_controller, trials[worst])
            return None
        best = max(waiting, key=lambda tid: (self._waiting[tid], self._scores[self._waiting[tid]][tid]))
        self._promoted[self._waiting.pop(best)].add(best)
        return trials[best]

    def _finalist(self, waiting: list[str]) -> str | None:
        """The waiting trial that goes on once the search can start no trial: the best waiting one
        of the highest rung whose top max(1, reached // eta) it is in (promoted trials keep their
        places in that top), or None where every waiting trial lost its rung."""
        for rung in reversed(range(len(self._milestones))):
            scores = self._scores[rung]
            top = sorted(scores, key=lambda tid: -scores[tid])[: max(1, len(scores) // self._eta)]
            for tid in top:
                if tid in waiting and self._waiting[tid] == rung:
                    return tid
        return None

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        self._forget(trial)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        self._forget(trial)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        self._waiting.pop(trial.trial_id, None)  # Ray may retry it from its checkpoint: keep its last report

    def _forget(self, trial: Trial) -> None:
        self._waiting.pop(trial.trial_id, None)
        self._last.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        rungs = ", ".join(f"{m}: {len(s)} reached, {len(p)} promoted" for m, s, p in
                          zip(self._milestones, self._scores, self._promoted))
        return f"PromotingASHA ({len(self._waiting)} waiting) {rungs}"


def score_at(milestone: float, before: tuple[float, float] | None, after: tuple[float, float]) -> float:
    """A trial's score at `milestone`, between its reports `before` and `after` ((time, score)
    pairs): interpolated where the milestone lies between them, else the `after` score."""
    (t1, s1) = after
    if before is None or not before[0] < milestone < t1:
        return s1
    t0, s0 = before
    return s0 + (s1 - s0) * (milestone - t0) / (t1 - t0)


def _stop_paused(tune_controller: TuneController, trial: Trial) -> None:
    """Stop a paused trial, and have Ray save its new status: Ray 2.60 refreshes a trial's entry in
    experiment_state only when it reports or checkpoints, so a trial stopped while paused would stay
    PAUSED there, which reads as an interrupted sweep (private API: Ray is pinned)."""
    tune_controller.stop_trial(trial)
    controller = getattr(tune_controller, "_tune_controller", None)  # behind Ray's scheduler-facing wrapper
    mark = getattr(controller, "_mark_trial_to_checkpoint", None)
    if mark is not None:
        mark(trial)


# What PBT may change when it copies a better trial into a worse one: the optimisation
# hyperparameters that can change mid-training without rebuilding the network. Multiplying a
# log-scale value by 0.8 or 1.2 (Ray's default perturbation) keeps it on its scale.
PBT_MUTABLE = ("lr", "weight_decay", "momentum", "dropout")


def pbt_scheduler(domains: dict[str, Any], interval: int, seed: int | None) -> PopulationBasedTraining:
    """Ray's PopulationBasedTraining over the searched entries of PBT_MUTABLE, every `interval` epochs.

    `domains` are the Ray Tune domains of the space (caviar.search.space.to_param_space): PBT resamples
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
    """PBT resamples without the rest of the config: an lr drawn per optimizer (caviar.search.space) is
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
