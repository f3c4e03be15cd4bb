"""airbench94 (Keller Jordan, PyPI `airbench`: 94.01% on CIFAR-10 in 3.8 s on an A100) as a
baseline on caviar's data and a CPU, used by bench_search_quality.py.

The network's layers, the whitening initialisation, the lookahead state, the augmentations, the
test-time augmentation and every hyperparameter (`lib_airbench94.hyp`) come from the installed
package. Only what its `train94` ties to CUDA is done here instead:
- the network is assembled as `make_net94` assembles it, on the CPU in float32, under bfloat16
  autocast where the CPU has native bfloat16 (caviar's own rule, caviar.training.train.uses_bf16),
  instead of `.half().cuda()`;
- the images come from caviar's train/validation split (the same 45,000 / 5,000 every flow gets)
  instead of `CifarLoader`'s files on the GPU; each epoch is built as its loader builds it
  (normalised once, randomly pre-flipped, padded by `translate` pixels, then per epoch a random
  translation, every image flipped on odd epochs, shuffled, whole batches of 1024);
- its 9.9 epochs become as many as fit in the budget: a few batches are timed first, and the
  schedules (the triangular learning rate and the lookahead's) span the fitted count of steps;
  training also stops at the deadline, with the lookahead's final copy, whatever the estimate.
The timing code (CUDA events) and the logging are left out.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import subprocess
import sys
import time
from typing import Any

import numpy as np

PACKAGE = "airbench==0.1.8"
PROBE_BATCHES = 6  # timed training steps on a throwaway copy, after WARMUP_BATCHES untimed ones
WARMUP_BATCHES = 2


def ensure_installed() -> None:
    """The package is installed from PyPI when it is missing (it is not part of caviar)."""
    if importlib.util.find_spec("airbench") is None:
        print(f"installing {PACKAGE} from the package index (pip)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", PACKAGE], check=True)


def build_net(num_classes: int) -> Any:
    """make_net94's network without `.half().cuda()`: the whitening conv (frozen weights), three
    conv groups, pooling and the scaled linear head."""
    from airbench import lib_airbench94 as ab
    from torch import nn

    hyp = ab.hyp["net"]
    widths, bn_momentum = hyp["widths"], hyp["batchnorm_momentum"]
    whiten_kernel = 2
    whiten_width = 2 * 3 * whiten_kernel ** 2
    net = nn.Sequential(
        ab.Conv(3, whiten_width, whiten_kernel, padding=0, bias=True),
        nn.GELU(),
        ab.ConvGroup(whiten_width, widths["block1"], bn_momentum),
        ab.ConvGroup(widths["block1"], widths["block2"], bn_momentum),
        ab.ConvGroup(widths["block2"], widths["block3"], bn_momentum),
        nn.MaxPool2d(3),
        ab.Flatten(),
        nn.Linear(widths["block3"], num_classes, bias=False),
        ab.Mul(hyp["scaling_factor"]),
    )
    net[0].weight.requires_grad = False
    return net


class _Epochs:
    """Training batches as airbench's CifarLoader (altflip=True) makes them, from tensors in memory."""

    def __init__(self, images: Any, labels: Any, batch_size: int, aug: dict[str, Any], generator: Any):
        import torch.nn.functional as F
        from airbench import utils

        self.labels, self.batch_size, self.aug, self.generator = labels, batch_size, aug, generator
        self.epoch = 0
        self.size = images.shape[-1]
        flipped = utils.batch_flip_lr(images) if aug.get("flip") else images
        self.pad = aug.get("translate", 0)
        self.base = F.pad(flipped, (self.pad,) * 4, "reflect") if self.pad else flipped

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self):
        import torch
        from airbench import utils

        images = utils.batch_crop(self.base, self.size) if self.pad else self.base
        if self.aug.get("flip") and self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images), generator=self.generator)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[idx], self.labels[idx]


def _triangle(steps: int, start: float, peak_at: float, end: float) -> np.ndarray:
    """airbench's learning-rate factor per step: linear from `start` up to 1 at `peak_at` of the
    steps, then down to `end`."""
    return np.interp(np.arange(steps + 1), [0, int(peak_at * steps), steps], [start, 1.0, end])


def train_seed(root: str, val_size: int, seed: int, deadline: float, threads: int,
               train_subset: int | None = None) -> dict[str, Any]:
    """One seed of airbench94 on caviar's split of `root` (its class-balanced `train_subset`, as
    caviar's data.train_subset takes it), until `deadline` (time.time())."""
    import torch
    from airbench import lib_airbench94 as ab, utils
    from torch import nn

    from caviar.config.loading import load_config
    from caviar.training.data import load_test_set, prepare_data
    from caviar.training.train import autocast

    begin = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = load_config(None, [f"data.root={root}", "data.download=false"])
    data = prepare_data(root, val_size=val_size, train_subset=train_subset, split_seed=config.data.split_seed,
                        download=False)
    test_x, test_y = load_test_set(root, download=False)
    normalize = lambda x: (torch.from_numpy(np.asarray(x)).float() / 255  # noqa: E731
                           - utils.CIFAR_MEAN.view(1, 3, 1, 1)) / utils.CIFAR_STD.view(1, 3, 1, 1)
    train_x, val_x, test_xt = normalize(data.train_x), normalize(data.val_x), normalize(test_x)
    train_y, val_y = torch.from_numpy(data.train_y), torch.from_numpy(data.val_y)
    opt, net_hyp = ab.hyp["opt"], ab.hyp["net"]
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    batches = _Epochs(train_x, train_y, opt["batch_size"], ab.hyp["aug"], generator)
    if len(batches) == 0:
        raise ValueError(f"airbench trains on whole batches of {opt['batch_size']} images; the training split "
                         f"has {len(train_y)}")

    model = build_net(len(data.classes))
    utils.init_whitening_conv(model[0], train_x[:5000])
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]

    def optimizer_for(net_biases: list, net_others: list) -> torch.optim.Optimizer:
        # airbench's decoupled hyperparameters: lr and wd per 1024 images, the step scale of Nesterov momentum
        kilostep_scale = 1024 * (1 + 1 / (1 - opt["momentum"]))
        lr = opt["lr"] / kilostep_scale
        wd = opt["weight_decay"] * opt["batch_size"] / kilostep_scale
        lr_biases = lr * opt["bias_scaler"]
        return torch.optim.SGD([dict(params=net_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                                dict(params=net_others, lr=lr, weight_decay=wd / lr)],
                               momentum=opt["momentum"], nesterov=True)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=opt["label_smoothing"], reduction="none")

    def step(net: nn.Module, optimizer: torch.optim.Optimizer, inputs: Any, labels: Any) -> None:
        with autocast(device, True):
            loss = loss_fn(net(inputs), labels).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # Time a few steps on a throwaway copy, and the test-time passes, to fit the epochs to the budget.
    probe = copy.deepcopy(model).train()
    probe_opt = optimizer_for([p for k, p in probe.named_parameters() if "norm" in k and p.requires_grad],
                              [p for k, p in probe.named_parameters() if "norm" not in k and p.requires_grad])
    probe_batches = itertools.chain.from_iterable(itertools.repeat(batches))  # epoch after epoch
    for _ in range(WARMUP_BATCHES):
        step(probe, probe_opt, *next(probe_batches))
    t = time.perf_counter()
    for _ in range(PROBE_BATCHES):
        step(probe, probe_opt, *next(probe_batches))
    step_s = (time.perf_counter() - t) / PROBE_BATCHES
    t = time.perf_counter()
    utils.infer(probe, _Images(test_xt[:1000]), tta_level=0)
    view_s = (time.perf_counter() - t) / 1000
    del probe, probe_opt, probe_batches
    batches.epoch = 0
    # the end: validation (tta as the test) and the test set, 6 views each at level 2; and a margin
    reserve = 1.3 * 6 * view_s * (len(val_x) + len(test_xt)) + 5.0
    epochs = max(0.25, 0.97 * (deadline - time.time() - reserve) / (step_s * len(batches)))
    total_steps = max(1, int(np.ceil(len(batches) * epochs)))

    optimizer = optimizer_for(norm_biases, others)
    lr_factor = _triangle(total_steps, start=0.2, peak_at=0.23, end=0.07)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: float(lr_factor[min(i, total_steps)]))
    alpha = 0.95 ** 5 * (torch.arange(total_steps + 1) / total_steps) ** 3
    lookahead = utils.LookaheadState(model)
    steps, stopped = 0, False
    for epoch in range(int(np.ceil(epochs))):
        model[0].bias.requires_grad = epoch < opt["whiten_bias_epochs"]
        model.train()
        for inputs, labels in batches:
            step(model, optimizer, inputs, labels)
            scheduler.step()
            steps += 1
            if steps % 5 == 0:
                lookahead.update(model, decay=alpha[steps].item())
            if steps >= total_steps or time.time() + step_s + reserve > deadline:
                stopped = steps < total_steps
                break
        if steps >= total_steps or stopped:
            break
    lookahead.update(model, decay=1.0)  # the lookahead's weights are the ones kept
    tta = net_hyp["tta_level"]
    val_logits = utils.infer(model, _Images(val_x), tta_level=tta)
    test_logits = utils.infer(model, _Images(test_xt), tta_level=tta)
    one_view = utils.infer(model, _Images(test_xt), tta_level=0)
    probs = torch.softmax(test_logits.float(), 1).numpy()
    one = torch.softmax(one_view.float(), 1).numpy()
    return {"seed": seed, "hparams": ab.hyp, "epochs": round(steps / len(batches), 2),
            "planned_epochs": round(epochs, 2), "passes": round(steps / len(batches), 2), "steps": steps,
            "stopped_at_deadline": stopped, "step_s": round(step_s, 3), "bf16": _bf16(device),
            "val_acc": float((val_logits.argmax(1) == val_y).float().mean()),
            "test_acc": float((one.argmax(1) == test_y).mean()), "test_acc_views": float((probs.argmax(1) == test_y).mean()),
            "wall_s": round(time.time() - begin, 1), "probs": one, "view_probs": probs,
            "val_view_probs": torch.softmax(val_logits.float(), 1).numpy()}


class _Images:
    """What airbench's `infer` reads from a loader: already-normalised images."""

    def __init__(self, images: Any):
        self.images = images

    @staticmethod
    def normalize(images: Any) -> Any:
        return images


def _bf16(device: Any) -> bool:
    from caviar.training.train import uses_bf16

    return uses_bf16(device, True)
