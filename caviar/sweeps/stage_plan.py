"""What one stage of a staged sweep is, before it runs (caviar.sweeps.stages runs it): the space it
searches (the config's, narrowed from the stage before, or that stage's best configs), what happens
to its folder when a run resumes or reruns from a stage (a StageAction), and its plain sweep config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from caviar import storage
from caviar.config.loading import derive_config
from caviar.config.scales import derived_seed, entries, searched
from caviar.config.schedulers import SCHEDULERS
from caviar.config.schema import Config, StageConfig
from caviar.config.space import SpaceConfig
from caviar.errors import CaviarError, ConfigError
from caviar.layout import CONFIG_FILE, SUMMARY_FILE, stage_folder
from caviar.results.leaderboard import interrupted
from caviar.sweeps.narrowing import next_space, param_spec

if TYPE_CHECKING:
    from caviar.sweeps.experiment import SweepOutcome


# ---------------------------------------------------------------- one stage's config
def stage_config(config: Config, index: int, space: SpaceConfig, root: str,
                 points: list[dict[str, Any]] | None = None, epoch_seconds: float | None = None) -> Config:
    """A plain sweep config for stage `index` (1-based) with `space`, in the folder `root`;
    `points` are the configs a `from_top` stage trains; `epoch_seconds` the planned seconds of one
    of the stage's epochs (search.fidelity: seconds)."""
    stage, search = config.stages[index - 1], config.search
    scheduler = "random" if points is not None else stage.scheduler or search.scheduler
    changes: dict[str, Any] = {
        "stages": [],
        "budget": None,  # the staged run planned every stage; each one gets the run's deadline
        "storage": root,
        "name": stage_folder(index, stage.name),
        "space": space.model_dump(mode="json"),
        "search.max_epochs": stage.epochs,
        "search.num_samples": stage.num_samples,
        "search.grace_period": min(search.grace_period, stage.epochs),
        "search.scheduler": scheduler,
    }
    if search.seed is not None:  # a different draw per stage, still repeatable
        changes["search.seed"] = search.seed + index - 1
    if stage.train_subset is not None:
        whole = isinstance(stage.train_subset, float) and stage.train_subset == 1.0
        changes["data.train_subset"] = None if whole else stage.train_subset
    if points is not None:  # exactly these configs: no search, no early stopping
        changes |= {"search.points": points, "search.num_samples": len(points), "search.algorithm": "random"}
    if not SCHEDULERS[scheduler].rungs:
        changes["search.fidelity"] = "epochs"  # it counts only rungs
    elif epoch_seconds is not None:
        changes["search.epoch_seconds"] = epoch_seconds
    return derive_config(config, changes, f"stage {index} ({stage.name})")


def top_points(table: pd.DataFrame, space: SpaceConfig, count: int, stage_index: int,
               order: list[int] | None = None) -> list[dict[str, Any]]:
    """The best `count` scored trials' hyperparameters as configs to train again, each with a new
    seed (derived from its own and the stage, so a rerun draws the same); `order` (positions in the
    scored table, caviar.sweeps.diverse.pick_order) takes them in another order than by rank. Where
    fewer trials were scored than `count`, the best ones come round again with other new seeds:
    a stage asked for `count` members (a budget's ensemble shape, a member per slot) gets them."""
    from caviar.results.border import scored

    rows = scored(table)
    if order is not None:
        rows = rows.iloc[order]
    best = [row for _, row in rows.head(count).iterrows()]
    points = []
    for k in range(count if best else 0):
        row, lap = best[k % len(best)], k // len(best)
        point = {name: _plain(row[name]) for name in entries(space) if name in row and pd.notna(row[name])}
        # lap 0: the seed a rerun of earlier versions drew; later laps: new ones per lap
        point["seed"] = derived_seed(row.get("seed", 0), stage_index if lap == 0 else stage_index * 1000 + lap,
                                     mix=7919)
        points.append(point)
    return points


def recipe_points(config: Config, count: int, stage_index: int) -> list[dict[str, Any]]:
    """The experiment's recipe (its first search point) `count` times, each with a new seed (the
    same ones on a rerun): what a first `from_top` stage trains (the budget shape `recipe`)."""
    if not config.search.points:
        raise ConfigError(f"stage {stage_index} trains the best configs of the stage before (from_top), but it is "
                          "the first stage and there is no search.points entry to train instead; add the recipe as "
                          "search.points[0] or a search stage before it")
    recipe = dict(config.search.points[0])
    base = int(recipe.pop("seed", config.search.seed or 0))
    return [recipe | {"seed": derived_seed(base, stage_index * 1000 + k, mix=7919)} for k in range(count)]


def _plain(value: Any) -> Any:
    """A leaderboard cell as the plain Python value a config holds (numpy scalars unwrapped)."""
    return value.item() if hasattr(value, "item") else value


def space_spec(space: SpaceConfig) -> dict[str, Any]:
    """The searched entries of `space` as stages.json shows them."""
    return {name: param_spec(param) for name, param in searched(space).items()}


# ---------------------------------------------------------------- its space
@dataclass(frozen=True)
class StageSpace:
    """What a stage searches, and where that came from."""

    space: SpaceConfig
    points: list[dict[str, Any]] | None  # the configs a `from_top` stage trains; None: drawn from `space`
    record: dict[str, Any]  # for stages.json: the stage it came from, the rules or points, the space


def stage_space(config: Config, index: int, prior: SweepOutcome | None,
                order: list[int] | None = None) -> StageSpace:
    """Stage `index`'s space: the config's for the first stage (`prior` None); for a later one, the
    best configs of the stage before (`prior`) for a `from_top` stage, else its space narrowed
    around its top trials (caviar.sweeps.narrowing); `order` takes a from_top stage's configs in
    another order than by rank (stages.N.pick). Raises CaviarError when `prior` scored none."""
    stage = config.stages[index - 1]
    points = None
    if prior is None and stage.from_top:  # no stage before: the recipe, from new seeds
        space, points = config.space, recipe_points(config, stage.from_top, index)
        record = {"from_recipe": True, "num_samples": len(points), "points": points}
    elif prior is None:
        space, record = config.space, {}
    elif stage.from_top:
        space = prior.config.space
        points = top_points(prior.trials, space, stage.from_top, index, order)
        if not points:
            raise CaviarError(f"stage {index - 1} ({config.stages[index - 2].name}) has no scored trial to train "
                              f"further; fix its space and rerun it with --stage {index - 1}")
        record = {"from_stage": index - 1, "num_samples": len(points), "top": len(points), "points": points}
    else:
        space, rules = next_space(prior.config.space, prior.trials, config.stages[index - 2],
                                  config.search.border_fraction)
        record = {"from_stage": index - 1, **rules["header"], "rules": rules["params"]}
    return StageSpace(space=space, points=points, record=record | {"space": space_spec(space)})


# ---------------------------------------------------------------- what happens to its folder
StageState = Literal["absent", "partial", "done"]


def stage_state(path: str) -> StageState:
    """absent | partial (interrupted or still to finish) | done."""
    if not storage.exists(storage.join(path, CONFIG_FILE)):
        return "absent"
    if not storage.exists(storage.join(path, SUMMARY_FILE)):
        return "partial"
    summary = json.loads(storage.read_text(storage.join(path, SUMMARY_FILE)))
    return "partial" if interrupted(summary) else "done"


class StageAction(Enum):
    """What a staged run does with a stage; the value of a kept one is its status in stages.json."""

    KEEP = "kept"  # before the stage a rerun starts from: finished, kept as it is
    DONE = "done"  # finished in an earlier run that this one resumes: stays
    RESUME = "resume"  # interrupted: continues from its checkpoints
    RERUN = "rerun"  # ran before: its folder is moved aside as <folder>.prev<k>, then it runs afresh
    RUN = "run"  # never ran

    @property
    def keeps(self) -> bool:
        return self in (StageAction.KEEP, StageAction.DONE)


def stage_action(index: int, state: StageState, start: int | None, *, stage: StageConfig, root: str) -> StageAction:
    """What to do with stage `index` (1-based), whose folder is in `state`. Resuming (`start` None):
    a finished stage stays, an interrupted one resumes. Rerunning from stage `start`: earlier stages
    must be finished and are kept (ConfigError otherwise); stage `start` resumes if it was
    interrupted, else it and every later stage run afresh."""
    if start is not None and index < start:
        if state != "done":
            raise ConfigError(f"--stage {start}: stage {index} ({stage.name}) has not finished; finish it "
                              f"with `caviar sweep --resume {root}`")
        return StageAction.KEEP
    if state == "done":
        return StageAction.DONE if start is None else StageAction.RERUN
    if state == "partial":
        return StageAction.RERUN if start is not None and index > start else StageAction.RESUME
    return StageAction.RUN
