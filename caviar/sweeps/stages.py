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
from caviar.config import (
    CONFIG_FILE,
    Config,
    ConfigError,
    SpaceConfig,
    StageConfig,
    build_config,
)
from caviar.config.durations import parse_duration
from caviar.config.scales import derived_seed, entries, searched
from caviar.errors import CaviarError
from caviar.layout import STAGES_FILE, SUMMARY_FILE, stage_folder
from caviar.results.border import format_warnings
from caviar.results.folder import ExperimentFolder
from caviar.results.leaderboard import deadline_reached, interrupted
from caviar.search import connect
from caviar.sweeps.budget import AFFORDABLE_SHARE, affordable, apply as apply_plan, stage_deadline
from caviar.sweeps.experiment import SweepResult, config_for_resume, plan_budget, run_experiment
from caviar.sweeps.narrowing import next_space, param_spec
from caviar.training.data import prepare_data
from caviar.training.train import images_per_epoch
from caviar.training.trial import TRIAL_EPOCHS_KEY


# ---------------------------------------------------------------- one stage's config
def stage_config(config: Config, index: int, space: SpaceConfig, root: str,
                 points: list[dict[str, Any]] | None = None, epoch_seconds: float | None = None) -> Config:
    """A plain sweep config for stage `index` (1-based) with `space`, in the folder `root`;
    `points` are the configs a `from_top` stage trains; `epoch_seconds` the planned seconds of one
    of the stage's epochs (search.fidelity: seconds)."""
    stage = config.stages[index - 1]
    tree = config.to_dict()
    tree["stages"] = []
    tree["budget"] = None  # the staged run planned every stage; each one gets the run's deadline
    tree["storage"] = root
    tree["name"] = stage_folder(index, stage.name)
    tree["space"] = space.model_dump(mode="json")
    search = tree["search"]
    search["max_epochs"] = stage.epochs
    search["num_samples"] = stage.num_samples
    search["grace_period"] = min(search["grace_period"], stage.epochs)
    if stage.scheduler:
        search["scheduler"] = stage.scheduler
    if search["seed"] is not None:  # a different draw per stage, still repeatable
        search["seed"] = search["seed"] + index - 1
    if stage.train_subset is not None:
        whole = isinstance(stage.train_subset, float) and stage.train_subset == 1.0
        tree["data"]["train_subset"] = None if whole else stage.train_subset
    if points is not None:  # exactly these configs: no search, no early stopping
        search["points"], search["num_samples"] = points, len(points)
        search["scheduler"], search["algorithm"] = "random", "random"
    if search["scheduler"] != "asha":
        search["fidelity"] = "epochs"  # it counts only ASHA's rungs
    elif epoch_seconds is not None:
        search["epoch_seconds"] = epoch_seconds
    return build_config(tree, f"stage {index} ({stage.name})")


def top_points(table: pd.DataFrame, space: SpaceConfig, count: int, stage_index: int) -> list[dict[str, Any]]:
    """The best `count` scored trials' hyperparameters as configs to train again, each with a new
    seed (derived from its own and the stage, so a rerun draws the same): independent
    initialisations of the winners are what an ensemble gains most from."""
    from caviar.results.border import scored

    points = []
    for _, row in scored(table).head(count).iterrows():
        point = {name: _plain(row[name]) for name in entries(space) if name in row and pd.notna(row[name])}
        point["seed"] = derived_seed(row.get("seed", 0), stage_index, mix=7919)
        points.append(point)
    return points


def _plain(value: Any) -> Any:
    """A leaderboard cell as the plain Python value a config holds (numpy scalars unwrapped)."""
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------- the runner
@dataclass
class StagedResult:
    """What `caviar sweep` returns for a staged experiment: the last stage run, plus every stage."""

    root: str
    stages: list[Any] = field(default_factory=list)  # SweepResult per stage run or kept, in order
    plan: dict[str, Any] = field(default_factory=dict)  # the content of stages.json

    @property
    def final(self) -> Any:
        return self.stages[-1]

    # The SweepResult interface, answered by the last stage (what describe() and the CLI read).
    @property
    def path(self) -> str:
        return self.final.path

    @property
    def trials(self) -> pd.DataFrame:
        return self.final.trials

    @property
    def summary(self) -> dict[str, Any]:
        return self.final.summary

    @property
    def config(self) -> Config:
        return self.final.config

    @property
    def best(self) -> Any:
        return self.final.best


def _stage_state(path: str) -> str:
    """absent | partial (interrupted or still to finish) | done."""
    if not storage.exists(storage.join(path, CONFIG_FILE)):
        return "absent"
    if not storage.exists(storage.join(path, SUMMARY_FILE)):
        return "partial"
    summary = json.loads(storage.read_text(storage.join(path, SUMMARY_FILE)))
    return "partial" if interrupted(summary) else "done"


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


def _space_spec(space: SpaceConfig) -> dict[str, Any]:
    return {name: param_spec(param) for name, param in searched(space).items()}


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
    stages = config.stages
    if start is not None and not 1 <= start <= len(stages):
        raise ConfigError(f"--stage {start}: the experiment has stages 1..{len(stages)}")
    root = storage.join(storage.resolve(config.storage), config.name)
    if storage.exists(storage.join(root, CONFIG_FILE)) and not resume and start is None:
        raise ConfigError(f"experiment folder {root} already holds a staged sweep; continue it with "
                          f"`caviar sweep --resume {root}`, rerun from a stage with --stage N, or start another "
                          "with --set name=<new name>")
    started = connect.start_ray(address, verbose)
    deadline, budget_plan, resources = None, None, None
    if config.budget and not resume and start is None:
        config, budget_plan, deadline, resources = _plan_stages(config, begun or time.time(),
                                                                address_started=started, log=log)
        stages = config.stages  # with the planned sizes
    storage.write_text(storage.join(root, CONFIG_FILE), config.to_yaml())
    previous = {}  # a rerun keeps the rules of the run it replaces in stages.json ("previous_runs")
    if start is not None and storage.exists(storage.join(root, STAGES_FILE)):
        previous = json.loads(storage.read_text(storage.join(root, STAGES_FILE)))
    plan: dict[str, Any] = {"experiment": root, "border_fraction": config.search.border_fraction, "stages": []}
    if budget_plan is not None:
        plan["budget"] = budget_plan.to_dict()
    result = StagedResult(root=root, plan=plan)
    first = start or 1
    try:
        space = config.space
        for index, stage in enumerate(stages, start=1):
            path = storage.join(root, stage_folder(index, stage.name))
            state = _stage_state(path)
            entry: dict[str, Any] = {
                "index": index, "name": stage.name, "folder": stage_folder(index, stage.name), "epochs": stage.epochs,
                "num_samples": stage.num_samples, "train_subset": stage.train_subset,
            }
            points = None
            if index > 1 and stage.from_top:
                prior = result.stages[-1]
                space = prior.config.space
                points = top_points(prior.trials, space, stage.from_top, index)
                if not points:
                    raise CaviarError(f"stage {index - 1} ({stages[index - 2].name}) has no scored trial to train "
                                      f"further; fix its space and rerun it with --stage {index - 1}")
                entry |= {"from_stage": index - 1, "num_samples": len(points), "top": len(points),
                          "points": points}
            elif index > 1:
                prior = result.stages[-1]
                space, rules = next_space(prior.config.space, prior.trials, stages[index - 2],
                                          config.search.border_fraction)
                entry["from_stage"] = index - 1
                entry.update(rules["header"])
                entry["rules"] = rules["params"]
            entry["space"] = _space_spec(space)
            if index < first:
                if state != "done":
                    raise ConfigError(f"--stage {first}: stage {index} ({stage.name}) has not finished; finish it "
                                      f"with `caviar sweep --resume {root}`")
                keep = _load_stage(path)
                result.stages.append(keep)
                space = keep.config.space  # what actually ran, even if the rule has changed since
                plan["stages"].append(entry | {"status": "kept", "space": _space_spec(space), **_outcome(keep)})
                continue
            if state == "done" and start is None:  # --resume: a finished stage stays
                keep = _load_stage(path)
                result.stages.append(keep)
                space = keep.config.space
                plan["stages"].append(entry | {"status": "done", "space": _space_spec(space), **_outcome(keep)})
                continue
            if state == "done" or (state == "partial" and start is not None and index > start):
                _move_aside(path, log)
                state = "absent"
            if deadline is not None and deadline - time.time() < 5:
                log(f"The budget is spent: stage {index} ({stage.name}) and later ones do not run.")
                break
            slots = None
            if deadline is not None and points and state != "partial":
                slots = connect.free_slots(config, resources, budget_plan.slots)
                if slots < budget_plan.slots:
                    log(f"   warning: only {slots} of the {budget_plan.slots} trial slots the plan counted are free "
                        "now (another job holds the rest, or Ray has not given back an earlier trial's); "
                        f"the stage is sized for {slots}")
                config, points = _sized_to_the_deadline(
                    config, index, result.stages[-1].trials, space,
                    stage_deadline(budget_plan.stages, index, time.time(), deadline), budget_plan.epoch_s,
                    budget_plan.average_factor, slots, log)
                entry |= {"epochs": config.stages[index - 1].epochs, "points": points}
            _announce(log, index, config.stages, entry, state)
            plan["stages"].append(entry | {"status": "running"})
            _write_plan(root, _with_history(plan, previous))
            if state == "partial":
                stage_result = run_experiment(config_for_resume(path), resume=True, address=address, log=log,
                                              verbose=verbose)
            else:
                ends = None if deadline is None else stage_deadline(budget_plan.stages, index, time.time(), deadline)
                speed = budget_plan.stages[index - 1].get("epoch_s") if budget_plan is not None else None
                # A stage sized to the deadline config by config (the only one `slots` is counted
                # for, above): each trial refits its own length to the stage's end. Only where its
                # trials run in one wave: with more than the slots, the first would stretch to the end
                # and leave none for the rest (their epochs, sized for waves by affordable, stand).
                refit = slots is not None and len(points) <= slots
                stage_result = run_experiment(stage_config(config, index, space, root, points, speed).resolved(),
                                              address=address, deadline=ends, fit_to_deadline=refit, log=log,
                                              verbose=verbose)
            result.stages.append(stage_result)
            entry["space"] = _space_spec(stage_result.config.space)  # a resumed stage keeps its own
            finished = not interrupted(stage_result.summary)
            plan["stages"][-1] = entry | {"status": "done" if finished else "interrupted", **_outcome(stage_result)}
            _write_plan(root, _with_history(plan, previous))
            log(_stage_report(index, stage, stage_result))
            if deadline_reached(stage_result.summary) and (index == len(stages) or deadline - time.time() < 5):
                log(f"The budget ran out during stage {index} ({stage.name}); its trials and checkpoints are kept.")
                break
            if not finished:
                log(f"Stage {index} was interrupted. Continue with: caviar sweep --resume {root}")
                break
    finally:
        if started:
            import ray

            ray.shutdown()
    return result


def _plan_stages(config: Config, begun: float, *, address_started: bool,
                 log: Callable[[str], None]) -> tuple[Config, Any, float, dict[str, float]]:
    """Size every stage to the budget (one throughput probe for the whole run): the planned
    config, the plan, the deadline the stages share, and a trial's resources."""

    budget_s = parse_duration(config.budget)
    data = prepare_data(config.data.root, val_size=config.data.val_size, train_subset=config.data.train_subset,
                        split_seed=config.data.split_seed, download=config.data.download)
    resources = connect.check_cluster(config, storage.resolve(config.storage), joined=not address_started)
    total = len(data.train_y)
    subsets = [total if s.train_subset is None or s.train_subset == 1.0
               else min(total, int(s.train_subset) if isinstance(s.train_subset, int) else int(s.train_subset * total))
               for s in config.stages]
    images = [images_per_epoch(n, config.train.epoch_size) for n in subsets]
    planned = plan_budget(config, data, resources, budget_s=budget_s, spent_s=time.time() - begun,
                                  stage_train_images=images)
    log(planned.describe())
    return apply_plan(config, planned), planned, begun + budget_s, resources


def _sized_to_the_deadline(config: Config, index: int, prior: pd.DataFrame, space: SpaceConfig, ends: float,
                           planned_epoch_s: float, average_factor: float, slots: int,
                           log: Callable[[str], None]) -> tuple[Config, list[dict[str, Any]]]:
    """Stage `index` (which trains the prior stage's best configs) sized to end by `ends` on
    `slots` trial slots: the configs it trains, picked and given their own epochs at the speed
    they showed in the prior stage times `average_factor` (the weight average's extra passes,
    caviar.sweeps.budget.Plan), by caviar.sweeps.budget.affordable (the plan timed `planned_epoch_s`), and
    `config` with the stage's epochs set to the longest."""
    from caviar.results.border import scored

    stage = config.stages[index - 1]
    candidates = scored(prior)
    if "epoch_s" not in candidates or candidates["epoch_s"].isna().any() or not len(candidates):
        # a stage run before caviar timed epochs: keep the plan
        return config, top_points(prior, space, stage.from_top, index)
    left = ends - time.time()
    epoch_s = [float(s) * average_factor for s in candidates["epoch_s"]]
    chosen = affordable(epoch_s, stage.from_top, planned_epoch_s, left, slots)
    points = top_points(prior, space, len(candidates), index)
    picked = [points[i] | {TRIAL_EPOCHS_KEY: epochs} for i, epochs in chosen]
    passed_over = [i for i in range(chosen[-1][0]) if i not in dict(chosen)]
    log(f"   in the {left:.0f} s left for this stage (the plan said {stage.epochs} epochs at {planned_epoch_s:.1f} s "
        "per epoch): " + ", ".join(f"#{i + 1} ({epoch_s[i]:.1f} s per epoch) {epochs} epochs" for i, epochs in chosen)
        + (f"; passed over as more than {1 / AFFORDABLE_SHARE:.0f}x slower: "
           f"{', '.join(f'#{i + 1}' for i in passed_over)}" if passed_over else ""))
    stages = list(config.stages)
    stages[index - 1] = stage.model_copy(update={"epochs": max(epochs for _, epochs in chosen)})
    return config.model_copy(update={"stages": stages}), picked


def _with_history(plan: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """Keep the rules of earlier runs of a rerun stage in stages.json under "previous_runs"."""
    if not previous.get("stages"):
        return plan
    history = list(previous.get("previous_runs", [])) + [{"stages": previous["stages"], "saved": time.time()}]
    return plan | {"previous_runs": history}


def _outcome(result: Any) -> dict[str, Any]:
    best = result.summary.get("best_trial") or {}
    return {
        "best_val_acc": best.get("best_val_acc"),
        "best_trial": best.get("trial_id"),
        "counts": result.summary.get("counts"),
        "border_warnings": result.summary.get("border_warnings", []),
    }


def _announce(log: Callable[[str], None], index: int, stages: list[StageConfig], entry: dict[str, Any],
              state: str) -> None:
    stage = stages[index - 1]
    whole = stage.train_subset is None or (isinstance(stage.train_subset, float) and stage.train_subset == 1.0)
    subset = "the training set" if whole else f"train_subset {stage.train_subset}"
    verb = "resuming" if state == "partial" else "running"
    epochs = f"{stage.epochs} epoch{'s' if stage.epochs != 1 else ''}"
    lines = [f"== Stage {index}/{len(stages)} {stage.name!r} ({verb}): {entry['num_samples']} trials x {epochs} on "
             f"{subset}"]
    if "points" in entry:
        lines.append(f"   training stage {index - 1}'s top {len(entry['points'])} configs again, with new seeds")
    if "rules" in entry:
        lines.append(f"   ranges from stage {index - 1}'s top {entry['top']} of {entry['scored']} scored trials:")
        lines += [f"   - {rule['why']}" for rule in entry["rules"].values()]
    log("\n".join(lines))


def _stage_report(index: int, stage: StageConfig, result: Any) -> str:
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
        lines.append(f"  {entry['index']}. {entry['name']:<10} {entry['num_samples']:>4} trials x {epochs:<10} {score}  "
                     f"[{entry['status']}]  {entry['folder']}/")
    lines.append(f"Why each range is what it is: {storage.join(result.root, STAGES_FILE)}")
    return "\n".join(lines)
