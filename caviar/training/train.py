"""Plain PyTorch training: optimizers, LR schedules, one epoch, evaluation. No Ray here.

Data stays as uint8 tensors (N, 3, 32, 32) on the trial's device; each batch is gathered,
augmented and normalised there with tensor ops, so there are no DataLoader worker processes
and no per-image Python work.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from caviar.config.space import LR_SCHEDULES, OPTIMIZERS
from caviar.training.augment import augment_batch
from caviar.training.data import normalize
from caviar.training.devices import default_device


def make_optimizer(name: str, params: Any, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """`momentum` is SGD's momentum or Adam's beta1; optimizers without one ignore it. `params`
    may be parameter groups with their own lr and weight decay (caviar.training.recipe.param_groups)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, max_epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch LR schedules spanning the whole budget, so an ASHA-stopped trial saw the same LR
    at each epoch as one that ran to the end."""
    sched = torch.optim.lr_scheduler
    if name == "constant":
        return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "step":  # /10 at 1/2 and 3/4 of the budget, the classic step decay
        milestones = sorted({max(1, max_epochs // 2), max(1, (3 * max_epochs) // 4)})
        return sched.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if name == "exponential":  # 100x smaller by the end of the budget
        return sched.ExponentialLR(optimizer, gamma=0.01 ** (1.0 / max(1, max_epochs)))
    if name == "inverse_time":  # lr0 / (1 + k t), 10x smaller by the end
        k = 9.0 / max(1, max_epochs)
        return sched.LambdaLR(optimizer, lambda epoch: 1.0 / (1.0 + k * epoch))
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max_epochs)
    raise ValueError(f"unknown lr_schedule {name!r}; expected one of {LR_SCHEDULES}")


# Batch size at which `average.ema_decay` is the per-step decay (torchvision's reference scales
# its EMA decay with the batch size likewise).
EMA_REFERENCE_BATCH = 128


def ema_decay(decay: float, batch_size: int) -> float:
    """Per-step EMA decay at `batch_size` for `decay` at EMA_REFERENCE_BATCH: decay ** (B / 128).
    The average then spans the same number of images whatever the batch size; unscaled, 0.999 at
    batch 1024 would span 8x more images, so over a few epochs it stays mostly the weights that
    averaging started from."""
    return decay ** (batch_size / EMA_REFERENCE_BATCH)


def pick_device() -> torch.device:
    """The device outside Ray (predictions, checks); a trial's comes from Ray (caviar.training.devices)."""
    return default_device()


# Images per forward pass when evaluating, by device, for `train.eval_batch_size: auto`. A GPU
# wants big batches; on CPU a batch whose activations fit in cache ran 1.5-3x faster than 1024
# (docs/benchmark-history.md, sections 2 and 4: faster sweeps, less memory per trial).
AUTO_EVAL_BATCH_SIZE = {"cuda": 1024, "cpu": 64}


def eval_batch_size(configured: int | str, device: torch.device) -> int:
    """`configured` images per evaluation batch, or the device's default for "auto"."""
    if configured == "auto":
        return AUTO_EVAL_BATCH_SIZE.get(device.type, AUTO_EVAL_BATCH_SIZE["cpu"])
    return int(configured)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX). Elsewhere bf16 is
    emulated and slower than float32, so autocast stays off there."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


# Compute capability from which NVIDIA GPUs have bfloat16 tensor cores (Ampere: A100, A10G, RTX
# 30xx). Older GPUs (T4 7.5, V100 7.0) report bf16 as supported but emulate it, slower than float32.
CUDA_NATIVE_BF16_CAPABILITY = (8, 0)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU `device` computes bfloat16 in hardware (compute capability >= 8.0)."""
    return tuple(torch.cuda.get_device_capability(device)) >= CUDA_NATIVE_BF16_CAPABILITY


def uses_bf16(device: torch.device, amp: bool) -> bool:
    """`train.amp` means bfloat16 autocast where bfloat16 is native: GPUs of compute capability
    8.0 and later, CPUs with AVX512-BF16 or AMX (1.3-2x faster there, see benchmarks); float32
    elsewhere (emulated bf16 is slower; float16 would need a loss scaler). bf16 needs none."""
    if not amp:
        return False
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if uses_bf16(device, amp):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# A dataset's per-channel (mean, std) on the 0..1 scale (SplitData.mean, .std); None = CIFAR-10's.
Stats = Optional[tuple[Sequence[float], Sequence[float]]]


def prepare_inputs(images_uint8: torch.Tensor, device: torch.device, channels_last: bool,
                   stats: Stats = None) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> normalised float on `device` (by `stats`), NHWC when asked.

    On CPU too: given NHWC input, oneDNN's convolutions trained the convnet 1.5x and ResNet-9
    1.2-1.4x faster (docs/benchmark-history.md section 1, bench_throughput.py --with-nchw). The model's weights
    may stay NCHW; the convolution follows its input's layout.
    """
    mean, std = stats if stats is not None else (None, None)
    x = normalize(images_uint8.to(device, non_blocking=True), mean=mean, std=std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# Steps between divergence checks on a GPU (each check waits for the GPU to catch up).
DIVERGENCE_CHECK_STEPS = 20


@dataclass
class EpochStats:
    loss: float  # mean training cross-entropy over the epoch's images
    acc: float  # training accuracy (on augmented images)
    update_ratio: float  # mean ||lr * update|| / ||w|| over weight tensors; the notes want ~1e-3
    finite: bool  # False when the loss became NaN/inf or exploded: the trial diverged


def steps_per_epoch(n: int, batch_size: int) -> int:
    # Drop the last short batch (BatchNorm cannot train on 1 image), but keep at least one step.
    return max(1, n // batch_size)


def images_per_epoch(n: int, epoch_size: int | float | None) -> int:
    """Images an epoch trains on: all `n`, a count, or a fraction of `n` (train.epoch_size)."""
    if epoch_size is None:
        return n
    if isinstance(epoch_size, float) and epoch_size <= 1.0:
        return max(1, min(n, round(epoch_size * n)))
    return max(1, min(n, int(epoch_size)))


def _batches(n: int, batch_size: int, generator: torch.Generator, limit: int | None = None) -> Iterator[torch.Tensor]:
    """Batches of a fresh random order of the n images; with `limit`, the epoch stops after that
    many images (the next epoch draws a new order: images seen, not a fixed subset)."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    for step in range(steps_per_epoch(limit or n, batch_size)):
        yield order[step * batch_size : (step + 1) * batch_size]


def augmented(batch: torch.Tensor, generator: torch.Generator, augment: bool, crop: int, flip: bool, cutout: int,
              pad_mode: str = "zeros", mirror: torch.Tensor | None = None) -> torch.Tensor:
    """A uint8 (B, 3, H, W) batch as training shows it (caviar.training.augment.augment_batch): the
    one place train_one_epoch and the batch-norm pass of an average (reestimate_bn) take it from."""
    if not (augment and (crop or flip or cutout)):
        return batch
    return augment_batch(batch, generator=generator, pad=crop, flip=flip, cutout=cutout, mirror=mirror,
                         pad_mode=pad_mode)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = True,
    crop: int = 4,
    flip: bool = True,
    cutout: int = 0,
    pad_mode: str = "zeros",
    stats: Stats = None,
    grad_clip: float = 0.0,
    amp: bool = True,
    channels_last: bool = True,
    averaged: Any = None,
    max_loss: float = math.inf,
    check_every: int | None = None,
    epoch_size: int | float | None = None,
    label_smoothing: float = 0.0,
    mirror_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[float], None] | None = None,
) -> EpochStats:
    """One pass over (images, labels): uint8 (N, 3, H, W) and int64 (N,), on CPU or device.

    With `augment`, each batch is cropped after `crop` pixels of padding (`pad_mode`), mirrored at
    random (`flip`) and has a `cutout`-pixel square zeroed (augmented); `stats` normalise it (None:
    CIFAR-10's).

    `averaged`, if given, is a `torch.optim.swa_utils.AveragedModel` updated after every step.
    A batch loss that is NaN, inf or above `max_loss` ends the epoch at once with finite=False:
    a huge learning rate often leaves the loss finite but astronomically large (dead ReLUs,
    exploded logits), which is as hopeless as a NaN. The check reads the loss on the host, which
    makes the CPU wait for the GPU: on CUDA it runs every `check_every` steps (default
    DIVERGENCE_CHECK_STEPS), so a diverged trial may take a few more (harmless) steps.
    `epoch_size` (train.epoch_size) makes the epoch a count or fraction of the images.
    `label_smoothing` trains on targets of 1 - s for the label and s spread over all classes.
    `mirror_of(idx)`, if given, says which of the batch's images to flip (alternating flips,
    caviar.training.recipe.AlternatingFlips) instead of chance. `after_step(done)` runs after each
    optimizer step, with the share of the epoch done (lookahead, caviar.training.recipe.Lookahead).
    """
    device = next(model.parameters()).device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else DIVERGENCE_CHECK_STEPS
    exploded = torch.zeros((), device=device, dtype=torch.bool)
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    ratios: list[float] = []
    limit = images_per_epoch(len(labels), epoch_size)
    steps = steps_per_epoch(limit, batch_size)
    for step, idx in enumerate(_batches(len(labels), batch_size, generator, limit)):
        batch = images[idx.to(images.device)]
        mirror = mirror_of(idx) if augment and flip and mirror_of is not None else None
        batch = augmented(batch, generator, augment, crop, flip, cutout, pad_mode, mirror)
        x = prepare_inputs(batch, device, channels_last, stats)
        y = labels[idx.to(labels.device)].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        exploded |= ~torch.isfinite(loss) | (loss > max_loss)
        if (step % check_every == 0 or step == steps - 1) and exploded.item():
            return EpochStats(float("nan"), 0.0, float("nan"), finite=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        # The update/weight ratio is measured on the first step of the epoch only: a copy of the
        # weights every step would cost more than the step itself for small models.
        before = [w.detach().clone() for w in _weights(model)] if step == 0 else None
        optimizer.step()
        if before is not None:
            ratios = [
                ((w.detach() - b).norm() / b.norm().clamp_min(1e-12)).item() for w, b in zip(_weights(model), before)
            ]
        if after_step is not None:
            after_step((step + 1) / steps)
        if averaged is not None:
            averaged.update_parameters(model)
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    mean_loss = total_loss.item() / seen
    return EpochStats(
        loss=mean_loss,
        acc=correct.item() / seen,
        update_ratio=sum(ratios) / len(ratios) if ratios else 0.0,
        finite=math.isfinite(mean_loss),
    )


def eval_batches(
    images: torch.Tensor, device: torch.device, batch_size: int | str, channels_last: bool, stats: Stats = None
) -> Iterator[torch.Tensor]:
    """(N, 3, H, W) uint8 -> model inputs in order, `batch_size` (or "auto") images at a time."""
    step = eval_batch_size(batch_size, device)
    for start in range(0, len(images), step):
        yield prepare_inputs(images[start : start + step], device, channels_last, stats)


@torch.no_grad()
def reestimate_bn(
    model: nn.Module, images: torch.Tensor, *, generator: torch.Generator, batch_size: int | str = "auto",
    augment: bool = True, crop: int = 4, flip: bool = True, cutout: int = 0, pad_mode: str = "zeros",
    stats: Stats = None, amp: bool = True, channels_last: bool = True,
) -> None:
    """Set `model`'s batch-norm running statistics to those of uint8 (N, 3, H, W) `images` as
    training showed them (torch's update_bn over batches augmented as train_one_epoch augments
    them, with `generator`'s draws), for weights whose statistics were never tracked: a running
    average of weights (SWA, EMA). The statistics must be those of the inputs the weights trained
    on: on unaugmented images the network's own trained weights fell from 0.9780 to 0.9420 on a
    held-out dataset with a bright background (zero padding puts a black frame in every crop;
    issue 34), and every average scored 2-3.5 points below its trial."""
    device = next(model.parameters()).device
    step = eval_batch_size(batch_size, device)
    batches = (prepare_inputs(augmented(images[start : start + step], generator, augment, crop, flip, cutout,
                                        pad_mode), device, channels_last, stats)
               for start in range(0, len(images), step))
    with autocast(device, amp):
        update_bn(batches, model)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, *, batch_size: int | str = "auto", amp: bool = True,
    channels_last: bool = True, stats: Stats = None,
) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, classes) float32 logits on CPU, in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for x in eval_batches(images, device, batch_size, channels_last, stats):
        with autocast(device, amp):
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on uint8 images and int64 labels."""
    logits = predict_logits(model, images, **kwargs)
    labels = labels.cpu()
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc
