"""caviar.moved: the module paths from before the layer folders still import, as the same modules;
a sweep folder written by the code before the move resumes with the code after it."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import caviar
from caviar.moved import MOVED, new_name

PREMOVE = Path(__file__).parent / "fixtures" / "premove_sweep" / "premove"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_moved_module_itself(old):
    """`import caviar.space` gives caviar.search.space, the same object (pickles and isinstance agree)."""
    moved = importlib.import_module(new_name(f"caviar.{old}"))
    assert importlib.import_module(f"caviar.{old}") is moved
    assert moved.__spec__.name == moved.__name__  # the alias did not take over the module's identity


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
