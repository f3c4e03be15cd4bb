"""caviar.moved: the module paths from before the layer folders still import, as the same modules;
a sweep folder written by the code before the move resumes with the code after it."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import caviar
from caviar.errors import ConfigError
from caviar.moved import MOVED, MOVED_NAMES, new_name

PREMOVE = Path(__file__).parent / "fixtures" / "premove_sweep" / "premove"


PREMOVE_NAMES = json.loads((Path(__file__).parent / "fixtures" / "premove_names.json").read_text())


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_moved_module_itself(old):
    """`import caviar.space` gives caviar.search.space, the same object (pickles and isinstance agree);
    where names left the module in the move, a stand-in that gives the same objects."""
    moved = importlib.import_module(new_name(f"caviar.{old}"))
    alias = importlib.import_module(f"caviar.{old}")
    if old in MOVED_NAMES:
        public = [name for name in dir(moved) if not name.startswith("_")]
        assert alias is not moved and all(getattr(alias, name) is getattr(moved, name) for name in public)
    else:
        assert alias is moved
    assert moved.__spec__.name == moved.__name__  # the alias did not take over the module's identity


@pytest.mark.parametrize("old", sorted(PREMOVE_NAMES))
def test_every_public_name_of_a_premove_module_resolves_from_its_old_path(old):
    """tests/fixtures/premove_names.json lists what each module defined at 04a5f63, the last commit
    before the layer folders (top-level functions, classes and assignments not starting with _).
    Each still resolves from the old path; names that moved to another module are the objects there."""
    # the moved modules, and caviar.config: one file then, a package now (caviar/config/__init__.py)
    assert set(PREMOVE_NAMES) == set(MOVED) | {"config"}
    module = importlib.import_module(f"caviar.{old}")
    missing = [name for name in PREMOVE_NAMES[old] if not hasattr(module, name)]
    assert not missing, f"caviar.{old} lost {missing}: add them to caviar.moved.MOVED_NAMES"


def test_names_that_moved_between_modules_are_the_objects_where_they_went():
    from caviar.budget import parse_duration as old_parse
    from caviar.cluster import check_cluster_file as old_check
    from caviar.config.durations import parse_duration
    from caviar.data import augment_batch as old_augment
    from caviar.ensembler import PLOT_FILE
    from caviar.layout import ENSEMBLE_PLOT_FILE
    from caviar.search.cluster_files import check_cluster_file
    from caviar.training.augment import augment_batch

    assert (old_parse, old_check, old_augment) == (parse_duration, check_cluster_file, augment_batch)
    assert PLOT_FILE == ENSEMBLE_PLOT_FILE == "ensemble.png" and old_parse("2m") == 120
    import caviar.catalog as old_catalog
    import caviar.experiment as old_experiment

    assert set(old_catalog.REACHED) >= {"cpu-budget", "smoke"} and old_catalog.REACHED is old_catalog.REACHED
    config = SimpleNamespace(model=SimpleNamespace(num_classes=3), data=SimpleNamespace(root="/d"))
    labels = SimpleNamespace(train_y=np.array([0, 1, 2]), val_y=np.array([3]))
    with pytest.raises(ConfigError, match=r"model.num_classes is 3 but /d has labels up to 3; set --set "
                                          r"model.num_classes=4"):
        old_experiment.check_labels(config, labels)
    old_experiment.check_labels(config, SimpleNamespace(train_y=np.array([0, 2]), val_y=np.array([1])))


def test_a_name_that_never_existed_still_fails_to_import():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("caviar.no_such_module")


def test_python_m_with_an_old_path_runs_the_moved_module(tmp_path):
    """`python -m caviar.fixture OUT` (as the README has long said) writes a dataset."""
    done = subprocess.run([sys.executable, "-m", "caviar.fixture", str(tmp_path / "data"), "--train-size", "60",
                           "--test-size", "20"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").is_file()


def test_a_sweep_folder_written_before_the_move_resumes(ray_session, learnable_root, tmp_path):
    """The committed folder (tests/fixtures/premove_sweep: Ray's state pickles caviar.callbacks,
    caviar.schedulers, caviar.space and caviar.tuning objects) was interrupted with 3 of 4 trials
    done; resumed now, the fourth continues from its epoch-1 checkpoint and the others are kept."""
    folder = tmp_path / "premove"
    shutil.copytree(PREMOVE, folder)  # never the committed copy: resuming writes into the folder
    before = {t.name: (t / "progress.csv").read_text() for t in folder.glob("trial_*") if (t / "progress.csv").exists()}

    result = caviar.sweep(resume=folder, overrides=[f"data.root={learnable_root}"], log=lambda line: None)

    assert sorted(result.trials["status"]) == ["completed"] * 4
    unfinished = folder / "trial_eeb09_00003"
    rows = pd.read_csv(unfinished / "progress.csv")
    replayed = rows["replayed"].fillna(False).astype(bool)  # its checkpoint's epoch reported again, not trained
    assert set(rows[replayed]["epoch"]) == {1} and list(rows[~replayed]["epoch"]) == [2, 3]
    for name, text in before.items():
        if name != unfinished.name:
            assert (folder / name / "progress.csv").read_text() == text, f"{name} was trained again"
    assert result.best["best_val_acc"] > 0.3  # the learnable fixture: far above chance (0.1)
