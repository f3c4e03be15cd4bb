"""caviar.sweeps.budget: a wall-clock budget maps to trials and epochs that fit; a budgeted sweep stops on
time with everything saved; caviar.search.schedulers: ASHA waits for rivals, PBT exploits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from test_sweep import SMALL_NET, small_config

import caviar
from caviar.config.durations import parse_duration
from caviar.config.loading import load_config
from caviar.config.schedulers import asha_epochs_per_trial, rungs
from caviar.errors import ConfigError
from caviar.search.schedulers import PromotingASHA
from caviar.sweeps import budget
from caviar.sweeps.budget import Throughput, plan

# ~25 s per epoch of one trial on 55,000 images: Fashion-MNIST on one CPU core.
SPEED = Throughput(train_s_per_image=4e-4, eval_s_per_image=1e-4, configs=3, device="cpu")


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), (45, 45),
                                           ("2d", 172800), (" 10 min ", 600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5m", "0", "30x", "", "m"])
def test_bad_duration_is_a_clear_error(text):
    with pytest.raises(ConfigError, match="budget .*(duration|positive)"):
        parse_duration(text)


def test_budget_in_a_file_is_checked():
    assert load_config(budget="30m").budget == "30m"
    with pytest.raises(ConfigError, match="budget: .*30m"):
        load_config(budget="half an hour")


def test_asha_expected_epochs():
    """Rungs 1, 3, 9 then 20; a third of the trials go on at each rung."""
    assert rungs(20, 1, 3) == [1, 3, 9, 20]
    assert asha_epochs_per_trial(20, 1, 3) == pytest.approx(1 + 2 / 3 + 6 / 9 + 11 / 27)
    assert asha_epochs_per_trial(1, 1, 3) == 1


def _plan(config, seconds, slots=2, **kwargs):
    return plan(config, budget_s=seconds, spent_s=0, slots=slots, throughput=SPEED, train_images=55000,
                val_images=5000, **kwargs)


@pytest.mark.parametrize("seconds", [1800, 3600, 4 * 3600])
@pytest.mark.parametrize("slots", [2, 8])
def test_asha_plan_fits_the_budget(seconds, slots):
    """The planned trials' expected cost fits the slots' time; the longest trial fits the time;
    every rung below the top has min_rung_trials rivals; the file's max_epochs is the cap."""
    config = load_config(search__scheduler="asha", search__max_epochs=40, average__method="none")
    p = _plan(config, seconds, slots)
    per_trial = asha_epochs_per_trial(p.max_epochs, 1, 3) + budget.TRIAL_OVERHEAD_S / p.epoch_s
    assert p.num_samples * per_trial * p.epoch_s <= slots * p.seconds * budget.UTILISATION
    assert p.max_epochs * p.epoch_s <= budget.LONGEST_TRIAL_SHARE * p.seconds
    assert p.num_samples >= 3 * 3 ** (len(rungs(p.max_epochs, 1, 3)) - 1)
    assert 1 <= p.max_epochs <= 40
    assert p.epoch_s == pytest.approx(55000 * 4e-4 + 5000 * 1e-4 + budget.EPOCH_OVERHEAD_S)


def test_more_budget_buys_more():
    config = load_config(search__max_epochs=30)
    plans = [_plan(config, s) for s in (900, 1800, 3600, 7200)]
    assert [p.max_epochs for p in plans] == sorted(p.max_epochs for p in plans)
    assert all(later.num_samples * asha_epochs_per_trial(later.max_epochs, 1, 3) >
               earlier.num_samples * asha_epochs_per_trial(earlier.max_epochs, 1, 3)
               for earlier, later in zip(plans, plans[1:]))


def test_random_and_pbt_plans():
    """random: 2+ trials per slot, each to max_epochs; pbt: a population of 2 per slot shares the time."""
    rand = _plan(load_config(search__scheduler="random", search__max_epochs=50, average__method="none"), 3600)
    assert rand.num_samples >= 4 and rand.num_samples * (rand.max_epochs + 0.1) * rand.epoch_s <= 2 * 3600
    pbt = _plan(load_config(search__scheduler="pbt", search__max_epochs=100, average__method="none"), 3600, slots=4)
    assert pbt.num_samples == 8 and pbt.num_samples * pbt.max_epochs * pbt.epoch_s <= 4 * 3600


def test_staged_plan_scales_every_stage():
    """Three stages sized by one factor; epochs capped where a trial could not finish; total fits."""
    config = load_config("experiments/staged.yaml")
    images = [11000, 55000, 55000]  # stage 1 trains on a fifth
    p = _plan(config, 1800, stage_train_images=images)
    assert len(p.stages) == 3
    assert all(s["epochs"] * p.epoch_s * n / 55000 <= budget.LONGEST_TRIAL_SHARE * p.seconds
               for s, n in zip(p.stages, images))
    cost = sum(s["num_samples"] * ((asha_epochs_per_trial(s["epochs"], 1, 3) if (st.scheduler or "asha") == "asha"
                                    else s["epochs"]) * n / 55000 + budget.TRIAL_OVERHEAD_S / p.epoch_s)
               for s, st, n in zip(p.stages, config.stages, images))
    assert cost * p.epoch_s <= 2 * p.seconds * budget.UTILISATION * 1.05  # floors of `slots` trials aside
    planned = budget.apply(config, p)
    assert [s.num_samples for s in planned.stages] == [s["num_samples"] for s in p.stages]


def test_too_small_a_budget_says_so():
    with pytest.raises(ConfigError, match="too small: one epoch of one trial takes"):
        _plan(load_config(), 40)


# ---------------------------------------------------------------- PromotingASHA
class FakeController:
    """What a scheduler sees of Ray's TuneController: the trials, the searcher, stop_trial."""

    def __init__(self, trials, finished=False):
        self.trials, self.stopped = trials, []
        self.search_alg = SimpleNamespace(is_finished=lambda: finished)

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)


def _result(epoch, acc):
    return {"epoch": epoch, "val_acc": acc}


def _asha(**kwargs):
    return PromotingASHA(time_attr="epoch", metric="val_acc", mode="max", max_t=9, grace_period=1,
                         reduction_factor=3, **kwargs)


def test_first_trials_wait_at_the_rung_until_rivals_arrive():
    """Alone at rung 1, a trial waits (paused) where Ray's ASHA lets it run on; the third trial
    promotes the best of three; later arrivals promote the next best waiting one before any new trial."""
    from ray.tune.schedulers import ASHAScheduler

    plain = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    lone = SimpleNamespace(trial_id="t0", status="RUNNING")
    plain.on_trial_add(None, lone)
    assert plain.on_trial_result(None, lone, _result(1, 0.15)) == "CONTINUE"  # what issue 10 saw

    trials = [SimpleNamespace(trial_id=f"t{i}", status="RUNNING") for i in range(7)]
    scheduler, controller = _asha(), FakeController(trials)
    assert scheduler.on_trial_result(controller, trials[0], _result(1, 0.50)) == "PAUSE"
    assert scheduler.on_trial_result(controller, trials[1], _result(1, 0.40)) == "PAUSE"
    assert scheduler.on_trial_result(controller, trials[2], _result(1, 0.90)) == "CONTINUE"  # best of 3
    trials[0].status = trials[1].status = "PAUSED"
    trials[3].status = "PENDING"
    assert scheduler.choose_trial_to_run(controller) is trials[3]  # nothing promotable yet: a new trial
    trials[3].status = "RUNNING"
    for i, acc in ((3, 0.1), (4, 0.2), (5, 0.3)):
        assert scheduler.on_trial_result(controller, trials[i], _result(1, acc)) == "PAUSE"
        trials[i].status = "PAUSED"
    # 6 trials at rung 1: the top 2 (0.9 promoted, 0.5 waiting) go on; 0.5 gets the next slot
    trials[6].status = "PENDING"
    assert scheduler.choose_trial_to_run(controller) is trials[0]
    assert scheduler.choose_trial_to_run(controller) is trials[6]


def test_waiting_trials_that_lost_are_stopped_at_the_end():
    """No trial runs or waits to start and the search is done: the paused trials that never made
    their rung's top are stopped, so the sweep ends."""
    trials = [SimpleNamespace(trial_id=f"t{i}", status="RUNNING") for i in range(3)]
    scheduler, controller = _asha(), FakeController(trials, finished=True)
    for trial, acc in zip(trials, (0.3, 0.2, 0.9)):
        scheduler.on_trial_result(controller, trial, _result(1, acc))
    trials[0].status = trials[1].status = "PAUSED"
    trials[2].status = "TERMINATED"
    assert scheduler.choose_trial_to_run(controller) is None
    assert sorted(controller.stopped) == ["t0", "t1"]


def test_when_no_trial_can_start_the_best_goes_on_to_the_end():
    """`caviar sweep smoke --set search.max_epochs=4`, 4 trials: the best of rung 1 went on to rung 3,
    where it waited alone (fewer than min_rung_trials could reach it) and was stopped with all
    the others. With the search done and nothing running, a rung's top goes on however few reached
    it, highest rung first; the losers are stopped only when no rung has a waiting finalist."""
    trials = [SimpleNamespace(trial_id=f"t{i}", status="RUNNING") for i in range(4)]
    scheduler, controller = _asha(), FakeController(trials, finished=True)
    for trial, acc in zip(trials, (0.41, 0.30, 0.53, 0.20)):
        scheduler.on_trial_result(controller, trial, _result(1, acc))
    assert scheduler.on_trial_result(controller, trials[2], _result(3, 0.70)) == "PAUSE"  # alone at rung 3
    for trial in trials:
        trial.status = "PAUSED"
    chosen = scheduler.choose_trial_to_run(controller)
    assert chosen is trials[2] and controller.stopped == []  # the best goes on, past the rung it reached alone
    chosen.status = "TERMINATED"
    assert scheduler.choose_trial_to_run(controller) is None  # rung 1's top place (1 of 4) is t2's: the rest lost
    assert sorted(controller.stopped) == ["t0", "t1", "t3"]


def test_min_rung_trials_raises_the_bar():
    trials = [SimpleNamespace(trial_id=f"t{i}", status="RUNNING") for i in range(5)]
    scheduler, controller = _asha(min_rung_trials=5), FakeController(trials)
    verdicts = [scheduler.on_trial_result(controller, t, _result(1, acc)) for t, acc in zip(trials, (.1, .2, .3, .4, .9))]
    assert verdicts == ["PAUSE"] * 4 + ["CONTINUE"]


def test_rungs_in_seconds_compare_trials_after_equal_time():
    """Rungs in seconds: a fast trial (5 s per epoch) and a slow one (7 s) are judged at 10 s, the
    slow one's score read off the line between its reports at 7 s and 14 s; its higher raw score
    (0.8 after 14 s) does not beat the fast one's 0.7 after 10 s. Rung 30 s: each has a score."""
    trials = [SimpleNamespace(trial_id=f"t{i}", status="RUNNING") for i in range(3)]
    scheduler = PromotingASHA(time_attr="time_total_s", metric="val_acc", mode="max", max_t=90, grace_period=10,
                              reduction_factor=3, min_rung_trials=3)
    controller = FakeController(trials)
    fast, slow, third = trials

    def report(trial, seconds, acc):
        return scheduler.on_trial_result(controller, trial, {"time_total_s": seconds, "val_acc": acc})

    assert report(fast, 5, 0.5) == "CONTINUE"
    assert report(fast, 10, 0.7) == "PAUSE"  # at the rung, alone
    assert report(slow, 7, 0.6) == "CONTINUE"
    assert report(slow, 14, 0.8) == "PAUSE"
    assert scheduler._scores[0]["t1"] == pytest.approx(0.6 + 0.2 * 3 / 7)
    assert report(third, 12, 0.1) == "PAUSE"  # first report past the rung: its own score
    fast.status = slow.status = third.status = "PAUSED"
    assert scheduler.choose_trial_to_run(controller) is fast  # the top third of 3: the fast one
    assert report(fast, 90, 0.9) == "STOP"  # max_t in seconds


@pytest.mark.parametrize("before, after, expected", [
    (None, (12.0, 0.5), 0.5),  # no report before the rung
    ((4.0, 0.2), (12.0, 0.6), 0.2 + 0.4 * 6 / 8),  # rung 10 between 4 s and 12 s
    ((10.0, 0.4), (12.0, 0.6), 0.6),  # the earlier report was on the rung itself: the later one counts
])
def test_score_at_a_rung(before, after, expected):
    from caviar.search.schedulers import score_at

    assert score_at(10.0, before, after) == pytest.approx(expected)


def test_seconds_fidelity_needs_a_speed_and_asha():
    """fidelity: seconds is refused without a budget or epoch_seconds, and where no sweep uses
    ASHA; the planner writes the measured speed of an epoch as the search trains it (no average)."""
    with pytest.raises(ConfigError, match="add a budget"):
        load_config({"search": {"fidelity": "seconds"}})
    with pytest.raises(ConfigError, match="no sweep of this experiment uses ASHA"):
        load_config({"search": {"fidelity": "seconds", "scheduler": "random"}, "budget": "1h"})
    assert load_config({"search": {"fidelity": "seconds", "epoch_seconds": 3.5}}).search.epoch_seconds == 3.5
    config = load_config({"search": {"fidelity": "seconds"}, "budget": "1h"})
    p = _plan(config, 3600)
    planned = budget.apply(config, p)
    assert planned.search.epoch_seconds == pytest.approx(p.epoch_s / p.average_factor, rel=1e-3)
    assert planned.search.epoch_seconds < p.epoch_s  # the search's trials rarely reach their averaging epochs


def test_the_asha_of_a_seconds_sweep_counts_seconds():
    """tuning.scheduler turns the rungs' epochs into seconds at epoch_seconds; in epochs it is unchanged."""
    from caviar.search import tuning

    tree = {"search": {"scheduler": "asha", "max_epochs": 27, "grace_period": 1, "reduction_factor": 3,
                       "fidelity": "seconds", "epoch_seconds": 12.0}}
    seconds = tuning.scheduler(load_config(tree))
    assert seconds._time_attr == "time_total_s" and seconds._milestones == [12.0, 36.0, 108.0]
    assert seconds._max_t == 27 * 12.0
    tree["search"]["fidelity"] = "epochs"
    epochs = tuning.scheduler(load_config(tree))
    assert epochs._time_attr == "epoch" and epochs._milestones == [1, 3, 9] and epochs._max_t == 27


def test_a_staged_seconds_plan_times_each_stage():
    """Each planned stage carries the seconds of one of its epochs (a subset stage's are fewer);
    the stage's config converts its rungs with them, and a from_top stage (random) counts epochs."""
    from caviar.sweeps.stages import stage_config

    config = load_config("experiments/cpu-budget.yaml", ["shape=search"])  # the file's two stages
    assert config.search.fidelity == "seconds"
    tree = config.to_dict()
    tree["stages"][0]["train_subset"] = 0.2
    config = load_config(tree)
    p = _plan(config, 1800, stage_train_images=[11000, 55000])
    first, second = (s["epoch_s"] for s in p.stages)
    assert 0 < first < second
    planned = budget.apply(config, p)
    search = stage_config(planned, 1, planned.space, "/r/x", epoch_seconds=first).search
    assert search.fidelity == "seconds" and search.epoch_seconds == first
    train = stage_config(planned, 2, planned.space, "/r/x", points=[{"lr": 0.01}], epoch_seconds=second).search
    assert train.fidelity == "epochs" and train.scheduler == "random"


# ---------------------------------------------------------------- PBT's hyperparameters on a copied checkpoint
def test_trial_adopts_perturbed_hyperparameters_from_a_copied_checkpoint():
    """PBT restores a better trial's checkpoint into a trial with perturbed lr/dropout/wd/momentum:
    the weights are the donor's, the optimisation settings the new ones (lr at the schedule's place)."""
    from caviar.training.trial import Trial, TrialSettings

    settings = TrialSettings(family="convnet", width=1.0, num_classes=10, max_epochs=4, augment=False,
                             eval_batch_size=64, amp=False, channels_last=False, max_loss=100.0, threads=1)
    donor_hparams = dict(SMALL_NET, lr_schedule="cosine", optimizer="nesterov", seed=1)
    donor = Trial(donor_hparams, settings)
    donor.scheduler.step()  # one epoch into the cosine schedule
    donor.epoch = 1
    perturbed = dict(donor_hparams, lr=donor_hparams["lr"] * 1.2, dropout=0.4, weight_decay=2e-4, momentum=0.95)
    trial = Trial(perturbed, settings)
    trial.load_state(donor.state())
    for a, b in zip(donor.model.state_dict().values(), trial.model.state_dict().values()):
        assert torch.equal(a, b)
    group = trial.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(donor.optimizer.param_groups[0]["lr"] * 1.2)
    assert group["weight_decay"] == 2e-4 and group["momentum"] == 0.95
    assert all(m.p == 0.4 for m in trial.model.modules() if isinstance(m, torch.nn.Dropout))
    trial.scheduler.step()  # the schedule continues from the new base
    expected = perturbed["lr"] * (1 + math.cos(math.pi * 2 / 4)) / 2
    assert trial.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def budgeted(ray_session, learnable_root, tmp_path_factory):
    tree = small_config(learnable_root, tmp_path_factory.mktemp("results"), "budgeted", max_epochs=3)
    tree["space"]["lr"] = {"low": 1e-3, "high": 1e-2, "scale": "log"}
    tree["budget"] = "35s"
    tree["search"]["fidelity"] = "seconds"
    return caviar.sweep(load_config(tree), log=lambda line: None)


def test_budgeted_sweep_plans_and_stops_on_time(budgeted):
    """The plan is written (throughput, trials, epochs); the sweep ran what it planned and ended by
    the deadline (a few seconds for Ray's shutdown aside); it learned."""
    summary = json.loads((Path(budgeted.path) / "summary.json").read_text())
    planned = summary["budget"]
    assert planned["budget_s"] == 35 and planned["slots"] == 2 and planned["epoch_s"] > 0
    assert budgeted.config.search.num_samples == planned["num_samples"] >= 2
    assert planned["command_wall_time_s"] <= 35 + 15
    assert budgeted.best is not None and budgeted.best["best_val_acc"] > 0.3


def test_budgeted_sweep_keeps_every_result(budgeted):
    """Every trial that trained an epoch has its checkpoint and its leaderboard row; caviar.yaml holds the plan."""
    import yaml

    table = budgeted.trials
    trained = table[table["epochs"] > 0]
    assert len(trained) >= 2
    assert all(Path(p).exists() for p in trained["best_checkpoint"])
    saved = yaml.safe_load((Path(budgeted.path) / "caviar.yaml").read_text())
    assert saved["search"]["num_samples"] == budgeted.config.search.num_samples and saved["budget"] == "35s"


def test_a_budgeted_sweep_in_seconds_converts_its_rungs_at_the_planned_speed(budgeted):
    """search.fidelity: seconds: the speed of an epoch as the search trains it (no weight average)
    is saved with the sweep, which ASHA's rungs in seconds were made from; the sweep learned."""
    planned = json.loads((Path(budgeted.path) / "summary.json").read_text())["budget"]
    assert budgeted.config.search.fidelity == "seconds"
    assert budgeted.config.search.epoch_seconds == pytest.approx(planned["epoch_s"] / planned["average_factor"],
                                                                  rel=1e-3)


def test_pbt_population_exploits(ray_session, learnable_root, tmp_path):
    """search.scheduler: pbt: 4 trials, interval 1 epoch; PBT's log shows exploits, a copied trial
    goes on from the donor's checkpoint (its epochs never restart at 1), and the population learns.
    (A trial copied from a donor that had already finished has nothing left to train.)"""
    tree = small_config(learnable_root, tmp_path, "pbt", scheduler="pbt", num_samples=4, max_epochs=4,
                        pbt_interval=1)
    tree["space"]["lr"] = [1e-4, 5e-3]  # two clearly different groups: the slow half copies the fast half
    result = caviar.sweep(load_config(tree))
    exploits = [json.loads(line) for line in (Path(result.path) / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "PBT never exploited"
    shown = result.trials[["trial_id", "status", "epochs", "retries"]]
    assert (result.trials["epochs"] >= 3).all() and (result.trials["epochs"] == 4).sum() >= 2, shown
    from caviar.search.reader import read_trials

    for record in read_trials(result.path):
        epochs = list(record.history["epoch"])
        assert epochs == sorted(epochs) and epochs.count(1) == 1, (record.trial_id, epochs)
    cloned = {entry[1] for entry in exploits}
    assert cloned  # trials that copied another's checkpoint
    assert result.best["best_val_acc"] > 0.5


def test_from_top_stage_gets_epochs_and_its_share_of_time():
    """experiments/cpu-budget.yaml: the search stage's trial count and the train stage's epochs
    scale with the budget; each stage's share of the time follows its cost, so stage 1 running
    over cannot eat stage 2's time."""
    from caviar.sweeps.budget import stage_deadline

    config = load_config("experiments/cpu-budget.yaml", ["shape=search"])  # the file's two stages
    images = [13750, 13750]  # epoch_size 0.25 of 55,000
    short, long = (plan(config, budget_s=s, spent_s=0, slots=2, throughput=SPEED, train_images=13750,
                        val_images=5000, stage_train_images=images) for s in (1800, 3600))
    assert [s["num_samples"] for s in short.stages][1] == [s["num_samples"] for s in long.stages][1] == 2
    assert long.stages[1]["epochs"] > short.stages[1]["epochs"] and long.stages[0]["num_samples"] > \
        short.stages[0]["num_samples"]
    train_cost = 2 * (short.stages[1]["epochs"] + budget.TRIAL_OVERHEAD_S / short.epoch_s)
    assert 0 < short.stages[1]["share"] < 1
    assert short.stages[1]["share"] * sum(
        s["num_samples"] * ((asha_epochs_per_trial(s["epochs"], 1, 3) if i == 0 else s["epochs"])
                            + budget.TRIAL_OVERHEAD_S / short.epoch_s) for i, s in enumerate(short.stages)) \
        == pytest.approx(train_cost, rel=1e-3)
    first = stage_deadline(short.stages, 1, 0, 1000)  # its share, after the next stage's start-up
    assert first == pytest.approx((1000 - budget.STAGE_STARTUP_S) * short.stages[0]["share"], rel=1e-3)
    assert stage_deadline(short.stages, 2, 700, 1000) == 1000  # the last stage gets all that is left


@pytest.mark.parametrize("seconds", [600, 1800, 3600, 4 * 3600])
def test_a_staged_plan_keeps_the_files_proportions_at_every_budget(seconds):
    """cpu-budget.yaml gives the search ~29% of the trial time (32 trials of ~3 epochs under ASHA
    against 2 winners of 120 epochs): the plan keeps that share at short budgets too. Capping the
    winners' 120 epochs at the longest-trial share before scaling gave the search 41% at 30 minutes
    and 69% at 10, the winners 10 epochs where 23 fit."""
    config = load_config("experiments/cpu-budget.yaml", ["shape=search"])  # the file's two stages
    search, train = config.stages
    intended = search.num_samples * asha_epochs_per_trial(search.epochs, 1, 3)
    intended /= intended + train.from_top * train.epochs
    speed = Throughput(train_s_per_image=12.0 * 0.85 / 13750, eval_s_per_image=12.0 * 0.15 / 5000, configs=3,
                       device="cpu")  # ~13 s per quarter-pass epoch: the width-0.25 ResNet-9 on one core
    p = plan(config, budget_s=seconds, spent_s=0, slots=2, throughput=speed, train_images=13750, val_images=5000)
    assert p.stages[0]["share"] == pytest.approx(intended, abs=0.06)
    used = sum(s["num_samples"] * ((asha_epochs_per_trial(s["epochs"], 1, 3) if i == 0 else s["epochs"])
                                   + budget.TRIAL_OVERHEAD_S / p.epoch_s) for i, s in enumerate(p.stages))
    assert used <= p.expected_trial_epochs * 1.01  # and the plan still fits the time
    assert used >= p.expected_trial_epochs * 0.85  # without leaving much of it unused


def test_a_concurrency_cap_never_stalls_the_sweep():
    """search.max_concurrent counts waiting trials as live, so no new trial comes while they wait:
    idle with the search unfinished, the scheduler lets the best waiting trial go on, or stops one
    that has lost its rung to make room."""
    trials = [SimpleNamespace(trial_id=f"t{i}", status="RUNNING") for i in range(4)]
    scheduler, controller = _asha(), FakeController(trials, finished=False)
    for trial, acc in zip(trials[:2], (0.3, 0.6)):
        assert scheduler.on_trial_result(controller, trial, _result(1, acc)) == "PAUSE"
        trial.status = "PAUSED"
    trials[2].status = trials[3].status = "TERMINATED"
    assert scheduler.choose_trial_to_run(controller) is trials[1]  # best of the two waiting goes on
    trials[1].status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is None  # busy again: wait
    trials[1].status = "TERMINATED"
    scheduler.on_trial_result(controller, trials[2], _result(1, 0.9))  # 3 at rung 1 now: t0 lost it
    trials[2].status = "TERMINATED"
    assert scheduler.choose_trial_to_run(controller) is None and controller.stopped == ["t0"]


def test_a_from_top_stage_is_sized_from_its_configs_own_speed():
    """Before the train stage starts, each chosen config gets the epochs that fit in the time left
    at the speed it showed in the search (waves when more configs than slots), so its cosine
    schedule ends by the deadline and a fast config does not leave its slot idle."""
    usable = (1000 - 5 - 1) * 0.85
    assert budget.affordable([10.0, 20.0], 2, 10.0, 1000, slots=2) == [(0, int(usable / 10)), (1, int(usable / 20))]
    two_waves = (1000 - 5 - 2) * 0.85 / 2
    assert budget.affordable([10.0, 20.0], 2, 10.0, 1000, slots=1) == [(0, int(two_waves / 10)),
                                                                        (1, int(two_waves / 20))]
    assert budget.affordable([10.0], 1, 10.0, 3, slots=2) == [(0, 1)]  # at least one


def test_a_from_top_stage_passes_over_winners_too_slow_to_train():
    """A candidate more than twice as slow as the config the plan timed (it could train less than
    half the epochs the plan meant) is passed over for the next best that can; where too few can,
    the best of the rest fill the places."""
    usable = (1000 - 5 - 1) * 0.85
    chosen = budget.affordable([20.0, 21.0, 10.0], 2, 10.0, 1000, slots=2)  # planned at 10 s per epoch
    assert chosen == [(0, int(usable / 20)), (2, int(usable / 10))]
    assert budget.affordable([30.0, 40.0, 50.0], 2, 10.0, 1000, slots=2) == [(0, int(usable / 30)),
                                                                            (1, int(usable / 40))]
    assert len(budget.affordable([30.0, 10.0], 5, 10.0, 1000, slots=2)) == 2  # no more than there are


def test_the_stage_gives_each_chosen_config_its_own_epochs():
    import time

    from caviar.sweeps.stages import _sized_to_the_deadline

    config = load_config("experiments/cpu-budget.yaml")
    prior = pd.DataFrame({"status": ["completed", "early-stopped", "early-stopped", "diverged"],
                          "best_val_acc": [0.9, 0.85, 0.8, 0.95], "epoch_s": [12.0, 60.0, 6.0, 1.0],
                          "lr": [0.1, 0.01, 0.001, 1.0], "seed": [1, 2, 3, 4]})
    lines: list[str] = []
    sized, points = _sized_to_the_deadline(config, 2, prior, config.space, time.time() + 600, 12.0, 1.1, 2,
                                           lines.append)
    expected = dict(budget.affordable([12.0 * 1.1, 60.0 * 1.1, 6.0 * 1.1], 2, 12.0, 600, 2))
    assert [p["lr"] for p in points] == [0.1, 0.001]  # the slow second best is passed over
    assert [p["max_epochs"] for p in points] == [expected[0], expected[2]]
    assert sized.stages[1].epochs == max(expected.values()) and sized.stages[0] == config.stages[0]
    assert "passed over" in lines[0] and "#2" in lines[0]
    untimed = prior.drop(columns="epoch_s")
    same, points = _sized_to_the_deadline(config, 2, untimed, config.space, time.time() + 600, 12.0, 1.1, 2,
                                          lines.append)
    assert same is config and [p["lr"] for p in points] == [0.1, 0.01] and "max_epochs" not in points[0]


def test_the_plan_says_what_the_weight_average_adds_to_an_epoch():
    """A winner's speed is measured in the search, where trials rarely reach their averaging
    epochs; its stage averages the last quarter of its epochs (SWA: a batch-norm pass and an
    evaluation of the average each), so it is sized at the plan's ratio of the two costs."""
    swa = load_config("experiments/cpu-budget.yaml")
    p = _plan(swa, 1800)
    train, val = 55000, 5000  # the images of one epoch, as _plan gives them
    plain = train * 4e-4 + val * 1e-4 + budget.EPOCH_OVERHEAD_S
    extra = 0.25 * (swa.average.bn_images + val) * 1e-4
    assert p.average_factor == pytest.approx((plain + extra) / plain)
    assert _plan(load_config("experiments/cpu-budget.yaml", ["average.method=none"]), 1800).average_factor == 1.0
