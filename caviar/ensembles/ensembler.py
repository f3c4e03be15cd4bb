"""Members from an experiment folder -> weights chosen on validation -> evaluated on test.

The module is `ensembler`, not `ensemble`, so the public function `caviar.ensemble` never
shadows it (see README, Layout).
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import caviar
from caviar import storage
from caviar.config import Config, ConfigError, load_config, read_saved_config
from caviar.config.durations import parse_duration
from caviar.config.scales import derived_seed
from caviar.ensembles.members import (
    KINDS,
    average_members,
    load_models,
    member_state,
    model_from_member_state,
    rank_trials,
    seed_members,
    snapshot_members,
    top_members,
)
from caviar.ensembles.reruns import rerun_with_seeds
from caviar.ensembles.selection import SELECTORS, accuracy, combine, ece, nll
from caviar.layout import (
    CONFIG_FILE,
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    ENSEMBLE_PLOT_FILE as PLOT_FILE,
    MEMBERS_DIR,
    MEMBERS_FILE,
    TRIAL_PREFIX,
    stage_folder,
)
from caviar.results.folder import ExperimentFolder
from caviar.results.leaderboard import SINKING
from caviar.search import tracking
from caviar.search.reader import has_state
from caviar.training.data import load_test_set, prepare_data
from caviar.training.train import pick_device, predict_logits


class Ensemble:
    """Models and their weights; `predict` is the weighted average of their probabilities.

    With `flip`, each member's probabilities are the mean over the image and its mirror image
    (test-time augmentation): members trained with random horizontal flips (data.augment) saw both
    views in training, so the two are a second, free, ensemble inside each member.
    """

    def __init__(self, models: list[nn.Module], weights: np.ndarray, names: list[str], descriptions: list[dict],
                 flip: bool = False):
        self.device = pick_device()
        self.models = [m.to(self.device).eval() for m in models]
        self.weights = np.asarray(weights, dtype=np.float64)
        self.names, self.descriptions = list(names), list(descriptions)
        self.flip = bool(flip)

    def member_probs(self, images: Any, batch_size: int | str = "auto", flip: bool | None = None) -> np.ndarray:
        """(members, N, classes) softmax probabilities, float64; `flip` (default: the ensemble's own)
        says whether each member is averaged over the mirror images too."""
        x = _as_uint8_images(images)
        views = [x, x.flip(3)] if (self.flip if flip is None else flip) else [x]  # NCHW: dim 3 is the width
        return np.stack([
            np.mean([torch.softmax(predict_logits(m, v, batch_size=batch_size), dim=1).double().numpy()
                     for v in views], axis=0)
            for m in self.models
        ])

    def predict(self, images: Any, batch_size: int | str = "auto") -> np.ndarray:
        """(N, classes) probabilities for uint8 NCHW images (0..255) or float NCHW images (0..1)."""
        return combine(self.member_probs(images, batch_size), self.weights)

    def save(self, folder: str | Path, info: dict[str, Any] | None = None) -> None:
        """Write the members with a nonzero weight (weights + what rebuilds them) and ensemble.json."""
        folder = Path(folder)
        (folder / MEMBERS_DIR).mkdir(parents=True, exist_ok=True)
        entries = []
        for i, (model, name, weight, description) in enumerate(zip(self.models, self.names, self.weights,
                                                                   self.descriptions)):
            if weight <= 0:
                continue
            file = f"{MEMBERS_DIR}/{i:02d}-{name}.pt"
            torch.save(member_state(model, description), folder / file)
            entries.append({"name": name, "weight": float(weight), "file": file})
        document = dict(info or {})
        document["saved_members"] = entries
        document["flip"] = self.flip
        (folder / ENSEMBLE_FILE).write_text(json.dumps(document, indent=2, default=str))

    @classmethod
    def load(cls, folder: str | Path) -> "Ensemble":
        folder = Path(folder).expanduser()
        if not (folder / ENSEMBLE_FILE).is_file():
            raise ConfigError(f"{folder} holds no {ENSEMBLE_FILE}; pass the folder `caviar ensemble --out` wrote")
        document = json.loads((folder / ENSEMBLE_FILE).read_text())
        entries = document["saved_members"]
        saved = [torch.load(folder / e["file"], map_location="cpu", weights_only=True) for e in entries]
        return cls([model_from_member_state(s) for s in saved], np.array([e["weight"] for e in entries]),
                   [e["name"] for e in entries], [{k: v for k, v in s.items() if k != "state_dict"} for s in saved],
                   flip=document.get("flip") is True)  # ensembles saved before flips were an option: none


def _as_uint8_images(images: Any) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) NCHW, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point():  # 0..1 floats (as torchvision's ToTensor makes) -> the uint8 the models saw
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)
    raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {x.dtype}")


@dataclass
class EnsembleResult:
    accuracy: float  # on the test set
    nll: float
    ece: float
    members: pd.DataFrame  # one row per member: kind, weight, validation and test figures
    by_kind: dict[str, dict[str, float]]  # the same selection restricted to one kind of member
    ensemble: Ensemble
    info: dict[str, Any] = field(default_factory=dict)  # everything written to ensemble.json

    @property
    def gain(self) -> float:
        """Test accuracy of the ensemble minus that of the best single member (chosen on validation)."""
        return self.info["gain_over_best_member"]

    def predict(self, images: Any) -> np.ndarray:
        return self.ensemble.predict(images)

    def save(self, folder: str) -> None:
        """Ensemble (reloadable with Ensemble.load), ensemble.json, members.csv and the plot."""
        if storage.is_uri(folder):  # write locally, then copy to object storage
            with tempfile.TemporaryDirectory() as local:
                self.save(local)
                import pyarrow.fs

                fs, path = storage.filesystem(folder)
                pyarrow.fs.copy_files(local, path, destination_filesystem=fs)
            return
        target = Path(folder).expanduser()
        check_output_folder(str(target))
        if (target / MEMBERS_DIR).exists():
            shutil.rmtree(target / MEMBERS_DIR)  # stale members of an earlier `caviar ensemble` (checked above)
        self.ensemble.save(target, self.info)
        self.members.to_csv(target / MEMBERS_FILE, index=False)
        _plot(self, target / PLOT_FILE)


def _plot(result: EnsembleResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result.members.sort_values("test_acc")
    colours = {"top": "tab:blue", "average": "tab:green", "seed": "tab:orange", "snapshot": "tab:purple"}
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(table) + 2), 4))
    ax.bar(range(len(table)), table["test_acc"], color=[colours[k] for k in table["kind"]])
    ax.axhline(result.accuracy, color="black", linestyle="--", label=f"ensemble {result.accuracy:.4f}")
    ax.set_xticks(range(len(table)), table["name"], rotation=60, ha="right", fontsize=7)
    low = min(table["test_acc"].min(), result.accuracy)
    ax.set_ylim(max(0, low - 0.05), min(1, max(table["test_acc"].max(), result.accuracy) + 0.02))
    ax.set_ylabel("test accuracy")
    ax.set_title("members (colour = kind) vs ensemble")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles + ax.get_legend_handles_labels()[0], list(colours) + ax.get_legend_handles_labels()[1],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_best_trials(sweep: str, top_k: int) -> list[Any]:
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


def _figures(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels), "ece": ece(probs, labels)}


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
) -> EnsembleResult:
    """Build, evaluate and save the ensemble of an experiment folder (local path or URI).

    Weights are chosen on the validation split; the test set is read only after that.
    `overrides` ("key=value") adjust the saved config, e.g. ``data.root=/elsewhere``. A staged
    experiment's folder draws members from every stage. `budget` (e.g. "5m") caps the seed
    re-runs at as many as fit in it, with time kept for evaluating the members. `flip` averages
    each member over the image and its mirror image; None (the default) does so when the members
    trained with flips (`data.augment`) and, under a `budget`, the second view fits in it.
    """
    if select not in SELECTORS:
        raise ConfigError(f"--select {select!r}: expected one of {sorted(SELECTORS)}")
    if top_k < 1 or seeds < 0 or snapshots < 0:
        raise ConfigError("--top-k must be >= 1, --seeds and --snapshots >= 0")
    path = storage.resolve(str(experiment))
    if not storage.exists(storage.join(path, CONFIG_FILE)):
        raise ConfigError(f"{experiment} is not a caviar experiment folder (no {CONFIG_FILE}); pass the folder "
                          f"`caviar sweep` wrote, e.g. ~/caviar_results/cifar10-asha")
    begin = time.time()
    config: Config = load_config(read_saved_config(path), overrides)
    tracking.check(config)  # a tracker that cannot run is said now, not after the evaluation
    check_output_folder(str(out) if out is not None else storage.join(path, ENSEMBLE_DIR))
    sweeps = experiment_sweeps(path, config, overrides)
    records, home = [], {}  # home: trial id -> the sweep (folder, config) it ran in
    for sweep_path, sweep_config in sweeps:
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
    if budget is not None:
        seeds = seeds_that_fit(best, best_config, seeds, parse_duration(budget) - (time.time() - begin), address)
    if seeds:
        hparams = {k: v for k, v in best.hparams.items() if k != "seed"}
        reruns = rerun_with_seeds(best_path, best_config, hparams, _seeds_for(int(best.hparams.get("seed", 0)), seeds),
                                  prefix=f"seeds-{best.trial_id}", address=address)
        members += seed_members(reruns)

    loaded = load_models(members, config.model.family, config.model.num_classes)
    if not loaded:
        raise ConfigError(f"no usable ensemble member in {path}: every checkpoint was missing or unreadable")
    chosen = [member for member, _, _ in loaded]
    ens = Ensemble([m for _, m, _ in loaded], np.ones(len(loaded)), [m.name for m in chosen],
                   [d for _, _, d in loaded], flip=config.data.augment if flip is None else flip)

    data = prepare_data(config.data.root, val_size=config.data.val_size, split_seed=config.data.split_seed,
                        download=config.data.download)
    if flip is None and ens.flip and budget is not None:
        # The mirror view doubles the evaluation: by default it is left out when it would not fit.
        # (Only the test set's size is used here; its images and labels are evaluated below.)
        images = len(data.val_y) + len(load_test_set(config.data.root, download=config.data.download)[1])
        ens.flip = mirror_fits(ens, data.val_x, images, parse_duration(budget) - (time.time() - begin))
    val_probs = ens.member_probs(data.val_x)
    selector = SELECTORS[select]
    ens.weights = selector(val_probs, data.val_y)
    kinds = [m.kind for m in chosen]
    subsets = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in KINDS}
    subsets = {kind: idx for kind, idx in subsets.items() if idx} | {"all": list(range(len(chosen)))}
    subset_weights = {kind: selector(val_probs[idx], data.val_y) for kind, idx in subsets.items()}
    # ---- selection is fixed above this line; the test set is read only now ----
    test_x, test_y = load_test_set(config.data.root, download=config.data.download)
    test_probs = ens.member_probs(test_x)

    rows = []
    for i, member in enumerate(chosen):
        rows.append({"name": member.name, "kind": member.kind, "weight": float(ens.weights[i]),
                     "trial_id": member.trial_id, "epoch": member.epoch, "checkpoint": member.checkpoint.path,
                     "weights": member.weights}
                    | {f"val_{k}": v for k, v in _figures(val_probs[i], data.val_y).items()}
                    | {f"test_{k}": v for k, v in _figures(test_probs[i], test_y).items()})
    table = pd.DataFrame(rows).rename(columns={"val_accuracy": "val_acc", "test_accuracy": "test_acc"})
    overall = _figures(combine(test_probs, ens.weights), test_y)
    by_kind = {kind: _figures(combine(test_probs[idx], subset_weights[kind]), test_y) | {"members": len(idx)}
               for kind, idx in subsets.items()}
    best_single = table.iloc[int(table["val_nll"].idxmin())]  # chosen on validation, like the ensemble
    info = {
        "experiment": path,
        "accuracy": overall["accuracy"], "nll": overall["nll"], "ece": overall["ece"],
        "val_nll": nll(combine(val_probs, ens.weights), data.val_y),
        "best_member": {"name": best_single["name"], "accuracy": float(best_single["test_acc"]),
                        "nll": float(best_single["test_nll"]), "ece": float(best_single["test_ece"])},
        "gain_over_best_member": overall["accuracy"] - float(best_single["test_acc"]),
        "by_kind": by_kind,
        "members": [{**row, "accuracy": row["test_acc"]} for row in table.to_dict("records")],
        "settings": {"top_k": top_k, "seeds": seeds, "average": average, "snapshots": snapshots, "select": select,
                     "flip": ens.flip},
        "provenance": {
            "config": config.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"caviar": caviar.__version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version(), "ray": _ray_version()},
            "validation_images": int(len(data.val_y)), "test_images": int(len(test_y)),
        },
    }
    result = EnsembleResult(overall["accuracy"], overall["nll"], overall["ece"], table, by_kind, ens, info)
    result.save(str(out) if out is not None else storage.join(path, ENSEMBLE_DIR))
    tracking.log_ensemble(config, path, str(out) if out is not None else storage.join(path, ENSEMBLE_DIR), info)
    return result


def check_output_folder(folder: str) -> None:
    """`folder` can take an ensemble: writable, and any members/ in it is one `caviar ensemble` wrote
    (next to its ensemble.json), since saving replaces it. Checked before any work, and again on save."""
    if storage.is_uri(folder):
        return
    target = Path(folder).expanduser()
    if (target / MEMBERS_DIR).exists() and not (target / ENSEMBLE_FILE).is_file():
        raise ConfigError(f"--out {target}: it holds a members/ folder that `caviar ensemble` did not write (no "
                          f"{ENSEMBLE_FILE} beside it); choose another --out")
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".caviar-write-test-"):
            pass
    except OSError as error:
        raise ConfigError(f"--out {target}: cannot write there ({error.strerror or error}); choose another --out") \
            from None


def experiment_sweeps(path: str, config: Config, overrides: list[str] | None = None) -> list[tuple[str, Config]]:
    """(folder, config) of every sweep in the experiment: the folder itself, or each stage run so far."""
    if not config.stages:
        return [(path, config)]
    sweeps = []
    for index, stage in enumerate(config.stages, start=1):
        folder = storage.join(path, stage_folder(index, stage.name))
        if storage.exists(storage.join(folder, CONFIG_FILE)) and has_state(folder):
            saved = read_saved_config(folder)
            sweeps.append((folder, load_config(saved, overrides)))
    if not sweeps:
        raise ConfigError(f"{path} is a staged experiment with no stage run yet; run it with "
                          f"`caviar sweep --resume {path}`")
    return sweeps


# Part of an ensemble budget kept for loading and evaluating the members (and Ray's start).
ENSEMBLE_RESERVE = 0.15
ENSEMBLE_RESERVE_S = 20.0


def seeds_that_fit(best: Any, config: Config, wanted: int, seconds: float, address: str | None) -> int:
    """How many of `wanted` seed re-runs of the best trial's config fit in `seconds`, from how long
    that trial took per epoch, running as many at once as this machine has trial slots (on a
    cluster, `address`, all at once)."""
    import os

    history = best.history
    if not wanted or history is None or "time_this_iter_s" not in history or not len(history):
        return wanted
    one_run = float(history["time_this_iter_s"].mean()) * config.search.max_epochs
    slots = wanted if address else max(1, int((os.cpu_count() or 1) / config.resources.cpus_per_trial))
    usable = seconds * (1 - ENSEMBLE_RESERVE) - ENSEMBLE_RESERVE_S
    waves = int(usable // one_run) if one_run > 0 else wanted
    fit = max(0, min(wanted, waves * slots))
    if fit < wanted:
        warnings.warn(f"ensemble budget: {fit} of {wanted} seed re-runs fit (one takes ~{one_run:.0f} s, "
                      f"{slots} at a time, in {seconds:.0f} s less time for evaluation)", stacklevel=2)
    return fit


def mirror_fits(ens: Ensemble, sample: Any, images: int, seconds: float) -> bool:
    """Whether evaluating `images` images over both views fits in `seconds`, timed on a few of
    `sample` with one view (warns when it does not)."""
    few = sample[:256]
    begin = time.perf_counter()
    ens.member_probs(few, flip=False)
    needed = 2 * (time.perf_counter() - begin) / max(1, len(few)) * images
    if needed > seconds:
        warnings.warn(f"ensemble budget: each member is evaluated on one view only; over the mirror images too it "
                      f"would take ~{needed:.0f} s of the {max(0.0, seconds):.0f} s left (pass --flip to have it "
                      "anyway)", stacklevel=2)
        return False
    return True


def _ray_version() -> str:
    import ray

    return ray.__version__


def describe(result: EnsembleResult) -> str:
    """The short table `caviar ensemble` prints."""
    shown = result.members[["name", "kind", "weight", "val_acc", "test_acc", "test_nll", "test_ece"]]
    lines = [shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"), ""]
    for kind, figures in result.by_kind.items():
        lines.append(f"{kind + ' only' if kind != 'all' else 'all members':>16}: acc {figures['accuracy']:.4f}  "
                     f"nll {figures['nll']:.4f}  ece {figures['ece']:.4f}  ({figures['members']} members)")
    best = result.info["best_member"]
    if result.ensemble.flip:
        lines.append("each member averaged over the image and its mirror image (--no-flip to leave that out)")
    lines.append(f"ensemble (test): acc {result.accuracy:.4f}  nll {result.nll:.4f}  ece {result.ece:.4f};  "
                 f"best single member {best['name']}: acc {best['accuracy']:.4f}  (gain {result.gain:+.4f})")
    return "\n".join(lines)
