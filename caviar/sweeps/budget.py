"""A wall-clock budget -> a sweep that fits it (`caviar sweep --budget 30m`, `budget:` in a file).

Ray Tune can only stop at a deadline (`time_budget_s`); caviar plans for it. At the start of a
budgeted sweep one task with a trial's resources times training steps of the recipe and configs
drawn from the space, on the sweep's data and device (:func:`measure`). From that, the slots and the
time left, :func:`plan` sizes the sweep: trials, the longest one's epochs and every stage. Ray's
`time_budget_s` stays as the safety net: the sweep stops on time, every trial and checkpoint saved.

The shape of the plan (the caviar way is many models):
- ASHA: as many epochs per trial (`max_epochs`, at most the file's) as still leave enough trials
  that every rung has `min_rung_trials` rivals; then as many trials as fit.
- random: the file's `max_epochs` if at least 2 trials per slot fit, fewer epochs otherwise.
- PBT: a population of 2 trials per slot (at least 4) sharing the time; epochs follow.
- stages: every stage's trial count scaled by one factor, epochs capped where one trial could not
  finish in the time.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from caviar.config.durations import format_duration
from caviar.config.loading import derive_config
from caviar.config.schedulers import SCHEDULERS, asha_epochs_per_trial, rungs
from caviar.config.schema import Config, StageConfig
from caviar.errors import ConfigError
from caviar.sweeps import shapes

if TYPE_CHECKING:
    import torch

    from caviar.training.data import SplitData

# Fractions of the budget not spent training: the tail, when the last trials run and other slots
# idle, and process start-up between trials (measured: 0.2-0.6 s per trial, 4-5 s per sweep).
UTILISATION = 0.85
STARTUP_S = 15.0  # Ray start, data into the object store, the throughput probe
STAGE_STARTUP_S = 5.0  # each stage after the first: its Tuner, its trials' first processes
WORKER_START_S = 5.0  # the first stage's trials start new worker processes too (importing torch: ~5 s here)
# Seconds besides training and evaluation, measured on the 2-core CPU with sub-second epochs
# (Ray's time_this_iter_s against the probe's estimate): each epoch's checkpoint, report and
# babysitting ~1 s; a trial's start in a reused process ~1 s.
EPOCH_OVERHEAD_S = 1.0
TRIAL_OVERHEAD_S = 1.0
# The longest trial must finish within this fraction of the time: it cannot start at second 0
# (ASHA promotes it only after rivals reached its rungs).
LONGEST_TRIAL_SHARE = 0.6


# ---------------------------------------------------------------- measuring
@dataclass
class Throughput:
    """Seconds per image of one trial on one slot, median over configs drawn from the space."""

    train_s_per_image: float
    eval_s_per_image: float
    configs: int  # how many configs were timed
    device: str
    # the experiment's recipe (its first search point), timed on its own: the unit R (caviar.sweeps.shapes)
    recipe_train_s_per_image: float | None = None

    def epoch_s(self, train_images: int, val_images: int, averaging: float = 0.0, bn_images: int = 0,
                recipe: bool = False) -> float:
        """One epoch: training, the validation pass, and (for the averaged share of epochs) the
        weight average's batch-norm pass and validation pass; of the recipe with `recipe`."""
        train = self.recipe_train_s_per_image if recipe and self.recipe_train_s_per_image else self.train_s_per_image
        evaluation = val_images * self.eval_s_per_image
        average = averaging * (min(bn_images, train_images) + val_images) * self.eval_s_per_image
        return train_images * train + evaluation + average


def measure(config: Config, data: SplitData, device: torch.device | None = None, configs: int = 3,
            seconds_each: float = 1.5, *, recipe_decides: Callable[[Throughput], bool] | None = None) -> Throughput:
    """Time training steps and an evaluation pass of `configs` configs drawn from the space, on
    `device` with the trial's thread count. Runs inside a Ray task (caviar.sweeps.experiment), which passes
    the device Ray assigned it. The recipe is timed first; where `recipe_decides` (:func:`recipe_alone`)
    says its speed settles the plan, the drawn configs are not timed (their ~2 s each go to training)."""
    import statistics

    import torch

    from caviar.search.space import sample
    from caviar.training.train import evaluate, train_one_epoch
    from caviar.training.trial import Trial, TrialSettings, data_tensors

    settings = TrialSettings.from_config(config, data)
    torch.set_num_threads(settings.threads)
    train_x, train_y, val_x, val_y = None, None, None, None
    train_times, eval_times = [], []
    drawn = sample(config.space, configs + 1, seed=config.search.seed or 0)
    # The recipe (search.points[0], the rest drawn) first, timed apart: R, the unit a budget is told in.
    recipe = [drawn[-1] | dict(config.search.points[0])] if config.search.points else []
    for index, hparams in enumerate(recipe + drawn[:configs]):
        trial = Trial(hparams, settings, device)
        if train_x is None:
            train_x, train_y, val_x, val_y = data_tensors(data, trial.device)
        batch = int(hparams["batch_size"])
        chunk = min(len(train_y), max(batch, 256))
        # First pass warms up the kernels (oneDNN / cuDNN pick algorithms); then time whole passes
        # over `chunk` images until `seconds_each` have gone by.
        run = lambda: train_one_epoch(trial.model, trial.optimizer, train_x[:chunk], train_y[:chunk],  # noqa: E731
                                      batch_size=batch, generator=trial.generator, augment=settings.augment,
                                      amp=settings.amp, channels_last=settings.channels_last)
        run()
        images, begin = 0, time.perf_counter()
        while images == 0 or time.perf_counter() - begin < seconds_each:
            run()
            images += (chunk // batch) * batch if chunk >= batch else chunk
        _sync(trial.device)
        train_times.append((time.perf_counter() - begin) / images)
        probe = min(len(val_y), 1024)
        begin = time.perf_counter()
        evaluate(trial.model, val_x[:probe], val_y[:probe], batch_size=settings.eval_batch_size, amp=settings.amp,
                 channels_last=settings.channels_last)
        eval_times.append((time.perf_counter() - begin) / max(1, probe))
        if recipe and index == 0 and recipe_decides is not None and recipe_decides(
                Throughput(train_times[0], eval_times[0], 0, str(trial.device.type), train_times[0])):
            break
    device = str(trial.device.type)
    timed = len(train_times) - len(recipe)  # drawn configs timed (0: the recipe decided alone)
    recipe_s = train_times[0] if recipe else None
    if timed:  # the space's speed is the drawn configs', the recipe apart
        train_times, eval_times = train_times[len(recipe):], eval_times[len(recipe):]
    return Throughput(statistics.median(train_times), statistics.median(eval_times), timed, device, recipe_s)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- planning
@dataclass
class Plan:
    budget_s: float  # the whole budget
    seconds: float  # what the trials may use (budget less what is already spent and start-up)
    slots: int  # trials that run at once
    epoch_s: float  # estimated seconds per full epoch of one trial
    scheduler: str
    num_samples: int = 0
    max_epochs: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)  # per stage: num_samples, epochs, share of time
    expected_trial_epochs: float = 0.0
    throughput: dict[str, Any] = field(default_factory=dict)
    # epoch_s over what an epoch costs without the weight average's per-epoch passes (batch-norm
    # recomputation and evaluation of the average, in its share of the epochs): a stage timed in
    # a search, where trials rarely reach their averaging epochs, is scaled by it to train one.
    average_factor: float = 1.0
    # What the budget buys in runs of the recipe, and the shape chosen from that (caviar.sweeps.shapes);
    # {} for an experiment without a members stage.
    shape: dict[str, Any] = field(default_factory=dict)
    shape_changes: dict[str, Any] = field(default_factory=dict)  # the config changes of the shape (unsized)
    memory: str = ""  # what the data takes in memory, for `--plan` (caviar.training.memory.describe)

    def describe(self) -> str:
        head = (f"Budget {format_duration(self.budget_s)}: {self.slots} trial slot{'s' if self.slots != 1 else ''}, "
                f"~{self.epoch_s:.1f} s per epoch of one trial (measured), ~{self.expected_trial_epochs:.0f} "
                f"trial-epochs fit")
        if self.shape:
            head += f"\n  {self.shape['text']}"
        if self.stages:
            names = [stage["name"] for stage in self.shape_changes.get("stages", [])] or [""] * len(self.stages)
            parts = [f"{name + ' ' if name else ''}{s['num_samples']} x {s['epochs']} ep"
                     for name, s in zip(names, self.stages)]
            return f"{head}\n  stages planned: {' -> '.join(parts)}"
        return f"{head}; planned {self.num_samples} trials, up to {self.max_epochs} epochs each ({self.scheduler})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _trial_epochs_available(seconds: float, slots: int, epoch_s: float) -> float:
    return slots * seconds * UTILISATION / epoch_s


def _single(scheduler: str, trial_epochs: float, longest: int, config: Config, slots: int,
            overhead: float) -> tuple[int, int]:
    """(num_samples, max_epochs) for one sweep that uses `trial_epochs` trial-epochs, each trial
    costing `overhead` epochs' worth of time besides its own epochs."""
    search = config.search
    cap = max(1, min(search.max_epochs, longest))
    rule = SCHEDULERS[scheduler]
    if rule.rungs:
        grace, eta = search.grace_period, search.reduction_factor
        for epochs in range(cap, 0, -1):
            g = min(grace, epochs)
            n = int(trial_epochs / (asha_epochs_per_trial(epochs, g, eta) + overhead))
            # every rung below max_epochs should see at least min_rung_trials trials
            needed = max(2 * slots, search.min_rung_trials * eta ** (len(rungs(epochs, g, eta)) - 1))
            if n >= needed:
                return n, epochs
        return max(slots, int(trial_epochs / (1 + overhead))), 1
    if rule.population:
        population = max(4, 2 * slots)
        return population, max(1, min(cap, int(trial_epochs / population - overhead)))
    for epochs in range(cap, 0, -1):  # random search: at least 2 trials per slot
        if trial_epochs / (epochs + overhead) >= 2 * slots:
            return int(trial_epochs / (epochs + overhead)), epochs
    return max(slots, int(trial_epochs / (1 + overhead))), 1


def _stage_cost(config: Config, stage: StageConfig, epochs: int, train_fraction: float) -> float:
    rule = SCHEDULERS[stage.scheduler_run(config.search.scheduler)]
    return rule.epochs_per_trial(epochs, config.search.grace_period, config.search.reduction_factor) * train_fraction


def _stage_epoch_cap(stage: StageConfig, fraction: float, seconds: float, longest: int, epoch_s: float,
                     slots: int) -> int:
    """The most epochs one trial of a stage can be given. A stage that draws trials (ASHA) promotes
    its longest trial only after rivals reached its rungs, so that one must fit LONGEST_TRIAL_SHARE
    of the time. The trials of a `from_top` stage start together when it starts and run to its end
    (in waves where there are more than slots), so the cap is the whole time, and it applies to the
    epochs after scaling: the stage's epochs follow the file's proportions (capped before scaling,
    they would skew them)."""
    fraction = max(fraction, 1e-9)
    if stage.from_top:
        waves = math.ceil(stage.from_top / max(1, slots))
        return max(1, int(seconds * UTILISATION / (epoch_s * waves * fraction)))
    return max(1, int(longest / fraction))


def stage_train_images(config: Config, total: int) -> list[int]:
    """Training images per epoch of each stage, out of `total` training images (a stage's own
    train_subset, and train.epoch_size)."""
    from caviar.training.train import images_per_epoch

    subsets = [total if s.train_subset is None or s.train_subset == 1.0
               else min(total, int(s.train_subset) if isinstance(s.train_subset, int) else int(s.train_subset * total))
               for s in config.stages]
    return [images_per_epoch(n, config.train.epoch_size) for n in subsets]


def recipe_seconds(config: Config, throughput: Throughput, train_images: int, val_images: int) -> float:
    """R: the seconds one run of the experiment's recipe (search.points[0]) takes on one slot,
    trained for its own schedule (caviar.sweeps.shapes.recipe_epochs) with `train_images` per epoch,
    its weight average's passes and each epoch's overhead counted."""
    averaging = (1 - config.average.start) if config.average.method != "none" else 0.0
    epoch_s = throughput.epoch_s(train_images, val_images, averaging, config.average.bn_images,
                                 recipe=True) + EPOCH_OVERHEAD_S
    return shapes.recipe_epochs(config) * epoch_s + TRIAL_OVERHEAD_S


def _shape(config: Config, throughput: Throughput, budget_s: float, slots: int, train_images: int, val_images: int,
           stage_train_images: list[int] | None) -> shapes.Shape | None:
    """The shape a budget buys, from R timed on the members stage's images (None without a recipe)."""
    if not config.search.points:
        return None
    members = shapes.members_stage(config)
    images = train_images if members is None or not stage_train_images else stage_train_images[members]
    recipe_s = recipe_seconds(config, throughput, images, val_images)
    return shapes.choose(config, recipe_s=recipe_s, budget_s=budget_s, slots=slots)


def plan_sizes(config: Config, data: SplitData, slots: int, stage_train_images: list[int] | None) -> dict[str, Any]:
    """The keywords :func:`plan` and :func:`recipe_alone` take besides the budget and the speed."""
    from caviar.training.train import images_per_epoch

    return {"slots": slots, "train_images": images_per_epoch(len(data.train_y), config.train.epoch_size),
            "val_images": len(data.val_y), "stage_train_images": stage_train_images}


def recipe_alone(config: Config, throughput: Throughput, *, budget_s: float, slots: int, train_images: int,
                 val_images: int, stage_train_images: list[int] | None = None) -> bool:
    """Whether the recipe's speed alone buys the `recipe` shape, where every trial trains the recipe."""
    shape = _shape(config, throughput, budget_s, slots, train_images, val_images, stage_train_images)
    return shape is not None and shape.name == "recipe"


def plan(config: Config, *, budget_s: float, spent_s: float, slots: int, throughput: Throughput,
         train_images: int, val_images: int, stage_train_images: list[int] | None = None) -> Plan:
    """The sweep that fits what is left of `budget_s` after `spent_s`, on `slots` parallel trials.
    A staged experiment with a members stage takes the shape its budget buys first
    (caviar.sweeps.shapes): the plan's `shape_changes` give the stages it runs."""
    averaging = (1 - config.average.start) if config.average.method != "none" else 0.0
    shape = _shape(config, throughput, budget_s, slots, train_images, val_images, stage_train_images)
    shape_changes = shapes.changes(config, shape) if shape is not None else {}
    if shape_changes:
        if shape.name == "recipe" and stage_train_images:  # its one stage is the members stage
            stage_train_images = [stage_train_images[shapes.members_stage(config)]]
        config = derive_config(config, shape_changes, f"shape {shape.name}")
    seconds = (budget_s - spent_s - STARTUP_S - WORKER_START_S - STAGE_STARTUP_S * max(0, len(config.stages) - 1))
    epoch_s = throughput.epoch_s(train_images, val_images, averaging, config.average.bn_images) + EPOCH_OVERHEAD_S
    if seconds < 2 * epoch_s:
        raise ConfigError(f"budget {format_duration(budget_s)} is too small: one epoch of one trial takes "
                          f"~{epoch_s:.0f} s here; give at least {format_duration(spent_s + STARTUP_S + 3 * epoch_s)} "
                          "or train on less data (data.train_subset)")
    available = _trial_epochs_available(seconds, slots, epoch_s)
    longest = int(LONGEST_TRIAL_SHARE * seconds / epoch_s)
    plain_epoch_s = throughput.epoch_s(train_images, val_images) + EPOCH_OVERHEAD_S
    result = Plan(budget_s=budget_s, seconds=seconds, slots=slots, epoch_s=epoch_s,
                  scheduler=config.search.scheduler, expected_trial_epochs=available,
                  throughput=asdict(throughput), average_factor=epoch_s / plain_epoch_s)
    if shape is not None:
        result.shape = shape.to_dict() | {"text": shape.describe()}
        result.shape_changes = shape_changes
    if not config.stages:
        result.num_samples, result.max_epochs = _single(config.search.scheduler, available, longest, config, slots,
                                                        TRIAL_OVERHEAD_S / epoch_s)
        return result
    fractions = [n / max(1, train_images) for n in (stage_train_images or [train_images] * len(config.stages))]
    caps = [_stage_epoch_cap(stage, f, seconds, longest, epoch_s, slots) for stage, f in zip(config.stages, fractions)]
    # A from_top stage's epochs are scaled below, so its cap applies to the scaled count: capping the
    # file's figure first would skew the proportions (see _stage_epoch_cap).
    epochs = [stage.epochs if stage.from_top else min(stage.epochs, cap) for stage, cap in zip(config.stages, caps)]
    counts = [stage.from_top or stage.num_samples for stage in config.stages]
    cost = sum(n * (_stage_cost(config, stage, e, f) + TRIAL_OVERHEAD_S / epoch_s)
               for stage, n, e, f in zip(config.stages, counts, epochs, fractions))
    # One factor for every stage, as the file proportions them: a stage that draws trials gets
    # more (or fewer) of them; a `from_top` stage, whose trials are the winners, more epochs. A shape
    # that sets the search's share of the time (ensemble) scales the two kinds apart.
    scales = [available / cost] * len(config.stages)
    share = shape.search_share if shape is not None else None
    if share is not None and 0 < share < 1:
        costs = [n * (_stage_cost(config, stage, e, f) + TRIAL_OVERHEAD_S / epoch_s)
                 for stage, n, e, f in zip(config.stages, counts, epochs, fractions)]
        searching = sum(c for c, stage in zip(costs, config.stages) if not stage.from_top)
        training = sum(costs) - searching
        if searching > 0 and training > 0:
            scales = [available * (1 - share) / training if stage.from_top else available * share / searching
                      for stage in config.stages]
    result.stages = [
        {"num_samples": n, "epochs": max(1, min(cap, int(e * scale)))} if stage.from_top else
        {"num_samples": max(slots, int(n * scale)), "epochs": e}
        for stage, n, e, cap, scale in zip(config.stages, counts, epochs, caps, scales)
    ]
    for sized, stage, f in zip(result.stages, config.stages, fractions):  # each stage's share of the time
        sized["share"] = sized["num_samples"] * (_stage_cost(config, stage, sized["epochs"], f) +
                                                 TRIAL_OVERHEAD_S / epoch_s)
        # one epoch of the stage's trials (search.fidelity: seconds converts its rungs with it)
        sized["epoch_s"] = round(throughput.epoch_s(round(f * train_images), val_images) + EPOCH_OVERHEAD_S, 3)
    total = sum(sized["share"] for sized in result.stages)
    for sized in result.stages:
        sized["share"] = round(sized["share"] / total, 4)
    return result


def stage_deadline(planned_stages: list[dict[str, Any]], index: int, now: float, deadline: float) -> float:
    """When stage `index` (1-based) must stop: its share of the time left, in proportion to the
    stages still to run, so that a stage that runs over its estimate cannot eat the next one's
    time (the last stage gets all that is left)."""
    rest = [sized.get("share", 1.0) for sized in planned_stages[index - 1:]]
    if len(rest) == 1 or sum(rest) <= 0:
        return deadline
    later_startups = STAGE_STARTUP_S * (len(rest) - 1)  # kept for the stages after this one
    return now + max(0.0, deadline - now - later_startups) * rest[0] / sum(rest)


def apply(config: Config, planned: Plan) -> Config:
    """`config` with the planned sizes (and the deadline) written in: what the sweep then runs."""
    changes: dict[str, Any] = dict(planned.shape_changes)
    if changes:
        config = derive_config(config, changes, "the budget's shape")
    search = config.search
    if planned.stages:
        for i, (_, sized) in enumerate(zip(config.stages, planned.stages)):
            changes |= {f"stages.{i}.num_samples": sized["num_samples"], f"stages.{i}.epochs": sized["epochs"]}
    else:
        changes |= {"search.num_samples": planned.num_samples, "search.max_epochs": planned.max_epochs,
                    "search.grace_period": min(search.grace_period, planned.max_epochs)}
    if search.fidelity == "seconds":
        # an epoch as the search trains it: no weight average yet (each stage gets its own: caviar.sweeps.stages)
        changes["search.epoch_seconds"] = round(planned.stages[0]["epoch_s"] if planned.stages else
                                                planned.epoch_s / planned.average_factor, 3)
    return derive_config(config, changes, "planned config")


# A stage that trains the search's winners (`from_top`) passes over a winner slower than the
# configuration the plan timed by more than 1 / this share: it could train less than this share of
# the epochs the plan meant for it, so its search score came from a schedule it cannot get
# (docs/benchmark-history.md, section 7).
AFFORDABLE_SHARE = 0.5


def affordable(epoch_s: list[float], count: int, planned_epoch_s: float, seconds_left: float,
               slots: int) -> list[tuple[int, int]]:
    """The configs a `from_top` stage trains, out of candidates timed at `epoch_s` (seconds per
    epoch as they trained in the stage before, best candidate first), and the epochs each gets:
    (index into `epoch_s`, epochs) pairs, best first.

    They are the best `count` that can train at least AFFORDABLE_SHARE of the epochs a config of
    the planned speed (`planned_epoch_s`) would (where fewer can, the next best fill the places),
    on `slots` trial slots in waves of `slots`. Each gets as many epochs as fit at its own speed
    (at least 1): a fast config trains longer instead of leaving its slot idle while a slow one
    finishes. The plan made at the start timed one configuration of the space; the configs that
    won the search are often wider and slower, and a stage cut short by the deadline would stop its
    cosine schedule half way, at a high learning rate, so the stage is sized again just before it
    starts.
    """
    count = min(count, len(epoch_s))
    waves = math.ceil(count / max(1, slots))
    usable = (seconds_left - STAGE_STARTUP_S - TRIAL_OVERHEAD_S * waves) * UTILISATION
    fits = [max(1, int(usable / (waves * seconds))) for seconds in epoch_s]
    good = [i for i, seconds in enumerate(epoch_s) if AFFORDABLE_SHARE * seconds <= planned_epoch_s][:count]
    rest = [i for i in range(len(epoch_s)) if i not in good][: count - len(good)]
    return [(i, fits[i]) for i in sorted(good + rest)]
