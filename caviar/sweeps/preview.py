"""What a budget buys, before it is spent (`caviar sweep EXP --budget T --plan [--slots N]`): the
throughput probe on this machine, then the plan a budgeted sweep would make (caviar.sweeps.budget),
with its shape (caviar.sweeps.shapes), for this machine's trial slots or a stated cluster's.
Nothing is written and no trial runs; Ray is not started."""

from __future__ import annotations

import functools
import os

from caviar.config.durations import parse_duration
from caviar.config.loading import load_config, with_classes
from caviar.errors import ConfigError
from caviar.search.connect import cluster_slots, trial_resources
from caviar.sweeps import budget as budgets
from caviar.training import memory
from caviar.training.data import data_for, image_counts


def local_pool() -> dict[str, float]:
    """The CPUs and GPUs of this machine, as Ray would count them for a local sweep."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def preview(experiment: str | None, overrides: list[str] | None = None, *, slots: int | None = None) -> budgets.Plan:
    """The plan `caviar sweep experiment --budget ...` would make here, on `slots` trial slots
    (default: as many as this machine runs at once). The budget comes from the config (--budget
    sets it); the speed is measured on this machine, for a trial's share of it."""
    import torch

    if slots is not None and slots < 1:
        raise ConfigError(f"--slots {slots}: give the number of trials the cluster runs at once, 1 or more")
    config = load_config(experiment, overrides).resolved()
    if not config.budget:
        raise ConfigError("--plan shows what a budget buys: give one with --budget (e.g. --budget 2h) or budget: in "
                          "the experiment file")
    data = data_for(config)
    config = with_classes(config, len(data.classes), f"data.root {config.data.root}")
    pool = local_pool()
    resources = trial_resources(config, pool["GPU"])
    device = torch.device("cuda") if resources["gpu"] > 0 else torch.device("cpu")
    sizes = budgets.plan_sizes(config, data, slots or cluster_slots(config, resources, pool),
                               budgets.stage_train_images(config, len(data.train_y)) if config.stages else None)
    budget_s = parse_duration(config.budget)
    throughput = budgets.measure(config, data, device, recipe_decides=functools.partial(
        budgets.recipe_alone, config, budget_s=budget_s, **sizes))
    figures = memory.estimate(config, *image_counts(config))
    planned = budgets.plan(config, budget_s=budget_s, spent_s=0, throughput=throughput, **sizes)
    planned.memory = memory.describe(figures, memory.limit())
    return planned


def describe(planned: budgets.Plan) -> str:
    """The plan as `--plan` prints it."""
    device = planned.throughput.get("device", "cpu")
    return (f"{planned.describe()}\n  {planned.memory}\n  (speed measured on this machine's {device}, "
            f"{_timed(planned.throughput.get('configs', 0))}; nothing was trained or written)")


def _timed(configs: int) -> str:
    return f"{configs} configs of the space and the recipe" if configs else "the recipe alone, which is all it trains"

