"""Babysitting at sweep scale: per-layer statistics of every trial at a few points of its training.

At epoch 0 (initialisation), after epochs 1, 2, 4, 8, ... and after the last epoch, a *probe*
runs one extra training step on a fixed batch (the first images of the trial's training set,
not augmented) and records, per layer:

- activation histograms (outputs of every ReLU/ELU/Tanh; dead ReLUs and saturated tanh show),
- gradient histograms of every weight tensor,
- the update/weight ratio ||dW|| / ||W|| of that step, with the trial's own optimizer state,
  learning rate and gradient clipping (the notes' rule: about 1e-3; much lower learns slowly, much
  higher is unstable).

The probe is measured, then undone: model weights and buffers, optimizer state and the RNG are
restored, so a babysat trial trains exactly as an unobserved one (the ratio is that of the step
the trial would take on that batch, not an average over an epoch). Written into the trial's own
folder: ``tensorboard/`` (TensorBoard events: ``tensorboard --logdir <experiment>``) and
``babysit.jsonl`` (one JSON line per probe, what `caviar report` draws). Plain PyTorch, no Ray.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from caviar.layout import BABYSIT_FILE, TENSORBOARD_DIR
from caviar.training.train import Stats, autocast, prepare_inputs

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

    from caviar.training.trial import Trial  # typing only: trial imports nothing of babysit

PROBE_IMAGES = 128  # images in the probe batch (fewer if the trial's batch is smaller)
HISTOGRAM_VALUES = 65536  # values per histogram at most (a strided sample of the layer's output)
ACTIVATIONS = (nn.ReLU, nn.ELU, nn.Tanh)


def probe_epochs(max_epochs: int) -> set[int]:
    """0 (initialisation), the powers of two up to the budget, and the last epoch."""
    points = {0, max_epochs}
    step = 1
    while step < max_epochs:
        points.add(step)
        step *= 2
    return points


def _sample(values: torch.Tensor) -> torch.Tensor:
    flat = values.detach().reshape(-1)
    stride = max(1, flat.numel() // HISTOGRAM_VALUES)
    return flat[::stride].float().cpu()


def _weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1}


def probe_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    grad_clip: float = 0.0,
    amp: bool = True,
    channels_last: bool = True,
    stats: Stats = None,
) -> dict[str, Any]:
    """One measured training step on (images uint8 (B, 3, H, W), labels (B,)), then undone.

    Returns {"loss", "activations": {layer: values}, "gradients": {weight: values},
    "update_ratio": {weight: ||dW||/||W||}, "weight_norm", "grad_norm"}.
    """
    device = next(model.parameters()).device
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None  # the trial's GPU
    was_training = model.training
    activations: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            activations[name] = _sample(output)  # copied now: an in-place op later cannot change it
        return hook

    hooks = [module.register_forward_hook(keep(f"{name} ({type(module).__name__})"))
             for name, module in model.named_modules() if isinstance(module, ACTIVATIONS)]
    try:
        model.train()
        x = prepare_inputs(images, device, channels_last, stats)
        y = labels.to(device)
        with autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        weights = _weights(model)
        gradients = {name: _sample(p.grad) for name, p in weights.items() if p.grad is not None}
        grad_norm = {name: p.grad.norm().item() for name, p in weights.items() if p.grad is not None}
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        before = {name: p.detach().clone() for name, p in weights.items()}
        optimizer.step()
        ratio = {name: ((p.detach() - before[name]).norm() / before[name].norm().clamp_min(1e-12)).item()
                 for name, p in weights.items()}
        weight_norm = {name: w.norm().item() for name, w in before.items()}
    finally:
        for hook in hooks:
            hook.remove()
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
        model.train(was_training)
    return {"loss": loss.item(), "activations": activations, "gradients": gradients, "update_ratio": ratio,
            "weight_norm": weight_norm, "grad_norm": grad_norm}


def activation_summary(values: torch.Tensor) -> dict[str, float]:
    """Mean, std, fraction exactly zero (dead ReLUs) and fraction saturated (|a| > 0.99, tanh)."""
    return {
        "mean": values.mean().item(),
        "std": values.std().item() if values.numel() > 1 else 0.0,
        "zero_fraction": (values == 0).float().mean().item(),
        "saturated_fraction": (values.abs() > 0.99).float().mean().item(),
    }


class Babysitter:
    """Probes one trial at `probe_epochs` and writes TensorBoard events and babysit.jsonl in `folder`.

    `trial` is a caviar.training.trial.Trial (model, optimizer, hparams, settings, epoch); `folder` None
    turns babysitting off.
    """

    def __init__(self, folder: str | Path | None, trial: Trial, train_x: torch.Tensor, train_y: torch.Tensor):
        self.folder = Path(folder) if folder else None
        self.trial = trial
        count = min(PROBE_IMAGES, int(trial.hparams.get("batch_size", PROBE_IMAGES)), len(train_y))
        self.images, self.labels = train_x[:count], train_y[:count]
        self.points = probe_epochs(trial.settings.max_epochs)
        self.writer = None

    def _writer(self) -> SummaryWriter:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir=str(self.folder / TENSORBOARD_DIR))
        return self.writer

    def maybe_probe(self) -> dict[str, Any] | None:
        """Probe if the trial's current epoch is a probe point; returns what was written."""
        if self.folder is None or self.trial.epoch not in self.points:
            return None
        s = self.trial.settings
        stats = probe_step(self.trial.model, self.trial.optimizer, self.images, self.labels,
                           grad_clip=float(self.trial.hparams.get("grad_clip") or 0), amp=s.amp,
                           channels_last=s.channels_last, stats=s.stats)
        epoch = self.trial.epoch
        writer = self._writer()
        for name, values in stats["activations"].items():
            writer.add_histogram(f"activations/{name}", values.numpy(), epoch)
        for name, values in stats["gradients"].items():
            writer.add_histogram(f"gradients/{name}", values.numpy(), epoch)
        for name, ratio in stats["update_ratio"].items():
            if math.isfinite(ratio):
                writer.add_scalar(f"update_ratio/{name}", ratio, epoch)
        writer.flush()
        record = {
            "epoch": epoch,
            "loss": stats["loss"],
            "update_ratio": stats["update_ratio"],
            "weight_norm": stats["weight_norm"],
            "grad_norm": stats["grad_norm"],
            "activations": {name: activation_summary(v) for name, v in stats["activations"].items()},
        }
        with open(self.folder / BABYSIT_FILE, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        return record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_babysit(trial_folder: str | Path) -> list[dict[str, Any]]:
    """The probes of one trial, one per epoch (a resumed trial's repeat keeps the last), by epoch."""
    path = Path(trial_folder) / BABYSIT_FILE
    if not path.exists():
        return []
    records: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        records[int(record["epoch"])] = record
    return [records[e] for e in sorted(records)]
