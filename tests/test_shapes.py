"""caviar.sweeps.shapes: a budget is told in runs of the recipe (R), and the flow takes the shape that
many runs per slot buys: the recipe alone, a short search then members, or members first; the
plan stays sensible at a cluster's worth (1,000 R); a file can force a shape; `--plan` shows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from caviar.cli import main
from caviar.config.loading import load_config
from caviar.errors import ConfigError
from caviar.sweeps import budget, shapes
from caviar.sweeps.budget import Throughput, plan
from caviar.sweeps.stage_plan import stage_space

# ~21 s per quarter-pass epoch of Fashion-MNIST on one CPU core (the width-0.25 ResNet-9).
SPEED = Throughput(train_s_per_image=1 / 657, eval_s_per_image=1 / 3000, configs=3, device="cpu",
                   recipe_train_s_per_image=1 / 657)
TRAIN, VAL = 13750, 5000  # images of one epoch (a quarter of 55,000), validation images


def _recipe_s(config) -> float:
    return budget.recipe_seconds(config, SPEED, TRAIN, VAL)


def _plan(config, runs: float, slots: int):
    """The plan of a budget that holds `runs` runs of the recipe over `slots` slots."""
    seconds = runs * _recipe_s(config) / slots
    return plan(config, budget_s=seconds, spent_s=0, slots=slots, throughput=SPEED, train_images=TRAIN,
                val_images=VAL, stage_train_images=[TRAIN] * len(config.stages))


def _planned(config, runs: float, slots: int):
    p = _plan(config, runs, slots)
    return p, budget.apply(config, p)


def test_the_plan_states_the_budget_in_runs_of_the_recipe():
    """R is the recipe (search.points[0]) trained for the members stage's 120 epochs, timed on its own;
    30 minutes on 2 slots is budget x slots / R runs."""
    config = load_config("experiments/cpu-budget.yaml")
    averaging = 1 - config.average.start
    epoch_s = TRAIN / 657 + VAL / 3000 + averaging * (config.average.bn_images + VAL) / 3000 + budget.EPOCH_OVERHEAD_S
    recipe_s = 120 * epoch_s + budget.TRIAL_OVERHEAD_S
    assert _recipe_s(config) == pytest.approx(recipe_s)
    p = plan(config, budget_s=1800, spent_s=0, slots=2, throughput=SPEED, train_images=TRAIN, val_images=VAL,
             stage_train_images=[TRAIN, TRAIN])
    assert p.shape["runs"] == pytest.approx(1800 * 2 / recipe_s, abs=1e-3)
    assert p.shape["runs_per_slot"] == pytest.approx(1800 / recipe_s, abs=1e-3)
    assert f"30m on 2 slots = {1800 * 2 / recipe_s:.1f} R" in p.describe()
    slower = Throughput(**{**vars(SPEED), "recipe_train_s_per_image": 2 / 657})  # the recipe timed, not the draws
    assert budget.recipe_seconds(config, slower, TRAIN, VAL) > recipe_s + 100 * TRAIN / 657


@pytest.mark.parametrize("slots", [2, 32])
def test_about_one_run_per_slot_trains_the_recipe_on_every_slot(slots):
    """1 R: no search; the recipe from a new seed per slot, each trained the whole budget."""
    config = load_config("experiments/cpu-budget.yaml")
    p, planned = _planned(config, 1 * slots / 2, slots)  # half a run per slot, as 30 min of Fashion on 2 cores
    assert p.shape["name"] == "recipe" and not p.shape["forced"]
    assert [(s.name, s.from_top, s.num_samples) for s in planned.stages] == [("recipe", slots, slots)]
    assert planned.search.fidelity == "epochs"  # no rungs without a search
    members_s = planned.stages[0].epochs * p.epoch_s
    assert 0.8 * p.seconds <= members_s <= p.seconds  # the whole budget, one wave
    points = stage_space(planned, 1, None).points
    assert len(points) == slots and len({point["seed"] for point in points}) == slots
    recipe = config.search.points[0]
    assert all({k: point[k] for k in recipe} == recipe for point in points)
    assert stage_space(planned, 1, None).points == points  # a rerun draws the same seeds


def test_a_few_runs_per_slot_search_then_train_full_length_members():
    """8 R on 2 slots (4 per slot): the file's search (the recipe one of its arms) then a member per
    slot. 4 R on 2 slots (2 per slot) is still the recipe: there the search lost to it (RECIPE_BELOW)."""
    config = load_config("experiments/cpu-budget.yaml")
    assert _plan(config, 4, 2).shape["name"] == "recipe"
    p, planned = _planned(config, 8, 2)
    assert p.shape["name"] == "search"
    search, members = planned.stages
    assert search.num_samples >= 3 * 3 ** 2 and members.from_top == 2  # every rung has rivals; a member per slot
    assert members.epochs >= config.stages[1].epochs  # at least full length
    assert 0.2 <= p.stages[0]["share"] <= 0.4  # the file's ~30% of the time
    assert planned.search.points[0] == config.search.points[0]  # the recipe is tried first


def test_many_runs_per_slot_train_members_first():
    """16 R on 2 slots: members of MEMBER_RUNS R in waves, the search about a quarter of the time."""
    config = load_config("experiments/cpu-budget.yaml")
    p, planned = _planned(config, 16, 2)
    assert p.shape["name"] == "ensemble"
    members = planned.stages[-1]
    assert members.from_top == p.shape["members"] >= 4  # at least two waves on 2 slots
    runs_each = members.epochs * p.epoch_s / _recipe_s(config)
    assert 0.75 * shapes.MEMBER_RUNS <= runs_each <= shapes.MAX_MEMBER_RUNS
    assert 0.2 <= p.stages[0]["share"] <= 0.35


def test_a_thousand_runs_on_a_thousand_slots_is_one_run_each():
    p, planned = _planned(load_config("experiments/cpu-budget.yaml"), 1000, 1000)
    assert p.shape["name"] == "recipe" and planned.stages[0].from_top == 1000


@pytest.mark.parametrize("slots", [2, 32])
def test_a_clusters_worth_stays_sensible(slots):
    """1,000 R: members capped in count and length (where both gains have flattened), every slot
    busy, the rest searches; the plan still fits the budget."""
    config = load_config("experiments/cpu-budget.yaml")
    p, planned = _planned(config, 1000, slots)
    assert p.shape["name"] == "ensemble"
    members = planned.stages[-1]
    assert slots <= members.from_top <= max(shapes.MAX_MEMBERS, slots)
    assert members.from_top <= shapes.MAX_WAVES * slots
    assert members.epochs * p.epoch_s <= shapes.MAX_MEMBER_RUNS * _recipe_s(config) * 1.01
    assert 0 < p.stages[-1]["share"] < 1 and planned.stages[0].num_samples >= slots
    used = sum(s["num_samples"] * (budget.asha_epochs_per_trial(s["epochs"], 1, 3) if i == 0 else s["epochs"])
               for i, s in enumerate(p.stages))
    assert used <= p.expected_trial_epochs * 1.01


def test_an_experiment_file_can_force_a_shape():
    """shape: recipe at 16 R trains the recipe only; shape: ensemble at 1 R still trains members."""
    recipe = load_config("experiments/cpu-budget.yaml", ["shape=recipe"])
    p, planned = _planned(recipe, 16, 2)
    assert p.shape["name"] == "recipe" and p.shape["forced"] and len(planned.stages) == 1
    assert "as the experiment file says" in p.describe()
    p, planned = _planned(load_config("experiments/cpu-budget.yaml", ["shape=ensemble"]), 1, 2)
    assert p.shape["name"] == "ensemble" and planned.stages[-1].from_top >= 2
    with pytest.raises(ConfigError, match="shape"):
        load_config("experiments/cpu-budget.yaml", ["shape=biggest"])


def test_an_experiment_without_a_recipe_or_members_stage_runs_as_its_file_says():
    """No search point: no R. Points but no from_top stage: R is stated, the file runs unchanged."""
    p = _plan(load_config("experiments/staged.yaml"), 4, 2)
    assert p.shape == {} and [s for s in p.stages]
    config = load_config("experiments/cpu-budget.yaml", ["stages=[]"])
    p = plan(config, budget_s=3600, spent_s=0, slots=2, throughput=SPEED, train_images=TRAIN, val_images=VAL)
    assert p.shape["name"] == "file" and " R (R = one run of the recipe" in p.describe()
    assert budget.apply(config, p).search.scheduler == config.search.scheduler


def test_a_first_stage_training_the_recipe_needs_one():
    config = load_config("experiments/cpu-budget.yaml", ["shape=recipe"])
    config = load_config(config.to_dict() | {"stages": [config.stages[1].model_dump(mode="json")]},
                         ["search.points=[]", "search.fidelity=epochs"])
    with pytest.raises(ConfigError, match="no search.points entry"):
        stage_space(config, 1, None)


def test_plan_prints_what_a_budget_buys_without_training(learnable_root, tmp_path, capsys):
    """`caviar sweep EXP --budget T --plan --slots N`: the probe, the plan with its R and shape, for
    a stated cluster; nothing written. --slots without --plan, --plan without a budget, --slots 0:
    clear errors."""
    common = ["--set", f"data.root={learnable_root}", "--set", "data.val_size=100", "--storage", str(tmp_path / "out")]
    assert main(["sweep", "cpu-budget", "--budget", "2h", "--plan", "--slots", "32", *common]) == 0
    printed = capsys.readouterr().out
    assert "32 trial slots" in printed and "on 32 slots = " in printed and "shape " in printed
    assert "nothing was trained or written" in printed and not Path(tmp_path / "out").exists()
    assert main(["sweep", "cpu-budget", "--slots", "3", *common]) == 2
    assert "add --plan" in capsys.readouterr().err
    assert main(["sweep", "smoke", "--plan", *common]) == 2
    assert "give one with --budget" in capsys.readouterr().err
    assert main(["sweep", "cpu-budget", "--budget", "1h", "--plan", "--slots", "0", *common]) == 2
    assert "--slots 0" in capsys.readouterr().err


def test_the_probe_times_only_the_recipe_where_its_speed_alone_decides(learnable_root):
    """A budget of about one run per slot trains only the recipe, so the probe stops after timing it
    (its drawn configs' seconds would come out of that budget); a larger one times the space too."""
    from caviar.training.data import data_for

    config = load_config("experiments/cpu-budget.yaml", [f"data.root={learnable_root}", "data.val_size=100"])
    data = data_for(config)
    sizes = {"slots": 2, "train_images": len(data.train_y), "val_images": len(data.val_y)}
    asked = []

    def decides(throughput: Throughput) -> bool:
        asked.append(throughput)
        return budget.recipe_alone(config, throughput, budget_s=budget_s, **sizes)

    budget_s = 1.0  # far below one run per slot: the recipe shape
    alone = budget.measure(config, data, configs=2, seconds_each=0.05, recipe_decides=decides)
    assert alone.configs == 0 and alone.train_s_per_image == alone.recipe_train_s_per_image > 0
    assert len(asked) == 1 and asked[0].recipe_train_s_per_image == alone.recipe_train_s_per_image
    budget_s = 1e6  # thousands of runs per slot: the space's speed is needed
    both = budget.measure(config, data, configs=2, seconds_each=0.05, recipe_decides=decides)
    assert both.configs == 2 and both.recipe_train_s_per_image > 0
    plan_small = plan(config, budget_s=budget.recipe_seconds(config, alone, sizes["train_images"], 100) * 0.5 + 60,
                      spent_s=0, throughput=alone, **sizes)
    assert plan_small.shape["name"] == "recipe"
