"""caviar.ensembles.ensembler end to end after a small real sweep: members, selection, evaluation, saving."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from ray import tune
from test_sweep import small_config

import caviar
from caviar.config.loading import load_config
from caviar.ensembles.ensembler import Ensemble
from caviar.ensembles.members import Member, load_models
from caviar.ensembles.selection import SELECTORS
from caviar.errors import ConfigError
from caviar.training.data import load_test_set


@pytest.fixture(scope="module")
def experiment(ray_session, learnable_root, tmp_path_factory):
    """4 trials that run 6 epochs each, averaging weights over epochs 5-6, keeping 3 checkpoints. (The
    models improve fast up to epoch 5: an average from epoch 4 on lagged every trial's best
    checkpoint, by 0.4-2.2 points; from epoch 5, the best trial's average is at least its best.)"""
    tree = small_config(learnable_root, tmp_path_factory.mktemp("ens"), "ens", scheduler="random", num_samples=4,
                        max_epochs=6)
    tree["space"] |= {"lr": [1e-3, 3e-3, 6e-3], "conv_width": [12, 16], "dropout": [0.0, 0.3]}
    tree["checkpoint"]["keep"] = 3
    tree["average"] = {"method": "swa", "start": 0.75}
    return caviar.sweep(load_config(tree)).path


@pytest.fixture(scope="module")
def result(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens-out")
    return caviar.ensemble(experiment, top_k=3, seeds=2, snapshots=1, out=out), out


def test_four_member_kinds_present(result, experiment):
    """Top-k, averages, seed re-runs and snapshots are each present when asked for; an average is
    a candidate exactly when it scored at least its own trial's best checkpoint on validation."""
    from caviar.results.folder import ExperimentFolder

    res, _ = result
    counts = res.members["kind"].value_counts().to_dict()
    assert {k: n for k, n in counts.items() if k != "average"} == {"top": 3, "seed": 2, "snapshot": 1}
    top3 = [name.split("-", 1)[1] for name in res.members.loc[res.members["kind"] == "top", "name"]]
    trials = {t.trial_id: t for t in ExperimentFolder(experiment).trials()}
    holds = {t for t in top3 if trials[t].history["avg_val_acc"].iloc[-1] >= trials[t].checkpoints[0][1]["val_acc"]}
    averaged = {name.split("-", 1)[1] for name in res.members.loc[res.members["kind"] == "average", "name"]}
    assert averaged == holds and counts.get("average", 0) >= 1
    assert set(res.by_kind) == {"top", "average", "seed", "snapshot", "all"}
    seed_rows = res.members[res.members["kind"] == "seed"]
    assert seed_rows["test_acc"].min() > 0.3  # retrained from scratch for the full budget, learned


def test_greedy_ensemble_beats_members_on_validation(result):
    """The ensemble's validation NLL is no worse than the best member's."""
    res, _ = result
    assert res.info["val_nll"] <= res.members["val_nll"].min() + 1e-9
    assert abs(res.members["weight"].sum() - 1) < 1e-9


def test_disagreeing_members_ensemble_is_at_least_as_accurate(result):
    """Members disagree on some test images, and the ensemble is at least as accurate as the best single one."""
    res, _ = result
    images, labels = load_test_set(res.info["provenance"]["config"]["data"]["root"], download=False)
    preds = res.ensemble.member_probs(images).argmax(-1)
    assert (preds != preds[0]).any(axis=0).mean() > 0.05  # they disagree
    assert res.accuracy >= res.info["best_member"]["accuracy"]
    assert res.gain == pytest.approx(res.accuracy - res.info["best_member"]["accuracy"])
    assert 0 <= res.ece <= 1 and res.nll > 0


def test_members_trained_with_flips_are_averaged_over_mirror_images(result):
    """The fixture's members trained with random flips (data.augment, the default): each member's
    probabilities are the mean over the image and its mirror image, and the saved ensemble keeps that."""
    from caviar.training.train import predict_logits

    res, out = result
    assert res.ensemble.flip and res.info["settings"]["flip"] is True
    assert json.loads((out / "ensemble.json").read_text())["flip"] is True and Ensemble.load(out).flip
    images, _ = load_test_set(res.info["provenance"]["config"]["data"]["root"], download=False)
    x = torch.from_numpy(images[:64])
    model = res.ensemble.models[0]
    stats = (res.ensemble.mean, res.ensemble.std)  # the dataset's own, as the members trained
    plain, mirrored = (torch.softmax(predict_logits(model, v, stats=stats), 1).double().numpy() for v in (x, x.flip(3)))
    assert np.abs(plain - mirrored).max() > 1e-3  # the mirror image is a different view
    np.testing.assert_allclose(res.ensemble.member_probs(x)[0], (plain + mirrored) / 2, atol=1e-6)


@pytest.mark.parametrize("flip, overrides", [(False, []), (None, ["data.augment=false"])])
def test_mirror_averaging_off_when_asked_or_members_trained_without_flips(experiment, tmp_path, flip, overrides):
    """--no-flip, or members that never saw a mirror image (data.augment false): one view each."""
    from caviar.training.train import predict_logits

    res = caviar.ensemble(experiment, top_k=1, seeds=0, average=False, flip=flip, overrides=overrides,
                          out=tmp_path / "ens")
    assert not res.ensemble.flip and res.info["settings"]["flip"] is False
    images, _ = load_test_set(res.info["provenance"]["config"]["data"]["root"], download=False)
    x = torch.from_numpy(images[:64])
    plain = torch.softmax(predict_logits(res.ensemble.models[0], x, stats=(res.ensemble.mean, res.ensemble.std)),
                          1).double().numpy()
    np.testing.assert_allclose(res.ensemble.member_probs(x)[0], plain, atol=1e-6)


def test_a_budget_too_short_for_the_mirror_view_leaves_it_out(experiment, tmp_path):
    """Under --budget the mirror view (twice the evaluation) is dropped, with a warning, when it
    would not fit; --flip keeps it whatever the budget."""
    with pytest.warns(UserWarning, match="one view only"):
        res = caviar.ensemble(experiment, top_k=1, seeds=0, average=False, budget=0.001, out=tmp_path / "a")
    assert not res.ensemble.flip and res.info["settings"]["flip"] is False
    res = caviar.ensemble(experiment, top_k=1, seeds=0, average=False, budget=0.001, flip=True, out=tmp_path / "b")
    assert res.ensemble.flip
    res = caviar.ensemble(experiment, top_k=1, seeds=0, average=False, budget="10m", out=tmp_path / "c")
    assert res.ensemble.flip  # ample time: the default keeps it


def test_outputs_written(result):
    """ensemble.json (figures, members with paths and weights, provenance), members.csv and the plot."""
    res, out = result
    document = json.loads((out / "ensemble.json").read_text())
    assert document["accuracy"] == res.accuracy and len(document["members"]) == len(res.members)
    assert {"name", "kind", "weight", "checkpoint", "accuracy"} <= set(document["members"][0])
    assert set(document["provenance"]["versions"]) >= {"caviar", "torch", "ray"}
    assert document["experiment"].endswith("ens")
    assert (out / "members.csv").read_text().count("\n") == len(res.members) + 1
    assert (out / "ensemble.png").stat().st_size > 1000


def test_saved_ensemble_predicts_identically(result):
    """Ensemble.load(out).predict == result.predict (to float64 rounding: the saved ensemble keeps only
    members with a weight, so the weighted sum adds in another order), for uint8 and 0..1 float input."""
    res, out = result
    images, _ = load_test_set(res.info["provenance"]["config"]["data"]["root"], download=False)
    expected = res.predict(images[:200])
    reloaded = caviar.Ensemble.load(out)
    np.testing.assert_allclose(reloaded.predict(images[:200]), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(reloaded.predict(images[:200].astype(np.float32) / 255), expected, atol=1e-6)
    assert expected.shape == (200, 10) and np.allclose(expected.sum(1), 1)
    with pytest.raises(ValueError, match="NCHW"):
        reloaded.predict(np.zeros((2, 32, 32, 3), np.uint8))


@pytest.fixture
def events(monkeypatch) -> list[str]:
    """What the ensemble does, in order: each selection, and each batch file read (watched where
    files are read, caviar.training.data.read_batch_file, not at one loader)."""
    import caviar.training.data as data_module

    seen: list[str] = []
    greedy = SELECTORS["greedy"]
    monkeypatch.setitem(SELECTORS, "greedy", lambda p, y: seen.append("select") or greedy(p, y))
    real_read = data_module.read_batch_file
    monkeypatch.setattr(data_module, "read_batch_file", lambda path: seen.append(Path(path).name) or real_read(path))
    return seen


def test_test_set_is_read_only_after_selection(experiment, events, tmp_path):
    """Every selection (overall and per kind) happens before the test_batch file is even opened."""
    caviar.ensemble(experiment, top_k=2, seeds=0, out=tmp_path)
    assert events.count("test_batch") == 1 and events[-1] == "test_batch", events
    assert events.count("select") >= 2 and "data_batch_1" in events


def test_under_a_budget_the_test_set_is_read_only_after_selection(experiment, events, monkeypatch, tmp_path):
    """With --budget, the check whether the mirror view fits (which counts the test images) opens no
    test_batch: the test set is read once, after every selection."""
    from caviar.ensembles import ensembler

    real_fits = ensembler.mirror_fits
    monkeypatch.setattr(ensembler, "mirror_fits", lambda *a, **k: events.append("mirror check") or real_fits(*a, **k))
    res = caviar.ensemble(experiment, top_k=2, seeds=0, budget="10m", out=tmp_path)
    assert events.count("mirror check") == 1 and res.ensemble.flip  # the budget's path ran, and kept the view
    assert events.count("test_batch") == 1 and events[-1] == "test_batch", events
    assert events.index("mirror check") < events.index("select")


@pytest.mark.parametrize("translate, fits", [(False, True), (True, False)])
def test_the_budget_counts_the_moved_views_too(monkeypatch, translate, fits):
    """One view takes 1 s (a fake clock): over the mirror views that is 2 s, which fits in 4; with
    --translate each view is also moved both ways, 6 s, which does not (and the view is dropped)."""
    from types import SimpleNamespace

    from caviar.ensembles import ensembler

    ticks = iter([0.0, 1.0])
    monkeypatch.setattr(ensembler, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    timed = []
    ens = SimpleNamespace(translate=translate, member_probs=lambda images, **views: timed.append(views))
    with pytest.warns(UserWarning, match="one view only") if not fits else contextlib.nullcontext():
        assert ensembler.mirror_fits(ens, np.zeros((256, 3, 32, 32), np.uint8), 256, seconds=4.0) is fits
    assert timed == [{"flip": False, "translate": False}]  # timed on the plain view alone


def test_the_test_images_are_counted_without_reading_them(tmp_path):
    """The budget's count of test images comes from test_batch's size: at least the true count,
    within 2%, whether data.root is the batches folder or holds it; 0 when there is none."""
    from caviar.training.data import estimated_test_images
    from caviar.training.fixture import write_cifar_fixture

    root = write_cifar_fixture(tmp_path / "fx", train_size=300, test_size=500)
    folder = next(root.rglob("test_batch")).parent
    for where in (root, folder):
        assert 500 <= estimated_test_images(where) <= 510
    assert estimated_test_images(tmp_path / "nothing") == 0


def test_a_sweep_never_reads_the_test_set(tmp_path):
    """prepare_data (what every sweep and trial loads) opens no test_batch, and works without one."""
    import shutil

    from caviar.training.data import prepare_data
    from caviar.training.fixture import write_cifar_fixture

    root = write_cifar_fixture(tmp_path / "fx", train_size=300, test_size=20)
    folder = next(root.rglob("test_batch")).parent
    shutil.move(folder / "test_batch", tmp_path / "elsewhere")
    data = prepare_data(root, val_size=50, download=False)
    assert len(data.train_y) == 250 and len(data.val_y) == 50


def test_rerun_reuses_finished_seeds(experiment, result, tmp_path):
    """A second `caviar ensemble` with the same seeds trains nothing new."""
    folder = Path(experiment)
    before = sorted(p.name for p in folder.glob("seeds-*/trial_*"))
    again = caviar.ensemble(experiment, top_k=1, seeds=2, average=False, out=tmp_path)
    assert sorted(p.name for p in folder.glob("seeds-*/trial_*")) == before and len(before) == 2
    assert (again.members["kind"] == "seed").sum() == 2


def test_bad_checkpoints_are_skipped_with_a_warning(result, tmp_path):
    """A corrupt checkpoint, or one of another family, is skipped with a warning naming it."""
    res, _ = result
    good = Member("good", "top", "t0", tune.Checkpoint.from_directory(str(_checkpoint_dir(res))), "model", 1, 0.5)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "epoch=001-val_acc=0.5000.pt").write_bytes(b"not a checkpoint")
    bad = Member("bad", "top", "t1", tune.Checkpoint.from_directory(str(corrupt)), "model", 1, 0.5)
    with pytest.warns(UserWarning, match="skipping ensemble member bad: checkpoint .*corrupt"):
        loaded = load_models([good, bad], "convnet", 10)
    assert [m.name for m, _, _ in loaded] == ["good"]
    with pytest.warns(UserWarning, match="it is a convnet with 10 classes, but this experiment trains resnet"):
        assert load_models([good], "resnet", 10) == []


def _checkpoint_dir(res) -> Path:
    return Path(res.members[res.members["kind"] == "top"].iloc[0]["checkpoint"])


def test_not_an_experiment_is_a_clear_error(tmp_path):
    """A folder without caviar.yaml, or a bad option, gets a ConfigError naming it."""
    with pytest.raises(ConfigError, match="not a caviar experiment folder"):
        caviar.ensemble(tmp_path)
    with pytest.raises(ConfigError, match="--select"):
        caviar.ensemble(tmp_path, select="best")


def test_real_cli(experiment, tmp_path):
    """`caviar ensemble EXP --top-k 2 --seeds 0 --no-average --out DIR` prints the table and writes the folder."""
    ran = subprocess.run([sys.executable, "-m", "caviar", "ensemble", experiment, "--top-k", "2", "--seeds", "0",
                          "--no-average", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "ensemble (test): acc" in ran.stdout and "top only" in ran.stdout
    assert json.loads((tmp_path / "ensemble.json").read_text())["settings"]["average"] is False


def test_no_averaged_weights_is_said(recwarn):
    """Asking for averages from trials that never averaged (e.g. SWA over 1 epoch) warns and names the fix."""
    from types import SimpleNamespace

    import pandas as pd

    from caviar.ensembles.members import average_members

    never = SimpleNamespace(trial_id="t1", latest=object(), history=pd.DataFrame([{"epoch": 2, "val_acc": 0.8}]))
    assert average_members([never], top_k=3) == []
    assert any("average.start" in str(w.message) for w in recwarn.list)
    averaged = SimpleNamespace(trial_id="t2", latest=object(), checkpoints=[(object(), {"val_acc": 0.8})],
                               history=pd.DataFrame([{"epoch": 2, "val_acc": 0.8, "avg_val_acc": 0.81}]))
    recwarn.clear()
    assert [m.name for m in average_members([averaged, never], top_k=3)] == ["avg-t2"]
    assert not recwarn.list


def test_an_average_below_its_own_trials_best_checkpoint_is_left_out(recwarn):
    """A weight average that scores below the best checkpoint of the trial it averages (on
    validation) is not a candidate, and the warning names it with both figures; one that ties or
    beats it stays."""
    from types import SimpleNamespace

    import pandas as pd

    from caviar.ensembles.members import average_members

    def trial(name, best, averaged):
        return SimpleNamespace(trial_id=name, latest=object(), checkpoints=[(object(), {"val_acc": best})],
                               history=pd.DataFrame([{"epoch": 9, "val_acc": best - 0.01, "avg_val_acc": averaged}]))

    kept = average_members([trial("good", 0.93, 0.94), trial("bad", 0.96, 0.94), trial("tie", 0.9, 0.9)], top_k=3)
    assert [m.name for m in kept] == ["avg-good", "avg-tie"]
    messages = [str(w.message) for w in recwarn.list]
    assert len(messages) == 1 and "avg-bad (validation 0.9400 < 0.9600)" in messages[0]


class _Payload:
    """Unpickling this runs code: it writes a marker file (what a planted payload would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('planted code ran')",))


def test_planted_payload_in_the_experiment_state_never_runs(experiment, tmp_path):
    """A pickle planted in every encoded field of experiment_state-*.json (where Ray's own reader
    unpickles) is never decoded: the leaderboard, the report's reader and `caviar ensemble` read
    the copy, and the marker file is never written."""
    import pickle
    import re
    import shutil

    from caviar.search.reader import read_trials

    copy = tmp_path / "planted"
    shutil.copytree(experiment, copy)
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Payload(str(marker))).hex()
    planted = 0
    for state in copy.glob("experiment_state-*.json"):
        text, n = re.subn(r'\\"value\\": \\"[0-9a-f]+\\"', f'\\\\"value\\\\": \\\\"{payload}\\\\"', state.read_text())
        text, m = re.subn(r'"(_default_placement_group_factory|results|extra_arg)": "[0-9a-f]+"',
                          lambda match: f'"{match.group(1)}": "{payload}"', text)
        state.write_text(text)
        planted += n + m
    assert planted > 0
    assert len(read_trials(str(copy))) == 4
    caviar.ensemble(str(copy), top_k=2, seeds=0, out=tmp_path / "out")
    assert not marker.exists()


def test_a_finished_sweep_is_read_from_its_best_trials_only(tmp_path, monkeypatch):
    """With thousands of trials, the ensemble reads only the best few trial folders named by the
    finished sweep's leaderboard.csv (diverged ones left out); without a summary (still running) or
    with a damaged leaderboard it reads every folder."""
    import types

    import caviar.results.folder
    from caviar.ensembles import ensembler

    rows = [{"trial_id": f"t{i:03d}", "status": "diverged" if i == 0 else "completed", "best_val_acc": 1 - i / 100}
            for i in range(100)]
    pd.DataFrame(rows).to_csv(tmp_path / "leaderboard.csv", index=False)
    (tmp_path / "summary.json").write_text("{}")
    asked = []

    def read_trials(location, only=None):
        asked.append(only)
        names = only if only is not None else {f"trial_t{i:03d}" for i in range(100)}
        return [types.SimpleNamespace(trial_id=n.removeprefix("trial_"), checkpoints=[(None, {"val_acc": 0.5})])
                for n in sorted(names)]

    monkeypatch.setattr(caviar.results.folder, "read_trials", read_trials)  # what ExperimentFolder.trials reads
    assert len(ensembler._read_best_trials(str(tmp_path), top_k=5)) == 25
    assert asked[-1] == {f"trial_t{i:03d}" for i in range(1, 26)}  # the 25 best, the diverged one left out
    (tmp_path / "leaderboard.csv").write_text("not,a\nleaderboard")
    assert len(ensembler._read_best_trials(str(tmp_path), top_k=5)) == 100 and asked[-1] is None
    pd.DataFrame(rows).to_csv(tmp_path / "leaderboard.csv", index=False)
    (tmp_path / "summary.json").unlink()
    assert len(ensembler._read_best_trials(str(tmp_path), top_k=5)) == 100 and asked[-1] is None


def test_seed_reruns_train_the_length_the_winner_ran_to():
    """A winner that refit its epochs to a deadline (it reported max_epochs 7 of the 10 it was
    given) is re-run for 7 epochs, and the budget's time check counts 7."""
    from caviar.config.loading import load_config
    from caviar.ensembles.ensembler import rerun_hparams, seeds_that_fit
    from caviar.search.reader import TrialRecord

    history = pd.DataFrame({"epoch": [1, 2, 3], "max_epochs": [10, 7, 7], "time_this_iter_s": [10.0] * 3})
    best = TrialRecord(trial_id="a", ray_status="TERMINATED", hparams={"lr": 0.1, "seed": 5, "max_epochs": 10},
                       history=history, path="", retries=0, checkpoints=[], latest=None)
    config = load_config(None, ["search.max_epochs=20", "resources.cpus_per_trial=1"])
    assert rerun_hparams(best, config) == {"lr": 0.1, "max_epochs": 7}
    # On a cluster (address) the re-runs run at once: one takes its epochs x 10 s, which the
    # budget (less its reserve for evaluation) must hold; the sweep's 20 epochs would need 200 s.
    assert seeds_that_fit(best, 7, wanted=2, seconds=60, address="auto", config=config) == 0  # 70 s > 60 s
    assert seeds_that_fit(best, 3, wanted=2, seconds=60, address="auto", config=config) == 2  # 30 s fits
