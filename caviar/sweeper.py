"""`Tuner` + scheduler + resources + storage + failure policy -> an experiment folder and results.

The experiment folder (``storage/name/``) is Ray Tune's own, plus what caviar adds:
``caviar.yaml`` (the resolved config, written before any trial starts, so ``--resume`` needs
nothing else), ``leaderboard.csv`` (one row per trial) and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow.fs
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from caviar import budget as budgets
from caviar import cluster, storage, tracking
from caviar.config import CONFIG_FILE, Config, ConfigError, load_config, read_saved_config
from caviar.data import SplitData, prepare_data
from caviar.leaderboard import (
    LEADERBOARD_FILE, SUMMARY_FILE, deadline_reached, format_table, interrupted, leaderboard, summarize, trial_row,
)
from caviar.border import border_warnings, format_warnings
from caviar.schedulers import PromotingASHA, pbt_scheduler
from caviar.space import OptunaDefineByRun, fixed_values, to_param_space
from caviar.train import images_per_epoch
from caviar.reader import TrialRecord, has_state, read_trials, saved_state_is_whole
from caviar.trainable import train_trial
from caviar.trial import TrialSettings

# GPU share per trial for gpus_per_trial: auto, by family: a small convnet leaves most of a GPU
# idle, so 4 share one; a ResNet-9 keeps half a GPU busy.
AUTO_GPU_SHARE = {"convnet": 0.25, "resnet": 0.5}


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


def trial_resources(config: Config, cluster_gpus: float) -> dict[str, float]:
    gpus = config.resources.gpus_per_trial
    if gpus == "auto":
        gpus = AUTO_GPU_SHARE[config.model.family] if cluster_gpus > 0 else 0.0
    elif gpus > 0 and cluster_gpus == 0:
        raise ConfigError(
            f"resources.gpus_per_trial is {gpus} but the Ray cluster has no GPU; "
            "set --set resources.gpus_per_trial=0 (or auto) to train on CPU"
        )
    return {"cpu": config.resources.cpus_per_trial, "gpu": float(gpus)}


def _check_cluster(config: Config, storage_path: str, joined: bool) -> dict[str, float]:
    """The resources per trial on the Ray cluster just started or joined, after checking that its
    nodes can all reach `storage_path` (raises ConfigError before anything is written)."""
    autoscaler = cluster.autoscaler_config() if joined else None  # asked of the head once, for all three
    cluster.check_storage_for_cluster(storage_path, shared=config.storage_shared, joined=joined, autoscaler=autoscaler)
    resources = trial_resources(config, cluster.cluster_gpus(joined=joined, autoscaler=autoscaler))
    largest = cluster.largest_node(joined=joined, autoscaler=autoscaler)
    for key, name in (("cpu", "cpus_per_trial"), ("gpu", "gpus_per_trial")):
        if resources[key] > largest[key.upper()] + 1e-9:
            raise ConfigError(f"resources.{name} is {resources[key]:g} but no node of this Ray cluster has (or can "
                              f"add) more than {largest[key.upper()]:g}: the trials would wait forever; set "
                              f"--set resources.{name}={largest[key.upper()]:g} or less")
    return resources


def _start_ray(address: str | None) -> bool:
    """Join `address`, or start a fresh local Ray instance. Returns True if we started one.

    With no address Ray would join any cluster it finds on this machine; address="local" makes
    a private instance so two users' sweeps never land on each other's cluster.
    """
    if address:
        _check_reachable(address)  # even when this process already has Ray: a bad address is an error
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as error:
            raise ConfigError(f"--address {address}: no Ray cluster to join ({error}); start one with `ray start "
                              "--head` or `ray up`, or leave --address out to run on this machine") from None
    else:
        # A private instance listens on loopback only: nothing outside this machine can reach it.
        ray.init(address="local", _node_ip_address="127.0.0.1", log_to_driver=True)
    return True


# Seconds to wait for a cluster's address to answer before saying so (Ray itself retries for minutes).
CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """HOST:PORT answers on TCP within CONNECT_TIMEOUT_S, else a ConfigError (Ray would retry on
    and on). 'auto' and ray:// addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return
    except ValueError:
        raise ConfigError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto") from None
    except OSError as error:
        raise ConfigError(f"--address {address}: nothing answers there ({error.strerror or error}); check the "
                          "head node's address and port (`ray status` on the head prints them)") from None


def _trainable(config: Config, data: SplitData, resources: dict[str, float]) -> Any:
    # with_parameters puts the dataset in the object store once; every trial on a node maps
    # the same copy instead of loading (or downloading) its own.
    trainable = tune.with_parameters(train_trial, data=data, settings=TrialSettings.from_config(config))
    return tune.with_resources(trainable, resources)


def _run_config(config: Config, storage_path: str, callbacks: list | None = None) -> tune.RunConfig:
    return tune.RunConfig(
        callbacks=callbacks,
        name=config.name,
        storage_path=storage_path,
        checkpoint_config=tune.CheckpointConfig(
            # PBT copies other trials' recent checkpoints: keeping fewer than 4 per trial lets Ray
            # delete one that an exploit is about to restore (Ray warns at 2 or fewer).
            num_to_keep=max(config.checkpoint.keep, 4) if config.search.scheduler == "pbt" else config.checkpoint.keep,
            checkpoint_score_attribute="val_acc",
            checkpoint_score_order="max",
        ),
        # A crashed trial (lost node, OOM) restarts from its last checkpoint, not from scratch.
        failure_config=tune.FailureConfig(max_failures=config.checkpoint.max_failures),
        # Files a trial writes in its own folder (caviar.babysit's TensorBoard histograms) reach
        # the experiment folder on storage with every checkpoint.
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=1,
    )


def trial_dirname(trial: Any) -> str:
    """``trial_<id>`` instead of Ray's name with every hyperparameter in it (the leaderboard has them)."""
    return f"trial_{trial.trial_id}"


def _search_alg(config: Config) -> Any:
    """random: Ray's BasicVariantGenerator; tpe: Ray's OptunaSearch over the same space (see
    caviar.space.OptunaDefineByRun for how the scales map), behind a ConcurrencyLimiter if asked."""
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


def _param_space(config: Config) -> dict[str, Any]:
    # A searcher that owns the space (TPE) gets only the fixed values from Ray's param_space.
    return to_param_space(config.space) if config.search.algorithm == "random" else fixed_values(config.space)


def _scheduler(config: Config) -> Any:
    search = config.search
    if search.scheduler == "asha":
        return PromotingASHA(
            time_attr="epoch",
            max_t=search.max_epochs,
            grace_period=min(search.grace_period, search.max_epochs),
            reduction_factor=search.reduction_factor,
            min_rung_trials=search.min_rung_trials,
        )
    if search.scheduler == "pbt":
        if search.algorithm != "random":
            raise ConfigError("search.scheduler: pbt draws its population at random and mutates it; use "
                              "search.algorithm: random with it")
        return pbt_scheduler(to_param_space(config.space), search.pbt_interval, search.seed)
    return FIFOScheduler()


def _tune_config(config: Config, time_budget_s: float | None = None) -> tune.TuneConfig:
    search = config.search
    return tune.TuneConfig(
        metric="val_acc",
        mode="max",
        num_samples=search.num_samples,
        scheduler=_scheduler(config),
        search_alg=_search_alg(config),
        # One process per slot, reused by trial after trial: a fresh process costs seconds.
        reuse_actors=True,
        trial_dirname_creator=trial_dirname,
        # The planner (caviar.budget) sizes the sweep to fit; this is the safety net that stops
        # every trial at the deadline (checkpoints kept) if the estimate was off.
        time_budget_s=time_budget_s,
    )


# Ray Tune snapshots the experiment state each time a trial has saved `checkpoint.keep` checkpoints
# (so a resumed experiment never points at a deleted one), and warns when that happens more than
# once in 5 s: with epochs of seconds it always does, although a local snapshot takes milliseconds
# (benchmarks/README.md). Its warning for a *slow* snapshot (30 s) stays on.
_SNAPSHOT_WARNING = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"


def _fit(tuner: tune.Tuner) -> None:
    """`tuner.fit()` without Ray's frequent-snapshot warning, unless the user set its threshold."""
    if _SNAPSHOT_WARNING in os.environ:
        tuner.fit()
        return
    os.environ[_SNAPSHOT_WARNING] = "0"
    try:
        tuner.fit()
    finally:
        del os.environ[_SNAPSHOT_WARNING]


def _collect(path: str, config: Config) -> pd.DataFrame:
    rows = [
        trial_row(
            trial_id=record.trial_id,
            ray_status=record.ray_status,
            hparams=record.hparams,
            history=record.history,
            max_epochs=config.search.max_epochs,
            retries=record.retries,
            path=record.path,
            best_checkpoint=storage.uri(record.checkpoints[0][0].path, path) if record.checkpoints else "",
        )
        for record in read_trials(path)
    ]
    return leaderboard(rows)


def _write_results(path: str, table: pd.DataFrame, summary: dict[str, Any]) -> None:
    storage.write_text(storage.join(path, LEADERBOARD_FILE), table.to_csv(index=False))
    storage.write_text(storage.join(path, SUMMARY_FILE), json.dumps(summary, indent=2, default=str))


def sweep(
    config: Config | str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    address: str | None = None,
    resume: str | Path | None = None,
    stage: int | None = None,
    deadline: float | None = None,
    log: Callable[[str], None] = print,
    **values: Any,
) -> SweepResult:
    """Run (or with `resume`, finish) a sweep and return its leaderboard.

    An experiment with `stages` runs them all (caviar.stages) and returns a StagedResult whose
    path, trials and summary are the last stage's; `stage` reruns (or resumes) from stage N.
    With `budget` in the config, the sweep is planned to fit it (caviar.budget) and stopped at
    its deadline; `deadline` (seconds since the epoch) is how a staged run passes its own down.

    `config` is a Config or an experiment file; `overrides` are "key=value" strings and `values`
    keyword overrides (``search__num_samples=8``), applied on top, in that order.
    """
    begin = time.time()
    if resume is not None:
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
    else:
        config = load_config(config, overrides, **values)
    config = config.resolved()
    tracking.check(config)  # MLflow / W&B installed and reachable, before any data is read
    if config.stages:
        from caviar.stages import run_staged

        return run_staged(config, address=address, resume=resume is not None, start=stage, begun=begin, log=log)
    if stage is not None:
        raise ConfigError("--stage needs an experiment with `stages` (see experiments/staged.yaml)")

    storage_path = storage.resolve(config.storage)
    path = storage.join(storage_path, config.name)
    if resume is None and storage.exists(storage.join(path, CONFIG_FILE)):
        raise ConfigError(
            f"experiment folder {path} already holds a sweep; finish it with `caviar sweep --resume {path}` "
            f"or start another with --set name=<new name>"
        )
    data = prepare_data(
        config.data.root,
        val_size=config.data.val_size,
        train_subset=config.data.train_subset,
        split_seed=config.data.split_seed,
        download=config.data.download,
    )
    check_labels(config, data)
    problem = storage.writable_problem(storage_path)
    if problem:
        raise ConfigError(f"storage {storage_path} is not writable ({problem}); pass --storage a folder you can write")

    started = _start_ray(address)
    plan: budgets.Plan | None = None
    try:
        resources = _check_cluster(config, storage_path, joined=not started)
        # A resumed sweep finishes what its plan drew; the budget was that of the first run.
        if config.budget and resume is None and deadline is None:
            budget_s = budgets.parse_duration(config.budget)
            deadline = begin + budget_s
            plan = plan_budget(config, data, resources, budget_s=budget_s, spent_s=time.time() - begin)
            config = budgets.apply(config, plan)
            log(plan.describe())
        trainable = _trainable(config, data, resources)
        # The object store holds the dataset now; the driver's own copy would sit idle for the
        # whole sweep (147 MB for CIFAR-10, on the head node).
        del data
        fit_begin = time.time()
        if resume is None:
            # Everything that can refuse the config (searcher, scheduler) is built before caviar.yaml
            # is written: a failed start must not leave a folder that counts as a sweep.
            tune_config = _tune_config(config, time_left(deadline))
            run_config = _run_config(config, storage_path, callbacks=tracking.callbacks(config, path))
            storage.write_text(storage.join(path, CONFIG_FILE), config.to_yaml())
            tuner = tune.Tuner(trainable, param_space=_param_space(config), tune_config=tune_config,
                               run_config=run_config)
        else:
            # Finished trials stay finished; interrupted ones continue from their checkpoints.
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        _fit(tuner)
        table = _collect(path, config)
        if deadline is not None and time.time() >= deadline - 1.0 and "status" in table:
            # Ray stops every trial at the deadline but saves the running and paused ones' status
            # as it was (RUNNING, PAUSED): they were stopped by the budget, not interrupted.
            table.loc[table["status"] == "unfinished", "status"] = "early-stopped"
        summary = summarize(table, config.search.num_samples) | {
            "experiment": path,
            "wall_time_s": round(time.time() - fit_begin, 1),
            "resources_per_trial": resources,
            "config": config.to_dict(),
            # numeric ranges whose best trial sits at an edge (caviar.border), with wider ranges
            "border_warnings": border_warnings(table, config.space, config.search.border_fraction),
        }
        if deadline is not None:
            summary["budget"] = (plan.to_dict() if plan else {}) | {
                "deadline_reached": time.time() >= deadline - 1.0,
                "command_wall_time_s": round(time.time() - begin, 1),
            }
        _write_results(path, table, summary)
        tracking.log_sweep(config, path)  # the leaderboard to the trackers' parent run (log: in the config)
    finally:
        if started:
            ray.shutdown()
    return SweepResult(path=path, trials=table, summary=summary, config=config)


def check_labels(config: Config, data: SplitData) -> None:
    """Labels the model cannot output would crash every trial: say so before any starts."""
    largest = int(max(data.train_y.max(initial=0), data.val_y.max(initial=0)))
    if largest >= config.model.num_classes:
        raise ConfigError(f"model.num_classes is {config.model.num_classes} but {config.data.root} has labels up to "
                          f"{largest}; set --set model.num_classes={largest + 1}")


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
    """Ray's saved state in `path` is there and whole; else resuming would start the sweep over
    (with an empty config) and overwrite its results."""
    if not storage.exists(storage.join(path, "tuner.pkl")) or not has_state(path):
        raise ConfigError(f"--resume {path}: Ray Tune's saved state (tuner.pkl, experiment_state-*.json) is missing, "
                          "so the sweep cannot continue; its finished trials are still readable (`caviar ensemble`, "
                          "`caviar report`)")
    if not saved_state_is_whole(path):
        raise ConfigError(f"--resume {path}: Ray Tune's experiment_state-*.json there is damaged (cut short?), so the "
                          "sweep cannot continue; its finished trials are still readable (`caviar ensemble`, "
                          "`caviar report`)")


def time_left(deadline: float | None) -> float | None:
    """Seconds until `deadline` for Ray's time_budget_s (at least 1: Ray reads 0 as no budget)."""
    return None if deadline is None else max(1.0, deadline - time.time())


def cluster_slots(config: Config, resources: dict[str, float]) -> int:
    """How many trials of `resources` the Ray cluster runs at once now (search.max_concurrent caps it)."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 0) / resources["cpu"] + 1e-9)
    if resources["gpu"] > 0:
        slots = min(slots, int(total.get("GPU", 0) / resources["gpu"] + 1e-9))
    if config.search.max_concurrent:
        slots = min(slots, config.search.max_concurrent)
    return max(1, slots)


def _measure_on_assigned_device(config: Config, data: SplitData) -> budgets.Throughput:
    """caviar.budget.measure on the device Ray assigned this task (CPU when it asked for no GPU)."""
    from caviar import devices

    return budgets.measure(config, data, devices.trial_device([str(gpu) for gpu in ray.get_gpu_ids()]))


def plan_budget(config: Config, data: SplitData, resources: dict[str, float], *, budget_s: float, spent_s: float,
                stage_train_images: list[int] | None = None) -> budgets.Plan:
    """Measure a trial's speed where trials run (a Ray task with one trial's resources, on the
    sweep's own data), then size the sweep to the budget (caviar.budget.plan)."""
    probe = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"])(_measure_on_assigned_device)
    throughput = ray.get(probe.remote(config, data))
    return budgets.plan(config, budget_s=budget_s, spent_s=spent_s, slots=cluster_slots(config, resources),
                        throughput=throughput, train_images=images_per_epoch(len(data.train_y), config.train.epoch_size),
                        val_images=len(data.val_y),
                        stage_train_images=stage_train_images)


def describe(result: SweepResult) -> str:
    """The short report printed at the end of `caviar sweep`."""
    counts = ", ".join(f"{n} {status}" for status, n in result.summary["counts"].items() if n)
    lines = [format_table(result.trials), "", f"{result.summary['trials']} trials: {counts}"]
    if deadline_reached(result.summary):
        lines.append(f"Stopped at the budget's deadline ({result.summary['budget'].get('command_wall_time_s')} s); "
                     "every trial's results and checkpoints are kept.")
    elif interrupted(result.summary):
        # a staged sweep resumes from its experiment folder, which holds every stage
        lines.append(f"Interrupted. Finish it with: caviar sweep --resume {getattr(result, 'root', result.path)}")
    errored = result.trials[result.trials["status"] == "error"] if "status" in result.trials else result.trials[:0]
    if len(errored):
        shown = ", ".join(storage.join(str(path), "error.txt") for path in errored["path"].head(3))
        more = f" and {len(errored) - 3} more" if len(errored) > 3 else ""
        lines.append(f"{len(errored)} trial{'s' if len(errored) > 1 else ''} failed; what went wrong: {shown}{more}")
    lines.append(f"Results: {result.path} ({LEADERBOARD_FILE}, {SUMMARY_FILE})")
    if result.summary.get("border_warnings") and not hasattr(result, "plan"):  # stages print their own
        lines.append(format_warnings(result.summary["border_warnings"]))
    if hasattr(result, "plan"):  # a staged sweep (caviar.stages.StagedResult)
        from caviar.stages import describe_stages

        lines.append(describe_stages(result))
    return "\n".join(lines)


def rerun_with_seeds(
    experiment: str, config: Config, hparams: dict[str, Any], seeds: list[int], *, prefix: str,
    address: str | None = None,
) -> list[TrialRecord]:
    """Train `hparams` from scratch once per seed, in parallel, as a Ray Tune experiment
    ``<prefix>-<time>`` inside the experiment folder (same storage, so `ray up` clusters work too).

    Seeds that already finished in an earlier ``<prefix>-*`` run of the same folder are reused;
    only missing seeds are trained.
    """
    finished = _finished_seed_runs(experiment, prefix)
    missing = [seed for seed in seeds if seed not in finished]
    if missing:
        data = prepare_data(config.data.root, val_size=config.data.val_size, train_subset=config.data.train_subset,
                            split_seed=config.data.split_seed, download=config.data.download)
        started = _start_ray(address)
        try:
            trainable = _trainable(config, data, _check_cluster(config, experiment, joined=not started))
            del data  # in the object store now (see sweep)
            run = config.model_copy(update={"name": f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"})
            _fit(tune.Tuner(
                trainable,
                param_space={**hparams, "seed": tune.grid_search(missing)},
                tune_config=tune.TuneConfig(metric="val_acc", mode="max", reuse_actors=True,
                                            trial_dirname_creator=trial_dirname),
                run_config=_run_config(run, experiment),
            ))
        finally:
            if started:
                ray.shutdown()
        finished = _finished_seed_runs(experiment, prefix)
    return [finished[seed] for seed in seeds if seed in finished]


def _finished_seed_runs(experiment: str, prefix: str) -> dict[int, TrialRecord]:
    """seed -> the finished trial that trained it, over every `<prefix>-*` run in the folder."""
    fs, root = storage.filesystem(experiment)
    runs = [info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(prefix + "-")]
    finished: dict[int, TrialRecord] = {}
    for run in sorted(runs):
        location = storage.join(experiment, run.rsplit("/", 1)[-1])
        if not has_state(location):
            continue
        for record in read_trials(location):
            if record.ray_status == "TERMINATED" and record.checkpoints:
                finished[int(record.hparams["seed"])] = record
    return finished
