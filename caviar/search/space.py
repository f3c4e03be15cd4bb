"""Config ranges -> Ray Tune distributions (and Optuna's, for TPE) on the scales of
caviar.config.scales, where the sampling-scale rule lives."""

from __future__ import annotations

import math
from copy import copy
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search.sample import Domain, Float, Sampler, _BackwardsCompatibleNumpyRng
from ray.tune.search.variant_generator import RecursiveDependencyError

from caviar.config.scales import (  # noqa: F401 - the scale rule, read by Ray's samplers here
    SCALES,
    SEED_RANGE,
    by_optimizer,
    entries,
    fixed_values,
    from_sampling_scale,
    searched,
    to_sampling_scale,
)
from caviar.config.space import Choice, Range, SpaceConfig


class _OneMinusLogUniform(Sampler):
    """Samples beta so that log10(1 - beta) is uniform: beta near 1 gets as much attention as 0.9."""

    def sample(self, domain: Float, config: Any = None, size: int = 1, random_state: Any = None):
        if not isinstance(random_state, _BackwardsCompatibleNumpyRng):
            random_state = _BackwardsCompatibleNumpyRng(random_state)
        low_exp, high_exp = math.log10(1 - domain.upper), math.log10(1 - domain.lower)
        items = 1.0 - 10.0 ** random_state.uniform(low_exp, high_exp, size=size)
        return items if len(items) > 1 else domain.cast(items[0])

    def __str__(self) -> str:
        return "OneMinusLogUniform"


def one_minus_loguniform(low: float, high: float) -> Float:
    """A Ray Tune float domain on [low, high] whose 1 - value is log-uniform."""
    domain = copy(Float(low, high))
    domain.set_sampler(_OneMinusLogUniform())
    return domain


class _ByOptimizer(Sampler):
    """Samples the trial's learning rate from the range of the optimizer it drew (space.lr given per
    optimizer). Ray resolves the optimizer first: reading it while unresolved raises Ray's
    RecursiveDependencyError, and Ray's variant generator tries again after the other entries."""

    def __init__(self, domains: dict[str, Any]):
        self.domains = domains  # optimizer -> Ray domain or fixed value

    def sample(self, domain: Float, config: Any = None, size: int = 1, random_state: Any = None):
        spec = config if isinstance(config, dict) else {}
        optimizer = dict.get(spec.get("config", spec) if isinstance(spec.get("config"), dict) else spec, "optimizer")
        if optimizer is None or isinstance(optimizer, Domain):
            raise RecursiveDependencyError("lr depends on the optimizer, which is not drawn yet")
        entry = self.domains[optimizer]
        value = entry.sample(random_state=random_state) if isinstance(entry, Domain) else entry
        return value if size == 1 else [value] * size

    def __str__(self) -> str:
        return "ByOptimizer"


# Samplers that read other entries of the trial's config (Ray resolves them after those).
DEPENDENT_SAMPLERS = (_ByOptimizer,)


def lr_by_optimizer(ranges: dict[str, Any]) -> Float:
    """A Ray Tune domain for a learning rate with one range (or value) per optimizer."""
    domains = {name: to_domain(param) for name, param in ranges.items()}
    bounds = [v for param in ranges.values() for v in ((param.low, param.high) if isinstance(param, Range) else
                                                         (param.choices if isinstance(param, Choice) else [param]))]
    domain = copy(Float(min(bounds), max(bounds)))
    domain.set_sampler(_ByOptimizer(domains))
    return domain


def to_domain(param: Range | Choice | Any) -> Domain | Any:
    """One space entry -> a Ray Tune domain (or the fixed value itself)."""
    if isinstance(param, dict):  # lr per optimizer
        return lr_by_optimizer(param)
    if isinstance(param, Choice):
        return tune.choice(list(param.choices))
    if not isinstance(param, Range):
        return param
    low, high = param.low, param.high
    if param.scale == "linear":
        return tune.uniform(low, high)
    if param.scale == "log":
        return tune.loguniform(low, high)
    if param.scale == "int":
        return tune.randint(int(low), int(high) + 1)  # Ray's upper bound is exclusive
    if param.scale == "log_int":
        return tune.lograndint(int(low), int(high) + 1)
    if param.scale == "one_minus_log":
        return one_minus_loguniform(low, high)
    raise ValueError(f"unknown scale {param.scale!r}; expected one of {SCALES}")


def to_param_space(space: SpaceConfig) -> dict[str, Any]:
    """The whole space as Ray Tune's `param_space` (hyperparameter name -> domain or value).

    Each trial also draws its own `seed` (weights, shuffling, augmentation), so any trial can be
    re-run exactly from its row in the leaderboard.
    """
    params = {name: to_domain(param) for name, param in entries(space).items()}
    params["seed"] = tune.randint(*SEED_RANGE)
    return params


def sample(space: SpaceConfig, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Draw `count` configs with Ray Tune's own samplers (for tests, previews and stage planning);
    entries that depend on others (lr per optimizer) are drawn after them."""
    rng = np.random.default_rng(seed)
    param_space = to_param_space(space)
    configs = []
    for _ in range(count):
        drawn: dict[str, Any] = {}
        for name, d in sorted(param_space.items(), key=lambda item: isinstance(item[1].get_sampler(), DEPENDENT_SAMPLERS)
                              if isinstance(item[1], Domain) else False):
            drawn[name] = d.sample(config=drawn, random_state=rng) if isinstance(d, Domain) else d
        configs.append({name: drawn[name] for name in param_space})
    return configs


# ---------------------------------------------------------------- Bayesian search (TPE)
class OptunaDefineByRun:
    """The space as an Optuna define-by-run function (for Ray's OptunaSearch), same scales as above.

    Ray cannot convert the `one_minus_log` sampler to an Optuna distribution, so TPE models
    ``one_minus_<name>`` = 1 - beta on a log scale (exactly the distribution random search draws
    from) and the trial gets ``<name>`` = 1 - that; both appear in the trial's config. The trial
    `seed` is drawn from this object's own generator, not modelled by TPE: it is not a
    hyperparameter. A class, not a closure, so Ray can pickle the searcher for `--resume`.
    """

    def __init__(self, space: SpaceConfig, seed: int | None = None):
        self.params = searched(space)
        self.lr_by_optimizer = by_optimizer(space)  # suggested as lr_<optimizer>, after the optimizer
        self.fixed_optimizer = space.optimizer if not isinstance(space.optimizer, Choice) else None
        self.rng = np.random.default_rng(seed)

    def __call__(self, trial: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        chosen: dict[str, Any] = {}
        for name, param in self.params.items():
            chosen[name] = self._suggest(trial, name, param, extra)
        if self.lr_by_optimizer:
            optimizer = chosen.get("optimizer", self.fixed_optimizer)
            param = self.lr_by_optimizer[optimizer]
            extra["lr"] = self._suggest(trial, f"lr_{optimizer}", param, extra) if isinstance(param, (Range, Choice)) \
                else param
        extra["seed"] = int(self.rng.integers(*SEED_RANGE))
        return extra

    @staticmethod
    def _suggest(trial: Any, name: str, param: Range | Choice, extra: dict[str, Any]) -> Any:
        if isinstance(param, Choice):
            return trial.suggest_categorical(name, list(param.choices))
        if param.scale in ("linear", "log"):
            return trial.suggest_float(name, param.low, param.high, log=param.scale == "log")
        if param.scale in ("int", "log_int"):
            return trial.suggest_int(name, int(param.low), int(param.high), log=param.scale == "log_int")
        gap = trial.suggest_float(f"one_minus_{name}", 1.0 - param.high, 1.0 - param.low, log=True)  # one_minus_log
        extra[name] = 1.0 - gap
        return extra[name]
