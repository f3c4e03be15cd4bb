"""What every trial of a sweep shares (not searched): `TrialSettings`, taken from the resolved
config and the data, and the rules that follow from an epoch count."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from caviar.config.schedulers import SCHEDULERS, rungs
from caviar.config.schema import Config
from caviar.training.data import CIFAR10_MEAN, CIFAR10_STD, SplitData

# A trial config's own epoch count, set when a stage sizes each of its configs to its own speed.
TRIAL_EPOCHS_KEY = "max_epochs"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares (not searched), taken from the resolved config."""

    family: str
    width: float
    num_classes: int
    max_epochs: int
    augment: bool  # training-time augmentation at all; then crop, flip and cutout say which
    eval_batch_size: int | str  # or "auto": by device (caviar.training.train.eval_batch_size)
    amp: bool
    channels_last: bool
    max_loss: float  # a batch loss above this marks the trial diverged
    threads: int  # torch compute threads = the CPUs the trial was given (more only oversubscribes)
    average: str = "none"  # running average of weights: swa, ema or none
    average_after: int = 0  # epochs after this one are averaged
    ema_decay: float = 0.999
    epoch_size: int | float | None = None  # images per epoch (count or fraction); None = all
    bn_images: int = 10000  # training images used to recompute batch-norm statistics of the average
    average_method: str = "none"  # as configured (`average` is what these epochs make of it)
    average_start: float = 0.75  # the share of the epochs after which averaging starts
    ends_by: float | None = None  # a deadline (time.time()) to fit the epoch count to (Trial.refit)
    crop: int = 4  # random-crop padding, pixels (0 = none); a trial's own `crop` hyperparameter wins
    flip: bool = True  # random horizontal flips; a trial's own `flip` wins
    cutout: int = 0  # side of the square zeroed at random, pixels (0 = none); a trial's own wins
    pad_mode: str = "zeros"  # what fills the crop's padding: zeros or reflect (caviar.training.augment.PAD_MODES)
    mean: tuple[float, ...] = CIFAR10_MEAN  # the dataset's per-channel statistics (SplitData), 0..1 scale
    std: tuple[float, ...] = CIFAR10_STD
    image_size: int = 32  # pixels per side of the images it trains on (data.image_size for an image folder)
    class_names: tuple[str, ...] = ()  # the data's classes in label order (what a prediction names); () unknown
    # Epochs at which the LR anneals to zero before max_epochs (search.anneal: rung, the ASHA rungs;
    # caviar.training.rungs); () = the schedule spans max_epochs.
    anneal_at: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: Config, data: SplitData | None = None) -> "TrialSettings":
        """The settings of `config`'s trials on `data` (its class count and statistics; without it,
        what the config's data format implies, CIFAR's statistics)."""
        classes = config.model.num_classes or (len(data.classes) if data is not None else None) \
            or config.data.known_classes()
        if classes is None:
            raise ValueError("the number of classes comes from the data: pass the data, or set model.num_classes")
        augment = config.data.augment
        settings = cls(
            family=config.model.family,
            width=config.model.width,
            num_classes=classes,
            max_epochs=config.search.max_epochs,
            augment=True,
            crop=augment.crop,
            flip=augment.flip,
            cutout=augment.cutout,
            pad_mode=augment.pad_mode,
            mean=tuple(data.mean) if data is not None else CIFAR10_MEAN,
            std=tuple(data.std) if data is not None else CIFAR10_STD,
            image_size=int(data.train_x.shape[-1]) if data is not None else 32,
            class_names=tuple(str(name) for name in data.classes) if data is not None else (),
            eval_batch_size=config.train.eval_batch_size,
            amp=config.train.amp,
            channels_last=config.train.channels_last,
            max_loss=config.train.diverge_factor * math.log(classes),
            threads=max(1, int(config.resources.cpus_per_trial)),
            ema_decay=config.average.ema_decay,
            epoch_size=config.train.epoch_size,
            bn_images=config.average.bn_images,
            average_method=config.average.method,
            average_start=config.average.start,
            anneal_at=annealed_rungs(config),
        )
        return settings.with_epochs(config.search.max_epochs)

    @property
    def anneal_ends(self) -> tuple[int, ...]:
        """Where the LR reaches zero: the rungs below max_epochs, then max_epochs (caviar.training.rungs)."""
        return tuple(e for e in self.anneal_at if e < self.max_epochs) + (self.max_epochs,)

    def with_epochs(self, max_epochs: int) -> "TrialSettings":
        """These settings for a trial of `max_epochs` epochs: its LR schedule, its end, and when its
        weight averaging starts all follow."""
        average_after = int(self.average_start * max_epochs)
        return replace(self, max_epochs=max_epochs, average_after=average_after,
                       average=effective_average(self.average_method, max_epochs - average_after))

    def for_trial(self, hparams: dict[str, Any]) -> "TrialSettings":
        """A trial's own epoch count (`max_epochs` in its config, as a stage that trains chosen
        configs gives each one: caviar.sweeps.stages) and augmentations it drew (space.crop, flip,
        cutout) win over the sweep's."""
        own = {name: kind(hparams[name]) for name, kind in (("crop", int), ("flip", bool), ("cutout", int))
               if hparams.get(name) is not None}
        settings = replace(self, **own) if own else self
        epochs = hparams.get(TRIAL_EPOCHS_KEY)
        return settings if epochs is None else settings.with_epochs(int(epochs))

    @property
    def augmentation(self) -> dict[str, Any]:
        """The augmentation keywords of train_one_epoch, which the batch-norm pass of an average
        takes too (caviar.training.train.reestimate_bn): its statistics must be the training inputs'."""
        return {"augment": self.augment, "crop": self.crop, "flip": self.flip, "cutout": self.cutout,
                "pad_mode": self.pad_mode}

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel, as the training loop's `stats`."""
        return self.mean, self.std


def annealed_rungs(config: Config) -> tuple[int, ...]:
    """The epochs of ASHA's rungs below max_epochs where `search.anneal: rung` anneals a trial's LR;
    () for a sweep that does not judge trials at rungs, or anneals over the whole schedule."""
    search = config.search
    if search.anneal != "rung" or not SCHEDULERS[search.scheduler].rungs:
        return ()
    return tuple(rungs(search.max_epochs, min(search.grace_period, search.max_epochs), search.reduction_factor)[:-1])


def effective_average(method: str, averaged_epochs: int) -> str:
    """SWA samples the weights once per epoch: over a single epoch its "average" is the trained
    model itself, a duplicate ensemble member that costs a batch-norm pass per epoch. It needs at
    least 2 averaged epochs (EMA averages every step, so one epoch is enough)."""
    if method == "swa" and averaged_epochs < 2:
        return "none"
    return method
