"""The sampling-scale rule and the entries of a search space, once, without Ray (caviar.search.space
turns them into Ray Tune's distributions).

Scales (the notes' advice: sample what spans orders of magnitude on a log scale):

- ``linear``        uniform(low, high)                     e.g. dropout
- ``log``           10 ** uniform(log10 low, log10 high)    e.g. learning rate, weight decay
- ``int``           uniform integer in [low, high]          e.g. number of layers
- ``log_int``       integer, log-uniform in [low, high]     e.g. layer width
- ``one_minus_log`` 1 - 10 ** uniform(log10(1-high), log10(1-low))
                    e.g. momentum 0.9..0.999: 1 - beta spans two orders of magnitude
"""

from __future__ import annotations

import math
from typing import Any

from caviar.config.space import Choice, Range, SpaceConfig

SCALES = ("linear", "log", "int", "log_int", "one_minus_log")
SEED_RANGE = (0, 2**31 - 1)
SEED_STEP = 104729  # a large prime: seeds derived from neighbouring bases or salts stay far apart


def derived_seed(base: int, salt: int, mix: int = 1) -> int:
    """A new seed from a trial's own (`base`) and what it is for (`salt`: which re-run, which
    stage), in SEED_RANGE: the same inputs give the same seed, so a re-run asks for the seeds it
    asked for before (and finds them trained). `mix` multiplies the base first: stages use 7919,
    seed re-runs 1 (the seeds saved experiment folders hold were drawn so)."""
    return (int(base) * mix + SEED_STEP * salt) % SEED_RANGE[1]


def entries(space: SpaceConfig) -> dict[str, Any]:
    """Every entry of the space by name: a fixed value, Range, Choice or per-optimizer lr. The ones
    a model family leaves out (None: caviar.config.CONVNET_SHAPE for a ResNet) are not there."""
    return {name: param for name in SpaceConfig.model_fields if (param := getattr(space, name)) is not None}


def fixed_values(space: SpaceConfig) -> dict[str, Any]:
    """The entries that are not searched, as Ray's `param_space` when a searcher owns the space."""
    drawn = searched(space)
    return {name: param for name, param in entries(space).items()
            if name not in drawn and not (name == "lr" and by_optimizer(space))}


def to_sampling_scale(value: float, scale: str) -> float:
    """Where a value sits on its range's sampling axis (log10 for log scales, 1-beta for momentum)."""
    if scale in ("log", "log_int"):
        return math.log10(value)
    if scale == "one_minus_log":
        return math.log10(1.0 - value)
    return float(value)


def from_sampling_scale(position: float, scale: str) -> float:
    """Inverse of :func:`to_sampling_scale`."""
    if scale in ("log", "log_int"):
        return 10.0**position
    if scale == "one_minus_log":
        return 1.0 - 10.0**position
    return float(position)


def searched(space: SpaceConfig) -> dict[str, Range | Choice]:
    """The entries that are actually searched (fixed values excluded). An lr given per optimizer is
    left out here: narrowing and the border check read one range per entry (it stays as it is)."""
    return {name: param for name, param in entries(space).items() if isinstance(param, (Range, Choice))}


def by_optimizer(space: SpaceConfig) -> dict[str, Any]:
    """The per-optimizer lr ranges, or {} when lr is one range or value."""
    return space.lr if isinstance(space.lr, dict) else {}
