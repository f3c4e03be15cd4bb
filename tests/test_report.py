"""caviar.results.report and caviar.training.babysit on a real small experiment: every named chart is drawn, the HTML
loads every image in headless Chromium, the border warning shows, and babysitting changes nothing."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_sweep import SMALL_NET, small_config

import caviar
from caviar import cli
from caviar.config.loading import load_config
from caviar.results.report import write_report
from caviar.training.babysit import Babysitter, read_babysit
from caviar.training.data import prepare_data
from caviar.training.trial import Trial, TrialSettings, data_tensors

CHARTS = ("accuracy", "loss", "hparams", "rungs", "filters", "update_ratio", "ensemble")
ENSEMBLE = {"accuracy": 0.91, "members": [{"name": "a@3", "accuracy": 0.88, "weight": 0.5},
                                           {"name": "b@3", "accuracy": 0.84, "weight": 0.5},
                                           {"name": "c@2", "accuracy": 0.80, "weight": 0.0}]}


@pytest.fixture(scope="module")
def experiment(ray_session, learnable_root, tmp_path_factory) -> Path:
    """8 ASHA trials x 3 epochs with a searched lr, dropout and batch size, plus a hand-written ensemble.json."""
    tree = small_config(learnable_root, tmp_path_factory.mktemp("report"), "reported", num_samples=8, max_epochs=3)
    tree["space"] |= {"lr": {"low": 1e-3, "high": 1e-2, "scale": "log"}, "dropout": {"low": 0.0, "high": 0.3},
                      "batch_size": [32, 64]}
    result = caviar.sweep(load_config(tree))
    folder = Path(result.path)
    (folder / "ensemble").mkdir()
    (folder / "ensemble" / "ensemble.json").write_text(json.dumps(ENSEMBLE))
    return folder


def test_report_has_every_chart(experiment, capsys):
    """`caviar report EXPERIMENT` writes report.html and one PNG per named chart, each shown in the page."""
    assert cli.main(["report", str(experiment)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (experiment / "report.html").read_text()
    for chart in CHARTS:
        png = experiment / "report" / f"{chart}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000, chart
        assert f"src='report/{chart}.png'" in page, chart
    assert "Leaderboard" in page and "tensorboard --logdir" in page
    assert "Data: cifar10 at " in page and "10 classes" in page  # what data.json says it trained on


def test_border_warning_shows_in_report(experiment, tmp_path):
    """With lr's range ending just above the top two trials' lrs (8 scored trials: evidence), the page
    names lr, its high edge and a wider range."""
    copy = tmp_path / "copy"
    shutil.copytree(experiment, copy)
    config = yaml.safe_load((copy / "caviar.yaml").read_text())
    board = pd.read_csv(copy / "leaderboard.csv")
    assert (board["status"] != "diverged").sum() >= 8
    top = board["lr"].head(2)
    decades = max(3.0, 10 * (math.log10(top.max()) - math.log10(top.min())) + 0.5)  # both in the outer 10%
    high = float(top.max()) * 1.01
    config["space"]["lr"] = {"low": high / 10**decades, "high": high, "scale": "log"}
    (copy / "caviar.yaml").write_text(yaml.safe_dump(config))
    page = write_report(copy).read_text()
    assert re.search(r"Best value on the border: lr: the best trial .* high edge", page)


def test_report_of_a_running_experiment(experiment, tmp_path):
    """Without leaderboard.csv and with a half-written result line, the report still renders: the
    trial being written shows as running at its one whole epoch, and the charts are drawn anew."""
    copy = tmp_path / "in-progress"  # not "running": that word must come from the page itself
    shutil.copytree(experiment, copy)
    shutil.rmtree(copy / "report", ignore_errors=True)
    (copy / "report.html").unlink(missing_ok=True)
    (copy / "leaderboard.csv").unlink()
    (copy / "summary.json").unlink()
    trial = max(copy.glob("trial_*"), key=lambda t: len((t / "result.json").read_text().splitlines()))
    lines = (trial / "result.json").read_text().splitlines()
    assert len(lines) >= 2
    (trial / "result.json").write_text("\n".join(lines[:1]) + '\n{"epoch": 2, "val_a')
    progress = (trial / "progress.csv").read_text().splitlines()
    (trial / "progress.csv").write_text("\n".join(progress[:2]) + "\n")  # its header and epoch 1
    for state in copy.glob("experiment_state-*.json"):  # a sweep's first seconds: no state saved yet
        state.unlink()
    page = write_report(copy).read_text()
    trial_id = trial.name.removeprefix("trial_")
    row = next(line for line in page.split("<tr>") if trial_id in line)
    assert re.search(r"<td>running</td>", row) and re.search(r"<td>1</td>", row), row
    assert all((copy / "report" / f"{c}.png").exists() for c in ("accuracy", "hparams"))


def _images_loaded(page: Path) -> tuple[int, list[str]]:
    """Render `page` in headless Chromium; return (number of <img>, naturalWidth of each as loaded)."""
    probe = page.with_name("report-probe.html")
    script = ("<script>window.addEventListener('load', () => { const w = []; for (const i of document.images) "
              "w.push(i.complete ? i.naturalWidth : 0); document.body.setAttribute('data-widths', w.join(',')); "
              "});</script>")
    text = page.read_text()
    probe.write_text(text.replace("</body>", script + "</body>"))
    profile = tempfile.mkdtemp(prefix="cvchrome-", dir="/tmp")
    try:
        out = subprocess.run(
            [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        probe.unlink()
    match = re.search(r'data-widths="([0-9,]*)"', out)
    assert match, out[-2000:]
    return text.count("<img "), match.group(1).split(",")


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (.ci/run installs it; CI requires it)")
def test_report_renders_in_chromium_with_every_image(experiment):
    """Headless Chromium loads report.html from disk and every <img> decodes (naturalWidth > 0)."""
    assert shutil.which("chromium"), "CI needs Debian's chromium (apt-get install chromium)"
    page = write_report(experiment)
    count, widths = _images_loaded(page)
    assert count == len(CHARTS) and len(widths) == count
    assert all(int(w) > 0 for w in widths), widths


def _events(folder: Path) -> list:
    """Every event in the TensorBoard files under `folder` (TFRecord: length, crc, payload, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for file in folder.rglob("events.out.tfevents.*"):
        data, at = file.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            events.append(Event.FromString(data[at + 12:at + 12 + length]))
            at += 12 + length + 4
    return events


def test_trials_have_histograms_and_update_ratios(experiment):
    """Each trial folder holds TensorBoard histograms of activations and gradients per layer at epochs 0, 1, 2..."""
    trial = next(p for p in experiment.glob("trial_*") if len(read_babysit(p)) >= 3)
    records = read_babysit(trial)
    assert [r["epoch"] for r in records][:3] == [0, 1, 2]
    assert all(0 < v < 1 for v in records[1]["update_ratio"].values())
    tags = {v.tag for e in _events(trial / "tensorboard") for v in e.summary.value if v.HasField("histo")}
    assert any(t.startswith("activations/features") for t in tags)
    assert any(t.startswith("gradients/features.0.weight") for t in tags)


@pytest.mark.parametrize("optimizer,amp,channels_last", [
    ("momentum", False, False),  # float32 NCHW
    ("adam", True, True),  # the defaults: bf16 autocast where the CPU has it, channels-last
])
def test_probe_leaves_training_unchanged(learnable_root, tmp_path, optimizer, amp, channels_last):
    """A babysat trial ends with exactly the weights of an unobserved one (dropout on), for SGD in
    float32 and for Adam under the default mixed precision and memory layout."""
    data = prepare_data(learnable_root, val_size=500, train_subset=600)
    settings = TrialSettings(family="convnet", width=1.0, num_classes=10, max_epochs=2, augment=True,
                             eval_batch_size=512, amp=amp, channels_last=channels_last, max_loss=23.0, threads=1)
    lr = 0.02 if optimizer == "momentum" else 1e-3
    weights, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # as in a trial: more threads than free cores slow small models down a lot
    for folder in (None, tmp_path):
        trial = Trial(dict(SMALL_NET, optimizer=optimizer, lr=lr, dropout=0.3, seed=5), settings)
        tensors = data_tensors(data, trial.device)
        sitter = Babysitter(folder, trial, tensors[0], tensors[1])
        sitter.maybe_probe()
        while not trial.finished:
            trial.run_epoch(*tensors)
            sitter.maybe_probe()
        sitter.close()
        weights.append(trial.model.state_dict())
        states = trial.optimizer.state_dict()["state"]
        weights[-1] |= {f"optimizer.{i}.{k}": v for i, s in states.items() for k, v in s.items()
                        if isinstance(v, torch.Tensor)}
    torch.set_num_threads(threads)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert [r["epoch"] for r in read_babysit(tmp_path)] == [0, 1, 2]


def test_a_budgeted_report_says_what_the_budget_bought(tmp_path):
    """The report of a budgeted staged sweep repeats its plan's line in runs of the recipe
    (stages.json's budget.shape, caviar.sweeps.shapes); one without a budget has no such line."""
    folder = tmp_path / "exp"
    folder.mkdir()
    text = "30m on 2 slots = 1.4 R (R = one run of the recipe on one slot, ~42m; 0.7 per slot); shape recipe"
    (folder / "stages.json").write_text(json.dumps({"budget": {"shape": {"name": "recipe", "text": text}},
                                                    "stages": []}))
    assert f"Budget: {text}" in write_report(folder).read_text()
    (folder / "stages.json").write_text(json.dumps({"stages": []}))
    assert "Budget:" not in write_report(folder).read_text()
