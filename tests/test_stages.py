"""caviar.sweeps.stages: ranges narrow around the top trials in sampling scale, widen past an edge, and a
real staged run completes every stage in one experiment folder."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, epochs_reported, interrupt_sweep
from test_sweep import SMALL_NET, small_config

import caviar
import caviar.results.border
import caviar.sweeps.console
import caviar.sweeps.experiment
from caviar.config.loading import load_config
from caviar.config.schema import Config, StageConfig
from caviar.config.space import Choice, SpaceConfig
from caviar.errors import ConfigError
from caviar.sweeps.narrowing import next_space
from caviar.sweeps.stages import stage_config

STAGE = StageConfig(name="coarse", epochs=1, num_samples=8, top=3, pad=0.1, widen=0.5)


def results(rows: list[dict]) -> pd.DataFrame:
    """A hand-made leaderboard: one dict per trial with its score and hyperparameters."""
    table = pd.DataFrame(rows)
    table["trial_id"] = [f"t{i}" for i in range(len(table))]
    table["status"] = table.get("status", pd.Series(["completed"] * len(table)))
    return table


def filled(rows: list[dict], **filler) -> list[dict]:
    """`rows` plus low-scoring trials at `filler` values, up to 8 scored trials (MIN_SCORED)."""
    return rows + [{"best_val_acc": 0.05 - 0.001 * i, **filler} for i in range(8 - len(rows))]


def space(**entries) -> SpaceConfig:
    return SpaceConfig(**(dict(SMALL_NET) | entries))


def test_log_range_narrows_around_the_top_trials_in_log10():
    """lr 1e-6..1 (6 decades): top 3 at 1e-4..1e-2 -> 10^(-4 - 0.6)..10^(-2 + 0.6), the rule in stages.json."""
    s = space(lr={"low": 1e-6, "high": 1.0, "scale": "log"})
    table = results(filled([
        {"best_val_acc": 0.9, "lr": 1e-3}, {"best_val_acc": 0.8, "lr": 1e-2}, {"best_val_acc": 0.7, "lr": 1e-4},
        {"best_val_acc": 0.2, "lr": 0.5}, {"best_val_acc": 0.1, "lr": 2e-6},
    ], lr=1e-5))
    new, rules = next_space(s, table, STAGE)
    assert new.lr.scale == "log"
    assert math.log10(new.lr.low) == pytest.approx(-4.6) and math.log10(new.lr.high) == pytest.approx(-1.4)
    rule = rules["params"]["lr"]
    assert rule["action"] == "narrowed" and "log10" in rule["why"] and rule["from"]["low"] == 1e-6
    assert rules["header"]["top_trials"] == ["t0", "t1", "t2"]


def test_best_on_the_edge_widens_instead_of_narrowing():
    """lr 1e-4..1e-1 with the best two at 9e-2, 8e-2 (outer 10%): the high edge moves 1.5 decades out;
    the low side narrows."""
    s = space(lr={"low": 1e-4, "high": 1e-1, "scale": "log"})
    table = results(filled([
        {"best_val_acc": 0.9, "lr": 9e-2}, {"best_val_acc": 0.8, "lr": 8e-2}, {"best_val_acc": 0.7, "lr": 1e-2},
        {"best_val_acc": 0.1, "lr": 1e-4},
    ], lr=1e-3))
    new, rules = next_space(s, table, STAGE)
    assert math.log10(new.lr.high) == pytest.approx(-1 + 1.5)
    assert math.log10(new.lr.low) == pytest.approx(-2 - 0.3)  # top span starts at 1e-2, pad 0.1 x 3 decades
    assert rules["params"]["lr"]["action"] == "widened-high"


def test_momentum_narrows_in_one_minus_beta():
    """momentum 0.9..0.999: top at 0.99 and 0.995 narrow in log10(1 - beta), padded by 0.2 decades."""
    s = space(momentum={"low": 0.9, "high": 0.999, "scale": "one_minus_log"})
    table = results(filled([{"best_val_acc": 0.9, "momentum": 0.99}, {"best_val_acc": 0.8, "momentum": 0.995},
                            {"best_val_acc": 0.7, "momentum": 0.99}, {"best_val_acc": 0.1, "momentum": 0.9}],
                           momentum=0.95))
    new, _ = next_space(s, table, STAGE)
    assert math.log10(1 - new.momentum.high) == pytest.approx(math.log10(0.005) - 0.2)
    assert math.log10(1 - new.momentum.low) == pytest.approx(-2 + 0.2)


def test_choices_are_pruned_and_agreeing_integers_fixed():
    """Choices seen among the top survive, and those too few trials tried to judge (CSV round trip
    included); 2 layers everywhere on top -> fixed 2."""
    s = space(optimizer=["adam", "momentum", "sgd", "rmsprop"], batch_norm=[True, False],
              conv_layers={"low": 1, "high": 3, "scale": "int"})
    table = results(filled([
        {"best_val_acc": 0.9, "optimizer": "adam", "batch_norm": True, "conv_layers": 2},
        {"best_val_acc": 0.8, "optimizer": "momentum", "batch_norm": True, "conv_layers": 2},
        {"best_val_acc": 0.7, "optimizer": "adam", "batch_norm": True, "conv_layers": 2},
        {"best_val_acc": 0.1, "optimizer": "rmsprop", "batch_norm": False, "conv_layers": 1},
    ], optimizer="sgd", batch_norm=False, conv_layers=1))
    table = pd.read_csv(pd.io.common.StringIO(table.to_csv(index=False)))  # as read back from leaderboard.csv
    new, rules = next_space(s, table, STAGE)
    # sgd: 4 trials, none on top -> dropped; rmsprop: 1 trial -> too few to judge, kept
    assert new.optimizer == Choice(choices=["adam", "momentum", "rmsprop"])
    assert new.batch_norm == Choice(choices=[True])
    assert new.conv_layers == 2 and rules["params"]["conv_layers"]["action"] == "fixed"
    assert rules["params"]["optimizer"]["dropped"] == ["sgd"]


def test_thin_evidence_keeps_the_space():
    """Fewer than 8 scored trials (MIN_SCORED): every entry is kept as it was, and the rule says why."""
    s = space(lr={"low": 1e-6, "high": 1.0, "scale": "log"}, optimizer=["adam", "sgd"])
    table = results([{"best_val_acc": 0.9, "lr": 1e-3, "optimizer": "adam"},
                     {"best_val_acc": 0.8, "lr": 2e-3, "optimizer": "adam"},
                     {"best_val_acc": 0.1, "lr": 1e-6, "optimizer": "sgd"}])
    new, rules = next_space(s, table, STAGE)
    assert new == s
    assert rules["params"]["lr"]["action"] == "kept" and "too few" in rules["params"]["lr"]["why"]


def test_momentum_widening_stops_at_its_limit():
    """Best momentum at 0.999 (the high edge of 0.9..0.999): narrowing keeps 0.999, never 0.9999."""
    s = space(momentum={"low": 0.9, "high": 0.999, "scale": "one_minus_log"})
    table = results(filled([{"best_val_acc": 0.9, "momentum": 0.9989}, {"best_val_acc": 0.85, "momentum": 0.9988},
                            {"best_val_acc": 0.8, "momentum": 0.9985}], momentum=0.95))
    new, _ = next_space(s, table, STAGE)
    assert new.momentum.high <= 0.999


def test_no_scored_trial_is_an_error():
    """A stage whose trials all diverged gives nothing to narrow around: a clear error."""
    table = results([{"best_val_acc": 0.0, "lr": 1.0, "status": "diverged"}])
    with pytest.raises(caviar.CaviarError, match="no scored trial"):
        next_space(space(lr={"low": 1e-4, "high": 1.0, "scale": "log"}), table, STAGE)


def test_stage_config_applies_the_stage_settings():
    """Stage 2's sweep: its epochs, trials, subset (1.0 = all), scheduler and seed + 1, in <experiment>/stage2-<name>."""
    config = load_config(REPO / "experiments" / "staged.yaml").resolved()
    s2 = stage_config(config, 2, config.space, "/r/cifar10-staged")
    assert (s2.name, s2.storage) == ("stage2-medium", "/r/cifar10-staged")
    assert (s2.search.max_epochs, s2.search.num_samples, s2.search.scheduler) == (5, 32, "asha")
    assert s2.data.train_subset is None and s2.search.seed == 1 and s2.stages == []
    s1 = stage_config(config, 1, config.space, "/r/cifar10-staged")
    assert s1.data.train_subset == 0.2 and s1.search.max_epochs == 1 and s1.search.scheduler == "random"


def test_staged_yaml_is_complete():
    """experiments/staged.yaml names every section and key (a complete record) and has three stages."""
    tree = yaml.safe_load((REPO / "experiments" / "staged.yaml").read_text())
    for section, values in Config().to_dict().items():
        assert section in tree
        if isinstance(values, dict):
            assert set(tree[section]) == set(values), section
    assert [s.name for s in load_config(tree).stages] == ["coarse", "medium", "fine"]


def test_stage_override_by_index_and_bad_index():
    """--set stages.0.num_samples=4 changes one stage; an index past the end names the valid ones."""
    config = load_config(REPO / "experiments" / "staged.yaml", ["stages.0.num_samples=4"])
    assert config.stages[0].num_samples == 4 and config.stages[1].num_samples == 32
    with pytest.raises(ConfigError, match="index 0..2"):
        load_config(REPO / "experiments" / "staged.yaml", ["stages.5.epochs=1"])


@pytest.fixture(scope="module")
def staged(ray_session, learnable_root, tmp_path_factory):
    """Three real stages on the learnable fixture: 8 x 1 epoch (half the data), 3 x 2 (ASHA), then
    stage 2's top 2 configs trained again for 2 epochs (from_top)."""
    tree = small_config(learnable_root, tmp_path_factory.mktemp("staged"), "staged")
    tree["space"] |= {"lr": {"low": 1e-4, "high": 3e-2, "scale": "log"}, "dropout": {"low": 0.0, "high": 0.4},
                      "optimizer": ["adam", "momentum"], "batch_size": [32, 64]}
    tree["stages"] = [
        {"name": "coarse", "epochs": 1, "num_samples": 8, "train_subset": 0.5, "scheduler": "random", "top": 2},
        {"name": "medium", "epochs": 2, "num_samples": 3, "scheduler": "asha", "top": 2},
        {"name": "fine", "epochs": 2, "num_samples": 1, "from_top": 2},
    ]
    return caviar.sweep(load_config(tree))


def test_real_staged_run_completes_every_stage(staged):
    """Each stage is a finished sweep folder; stages.json holds every stage's space and the rule for it."""
    root = Path(staged.root)
    plan = json.loads((root / "stages.json").read_text())
    assert [s["status"] for s in plan["stages"]] == ["done"] * 3
    assert [s["folder"] for s in plan["stages"]] == ["stage1-coarse", "stage2-medium", "stage3-fine"]
    for entry, trials in zip(plan["stages"], (8, 3, 2)):
        board = pd.read_csv(root / entry["folder"] / "leaderboard.csv")
        assert len(board) == trials and board["best_val_acc"].max() > 0.2
    assert len(staged.stages) == 3 and staged.path == str(root / "stage3-fine")
    assert staged.best is not None and (staged.trials["epochs"] <= 2).all()
    # Stage 2's lr range came from stage 1's top 2 trials, by the rule written next to it.
    coarse = pd.read_csv(root / "stage1-coarse" / "leaderboard.csv")
    rule = plan["stages"][1]["rules"]["lr"]
    assert sorted(rule["top_values"]) == sorted(coarse["lr"].head(2))
    assert plan["stages"][1]["space"]["lr"] == rule["to"]
    second = pd.read_csv(root / "stage2-medium" / "leaderboard.csv")
    if isinstance(rule["to"], dict):
        assert second["lr"].between(rule["to"]["low"], rule["to"]["high"]).all()
    kept = plan["stages"][1]["space"]["optimizer"]
    assert set(second["optimizer"]) <= set(kept["choices"] if isinstance(kept, dict) else [kept])
    # Stage 3 trained stage 2's best two configs again, each with a new seed.
    third = pd.read_csv(root / "stage3-fine" / "leaderboard.csv")
    best_two = second[second["status"] != "diverged"].head(2)
    assert sorted(third["lr"]) == pytest.approx(sorted(best_two["lr"]))
    assert sorted(third["batch_size"]) == sorted(best_two["batch_size"])
    assert not set(third["seed"]) & set(best_two["seed"])
    assert (third["epochs"] == 2).all() and plan["stages"][2]["num_samples"] == 2
    assert "Stages:" in caviar.sweeps.console.describe(staged) and "stages.json" in caviar.sweeps.console.describe(staged)


def test_ensemble_of_a_staged_experiment_draws_from_every_stage(staged):
    """`caviar ensemble <staged folder>` ranks the trials of all stages together; members come from
    more than one stage, and the result is saved in the experiment folder."""
    result = caviar.ensemble(staged.root, top_k=8, seeds=0, average=False)
    stages_of = {trial_id: folder for folder in ("stage1-coarse", "stage2-medium", "stage3-fine")
                 for trial_id in pd.read_csv(Path(staged.root) / folder / "leaderboard.csv")["trial_id"]}
    assert len({stages_of[t] for t in result.members["trial_id"]}) >= 2
    assert result.accuracy > 0.3 and (Path(staged.root) / "ensemble" / "ensemble.json").exists()


def test_staged_report_links_every_stage(staged):
    """`caviar report` on a staged folder writes each stage's report and a top page with the rules."""
    from caviar.results.report import write_report

    page = write_report(staged.root).read_text()
    for folder in ("stage1-coarse", "stage2-medium", "stage3-fine"):
        assert f"href='{folder}/report.html'" in page
        assert (Path(staged.root) / folder / "report" / "hparams.png").exists()
    assert "lr: the top 2 trials span" in page


def test_rerun_from_a_stage_keeps_earlier_stages(staged):
    """--stage 3 on a finished run: stages 1-2 are kept as they are, stage 3 runs afresh, the old one kept aside."""
    root = Path(staged.root)
    before = pd.read_csv(root / "stage2-medium" / "leaderboard.csv")
    again = caviar.sweep(resume=root, stage=3)
    assert (root / "stage3-fine.prev1" / "leaderboard.csv").exists()
    assert (root / "stage3-fine" / "leaderboard.csv").exists() and len(again.trials) == 2
    assert pd.read_csv(root / "stage2-medium" / "leaderboard.csv").equals(before)
    plan = json.loads((root / "stages.json").read_text())
    assert [s["status"] for s in plan["stages"]] == ["kept", "kept", "done"] and plan["previous_runs"]
    with pytest.raises(ConfigError, match="stages 1..3"):
        caviar.sweep(resume=root, stage=4)


def test_staged_run_interrupted_mid_stage_resumes_that_stage(ray_session, learnable_root, tmp_path, ray_temp_dir):
    """Ctrl-C during stage 2 of a real staged run, then `--resume` of the experiment folder: stage 1
    is kept as it was, stage 2's trials continue (every epoch once, none trained twice) and stage 3
    runs."""
    tree = small_config(learnable_root, tmp_path / "results", "halted", max_concurrent=1)
    tree["stages"] = [
        {"name": "coarse", "epochs": 1, "num_samples": 2, "scheduler": "random", "top": 2},
        {"name": "medium", "epochs": 5, "num_samples": 2, "scheduler": "random", "top": 2},
        {"name": "fine", "epochs": 1, "num_samples": 1, "from_top": 1},
    ]
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(tree))
    root = tmp_path / "results" / "halted"
    code, output = interrupt_sweep(tmp_path / "exp.yaml", ray_temp_dir, until=lambda: any(
        len(epochs_reported(t)) >= 2 for t in root.glob("stage2-medium/trial_*")))
    assert code == 130 and f"caviar sweep --resume {root}" in output, output
    first = (root / "stage1-coarse" / "leaderboard.csv").read_bytes()
    before = {t.name: epochs_reported(t) for t in root.glob("stage2-medium/trial_*")}
    assert not (root / "stage3-fine").exists()

    result = caviar.sweep(resume=root)
    plan = json.loads((root / "stages.json").read_text())
    assert [s["status"] for s in plan["stages"]] == ["done", "done", "done"]
    assert (root / "stage1-coarse" / "leaderboard.csv").read_bytes() == first
    for trial_dir in root.glob("stage2-medium/trial_*"):
        epochs = epochs_reported(trial_dir)
        assert epochs == list(range(1, 6)), (trial_dir.name, epochs)  # no gap, no repeat
        assert epochs[:len(before.get(trial_dir.name, []))] == before.get(trial_dir.name, [])
    assert len(result.stages) == 3 and list(result.trials["status"]) == ["completed"]



def test_points_with_their_own_epoch_counts_train_that_many(ray_session, learnable_root, tmp_path):
    """The configs a budgeted `from_top` stage trains each carry their own `max_epochs` (sized to
    their speed): Ray takes them as given, and each trial ends, complete, at its own count."""
    tree = small_config(learnable_root, tmp_path, "own-epochs", scheduler="random", num_samples=2, max_epochs=3)
    base = {"lr": 2e-3, "batch_size": 64, "dropout": 0.0, "optimizer": "adam"}
    tree["search"]["points"] = [base | {"seed": 1, "max_epochs": 1}, base | {"seed": 2, "max_epochs": 3}]
    result = caviar.sweep(load_config(tree))
    table = result.trials.sort_values("seed")
    assert list(table["epochs"]) == [1, 3] and list(table["max_epochs"]) == [1, 3]
    assert (table["status"] == "completed").all() and table["best_val_acc"].max() > 0.3


def test_a_budgeted_stage_with_more_winners_than_slots_trains_every_one(ray_session, learnable_root, tmp_path):
    """from_top: 3 on 2 slots under a budget: the winners train in two waves, each the epochs
    sized for its wave (caviar.sweeps.budget.affordable, its `max_epochs`). None refits its length to the
    stage's end (Trial.refit): before, the first wave stretched itself to the deadline and the third
    winner was left a few epochs."""
    tree = small_config(learnable_root, tmp_path, "waves")
    tree["space"]["lr"] = {"low": 1e-3, "high": 1e-2, "scale": "log"}
    tree["budget"] = "70s"  # 50 s left the search stage ~7 s: a fresh trial process took them to start (slow 2-core machine); at 65 s the planner fitted 2 of the 3 winners (CI, 2026-12-03)
    # pick: diverse (caviar.sweeps.diverse) on the way: the configs come in the order it chose
    tree["stages"] = [{"name": "search", "epochs": 1, "num_samples": 4, "scheduler": "random"},
                      {"name": "train", "epochs": 8, "num_samples": 3, "from_top": 3, "pick": "diverse"}]
    lines = []
    result = caviar.sweep(load_config(tree), log=lines.append)
    board = pd.read_csv(Path(result.root) / "stage2-train" / "leaderboard.csv")
    assert len(board) == 3 and (board["status"] == "completed").all(), board[["status", "epochs", "max_epochs"]]
    sized = [json.loads((Path(path) / "params.json").read_text())["max_epochs"] for path in board["path"]]
    assert list(board["epochs"]) == sized and board["best_val_acc"].max() > 0.3
    (said,) = [line for line in lines if "pick diverse" in line]
    picked = [int(n) - 1 for n in re.findall(r"#(\d+)", said.split("(")[0])]
    assert len(picked) == 3 and picked[0] == 0, said  # the best first, then what adds most to it
    search = caviar.results.border.scored(pd.read_csv(Path(result.root) / "stage1-search" / "leaderboard.csv"))
    assert sorted(board["lr"]) == pytest.approx(sorted(search["lr"].iloc[picked]))


def test_trials_fit_their_length_to_a_deadline(ray_session, learnable_root, tmp_path, monkeypatch):
    """A budgeted stage that trains chosen configs passes its deadline down (fit_to_deadline): a
    trial planned at 60 epochs, which cannot train them before the deadline (minus
    TRIAL_END_MARGIN_S), measures its speed and shrinks its schedule to what fits, so it completes
    it instead of being cut off half way (Trial.refit; stretching is tested in test_train)."""
    monkeypatch.setattr(caviar.sweeps.experiment, "TRIAL_END_MARGIN_S", 3.0)
    tree = small_config(learnable_root, tmp_path, "fit", scheduler="random", num_samples=1, max_epochs=3)
    tree["search"]["points"] = [{"lr": 2e-3, "batch_size": 64, "dropout": 0.0, "optimizer": "adam", "seed": 1,
                                 "max_epochs": 60}]
    deadline = time.time() + 16.0
    result = caviar.sweeps.experiment.run_experiment(load_config(tree), deadline=deadline, fit_to_deadline=True,
                                              log=lambda line: None)
    row = result.trials.iloc[0]
    history = pd.read_json(Path(row["path"]) / "result.json", lines=True, convert_dates=False)
    assert row["status"] == "completed" and 2 < row["epochs"] < 60
    assert row["max_epochs"] == row["epochs"]  # the leaderboard shows the schedule it ran to, not the 60 it began with
    assert history["max_epochs"].iloc[-1] == row["epochs"] and history["max_epochs"].iloc[0] == 60
    assert history["timestamp"].max() <= deadline


def test_diverse_order_takes_the_config_that_errs_differently():
    """Greedy selection on validation: after the best, a slightly weaker candidate that is right
    where the best is wrong comes before a near copy of the best."""
    import numpy as np

    from caviar.sweeps.diverse import complementary_order

    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    def probs(right):  # 0.8 on the label where right, 0.2 elsewhere
        p = np.full((8, 2), 0.2)
        p[np.arange(8), np.where(right, labels, 1 - labels)] = 0.8
        return p
    best = probs([1, 1, 1, 1, 1, 1, 0, 0])
    copy = probs([1, 1, 1, 1, 1, 1, 0, 0]) * 0.99 + 0.005
    other = probs([1, 1, 1, 0, 0, 1, 1, 1])  # wrong on two images, but right where the best is not
    assert complementary_order(np.stack([best, copy, other]), labels) == [0, 2, 1]


def test_diverse_pick_falls_back_to_rank_when_checkpoints_cannot_be_read(tmp_path):
    """A prior stage whose checkpoints are gone: the order stays by rank (None) and the log says why."""
    from types import SimpleNamespace

    from caviar.config.schema import StageConfig
    from caviar.sweeps.diverse import pick_order

    table = pd.DataFrame({"trial_id": ["a", "b", "c"], "best_val_acc": [0.9, 0.8, 0.7], "status": ["completed"] * 3})
    prior = SimpleNamespace(trials=table, path=str(tmp_path / "gone"), config=load_config(None))
    lines = []
    stage = StageConfig(name="train", epochs=2, num_samples=2, from_top=2, pick="diverse")
    assert pick_order(prior, stage, lines.append) is None
    assert len(lines) == 1 and "taking the configs by rank" in lines[0]
    assert pick_order(prior, StageConfig(name="train", epochs=2, num_samples=2, from_top=2), lines.append) is None
    assert len(lines) == 1  # pick: rank reads nothing
