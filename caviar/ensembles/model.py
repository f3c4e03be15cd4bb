"""`Ensemble`: member networks and their weights, predicting the weighted mean of their
probabilities; saved as one folder (members/ and ensemble.json) and loaded back from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from caviar.ensembles.members import member_state, model_from_member_state
from caviar.ensembles.selection import combine
from caviar.ensembles.views import views
from caviar.errors import ConfigError
from caviar.layout import ENSEMBLE_FILE, MEMBERS_DIR
from caviar.training.data import CIFAR10_MEAN, CIFAR10_STD
from caviar.training.train import pick_device, predict_logits

Images = np.ndarray | torch.Tensor  # (N, 3, H, W) NCHW: uint8 0..255, or float 0..1


class Ensemble:
    """Models and their weights; `predict` is the weighted average of their probabilities.

    With `flip`, each member's probabilities are the mean over the image and its mirror image
    (test-time augmentation): members trained with random horizontal flips (data.augment.flip) saw both
    views in training, so the two are a second, free, ensemble inside each member. With `translate`,
    each view moved by a pixel diagonally both ways counts too (caviar.ensembles.views).
    """

    def __init__(self, models: list[nn.Module], weights: np.ndarray, names: list[str], descriptions: list[dict],
                 flip: bool = False, translate: bool = False):
        self.device = pick_device()
        self.models = [m.to(self.device).eval() for m in models]
        self.weights = np.asarray(weights, dtype=np.float64)
        self.names, self.descriptions = list(names), list(descriptions)
        self.flip = bool(flip)
        self.translate = bool(translate)
        # The dataset's per-channel statistics every member was trained with (one dataset per
        # ensemble, checked); ensembles saved before per-dataset statistics were trained with CIFAR-10's.
        check_members_agree(self.names, self.descriptions)
        first = self.descriptions[0] if self.descriptions else {}
        self.mean = tuple(first.get("mean", CIFAR10_MEAN))
        self.std = tuple(first.get("std", CIFAR10_STD))
        self.image_size = int(first.get("image_size", 32))
        self.class_names = [str(n) for n in first.get("class_names") or []]  # [] where the members predate names

    def member_probs(self, images: Images, batch_size: int | str = "auto", flip: bool | None = None,
                     translate: bool | None = None) -> np.ndarray:
        """(members, N, classes) softmax probabilities, float64; `flip` and `translate` (default: the
        ensemble's own) say which views each member is averaged over (caviar.ensembles.views)."""
        x = _as_uint8_images(images)
        shown = views(x, self.flip if flip is None else flip, self.translate if translate is None else translate)
        return np.stack([
            np.sum([weight * torch.softmax(predict_logits(m, v, batch_size=batch_size, stats=(self.mean, self.std)),
                                           dim=1).double().numpy()
                    for v, weight in shown], axis=0)
            for m in self.models
        ])

    def predict(self, images: Images, batch_size: int | str = "auto") -> np.ndarray:
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
        document["translate"] = self.translate
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
                   flip=document.get("flip") is True,  # ensembles saved before flips were an option: none
                   translate=document.get("translate") is True)


# What every member of one ensemble must share: one prediction is the mean of theirs over the same
# pixels, so members that saw other statistics, sizes or classes would be averaged wrongly.
MUST_AGREE = ("num_classes", "class_names", "image_size", "mean", "std")


def check_members_agree(names: list[str], descriptions: list[dict[str, Any]]) -> None:
    """A ConfigError naming the members and what differs where they disagree on anything in
    MUST_AGREE; a value a member does not record (older checkpoints) is not compared."""
    for key in MUST_AGREE:
        groups: dict[str, list[str]] = {}
        for name, description in zip(names, descriptions):
            value = description.get(key)
            if value is None or (isinstance(value, (list, tuple)) and not value):
                continue
            shown = [round(float(v), 6) for v in value] if key in ("mean", "std") else value
            groups.setdefault(json.dumps(shown), []).append(name)
        if len(groups) > 1:
            differ = "; ".join(f"{', '.join(group[:4])}{', ...' * (len(group) > 4)}: {_short(value)}"
                               for value, group in groups.items())
            raise ConfigError(f"the ensemble's members disagree on {key} ({differ}): members must be trained on the "
                              "same data, at the same image size; build the ensemble from one experiment's "
                              "members, or leave out the ones from other data")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _as_uint8_images(images: Images) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) NCHW, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point():  # 0..1 floats (as torchvision's ToTensor makes) -> the uint8 the models saw
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)
    raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {x.dtype}")
