"""The shape a budget buys: how a budgeted staged sweep spends its time, chosen from how many runs
of the experiment's own recipe the budget holds.

R, the recipe unit: the seconds one run of the experiment's centre (its first `search.points`
entry) takes on one trial slot, trained for its own schedule (the epochs of the experiment's
members stage, its last `from_top` stage), from the planner's throughput probe. A budget of T on
S slots holds T x S / R runs in all and p = T / R per slot ("30m on 2 slots = 1.4 R").

The shapes, by runs per slot p (`shape: auto`; an experiment file can force one with `shape:`):

- `recipe` (p < RECIPE_BELOW): no search. The recipe itself trains on every slot from a new seed,
  stretched over the whole budget, averaged (SWA) and ensembled. At about one run's worth of
  compute any time taken from the recipe costs more than a search finds: measured, the searching
  flow ended 0.54 pt below the recipe at 0.7 R per slot and 2.2 pt below it at 0.5 R per slot
  (docs/benchmark-history.md), and budgeted training (Li, Yumer & Ramanan 2020) loses 1.2 pt on ImageNet
  at half the schedule. At 2 R per slot the search shape still lost, by 1.5 pt on validation in
  both rounds, to the recipe stretched and to a deep ensemble of 1 R runs
  (benchmarks/bench_multiples.py, docs/benchmark-history.md section 9), hence 2.5.
- `search` (RECIPE_BELOW <= p < ENSEMBLE_FROM): the file's stages: a short search with the recipe as
  one of its arms (search.points), then one full-length member per slot (at least the file's
  from_top), stretched over the rest of the budget. At 1.8 R per slot this once beat both ways of
  spending the budget on the recipe alone (+0.27 pt over 2 stretched seeds, one run on a held-out
  set); at 2 R per slot on a Fashion-MNIST subset it lost in both rounds (see `recipe`). benchmarks/bench_shape.py found no
  win for p runs of R ensembled over one run stretched over p R at 2 and 4 R per slot (the
  stretched run ahead on test in all four rounds; docs/benchmark-history.md, section 9).
- `ensemble` (p >= ENSEMBLE_FROM): ensemble first. Members of MEMBER_RUNS R each, in as many waves
  per slot as fit in 1 - ENSEMBLE_SEARCH_SHARE of the budget (at most MAX_WAVES, at most MAX_MEMBERS
  members unless the slots are more), from the search's best configs with new seeds; the ensemble
  then picks them for what they add on validation (greedy selection). Once one run has saturated,
  a second member gains more than a second run's length (Garipov et al. 2018: WRN-28-10 on
  CIFAR-100, 1 / 2 / 3 independent runs 80.8 / 82.4 / 83.0%); what the members cannot use (past
  MAX_WAVES and MAX_MEMBER_RUNS, where both gains have flattened) goes to the search.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from caviar.config.loading import derive_config
from caviar.config.schema import Config, StageConfig

RECIPE_BELOW = 2.5  # runs of the recipe per slot under which no search pays (see the module docstring)
ENSEMBLE_FROM = 6.0  # runs per slot from which members come before a longer search
MEMBER_RUNS = 2.0  # an ensemble-shape member's length, in R (each member stretched 2x)
MAX_MEMBER_RUNS = 4.0  # a member never trains longer than this many R
MAX_WAVES = 4  # members per slot, at most
MAX_MEMBERS = 64  # members in all, at most (unless there are more slots: one each)
ENSEMBLE_SEARCH_SHARE = 0.25  # the least share of an ensemble-shape budget that searches


@dataclass(frozen=True)
class Shape:
    """What a budget buys, in runs of the recipe."""

    name: str  # recipe | search | ensemble
    recipe_s: float  # R: seconds of one run of the recipe on one slot
    budget_s: float
    slots: int
    members: int  # full-length members the last stage trains
    member_runs: float  # each member's length in R (where the plan can say: recipe and ensemble shapes)
    search_share: float | None  # share of the trial time that searches; None: the file's proportions
    forced: bool  # the experiment file chose the shape (shape: NAME), not the budget

    @property
    def runs_per_slot(self) -> float:
        return self.budget_s / self.recipe_s

    @property
    def runs(self) -> float:
        """The budget as a multiple of R over the slots."""
        return self.runs_per_slot * self.slots

    def describe(self) -> str:
        from caviar.config.durations import format_duration

        head = (f"{format_duration(self.budget_s)} on {self.slots} slot{'s' if self.slots != 1 else ''} = "
                f"{self.runs:.1f} R (R = one run of the recipe on one slot, ~{format_duration(self.recipe_s)}; "
                f"{self.runs_per_slot:.1f} per slot)")
        why = "as the experiment file says" if self.forced else "chosen from the runs per slot"
        if self.name == "file":
            return f"{head}; the experiment runs as its file says (a shape needs stages with a from_top stage)"
        if self.name == "recipe":
            body = (f"shape recipe ({why}): no search, the recipe from {self.members} new seeds, each trained "
                    f"the whole budget (~{self.member_runs:.1f} R), averaged and ensembled")
        elif self.name == "search":
            body = (f"shape search ({why}): a short search with the recipe as an arm, then {self.members} "
                    "full-length members")
        else:
            body = (f"shape ensemble ({why}): {self.members} members of ~{self.member_runs:.1f} R from the "
                    f"search's best configs and new seeds, the search ~{100 * (self.search_share or 0):.0f}% "
                    "of the time")
        return f"{head}; {body}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"runs": round(self.runs, 3), "runs_per_slot": round(self.runs_per_slot, 3)}


def members_stage(config: Config) -> int | None:
    """Index (0-based) of the stage that trains the full-length members (the last `from_top` stage),
    or None where the experiment has none (then no shape applies: the file runs as it is)."""
    indices = [i for i, stage in enumerate(config.stages) if stage.from_top]
    return indices[-1] if indices else None


def recipe_epochs(config: Config) -> int:
    """The epochs of one run of the recipe: its own schedule, the members stage's epochs as the file
    gives them (before a plan scales them)."""
    index = members_stage(config)
    return config.stages[index].epochs if index is not None else config.search.max_epochs


def choose(config: Config, *, recipe_s: float, budget_s: float, slots: int) -> Shape | None:
    """The shape of a budget of `budget_s` on `slots` slots, where one run of the recipe takes
    `recipe_s` on one slot; `file` (the budget told in R, the experiment run as its file says) for
    an experiment without a members stage; None for one without a recipe (no search point)."""
    index = members_stage(config)
    if not config.search.points:
        return None
    p = budget_s / recipe_s
    forced = config.shape != "auto"
    if index is None:
        return Shape("file", recipe_s, budget_s, slots, members=0, member_runs=0.0, search_share=None, forced=True)
    name = config.shape if forced else "recipe" if p < RECIPE_BELOW else "search" if p < ENSEMBLE_FROM else "ensemble"
    from_top = config.stages[index].from_top or 1
    if name == "recipe":
        return Shape(name, recipe_s, budget_s, slots, members=slots, member_runs=p, search_share=0.0, forced=forced)
    if name == "search":
        return Shape(name, recipe_s, budget_s, slots, members=max(from_top, slots), member_runs=0.0,
                     search_share=None, forced=forced)
    for_members = p * (1 - ENSEMBLE_SEARCH_SHARE)  # runs per slot the members may use
    waves = max(1, min(MAX_WAVES, int(for_members // MEMBER_RUNS)))
    members = min(waves * slots, max(MAX_MEMBERS, slots))
    waves = math.ceil(members / slots)
    length = max(min(MAX_MEMBER_RUNS, for_members / waves), min(1.0, for_members))
    search_share = 1 - members * length / (p * slots)
    return Shape(name, recipe_s, budget_s, slots, members=members, member_runs=length,
                 search_share=round(search_share, 4), forced=forced)


def shaped(config: Config, shape: Shape) -> Config:
    """`config` with the stages its shape runs, before the planner sizes them (see :func:`changes`)."""
    return derive_config(config, changes(config, shape), f"shape {shape.name}")


def changes(config: Config, shape: Shape) -> dict[str, Any]:
    """The config changes (dotted keys, as --set takes them) that give `config` its shape: for
    `recipe`, one stage that trains the centre from a new seed per member (a first `from_top` stage
    trains the experiment's first search point), with no search and so no rungs; for `search`, the
    file's stages with at least a member per slot; for `ensemble`, the members stage trains
    `members` members of `member_runs` R each."""
    index = members_stage(config)
    if index is None or shape.name == "file":
        return {}
    members = config.stages[index]
    if shape.name == "recipe":
        return {"stages": [_members(members, shape.members, members.epochs, name="recipe")],
                "search.fidelity": "epochs", "search.anneal": "schedule"}
    epochs = members.epochs if shape.name == "search" else max(1, round(members.epochs * shape.member_runs))
    stages = [s.model_dump(mode="json") for s in config.stages]
    stages[index] = _members(members, shape.members, epochs)
    return {"stages": stages}


def _members(stage: StageConfig, count: int, epochs: int, name: str | None = None) -> dict[str, Any]:
    return stage.model_dump(mode="json") | {"from_top": count, "num_samples": count, "epochs": epochs,
                                            **({"name": name, "pick": "rank"} if name else {})}
