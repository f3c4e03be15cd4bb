"""The `space` section of a config: ranges, choices and fixed values, and what each
hyperparameter may be (its type, its meaningful values, lr per optimizer)."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Scalar = Union[bool, int, float, str]


class Strict(BaseModel):
    # extra="forbid": a typo such as `search.num_sample` must fail, not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def describe_item(item: dict[str, Any]) -> str:
    """One of pydantic's errors as caviar prints it: the dotted key, what is wrong, the value given."""
    key = ".".join(str(part) for part in item["loc"])
    if item["type"] == "extra_forbidden":
        return f"{key}: unknown key; check the spelling (`caviar config` lists every key)"
    message = item["msg"].removeprefix("Value error, ")
    shown = item.get("input")
    got = f" (got {shown!r})" if not isinstance(shown, (dict, Range, Choice)) else ""
    return f"{key}: {message}{got}" if key else f"{message}{got}"


# ---------------------------------------------------------------- search space entries
class Range(Strict):
    """A numeric range sampled on a stated scale (see caviar.config.scales.SCALES for the rules)."""

    low: float
    high: float
    scale: Literal["linear", "log", "int", "log_int", "one_minus_log"] = "linear"

    @model_validator(mode="after")
    def _check_bounds(self) -> "Range":
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g}); swap them or widen the range")
        if self.scale in ("log", "log_int") and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low:g}); use e.g. low: 1.0e-6, or scale: linear")
        if self.scale == "one_minus_log" and not (0 <= self.low and self.high < 1):
            raise ValueError(
                f"scale one_minus_log samples 1 - 10**u, so it needs 0 <= low < high < 1 (got {self.low:g}..{self.high:g})"
            )
        if self.scale in ("int", "log_int") and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an integer range needs whole-number bounds (got {self.low:g}..{self.high:g})")
        return self


class Choice(Strict):
    """A categorical choice, sampled uniformly (random search, never a grid)."""

    choices: list[Scalar] = Field(min_length=1)


# A hyperparameter is a fixed value, a Range or a Choice. A bare YAML list is a Choice too.
Param = Union[Range, Choice, Scalar]


def possible_values(param: Any) -> list[Any]:
    """What a fixed or categorical entry can be drawn as: its choices, or its one value."""
    return list(param.choices) if isinstance(param, Choice) else [param]

# What each hyperparameter may take, so a typo ("adma") fails before the sweep, not in a trial.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad")
LR_SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine")
CATEGORIES: dict[str, tuple[Any, ...]] = {
    "optimizer": OPTIMIZERS,
    "lr_schedule": LR_SCHEDULES,
    "init": ("he", "xavier"),
    "batch_norm": (True, False),
    "activation": ("relu", "elu", "tanh"),
    "flip": (True, False),
    "whiten": (True, False),
    "alternate_flips": (True, False),
    "lookahead": (True, False),
    "decoupled": (True, False),
}
INTEGERS = ("batch_size", "conv_layers", "conv_width", "fc_layers", "fc_width")
# Space entries that shape the convnet only: other families leave them out of their space.
CONVNET_SHAPE = ("conv_layers", "conv_width", "fc_layers", "fc_width")
# Augmentations a trial may draw (caviar.config.schema.AugmentConfig); null = data.augment's value.
AUGMENTS = ("crop", "flip", "cutout")
PIXELS = ("crop", "cutout")  # whole numbers of pixels, 0 = off
# Training options a space may leave out (null): the trial then trains without them.
OPTIONAL = ("label_smoothing", "whiten", "alternate_flips", "lookahead", "bn_lr_scale", "decoupled")
# Optimizers whose lr and weight decay `decoupled` can restate per 1024 images (caviar.training.recipe).
DECOUPLABLE = ("sgd", "momentum", "nesterov")


# What a value can mean, beyond its type: a probability, a momentum below 1, a depth the 32-pixel
# input allows (each conv block halves it: 5 blocks reach 1 pixel). (low, high, high included)
MEANINGFUL: dict[str, tuple[float, float, bool, str]] = {
    "dropout": (0.0, 1.0, False, "a drop probability in [0, 1)"),
    "momentum": (0.0, 1.0, False, "a momentum / beta1 in [0, 1)"),
    "conv_layers": (1, 5, True, "1 to 5 conv blocks (each halves the 32-pixel image)"),
    "crop": (0, 16, True, "0 to 16 pixels of padding for the random crop (0 = no crop)"),
    "cutout": (0, 32, True, "a 0 to 32 pixel square zeroed at random (0 = no cutout)"),
    "label_smoothing": (0.0, 1.0, False, "a share of the target spread over all classes, in [0, 1)"),
}


def _check_meaning(name: str, value: float) -> None:
    if name in MEANINGFUL:
        low, high, inclusive, what = MEANINGFUL[name]
        if value < low or value > high or (value == high and not inclusive):
            raise ValueError(f"{value!r} is outside {what}")


def _check_value(name: str, value: Any) -> None:
    if name in CATEGORIES:
        if value not in CATEGORIES[name] or isinstance(value, bool) != isinstance(CATEGORIES[name][0], bool):
            raise ValueError(f"{value!r} is not one of {list(CATEGORIES[name])}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    elif name in INTEGERS and (value != int(value) or value < 1):
        raise ValueError(f"{value!r} is not a positive whole number")
    elif name in PIXELS and value != int(value):
        raise ValueError(f"{value!r} is not a whole number of pixels")
    elif value < 0:
        raise ValueError(f"{value!r} is negative")
    else:
        _check_meaning(name, value)


def _as_param(name: str, value: Any) -> Any:
    """A YAML value -> fixed value, Range or Choice, checked against what `name` accepts."""
    if isinstance(value, list):
        value = {"choices": value}
    if isinstance(value, dict):
        kind = Choice if "choices" in value else Range
        try:
            value = kind.model_validate(value)
        except ValidationError as error:
            raise ValueError("; ".join(describe_item(item) for item in error.errors())) from None
    if isinstance(value, Choice):
        for choice in value.choices:
            _check_value(name, choice)
    elif isinstance(value, Range):
        if name in CATEGORIES:
            raise ValueError(f"is categorical; give a list of choices from {list(CATEGORIES[name])}")
        if (name in INTEGERS or name in PIXELS) and value.scale not in ("int", "log_int"):
            raise ValueError(f"takes whole numbers; use scale: int or scale: log_int (got scale: {value.scale})")
        _check_meaning(name, value.low)
        _check_meaning(name, value.high)
    else:
        _check_value(name, value)
    return value


def _lr_by_optimizer(value: dict[str, Any]) -> dict[str, Any]:
    """`lr: {adam: {low: 1e-4, high: 1e-2, scale: log}, nesterov: {...}}`: a range per optimizer."""
    unknown = [name for name in value if name not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is neither a range key (low, high, scale, choices) nor an optimizer "
                         f"{list(OPTIMIZERS)}; give one range, or one per optimizer")
    entries = {}
    for name, entry in value.items():
        try:
            entries[name] = _as_param("lr", entry)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    return entries


# A range per optimizer: SGD's useful step sizes sit ~2 decades above Adam's, so one shared range
# spends most of each optimizer's trials where it cannot train.
ByOptimizer = dict[str, Union[Range, Choice, float]]


class SpaceConfig(Strict):
    """The search space. Defaults follow the notes: log scale for rates, linear for dropout.
    Each entry is a fixed value, a list of choices, or {low, high, scale} (scales: caviar.search.space);
    `lr` may also give one of those per optimizer ({adam: {...}, nesterov: {...}})."""

    lr: Union[Param, ByOptimizer] = Range(low=1e-6, high=10, scale="log")  # step size; 10 ** uniform(-6, 1)
    weight_decay: Param = Range(low=1e-6, high=1e-1, scale="log")  # L2 strength per step, log scale
    dropout: Param = Range(low=0.1, high=0.7, scale="linear")  # drop probability (keep 0.3..0.9)
    momentum: Param = Range(low=0.9, high=0.999, scale="one_minus_log")  # SGD momentum / Adam beta1
    batch_size: Param = Choice(choices=[64, 128, 256, 512, 1024])  # images per step
    # The convnet's shape (CONVNET_SHAPE); null = not searched (a ResNet-9's size is model.width).
    conv_layers: Optional[Param] = Range(low=1, high=3, scale="int")  # convnet conv blocks (each halves H, W)
    conv_width: Optional[Param] = Range(low=32, high=256, scale="log_int")  # channels per conv block
    fc_layers: Optional[Param] = Range(low=1, high=3, scale="int")  # hidden fully connected layers
    fc_width: Optional[Param] = Range(low=32, high=256, scale="log_int")  # units per hidden FC layer
    optimizer: Param = Choice(choices=list(OPTIMIZERS))  # momentum unused by sgd/rmsprop/adagrad
    lr_schedule: Param = Choice(choices=list(LR_SCHEDULES))  # per epoch, spanning max_epochs
    init: Param = Choice(choices=["he", "xavier"])  # weight initialisation scheme
    batch_norm: Param = Choice(choices=[True, False])  # batch norm after each conv, in either family
    activation: Param = Choice(choices=["relu", "elu", "tanh"])  # nonlinearity after each conv and hidden FC layer
    grad_clip: Param = Choice(choices=[0, 5, 10, 15])  # max global grad norm; 0 = no clipping
    # Augmentations as hyperparameters (AUGMENTS); null = every trial uses data.augment's. E.g.
    # flip: [true, false] where a mirror image may be another thing (letters, digits).
    crop: Optional[Param] = None  # random-crop padding in pixels, 0 = none
    flip: Optional[Param] = None  # random horizontal flips (and mirror test-time averaging)
    cutout: Optional[Param] = None  # side of a square zeroed at random, pixels, 0 = none
    # The training target: 1 - s on the label and s spread over all classes (Szegedy et al. 2016;
    # airbench trains CIFAR-10 with 0.2); null or 0 = one-hot. Validation loss stays plain cross-entropy.
    label_smoothing: Optional[Param] = None
    # A first layer that whitens 2x2 patches, fitted to the training images (caviar.training.models.Whitening);
    # null or false = none.
    whiten: Optional[Param] = None
    # Each image mirrored every other time it is drawn, at random the first time (Jordan 2024), instead
    # of by a coin flip each time; only where flips are on. null or false = coin flips.
    alternate_flips: Optional[Param] = None
    # Lookahead (Zhang et al. 2019) on airbench's schedule: every 5 steps the weights are pulled back
    # toward slow weights, more so as training ends, and end as them (caviar.training.recipe.Lookahead).
    lookahead: Optional[Param] = None
    # The learning rate of batch-norm biases, as a multiple of lr (airbench: 64); their weight decay
    # is divided by it. null or 1 = the same lr for every parameter.
    bn_lr_scale: Optional[Param] = None
    # true: lr is the step per 1024 images with momentum's gain taken out, weight_decay the shrink
    # per 1024 images, so batch size, momentum, lr and decay are each searched alone (SGD optimizers
    # only; caviar.training.recipe.step_values). The ranges of lr and weight_decay are then in these units.
    decoupled: Optional[Param] = None

    @field_validator("*", mode="before")
    @classmethod
    def _entry(cls, value: Any, info: Any) -> Any:
        if value is None and (info.field_name in CONVNET_SHAPE or info.field_name in AUGMENTS
                              or info.field_name in OPTIONAL):
            return None
        if info.field_name == "lr" and isinstance(value, dict) and not {"low", "high", "scale", "choices"} & set(value):
            return _lr_by_optimizer(value)
        return _as_param(info.field_name, value)

    @model_validator(mode="after")
    def _lr_for_every_optimizer(self) -> "SpaceConfig":
        if isinstance(self.lr, dict):
            missing = [name for name in possible_values(self.optimizer) if name not in self.lr]
            if missing:
                raise ValueError(f"lr: no learning-rate range for optimizer {missing[0]!r}; add lr.{missing[0]}: "
                                 f"{{low: ..., high: ..., scale: log}} or drop it from space.optimizer")
        return self

    @model_validator(mode="after")
    def _decoupled_needs_sgd(self) -> "SpaceConfig":
        if True in possible_values(self.decoupled):
            others = [name for name in possible_values(self.optimizer) if name not in DECOUPLABLE]
            if others:
                raise ValueError(f"decoupled: restates lr and weight decay per 1024 images for SGD optimizers "
                                 f"{list(DECOUPLABLE)} only, but space.optimizer may draw {others[0]!r}; "
                                 "drop it from space.optimizer or set decoupled: null")
        return self
