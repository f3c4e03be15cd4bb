"""The thin Ray glue: a trial = hyperparameters -> train loop -> `tune.report(metrics, checkpoint)`.

A checkpoint carries everything that rebuilds the trial exactly on another node: weights,
optimizer and scheduler state, the epoch, every RNG state, the hyperparameters and settings.
"""

from __future__ import annotations

import tempfile
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from caviar.config import Config
from caviar.data import SplitData
from caviar.models import build_model
from caviar.train import evaluate, make_optimizer, make_scheduler, pick_device, train_one_epoch

CHECKPOINT_PATTERN = "epoch=*-val_acc=*.pt"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares (not searched): from the resolved config."""

    family: str
    width: float
    num_classes: int
    max_epochs: int
    augment: bool
    eval_batch_size: int
    amp: bool
    channels_last: bool
    threads: int  # torch compute threads = the CPUs the trial was given (more only oversubscribes)

    @classmethod
    def from_config(cls, config: Config) -> "TrialSettings":
        return cls(
            family=config.model.family,
            width=config.model.width,
            num_classes=config.model.num_classes,
            max_epochs=config.search.max_epochs,
            augment=config.data.augment,
            eval_batch_size=config.train.eval_batch_size,
            amp=config.train.amp,
            channels_last=config.train.channels_last,
            threads=max(1, int(config.resources.cpus_per_trial)),
        )


def checkpoint_name(epoch: int, val_acc: float) -> str:
    """A name that sorts by quality in a folder listing: ``epoch=007-val_acc=0.8123.pt``."""
    return f"epoch={epoch:03d}-val_acc={val_acc:.4f}.pt"


def find_checkpoint_file(folder: str | Path) -> Path:
    files = sorted(Path(folder).glob(CHECKPOINT_PATTERN))
    if not files:
        raise FileNotFoundError(f"no {CHECKPOINT_PATTERN} file in checkpoint folder {folder}")
    return files[-1]


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _as_tensors(data: SplitData, device: torch.device) -> tuple[torch.Tensor, ...]:
    # The arrays come read-only from Ray's object store; torch warns about that but we never
    # write to them, and sharing them (no copy) keeps one copy of the dataset per node on CPU.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensors = [torch.from_numpy(a) for a in (data.train_x, data.train_y, data.val_x, data.val_y)]
    return tuple(t.to(device) for t in tensors)


def trial_seed(hparams: dict[str, Any]) -> int:
    if "seed" in hparams:
        return int(hparams["seed"])
    return zlib.crc32(repr(sorted(hparams.items())).encode())


def train_trial(hparams: dict[str, Any], data: SplitData, settings: TrialSettings) -> None:
    """Ray Tune function trainable: one trial from `hparams`, resuming from its last checkpoint."""
    torch.set_num_threads(settings.threads)
    device = pick_device()
    seed = trial_seed(hparams)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)  # shuffling and augmentation

    train_x, train_y, val_x, val_y = _as_tensors(data, device)
    model = build_model(settings.family, hparams, width=settings.width, num_classes=settings.num_classes).to(device)
    if settings.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(
        hparams["optimizer"], model.parameters(), hparams["lr"], hparams["momentum"], hparams["weight_decay"]
    )
    scheduler = make_scheduler(hparams["lr_schedule"], optimizer, settings.max_epochs)

    epoch = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint_file(find_checkpoint_file(folder))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        generator.set_state(state["rng"]["generator"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        epoch = int(state["epoch"])

    eval_kwargs = dict(batch_size=settings.eval_batch_size, amp=settings.amp, channels_last=settings.channels_last)
    while epoch < settings.max_epochs:
        epoch += 1
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(
            model,
            optimizer,
            train_x,
            train_y,
            batch_size=int(hparams["batch_size"]),
            generator=generator,
            augment=settings.augment,
            grad_clip=float(hparams.get("grad_clip") or 0),
            amp=settings.amp,
            channels_last=settings.channels_last,
        )
        metrics: dict[str, Any] = {"epoch": epoch, "lr": lr, "diverged": not stats.finite}
        if not stats.finite:
            # Stop this trial now; ASHA sees the worst score and the sweep goes on.
            tune.report({**metrics, "train_loss": float("nan"), "val_acc": 0.0, "val_loss": float("nan")})
            return
        val_loss, val_acc = evaluate(model, val_x, val_y, **eval_kwargs)
        scheduler.step()
        metrics.update(
            train_loss=stats.loss,
            train_acc=stats.acc,
            val_loss=val_loss,
            val_acc=val_acc,
            update_ratio=stats.update_ratio,
        )
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state()}
            | ({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}),
            "hparams": dict(hparams),
            "settings": asdict(settings),
            "metrics": {k: v for k, v in metrics.items()},
        }
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / checkpoint_name(epoch, val_acc))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
