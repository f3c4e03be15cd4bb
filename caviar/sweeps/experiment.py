"""One Ray Tune experiment: a resolved config -> Tuner -> experiment folder -> leaderboard.

The experiment folder (``storage/name/``) is Ray Tune's own, plus what caviar adds:
``caviar.yaml`` (the resolved config, written before any trial starts, so ``--resume`` needs
nothing else), ``leaderboard.csv`` (one row per trial) and ``summary.json``. Results are read
back from the folder's plain files (caviar.search.reader), never from Ray's pickles.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import pandas as pd

from caviar import storage
from caviar.config.durations import parse_duration
from caviar.config.loading import load_config, read_saved_config, with_classes
from caviar.config.schema import Config
from caviar.errors import ConfigError
from caviar.layout import CONFIG_FILE, LEADERBOARD_FILE, SUMMARY_FILE, TUNER_FILE
from caviar.results.border import border_warnings
from caviar.results.folder import ExperimentFolder
from caviar.results.leaderboard import summarize
from caviar.search import connect, tracking, tuning
from caviar.search.callbacks import ProgressPrinter
from caviar.search.reader import has_state, saved_state_is_whole
from caviar.search.seal import check_seal
from caviar.sweeps import budget as budgets
from caviar.training import identity
from caviar.training.data import SplitData, data_for, describe_dataset

# A trial that fits its length to the deadline (fit_to_deadline) aims this many seconds before it:
# its last epoch must be reported and checkpointed before Ray stops the experiment at the deadline.
TRIAL_END_MARGIN_S = 10.0


class SweepOutcome(Protocol):
    """What `caviar.sweep` returns, for one experiment (SweepResult) or for stages
    (caviar.sweeps.stages.StagedResult: the last stage's): what the console and the CLI read."""

    @property
    def path(self) -> str: ...  # the experiment folder (local path or URI)

    @property
    def trials(self) -> pd.DataFrame: ...  # the leaderboard, best first

    @property
    def summary(self) -> dict[str, Any]: ...

    @property
    def config(self) -> Config: ...

    @property
    def best(self) -> pd.Series | None: ...


@dataclass
class SweepResult:
    path: str  # the experiment folder (local path or URI)
    trials: pd.DataFrame  # the leaderboard, best first
    summary: dict[str, Any]
    config: Config

    @property
    def best(self) -> pd.Series | None:
        """The best trial's row, or None when no trial reported a score."""
        if self.trials.empty or pd.isna(self.trials.iloc[0]["best_val_acc"]):
            return None
        return self.trials.iloc[0]


def _collect(path: str, config: Config) -> pd.DataFrame:
    return ExperimentFolder(path).trial_table(config.search.max_epochs)[0]


def _write_results(path: str, table: pd.DataFrame, summary: dict[str, Any]) -> None:
    storage.write_text(storage.join(path, LEADERBOARD_FILE), table.to_csv(index=False))
    storage.write_text(storage.join(path, SUMMARY_FILE), json.dumps(summary, indent=2, default=str))


def run_experiment(
    config: Config,
    *,
    resume: bool = False,
    address: str | None = None,
    deadline: float | None = None,
    fit_to_deadline: bool = False,
    begin: float | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
    run_plan: budgets.Plan | None = None,
) -> SweepResult:
    """Run one Ray Tune experiment for `config` (resolved, without stages) in ``storage/name/``,
    or with `resume` finish the one there (see config_for_resume), and return its leaderboard.

    With `budget` in the config (a new run), the sweep is planned to fit it (caviar.sweeps.budget) and
    stopped at its deadline, counted from `begin`; `deadline` (seconds since the epoch) is how a
    staged run passes its own down; with `fit_to_deadline` each trial fits its epoch count to it
    (caviar.training.trial.Trial.refit: a stage that trains chosen configs to the end). `log` gets caviar's
    progress lines (caviar.search.callbacks); with `verbose`, Ray Tune's own console output comes instead.
    `run_plan`: the budget plan of the staged run this sweep is a stage of, for its summary.json.
    """
    begin = time.time() if begin is None else begin
    storage_path, path, config, data = _checked_start(config, resume)
    dataset = describe_dataset(data)  # recorded in summary.json: what the trials trained on
    data_record = identity.record(config, data)  # data.json: what later readers of the folder compare with
    plan = run_plan
    with connect.session(address, verbose) as started:
        resources = connect.check_cluster(config, storage_path, joined=not started)
        # A resumed sweep finishes what its plan drew; the budget was that of the first run.
        if config.budget and not resume and deadline is None:
            config, plan, deadline = _fitted_to_budget(config, data, resources, begin, log)
        ends_by = deadline - TRIAL_END_MARGIN_S if fit_to_deadline and deadline is not None else None
        trainable = tuning.trainable(config, data, resources, ends_by=ends_by)
        # The object store holds the dataset now; the driver's own copy would sit idle for the
        # whole sweep (147 MB for CIFAR-10, on the head node).
        del data
        fit_begin = time.time()
        _fit(trainable, config, storage_path, path, resume=resume, deadline=deadline, log=log, verbose=verbose,
             data_record=data_record)
        table = _final_table(path, config, deadline)
        summary = _summary(table, config, path, resources, begin=begin, fit_begin=fit_begin, deadline=deadline,
                           plan=plan) | {"data": dataset}
        _write_results(path, table, summary)
        tracking.log_sweep(config, path)  # the leaderboard to the trackers' parent run (log: in the config)
    return SweepResult(path=path, trials=table, summary=summary, config=config)


def _checked_start(config: Config, resume: bool) -> tuple[str, str, Config, SplitData]:
    """The storage path, the experiment folder, the config with the data's class count, and the
    data of the sweep, after the checks that can refuse it before Ray starts: a new sweep where
    one already is, data that cannot be read or disagrees with model.num_classes, storage that
    cannot be written."""
    storage_path = storage.resolve(config.storage)
    path = storage.join(storage_path, config.name)
    if not resume and storage.exists(storage.join(path, CONFIG_FILE)):
        raise ConfigError(
            f"experiment folder {path} already holds a sweep; finish it with `caviar sweep --resume {path}` "
            f"or start another with --set name=<new name>"
        )
    data = read_data(config)
    # a resumed sweep, or a new stage of a staged run: the data its folder trained on
    identity.check(path, config, data, "resume the sweep" if resume else "start the stage")
    config = with_classes(config, len(data.classes), f"data.root {config.data.root}")
    problem = storage.writable_problem(storage_path)
    if problem:
        raise ConfigError(f"storage {storage_path} is not writable ({problem}); pass --storage a folder you can write")
    return storage_path, path, config, data


def read_data(config: Config) -> SplitData:
    """The sweep's dataset, split into train and validation as the config says (labels checked
    against its classes, and those against a stated model.num_classes)."""
    return data_for(config)


def _fitted_to_budget(config: Config, data: SplitData, resources: dict[str, float], begin: float,
                      log: Callable[[str], None]) -> tuple[Config, budgets.Plan, float]:
    """`config` sized to its budget (caviar.sweeps.budget), the plan, and the deadline (from `begin`)."""
    budget_s = parse_duration(config.budget)
    plan = plan_budget(config, data, resources, budget_s=budget_s, spent_s=time.time() - begin)
    planned = budgets.apply(config, plan)
    log(plan.describe())
    return planned, plan, begin + budget_s


def _fit(trainable: Any, config: Config, storage_path: str, path: str, *, resume: bool, deadline: float | None,
         log: Callable[[str], None], verbose: bool, data_record: dict[str, Any]) -> None:
    """Run the sweep's trials: a new Tuner, or with `resume` the one saved in `path`."""
    if resume:
        tuner = tuning.restore_tuner(path, trainable)
    else:
        # Everything that can refuse the config (searcher, scheduler) is built before caviar.yaml
        # is written: a failed start must not leave a folder that counts as a sweep.
        progress = [] if verbose else [ProgressPrinter(config.search.num_samples, deadline=deadline, log=log)]
        tune_config = tuning.tune_config(config, time_left(deadline))
        run_config = tuning.run_config(config, storage_path, verbose=verbose,
                                       callbacks=progress + tracking.callbacks(config, path))
        storage.write_text(storage.join(path, CONFIG_FILE), config.to_yaml())
        identity.write(path, data_record)
        tuner = tuning.new_tuner(trainable, config, tune_config, run_config)
    tuning.fit(tuner, config.search.num_samples)


def _final_table(path: str, config: Config, deadline: float | None) -> pd.DataFrame:
    """The leaderboard of the trials in `path`, the ones the deadline stopped counted as early-stopped."""
    table = _collect(path, config)
    if deadline is not None and time.time() >= deadline - 1.0 and "status" in table:
        # Ray stops every trial at the deadline but saves the running and paused ones' status
        # as it was (RUNNING, PAUSED): they were stopped by the budget, not interrupted.
        table.loc[table["status"] == "unfinished", "status"] = "early-stopped"
    return table


def _summary(table: pd.DataFrame, config: Config, path: str, resources: dict[str, float], *, begin: float,
             fit_begin: float, deadline: float | None, plan: budgets.Plan | None) -> dict[str, Any]:
    """summary.json of a finished (or stopped) sweep: counts, the best trial, where and how it ran,
    and with a deadline, the plan and whether the deadline stopped it."""
    summary = summarize(table, config.search.num_samples) | {
        "experiment": path,
        "wall_time_s": round(time.time() - fit_begin, 1),
        "resources_per_trial": resources,
        "config": config.to_dict(),
        # numeric ranges whose best trial sits at an edge (caviar.results.border), with wider ranges
        "border_warnings": border_warnings(table, config.space, config.search.border_fraction),
    }
    if deadline is not None:
        summary["budget"] = (plan.to_dict() if plan else {}) | {
            "deadline_reached": time.time() >= deadline - 1.0,
            "command_wall_time_s": round(time.time() - begin, 1),
        }
    return summary


def config_for_resume(resume: str | Path, overrides: list[str] | None = None, **values: Any) -> Config:
    """The saved config of the experiment folder `resume`, pointed at that folder wherever it lives
    now, with the overrides that may change on resume; refuses a folder Ray cannot resume."""
    path = storage.resolve(str(resume)).rstrip("/")
    if not storage.exists(storage.join(path, CONFIG_FILE)):
        raise ConfigError(f"--resume {resume}: no {CONFIG_FILE} there; pass the experiment folder a sweep created")
    _check_resume_overrides(overrides or [], values)
    saved = read_saved_config(path)
    # The folder given is the one resumed, wherever it lives now (a moved or copied folder must
    # not write into the place it was copied from).
    parent, _, name = path.rpartition("/")
    saved |= {"storage": parent or "/", "name": name}
    config = load_config(saved, overrides, **values)
    if not config.stages:
        check_resumable(path)
    return config.resolved()


# What may change when a sweep resumes: where things are and what runs them. Anything else (the
# space, the search, the model) would make the resumed trials disagree with the ones already run.
RESUMABLE_OVERRIDES = ("data.root", "data.download", "resources.", "checkpoint.max_failures", "train.eval_batch_size",
                       "storage_shared")


def _check_resume_overrides(overrides: list[str], values: dict[str, Any]) -> None:
    keys = [text.split("=", 1)[0].strip() for text in overrides] + [key.replace("__", ".") for key in values]
    for key in keys:
        if not any(key == allowed.rstrip(".") or key.startswith(allowed) for allowed in RESUMABLE_OVERRIDES):
            raise ConfigError(f"--set {key}: cannot change when resuming (the trials already run used the saved "
                              f"value); only {', '.join(a.rstrip('.') for a in RESUMABLE_OVERRIDES)} can. Start a "
                              "new sweep with --name to change it")


def check_resumable(path: str) -> None:
    """Ray's saved state in `path` is there, whole and sealed (caviar.search.seal); else resuming would
    start the sweep over (with an empty config) and overwrite its results, or unpickle files
    caviar did not write."""
    if not storage.exists(storage.join(path, TUNER_FILE)) or not has_state(path):
        raise ConfigError(f"--resume {path}: Ray Tune's saved state (tuner.pkl, experiment_state-*.json) is missing, "
                          "so the sweep cannot continue; its finished trials are still readable (`caviar ensemble`, "
                          "`caviar report`)")
    if not saved_state_is_whole(path):
        raise ConfigError(f"--resume {path}: Ray Tune's experiment_state-*.json there is damaged (cut short?), so the "
                          "sweep cannot continue; its finished trials are still readable (`caviar ensemble`, "
                          "`caviar report`)")
    check_seal(path)  # Ray unpickles these files: only the ones caviar's sweep wrote


def time_left(deadline: float | None) -> float | None:
    """Seconds until `deadline` for Ray's time_budget_s (at least 1: Ray reads 0 as no budget)."""
    return None if deadline is None else max(1.0, deadline - time.time())


def _measure_on_assigned_device(config: Config, data: SplitData,
                                recipe_decides: Callable[[budgets.Throughput], bool],
                                gpu_ids: list[str]) -> budgets.Throughput:
    """caviar.sweeps.budget.measure on the device Ray assigned this task (CPU when it asked for no GPU)."""
    from caviar.training import devices

    return budgets.measure(config, data, devices.trial_device(gpu_ids), recipe_decides=recipe_decides)


def plan_budget(config: Config, data: SplitData, resources: dict[str, float], *, budget_s: float, spent_s: float,
                stage_train_images: list[int] | None = None) -> budgets.Plan:
    """Measure a trial's speed where trials run (a Ray task with one trial's resources, on the
    sweep's own data), then size the sweep to the budget (caviar.sweeps.budget.plan)."""
    sizes = budgets.plan_sizes(config, data, connect.cluster_slots(config, resources), stage_train_images)
    decides = functools.partial(budgets.recipe_alone, config, budget_s=budget_s, **sizes)
    throughput = connect.run_as_trial(_measure_on_assigned_device, resources, config, data, decides)
    return budgets.plan(config, budget_s=budget_s, spent_s=spent_s, throughput=throughput, **sizes)
