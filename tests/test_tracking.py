"""caviar.search.tracking: `log: [mlflow, wandb]` sends trials, the leaderboard and the ensemble to the trackers
(a real local MLflow store, W&B offline: nothing leaves the machine)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ray_env

from caviar import cli
from caviar.config.loading import load_config
from caviar.errors import ConfigError
from caviar.search import tracking


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_missing_package_names_the_extra_before_any_work(tracker, monkeypatch, tmp_path, capsys):
    """Without the tracker's package: exit 2 naming `pip install 'caviar[<tracker>]'`, said before the
    data is looked at (a missing data folder would be the error otherwise) and nothing written."""
    monkeypatch.setitem(sys.modules, tracker, None)  # importlib finds no such package now
    storage = tmp_path / "results"
    assert cli.main(["sweep", "smoke", "--log", tracker, "--storage", str(storage), "--set",
                     f"data.root={tmp_path / 'no-data'}", "--set", "data.download=false"]) == 2
    err = capsys.readouterr().err
    assert f"pip install 'caviar[{tracker}]'" in err and "data.root" not in err
    assert not storage.exists()
    # a saved experiment that logs to it: `caviar ensemble` refuses before loading anything
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "caviar.yaml").write_text(f"name: exp\nlog: [{tracker}]\n")
    assert cli.main(["ensemble", str(tmp_path / "exp"), "--seeds", "0"]) == 2
    assert f"caviar[{tracker}]" in capsys.readouterr().err


def test_log_key_takes_names_and_refuses_others():
    assert load_config("smoke", ["log=mlflow,wandb"]).log == ["mlflow", "wandb"]
    assert load_config("smoke", ["log=[wandb]"]).log == ["wandb"]
    with pytest.raises(ConfigError, match="log.0"):
        load_config("smoke", ["log=neptune"])
    with pytest.raises(ConfigError, match="twice"):
        load_config("smoke", ["log=mlflow,mlflow"])


def test_wandb_online_without_a_key_is_refused(monkeypatch, tmp_path):
    pytest.importorskip("wandb", reason="pip install 'caviar[wandb]'")
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    with pytest.raises(ConfigError, match="WANDB_MODE=offline"):
        tracking.check(load_config("smoke", ["log=wandb"]))


def test_a_stage_is_named_inside_its_experiment(tmp_path):
    """A stage's runs are `<experiment>/<stage folder>` (its config's storage is the staged folder)."""
    root = tmp_path / "cifar10-staged"
    root.mkdir()
    (root / "caviar.yaml").write_text("name: cifar10-staged\n")
    assert tracking.label(load_config(None, [f"storage={root}", "name=stage1-coarse"])) == "cifar10-staged/stage1-coarse"
    assert tracking.label(load_config(None, [f"storage={tmp_path}", "name=plain"])) == "plain"


# ---------------------------------------------------------------- end to end, both trackers
def _wandb_records(path: Path) -> list:
    """The records of an offline W&B run file: LevelDB's log format (32 KiB blocks, each record a
    7-byte header then its bytes, maybe split over blocks) holding wandb's protobuf Records, after a
    7-byte ':W&B' file header. wandb 0.19+ has no Python reader of its own for it."""
    from wandb.proto import wandb_internal_pb2

    data, position, block, pending, records = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_run(folder: Path) -> dict:
    """job type, group, config, history rows and summary of one offline run folder."""
    def items(entries) -> dict:  # an item names its key in `key` or, nested, in `nested_key`
        return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in entries}

    run = {"history": [], "summary": {}, "config": {}}
    for record in _wandb_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run |= {"group": record.run.run_group, "job_type": record.run.job_type,
                    "config": items(record.run.config.update)}
        elif kind == "history":
            run["history"].append(items(record.history.item))
        elif kind == "summary":
            run["summary"] |= items(record.summary.update)
    return run


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One real `caviar sweep smoke --log mlflow --log wandb` (2 trials x 2 epochs on 400 images, its own
    Ray), then `caviar ensemble` of it, MLflow on a sqlite store in the test's folder, W&B offline."""
    pytest.importorskip("mlflow", reason="pip install 'caviar[mlflow]'")
    pytest.importorskip("wandb", reason="pip install 'caviar[wandb]'")
    from caviar.training.fixture import write_cifar_fixture

    work = tmp_path_factory.mktemp("tracked")
    data = write_cifar_fixture(work / "data", train_size=400, test_size=100)
    ray_dir = Path(tmp_path_factory.mktemp("r", numbered=True))
    env = ray_env(str(ray_dir)) | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(work / "wandb-config"), "WANDB_CACHE_DIR": str(work / "wandb-cache"),
        "WANDB_DATA_DIR": str(work / "wandb-data"), "WANDB_PROJECT": "caviar-test",
    }
    env.pop("WANDB_DIR", None)
    argv = [sys.executable, "-m", "caviar", "sweep", "smoke", "--log", "mlflow", "--log", "wandb",
            "--storage", str(work / "results"), "--set", f"data.root={data}", "--set", "data.val_size=100",
            "--set", "data.train_subset=null", "--set", "search.num_samples=2", "--set", "search.scheduler=random",
            "--set", "resources.cpus_per_trial=1", "--set", "average.bn_images=100"]
    done = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    experiment = work / "results" / "cifar10-smoke"
    ensemble = subprocess.run([sys.executable, "-m", "caviar", "ensemble", str(experiment), "--seeds", "0",
                               "--top-k", "2", "--no-average"], env=env, cwd=work, capture_output=True, text=True,
                              timeout=300)
    assert ensemble.returncode == 0, ensemble.stdout[-3000:] + ensemble.stderr[-3000:]
    return {"uri": env["MLFLOW_TRACKING_URI"], "experiment": experiment}


def test_mlflow_has_a_run_per_trial_under_the_sweeps_run(tracked):
    """Each trial: a run with its hyperparameters and one val_acc per epoch, child of the sweep's run,
    which holds the leaderboard and, after `caviar ensemble`, the ensemble's figures and files."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracked["uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "cifar10-smoke"]
    runs = client.search_runs([experiment.experiment_id])
    record = json.loads((tracked["experiment"] / "tracking.json").read_text())
    parent_id = record["mlflow"]["run_id"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    board = pd.read_csv(tracked["experiment"] / "leaderboard.csv")
    assert len(trials) == len(board) == 2 and len(runs) == 3
    for run in trials:
        assert {"lr", "batch_size", "optimizer", "seed"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == [1, 2]
        assert run.info.status == "FINISHED"
    assert sorted(float(r.data.params["lr"]) for r in trials) == pytest.approx(sorted(board["lr"]))
    parent = client.get_run(parent_id)
    assert parent.data.metrics["best_val_acc"] == pytest.approx(board["best_val_acc"].max())
    assert {a.path for a in client.list_artifacts(parent_id, "sweep")} == \
        {"sweep/caviar.yaml", "sweep/leaderboard.csv", "sweep/summary.json"}
    saved = json.loads((tracked["experiment"] / "ensemble" / "ensemble.json").read_text())
    assert parent.data.metrics["ensemble_accuracy"] == pytest.approx(saved["accuracy"])
    assert {a.path for a in client.list_artifacts(parent_id, "ensemble")} == \
        {"ensemble/ensemble.json", "ensemble/members.csv", "ensemble/ensemble.png"}


def test_wandb_offline_runs_for_trials_sweep_and_ensemble(tracked):
    """W&B offline, in the experiment folder: a run per trial (its hyperparameters, val_acc per epoch),
    a sweep run with the leaderboard table, an ensemble run with its figures; all one group."""
    folders = sorted((tracked["experiment"] / "wandb").glob("offline-run-*"))
    runs = [_wandb_run(folder) for folder in folders]
    assert {run["group"] for run in runs} == {"cifar10-smoke"}
    trials = [run for run in runs if not run["job_type"]]
    assert len(trials) == 2
    for run in trials:
        assert {"lr", "batch_size", "optimizer"} <= set(run["config"])
        assert [row["epoch"] for row in run["history"] if "val_acc" in row] == [1, 2]
    (sweep,) = [folder for folder, run in zip(folders, runs) if run["job_type"] == "sweep"]
    (table,) = (sweep / "files" / "media" / "table").glob("leaderboard_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == 2
    (ensemble,) = [run for run in runs if run["job_type"] == "ensemble"]
    saved = json.loads((tracked["experiment"] / "ensemble" / "ensemble.json").read_text())
    assert ensemble["summary"]["ensemble_accuracy"] == pytest.approx(saved["accuracy"])


def test_a_trial_resumed_with_new_values_keeps_its_run(tmp_path, monkeypatch):
    """PBT changes a trial's hyperparameters and restarts it: the same MLflow run goes on (MLflow refuses
    a changed param, which would stop the sweep), a child of the sweep's run, with the first values."""
    pytest.importorskip("mlflow", reason="pip install 'caviar[mlflow]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    config = load_config("smoke", ["log=mlflow", f"storage={tmp_path}"])
    path = str(tmp_path / config.name)
    Path(path).mkdir()
    (callback,) = tracking.callbacks(config, path)
    callback.setup()

    class Trial:  # what the callback reads of Ray's Trial
        config = {"lr": 0.1, "batch_size": 64}

        def __str__(self) -> str:
            return "train_trial_00000"

    trial = Trial()
    callback.log_trial_start(trial)
    callback.log_trial_result(1, trial, {"val_acc": 0.5, "training_iteration": 1})
    trial.config = {"lr": 0.2, "batch_size": 64}  # an exploit perturbed it
    callback.log_trial_start(trial)
    callback.log_trial_result(2, trial, {"val_acc": 0.6, "training_iteration": 2})
    callback.log_trial_end(trial)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(callback._trial_runs[trial])
    assert run.data.params["lr"] == "0.1" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == json.loads(Path(path, "tracking.json").read_text())["mlflow"]["run_id"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
