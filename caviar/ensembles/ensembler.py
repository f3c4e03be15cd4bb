"""`ensemble()`: members gathered from an experiment folder -> weights chosen on validation ->
evaluated on test -> saved. Each step is a function; the test set is read in the third only.

The module is `ensembler`, not `ensemble`, so the public function `caviar.ensemble` never
shadows it (see docs/development.md, Layout). `Ensemble`, `EnsembleResult` and `describe` live in model.py and
result.py and are importable from here too.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from caviar import storage
from caviar.config.durations import parse_duration
from caviar.config.scales import derived_seed
from caviar.config.schema import Config
from caviar.ensembles.members import (
    KINDS,
    Member,
    average_members,
    load_models,
    rank_trials,
    seed_members,
    snapshot_members,
    top_members,
)
from caviar.ensembles.model import Ensemble
from caviar.ensembles.result import EnsembleResult, check_output_folder, describe
from caviar.ensembles.selection import SELECTORS, ChosenWeights, accuracy, choose_weights, combine, ece, nll
from caviar.errors import ConfigError
from caviar.layout import CONFIG_FILE, ENSEMBLE_DIR, TRIAL_PREFIX
from caviar.results.folder import ExperimentFolder
from caviar.results.leaderboard import SINKING, own_epochs
from caviar.search import tracking
from caviar.search.reader import TrialRecord
from caviar.search.reruns import rerun_with_seeds
from caviar.training.data import estimated_test_images, held_out_test_set
from caviar.training.identity import experiment_data
from caviar.training.settings import TRIAL_EPOCHS_KEY

__all__ = ["Ensemble", "EnsembleResult", "check_output_folder", "describe", "ensemble", "experiment_sweeps",
           "mirror_fits", "rerun_hparams", "seeds_that_fit"]

# Part of an ensemble budget kept for loading and evaluating the members (and Ray's start).
ENSEMBLE_RESERVE = 0.15
ENSEMBLE_RESERVE_S = 20.0


@dataclass(frozen=True)
class Predictions:
    """One split as the members see it."""

    probs: np.ndarray  # (members, N, classes) probabilities, float64
    labels: np.ndarray  # (N,) ints


def ensemble(
    experiment: str | Path,
    *,
    top_k: int = 5,
    seeds: int = 3,
    average: bool = True,
    snapshots: int = 0,
    select: str = "greedy",
    out: str | Path | None = None,
    address: str | None = None,
    overrides: list[str] | None = None,
    budget: str | float | None = None,
    flip: bool | None = None,
    translate: bool = False,
) -> EnsembleResult:
    """Build, evaluate and save the ensemble of an experiment folder (local path or URI).

    Weights are chosen on the validation split; the test set is read only after that.
    `overrides` ("key=value") adjust the saved config, e.g. ``data.root=/elsewhere``. A staged
    experiment's folder draws members from every stage. `budget` (e.g. "5m") caps the seed
    re-runs at as many as fit in it, with time kept for evaluating the members. `flip` averages
    each member over the image and its mirror image; None (the default) does so when the members
    trained with flips (`data.augment`) and, under a `budget`, the second view fits in it.
    `translate` averages each of those views moved by a pixel diagonally both ways too (three
    times the evaluation; for members that trained with random crops).
    """
    _check_options(select, top_k, seeds, snapshots)
    deadline = time.time() + parse_duration(budget) if budget is not None else None
    folder, config = _open(experiment, overrides)
    target = str(out) if out is not None else folder.file(ENSEMBLE_DIR)
    tracking.check(config)  # a tracker that cannot run is said now, not after the evaluation
    # the data the members trained on, or a refusal before anything is written, re-run or evaluated
    data = experiment_data(config, folder.path, "ensemble the experiment", subset=False)
    check_output_folder(target)

    # 1. gather the members
    members, seeds = gather_members(folder.path, config, overrides, top_k=top_k, seeds=seeds, average=average,
                                    snapshots=snapshots, address=address, deadline=deadline)
    chosen, ens = load_ensemble(members, config, folder.path, flip)
    ens.translate = translate

    # 2. choose the weights on validation
    if flip is None and ens.flip and deadline is not None:  # the mirror view doubles the evaluation
        images = len(data.val_y) + estimated_test_images(config.data.root, config.data.format)
        ens.flip = mirror_fits(ens, data.val_x, images, deadline - time.time())
    val = Predictions(ens.member_probs(data.val_x), data.val_y)
    weights = choose_weights(val.probs, val.labels, kind_groups([m.kind for m in chosen]), select)
    ens.weights = weights.overall

    # 3. evaluate on test: the weights are fixed, the test set is read only now
    test = evaluate_on_test(ens, config)

    # 4. save
    settings = {"top_k": top_k, "seeds": seeds, "average": average, "snapshots": snapshots, "select": select,
                "flip": ens.flip, "translate": ens.translate}
    result = _result(ens, chosen, weights, val, test, experiment=folder.path, config=config, settings=settings)
    result.save(target)
    tracking.log_ensemble(config, folder.path, target, result.info)
    return result


# ---------------------------------------------------------------- the experiment and its members
def _check_options(select: str, top_k: int, seeds: int, snapshots: int) -> None:
    if select not in SELECTORS:
        raise ConfigError(f"--select {select!r}: expected one of {sorted(SELECTORS)}")
    if top_k < 1 or seeds < 0 or snapshots < 0:
        raise ConfigError("--top-k must be >= 1, --seeds and --snapshots >= 0")


def _open(experiment: str | Path, overrides: list[str] | None) -> tuple[ExperimentFolder, Config]:
    """The experiment folder and its saved config, `overrides` applied."""
    folder = ExperimentFolder(storage.resolve(str(experiment)))
    if not folder.is_experiment():
        raise ConfigError(f"{experiment} is not a caviar experiment folder (no {CONFIG_FILE}); pass the folder "
                          f"`caviar sweep` wrote, e.g. ~/caviar_results/cifar10-asha")
    return folder, folder.config(overrides)


def gather_members(path: str, config: Config, overrides: list[str] | None, *, top_k: int, seeds: int,
                   average: bool, snapshots: int, address: str | None,
                   deadline: float | None) -> tuple[list[Member], int]:
    """The candidate members: the top trials' best checkpoints, their weight averages, snapshots of
    the best trial, and `seeds` re-runs of it (as many as fit before `deadline`, a time.time(), if
    given); and how many re-runs that was."""
    records, home = [], {}  # home: trial id -> the sweep (folder, config) it ran in
    for sweep_path, sweep_config in experiment_sweeps(path, config, overrides):
        for record in _read_best_trials(sweep_path, top_k):
            records.append(record)
            home[record.trial_id] = (sweep_path, sweep_config)
    ranked = rank_trials(records)
    if not ranked:
        raise ConfigError(f"no trial in {path} has a checkpoint (all diverged, failed or never ran)")
    members = top_members(ranked, top_k)
    if average:
        members += average_members(ranked, top_k)
    members += snapshot_members(ranked[0], snapshots)
    best = ranked[0]
    best_path, best_config = home.get(best.trial_id, (path, config))
    hparams = rerun_hparams(best, best_config)
    if deadline is not None:
        seeds = seeds_that_fit(best, hparams[TRIAL_EPOCHS_KEY], seeds, deadline - time.time(), address, best_config)
    if seeds:
        reruns = rerun_with_seeds(best_path, best_config, hparams, _seeds_for(int(best.hparams.get("seed", 0)), seeds),
                                  prefix=f"seeds-{best.trial_id}", address=address)
        members += seed_members(reruns)
    return members, seeds


def experiment_sweeps(path: str, config: Config, overrides: list[str] | None = None) -> list[tuple[str, Config]]:
    """(folder, config) of every sweep in the experiment: the folder itself, or each stage run so far."""
    if not config.stages:
        return [(path, config)]
    sweeps = []
    for index, stage in enumerate(config.stages, start=1):
        folder = ExperimentFolder(path).stage(index, stage.name)
        if folder.is_experiment() and folder.has_ray_state():
            sweeps.append((folder.path, folder.config(overrides)))
    if not sweeps:
        raise ConfigError(f"{path} is a staged experiment with no stage run yet; run it with "
                          f"`caviar sweep --resume {path}`")
    return sweeps


def _read_best_trials(sweep: str, top_k: int) -> list[TrialRecord]:
    """The trials of a sweep the ensemble may draw from: when the sweep has finished, only the best
    few by its leaderboard.csv (reading 10,000 trial folders takes half a minute; the members come
    from the top), else, or when those lack checkpoints, every trial."""
    wanted = max(top_k, 1) * 3 + 10  # room for trials whose checkpoints are gone or damaged
    folder = ExperimentFolder(sweep)
    table = folder.leaderboard() if folder.is_finished() else None  # damaged or not caviar's: read the folders
    if table is not None and {"status", "best_val_acc"} <= set(table.columns) and len(table) > wanted:
        table = table[~table["status"].isin(SINKING)].sort_values("best_val_acc", ascending=False)
        only = {f"{TRIAL_PREFIX}{trial_id}" for trial_id in table["trial_id"].head(wanted)}
        records = folder.trials(only=only)
        if len(rank_trials(records)) >= min(top_k, len(only)):
            return records
    return folder.trials()


def _seeds_for(base: int, count: int) -> list[int]:
    """`count` new seeds derived from the trial's own, so a re-run asks for the same ones again."""
    return [derived_seed(base, i + 1) for i in range(count)]


def rerun_hparams(best: TrialRecord, config: Config) -> dict[str, Any]:
    """The hyperparameters the best trial's seed re-runs train with: its own, without its seed,
    for the epochs it ran to (a trial with a deadline refits its count to its speed: its re-runs
    train that length, not the one the stage first gave it)."""
    history = best.history if best.history is not None else pd.DataFrame()
    epochs = own_epochs(best.hparams, history, config.search.max_epochs)
    return {k: v for k, v in best.hparams.items() if k != "seed"} | {TRIAL_EPOCHS_KEY: epochs}


def seeds_that_fit(best: TrialRecord, epochs: int, wanted: int, seconds: float, address: str | None,
                   config: Config) -> int:
    """How many of `wanted` seed re-runs of the best trial's config, `epochs` epochs each, fit in
    `seconds`, from how long that trial took per epoch, running as many at once as this machine has
    trial slots (on a cluster, `address`, all at once)."""
    history = best.history
    if not wanted or history is None or "time_this_iter_s" not in history or not len(history):
        return wanted
    one_run = float(history["time_this_iter_s"].mean()) * epochs
    slots = wanted if address else max(1, int((os.cpu_count() or 1) / config.resources.cpus_per_trial))
    usable = seconds * (1 - ENSEMBLE_RESERVE) - ENSEMBLE_RESERVE_S
    waves = int(usable // one_run) if one_run > 0 else wanted
    fit = max(0, min(wanted, waves * slots))
    if fit < wanted:
        warnings.warn(f"ensemble budget: {fit} of {wanted} seed re-runs fit (one takes ~{one_run:.0f} s, "
                      f"{slots} at a time, in {seconds:.0f} s less time for evaluation)", stacklevel=2)
    return fit


def load_ensemble(members: list[Member], config: Config, path: str, flip: bool | None) -> tuple[list[Member], Ensemble]:
    """The members that load, and an `Ensemble` of them with equal weights (chosen later);
    `flip` None: mirror-averaged when the members trained with flips."""
    loaded = load_models(members, config.model.family, config.model.num_classes)
    # Mirror-averaging helps only members that saw mirror images: on letters or digits (flip off,
    # or searched and off for some) it would average in another class. `--set data.augment...`
    # given here turns it off too.
    flips = config.data.augment.flip and all(description["flip"] for _, _, description in loaded)
    if not loaded:
        raise ConfigError(f"no usable ensemble member in {path}: every checkpoint was missing or unreadable")
    chosen = [member for member, _, _ in loaded]
    ens = Ensemble([m for _, m, _ in loaded], np.ones(len(loaded)), [m.name for m in chosen],
                   [d for _, _, d in loaded], flip=flips if flip is None else flip)
    return chosen, ens


# ---------------------------------------------------------------- validation, then test
def mirror_fits(ens: Ensemble, sample: np.ndarray, images: int, seconds: float) -> bool:
    """Whether evaluating `images` images over the mirror views too (each also moved, with
    `ens.translate`) fits in `seconds`, timed on a few of `sample` with one view (warns when it
    does not)."""
    few = sample[:256]
    begin = time.perf_counter()
    ens.member_probs(few, flip=False, translate=False)
    per_view = (time.perf_counter() - begin) / max(1, len(few)) * images
    needed = per_view * 2 * (3 if ens.translate else 1)  # caviar.ensembles.views: each view and its two moves
    if needed > seconds:
        warnings.warn(f"ensemble budget: each member is evaluated on one view only; over the mirror images too it "
                      f"would take ~{needed:.0f} s of the {max(0.0, seconds):.0f} s left (pass --flip to have it "
                      "anyway)", stacklevel=2)
        return False
    return True


def kind_groups(kinds: list[str]) -> dict[str, list[int]]:
    """Member indices by kind (in KINDS order, kinds present only), then "all"."""
    groups = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in KINDS}
    return {kind: idx for kind, idx in groups.items() if idx} | {"all": list(range(len(kinds)))}


def evaluate_on_test(ens: Ensemble, config: Config) -> Predictions:
    """The members' probabilities on the test set: the one place `caviar ensemble` reads it."""
    test_x, test_y = held_out_test_set(config)
    return Predictions(ens.member_probs(test_x), test_y)


def _figures(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels), "ece": ece(probs, labels)}


def _member_table(chosen: list[Member], weights: np.ndarray, val: Predictions, test: Predictions) -> pd.DataFrame:
    """One row per member: what it is, its weight, its validation and test figures."""
    rows = []
    for i, member in enumerate(chosen):
        rows.append({"name": member.name, "kind": member.kind, "weight": float(weights[i]),
                     "trial_id": member.trial_id, "epoch": member.epoch, "checkpoint": member.checkpoint.path,
                     "weights": member.weights}
                    | {f"val_{k}": v for k, v in _figures(val.probs[i], val.labels).items()}
                    | {f"test_{k}": v for k, v in _figures(test.probs[i], test.labels).items()})
    return pd.DataFrame(rows).rename(columns={"val_accuracy": "val_acc", "test_accuracy": "test_acc"})


def _result(ens: Ensemble, chosen: list[Member], weights: ChosenWeights, val: Predictions, test: Predictions, *,
            experiment: str, config: Config, settings: dict[str, Any]) -> EnsembleResult:
    """The figures of the ensemble (and of each kind alone) and its members, and ensemble.json's content."""
    table = _member_table(chosen, weights.overall, val, test)
    overall = _figures(combine(test.probs, weights.overall), test.labels)
    by_kind = {kind: _figures(combine(test.probs[idx], weights.by_group[kind]), test.labels) | {"members": len(idx)}
               for kind, idx in weights.groups.items()}
    best_single = table.iloc[int(table["val_nll"].idxmin())]  # chosen on validation, like the ensemble
    info = {
        "experiment": experiment,
        "accuracy": overall["accuracy"], "nll": overall["nll"], "ece": overall["ece"],
        "val_nll": nll(combine(val.probs, weights.overall), val.labels),
        # on the images the weights were chosen on: optimistic, recorded for benchmarks that decide on validation
        "val_accuracy": accuracy(combine(val.probs, weights.overall), val.labels),
        "best_member": {"name": best_single["name"], "accuracy": float(best_single["test_acc"]),
                        "nll": float(best_single["test_nll"]), "ece": float(best_single["test_ece"])},
        "gain_over_best_member": overall["accuracy"] - float(best_single["test_acc"]),
        "by_kind": by_kind,
        "members": [{**row, "accuracy": row["test_acc"]} for row in table.to_dict("records")],
        "settings": settings,
        "provenance": {
            "config": config.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions(),
            "validation_images": int(len(val.labels)), "test_images": int(len(test.labels)),
        },
    }
    return EnsembleResult(overall["accuracy"], overall["nll"], overall["ece"], table, by_kind, ens, info)


def _versions() -> dict[str, str]:
    return {"caviar": _installed("caviar"), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "ray": _installed("ray")}


def _installed(distribution: str) -> str:
    """The installed version of a distribution (read from its metadata, without importing it)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
