"""MLflow and Weights & Biases for `log: [mlflow, wandb]`, through Ray Tune's own logger callbacks.

- Each trial is a tracker run with its hyperparameters and per-epoch metrics: Ray's
  `MLflowLoggerCallback` and `WandbLoggerCallback`, as they are (ray/air/integrations/).
- The sweep is a parent run: in MLflow a run whose id every trial run carries as
  `mlflow.parentRunId` (the UI nests them), holding caviar.yaml, leaderboard.csv and summary.json
  and the best val_acc; W&B has no nested runs, so the trials, the sweep (job_type "sweep", the
  leaderboard as a table) and later the ensemble are runs of one group.
- `caviar ensemble` adds its figures and files to the sweep's MLflow run, and as a W&B run of the
  same group. Which runs belong to an experiment is kept in its folder, `tracking.json`.

Where runs go is the trackers' own business: MLFLOW_TRACKING_URI (default: MLflow's, an
`mlflow.db` in the working folder), WANDB_PROJECT (default "caviar"), WANDB_ENTITY, WANDB_MODE
(offline: run files under WANDB_DIR, else the experiment folder's `wandb/`, for `wandb sync`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caviar import storage
from caviar.config.schema import Config
from caviar.errors import ConfigError
from caviar.layout import (
    CONFIG_FILE,
    ENSEMBLE_FILE,
    ENSEMBLE_PLOT_FILE,
    LEADERBOARD_FILE,
    MEMBERS_FILE,
    SUMMARY_FILE,
    TRACKING_FILE as RECORD_FILE,  # the tracker runs that belong to the folder
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from ray.tune import Callback


EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the pip extra that brings it
WANDB_PROJECT = "caviar"


# ---------------------------------------------------------------- before any compute
def check(config: Config) -> None:
    """Each tracker in `config.log` can run: its package is installed, MLflow's store answers, W&B
    has a key (or runs offline). A ConfigError naming the fix, before any data is read."""
    for tracker in config.log:
        if importlib.util.find_spec(tracker) is None:
            raise ConfigError(f"log: {tracker} needs the {tracker} package; install it with "
                              f"`pip install 'caviar[{EXTRAS[tracker]}]'` (or drop {tracker} from log)")
    if "mlflow" in config.log:
        try:
            _mlflow_client().search_experiments(max_results=1)
        except Exception as error:  # noqa: BLE001 - any failure to reach the store is the user's to fix
            raise ConfigError(f"log: mlflow cannot reach its tracking store {_mlflow_uri()!r} "
                              f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); set "
                              "MLFLOW_TRACKING_URI") from None
    if "wandb" in config.log and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
        from ray.air.integrations.wandb import _set_api_key  # what the callback's setup does, but now

        try:
            _set_api_key()
        except ValueError:
            raise ConfigError("log: wandb has no API key; run `wandb login`, set WANDB_API_KEY, or log offline "
                              "with WANDB_MODE=offline (then `wandb sync`)") from None


# ---------------------------------------------------------------- names and the record
def label(config: Config) -> str:
    """The experiment's name in the trackers: its folder name, or `<experiment>/<stage folder>` for a
    stage (a stage's config has the staged experiment's folder as its storage)."""
    root = config.storage or ""
    if root and storage.exists(storage.join(root, CONFIG_FILE)):
        return f"{root.rstrip('/').rsplit('/', 1)[-1]}/{config.name}"
    return config.name


def _read_record(path: str) -> dict[str, Any]:
    location = storage.join(path, RECORD_FILE)
    if not storage.exists(location):
        return {}
    try:
        return json.loads(storage.read_text(location))
    except (ValueError, OSError):
        return {}


def _update_record(path: str, tracker: str, entry: dict[str, Any]) -> None:
    record = _read_record(path)
    record[tracker] = record.get(tracker, {}) | entry
    storage.write_text(storage.join(path, RECORD_FILE), json.dumps(record, indent=2))


def _find_record(path: str) -> dict[str, Any]:
    """The experiment's record, or for a staged experiment the last stage's that has one."""
    record = _read_record(path)
    if record:
        return record
    fs, root = storage.filesystem(path)
    import pyarrow.fs

    stages = sorted(info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
                    if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("stage"))
    for stage in reversed(stages):
        record = _read_record(storage.join(path, stage))
        if record:
            return record
    return {}


# ---------------------------------------------------------------- MLflow
def _mlflow_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, or MLflow's default


def _mlflow_client(uri: str | None = None) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or _mlflow_uri())


def _mlflow_callback(config: Config, path: str) -> Callback:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class SweepRun(MLflowLoggerCallback):
        """Ray's callback, whose trial runs are children of one run for the sweep (resumed: the same)."""

        def setup(self, *args: Any, **kwargs: Any) -> None:
            super().setup(*args, **kwargs)
            saved = _read_record(path).get("mlflow", {})
            if saved.get("tracking_uri") == self.tracking_uri and saved.get("run_id"):
                parent = saved["run_id"]
            else:
                parent = self.mlflow_util.start_run(run_name=label(config), tags={"caviar.experiment": path}).info.run_id
                _update_record(path, "mlflow", {"tracking_uri": self.tracking_uri, "run_id": parent,
                                                "experiment_id": self.mlflow_util.experiment_id})
            self.tags["mlflow.parentRunId"] = parent

        def log_trial_start(self, trial: Any) -> None:
            # A trial paused by ASHA or PBT goes on in the run it has; its params are logged once
            # (MLflow refuses a changed param, and PBT changes them: the metrics show the new ones).
            if trial not in self._trial_runs:
                super().log_trial_start(trial)

    experiment = label(config).split("/", 1)[0]
    return SweepRun(tracking_uri=_mlflow_uri(), experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", experiment))


def _read_bytes(location: str) -> bytes:
    fs, path = storage.filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _mlflow_log_files(client: MlflowClient, run_id: str, files: list[str], artifact_path: str) -> None:
    """Copy `files` (local paths or URIs; missing ones skipped) into the run's artifacts."""
    with tempfile.TemporaryDirectory() as local:
        for location in files:
            if storage.exists(location):
                target = Path(local) / location.rstrip("/").rsplit("/", 1)[-1]
                target.write_bytes(_read_bytes(location))
                client.log_artifact(run_id, str(target), artifact_path=artifact_path)


def _table(location: str) -> pd.DataFrame:
    import io

    import pandas as pd

    return pd.read_csv(io.StringIO(storage.read_text(location)))


# ---------------------------------------------------------------- W&B
def _wandb_kwargs(path: str) -> dict[str, Any]:
    """wandb.init settings shared by every run of an experiment. The mode and folder are passed
    explicitly: the trial runs are written by Ray actors, whose environment is the Ray node's."""
    kwargs: dict[str, Any] = {"project": os.environ.get("WANDB_PROJECT", WANDB_PROJECT)}
    if os.environ.get("WANDB_ENTITY"):
        kwargs["entity"] = os.environ["WANDB_ENTITY"]
    if os.environ.get("WANDB_MODE"):
        kwargs["mode"] = os.environ["WANDB_MODE"]
    folder = os.environ.get("WANDB_DIR") or (None if storage.is_uri(path) else path)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(Path(folder).resolve())
    return kwargs


def _wandb_callback(config: Config, path: str) -> Callback:
    from ray.air.integrations.wandb import WandbLoggerCallback

    return WandbLoggerCallback(group=label(config), **_wandb_kwargs(path))


# ---------------------------------------------------------------- the three moments
def callbacks(config: Config, path: str) -> list[Callback]:
    """Ray Tune callbacks for the trackers in `config.log`, for the sweep in experiment folder `path`."""
    made = []
    if "mlflow" in config.log:
        made.append(_mlflow_callback(config, path))
    if "wandb" in config.log:
        made.append(_wandb_callback(config, path))
    return made


def log_sweep(config: Config, path: str) -> None:
    """After the sweep wrote leaderboard.csv and summary.json: attach them to its parent run."""
    files = [storage.join(path, name) for name in (CONFIG_FILE, LEADERBOARD_FILE, SUMMARY_FILE)]
    summary = json.loads(storage.read_text(files[2])) if storage.exists(files[2]) else {}
    figures = {"best_val_acc": (summary.get("best_trial") or {}).get("best_val_acc"), "trials": summary.get("trials")}
    figures = {k: float(v) for k, v in figures.items() if isinstance(v, (int, float))}
    if "mlflow" in config.log:
        saved = _read_record(path).get("mlflow", {})
        if saved.get("run_id"):
            client = _mlflow_client(saved["tracking_uri"])
            for key, value in figures.items():
                client.log_metric(saved["run_id"], key, value)
            _mlflow_log_files(client, saved["run_id"], files, "sweep")
            client.set_terminated(saved["run_id"])
    if "wandb" in config.log:
        import wandb

        run = wandb.init(group=label(config), job_type="sweep", name=f"{label(config)} (sweep)",
                         config=config.to_dict(), **_wandb_kwargs(path))
        if storage.exists(files[1]):
            run.log({"leaderboard": wandb.Table(dataframe=_table(files[1]))})
        run.summary.update(figures)
        run.finish()
        _update_record(path, "wandb", {"sweep_run_id": run.id, "group": label(config)})


def log_ensemble(config: Config, experiment: str, out: str, info: dict[str, Any]) -> None:
    """After `caviar ensemble` saved into `out`: its figures and files to the experiment's parent run
    (MLflow) or a run of its group (W&B)."""
    if not config.log:
        return
    figures = {f"ensemble_{k}": float(info[k]) for k in ("accuracy", "nll", "ece", "gain_over_best_member")}
    figures["ensemble_best_member_accuracy"] = float(info["best_member"]["accuracy"])
    files = [storage.join(out, name) for name in (ENSEMBLE_FILE, MEMBERS_FILE, ENSEMBLE_PLOT_FILE)]
    record = _find_record(experiment)
    if "mlflow" in config.log:
        saved = record.get("mlflow", {})
        client = _mlflow_client(saved.get("tracking_uri"))
        run_id = saved.get("run_id")
        if not run_id:  # the sweep was not tracked: the ensemble gets a run of its own
            name = label(config)
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else client.create_experiment(name)
            run_id = client.create_run(experiment_id, run_name=f"{name} (ensemble)",
                                       tags={"caviar.experiment": experiment}).info.run_id
        for key, value in figures.items():
            client.log_metric(run_id, key, value)
        _mlflow_log_files(client, run_id, files, "ensemble")
    if "wandb" in config.log:
        import wandb

        group = record.get("wandb", {}).get("group", label(config))
        run = wandb.init(group=group, job_type="ensemble", name=f"{group} (ensemble)",
                         config=info.get("settings", {}), **_wandb_kwargs(experiment))
        run.summary.update(figures)
        if storage.exists(files[1]):
            run.log({"members": wandb.Table(dataframe=_table(files[1]))})
        if not storage.is_uri(files[2]) and Path(files[2]).is_file():
            run.log({"ensemble": wandb.Image(files[2])})
        run.finish()
