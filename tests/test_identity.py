"""caviar.training.identity: an experiment folder records the data its trials trained on (data.json),
and whatever reads the data again for it refuses other data before any compute; moved or copied
data is the same data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

import caviar
from caviar.config.loading import load_config
from caviar.errors import DataError
from caviar.layout import CONFIG_FILE, DATA_FILE, STAGES_FILE
from caviar.sweeps import experiment as experiment_module
from caviar.training import identity
from caviar.training.data import prepare_data
from caviar.training.fixture import write_cifar_fixture, write_imagefolder_fixture


def _record(root, val_size=20, **kw):
    data = prepare_data(root, val_size=val_size, download=False, **kw)
    config = load_config(None, [f"data.root={root}", f"data.val_size={val_size}", "data.download=false"]
                         + [f"data.{k}={v}" for k, v in kw.items()])
    return identity.record(config, data)


def test_moved_or_copied_data_is_the_same_data(tmp_path):
    """Another root and other file times: no change; the digests are of the images themselves."""
    root = write_cifar_fixture(tmp_path / "a", train_size=200, test_size=20)
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    for file in copy.rglob("*"):
        os.utime(file, (1_000_000, 1_000_000))
    assert identity.changes(_record(root), _record(copy)) == []


def test_one_added_image_is_a_change_in_words(tmp_path):
    """One image added to an image folder, a changed file, another split, other classes: each said."""
    root = write_imagefolder_fixture(tmp_path / "img", train_size=60, test_size=6, classes=3)
    before = _record(root, format="imagefolder")
    first = sorted((root / "train").rglob("*.png"))[0]
    shutil.copy(first, first.with_name("added.png"))
    after = _record(root, format="imagefolder")
    assert identity.changes(before, after) == ["the training images: 60 then, 61 now (files added or removed)"]
    first.with_name("added.png").unlink()
    assert identity.changes(before, _record(root, format="imagefolder")) == []
    assert "the validation split (data.val_size 20 then, 21 now" in identity.changes(
        before, _record(root, val_size=21, format="imagefolder"))[0]
    flipped = dict(before, content="0" * 16)
    assert identity.changes(before, flipped) == ["the training images or their labels (as many as before, but files "
                                                 "were changed)"]
    assert identity.changes(before, dict(before, classes=["x", "y"]))[0].startswith("the classes: 3 then")


def _folder_trained_on(tmp_path, root, name="exp"):
    """An experiment folder as a sweep leaves it at its start: caviar.yaml and data.json."""
    config = load_config(None, [f"data.root={root}", "data.val_size=20", "data.download=false",
                                f"storage={tmp_path / 'runs'}", f"name={name}"])
    data = prepare_data(root, val_size=20, download=False)
    folder = tmp_path / "runs" / name
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config.to_yaml())
    identity.write(str(folder), identity.record(config, data))
    return config, folder


def test_a_resume_on_changed_data_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """--resume with data that gained images: a DataError saying what changed and how to proceed;
    the folder's files are untouched, and Ray is never started."""
    root = write_cifar_fixture(tmp_path / "d", train_size=200, test_size=20)
    config, folder = _folder_trained_on(tmp_path, root)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = write_cifar_fixture(tmp_path / "d2", train_size=210, test_size=20)
    monkeypatch.setattr(experiment_module.connect, "session", lambda *a, **k: pytest.fail("Ray started"))
    changed = config.model_copy(update={"data": config.data.model_copy(update={"root": str(other)})})
    with pytest.raises(DataError, match=r"cannot resume the sweep: the data at .*d2 is not what .*exp trained on "
                                        r".*the training images: 200 then, 210 now .*--set name=<new name>"):
        experiment_module._checked_start(changed, resume=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    experiment_module._checked_start(config, resume=True)  # the same data: accepted


def test_a_new_stage_is_compared_with_the_first_stages_data(tmp_path):
    """A staged run's first stage records its data in the run's folder too; a later stage on other
    data is refused, naming the run's record."""
    root = write_cifar_fixture(tmp_path / "d", train_size=200, test_size=20)
    staged = tmp_path / "runs" / "staged"
    staged.mkdir(parents=True)
    (staged / STAGES_FILE).write_text("{}")
    config = load_config(None, [f"data.root={root}", "data.val_size=20", "data.download=false"])
    data = prepare_data(root, val_size=20, download=False)
    identity.write(str(staged / "stage1-search"), identity.record(config, data))  # (the sweep made the folder)
    assert json.loads((staged / DATA_FILE).read_text())["content"] == data.identity["content"]
    other = write_cifar_fixture(tmp_path / "d2", train_size=190, test_size=20)
    changed = load_config(None, [f"data.root={other}", "data.val_size=20", "data.download=false"])
    with pytest.raises(DataError, match=r"cannot start the stage: .*staged/stage2-train trained on "
                                        r"\(.*staged/data.json\): the training images: 200 then, 190 now"):
        identity.experiment_data(changed, str(staged / "stage2-train"), "start the stage")
    identity.experiment_data(config, str(staged / "stage2-train"), "start the stage")


def test_folders_from_before_data_json_are_not_checked(tmp_path):
    root = write_cifar_fixture(tmp_path / "d", train_size=200, test_size=20)
    config = load_config(None, [f"data.root={root}", "data.val_size=20", "data.download=false"])
    assert identity.recorded(str(tmp_path)) is None
    identity.experiment_data(config, str(tmp_path), "ensemble the experiment")
    (tmp_path / DATA_FILE).write_text("{not json")
    with pytest.raises(DataError, match="data.json is damaged"):
        identity.experiment_data(config, str(tmp_path), "ensemble the experiment")


def test_caviar_ensemble_refuses_changed_data_before_any_work(ray_session, learnable_root, tmp_path):
    """A real sweep writes data.json; `caviar ensemble` pointed at other data exits 2 with the
    message, writes no ensemble, and re-runs no seed."""
    tree_root = tmp_path / "runs"
    config = load_config(None, [f"data.root={learnable_root}", "data.val_size=100", "data.download=false",
                                "data.train_subset=300", f"storage={tree_root}", "name=tiny", "search.num_samples=1",
                                "search.max_epochs=1", "search.scheduler=random", "model.width=0.25",
                                "resources.cpus_per_trial=1"])
    folder = caviar.sweep(config, log=lambda line: None).path
    recorded = json.loads((tree_root / "tiny" / DATA_FILE).read_text())
    assert recorded["images"] == 3000 and recorded["classes"] and len(recorded["content"]) == 16
    other = write_cifar_fixture(tmp_path / "other", train_size=2990, test_size=50)
    ran = subprocess.run([sys.executable, "-m", "caviar", "ensemble", folder, "--seeds", "1", "--set",
                          f"data.root={other}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert "cannot ensemble the experiment" in ran.stderr and "3000 then, 2990 now" in ran.stderr
    assert not (tree_root / "tiny" / "ensemble").exists() and not list((tree_root / "tiny").glob("seeds-*"))
