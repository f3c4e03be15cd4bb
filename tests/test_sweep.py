"""caviar.sweeps.sweeper end to end on a learnable CIFAR-format fixture, in one local Ray instance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import epochs_reported, interrupt_sweep

import caviar
from caviar.config.loading import load_config
from caviar.errors import ConfigError

SMALL_NET = dict(conv_layers=2, conv_width=16, fc_layers=1, fc_width=32, optimizer="adam", init="he",
                 batch_norm=True, activation="relu", grad_clip=0, batch_size=64, dropout=0.1,
                 weight_decay=1e-4, momentum=0.9, lr_schedule="constant", lr=3e-3)


def small_config(root: Path, storage: Path, name: str, **search) -> dict:
    return {
        "name": name,
        "storage": str(storage),
        "data": {"root": str(root), "val_size": 500, "download": False},
        "space": dict(SMALL_NET),
        "search": {"scheduler": "asha", "num_samples": 4, "max_epochs": 3, "grace_period": 1,
                   "reduction_factor": 2, "seed": 0} | search,
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "checkpoint": {"keep": 2, "max_failures": 1},
    }


@pytest.fixture(scope="module")
def asha(ray_session, learnable_root, tmp_path_factory):
    """8 ASHA trials, 4 epochs; lr is either sane or 1e6 (which must diverge)."""
    tree = small_config(learnable_root, tmp_path_factory.mktemp("results"), "asha", num_samples=8, max_epochs=4)
    tree["space"]["lr"] = [2e-3, 4e-3, 1.0e6]
    return caviar.sweep(load_config(tree))


def test_sweep_learns_and_asha_stops_some(asha):
    """The best trial is far above chance; ASHA stopped some trials before the budget."""
    table = asha.trials
    assert len(table) == 8
    assert asha.best is not None and asha.best["best_val_acc"] > 0.5
    assert (table["status"] == "early-stopped").any()
    assert (table["status"] == "completed").any()
    stopped = table[table["status"] == "early-stopped"]
    assert (stopped["epochs"] < 4).all()
    assert (table[table["status"] == "completed"]["epochs"] == 4).all()


def test_a_trial_paused_at_a_rung_goes_on_counting_its_training_time(asha):
    """A trial paused at a rung and resumed continues its time_total_s from the checkpoint (Ray
    restores it): rungs in seconds (search.fidelity) rely on it, or a resumed trial would count
    from 0 again and pass its next rung late."""
    resumed = 0
    for path in asha.trials["path"].dropna():
        rows = [json.loads(line) for line in (Path(path) / "result.json").read_text().splitlines()
                if line.endswith("}")]
        times = [row["time_total_s"] for row in rows]
        assert times == sorted(times), f"{path}: training time went back: {times}"
        resumed += any(row.get("iterations_since_restore") == 1 and row["epoch"] > 1 for row in rows)
    assert resumed, "no trial paused at a rung and resumed: the test saw nothing"


def test_diverging_trial_is_marked_and_others_finish(asha):
    """lr = 1e6 trials are 'diverged' after one epoch; the sweep still completes the rest."""
    table = asha.trials
    diverged = table[table["status"] == "diverged"]
    assert len(diverged) >= 1
    assert (diverged["lr"] == 1e6).all() and (diverged["epochs"] == 1).all()
    assert (table[table["lr"] < 1]["status"] != "diverged").all()
    assert not (table["status"] == "error").any()


def test_leaderboard_and_summary_written(asha):
    """leaderboard.csv (one row per trial, every hyperparameter) and summary.json land in the folder."""
    folder = Path(asha.path)
    board = pd.read_csv(folder / "leaderboard.csv")
    assert len(board) == 8 and list(board["trial_id"]) == list(asha.trials["trial_id"])
    for column in ("status", "best_val_acc", "epochs", "retries", "lr", "batch_size", "optimizer", "seed"):
        assert column in board
    assert board["best_val_acc"].is_monotonic_decreasing
    summary = json.loads((folder / "summary.json").read_text())
    assert sum(summary["counts"].values()) == 8
    assert summary["best_trial"]["trial_id"] == asha.best["trial_id"]
    assert summary["total_trial_epochs"] == int(asha.trials["epochs"].sum())
    assert summary["wall_time_s"] > 0 and summary["config"]["name"] == "asha"
    assert (folder / "caviar.yaml").exists()


def test_checkpoints_are_named_by_score_and_pruned(asha):
    """Each trial keeps at most `checkpoint.keep` (+ the latest) checkpoints, named epoch=...-val_acc=...pt."""
    best = Path(asha.best["best_checkpoint"])
    files = list(best.glob("epoch=*-val_acc=*.pt"))
    assert len(files) == 1
    assert f"val_acc={asha.best['best_val_acc']:.4f}" in files[0].name
    trial_dir = Path(asha.best["path"])
    assert trial_dir.name == f"trial_{asha.best['trial_id']}"
    assert len(list(trial_dir.glob("checkpoint_*"))) <= 3


def test_checkpoint_keep_keeps_the_best_and_the_latest(asha):
    """In every trial folder, the kept checkpoints are its `checkpoint.keep` best epochs by val_acc
    plus its latest one; every epoch dropped scored no better than the worst one kept for its score."""
    for trial_dir in Path(asha.path).glob("trial_*"):
        history = {row["epoch"]: row["val_acc"] for row in map(json.loads, (trial_dir / "result.json").read_text()
                                                                 .splitlines()) if not row.get("diverged")}
        kept = {int(f.name.split("-")[0].removeprefix("epoch=")) for f in trial_dir.glob("checkpoint_*/epoch=*.pt")}
        if not history:
            continue
        latest = max(history)
        assert latest in kept, trial_dir.name
        by_score = kept - {latest}
        assert len(by_score) <= 2, sorted(kept)
        dropped = set(history) - kept
        if by_score and dropped:
            assert min(history[e] for e in by_score) >= max(history[e] for e in dropped), (history, kept)


def test_trial_processes_are_reused(asha):
    """Ray's actor reuse: 8 trials on 2 slots ran in far fewer than 8 worker processes."""
    pids = {json.loads(line)["pid"] for t in Path(asha.path).glob("trial_*")
            for line in (t / "result.json").read_text().splitlines()}
    assert 1 <= len(pids) <= 4, pids


def test_a_leaderboard_row_reruns_the_trial_exactly(asha):
    """The best trial's leaderboard row (hyperparameters and seed), trained again outside Ray with
    the experiment's settings, gives the very validation figures the sweep recorded, epoch by epoch."""
    import torch

    from caviar.config.space import SpaceConfig
    from caviar.training.data import prepare_data
    from caviar.training.trial import Trial, TrialSettings, data_tensors

    row, config = asha.best, asha.config
    hparams = {name: (row[name].item() if hasattr(row[name], "item") else row[name])
               for name in SpaceConfig.model_fields if name in row} | {"seed": int(row["seed"])}
    from caviar.search.reader import read_trials

    record = next(r for r in read_trials(asha.path) if r.trial_id == row["trial_id"])
    recorded = record.history.sort_values("epoch").to_dict("records")
    data = prepare_data(config.data.root, val_size=config.data.val_size, train_subset=config.data.train_subset,
                        split_seed=config.data.split_seed, download=False)
    settings = TrialSettings.from_config(config, data)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        trial = Trial(hparams, settings)
        tensors = data_tensors(data, trial.device)
        for expected in recorded[:2]:
            metrics = trial.run_epoch(*tensors)
            assert (metrics["epoch"], metrics["val_acc"], metrics["val_loss"]) == \
                (expected["epoch"], expected["val_acc"], expected["val_loss"])
    finally:
        torch.set_num_threads(threads)


def test_existing_experiment_is_not_overwritten(asha):
    """Starting a sweep into a folder that holds one is refused with the resume command."""
    with pytest.raises(ConfigError, match="--resume"):
        caviar.sweep(asha.config)


def test_interrupted_sweep_resumes_without_rerunning(ray_session, learnable_root, tmp_path, ray_temp_dir):
    """Ctrl-C mid-sweep, then `--resume`: finished trials are not re-run, the rest complete, no epoch twice."""
    tree = small_config(learnable_root, tmp_path / "results", "resumable", scheduler="random", num_samples=4,
                        max_epochs=3, max_concurrent=1)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(tree))
    folder = tmp_path / "results" / "resumable"
    code, output = interrupt_sweep(tmp_path / "exp.yaml", ray_temp_dir,
                                   until=lambda: any(len(epochs_reported(t)) == 3 for t in folder.glob("trial_*")))
    assert "caviar sweep --resume" in output, output
    assert code == 130
    before = {t.name: epochs_reported(t) for t in folder.glob("trial_*")}
    finished_before = [name for name, epochs in before.items() if epochs == [1, 2, 3]]
    assert finished_before and len(finished_before) < 4

    result = caviar.sweep(resume=folder)
    assert list(result.trials["status"]) == ["completed"] * 4
    for trial_dir in folder.glob("trial_*"):
        assert epochs_reported(trial_dir) == [1, 2, 3], trial_dir.name  # no gap, no repeat
    for name in finished_before:
        assert epochs_reported(folder / name) == before[name]


def test_resume_of_a_folder_without_sweep_is_an_error(tmp_path):
    """--resume on a folder that no sweep wrote names the problem."""
    with pytest.raises(ConfigError, match="no caviar.yaml"):
        caviar.sweep(resume=tmp_path)


class _StopBeforeTraining(Exception):
    pass


def test_driver_drops_its_copy_of_the_data(ray_session, learnable_root, tmp_path, monkeypatch):
    """Once the dataset is in Ray's object store, the driver keeps no copy of it during the sweep."""
    import gc
    import weakref

    from caviar.search import tuning
    from caviar.sweeps import experiment

    loaded = []
    real_prepare = experiment.data_for

    def spy(*args, **kwargs):
        data = real_prepare(*args, **kwargs)
        loaded.append(weakref.ref(data.train_x))
        return data

    alive_during_fit = []

    def fit(self):
        gc.collect()
        alive_during_fit.append(loaded[0]() is not None)
        raise _StopBeforeTraining

    monkeypatch.setattr(experiment, "data_for", spy)
    monkeypatch.setattr(tuning.tune.Tuner, "fit", fit)
    with pytest.raises(_StopBeforeTraining):
        caviar.sweep(load_config(small_config(learnable_root, tmp_path, "dropped")))
    assert alive_during_fit == [False]


def test_snapshot_period_grows_with_the_trials_and_the_user_setting_wins(monkeypatch):
    """While caviar's sweeps run, Ray snapshots its state every max(10 s, 0.01 s x trials) (bytes
    written in proportion to the trials, not their square) and its frequent-snapshot warning is off;
    the environment is restored afterwards, and values the user set are left alone."""
    from caviar.search import tuning

    seen = []

    class Tuner:
        def fit(self):
            seen.append((os.environ.get(tuning.SNAPSHOT_WARNING), os.environ.get(tuning.SNAPSHOT_PERIOD)))

    for key in (tuning.SNAPSHOT_WARNING, tuning.SNAPSHOT_PERIOD):
        monkeypatch.delenv(key, raising=False)
    tuning.fit(Tuner(), 64)
    tuning.fit(Tuner(), 10_000)
    assert seen == [("0", "10"), ("0", "100")]
    assert tuning.SNAPSHOT_WARNING not in os.environ and tuning.SNAPSHOT_PERIOD not in os.environ
    monkeypatch.setenv(tuning.SNAPSHOT_WARNING, "12")
    monkeypatch.setenv(tuning.SNAPSHOT_PERIOD, "3")
    tuning.fit(Tuner(), 10_000)
    assert seen[-1] == ("12", "3") and os.environ[tuning.SNAPSHOT_PERIOD] == "3"


def test_rays_warning_about_unstarted_trials_is_dropped_during_fit_but_other_failures_show(caplog):
    """Trials a deadline left unstarted have no result files: Ray's ResultGrid warns about each at
    the end of fit, though the leaderboard lists them as not-started. That warning is dropped; one
    naming any other failure to read a trial still shows."""
    import logging

    from caviar.search import tuning

    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    missing = "- train_trial_1: FileNotFoundError('Could not fetch metrics for train_trial_1')"
    broken = "- train_trial_2: JSONDecodeError('Expecting value')"

    class Tuner:
        def fit(self):
            log.warning(f"Failed to fetch metrics for 1 trial(s):\n{missing}")
            log.warning(f"Failed to fetch metrics for 2 trial(s):\n{missing}\n{broken}")

    with caplog.at_level(logging.WARNING, logger=log.name):
        tuning.fit(Tuner(), 8)
        log.warning(f"Failed to fetch metrics for 1 trial(s):\n{missing}")  # outside caviar's fit: left alone
    shown = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert len(shown) == 2 and "JSONDecodeError" in shown[0] and "JSONDecodeError" not in shown[1]


def test_free_slots_counts_what_can_start_now(ray_session):
    """A stage that trains chosen configs is sized for the trial slots free when it starts: a CPU
    held elsewhere (another job, or one Ray did not give back) leaves one of the two."""
    from caviar.search import connect

    config = load_config(None, ["resources.cpus_per_trial=1", "resources.gpus_per_trial=0"])
    resources = {"cpu": 1.0, "gpu": 0.0}
    assert connect.cluster_slots(config, resources) == 2

    @ray_session.remote(num_cpus=1)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    try:
        ray_session.get(holder.ready.remote())
        # At most one: Ray 2.60 sometimes keeps an earlier test's trial CPU for a while (the fault
        # free_slots guards against), and gives it back at a moment no test can choose, so the
        # session's shared cluster may have 0 or 1 slot free besides the holder's CPU.
        assert connect.free_slots(config, resources, expected=2, wait_s=1.0) <= 1
        assert connect.cluster_slots(config, resources) == 2  # the cluster's size is unchanged
    finally:
        ray_session.kill(holder)


def test_free_slots_waits_for_the_expected_slots_then_settles_for_fewer(monkeypatch):
    """free_slots waits (up to wait_s) for a CPU Ray has yet to give back, and after that counts
    what is free."""
    from caviar.search import connect

    config = load_config(None, ["resources.cpus_per_trial=1", "resources.gpus_per_trial=0"])
    freed = iter([{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 2.0}])
    monkeypatch.setattr(connect.ray, "available_resources", lambda: next(freed))
    monkeypatch.setattr(connect.time, "sleep", lambda s: None)
    assert connect.free_slots(config, {"cpu": 1.0, "gpu": 0.0}, expected=2, wait_s=60.0) == 2
    monkeypatch.setattr(connect.ray, "available_resources", lambda: {"CPU": 1.0})
    assert connect.free_slots(config, {"cpu": 1.0, "gpu": 0.0}, expected=2, wait_s=0.0) == 1


def test_free_slots_says_none_when_none_is_free(monkeypatch):
    """With every CPU held, free_slots reports 0 (it used to report 1, so the warning under-said
    how full the cluster was); the cluster's own size stays at least one slot."""
    from caviar.search import connect

    config = load_config(None, ["resources.cpus_per_trial=1", "resources.gpus_per_trial=0"])
    monkeypatch.setattr(connect.ray, "available_resources", lambda: {"CPU": 0.0})
    assert connect.free_slots(config, {"cpu": 1.0, "gpu": 0.0}, expected=2, wait_s=0.0) == 0
    assert connect.cluster_slots(config, {"cpu": 1.0, "gpu": 0.0}, pool={"CPU": 0.5}) == 1


def test_resources_no_node_has_are_refused_before_anything_runs(ray_session, learnable_root, tmp_path):
    """cpus_per_trial above what any node has (or can add): a clear error naming the key, no hang,
    and no experiment folder left behind."""
    tree = small_config(learnable_root, tmp_path, "too-big")
    tree["resources"]["cpus_per_trial"] = 64
    with pytest.raises(ConfigError, match="resources.cpus_per_trial is 64 but no node .* more than 2"):
        caviar.sweep(load_config(tree))
    assert not (tmp_path / "too-big" / "caviar.yaml").exists()


def test_a_failed_start_leaves_no_sweep_behind(ray_session, learnable_root, tmp_path):
    """A config the scheduler refuses (PBT with TPE) fails before caviar.yaml is written, so the same
    name runs once the config is fixed (no "already holds a sweep" dead end)."""
    tree = small_config(learnable_root, tmp_path, "fixable", scheduler="pbt", algorithm="tpe", num_samples=2,
                        max_epochs=1)
    with pytest.raises(ConfigError, match="pbt .* use search.algorithm: random"):
        caviar.sweep(load_config(tree))
    assert not (tmp_path / "fixable" / "caviar.yaml").exists()
    tree["search"] |= {"scheduler": "random", "algorithm": "random"}
    assert caviar.sweep(load_config(tree)).best is not None


def test_labels_beyond_num_classes_are_refused(learnable_root, tmp_path):
    """model.num_classes below the data's largest label: refused before Ray starts, with the fix."""
    tree = small_config(learnable_root, tmp_path, "few-classes")
    tree["model"] = {"num_classes": 5}
    with pytest.raises(ConfigError, match="model.num_classes is 5 but .* labels up to 9; set --set model.num_classes=10"):
        caviar.sweep(load_config(tree))
