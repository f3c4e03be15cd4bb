"""Experiment folders you can trust: a resumed folder is the one written, a damaged state is refused
before anything is overwritten, overrides on resume are limited, output folders are checked first,
and the report reads damaged files with a warning (caviar.sweeps.sweeper, caviar.ensembles.ensembler, caviar.results.report)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_sweep import small_config

import caviar
from caviar.config.loading import load_config
from caviar.errors import ConfigError


@pytest.fixture(scope="module")
def finished(ray_session, learnable_root, tmp_path_factory) -> Path:
    """A finished 3-trial sweep (2 epochs each) to copy, damage and resume."""
    tree = small_config(learnable_root, tmp_path_factory.mktemp("folders"), "done", scheduler="random",
                        num_samples=3, max_epochs=2)
    return Path(caviar.sweep(load_config(tree)).path)


def _copy(folder: Path, tmp_path: Path, name: str = "moved") -> Path:
    copy = tmp_path / "elsewhere" / name
    shutil.copytree(folder, copy)
    return copy


def test_resume_writes_the_folder_given_not_the_original(finished, tmp_path):
    """--resume of a copied folder: the copy's leaderboard and summary are (re)written; the
    original's files are untouched."""
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir() if p.is_file()}
    copy = _copy(finished, tmp_path)
    (copy / "leaderboard.csv").unlink()
    (copy / "summary.json").unlink()
    result = caviar.sweep(resume=str(copy))
    assert Path(result.path) == copy and (copy / "leaderboard.csv").exists() and (copy / "summary.json").exists()
    assert len(pd.read_csv(copy / "leaderboard.csv")) == 3
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir() if p.is_file()} == before


def test_damaged_state_is_refused_before_anything_is_overwritten(finished, tmp_path):
    """A truncated experiment_state: --resume refuses (it would restart the sweep from nothing) and
    the leaderboard and summary stay as they were."""
    copy = _copy(finished, tmp_path)
    state = max(copy.glob("experiment_state-*.json"))
    state.write_text(state.read_text()[: len(state.read_text()) // 2])
    kept = {name: (copy / name).read_bytes() for name in ("leaderboard.csv", "summary.json", "caviar.yaml")}
    with pytest.raises(ConfigError, match="experiment_state-\\*.json there is damaged"):
        caviar.sweep(resume=str(copy))
    assert {name: (copy / name).read_bytes() for name in kept} == kept


class _Payload:
    """Unpickling this runs code: it writes a marker file (what a planted payload would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('planted code ran')",))


@pytest.mark.parametrize("target", ["tuner.pkl", "searcher-state-planted.pkl", "experiment_state-9999.json"])
def test_resume_refuses_state_files_caviar_did_not_write(finished, tmp_path, target):
    """A payload put in tuner.pkl, or a new state file Ray would load (a newer experiment state, a
    searcher state): --resume refuses before Ray unpickles anything, naming the file; the code never
    runs. The untouched copy resumes, so the check is what refuses."""
    import pickle

    assert (finished / "caviar-state.json").exists()
    marker = tmp_path / "ran"
    planted = _copy(finished, tmp_path, "planted")
    payload = pickle.dumps(_Payload(str(marker)))
    if target.endswith(".json"):
        state = max(planted.glob("experiment_state-*.json")).read_text()
        (planted / target).write_text(state + " ")  # a "newer" state Ray would load instead
    else:
        (planted / target).write_bytes(payload)
    with pytest.raises(ConfigError, match=f"{target.replace('.', '[.]')} is not what caviar's sweep wrote"):
        caviar.sweep(resume=str(planted))
    assert not marker.exists()
    clean = _copy(finished, tmp_path, "clean")
    assert len(caviar.sweep(resume=str(clean)).trials) == 3
    (clean / "caviar-state.json").unlink()
    with pytest.raises(ConfigError, match="no caviar-state.json there"):
        caviar.sweep(resume=str(clean))


def test_overrides_on_resume_are_limited(finished, tmp_path):
    """What the trials ran with cannot change on resume (named in the error); paths and resources can."""
    copy = _copy(finished, tmp_path)
    with pytest.raises(ConfigError, match="--set search.num_samples: cannot change when resuming"):
        caviar.sweep(resume=str(copy), overrides=["search.num_samples=99"])
    with pytest.raises(ConfigError, match="--set space.lr: cannot change"):
        caviar.sweep(resume=str(copy), overrides=["space.lr=0.1"])
    assert caviar.sweep(resume=str(copy), overrides=["resources.cpus_per_trial=1"]).best is not None


def test_unwritable_storage_is_refused_before_anything_runs(learnable_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    tree = small_config(learnable_root, blocker / "results", "x")
    with pytest.raises(ConfigError, match="storage .*a-file/results is not writable"):
        caviar.sweep(load_config(tree))


def test_ensemble_out_never_deletes_what_it_did_not_write(finished, tmp_path):
    """--out DIR holding someone's members/ (no ensemble.json): refused before any work, nothing deleted."""
    out = tmp_path / "mine"
    (out / "members").mkdir(parents=True)
    (out / "members" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="members/ folder that `caviar ensemble` did not write"):
        caviar.ensemble(str(finished), top_k=1, seeds=0, out=str(out))
    assert (out / "members" / "precious.txt").read_text() == "keep me"
    # a folder caviar ensemble wrote may be written again
    caviar.ensemble(str(finished), top_k=1, seeds=0, average=False, out=str(tmp_path / "ens"))
    caviar.ensemble(str(finished), top_k=2, seeds=0, average=False, out=str(tmp_path / "ens"))
    assert len(list((tmp_path / "ens" / "members").iterdir())) >= 1


def test_report_reads_damaged_files_with_warnings(finished, tmp_path):
    """An empty leaderboard.csv, a corrupt params.json and a half-written checkpoint: the report is
    written, each damaged file named in a warning, the damaged trial left out, the others shown."""
    from caviar.results.report import write_report

    copy = _copy(finished, tmp_path)
    (copy / "leaderboard.csv").write_text("")
    trials = sorted(copy.glob("trial_*"))
    (trials[0] / "params.json").write_text('{"lr": 0.00')
    for checkpoint in sorted(copy.glob("trial_*/checkpoint_*/*.pt")):
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.warns(UserWarning) as caught:
        page = write_report(copy).read_text()
    said = " ".join(str(w.message) for w in caught)
    assert "leaderboard.csv" in said and f"{trials[0]}: its params.json is damaged" in said
    assert "no filters chart" in said and "unreadable" in said
    assert trials[0].name.removeprefix("trial_") not in page
    assert all(t.name.removeprefix("trial_") in page for t in trials[1:])
