"""Sanity checks before spending compute (`caviar check`), the notes' list:

1. initial loss: at initialisation, with regularisation off, the loss is that of a uniform guess,
   ln(classes) (2.303 for CIFAR-10), within `tolerance` nats;
2. regularisation: turning it on (dropout at the space's value, L2 at the space's largest weight
   decay) raises the loss;
3. overfitting: a tiny subset (20 images) is fitted to near-zero loss with regularisation off
   (Adam at 3e-3, whatever the searched optimizer: this tests the model and loss, not the
   hyperparameters);
4. gradient check: every layer's analytic gradient against centred finite differences in double
   precision on a few images, dropout and augmentation off; relative error
   |a - n| / max(|a|, |n|): <= 1e-7 fine, <= 1e-4 ok (kinks), <= 1e-2 suspicious, > 1e-2 wrong.

Each check returns a CheckResult (pass/fail with its figure); `caviar check` exits 1 if one fails.
The model checked is the centre of the experiment's space (each range's midpoint in its sampling
scale, the first of each list of choices); pin other values with --set.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from caviar.config.loading import load_config, with_classes
from caviar.config.scales import entries, from_sampling_scale, to_sampling_scale
from caviar.config.schema import Config
from caviar.config.space import Choice, Range, Scalar, SpaceConfig
from caviar.errors import ConfigError
from caviar.training.models import build_model
from caviar.training.train import Stats

FINE, OK, SUSPICIOUS = 1e-7, 1e-4, 1e-2  # the notes' relative-error thresholds
OVERFIT_TARGET = 0.05  # nats: "near-zero" training loss on the tiny subset


@dataclass
class CheckResult:
    name: str
    passed: bool
    figure: str  # the measured number(s), as printed
    detail: str = ""  # more lines (the gradient check's per-layer table)

    def line(self) -> str:
        text = f"{'PASS' if self.passed else 'FAIL'}  {self.name:<38} {self.figure}"
        return text + ("\n" + self.detail if self.detail else "")


# ---------------------------------------------------------------- helpers
def centre_hparams(space: SpaceConfig) -> dict[str, Any]:
    """The middle of each range in its sampling scale (rounded for integers), the first choice of
    each list, fixed values as they are: one representative model of the space."""
    hparams: dict[str, Any] = {}
    for name, param in entries(space).items():
        if isinstance(param, dict):  # lr per optimizer: the first optimizer's
            first = space.optimizer.choices[0] if isinstance(space.optimizer, Choice) else space.optimizer
            param = param[first]
        if isinstance(param, Range):
            middle = (to_sampling_scale(param.low, param.scale) + to_sampling_scale(param.high, param.scale)) / 2
            value = from_sampling_scale(middle, param.scale)
            hparams[name] = int(round(value)) if param.scale in ("int", "log_int") else value
        elif isinstance(param, Choice):
            hparams[name] = param.choices[0]
        else:
            hparams[name] = param
    return hparams


def largest(param: Range | Choice | Scalar) -> float:
    """The largest value an entry can take (for 'regularisation on')."""
    if isinstance(param, Range):
        return float(param.high)
    if isinstance(param, Choice):
        return float(max(param.choices))
    return float(param)


@contextlib.contextmanager
def dropout_p(model: nn.Module, p: float | None) -> Iterator[None]:
    """Set every dropout layer's probability to `p` (None: leave as built), restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    saved = [m.p for m in layers]
    if p is not None:
        for m in layers:
            m.p = p
    try:
        yield
    finally:
        for m, old in zip(layers, saved):
            m.p = old


def normalized(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32, stats: Stats = None) -> torch.Tensor:
    from caviar.training.data import normalize

    mean, std = stats if stats is not None else (None, None)
    return normalize(images_uint8, mean=mean, std=std).to(dtype)


def l2_penalty(model: nn.Module, weight_decay: float) -> torch.Tensor:
    """The loss that the optimizers' weight_decay minimises: 0.5 * wd * sum of squared parameters
    (caviar passes every parameter to the optimizer with weight_decay)."""
    return 0.5 * weight_decay * sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- the checks
def check_initial_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, tolerance: float
) -> tuple[CheckResult, float]:
    """Training mode (batch norm on batch statistics, as at the first step), dropout off, no L2."""
    model.train()
    with torch.no_grad(), dropout_p(model, 0.0):
        loss = F.cross_entropy(model(x), y).item()
    expected = math.log(num_classes)
    passed = math.isfinite(loss) and abs(loss - expected) <= tolerance
    figure = f"{loss:.3f}  (expected ln({num_classes}) = {expected:.3f} +- {tolerance:g})"
    return CheckResult("initial loss, regularisation off", passed, figure), loss


def check_regularisation(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_off: float, weight_decay: float, dropout: float, seed: int
) -> CheckResult:
    if weight_decay <= 0 and dropout <= 0:
        return CheckResult("loss rises with regularisation", True, "skipped: the space has no weight decay or dropout")
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        loss_on = (F.cross_entropy(model(x), y) + l2_penalty(model, weight_decay)).item()
    passed = math.isfinite(loss_on) and loss_on > loss_off
    figure = f"{loss_off:.3f} -> {loss_on:.3f}  (weight decay {weight_decay:g}, dropout {dropout:g})"
    return CheckResult("loss rises with regularisation", passed, figure)


def check_overfit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 500, lr: float = 3e-3
) -> CheckResult:
    """Full-batch Adam on `x` (a handful of images) with dropout off and no weight decay."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(math.inf)
    step = 0
    with dropout_p(model, 0.0):
        for step in range(1, steps + 1):
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if loss.item() < OVERFIT_TARGET / 2 or not torch.isfinite(loss):
                break
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = model(x)
            final = F.cross_entropy(logits, y).item()
            acc = (logits.argmax(1) == y).float().mean().item()
    passed = math.isfinite(final) and final < OVERFIT_TARGET
    figure = f"loss {final:.4f} after {step} steps on {len(y)} images (target < {OVERFIT_TARGET:g}), accuracy {acc:.0%}"
    return CheckResult(f"overfit {len(y)} images, regularisation off", passed, figure)


def _grade(error: float) -> str:
    if error <= FINE:
        return "fine"
    if error <= OK:
        return "ok"
    if error <= SUSPICIOUS:
        return "uncomfortable"
    return "WRONG"


def gradient_errors(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, entries: int = 3, pool: int = 64, h: float = 1e-5, seed: int = 0
) -> dict[str, float]:
    """Worst relative error per layer (module name -> error) between backprop and centred finite
    differences of the mean cross-entropy, in double precision, dropout off, training mode.

    Per parameter tensor, `entries` of `pool` random entries with the largest analytic gradient are
    checked (tiny gradients are all rounding noise in the finite difference). A step of h moves
    an input of a ReLU or max-pool across its kink now and then, where the loss has no derivative;
    an entry whose error is above 1e-4 is measured again at h / 10 and keeps the smaller error: a
    kink's error vanishes with the step, a wrong backward's does not.
    """
    model = model.double().train()
    x = x.double()
    generator = torch.Generator().manual_seed(seed)
    with dropout_p(model, 0.0):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        worst: dict[str, float] = {}
        modules = {name: module for name, module in model.named_modules()}
        for name, param in model.named_parameters():
            if param.grad is None:
                continue
            layer = name.rsplit(".", 1)[0] if "." in name else name
            label = f"{layer} ({type(modules.get(layer, model)).__name__})"
            flat_grad = param.grad.detach().reshape(-1)
            candidates = torch.randperm(flat_grad.numel(), generator=generator)[:pool]
            picked = candidates[flat_grad[candidates].abs().argsort(descending=True)[:entries]]
            flat = param.data.view(-1)
            for index in picked.tolist():
                analytic = flat_grad[index].item()
                error = _relative_error(analytic, _centred_difference(model, x, y, flat, index, h))
                if error > OK:
                    error = min(error, _relative_error(analytic, _centred_difference(model, x, y, flat, index, h / 10)))
                worst[label] = max(worst.get(label, 0.0), error)
    return worst


@torch.no_grad()
def _centred_difference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, flat: torch.Tensor, index: int,
                        h: float) -> float:
    old = flat[index].item()
    flat[index] = old + h
    plus = F.cross_entropy(model(x), y).item()
    flat[index] = old - h
    minus = F.cross_entropy(model(x), y).item()
    flat[index] = old
    return (plus - minus) / (2 * h)


def _relative_error(analytic: float, numeric: float) -> float:
    """|a - n| / max(|a|, |n|); 0 when both are below double rounding noise."""
    scale = max(abs(analytic), abs(numeric))
    return 0.0 if scale < 1e-12 else abs(analytic - numeric) / scale


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    errors = gradient_errors(model, x, y)
    if not errors:
        return CheckResult("gradient check (float64)", False, "no parameter received a gradient")
    label, worst = max(errors.items(), key=lambda item: item[1])
    passed = all(error <= SUSPICIOUS for error in errors.values())
    figure = (f"worst relative error {worst:.1e} in {label}  ({len(errors)} layers; <= {FINE:g} fine, "
              f"> {SUSPICIOUS:g} wrong)")
    detail = "\n".join(f"        {name:<40} {error:.1e}  {_grade(error)}" for name, error in errors.items())
    return CheckResult("gradient check (float64)", passed, figure, detail)


# ---------------------------------------------------------------- entry points
def check_model(
    build: Callable[[], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int = 10,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    tolerance: float = 0.1,
    overfit_images: int = 20,
    grad_images: int = 4,
    seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    stats: Stats = None,
) -> list[CheckResult]:
    """All four checks on models from `build()` (a fresh one per check) and uint8 images (N, 3, 32, 32).

    threads: torch compute threads for the checks (None: torch's default). On a busy machine more
    threads than free cores make small models many times slower, so trials use their CPU share.
    """
    with _threads(threads):
        return _check_model(build, images, labels, num_classes=num_classes, weight_decay=weight_decay,
                            dropout=dropout, tolerance=tolerance, overfit_images=overfit_images,
                            grad_images=grad_images, seed=seed, log=log, stats=stats)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    saved = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _check_model(build: Callable[[], nn.Module], images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                 weight_decay: float, dropout: float, tolerance: float, overfit_images: int, grad_images: int,
                 seed: int, log: Callable[[str], None] | None, stats: Stats = None) -> list[CheckResult]:
    x, y = normalized(images, stats=stats), labels.long()
    results = []

    def record(result: CheckResult) -> None:
        results.append(result)
        if log:
            log(result.line())

    torch.manual_seed(seed)
    model = build()
    initial, loss_off = check_initial_loss(model, x, y, num_classes, tolerance)
    record(initial)
    record(check_regularisation(model, x, y, loss_off, weight_decay, dropout, seed))
    torch.manual_seed(seed)
    record(check_overfit(build(), x[:overfit_images], y[:overfit_images]))
    torch.manual_seed(seed)
    record(check_gradients(build(), x[:grad_images], y[:grad_images]))
    return results


def check_experiment(
    experiment: Any = None,
    overrides: list[str] | None = None,
    *,
    images: int = 20,
    tolerance: float = 0.1,
    batch: int = 256,
    log: Callable[[str], None] | None = print,
) -> list[CheckResult]:
    """The checks on the centre of an experiment's space, with its data and model family."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 2:
        raise ConfigError(f"--images {images!r}: the overfitting check needs 2 or more images")
    if not isinstance(tolerance, (int, float)) or not 0 < tolerance < math.inf:
        raise ConfigError(f"--tolerance {tolerance!r}: the allowed gap from ln(classes), a number above 0")
    from caviar.training import memory
    from caviar.training.data import data_for, describe_dataset, image_counts

    config: Config = load_config(experiment, overrides).resolved()
    data = data_for(config, subset=False)
    config = with_classes(config, len(data.classes), f"data.root {config.data.root}")  # a stated count must match
    hparams = centre_hparams(config.space)
    family, width, classes = config.model.family, config.model.width, config.model.num_classes
    count = max(batch, images)
    x = torch.from_numpy(data.train_x[:count].copy())
    y = torch.from_numpy(data.train_y[:count].copy())
    if log:
        log(describe_data(describe_dataset(data), config.data.root))
        log(memory.describe(memory.estimate(config, *image_counts(config)), memory.limit()))
        shown = ", ".join(f"{k}={_short(v)}" for k, v in hparams.items())
        log(f"caviar check: {family} at the centre of the space ({shown}) on {len(y)} training images "
            f"from {config.data.root}")
    return check_model(
        lambda: build_model(family, hparams, width=width, num_classes=classes), x, y, stats=(data.mean, data.std),
        num_classes=classes, weight_decay=largest(config.space.weight_decay), dropout=float(hparams["dropout"]),
        tolerance=tolerance, overfit_images=images, threads=max(1, int(config.resources.cpus_per_trial)), log=log,
    )


def describe_data(found: dict[str, Any], root: str | None) -> str:
    """What `caviar check` found in the data folder, in a few lines (caviar.training.data.describe_dataset)."""
    balance = found["per_class"]
    lines = [f"data: {root}: {found['images']['train']} training and {found['images']['val']} validation images "
             f"of {found['image_shape'][1]}x{found['image_shape'][2]} pixels, {found['classes']} classes "
             f"({', '.join(found['class_names'][:6])}{', ...' if found['classes'] > 6 else ''})",
             f"  per class: {balance['min']} ({balance['smallest']}) to {balance['max']} ({balance['largest']}) images"
             + (f"; EMPTY: {', '.join(balance['empty'])}" if balance["empty"] else ""),
             f"  channel mean {found['mean']}, std {found['std']} (0..1 scale; used to normalise every image)"]
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_results(results: list[CheckResult]) -> str:
    failed = [r.name for r in results if not r.passed]
    if not failed:
        return f"All {len(results)} checks passed."
    return f"{len(failed)} of {len(results)} checks FAILED: {', '.join(failed)}"
