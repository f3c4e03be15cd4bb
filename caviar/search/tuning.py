"""Ray Tune's objects for a resolved config: the trainable with its resources, the searcher,
the scheduler, the run and tune configs, and `fit`. The one place caviar builds a Tuner's parts
(Ray's API has changed often; see ../shared/DESIGN.md)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Callable

from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from caviar.config.schedulers import SCHEDULERS
from caviar.config.schema import Config
from caviar.errors import ConfigError
from caviar.layout import TRIAL_PREFIX
from caviar.search.callbacks import CheckpointPruner, StateSeal
from caviar.search.schedulers import PromotingASHA, pbt_scheduler
from caviar.search.space import OptunaDefineByRun, fixed_values, to_param_space
from caviar.search.trainable import train_trial
from caviar.training.data import SplitData
from caviar.training.trial import TRIAL_EPOCHS_KEY, TrialSettings


def trainable(config: Config, data: SplitData, resources: dict[str, float], ends_by: float | None = None) -> Any:
    """`ends_by`: a deadline each trial fits its epoch count to (caviar.training.trial.Trial.refit)."""
    # with_parameters puts the dataset in the object store once; every trial on a node maps
    # the same copy instead of loading (or downloading) its own.
    settings = replace(TrialSettings.from_config(config, data), ends_by=ends_by)
    trainable = tune.with_parameters(train_trial, data=data, settings=settings)
    return tune.with_resources(trainable, resources)


def run_config(config: Config, storage_path: str, *, verbose: bool = False,
               callbacks: list[tune.Callback] | None = None) -> tune.RunConfig:
    """`callbacks` run on the driver beside caviar's checkpoint pruning; `verbose` brings back Ray
    Tune's own console output (a box per trial, tables of every trial) in place of caviar's."""
    pbt = SCHEDULERS[config.search.scheduler].population
    return tune.RunConfig(
        name=config.name,
        storage_path=storage_path,
        checkpoint_config=tune.CheckpointConfig(
            # Ray deletes nothing (and so never forces a snapshot of the whole experiment state
            # per checkpoint): CheckpointPruner keeps the best `checkpoint.keep` and the latest.
            # PBT copies other trials' recent checkpoints while they train on, so there Ray's own
            # pruning keeps 4 or more (Ray warns at 2 or fewer).
            num_to_keep=max(config.checkpoint.keep, 4) if pbt else None,
            checkpoint_score_attribute="val_acc",
            checkpoint_score_order="max",
        ),
        # A crashed trial (lost node, OOM) restarts from its last checkpoint, not from scratch.
        failure_config=tune.FailureConfig(max_failures=config.checkpoint.max_failures),
        # Files a trial writes in its own folder (caviar.training.babysit's TensorBoard histograms) reach
        # the experiment folder on storage with every checkpoint.
        sync_config=tune.SyncConfig(sync_artifacts=True),
        callbacks=list(callbacks or []) + [StateSeal()] + ([] if pbt else [CheckpointPruner(config.checkpoint.keep)]),
        verbose=2 if verbose else 0,
    )


def trial_dirname(trial: Any) -> str:
    """``trial_<id>`` instead of Ray's name with every hyperparameter in it (the leaderboard has them)."""
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def search_alg(config: Config) -> Any:
    """random: Ray's BasicVariantGenerator; tpe: Ray's OptunaSearch over the same space (see
    caviar.search.space.OptunaDefineByRun for how the scales map), behind a ConcurrencyLimiter if asked."""
    search = config.search
    if search.algorithm == "random":
        return BasicVariantGenerator(random_state=search.seed, max_concurrent=search.max_concurrent,
                                     points_to_evaluate=search.points or None)
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("search.algorithm: tpe needs Optuna; install it with `pip install 'caviar[bayes]'` "
                          "(or use search.algorithm: random)") from None
    searcher = OptunaSearch(OptunaDefineByRun(config.space, search.seed), metric="val_acc", mode="max",
                            seed=search.seed, points_to_evaluate=search.points or None)
    if search.max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        return ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent)
    return searcher


def param_space(config: Config) -> dict[str, Any]:
    # A searcher that owns the space (TPE) gets only the fixed values from Ray's param_space.
    if config.search.algorithm != "random":
        return fixed_values(config.space)
    params = to_param_space(config.space)
    # Points that carry their own epoch count (a stage sized to each config's speed: caviar.sweeps.stages)
    # need the key in the space, or Ray refuses them; a choice of exactly their counts.
    own_epochs = sorted({int(p[TRIAL_EPOCHS_KEY]) for p in config.search.points if TRIAL_EPOCHS_KEY in p})
    if own_epochs:
        params[TRIAL_EPOCHS_KEY] = tune.choice(own_epochs)
    return params


def scheduler(config: Config) -> TrialScheduler:
    """Ray Tune's scheduler for `search.scheduler` (one builder per name in SCHEDULER_BUILDERS)."""
    return SCHEDULER_BUILDERS[config.search.scheduler](config)


def _asha(config: Config) -> PromotingASHA:
    search = config.search
    # In seconds (search.fidelity), every rung is its epochs at the measured speed; a trial
    # still ends at its own max_epochs, so a fast one may finish before the last rung.
    unit: float = 1  # epochs stay whole numbers
    if search.fidelity == "seconds":
        if search.epoch_seconds is None:  # the planner writes it before any sweep starts
            raise ConfigError("search.fidelity: seconds needs search.epoch_seconds (a budget measures it)")
        unit = search.epoch_seconds
    return PromotingASHA(
        time_attr="time_total_s" if search.fidelity == "seconds" else "epoch",
        max_t=search.max_epochs * unit,
        grace_period=min(search.grace_period, search.max_epochs) * unit,
        reduction_factor=search.reduction_factor,
        min_rung_trials=search.min_rung_trials,
    )


def _pbt(config: Config) -> TrialScheduler:
    search = config.search
    if search.algorithm != "random":
        raise ConfigError("search.scheduler: pbt draws its population at random and mutates it; use "
                          "search.algorithm: random with it")
    return pbt_scheduler(to_param_space(config.space), search.pbt_interval, search.seed)


SCHEDULER_BUILDERS: dict[str, Callable[[Config], TrialScheduler]] = {
    "asha": _asha, "pbt": _pbt, "random": lambda config: FIFOScheduler(),
}


def tune_config(config: Config, time_budget_s: float | None = None) -> tune.TuneConfig:
    search = config.search
    return tune.TuneConfig(
        metric="val_acc",
        mode="max",
        num_samples=search.num_samples,
        scheduler=scheduler(config),
        search_alg=search_alg(config),
        # One process per slot, reused by trial after trial: a fresh process costs seconds.
        reuse_actors=True,
        trial_dirname_creator=trial_dirname,
        # The planner (caviar.sweeps.budget) sizes the sweep to fit; this is the safety net that stops
        # every trial at the deadline (checkpoints kept) if the estimate was off.
        time_budget_s=time_budget_s,
    )


def new_tuner(trainable: Any, config: Config, tune_config: tune.TuneConfig, run_config: tune.RunConfig) -> tune.Tuner:
    """The Tuner of a new sweep of `config` (its param_space from the config), from the parts
    tune_config and run_config built: they are what can refuse the config."""
    return tune.Tuner(trainable, param_space=param_space(config), tune_config=tune_config, run_config=run_config)


def restore_tuner(path: str, trainable: Any) -> tune.Tuner:
    """The Tuner of the sweep saved in `path`: finished trials stay finished; interrupted and
    errored ones continue from their checkpoints."""
    return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)


# Ray Tune warns when it snapshots the experiment state more than once in 5 s because trials have
# saved `num_to_keep` checkpoints each: only PBT sweeps leave that pruning to Ray (see run_config),
# and there a local snapshot of a small population takes milliseconds. Its warning for a *slow*
# snapshot (30 s) stays on.
SNAPSHOT_WARNING = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"


# Ray Tune rewrites its whole experiment state (~20 kB per trial) and copies the driver's folder of
# every trial's result files to storage at each snapshot, by default every 10 s or more: at 10,000
# trials that alone wrote 23 GB (docs/benchmark-history.md, section 8). With a period that grows with the
# number of trials, the snapshots of a sweep write bytes in proportion to its trials, not to their
# square; a resumed trial continues from its newest checkpoint however old the snapshot
# (caviar.search.trainable.resume_point). TUNE_GLOBAL_CHECKPOINT_S set by the user wins.
SNAPSHOT_PERIOD = "TUNE_GLOBAL_CHECKPOINT_S"
SNAPSHOT_S_PER_TRIAL = 0.01
MIN_SNAPSHOT_S = 10.0


def snapshot_period(trials: int) -> float:
    return max(MIN_SNAPSHOT_S, SNAPSHOT_S_PER_TRIAL * trials)


def fit(tuner: tune.Tuner, trials: int = 0) -> None:
    """`tuner.fit()` with Ray's experiment snapshots every snapshot_period(trials) seconds and
    without its frequent-snapshot warning, unless the user set either."""
    settings = {SNAPSHOT_WARNING: "0", SNAPSHOT_PERIOD: f"{snapshot_period(trials):g}"}
    added = {key: value for key, value in settings.items() if key not in os.environ}
    os.environ.update(added)
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    analysis_log.addFilter(_unstarted_trials)
    try:
        tuner.fit()
    finally:
        analysis_log.removeFilter(_unstarted_trials)
        for key in added:
            del os.environ[key]


def _unstarted_trials(record: logging.LogRecord) -> bool:
    """Drops Ray's warning that trials have no results when that is all it says (every failure a
    missing file): they are the trials a deadline or the end of the search left unstarted, which
    the leaderboard lists as not-started. Any other failure to read a trial still shows."""
    message = record.getMessage()
    if not message.startswith("Failed to fetch metrics"):
        return True
    failures = [line for line in message.splitlines()[1:] if line.startswith("- ")]
    return not failures or not all("FileNotFoundError(" in line for line in failures)
