"""Training options of a trial's recipe beyond its optimizer and LR schedule, each off unless its
hyperparameter turns it on (caviar.config.space.OPTIONAL): learning rate and weight decay in
units that do not move with batch size and momentum (`decoupled`), a scaled learning rate for
batch-norm biases (`bn_lr_scale`), lookahead (`lookahead`) and alternating flips
(`alternate_flips`). The fastest CIFAR-10 trainings use all four (Page 2018; Jordan 2024,
"94% on CIFAR-10 in 3.29 seconds on a single GPU"); this is caviar's own version of them."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

# `decoupled`: lr and weight decay are given per this many training images.
DECOUPLED_IMAGES = 1024
# Optimizers whose momentum multiplies a steady gradient's step by 1 / (1 - momentum).
HEAVY_BALL = ("momentum", "nesterov")


def step_values(hparams: dict[str, Any]) -> tuple[float, float]:
    """(lr, weight_decay) as torch's optimizers take them, per step.

    With `decoupled`, the hyperparameters mean: `lr`, the distance moved per DECOUPLED_IMAGES
    images along a steady gradient, whatever the batch size and momentum (torch's lr is that x
    batch / 1024 x (1 - momentum) for heavy-ball SGD); `weight_decay`, the share the weights
    shrink by per DECOUPLED_IMAGES images, whatever the lr (torch's L2 is that / lr). Each can then
    be searched alone: a change of batch size, momentum or lr no longer moves the others' optimum
    (Goyal et al. 2017's linear scaling; Jordan 2024). Without it, torch's values as given. Only
    SGD optimizers (caviar.config.space.DECOUPLABLE): Adam's, RMSprop's and Adagrad's steps are
    normalised per parameter, and their L2 term with them."""
    lr, decay = float(hparams["lr"]), float(hparams["weight_decay"])
    if not hparams.get("decoupled"):
        return lr, decay
    gain = 1.0 / (1.0 - float(hparams["momentum"])) if hparams["optimizer"] in HEAVY_BALL else 1.0
    step_lr = lr * int(hparams["batch_size"]) / DECOUPLED_IMAGES / gain
    return step_lr, (decay / lr if lr > 0 else 0.0)


def group_values(lr: float, weight_decay: float, lr_scale: float) -> tuple[float, float]:
    """(lr, weight decay) of a parameter group whose lr is `lr_scale` x the trial's: its decay is
    divided by as much, so its shrinking per step (lr x decay) stays the trial's."""
    return lr * lr_scale, (weight_decay / lr_scale if lr_scale > 0 else 0.0)


def param_groups(model: nn.Module, lr: float, weight_decay: float, bn_lr_scale: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one, or with `bn_lr_scale` != 1 a second group of the
    batch-norm biases at lr x bn_lr_scale and weight decay / bn_lr_scale (their shrinking per step,
    lr x decay, stays as it was). Each group records its `lr_scale`, so a PBT perturbation or a new
    schedule sets both from the trial's lr (caviar.training.trial.Trial)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if bn_lr_scale == 1.0:
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0}]
    biases = {id(m.bias) for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    rest = [p for p in params if id(p) not in biases]
    norm_biases = [p for p in params if id(p) in biases]
    scaled_lr, scaled_decay = group_values(lr, weight_decay, bn_lr_scale)
    return [{"params": rest, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": norm_biases, "lr": scaled_lr, "weight_decay": scaled_decay, "lr_scale": bn_lr_scale}]


# Lookahead as airbench94 runs it: a pull every 5 steps, toward slow weights that keep at most
# 0.95 ** 5 of themselves per pull, that share growing with the cube of the training done.
LOOKAHEAD_EVERY = 5
LOOKAHEAD_DECAY = 0.95 ** LOOKAHEAD_EVERY


class Lookahead:
    """Slow weights: every LOOKAHEAD_EVERY steps they move toward the trained (fast) weights, which
    then restart from them (Zhang et al. 2019, "Lookahead optimizer: k steps forward, 1 step
    back"). The slow weights keep `LOOKAHEAD_DECAY x progress ** 3` of themselves (progress: the
    share of the trial's schedule done), so early training runs as without lookahead and the end is
    an average of the last few hundred steps, as an EMA of weights would give, but one that training
    continues from. `finish` hands the model the slow weights. Batch-norm statistics follow too.

    The slow weights are what the trial ends as, so they are what each epoch is scored and saved
    as (`slow_weights`, `ending`), also where ASHA or a deadline stops the trial before its end;
    training goes on from the fast ones, which a checkpoint keeps for resuming."""

    def __init__(self, model: nn.Module):
        # The model's own tensors (load_state_dict copies into them, so they stay its tensors), in
        # one list: a pull is two fused operations over all of them, not a Python loop per tensor.
        named = {name: value for name, value in model.state_dict().items() if value.is_floating_point()}
        self.names, self.fast = list(named), [value.detach() for value in named.values()]
        self.slow = {name: value.detach().clone() for name, value in named.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, progress: float) -> None:
        self.steps += 1
        if self.steps % LOOKAHEAD_EVERY == 0:
            self._pull(LOOKAHEAD_DECAY * min(1.0, max(0.0, progress)) ** 3)

    @torch.no_grad()
    def finish(self) -> None:
        self._pull(1.0)

    def _pull(self, keep: float) -> None:
        slow = [self.slow[name] for name in self.names]
        torch._foreach_lerp_(slow, self.fast, 1.0 - keep)
        torch._foreach_copy_(self.fast, slow)

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[None]:
        """Inside, the model holds the slow weights (what `finish` would leave it); after, its fast
        weights again, exactly, so training continues as if nothing happened."""
        with torch.no_grad():
            fast = [value.clone() for value in self.fast]
            torch._foreach_copy_(self.fast, [self.slow[name] for name in self.names])
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.fast, fast)

    def ending(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's state dict `weights` with the slow weights in place of the fast ones."""
        return weights | self.slow

    def state_dict(self) -> dict[str, Any]:
        # fast: the model's own weights, which a checkpoint's model (the slow ones, `ending`) lacks
        return {"slow": self.slow, "steps": self.steps, "fast": dict(zip(self.names, self.fast))}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        # onto the model's device: checkpoints are loaded onto the CPU
        self.slow = {name: value.to(self.slow[name].device).clone() for name, value in state["slow"].items()}
        self.steps = int(state["steps"])
        if "fast" in state:  # (older checkpoints saved the fast weights as their model: loaded already)
            torch._foreach_copy_(self.fast, [state["fast"][name].to(value.device)
                                             for name, value in zip(self.names, self.fast)])


class AlternatingFlips:
    """Each training image is mirrored every other time it is drawn, the first time at random
    (Jordan 2024): over any two epochs a network sees both orientations of every image, where
    coin flips show a quarter of them one way only. One bit per image, kept for exact resume."""

    def __init__(self, flipped: torch.Tensor):
        self.flipped = flipped  # bool per training image: whether its last view was mirrored

    @classmethod
    def drawn(cls, count: int, generator: torch.Generator) -> "AlternatingFlips":
        return cls(torch.rand(count, generator=generator, device=generator.device) < 0.5)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        mirror = ~self.flipped[idx]
        self.flipped[idx] = mirror
        return mirror

    def state_dict(self) -> dict[str, Any]:
        return {"flipped": self.flipped}

