"""The single recipes caviar's flows are measured against, each trained for the same wall-clock
budget on the same cores (seeds in parallel, one process each) and ensembled over its seeds:

- `convnet`: the hand-picked 3-block convnet and Adam recipe (a floor);
- `textbook`: the flow's own experiment file with its first `search.points` entry, the textbook
  setting its space is centred on, trained the whole budget with caviar's Trial: the same model,
  epochs, weight averaging and mirror test-time averaging caviar's members get;
- `airbench`: airbench94's network and recipe from the PyPI package (benchmarks/airbench_cpu.py).

Every seed trains until the deadline, then predicts the test set once; nothing is chosen on it.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONVNET_EXPERIMENT = "experiments/default.yaml"
# The hand-picked model and recipe (momentum = Adam's beta1).
CONVNET = dict(optimizer="adam", lr=1e-3, lr_schedule="cosine", batch_size=128, conv_layers=3, conv_width=64,
               batch_norm=True, activation="relu", init="he", fc_layers=1, fc_width=128, dropout=0.2,
               weight_decay=1e-4, grad_clip=0, momentum=0.9)
NAMES = ("convnet", "textbook", "airbench")


def textbook_hparams(config: Any) -> dict[str, Any]:
    """The experiment's first `search.points` entry, completed with the space's fixed values (as Ray
    completes a point); a hyperparameter that is searched and not in the point is an error."""
    from caviar.config.space import Choice, Range

    if not config.search.points:
        raise SystemExit("textbook baseline: the experiment has no search.points entry to train")
    point = dict(config.search.points[0])
    searched = []
    for name in type(config.space).model_fields:
        value = getattr(config.space, name)
        if name in point or value is None:
            continue
        if isinstance(value, (Range, Choice, dict)):
            searched.append(name)
        else:
            point[name] = value
    if searched:
        raise SystemExit(f"textbook baseline: search.points[0] leaves {searched} to the search; give each a value")
    return point


def _caviar_seed(root: str, val_size: int, seed: int, deadline: float, threads: int, experiment: str,
                 hparams: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """One seed of a recipe trained with caviar's Trial, in its own process, until `deadline`
    (time.time()): epoch 1 is timed and the schedule set to span what fits; a trial with weight
    averaging refits its length to the deadline as caviar's stages do (Trial.refit, which counts
    the averaged epochs' extra passes). At the end the weights it keeps, the trained or the
    averaged ones, are chosen on validation, as caviar's ensemble chooses its members."""
    import torch

    from caviar.config.loading import load_config
    from caviar.training.data import data_for, load_test_set
    from caviar.training.train import evaluate, predict_logits
    from caviar.training.trial import Trial, TrialSettings, data_tensors

    begin = time.time()
    torch.set_num_threads(threads)
    config = load_config(str(REPO / experiment), [f"data.root={root}", f"data.val_size={val_size}",
                         "data.download=false", f"resources.cpus_per_trial={threads}", *overrides])
    data = data_for(config)  # the config's split (and data.train_subset, where an override sets one)
    test_x, test_y = load_test_set(root, download=False)
    settings = TrialSettings.from_config(config, data)
    trial = Trial(hparams | {"seed": seed}, settings)
    train_x, train_y, val_x, val_y = data_tensors(data, trial.device)
    test_x = torch.from_numpy(test_x)
    s = trial.settings
    kw = dict(batch_size=s.eval_batch_size, amp=s.amp, channels_last=s.channels_last, stats=s.stats)
    probe = min(512, len(test_x))
    t = time.perf_counter()
    predict_logits(trial.model, test_x[:probe], **kw)
    views = 2 if s.flip else 1
    reserve = 1.5 * views * (time.perf_counter() - t) * len(test_x) / probe + 1.0  # the test passes, a margin
    if s.average != "none":
        trial.settings = replace(trial.settings, ends_by=deadline - reserve)
    history, stopped = [], False
    t = time.perf_counter()
    history.append(trial.run_epoch(train_x, train_y, val_x, val_y) | {"s": time.perf_counter() - t})
    first_s = epoch_s = history[-1]["s"]
    trial.respan(max(1, 1 + int((deadline - time.time() - reserve) / epoch_s)))
    while not trial.finished and not history[-1]["diverged"]:
        if trial.settings.ends_by is not None:
            trial.refit(epoch_s, time.time())
        if time.time() + epoch_s * (1.5 if trial.averages(trial.epoch + 1) else 1.0) + reserve > deadline:
            stopped = True
            break
        t = time.perf_counter()
        history.append(trial.run_epoch(train_x, train_y, val_x, val_y) | {"s": time.perf_counter() - t})
        if not trial.averages(trial.epoch):
            epoch_s = history[-1]["s"]
    model, kept = trial.model, "trained"
    if trial.averaged is not None:
        _, avg_val = evaluate(trial.averaged.module, val_x, val_y, **kw)
        _, own_val = evaluate(trial.model, val_x, val_y, **kw)
        if avg_val >= own_val:
            model, kept = trial.averaged.module, "averaged"
    _, val_acc = evaluate(model, val_x, val_y, **kw)
    probs = torch.softmax(predict_logits(model, test_x, **kw), 1).numpy().astype(np.float32)
    # The mirrored view: caviar's ensemble averages each member over both when it trained with flips.
    mirrored = torch.softmax(predict_logits(model, test_x.flip(3), **kw), 1).numpy().astype(np.float32)
    views = (probs + mirrored) / 2 if s.flip else probs
    val_probs = torch.softmax(predict_logits(model, val_x, **kw), 1)
    val_views = (val_probs + torch.softmax(predict_logits(model, val_x.flip(3), **kw), 1)) / 2 if s.flip else val_probs
    return {"seed": seed, "hparams": hparams, "epochs": trial.epoch, "max_epochs": trial.settings.max_epochs,
            "passes": round(trial.epoch * _epoch_images(s, len(train_y)) / len(train_y), 2),
            "stopped_at_deadline": stopped, "diverged": bool(history[-1]["diverged"]), "kept": kept,
            "flip": bool(s.flip), "first_epoch_s": round(first_s, 2), "last_epoch_s": round(epoch_s, 2),
            "val_acc": val_acc, "val_acc_by_epoch": [h.get("val_acc") for h in history],
            "avg_val_acc_by_epoch": [h.get("avg_val_acc") for h in history if "avg_val_acc" in h],
            "test_acc": float((probs.argmax(1) == test_y).mean()), "test_acc_views": _acc(views, test_y),
            "wall_s": round(time.time() - begin, 1), "probs": probs, "view_probs": views,
            "val_view_probs": val_views.numpy().astype(np.float32)}


def _acc(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def _epoch_images(settings: Any, n: int) -> int:
    from caviar.training.train import images_per_epoch

    return images_per_epoch(n, settings.epoch_size)


def convnet_seed(root: str, val_size: int, seed: int, deadline: float, threads: int, experiment: str,
                 extra: dict) -> dict:
    return _caviar_seed(root, val_size, seed, deadline, threads, CONVNET_EXPERIMENT, CONVNET | extra,
                        ["average.method=none"])


def textbook_seed(root: str, val_size: int, seed: int, deadline: float, threads: int, experiment: str,
                  extra: dict) -> dict:
    """The experiment's first search point, with `extra` hyperparameters on top (an A/B of a trainer option)."""
    from caviar.config.loading import load_config

    point = textbook_hparams(load_config(str(REPO / experiment), ["data.download=false"])) | extra
    return _caviar_seed(root, val_size, seed, deadline, threads, experiment, point, [])


def airbench_seed(root: str, val_size: int, seed: int, deadline: float, threads: int, experiment: str,
                  extra: dict) -> dict:
    if extra:
        raise SystemExit("airbench runs its own recipe: hyperparameters on top apply to convnet and textbook only")
    import airbench_cpu

    return airbench_cpu.train_seed(root, val_size, seed, deadline, threads)


SEED_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "convnet": convnet_seed, "textbook": textbook_seed, "airbench": airbench_seed}
# What each recipe's headline figure averages: the views its own evaluation uses (caviar's mirror
# averaging for the recipes trained with caviar's Trial, airbench its own TTA); the one-view figure
# is recorded beside it.
VIEWS = {"convnet": "mirror-averaged where it trained with flips",
         "textbook": "mirror-averaged where it trained with flips",
         "airbench": "airbench's own test-time augmentation (mirror + translate)"}


def run_baseline(name: str, root: Path, val_size: int, budget_s: float, slots: int, threads: int,
                 experiment: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`slots` seeds of baseline `name` in parallel until the budget is spent; their ensemble (mean
    of softmax probabilities) and the best seed chosen on validation, on the test set. `extra`:
    hyperparameters set on top of the recipe's (caviar's Trial baselines only)."""
    from caviar.training.data import load_test_set

    if name == "airbench":
        import airbench_cpu

        airbench_cpu.ensure_installed()
    print(f"[{time.strftime('%H:%M:%S')}] {name} baseline: {slots} seeds in parallel, {int(budget_s)}s", flush=True)
    begin = time.time()
    deadline = begin + budget_s
    seeds: list[dict[str, Any]] = []
    error = None
    # spawn: a fresh interpreter per seed (no forked Ray or torch thread state)
    with mp.get_context("spawn").Pool(slots) as pool:
        jobs = [pool.apply_async(SEED_FUNCTIONS[name], (str(root), val_size, seed, deadline, threads, experiment,
                                                                 dict(extra or {})))
                for seed in range(slots)]
        for job in jobs:
            try:
                seeds.append(job.get(timeout=max(1.0, deadline + 60 + 0.1 * budget_s - time.time())))
            except mp.TimeoutError:
                error = "a seed ran past the deadline and was stopped"
            except Exception as e:  # a seed that failed: report it, keep the others
                error = f"a seed failed: {type(e).__name__}: {e}"
    _, test_y = load_test_set(root, download=False)
    record: dict[str, Any] = {"baseline": name, "views": VIEWS[name], "slots": slots, "threads_per_seed": threads,
                              "budget_s": budget_s}
    if seeds:
        one_view = np.mean([s.pop("probs") for s in seeds], axis=0)
        views = np.mean([s.pop("view_probs") for s in seeds], axis=0)
        for s in seeds:
            s.pop("val_view_probs", None)
        best = max(seeds, key=lambda s: s["val_acc"] or 0)  # chosen on validation, like ensemble.json's best_member
        record |= {"ensemble_acc": _acc(views, test_y), "ensemble_acc_one_view": _acc(one_view, test_y),
                   "best_single_acc": best["test_acc_views"], "seed_accs": [s["test_acc_views"] for s in seeds],
                   "best_member": f"seed {best['seed']}", "trials": len(seeds),
                   "trial_epochs": sum(s["epochs"] for s in seeds),
                   "passes": round(sum(s["passes"] for s in seeds), 2), "seeds": seeds,
                   "hparams": seeds[0]["hparams"]}
        record["gain"] = record["ensemble_acc"] - record["best_single_acc"]
    record["wall_s"] = round(time.time() - begin, 1)
    return record | ({"error": error} if error else {})
