"""`caviar experiments`: one line per shipped experiment: trials, epochs, what it costs, what it reached.

Trials, epochs and passes over the training set are computed from the YAML files themselves, so the
list follows any edit of them. Time comes from one cost figure per model family and device (below,
with where each figure comes from); what an experiment reached is read from the benchmark results
it cites (EVIDENCE).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caviar.config import shipped
from caviar.config.durations import format_hours
from caviar.config.loading import load_config
from caviar.config.schedulers import SCHEDULERS, asha_epochs_per_trial
from caviar.config.schema import Config, StageConfig

# CIFAR-10's training images less the default validation split: one "pass" over the training set.
FULL_TRAIN_IMAGES = 45_000

# Seconds of one trial's training per pass over 45,000 images, per family, plus its evaluation of the
# 5,000 validation images each epoch (about a third of a training step's cost per image, ~4% of a pass).
# CPU: one core, bf16 autocast; docs/benchmark-history.md section 1 measured 4,300 images/s for the smallest
# convnet (10 s per pass) and 208 images/s for ResNet-9 (216 s); the default space's convnets are
# wider and deeper (conv_width up to 256, up to 3 blocks), ~60 s per pass on average (docs/experiments.md: ~3 core-
# hours for the default sweep's ~175 trial-epochs). GPU: NOT measured yet (no GPU was lent to this
# work; benchmarks/bench_gpu.py measures it): an estimate from the convnet's size at 4 trials per GPU.
SECONDS_PER_PASS = {"cpu": {"convnet": 60.0, "resnet": 216.0}, "gpu": {"convnet": 4.0, "resnet": 12.0}}
EVAL_SHARE = 0.04
START_S = 30.0  # Ray's start, loading CIFAR-10, the first trial processes (docs/benchmark-history.md section 3)
TRIALS_PER_GPU = {"convnet": 4, "resnet": 2}  # gpus_per_trial: auto (caviar.sweeps.sweeper.AUTO_GPU_SHARE)

# What each shipped experiment reached: the benchmark results it cites (benchmarks/results/*.json,
# written by benchmarks/bench_search_quality.py), read when the table is printed, so no figure is
# typed twice. Per budget: the runs whose mean (and spread) is reported, and the flow measured.
EVIDENCE: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "cpu-budget": [("30 min", ("search_quality-30m-v13-layers.json", "search_quality-30m-v14-fair.json",
                               "search_quality-30m-v15-fair.json"), "budget"),
                   ("60 min", ("search_quality-60m-v4.json",), "budget")],
    "default": [("30 min", ("search_quality-30m-default.json",), "default")],
    "staged": [("30 min", ("search_quality-30m-staged.json",), "staged")],
}
NOT_BENCHMARKED = {"smoke": "learns on the test suite's fixture (tests/test_cli.py); not benchmarked"}
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # in a source checkout


def fingerprint(path: Path) -> str:
    """What an experiment file asks for, as a hash: its resolved config with unset (null) entries
    left out, so comments, key order and a newly documented `key: null` leave it as it was, and any
    value that changes what runs changes it."""
    def pruned(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: pruned(v) for k, v in value.items() if v is not None}
        return [pruned(v) for v in value] if isinstance(value, list) else value

    text = json.dumps(pruned(load_config(path).to_dict()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _run(path: Path, flow: str) -> dict[str, Any] | None:
    """A cited results file with a figure for `flow`; None when it is missing, damaged or has none
    (the table is printed without it rather than not at all)."""
    try:
        run = json.loads(path.read_text())
        acc = run["results"]["flows"][flow]["ensemble_acc"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    usable = isinstance(acc, (int, float)) and isinstance(run.get("settings"), dict) \
        and isinstance(run.get("machine"), dict)
    return run if usable else None


def reached_table() -> dict[str, str | None]:
    """What each shipped experiment reached, by name (caviar.catalog.REACHED before the move, a typed
    table then)."""
    return {name: reached(name) for name in shipped.names()}


def reached(name: str, results: Path = RESULTS) -> str | None:
    """What `name` reached in the benchmarks it cites: per budget, the mean test accuracy of its
    ensemble over the cited runs with their spread, the data and machine; a run of another version
    of the experiment file than the shipped one is marked stale."""
    if name in NOT_BENCHMARKED:
        return NOT_BENCHMARKED[name]
    cited = EVIDENCE.get(name)
    if not cited:
        return None
    if not results.is_dir():
        return "see docs/benchmarks.md in caviar's repository (its results are not part of this install)"
    current = fingerprint(shipped.path(name))
    parts, where = [], set()
    for budget, files, flow in cited:
        runs = [run for f in files if (run := _run(results / f, flow)) is not None]
        accs = [r["results"]["flows"][flow]["ensemble_acc"] for r in runs]
        if not accs:
            continue
        text = f"{100 * sum(accs) / len(accs):.1f}% at {budget}"
        if len(accs) > 1:
            text += f" (mean of {len(accs)} runs, {100 * min(accs):.1f}-{100 * max(accs):.1f})"
        stale = sum(1 for r in runs if (r["settings"].get("experiment_fingerprint") or {}).get(flow) != current)
        if stale:
            text += f" [stale: {stale} of {len(runs)} run(s) used another version of the file]"
        # the single recipe measured beside it: its own textbook point trained the whole budget
        textbook = [b["ensemble_acc"] for r in runs
                    if (b := ((r["results"].get("baselines") or {}).get("textbook") or {})).get("ensemble_acc")]
        if textbook:
            text += (f", against {100 * sum(textbook) / len(textbook):.1f}% for its first search point trained the "
                     f"whole {budget} ({len(textbook)} run{'s' if len(textbook) > 1 else ''})")
        parts.append(text)
        where |= {(r["settings"].get("data", "?").split(" ")[0], r["machine"].get("nproc")) for r in runs}
    if not parts:
        return None
    data = ", ".join(sorted(f"{d} on {n} cores" for d, n in where))
    return f"{data}: ensemble {'; '.join(parts)} (benchmarks/results, the benchmark history, section 7)"


@dataclass
class Entry:
    name: str
    trials: int  # trials drawn (every stage together)
    epochs: str  # epochs per trial, per stage: "20", "1 / 5 / 20"
    passes: float  # expected passes over the training set, every trial together (ASHA's stopping included)
    budget: str | None  # the file's `budget`: planned to fit it on whatever runs it
    cpu_core_hours: float
    gpu_hours: float  # on one GPU, trials sharing it
    reached: str | None


def asha_trial_epochs(trials: int, max_epochs: int, grace: int, eta: int) -> float:
    """Expected trial-epochs of ASHA over `trials` trials (caviar.config.schedulers)."""
    return trials * asha_epochs_per_trial(max_epochs, grace, eta)


def _sweeps(config: Config) -> list[tuple[int, int, str, float]]:
    """(trials, epochs, scheduler, fraction of the training set per epoch) of each sweep it runs."""
    search = config.search
    if not config.stages:
        return [(search.num_samples, search.max_epochs, search.scheduler, _fraction(config.data.train_subset))]
    return [_stage(config, stage) for stage in config.stages]


def _stage(config: Config, stage: StageConfig) -> tuple[int, int, str, float]:
    subset = config.data.train_subset if stage.train_subset is None else stage.train_subset
    return (stage.from_top or stage.num_samples, stage.epochs, stage.scheduler_run(config.search.scheduler),
            _fraction(subset))


def _fraction(subset: int | float | None) -> float:
    if subset is None or (isinstance(subset, float) and subset == 1.0):
        return 1.0
    return subset if isinstance(subset, float) else min(1.0, subset / FULL_TRAIN_IMAGES)


def entry(name: str) -> Entry:
    config = load_config(shipped.path(name))
    epoch_share = _fraction(config.train.epoch_size)
    passes, trials, epochs = 0.0, 0, []
    for count, max_epochs, scheduler, subset in _sweeps(config):
        search = config.search
        trial_epochs = count * SCHEDULERS[scheduler].epochs_per_trial(max_epochs, search.grace_period,
                                                                      search.reduction_factor)
        passes += trial_epochs * (subset * epoch_share + EVAL_SHARE)
        trials += count
        epochs.append(str(max_epochs))
    family = config.model.family
    return Entry(name, trials, " / ".join(epochs), passes, config.budget,
                 (START_S + passes * SECONDS_PER_PASS["cpu"][family]) / 3600,
                 (START_S + passes * SECONDS_PER_PASS["gpu"][family] / TRIALS_PER_GPU[family]) / 3600,
                 reached(name))


def describe() -> str:
    """The table `caviar experiments` prints, one line per shipped experiment."""
    lines = []
    for name in shipped.names():
        e = entry(name)
        if e.budget:
            cost = f"planned to its budget: {e.budget} (any --budget) on a CPU or a GPU"
        else:
            cost = f"CPU ~{format_hours(e.cpu_core_hours)} of one core (divide by the cores), one GPU ~{format_hours(e.gpu_hours)} (est.)"
        lines.append(f"{name:<11} {e.trials:>4} trials x {e.epochs:<11} epochs  {cost};  "
                     f"reached: {e.reached or 'not benchmarked yet'}")
    lines.append(f"Run one with `caviar sweep NAME` (files: {shipped.FOLDER}); time is estimated from "
                 "~passes over 45,000 images (caviar/catalog.py), GPU figures are not measured yet.")
    return "\n".join(lines)
