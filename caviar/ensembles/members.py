"""Ensemble members from an experiment folder: which checkpoints, and the models they rebuild.

The four kinds the notes list: the top trials of the search at their best checkpoint (`top`),
the running average of weights those trials kept (`average`), the best config retrained from new
random seeds (`seed`), and checkpoints from other epochs of the best trial (`snapshot`).
"""

from __future__ import annotations

import math
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from caviar.training.data import CIFAR10_MEAN, CIFAR10_STD
from caviar.training.models import build_model
from caviar.training.trial import load_saved_checkpoint, model_from_state

if TYPE_CHECKING:  # caviar.search imports Ray: only the type is needed here
    from caviar.search.reader import TrialRecord

KINDS = ("top", "average", "seed", "snapshot")


class Checkpoint(Protocol):
    """What a member needs of a Ray Tune checkpoint (`tune.Checkpoint`, from caviar.search.reader)."""

    @property
    def path(self) -> str: ...  # its folder, local or a URI

    def as_directory(self) -> AbstractContextManager[str]: ...  # a local folder holding its files


@dataclass
class Member:
    name: str  # unique, e.g. top1-3f2a1_00004, avg-3f2a1_00004, seed-1234567, snap-e007-3f2a1_00004
    kind: str  # one of KINDS
    trial_id: str
    checkpoint: Checkpoint  # a Ray Tune checkpoint (local folder or URI)
    weights: str  # "model" (raw weights) or "averaged"
    epoch: int
    sweep_val_acc: float  # what the sweep reported for these weights on the validation split


def _val_acc(metrics: dict[str, Any], key: str = "val_acc") -> float:
    value = metrics.get(key)
    return float(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else math.nan


def rank_trials(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials with a usable checkpoint, best validation accuracy first (diverged ones have none)."""
    usable = [r for r in records if r.checkpoints]
    return sorted(usable, key=lambda r: -_val_acc(r.checkpoints[0][1]))


def top_members(ranked: list[TrialRecord], top_k: int) -> list[Member]:
    return [
        Member(f"top{i + 1}-{r.trial_id}", "top", r.trial_id, r.checkpoints[0][0], "model",
               int(r.checkpoints[0][1].get("epoch", 0)), _val_acc(r.checkpoints[0][1]))
        for i, r in enumerate(ranked[:top_k])
    ]


def average_members(ranked: list[TrialRecord], top_k: int) -> list[Member]:
    """The averaged weights in each top trial's latest checkpoint (where averaging had started),
    unless they score below the trial's own best checkpoint on validation: an average is a member
    for what it adds over the weights it averages, and one that is worse than them is left out."""
    members, worse = [], []
    for r in ranked[:top_k]:
        last = r.history.iloc[-1].to_dict() if r.history is not None and len(r.history) else {}
        if r.latest is not None and not math.isnan(_val_acc(last, "avg_val_acc")):
            averaged, source = _val_acc(last, "avg_val_acc"), _val_acc(r.checkpoints[0][1])
            if averaged < source:
                worse.append(f"avg-{r.trial_id} (validation {averaged:.4f} < {source:.4f})")
                continue
            members.append(Member(f"avg-{r.trial_id}", "average", r.trial_id, r.latest, "averaged",
                                  int(last.get("epoch", 0)), averaged))
    if worse:
        warnings.warn(f"left out {len(worse)} weight average(s) that score below their own trial's best checkpoint "
                      f"on validation: {', '.join(worse)}", stacklevel=2)
    if ranked and not members and not worse:
        warnings.warn("no averaged weights in the top trials, so the ensemble has no `average` members: the "
                      "experiment ran with average.method none, or averaging never started (SWA needs 2 or more "
                      "epochs after average.start x search.max_epochs; lower average.start or use ema)",
                      stacklevel=2)
    return members


def snapshot_members(best: TrialRecord, count: int) -> list[Member]:
    """Other kept checkpoints (other epochs) of the best trial, best first."""
    return [
        Member(f"snap-e{int(m.get('epoch', 0)):03d}-{best.trial_id}", "snapshot", best.trial_id, checkpoint, "model",
               int(m.get("epoch", 0)), _val_acc(m))
        for checkpoint, m in best.checkpoints[1 : 1 + count]
    ]


def seed_members(records: list[TrialRecord]) -> list[Member]:
    return [
        Member(f"seed-{r.hparams['seed']}", "seed", r.trial_id, r.checkpoints[0][0], "model",
               int(r.checkpoints[0][1].get("epoch", 0)), _val_acc(r.checkpoints[0][1]))
        for r in records if r.checkpoints
    ]


def load_member(member: Member) -> dict[str, Any]:
    """The checkpoint's saved state (weights_only); raises on a missing or corrupt file."""
    return load_saved_checkpoint(member.checkpoint)


def load_models(members: list[Member], family: str, num_classes: int | None) -> list[tuple[Member, nn.Module, dict]]:
    """(member, model, description) for every member that loads; the rest are skipped with a
    warning naming the checkpoint. Checkpoints of another family or class count (None: the first
    member's) are refused, not mixed."""
    loaded = []
    for member in members:
        try:
            state = load_member(member)
            settings = state["settings"]
            num_classes = num_classes or settings["num_classes"]
            if settings["family"] != family or settings["num_classes"] != num_classes:
                raise ValueError(
                    f"it is a {settings['family']} with {settings['num_classes']} classes, but this experiment "
                    f"trains {family} with {num_classes}"
                )
            model = model_from_state(state, member.weights)
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped, not fatal
            warnings.warn(f"skipping ensemble member {member.name}: checkpoint {member.checkpoint.path} "
                          f"is unusable ({type(error).__name__}: {error})", stacklevel=2)
            continue
        description = {"family": settings["family"], "width": settings["width"],
                       "num_classes": settings["num_classes"], "hparams": state["hparams"],
                       # the pixels it trained on: checkpoints from before per-dataset statistics used CIFAR-10's
                       "mean": list(settings.get("mean", CIFAR10_MEAN)), "std": list(settings.get("std", CIFAR10_STD)),
                       "flip": trained_with_flips(state), "image_size": int(settings.get("image_size", 32)),
                       "class_names": list(settings.get("class_names") or [])}  # [] in checkpoints before names
        loaded.append((member, model, description))
    return loaded


def trained_with_flips(state: dict[str, Any]) -> bool:
    """Whether the checkpoint's trial saw mirror images in training (its own `flip`, else the
    sweep's; checkpoints from before augmentations were choices knew one switch, `augment`)."""
    settings, hparams = state["settings"], state["hparams"]
    if hparams.get("flip") is not None:
        return bool(hparams["flip"])
    return bool(settings.get("augment", True)) and bool(settings.get("flip", True))


def member_state(model: nn.Module, description: dict[str, Any]) -> dict[str, Any]:
    """What a saved ensemble stores per member: weights plus what rebuilds the network."""
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **description}


def model_from_member_state(saved: dict[str, Any]) -> nn.Module:
    model = build_model(saved["family"], saved["hparams"], width=saved["width"], num_classes=saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def to_device(models: list[nn.Module], device: torch.device) -> list[nn.Module]:
    return [m.to(device) for m in models]
