"""The typed config of a caviar experiment, with every default in one place.

Every field says its unit and why it has its default. Unknown keys and bad values fail pydantic's
validation, which caviar.config.loading turns into a ConfigError naming the dotted key and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, field_validator, model_validator

from caviar.config.durations import parse_duration
from caviar.config.rung_rules import rung_settings_problem
from caviar.config.space import CONVNET_SHAPE, SpaceConfig, Strict
from caviar.errors import ConfigError
from caviar.layout import MAX_NAME_BYTES, folder_name_problem

# The resolved config, written into the experiment folder before any trial starts (`--resume`
# needs nothing else).


def default_storage() -> str:
    """Where experiments go unless `storage` says otherwise: CAVIAR_RESULTS or ~/caviar_results."""
    return os.environ.get("CAVIAR_RESULTS", str(Path("~/caviar_results").expanduser()))


def default_data_root() -> Path:
    """CAVIAR_DATA if set, else ~/.cache/caviar/data (the folder that holds cifar-10-batches-py/)."""
    env = os.environ.get("CAVIAR_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "caviar" / "data"


# ---------------------------------------------------------------- sections
class AugmentConfig(Strict):
    """Training-time augmentation, batched on the device. Each may be searched instead (space.crop,
    space.flip, space.cutout); mirror test-time averaging follows `flip`."""

    crop: int = Field(4, ge=0, le=16)  # random crop after zero padding by this many pixels; 0 = none
    flip: bool = True  # random horizontal flips; off where a mirror image is another thing (letters)
    cutout: int = Field(0, ge=0, le=32)  # side of a square zeroed at a random place per image; 0 = none
    # What fills the crop's padding: zeros (black) or reflect (the image mirrored at its edge, as
    # airbench pads: no black frame on images whose background is bright).
    pad_mode: Literal["zeros", "reflect"] = "zeros"


class DataConfig(Strict):
    # Folder holding the dataset: cifar-10-batches-py/, cifar-100-python/, or train/<class>/*.png
    # and test/<class>/*.png (data.format); null = $CAVIAR_DATA or ~/.cache/caviar/data
    root: Optional[str] = None
    format: Literal["cifar10", "cifar100", "imagefolder"] = "cifar10"  # what data.root holds (see root)
    labels: Literal["fine", "coarse"] = "fine"  # CIFAR-100: its 100 fine or 20 coarse classes
    image_size: int = Field(32, ge=8, le=256)  # an image folder's images are resized to this square (pixels)
    val_size: int = Field(5000, ge=1)  # images held out of the training set, same for every trial (scores need some)
    split_seed: int = Field(0, ge=0, le=2**32 - 1)  # seed of the one fixed train/val permutation (numpy's range)
    train_subset: Union[int, float, None] = None  # class-balanced count (int) or fraction; None = all
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    download: bool = True  # fetch CIFAR-10 (md5-checked) when data.root has no copy

    def known_classes(self) -> int | None:
        """The classes a CIFAR format always has (CIFAR-100: fine or coarse); None for an image
        folder, whose class folders say (read with the data)."""
        return {"cifar10": 10, "cifar100": 100 if self.labels == "fine" else 20}.get(self.format)

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_switch(cls, value: Any) -> Any:
        # The one switch of older files: true = crop 4 and flip, false = neither.
        if isinstance(value, bool):
            return {"crop": 4 if value else 0, "flip": value, "cutout": 0}
        return value

    @field_validator("train_subset")
    @classmethod
    def _subset_positive(cls, value: Any) -> Any:
        if value is not None and value <= 0:
            raise ValueError("must be a positive count (e.g. 2000) or a fraction in (0, 1], or null for all")
        if isinstance(value, float) and value > 1:
            raise ValueError("a fraction must be at most 1.0; write a whole number for an image count")
        return value


class ModelConfig(Strict):
    family: Literal["convnet", "resnet"] = "convnet"  # convnet: the notes' net; resnet: ResNet-9 style
    width: float = Field(1.0, gt=0)  # resnet width multiplier (1.0 = 64-128-256-512 channels)
    # Classes of the classifier head; null = as many as the data has (a stated count must match it).
    num_classes: Optional[int] = Field(None, ge=2)


class SearchConfig(Strict):
    # asha: early stopping (caviar.search.schedulers.PromotingASHA); random: every trial to the end; pbt:
    # population-based training (Ray's PopulationBasedTraining), whose population is an ensemble
    scheduler: Literal["asha", "random", "pbt"] = "asha"
    num_samples: int = Field(64, ge=1)  # trials drawn from the space
    max_epochs: int = Field(20, ge=1)  # epoch budget of one trial; LR schedules span it
    grace_period: int = Field(1, ge=1)  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = Field(3, ge=2)  # ASHA: keep the top 1/eta at each rung
    # ASHA: a rung promotes its top 1/reduction_factor only once this many trials (and at least
    # reduction_factor) have reached it; until then trials wait there, paused (caviar.search.schedulers),
    # so with few slots the first trials are not let through unopposed.
    min_rung_trials: int = Field(3, ge=1)
    # PBT: epochs between exploit/explore steps (the bottom quarter copies the top quarter's
    # weights and perturbs lr, weight_decay, momentum, dropout by x0.8/x1.2 or resamples them).
    pbt_interval: int = Field(2, ge=1)
    seed: Union[int, None] = Field(0, ge=0, le=2**32 - 1)  # seed of the random search, so a sweep is repeatable; null = fresh
    max_concurrent: int = Field(0, ge=0)  # cap on running trials; 0 = as many as resources allow
    # Configs tried first, exactly (Ray's points_to_evaluate): e.g. known good settings, or a
    # staged run's top configs (stage `from_top`). Each is a mapping of space entries; the rest drawn.
    points: list[dict[str, Any]] = Field(default_factory=list)
    # random: the notes' advice for convnets; tpe: Bayesian (Optuna's TPE via Ray Tune), needs
    # `pip install caviar[bayes]`. Same space, same schedulers.
    algorithm: Literal["random", "tpe"] = "random"
    # Warn when the best trial sits in this outer fraction of a numeric range (in its sampling
    # scale, e.g. log10 for lr): a better value may lie beyond the edge (caviar.results.border).
    border_fraction: float = Field(0.1, gt=0, lt=0.5)
    # What ASHA's rungs count (grace_period, then x reduction_factor, up to max_epochs): epochs, or
    # the seconds those epochs take at `epoch_seconds`. A budget buys time, not epochs: in seconds,
    # a config twice as fast has trained twice the epochs when it is judged, as it would in the
    # time the budget leaves to train it (caviar.search.schedulers.PromotingASHA).
    fidelity: Literal["epochs", "seconds"] = "epochs"
    # Seconds of one epoch, what `fidelity: seconds` converts epochs with: with a budget, the planner
    # writes the speed its probe measured (caviar.sweeps.budget); without one, set it by hand.
    epoch_seconds: Optional[float] = Field(None, gt=0)
    # How an ASHA trial's LR schedule runs: `schedule` spans its max_epochs (a trial judged at a rung
    # is mid-schedule, at a high LR); `rung` anneals to zero at each rung it reaches, per step, and a
    # promoted trial goes on from its checkpoint on a new schedule that anneals at the next rung, so
    # every rung ranks trials as annealed runs of that length rank (Li, Yumer & Ramanan 2020:
    # budgeted training; caviar.training.rungs). Rungs then count epochs (fidelity: epochs).
    anneal: Literal["schedule", "rung"] = "schedule"


    @model_validator(mode="before")
    @classmethod
    def _metric_is_val_acc(cls, values: Any) -> Any:
        # Trials are ranked by val_acc everywhere (ASHA, checkpoint names, the leaderboard), so
        # there is no `search.metric` to set; files written when it existed (metric: val_acc) load.
        if isinstance(values, dict) and "metric" in values:
            if values["metric"] != "val_acc":
                raise ValueError(f"metric: caviar ranks trials by val_acc only (got {values['metric']!r}); "
                                 "remove search.metric")
            values = {key: value for key, value in values.items() if key != "metric"}
        return values

class ResourcesConfig(Strict):
    cpus_per_trial: float = Field(1.0, gt=0)  # CPU slots per trial; torch uses that many threads
    # GPU share per trial, at most 1 (a trial trains on one GPU); a fraction such as 0.25 puts 4
    # trials on each GPU; auto = a share per model family; 0 = CPU only.
    gpus_per_trial: Union[float, Literal["auto"]] = "auto"

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpus_nonnegative(cls, value: Any) -> Any:
        if value != "auto" and value < 0:
            raise ValueError("must be >= 0 (a fraction such as 0.25 shares one GPU among 4 trials) or 'auto'")
        if value != "auto" and value > 1:
            raise ValueError("must be at most 1: a trial trains on one GPU, so more would hold GPUs that sit idle; "
                             "use 1 for a whole GPU per trial, or a fraction such as 0.25 to share one")
        return value


class CheckpointConfig(Strict):
    # Best checkpoints kept per trial (by val_acc; Ray also keeps the latest). More than one keeps
    # snapshots from different epochs of the best trial for the ensemble (`--snapshots N`).
    keep: int = Field(3, ge=1)
    max_failures: int = Field(3, ge=0)  # retries of a crashed trial from its last checkpoint


class AverageConfig(Strict):
    """A running average of each trial's weights, stored beside the raw weights in every checkpoint
    and used as its own ensemble member (batch-norm statistics recomputed before use)."""

    # swa: equal average of end-of-epoch weights (needs 2+ averaged epochs, else no average)
    method: Literal["swa", "ema", "none"] = "swa"
    start: float = Field(0.75, ge=0, lt=1)  # averaging covers epochs after this fraction of max_epochs
    # ema: per-step decay of the old average at a batch size of 128; a trial with batch size B
    # uses ema_decay ** (B / 128), so the average spans the same number of images (not steps)
    # whatever the batch size (at 1024, 0.999 -> 0.992).
    ema_decay: float = Field(0.999, gt=0, lt=1)
    bn_images: int = Field(10000, ge=1)  # training images used to recompute batch-norm statistics


class TrainConfig(Strict):
    # Stop a trial when a batch loss exceeds this multiple of the chance loss ln(classes) (23 nats
    # for CIFAR-10 at 10x). The notes' rule is 3x for quick first stages; 10x leaves room for noisy
    # starts. NaN/inf always stops it.
    diverge_factor: float = Field(10.0, gt=1)
    # Images per forward pass when evaluating; auto: 1024 on CUDA, 64 on CPU (cache-sized batches
    # were 1.5-3x faster there, see benchmarks).
    eval_batch_size: Union[Literal["auto"], int] = "auto"
    # bfloat16 autocast where bf16 is native: GPUs of compute capability >= 8.0 (A100, A10G, L4,
    # H100) and CPUs with AVX512-BF16 or AMX; float32 elsewhere (T4, V100, other CPUs emulate it).
    amp: bool = True
    channels_last: bool = True  # NHWC inputs: faster convolutions on CUDA and on CPU (oneDNN), see benchmarks
    # Images per epoch: a count, a fraction of the training set, or null for one whole pass. Each
    # epoch draws a fresh random order of the whole set, so a smaller epoch is a finer fidelity in
    # images seen (ASHA's rungs, LR schedules, checkpoints and the leaderboard count these epochs),
    # not a fixed subset: a first rung of 1/4 pass ranks trials on 4x cheaper evidence.
    epoch_size: Union[int, float, None] = None

    @field_validator("epoch_size")
    @classmethod
    def _epoch_size(cls, value: Any) -> Any:
        return DataConfig._subset_positive(value)

    @field_validator("eval_batch_size", mode="before")
    @classmethod
    def _batch_size_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError("must be a positive whole number of images (e.g. 256) or auto")


class StageConfig(Strict):
    """One stage of a coarse-to-fine sweep (caviar.sweeps.stages): its own Ray Tune experiment. The next
    stage's ranges come from this stage's top trials (narrowed, or widened past an edge)."""

    name: str  # folder of the stage inside the experiment folder, e.g. coarse -> stage1-coarse
    epochs: int = Field(ge=1)  # search.max_epochs of this stage (LR schedules span it)
    num_samples: int = Field(ge=1)  # trials of this stage
    train_subset: Union[int, float, None] = None  # images (int) or fraction; null = data.train_subset; 1.0 = all
    scheduler: Optional[Literal["asha", "random"]] = None  # null = search.scheduler
    top: Union[int, float] = Field(0.25, gt=0)  # trials whose values set the next ranges: fraction or count
    pad: float = Field(0.1, ge=0)  # margin around the top trials' span, x this range's width (sampling scale)
    widen: float = Field(0.5, gt=0)  # past an edge where the best sits, x this range's width
    # Train the previous stage's best N configs (their exact hyperparameters, new seeds) for this
    # stage's epochs, instead of drawing new ones from narrowed ranges: the last step of a search,
    # where the winners get the epochs (and weight averages) the search could not give them all.
    # num_samples is then N and the scheduler random (every trial to the end).
    from_top: Optional[int] = Field(None, ge=1)
    # How a from_top stage picks its N: `rank` (the best N), or `diverse`: the best, then among the
    # `top` share the config that adds most to those picked, judged on validation with their search
    # checkpoints (caviar.sweeps.diverse), so the ensemble's members err on different images.
    pick: Literal["rank", "diverse"] = "rank"

    def scheduler_run(self, default: str) -> str:
        """The scheduler this stage's sweep runs: random for a from_top stage (every winner trains
        to the end), else its own or `default` (search.scheduler)."""
        return "random" if self.from_top else self.scheduler or default

    @field_validator("name")
    @classmethod
    def _stage_name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_" for c in value) or len(value.encode()) > MAX_NAME_BYTES:
            raise ValueError("must be a short name of letters, digits, '-' or '_' (e.g. coarse)")
        return value

    @field_validator("train_subset")
    @classmethod
    def _subset(cls, value: Any) -> Any:
        return DataConfig._subset_positive(value)

    @model_validator(mode="after")
    def _pick_needs_from_top(self) -> "StageConfig":
        if self.pick != "rank" and not self.from_top:
            raise ValueError(f"pick: {self.pick} chooses which of the stage before's configs a from_top stage "
                             "trains; set from_top: N too, or leave pick out")
        return self


class Config(Strict):
    name: str = "cifar10-asha"  # experiment folder name under `storage`
    storage: Optional[str] = None  # local path, NFS path or s3:// URI; null = $CAVIAR_RESULTS or ~/caviar_results
    # A local `storage` path that every node of a multi-node cluster mounts, in a way caviar cannot
    # tell from the filesystem type (NFS and the like are recognised): see caviar.search.cluster.
    storage_shared: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    average: AverageConfig = Field(default_factory=AverageConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # Coarse-to-fine stages run by one `caviar sweep` (caviar.sweeps.stages); empty = one plain sweep.
    stages: list[StageConfig] = Field(default_factory=list)
    # Wall-clock budget of the sweep, e.g. 30m or 2h (caviar.sweeps.budget): trials, epochs and stages
    # are sized to fit it on the machine or cluster it runs on; null = run what the file says.
    budget: Optional[str] = None
    # How a budgeted staged sweep spends its time (caviar.sweeps.shapes): auto = chosen from how many
    # runs of the recipe (search.points[0]) the budget holds per slot; recipe = no search, the recipe
    # from new seeds the whole budget; search = the file's stages; ensemble = members first.
    shape: Literal["auto", "recipe", "search", "ensemble"] = "auto"
    # Experiment trackers that also receive every trial (hyperparameters, per-epoch metrics) through
    # Ray Tune's logger callbacks, and the leaderboard and ensemble figures (caviar.search.tracking):
    # mlflow, wandb; [] = the experiment folder only. Each needs its extra (`pip install caviar[mlflow]`).
    log: list[Literal["mlflow", "wandb"]] = Field(default_factory=list)

    @field_validator("log", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):  # --set log=mlflow, --set log=mlflow,wandb
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"names a tracker twice (got {value})")
        return value

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_is_a_duration(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            parse_duration(value)
        except ConfigError as error:
            raise ValueError(str(error).removeprefix(f"budget {value!r}: ")) from None
        return str(value)

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, value: list) -> list:
        names = [stage.name for stage in value]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must differ (got {names})")
        return value

    @model_validator(mode="after")
    def _space_fits_the_model(self) -> "Config":
        # The default space searches the convnet's shape. A ResNet-9 ignores those entries, so
        # drawn they were noise in its leaderboard that narrowing and the border check acted on
        # ("best value on the border: conv_layers" for a ResNet): they are left out of its space,
        # as an experiment saved before this rule (its caviar.yaml lists them) is read too.
        if self.model.family == "convnet":
            return self
        unused = {name: None for name in CONVNET_SHAPE if getattr(self.space, name) is not None}
        if unused:  # without validation: assigning would run this validator again
            object.__setattr__(self, "space", self.space.model_copy(update=unused))
        return self

    @model_validator(mode="after")
    def _points_name_the_space(self) -> "Config":
        # Ray checks a point's keys only when the sweep starts (and a typo then fails inside it).
        known = set(SpaceConfig.model_fields) | {"seed", "max_epochs"}  # max_epochs: caviar.training.trial.TRIAL_EPOCHS_KEY
        for i, point in enumerate(self.search.points):
            unknown = sorted(set(point) - known)
            if unknown:
                raise ValueError(f"search.points[{i}] names {', '.join(map(repr, unknown))}, which the space does not "
                                 f"have; a point may set {', '.join(sorted(known))}")
            epochs = point.get("max_epochs", 1)
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                raise ValueError(f"search.points[{i}].max_epochs must be a whole number of epochs >= 1 "
                                 f"(got {epochs!r})")
        return self

    @model_validator(mode="after")
    def _rung_settings_agree(self) -> "Config":
        rung_settings_problem(self)  # ASHA's settings that would contradict each other (caviar.config.rung_rules)
        return self

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        problem = folder_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def resolved(self) -> "Config":
        """A copy with the environment-dependent defaults (data root, storage) filled in, as saved
        with an experiment so that resuming it later reads the same data and folder."""
        copy_ = self.model_copy(deep=True)
        copy_.storage = self.storage or default_storage()
        copy_.data.root = self.data.root or str(default_data_root())
        return copy_

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
