"""caviar.config.shipped and caviar.config.catalog: shipped experiments by name from any folder, and what each costs."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from caviar import cli
from caviar.config import catalog, shipped
from caviar.config.loading import load_config
from caviar.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
NAMES = ["asha", "cpu-budget", "default", "random", "smoke", "staged"]


def test_names_and_one_copy_of_each_file():
    """The shipped names are the package's YAML files; the repository's experiments/ is that folder."""
    assert shipped.names() == NAMES
    assert shipped.FOLDER == REPO / "caviar" / "experiments"
    assert (REPO / "experiments").resolve() == shipped.FOLDER.resolve()


@pytest.mark.parametrize("argument", ["smoke", "smoke.yaml"])
def test_a_name_works_from_any_folder(argument, tmp_path, monkeypatch, capsys):
    """`caviar config smoke` in a folder with no experiments/ reads the shipped file."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["config", argument, "--set", "search.num_samples=3"]) == 0
    out = capsys.readouterr().out
    assert "name: cifar10-smoke" in out and "num_samples: 3" in out
    assert load_config("staged").stages[2].epochs == 20
    assert load_config("cpu-budget").budget == "30m"


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    """A path is read as given: a local smoke.yaml, and experiments/smoke.yaml from the repository."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke.yaml").write_text("name: mine\n")
    assert load_config("smoke.yaml").name == "mine"
    assert load_config("smoke").name == "cifar10-smoke"  # no file called `smoke` here
    assert load_config(REPO / "experiments" / "smoke.yaml").name == "cifar10-smoke"


def test_unknown_name_is_one_line_listing_the_names_exit_2(tmp_path, monkeypatch, capsys):
    """Neither a file nor a shipped name: exit 2 before anything runs, one line naming every shipped one."""
    import caviar.sweeps.experiment
    import caviar.training.data

    # both names: caviar.sweeps.experiment binds its own at import, and an import here (first in a run
    # that starts with this file) would otherwise keep the failing stand-in for later tests
    for module, name in ((caviar.training.data, "prepare_data"), (caviar.sweeps.experiment, "data_for")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("read data"))
    assert cli.main(["sweep", "smok", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "smok does not exist and is not a shipped experiment" in err
    assert all(name in err for name in NAMES)
    with pytest.raises(ConfigError, match="shipped: asha, cpu-budget"):
        load_config("nope/smoke.yaml")
    assert not list(tmp_path.iterdir())


def test_asha_trial_epochs_follow_the_rungs():
    """64 trials, rungs 1, 3, 9, 20 at eta 3: 64 + 64/3*2 + 64/9*6 + 64/27*11 = 175 (README's figure)."""
    assert catalog.asha_trial_epochs(64, 20, 1, 3) == pytest.approx(64 + 64 / 3 * 2 + 64 / 9 * 6 + 64 / 27 * 11)
    assert catalog.asha_trial_epochs(4, 1, 1, 3) == 4


def test_experiments_lists_each_with_trials_epochs_cost_and_result(capsys):
    """`caviar experiments`: a line per shipped experiment; counts come from the files."""
    assert cli.main(["experiments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in NAMES}
    assert sorted(rows) == NAMES
    assert "4 trials x 2 " in rows["smoke"] and "104 trials x 1 / 5 / 20" in rows["staged"]
    assert "planned to its budget: 30m" in rows["cpu-budget"] and "% at 30 min" in rows["cpu-budget"]
    for name in ("default", "asha", "random", "staged", "smoke"):
        assert "CPU ~" in rows[name] and "one GPU ~" in rows[name]
    default, random = catalog.entry("default"), catalog.entry("random")
    assert default.cpu_core_hours < random.cpu_core_hours  # ASHA stops most trials early
    assert catalog.entry("smoke").passes < 1 < default.passes


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building a wheel needs setuptools")
def test_the_wheel_ships_the_experiments(tmp_path):
    """`pip install .` installs the YAML files inside the package (package data)."""
    source = tmp_path / "src"  # a copy: a build writes build/ and egg-info beside the sources
    shutil.copytree(REPO / "caviar", source / "caviar", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = tmp_path.glob("caviar-*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    assert {f"caviar/experiments/{name}.yaml" for name in NAMES} <= files
    assert "caviar/config/shipped.py" in files


def test_what_an_experiment_reached_is_read_from_the_results_it_cites(tmp_path, monkeypatch):
    """The catalog's figure is the mean of the cited runs' ensembles with their range; a run of
    another version of the experiment file is marked stale; no results folder (a wheel install)
    points at the docs instead of a figure."""
    import json

    def run(name, acc, sha, textbook=None):
        baselines = {"textbook": {"ensemble_acc": textbook}} if textbook else {}
        (tmp_path / name).write_text(json.dumps({
            "settings": {"data": "fashion-mnist", "experiment_fingerprint": {"budget": sha} if sha else {}},
            "machine": {"nproc": 2}, "results": {"flows": {"budget": {"ensemble_acc": acc}}, "baselines": baselines}}))

    current = catalog.fingerprint(shipped.path("cpu-budget"))
    monkeypatch.setitem(catalog.EVIDENCE, "cpu-budget", [("30 min", ("a.json", "b.json"), "budget"),
                                                          ("2 h", ("c.json",), "budget")])
    run("a.json", 0.9412, current)
    run("b.json", 0.9438, current, textbook=0.9455)
    run("c.json", 0.95, "another version")
    text = catalog.reached("cpu-budget", tmp_path)
    assert "94.2% at 30 min (mean of 2 runs, 94.1-94.4)" in text and "fashion-mnist on 2 cores" in text
    assert "95.0% at 2 h [stale: 1 of 1 run(s)" in text
    assert "30 min (mean of 2 runs, 94.1-94.4), against 94.5% for its first search point trained the whole 30 min " \
        "(1 run);" in text  # the fresh runs are not marked stale; the single recipe beside them is named
    assert "docs/benchmarks.md" in catalog.reached("cpu-budget", tmp_path / "absent")
    (tmp_path / "c.json").write_text("{not json")  # a damaged results file is left out, not a crash
    assert "at 2 h" not in catalog.reached("cpu-budget", tmp_path)
    (tmp_path / "c.json").write_text('{"results": {"flows": {}}}')  # one without the figure too
    assert "at 2 h" not in catalog.reached("cpu-budget", tmp_path) and "94.2% at 30 min" in catalog.reached("cpu-budget", tmp_path)
    assert catalog.reached("random", tmp_path) is None


def test_an_experiments_fingerprint_follows_what_it_asks_for(tmp_path):
    """Comments and a documented `key: null` (or its absence) leave the fingerprint as it was; a value
    that changes what runs changes it."""
    import yaml

    source = shipped.path("cpu-budget").read_text()
    same = tmp_path / "same.yaml"
    lines = source.splitlines(keepends=True)
    same.write_text("# another comment\n" + "".join(line for line in lines if not line.startswith("  whiten: null")))
    assert len(same.read_text().splitlines()) == len(lines)  # one line less, one comment more
    assert catalog.fingerprint(same) == catalog.fingerprint(shipped.path("cpu-budget"))
    tree = yaml.safe_load(source)
    tree["search"]["points"][0]["lr"] = 0.05
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tree))
    assert catalog.fingerprint(other) != catalog.fingerprint(shipped.path("cpu-budget"))
