"""A re-implementation of the official Ray Tune CIFAR-10 tutorial's pipeline: the baseline.

What users copy from "Hyperparameter tuning with Ray Tune" (PyTorch tutorials), rewritten here:

- every trial calls ``load_data``: torchvision's ``CIFAR10`` reads the pickles from disk into
  its own copy of the dataset (train and test sets),
- ``random_split`` of the training set into train / validation (80/20 in the tutorial; here the
  same sizes as caviar's split, so both train on the same number of images),
- ``DataLoader(..., shuffle=True, num_workers=8)`` for both, with per-image PIL transforms
  (``ToTensor``, ``Normalize``) plus the random-crop / flip augmentation users add,
- a plain loop with ``loss.item()`` per batch, a validation pass, a pickled checkpoint and
  ``tune.report`` per epoch, one process per trial (``reuse_actors=False``).

The tutorial uses num_workers=8, written for an 8+ core machine; the benchmarks default to
``min(8, cores)`` workers and record the number used. To compare data pipelines only, the
network, optimizer and LR schedule are caviar's (``build_model``, ``make_optimizer``,
``make_scheduler``) with the same hyperparameters.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, random_split
from torchvision import transforms

from caviar.training.data import CIFAR10_MEAN, CIFAR10_STD
from caviar.training.models import build_model
from caviar.training.train import make_optimizer, make_scheduler


class TutorialCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 with its md5 checks skipped.

    torchvision refuses any copy of CIFAR-10 it did not download itself (it checks every file's
    md5), and the benchmarks run on generated fixtures in the same file format. Everything else
    (unpickling, the HWC uint8 array, a PIL image per ``__getitem__``) is torchvision's own code.
    """

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).exists() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def train_transform(augment: bool = True) -> transforms.Compose:
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def load_data(data_dir: str | Path, augment: bool = True) -> tuple[TutorialCIFAR10, TutorialCIFAR10]:
    """The tutorial's load_data: both sets, read from disk by every trial that calls it."""
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    trainset = TutorialCIFAR10(str(data_dir), train=True, download=False, transform=train_transform(augment))
    testset = TutorialCIFAR10(str(data_dir), train=False, download=False, transform=plain)
    return trainset, testset


def split_loaders(trainset, val_size: int, batch_size: int, workers: int, train_size: int | None = None):
    """random_split into train / val (unseeded, as in the tutorial), a DataLoader for each.

    train_size caps the training part (the rest of the set is left unused) so that throughput
    runs can time a subset; None keeps everything that is not validation.
    """
    n = len(trainset)
    train_n = n - val_size if train_size is None else min(train_size, n - val_size)
    train_part, val_part, _ = random_split(trainset, [train_n, val_size, n - train_n - val_size])
    train_loader = DataLoader(train_part, batch_size=batch_size, shuffle=True, num_workers=workers)
    val_loader = DataLoader(val_part, batch_size=batch_size, shuffle=True, num_workers=workers)
    return train_loader, val_loader


def train_epoch(net, optimizer, loader, device, max_batches: int | None = None) -> tuple[int, float]:
    """The tutorial's inner loop; returns (images seen, mean loss)."""
    net.train()
    seen, running = 0, 0.0
    for i, (inputs, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(net(inputs), labels)
        loss.backward()
        optimizer.step()
        running += loss.item() * len(labels)  # the tutorial's running_loss += loss.item()
        seen += len(labels)
    return seen, running / max(seen, 1)


@torch.no_grad()
def validate(net, loader, device) -> tuple[float, float]:
    net.eval()
    total, correct, loss = 0, 0, 0.0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        outputs = net(inputs)
        loss += F.cross_entropy(outputs, labels, reduction="sum").item()
        correct += (outputs.argmax(1) == labels).sum().item()
        total += len(labels)
    return loss / max(total, 1), correct / max(total, 1)


def device() -> torch.device:
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def build(hparams: dict[str, Any], family: str, width: float, max_epochs: int, dev: torch.device):
    net = build_model(family, hparams, width=width).to(dev)
    optimizer = make_optimizer(hparams["optimizer"], net.parameters(), hparams["lr"], hparams["momentum"],
                               hparams["weight_decay"])
    return net, optimizer, make_scheduler(hparams["lr_schedule"], optimizer, max_epochs)


def train_cifar(config: dict[str, Any], data_dir: str, settings: dict[str, Any]) -> None:
    """The tutorial's trainable: data loaded per trial, a pickled checkpoint per epoch."""
    from ray import tune

    dev = device()
    torch.manual_seed(int(config.get("seed", 0)))
    net, optimizer, scheduler = build(config, settings["family"], settings["width"], settings["epochs"], dev)
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder, open(Path(folder) / "data.pkl", "rb") as f:
            state = pickle.load(f)
        net.load_state_dict(state["net_state_dict"])
        optimizer.load_state_dict(state["optimizer_state_dict"])
        start = state["epoch"]
    trainset, _ = load_data(data_dir, augment=settings.get("augment", True))
    train_loader, val_loader = split_loaders(trainset, settings["val_size"], int(config["batch_size"]),
                                             settings["workers"])
    for epoch in range(start, settings["epochs"]):
        _, train_loss = train_epoch(net, optimizer, train_loader, dev)
        val_loss, val_acc = validate(net, val_loader, dev)
        scheduler.step()
        with tempfile.TemporaryDirectory() as folder:
            with open(Path(folder) / "data.pkl", "wb") as f:
                pickle.dump({"epoch": epoch + 1, "net_state_dict": net.state_dict(),
                             "optimizer_state_dict": optimizer.state_dict()}, f)
            tune.report({"epoch": epoch + 1, "train_loss": train_loss, "loss": val_loss, "val_acc": val_acc},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def sweep(param_space: dict[str, Any], num_samples: int, seed: int, data_dir: str, settings: dict[str, Any],
          cpus_per_trial: float, gpus_per_trial: float, storage: str, name: str) -> tuple[float, Any]:
    """A tutorial-style Tuner over the same configs caviar would draw; returns (wall s, ResultGrid).

    Same search algorithm and seed as caviar's sweeper, so both sweeps train the same configs.
    """
    import ray.cloudpickle
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Ship this module's code to the workers by value: they may not have benchmarks/ on their path
    # (a Ray started elsewhere, such as the test suite's).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainable = tune.with_resources(tune.with_parameters(train_cifar, data_dir=str(data_dir), settings=settings),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", num_samples=num_samples,
                                    search_alg=BasicVariantGenerator(random_state=seed), reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    )
    begin = time.perf_counter()
    grid = tuner.fit()
    return time.perf_counter() - begin, grid
