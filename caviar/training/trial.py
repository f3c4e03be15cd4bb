"""One trial's training state: built from hyperparameters, advanced an epoch at a time, saved and
restored exactly (weights, optimizer, scheduler, epoch, RNG). Plain PyTorch, no Ray."""

from __future__ import annotations

import contextlib
import time
import warnings
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from caviar.layout import CHECKPOINT_PATTERN, RESUME_FILE, checkpoint_name
from caviar.training.data import SplitData
from caviar.training.models import build_model, whiten_chunk, whitening_layers
from caviar.training.recipe import AlternatingFlips, Lookahead, group_values, param_groups, step_values
from caviar.training.rungs import lr_factor
from caviar.training.settings import (  # noqa: F401 - trials' callers import these from here too
    TRIAL_EPOCHS_KEY,
    TrialSettings,
    effective_average,
)
from caviar.training.train import (
    EpochStats,
    ema_decay,
    evaluate,
    make_optimizer,
    make_scheduler,
    pick_device,
    prepare_inputs,
    reestimate_bn,
    train_one_epoch,
)

# Beside a checkpoint file: the state only resuming needs (RESUME_FILE, see Trial.save).
RESUME_KEYS = ("optimizer", "scheduler", "rng", "lookahead", "flips")

# A trial with a deadline (TrialSettings.ends_by: a budgeted stage that trains the search's best
# configs to the end) fits its epoch count to the speed it measures: the speed the config showed
# in the search, which the stage sized it from, can be a quarter off (another neighbour on the
# machine; docs/benchmark-history.md, section 7).
REFIT_AFTER = 2  # epochs timed before the first refit (the first one is slower: allocations, caches)
REFIT_UNTIL = 0.5  # no refit past half the schedule: a new length moves the LR more the later it comes
# The share of the time left that the remaining epochs are sized to fill: the rest covers the last
# checkpoint and changes of speed (the neighbour a trial shares the machine with).
REFIT_USE = 0.95
# Training images a whitening first layer's filters are computed from (airbench uses 5,000).
WHITEN_IMAGES = 5000


def find_checkpoint_file(folder: str | Path) -> Path:
    files = sorted(Path(folder).glob(CHECKPOINT_PATTERN))
    if not files:
        raise FileNotFoundError(f"no {CHECKPOINT_PATTERN} file in checkpoint folder {folder}")
    return files[-1]


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state, with its resume part (RESUME_FILE beside it) when it still has one."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    resume = Path(path).with_name(RESUME_FILE)
    if resume.is_file():
        state |= torch.load(resume, map_location="cpu", weights_only=True)
    return state


def load_saved_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """The state in a saved checkpoint (a Ray Tune Checkpoint, or anything whose `as_directory()`
    gives its folder); raises on a missing or corrupt file."""
    with checkpoint.as_directory() as folder:
        return load_checkpoint_file(find_checkpoint_file(folder))


def averaged_weights(state: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The averaged model's plain state dict from a checkpoint (None if it has no average)."""
    if "averaged" not in state:
        return None
    prefix = "module."
    return {k[len(prefix):]: v for k, v in state["averaged"].items() if k.startswith(prefix)}


def model_from_state(state: dict[str, Any], weights: str = "model") -> torch.nn.Module:
    """Rebuild the network a checkpoint describes and load its raw or averaged weights."""
    settings = state["settings"]
    model = build_model(settings["family"], state["hparams"], width=settings["width"],
                        num_classes=settings["num_classes"])
    tensors = averaged_weights(state) if weights == "averaged" else state["model"]
    if tensors is None:
        raise ValueError("the checkpoint holds no averaged weights")
    model.load_state_dict(tensors)
    return model.eval()


def trial_seed(hparams: dict[str, Any]) -> int:
    if "seed" in hparams:
        return int(hparams["seed"])
    return zlib.crc32(repr(sorted(hparams.items())).encode())


def bn_sample(n: int, count: int, seed: int) -> torch.Tensor | None:
    """Sorted indices of a seeded random sample of `count` of `n` training images, for
    re-estimating batch-norm statistics; None where the sample would be all of them."""
    if count >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def bn_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The random draws (crops, flips, cutout) of epoch `epoch`'s batch-norm pass of the average:
    seeded by trial and epoch, apart from the trial's training generator, so that the pass neither
    consumes its draws nor depends on where they stand."""
    return torch.Generator(device=device).manual_seed(zlib.crc32(f"batch-norm {seed} {epoch}".encode()))


def data_tensors(data: SplitData, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, val_x, val_y) as tensors on `device`.

    On CPU the arrays from Ray's object store are shared, not copied (one copy of the dataset per
    node, whatever the number of trials); they are read-only, which torch warns about, but
    training never writes to them.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensors = [torch.from_numpy(a) for a in (data.train_x, data.train_y, data.val_x, data.val_y)]
    return tuple(t.to(device) for t in tensors)


class Trial:
    """Model, optimizer, LR schedule and RNGs of one trial, from its hyperparameters."""

    def __init__(self, hparams: dict[str, Any], settings: TrialSettings, device: torch.device | None = None):
        self.hparams, self.settings = dict(hparams), settings.for_trial(hparams)
        settings = self.settings
        self.device = device or pick_device()
        seed = trial_seed(hparams)
        torch.manual_seed(seed)  # weight init and dropout
        # Shuffling and augmentation draw on the trial's device: on a GPU, random numbers made on
        # the CPU would be copied over every step, and each such copy waits for the GPU.
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        model = build_model(settings.family, hparams, width=settings.width, num_classes=settings.num_classes)
        self.model = model.to(self.device)
        if settings.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        lr, weight_decay = step_values(hparams)
        groups = param_groups(self.model, lr, weight_decay, float(hparams.get("bn_lr_scale") or 1.0))
        self.optimizer = make_optimizer(hparams["optimizer"], groups, lr, hparams["momentum"], weight_decay)
        self.lookahead = Lookahead(self.model) if hparams.get("lookahead") else None
        self.flips: AlternatingFlips | None = None  # drawn at the first epoch (it needs the image count)
        self.scheduler = make_scheduler(hparams["lr_schedule"], self.optimizer, settings.max_epochs)
        self.epoch = 0
        self.averaged: AveragedModel | None = None  # created when averaging starts
        # Seconds an averaged epoch adds (Trial.refit): its batch-norm pass and second evaluation,
        # estimated from the timed evaluation of each epoch.
        self.averaging_extra_s = 0.0

    def refit(self, epoch_s: float, now: float) -> int | None:
        """With a deadline (settings.ends_by), set the epoch count to what fits before it at
        `epoch_s` seconds per epoch, and stretch or shrink the LR schedule to it; the new count, or
        None where nothing changed. Only early on (REFIT_AFTER to REFIT_UNTIL of the schedule, before
        averaging starts): there the cosine is nearly flat, so the LR hardly moves, and a trial
        stopped by the deadline half way through its schedule (at a high LR, without its average)
        becomes one that finishes it."""
        ends, planned = self.settings.ends_by, self.settings.max_epochs
        if (ends is None or epoch_s <= 0 or self.epoch < REFIT_AFTER or self.epoch > REFIT_UNTIL * planned
                or self.averaged is not None):
            return None
        seconds = REFIT_USE * (ends - now)
        epochs = self.epoch + max(1, int(seconds / epoch_s))
        # The averaged epochs (the last 1 - average_start of them) each cost averaging_extra_s more
        # (up to ~45% slower on a CPU): sized without it, a trial is cut short at the deadline.
        while epochs > self.epoch + 1 and self._seconds_to_finish(epochs, epoch_s) > seconds:
            epochs -= 1
        if epochs == planned:
            return None
        self.respan(epochs)
        return epochs

    def _seconds_to_finish(self, max_epochs: int, epoch_s: float) -> float:
        settings = self.settings.with_epochs(max_epochs)
        averaged = max_epochs - settings.average_after if settings.average != "none" else 0
        return (max_epochs - self.epoch) * epoch_s + averaged * self.averaging_extra_s

    def respan(self, max_epochs: int) -> None:
        """Make this a trial of `max_epochs` epochs: the LR schedule is rebuilt for that count, at
        the place the epochs run so far reach on it (each epoch gets the LR a trial created with this
        count would have had), and weight averaging starts at its share of the new count."""
        self.settings = self.settings.with_epochs(max_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.scheduler = make_scheduler(self.hparams["lr_schedule"], self.optimizer, max_epochs)
        for _ in range(self.epoch):
            self.scheduler.step()

    def _average(self) -> AveragedModel:
        if self.averaged is None:
            ema = self.settings.average == "ema"
            decay = ema_decay(self.settings.ema_decay, int(self.hparams["batch_size"]))
            multi_avg_fn = get_ema_multi_avg_fn(decay) if ema else None
            self.averaged = AveragedModel(self.model, multi_avg_fn=multi_avg_fn, use_buffers=False)
        return self.averaged

    def averages(self, epoch: int) -> bool:
        """Whether epoch `epoch` (1-based) adds to the running average of weights."""
        return self.settings.average != "none" and epoch > self.settings.average_after

    def _recompute_bn(self, train_x: torch.Tensor) -> None:
        """Batch-norm running statistics of the averaged weights are not the average of the
        statistics: recompute them with a pass over (part of) the training set, augmented as the
        trial trains (reestimate_bn): a seeded random sample, the same images every epoch (data
        written in class order would give the first bn_images only a few classes), with draws of
        their own (bn_generator) so that the training generator, and a resumed trial, are untouched."""
        s = self.settings
        seed = trial_seed(self.hparams)
        idx = bn_sample(len(train_x), s.bn_images, seed)
        images = train_x if idx is None else train_x[idx.to(train_x.device)]
        reestimate_bn(self._average(), images, generator=bn_generator(seed, self.epoch, self.device),
                      batch_size=s.eval_batch_size, **s.augmentation, stats=s.stats, amp=s.amp,
                      channels_last=s.channels_last)

    def _fit_whitening(self, train_x: torch.Tensor) -> None:
        """Fits a whitening first layer (`whiten`) to a seeded sample of normalised training images."""
        layers = [layer for layer in whitening_layers(self.model) if not bool(layer.fitted)]
        if not layers:
            return
        idx = bn_sample(len(train_x), WHITEN_IMAGES, trial_seed(self.hparams))
        images = train_x if idx is None else train_x[idx.to(train_x.device)]
        step = whiten_chunk(images.shape[-1])
        for layer in layers:
            layer.fit(prepare_inputs(images[i:i + step], self.device, False, self.settings.stats)
                      for i in range(0, len(images), step))

    @property
    def finished(self) -> bool:
        return self.epoch >= self.settings.max_epochs

    def run_epoch(self, train_x, train_y, val_x, val_y) -> dict[str, Any]:
        """Train one epoch, evaluate on validation, step the LR schedule; returns the metrics.

        A diverged epoch returns ``diverged=True`` and val_acc 0, and the trial should stop.
        """
        s = self.settings
        if self.epoch == 0:
            self._fit_whitening(train_x)
        if self.hparams.get("alternate_flips") and self.flips is None:
            self.flips = AlternatingFlips.drawn(len(train_x), self.generator)
        self.epoch += 1
        epoch_index, lookahead = self.epoch - 1, self.lookahead
        annealed = bool(s.anneal_at)  # search.anneal: rung: the LR is set per step (caviar.training.rungs)
        if annealed:
            self._anneal_to_rung(epoch_index)

        def after_step(done: float) -> None:
            if lookahead is not None:
                lookahead.step((epoch_index + done) / self.settings.max_epochs)
            if annealed:
                self._anneal_to_rung(epoch_index + done)

        lr = self.optimizer.param_groups[0]["lr"]
        averaging = self.averages(self.epoch)
        stats = train_one_epoch(
            self.model, self.optimizer, train_x, train_y,
            batch_size=int(self.hparams["batch_size"]), generator=self.generator, **s.augmentation, stats=s.stats,
            grad_clip=float(self.hparams.get("grad_clip") or 0), amp=s.amp, channels_last=s.channels_last,
            max_loss=s.max_loss, averaged=self._average() if averaging and s.average == "ema" else None,
            epoch_size=s.epoch_size, label_smoothing=float(self.hparams.get("label_smoothing") or 0.0),
            mirror_of=self.flips, after_step=after_step if lookahead is not None or annealed else None,
        )
        # max_epochs: the trial's epoch count so far (Trial.refit may change it), for the leaderboard
        metrics: dict[str, Any] = {"epoch": self.epoch, "max_epochs": s.max_epochs, "lr": lr,
                                   "diverged": not stats.finite}
        if not stats.finite:
            return metrics | {"train_loss": float("nan"), "val_loss": float("nan"), "val_acc": 0.0}
        if lookahead is not None and self.finished:  # the trained model is the slow weights
            lookahead.finish()
        # Scored (and averaged) as what it would end as: with lookahead, the slow weights, also in
        # an epoch that ASHA or a deadline makes its last.
        with contextlib.nullcontext() if lookahead is None else lookahead.slow_weights():
            return self._score(metrics, stats, averaging, train_x, val_x, val_y)

    def _anneal_to_rung(self, position: float) -> None:
        """Each parameter group's LR for the step at `position` (epochs done): its initial LR times
        the trial's schedule run over the segment between rungs that position is in."""
        factor = lr_factor(self.hparams["lr_schedule"], self.settings.anneal_ends, position)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def _score(self, metrics: dict[str, Any], stats: EpochStats, averaging: bool, train_x, val_x, val_y) -> dict[str, Any]:
        """The epoch's metrics: the model's on validation, and the average's where it averages."""
        s = self.settings
        began = time.perf_counter()
        val_loss, val_acc = evaluate(
            self.model, val_x, val_y, batch_size=s.eval_batch_size, amp=s.amp, channels_last=s.channels_last,
            stats=s.stats,
        )
        # Averaging adds forward passes over bn_images training images, then validation again. (The
        # augmentation of the batch-norm pass adds 2-10% to it on a CPU, measured at widths 64 and 16.)
        if s.average_method != "none":
            bn_passes = min(s.bn_images, len(train_x)) / len(val_x)
            self.averaging_extra_s = (time.perf_counter() - began) * (1 + bn_passes)
        self.scheduler.step()
        metrics |= {
            "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val_loss, "val_acc": val_acc,
            "update_ratio": stats.update_ratio,
        }
        if averaging:
            if s.average == "swa":  # SWA: one equal-weight sample per epoch, at its end
                self._average().update_parameters(self.model)
            self._recompute_bn(train_x)
            avg_loss, avg_acc = evaluate(
                self._average().module, val_x, val_y, batch_size=s.eval_batch_size, amp=s.amp,
                channels_last=s.channels_last, stats=s.stats,
            )
            metrics |= {"avg_val_loss": avg_loss, "avg_val_acc": avg_acc}
        return metrics

    def state(self, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything that rebuilds this trial exactly, loadable with weights_only=True."""
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.device.type == "cuda":  # only then: on a CPU trial it would create a CUDA context
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        weights = self.model.state_dict()
        return {
            # the weights it would end as (Lookahead.ending); the fast ones are in its resume state
            "model": weights if self.lookahead is None else self.lookahead.ending(weights),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "rng": rng,
            "hparams": dict(self.hparams),
            "settings": asdict(self.settings),
            "metrics": dict(metrics or {}),
        } | ({"averaged": self.averaged.state_dict()} if self.averaged is not None else {}) \
          | ({"lookahead": self.lookahead.state_dict()} if self.lookahead is not None else {}) \
          | ({"flips": self.flips.state_dict()} if self.flips is not None else {})

    def load_state(self, state: dict[str, Any]) -> None:
        if "optimizer" not in state:
            raise ValueError(f"the checkpoint of epoch {state.get('epoch')} holds weights only (its {RESUME_FILE} "
                             "was pruned when a later checkpoint replaced it); resume from the trial's latest one")
        saved_epochs = (state.get("settings") or {}).get("max_epochs")
        if saved_epochs and int(saved_epochs) != self.settings.max_epochs:
            # refit (Trial.refit) before it was saved: the saved schedule is for this count
            self.settings = self.settings.with_epochs(int(saved_epochs))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        try:
            self.generator.set_state(state["rng"]["generator"])
        except RuntimeError:  # saved on another kind of device (CPU and CUDA generators differ)
            warnings.warn(f"checkpoint of epoch {state['epoch']} was saved on another kind of device: shuffling "
                          "and augmentation continue from a new seed, not exactly where they left off", stacklevel=2)
            self.generator.manual_seed(trial_seed(self.hparams) + int(state["epoch"]))
        if "cuda" in state["rng"] and self.device.type == "cuda":  # a CPU trial never touches CUDA
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.epoch = int(state["epoch"])
        if "averaged" in state:
            self._average().load_state_dict(state["averaged"])
        if self.lookahead is not None and "lookahead" in state:
            self.lookahead.load_state_dict(state["lookahead"])
        if "flips" in state:
            self.flips = AlternatingFlips(state["flips"]["flipped"].to(self.generator.device, torch.bool))
        if state.get("hparams", self.hparams) != self.hparams:
            self._adopt_hparams(state["hparams"])

    def _adopt_hparams(self, saved: dict[str, Any]) -> None:
        """Continue another config's state with this trial's optimisation hyperparameters: PBT
        copies a better trial's checkpoint and perturbs lr, weight decay, momentum and dropout. The
        loaded optimizer and schedule hold the saved values, so they are rescaled here: the LR
        keeps its place on the schedule (new base x the schedule's current factor)."""
        new_lr, weight_decay = step_values(self.hparams)
        old_lr, _ = step_values(self.hparams | saved)
        scale = new_lr / old_lr if old_lr > 0 else 1.0
        for group in self.optimizer.param_groups:  # a group's lr_scale: caviar.training.recipe.param_groups
            group["lr"] *= scale
            group["initial_lr"], group["weight_decay"] = group_values(new_lr, weight_decay, group.get("lr_scale", 1.0))
            if "momentum" in group and group["momentum"]:
                group["momentum"] = float(self.hparams["momentum"])
            if "betas" in group:
                group["betas"] = (float(self.hparams["momentum"]), group["betas"][1])
        self.scheduler.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        for module in self.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = float(self.hparams["dropout"])

    def save(self, folder: str | Path, metrics: dict[str, Any]) -> Path:
        """Two files: the weights and what describes them (what the ensemble reads), and
        RESUME_FILE with the optimizer, schedule and RNG states that only a resumed trial needs,
        so a checkpoint kept for its score can drop them once it is no longer the latest
        (caviar.search.callbacks.CheckpointPruner)."""
        state = self.state(metrics)
        path = Path(folder) / checkpoint_name(self.epoch, metrics.get("val_acc", 0.0))
        torch.save({key: value for key, value in state.items() if key not in RESUME_KEYS}, path)
        torch.save({key: state[key] for key in RESUME_KEYS if key in state}, Path(folder) / RESUME_FILE)
        return path
