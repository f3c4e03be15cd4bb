"""Coarse-to-fine stages: several sweeps in one command, each narrowing the space of the last.

The notes' recipe: a wide first stage of short trials (1 epoch, or a training subset), then a
stage on ranges narrowed around where the good results were (~5 epochs), then a final stage at
the full epoch budget. Each stage is its own Ray Tune experiment in the experiment folder
(``<experiment>/stage<i>-<name>/``, a normal sweep folder with its own leaderboard), and the rule
that made each range is written to ``<experiment>/stages.json``.

The rule from one stage's results to the next stage's space is in caviar.sweeps.narrowing.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from caviar import storage
from caviar.config.durations import parse_duration
from caviar.config.loading import derive_config
from caviar.config.schema import Config, StageConfig
from caviar.config.space import SpaceConfig
from caviar.errors import CaviarError, ConfigError
from caviar.layout import CONFIG_FILE, STAGES_FILE, stage_folder
from caviar.results.border import format_warnings
from caviar.results.folder import ExperimentFolder
from caviar.results.leaderboard import deadline_reached, interrupted
from caviar.search import connect
from caviar.sweeps.budget import (
    AFFORDABLE_SHARE,
    Plan,
    affordable,
    apply as apply_plan,
    stage_deadline,
    stage_train_images,
)
from caviar.sweeps.diverse import pick_order
from caviar.sweeps.experiment import (
    SweepOutcome,
    SweepResult,
    config_for_resume,
    plan_budget,
    read_data,
    run_experiment,
)
from caviar.sweeps.stage_plan import (
    StageAction,
    space_spec,
    stage_action,
    stage_config,
    stage_space,
    stage_state,
    top_points,
)
from caviar.training.trial import TRIAL_EPOCHS_KEY

# A budgeted run starts no stage with fewer seconds than this left before its deadline.
MIN_STAGE_S = 5.0


@dataclass
class StagedResult(SweepResult):
    """What `caviar sweep` returns for a staged experiment: the last stage's SweepResult (its path,
    trials, summary and config, what describe() and the CLI read), plus every stage."""

    root: str  # the experiment folder that holds the stages
    stages: list[SweepResult] = field(default_factory=list)  # per stage run or kept, in order
    plan: dict[str, Any] = field(default_factory=dict)  # the content of stages.json

    @property
    def final(self) -> SweepResult:
        return self.stages[-1]

    @classmethod
    def of(cls, root: str, stages: list[SweepResult], plan: dict[str, Any]) -> StagedResult:
        final = stages[-1]
        return cls(path=final.path, trials=final.trials, summary=final.summary, config=final.config, root=root,
                   stages=stages, plan=plan)


@dataclass(frozen=True)
class _Budget:
    """A budgeted run's plan (caviar.sweeps.budget), the deadline its stages share, a trial's resources."""

    plan: Plan
    deadline: float
    resources: dict[str, float]


@dataclass(frozen=True)
class _StagedRun:
    """What every stage of one staged run reads, and the records each stage adds to."""

    config: Config  # resolved, with a budget's planned sizes
    root: str  # the experiment folder
    start: int | None  # the stage a rerun starts from (--stage N)
    budget: _Budget | None  # a new budgeted run's
    address: str | None
    verbose: bool
    log: Callable[[str], None]
    previous: dict[str, Any]  # stages.json of the run a rerun replaces (kept there as "previous_runs")
    stages_json: dict[str, Any]  # stages.json as it grows, a stage's entry at a time
    done: list[SweepResult] = field(default_factory=list)  # each stage run or kept, in order

    def seconds_left(self) -> float:
        return math.inf if self.budget is None else self.budget.deadline - time.time()

    def write_stages_json(self) -> None:
        _write_plan(self.root, _with_history(self.stages_json, self.previous))


def _move_aside(path: str, log: Callable[[str], None]) -> None:
    """Keep a stage folder about to be rerun as <folder>.prev<k> (local storage only)."""
    if storage.is_uri(path):
        raise ConfigError(f"{path} already holds a stage; rerunning a stage on object storage needs a new "
                          "--set name=...")
    k = 1
    while Path(f"{path}.prev{k}").exists():
        k += 1
    shutil.move(path, f"{path}.prev{k}")
    log(f"Kept the previous run of {Path(path).name} as {Path(path).name}.prev{k}")


def _load_stage(path: str) -> SweepResult:
    folder = ExperimentFolder(path)
    table = folder.leaderboard()
    return SweepResult(path=path, trials=table if table is not None else pd.DataFrame(),
                       summary=folder.summary() or {}, config=folder.config())


def _write_plan(root: str, plan: dict[str, Any]) -> None:
    storage.write_text(storage.join(root, STAGES_FILE), json.dumps(plan, indent=2, default=str))


def run_staged(
    config: Config,
    *,
    address: str | None = None,
    resume: bool = False,
    start: int | None = None,
    begun: float | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> StagedResult:
    """Run the stages of `config` (resolved) in ``storage/name/``.

    resume: continue an interrupted staged run (done stages are kept, an interrupted one resumes).
    start: rerun from stage `start` (1-based): earlier stages must be done and are kept; that stage
    resumes if it was interrupted, else it and every later stage run afresh (old folders are kept
    as ``<folder>.prev<k>``).
    With `budget` in the config (a new run), every stage is sized to fit it (caviar.sweeps.budget) and
    the stages share its deadline, counted from `begun`.
    """
    if start is not None and not 1 <= start <= len(config.stages):
        raise ConfigError(f"--stage {start}: the experiment has stages 1..{len(config.stages)}")
    root = storage.join(storage.resolve(config.storage), config.name)
    if storage.exists(storage.join(root, CONFIG_FILE)) and not resume and start is None:
        raise ConfigError(f"experiment folder {root} already holds a staged sweep; continue it with "
                          f"`caviar sweep --resume {root}`, rerun from a stage with --stage N, or start another "
                          "with --set name=<new name>")
    with connect.session(address, verbose) as started:
        budget = None
        if config.budget and not resume and start is None:
            config, budget = _plan_stages(config, begun or time.time(), joined=not started, log=log)
        storage.write_text(storage.join(root, CONFIG_FILE), config.to_yaml())
        stages_json: dict[str, Any] = {"experiment": root, "border_fraction": config.search.border_fraction,
                                       "stages": []}
        if budget is not None:
            stages_json["budget"] = budget.plan.to_dict()
        run = _StagedRun(config=config, root=root, start=start, budget=budget, address=address, verbose=verbose,
                         log=log, previous=_replaced_run(root, start), stages_json=stages_json)
        for index, stage in enumerate(config.stages, start=1):
            if not _stage(run, index, stage):
                break
    if not run.done:
        raise CaviarError(f"the budget was spent before stage 1 could start; nothing ran in {root}")
    return StagedResult.of(root, run.done, stages_json)


def _replaced_run(root: str, start: int | None) -> dict[str, Any]:
    """stages.json of the run that a rerun from stage `start` replaces ({} for any other run)."""
    if start is not None and storage.exists(storage.join(root, STAGES_FILE)):
        return json.loads(storage.read_text(storage.join(root, STAGES_FILE)))
    return {}


def _stage(run: _StagedRun, index: int, stage: StageConfig) -> bool:
    """Stage `index` (1-based): its space, what to do with its folder (a StageAction), then that:
    kept as it is, or run (resumed, or afresh), sized first to the deadline where it trains
    chosen configs on a budget. False when the run stops here."""
    path = storage.join(run.root, stage_folder(index, stage.name))
    state = stage_state(path)
    searched = stage_space(run.config, index, run.done[-1] if index > 1 else None)
    entry = {"index": index, "name": stage.name, "folder": stage_folder(index, stage.name), "epochs": stage.epochs,
             "num_samples": stage.num_samples, "train_subset": stage.train_subset} | searched.record
    action = stage_action(index, state, run.start, stage=stage, root=run.root)
    if action.keeps:
        kept = _load_stage(path)
        run.done.append(kept)
        # the space it ran with, even if the rule has changed since
        run.stages_json["stages"].append(entry | {"status": action.value, "space": space_spec(kept.config.space),
                                                  **_outcome(kept)})
        return True
    if action is StageAction.RERUN:
        _move_aside(path, run.log)
    if run.seconds_left() < MIN_STAGE_S:
        run.log(f"The budget is spent: stage {index} ({stage.name}) and later ones do not run.")
        return False
    order = None
    prior = run.done[-1] if run.done else None  # None: a first from_top stage trains the recipe
    if searched.points and prior is not None and action is not StageAction.RESUME:  # (a resumed stage keeps its configs)
        order = pick_order(prior, stage, run.log)
        if order is not None:
            searched = stage_space(run.config, index, prior, order)
            entry |= searched.record
    config, points, slots = run.config, searched.points, None
    if run.budget is not None and points and action is not StageAction.RESUME:
        if prior is None:  # the recipe's seeds: the plan's epochs, each refitted to the deadline
            slots = max(1, connect.free_slots(run.config, run.budget.resources, run.budget.plan.slots))
        else:
            config, points, slots = _sized(run, run.budget, index, searched.space, order)
            entry |= {"epochs": config.stages[index - 1].epochs, "points": points}
    _announce(run.log, index, config.stages, entry, resuming=action is StageAction.RESUME)
    run.stages_json["stages"].append(entry | {"status": "running"})
    run.write_stages_json()
    if action is StageAction.RESUME:
        result = run_experiment(config_for_resume(path), resume=True, address=run.address, log=run.log,
                                verbose=run.verbose)
    else:
        result = _run_afresh(run, config, index, searched.space, points, slots)
    return _record(run, index, stage, entry, result)


def _run_afresh(run: _StagedRun, config: Config, index: int, space: SpaceConfig, points: list[dict[str, Any]] | None,
                slots: int | None) -> SweepResult:
    """Stage `index` as a new sweep in its folder, stopped at its share of a budget's deadline."""
    budget = run.budget
    ends = None if budget is None else stage_deadline(budget.plan.stages, index, time.time(), budget.deadline)
    speed = budget.plan.stages[index - 1].get("epoch_s") if budget is not None else None
    # A stage sized to the deadline config by config (the only one `slots` is counted for, by
    # _sized): each trial refits its own length to the stage's end. Only where its trials run in
    # one wave: with more than the slots, the first would stretch to the end and leave none for
    # the rest (their epochs, sized for waves by affordable, stand).
    refit = slots is not None and points is not None and len(points) <= slots
    return run_experiment(stage_config(config, index, space, run.root, points, speed).resolved(),
                          address=run.address, deadline=ends, fit_to_deadline=refit, log=run.log, verbose=run.verbose,
                          run_plan=budget.plan if budget is not None else None)


def _record(run: _StagedRun, index: int, stage: StageConfig, entry: dict[str, Any], result: SweepResult) -> bool:
    """Stage `index`'s result into stages.json and the log; False when the run stops after it (the
    budget ran out, or the stage was interrupted)."""
    run.done.append(result)
    finished = not interrupted(result.summary)
    run.stages_json["stages"][-1] = entry | {
        "space": space_spec(result.config.space),  # a resumed stage keeps its own
        "status": "done" if finished else "interrupted",
        **_outcome(result),
    }
    run.write_stages_json()
    run.log(_stage_report(index, stage, result))
    if deadline_reached(result.summary) and (index == len(run.config.stages) or run.seconds_left() < MIN_STAGE_S):
        run.log(f"The budget ran out during stage {index} ({stage.name}); its trials and checkpoints are kept.")
        return False
    if not finished:
        run.log(f"Stage {index} was interrupted. Continue with: caviar sweep --resume {run.root}")
        return False
    return True


def _plan_stages(config: Config, begun: float, *, joined: bool, log: Callable[[str], None]) -> tuple[Config, _Budget]:
    """Size every stage to the budget (one throughput probe for the whole run): the planned
    config, and the plan with the deadline the stages share and a trial's resources."""
    budget_s = parse_duration(config.budget)
    data = read_data(config)
    resources = connect.check_cluster(config, storage.resolve(config.storage), joined=joined)
    planned = plan_budget(config, data, resources, budget_s=budget_s, spent_s=time.time() - begun,
                          stage_train_images=stage_train_images(config, len(data.train_y)))
    log(planned.describe())
    return apply_plan(config, planned), _Budget(plan=planned, deadline=begun + budget_s, resources=resources)


def _sized(run: _StagedRun, budget: _Budget, index: int, space: SpaceConfig,
           order: list[int] | None = None) -> tuple[Config, list[dict[str, Any]], int]:
    """Stage `index` (a budgeted `from_top` stage) sized to its share of the time left, on the trial
    slots free now: its config, the configs it trains with their epochs, and the slots."""
    free = connect.free_slots(run.config, budget.resources, budget.plan.slots)
    slots = max(1, free)  # with none free, its trials wait for one: sized as if one at a time
    if free < budget.plan.slots:
        run.log(f"   warning: only {free} of the {budget.plan.slots} trial slots the plan counted are free "
                "now (another job holds the rest, or Ray has not given back an earlier trial's); "
                f"the stage is sized for {slots}")
    config, points = _sized_to_the_deadline(
        run.config, index, run.done[-1].trials, space,
        stage_deadline(budget.plan.stages, index, time.time(), budget.deadline), budget.plan.epoch_s,
        budget.plan.average_factor, slots, run.log, order)
    return config, points, slots


def _sized_to_the_deadline(config: Config, index: int, prior: pd.DataFrame, space: SpaceConfig, ends: float,
                           planned_epoch_s: float, average_factor: float, slots: int,
                           log: Callable[[str], None],
                           order: list[int] | None = None) -> tuple[Config, list[dict[str, Any]]]:
    """Stage `index` (which trains the prior stage's best configs) sized to end by `ends` on
    `slots` trial slots: the configs it trains, picked and given their own epochs at the speed
    they showed in the prior stage times `average_factor` (the weight average's extra passes,
    caviar.sweeps.budget.Plan), by caviar.sweeps.budget.affordable (the plan timed `planned_epoch_s`), and
    `config` with the stage's epochs set to the longest. `order`: the candidates' order (by rank
    when None; caviar.sweeps.diverse.pick_order)."""
    from caviar.results.border import scored

    stage = config.stages[index - 1]
    candidates = scored(prior)
    if order is not None:
        candidates = candidates.iloc[order].reset_index(drop=True)
    if "epoch_s" not in candidates or candidates["epoch_s"].isna().any() or not len(candidates):
        # a stage run before caviar timed epochs: keep the plan
        return config, top_points(prior, space, stage.from_top, index, order)
    left = ends - time.time()
    epoch_s = [float(s) * average_factor for s in candidates["epoch_s"]]
    chosen = affordable(epoch_s, stage.from_top, planned_epoch_s, left, slots)
    points = top_points(prior, space, len(candidates), index, order)
    picked = [points[i] | {TRIAL_EPOCHS_KEY: epochs} for i, epochs in chosen]
    passed_over = [i for i in range(chosen[-1][0]) if i not in dict(chosen)]
    log(f"   in the {left:.0f} s left for this stage (the plan said {stage.epochs} epochs at {planned_epoch_s:.1f} s "
        "per epoch): " + ", ".join(f"#{i + 1} ({epoch_s[i]:.1f} s per epoch) {epochs} epochs" for i, epochs in chosen)
        + (f"; passed over as more than {1 / AFFORDABLE_SHARE:.0f}x slower: "
           f"{', '.join(f'#{i + 1}' for i in passed_over)}" if passed_over else ""))
    longest = max(epochs for _, epochs in chosen)
    return derive_config(config, {f"stages.{index - 1}.epochs": longest}, f"stage {index} ({stage.name})"), picked


def _with_history(plan: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """Keep the rules of earlier runs of a rerun stage in stages.json under "previous_runs"."""
    if not previous.get("stages"):
        return plan
    history = list(previous.get("previous_runs", [])) + [{"stages": previous["stages"], "saved": time.time()}]
    return plan | {"previous_runs": history}


def _outcome(result: SweepOutcome) -> dict[str, Any]:
    best = result.summary.get("best_trial") or {}
    return {
        "best_val_acc": best.get("best_val_acc"),
        "best_trial": best.get("trial_id"),
        "counts": result.summary.get("counts"),
        "border_warnings": result.summary.get("border_warnings", []),
    }


def _announce(log: Callable[[str], None], index: int, stages: list[StageConfig], entry: dict[str, Any],
              resuming: bool) -> None:
    stage = stages[index - 1]
    whole = stage.train_subset is None or (isinstance(stage.train_subset, float) and stage.train_subset == 1.0)
    subset = "the training set" if whole else f"train_subset {stage.train_subset}"
    verb = "resuming" if resuming else "running"
    epochs = f"{stage.epochs} epoch{'s' if stage.epochs != 1 else ''}"
    lines = [f"== Stage {index}/{len(stages)} {stage.name!r} ({verb}): {entry['num_samples']} trials x {epochs} on "
             f"{subset}"]
    if "points" in entry:
        lines.append(f"   training stage {index - 1}'s top {len(entry['points'])} configs again, with new seeds")
    if "rules" in entry:
        lines.append(f"   ranges from stage {index - 1}'s top {entry['top']} of {entry['scored']} scored trials:")
        lines += [f"   - {rule['why']}" for rule in entry["rules"].values()]
    log("\n".join(lines))


def _stage_report(index: int, stage: StageConfig, result: SweepOutcome) -> str:
    best = result.summary.get("best_trial") or {}
    acc = best.get("best_val_acc")
    state = "interrupted" if interrupted(result.summary) else "done"
    text = f"== Stage {index} {stage.name!r} {state}: best val_acc {acc:.4f} ({best.get('trial_id')})" \
        if acc is not None else f"== Stage {index} {stage.name!r} {state}: no trial scored"
    warnings = result.summary.get("border_warnings") or []
    return text + ("\n" + format_warnings(warnings) if warnings else "")


def describe_stages(result: StagedResult) -> str:
    """One line per stage for the end of `caviar sweep`: trials, best score, where."""
    lines = ["Stages:"]
    for entry in result.plan.get("stages", []):
        acc = entry.get("best_val_acc")
        score = f"best val_acc {acc:.4f}" if isinstance(acc, float) and math.isfinite(acc) else "no score"
        epochs = f"{entry['epochs']} epoch{'s' if entry['epochs'] != 1 else ''}"
        lines.append(f"  {entry['index']}. {entry['name']:<10} {entry['num_samples']:>4} trials x {epochs:<10} "
                     f"{score}  [{entry['status']}]  {entry['folder']}/")
    lines.append(f"Why each range is what it is: {storage.join(result.root, STAGES_FILE)}")
    return "\n".join(lines)
