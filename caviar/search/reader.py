"""Reading an experiment folder from its plain files, never a pickle.

Ray Tune's own readers (`ExperimentAnalysis`, `ResultGrid`) unpickle objects embedded in
`experiment_state-*.json`, so a payload planted there ran when `caviar ensemble` read the folder.
This module reads only what is plain text, and so is all the leaderboard, the ensemble, the stages
and the seed re-runs need:

- `experiment_state-*.json` (the newest): parsed as JSON only, for each trial's id, status, folder
  and retry count; the hex-encoded cloudpickle blobs in it are never decoded;
- `trial_<id>/params.json`: the trial's hyperparameters;
- `trial_<id>/result.json` (else `progress.csv`): one row per reported epoch;
- `trial_<id>/checkpoint_<n>/epoch=<e>-val_acc=<a>.pt`: the kept checkpoints, scored by name
  (caviar.training.trial.checkpoint_name), loaded later with `torch.load(weights_only=True)`.

A damaged or half-written file is skipped with a warning that names it: a line being written to
result.json, a trial folder without params.json, a state file cut short.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.fs
from ray import tune

from caviar import storage
from caviar.layout import CHECKPOINT_NAME as CHECKPOINT_FILE, RESUME_FILE

STATE_PATTERN = re.compile(r"experiment_state-[\w.-]+\.json")


@dataclass
class TrialRecord:
    """One trial of a finished or interrupted experiment, as saved on storage."""

    trial_id: str
    ray_status: str  # TERMINATED, ERROR, RUNNING, PENDING, ... (RUNNING when no state says otherwise)
    hparams: dict[str, Any]
    history: pd.DataFrame | None  # one row per reported epoch
    path: str  # the trial's folder (a URI on object storage)
    retries: int
    checkpoints: list[tuple[tune.Checkpoint, dict[str, Any]]]  # the kept ones, best val_acc first
    latest: tune.Checkpoint | None


def _listing(fs: pyarrow.fs.FileSystem, folder: str) -> list[pyarrow.fs.FileInfo]:
    try:
        return fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError as error:
        warnings.warn(f"cannot list {folder}: {error}", stacklevel=3)
        return []


def _text(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def has_state(location: str) -> bool:
    """Whether Ray Tune saved an experiment state at `location` (a sweep ran, or started, there)."""
    fs, root = storage.filesystem(location)
    return any(STATE_PATTERN.fullmatch(info.base_name) for info in _listing(fs, root))


def saved_state_is_whole(location: str) -> bool:
    """Whether the newest experiment_state-*.json at `location` parses as Ray's state (as JSON)."""
    fs, root = storage.filesystem(location)
    states = sorted(info.path for info in _listing(fs, root) if STATE_PATTERN.fullmatch(info.base_name))
    try:
        document = json.loads(_text(fs, states[-1]) or "") if states else None
        return isinstance(document, dict) and isinstance(document.get("trial_data"), list)
    except ValueError:
        return False


def _saved_states(fs: pyarrow.fs.FileSystem, root: str) -> dict[str, dict[str, Any]]:
    """trial folder name -> {"trial_id", "status", "retries"} from the newest experiment state, read
    as JSON only. {} when there is none or it is damaged (then the trial folders alone are read)."""
    states = sorted(info.path for info in _listing(fs, root) if STATE_PATTERN.fullmatch(info.base_name))
    if not states:
        return {}
    text = _text(fs, states[-1])
    try:
        document = json.loads(text or "")
        entries = {}
        for trial_json, meta_json in document["trial_data"]:
            trial, meta = json.loads(trial_json), json.loads(meta_json)
            folder = trial.get("relative_logdir") or f"trial_{trial['trial_id']}"
            entries[str(folder)] = {"trial_id": str(trial["trial_id"]), "status": str(trial.get("status", "RUNNING")),
                                    "retries": int(meta.get("num_failures", 0) or 0)}
        return entries
    except (ValueError, KeyError, TypeError) as error:
        warnings.warn(f"skipping damaged {states[-1]} ({type(error).__name__}); trial statuses come from the trial "
                      "folders alone", stacklevel=3)
        return {}


def _history(fs: pyarrow.fs.FileSystem, folder: str) -> pd.DataFrame:
    """One row per reported epoch; a damaged line (one being written) is skipped.

    result.json has every metric; Ray's progress.csv keeps only the columns of the first result
    (no avg_val_acc before averaging starts) but is flushed at every result, while result.json can
    lag behind for a trial that PBT restarted, and loses its earlier epochs when Ray pauses a trial
    at a rung and starts it again (it is written anew). So rows come from result.json, and epochs
    that only progress.csv has are added from it.
    """
    text = _text(fs, f"{folder}/result.json")
    rows = []
    for line in (text or "").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append({k: v for k, v in row.items() if k != "config"})
    history = pd.DataFrame(rows)
    csv = _text(fs, f"{folder}/progress.csv")
    # A header and one line per epoch: parsed only when it may hold epochs result.json lacks (the
    # parse is most of the reading time of a 10,000-trial folder).
    if csv and csv.count("\n") - 1 > len(rows):
        try:
            progress = pd.read_csv(io.StringIO(csv))
        except (ValueError, pd.errors.ParserError):
            warnings.warn(f"skipping damaged {folder}/progress.csv", stacklevel=3)
            return history
        if "epoch" in progress:
            seen = set(history["epoch"]) if "epoch" in history else set()
            missing = progress[~progress["epoch"].isin(seen)]
            if len(missing):
                history = pd.concat([history, missing], ignore_index=True).sort_values("epoch", kind="stable")
                history = history.reset_index(drop=True)
    if "replayed" in history and "epoch" in history:
        # A resumed trial reports its newest checkpoint's epoch again (caviar.search.trainable.resume_point):
        # that row counts only where Ray had not logged the epoch already.
        replayed = history["replayed"].fillna(False).astype(bool)
        logged = history["epoch"].isin(set(history.loc[~replayed, "epoch"]))
        again = history["epoch"].duplicated(keep="first")  # replayed by two resumes
        history = history[~(replayed & (logged | again))].reset_index(drop=True)
    return history


@dataclass
class SavedCheckpoint:
    """One `checkpoint_<n>` folder of a trial that holds a caviar checkpoint file."""

    index: int  # Ray's <n>: later checkpoints have larger ones
    checkpoint: tune.Checkpoint
    epoch: int
    val_acc: float
    resumable: bool  # still has its RESUME_FILE (optimizer, schedule, RNG)


def saved_checkpoints(fs: pyarrow.fs.FileSystem, folder: str) -> list[SavedCheckpoint]:
    """The trial folder's checkpoints, oldest first; a folder being written (no checkpoint file
    yet) or not caviar's is left out."""
    found = []
    for info in _listing(fs, folder):
        if info.type != pyarrow.fs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        names = [f.base_name for f in _listing(fs, info.path)]
        matches = [m for m in map(CHECKPOINT_FILE.fullmatch, names) if m]
        if not matches:
            continue
        suffix = info.base_name.removeprefix("checkpoint_")
        found.append(SavedCheckpoint(int(suffix) if suffix.isdigit() else -1,
                                     tune.Checkpoint(path=info.path, filesystem=fs), int(matches[0].group(1)),
                                     float(matches[0].group(2)), RESUME_FILE in names))
    return sorted(found, key=lambda saved: saved.index)


def _checkpoints(fs: pyarrow.fs.FileSystem, folder: str) -> tuple[list[tuple[tune.Checkpoint, dict]], Any]:
    """(kept checkpoints best val_acc first, the latest) from the trial's checkpoint_<n> folders."""
    found = saved_checkpoints(fs, folder)
    kept = sorted(found, key=lambda saved: -1.0 if math.isnan(saved.val_acc) else -saved.val_acc)
    return ([(saved.checkpoint, {"epoch": saved.epoch, "val_acc": saved.val_acc}) for saved in kept],
            found[-1].checkpoint if found else None)


def read_trials(location: str, only: set[str] | None = None) -> list[TrialRecord]:
    """Every trial of the experiment at `location` (local path or URI), from plain files only;
    with `only`, just the trials whose folders (``trial_<id>``) it names."""
    fs, root = storage.filesystem(location)
    saved = _saved_states(fs, root)
    folders = sorted(info.base_name for info in _listing(fs, root)
                     if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("trial_"))
    records = []
    for name in sorted(set(folders) | set(saved)):
        if only is not None and name not in only:
            continue
        folder = f"{root.rstrip('/')}/{name}"
        state = saved.get(name, {})
        text = _text(fs, f"{folder}/params.json")
        try:
            hparams = json.loads(text) if text is not None else None
        except json.JSONDecodeError:
            hparams = None
        history = _history(fs, folder) if name in folders else pd.DataFrame()
        if not isinstance(hparams, dict):
            # A trial that never started has no params.json and no results: nothing to say.
            if text is not None or len(history):
                warnings.warn(f"skipping {storage.join(location, name)}: its params.json is "
                              f"{'damaged' if text is not None else 'missing'}", stacklevel=2)
            continue
        checkpoints, latest = _checkpoints(fs, folder)
        records.append(TrialRecord(
            trial_id=state.get("trial_id", name.removeprefix("trial_")),
            ray_status=state.get("status", "RUNNING"),
            hparams=hparams,
            history=history,
            path=storage.join(location, name),
            retries=state.get("retries", 0),
            checkpoints=checkpoints,
            latest=latest,
        ))
    return records
