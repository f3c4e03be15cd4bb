"""One reader of an experiment folder's plain files: its config, leaderboard, summary, stage plan
and trials. Tolerant: a damaged file is reported (a warning naming it) and read as absent, never
trusted; nothing here unpickles (the trials come from caviar.search.reader)."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd

from caviar import storage
from caviar.config.loading import build_config, read_saved_config
from caviar.config.schema import Config
from caviar.layout import CONFIG_FILE, LEADERBOARD_FILE, STAGES_FILE, SUMMARY_FILE, stage_folder
from caviar.results.leaderboard import leaderboard, trial_row
from caviar.search.reader import TrialRecord, has_state, read_trials

_DAMAGED = (ValueError, KeyError, pd.errors.ParserError, UnicodeDecodeError)


@dataclass(frozen=True)
class ExperimentFolder:
    """The folder of one sweep or a staged sweep's parent (a local path or a URI)."""

    path: str

    def file(self, name: str) -> str:
        return storage.join(self.path, name)

    def has(self, name: str) -> bool:
        return storage.exists(self.file(name))

    # ------------------------------------------------------------ what the sweep saved
    def is_experiment(self) -> bool:
        """A sweep wrote its config here (it started, at least)."""
        return self.has(CONFIG_FILE)

    def has_ray_state(self) -> bool:
        return has_state(self.path)

    def config(self, overrides: list[str] | None = None) -> Config:
        """The saved, resolved config (ConfigError naming the file if it is missing or damaged)."""
        tree = read_saved_config(self.path)
        if overrides:
            from caviar.config.loading import load_config

            return load_config(tree, overrides)
        return build_config(tree, self.file(CONFIG_FILE))

    def leaderboard(self) -> pd.DataFrame | None:
        """leaderboard.csv as the sweep wrote it (best first), or None when absent or damaged."""
        if not self.has(LEADERBOARD_FILE):
            return None
        try:
            table = pd.read_csv(io.StringIO(storage.read_text(self.file(LEADERBOARD_FILE))))
            table["trial_id"] = table["trial_id"].astype(str)
            return table
        except _DAMAGED as error:  # empty, cut short, not ours
            warnings.warn(f"skipping damaged {self.file(LEADERBOARD_FILE)} ({type(error).__name__})", stacklevel=2)
            return None

    def summary(self) -> dict[str, Any] | None:
        """summary.json (written when the sweep ended), or None when absent or damaged."""
        return self._json(SUMMARY_FILE)

    def stage_plan(self) -> dict[str, Any] | None:
        """stages.json of a staged sweep, or None."""
        return self._json(STAGES_FILE)

    def is_finished(self) -> bool:
        """The sweep ended (finished, interrupted or out of time) and wrote its results."""
        return self.has(SUMMARY_FILE) and self.has(LEADERBOARD_FILE)

    def stage(self, index: int, name: str) -> "ExperimentFolder":
        """Stage `index` (1-based) of a staged sweep."""
        return ExperimentFolder(storage.join(self.path, stage_folder(index, name)))

    # ------------------------------------------------------------ the trials themselves
    def trials(self, only: set[str] | None = None) -> list[TrialRecord]:
        """Every trial from its own folder (plain files; damaged ones skipped with a warning)."""
        return read_trials(self.path, only=only)

    def trial_table(self, max_epochs: int, live: bool = False) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        """(the leaderboard from the trial folders, best first with diverged and failed trials sunk;
        each trial's history by id). With `live`, for a sweep that may still run: a trial no saved
        state calls finished is `running`, and statuses in leaderboard.csv, if any, win."""
        saved = self.leaderboard() if live else None
        statuses = dict(zip(saved["trial_id"], saved["status"])) if saved is not None and "status" in saved else {}
        rows, histories = [], {}
        for record in self.trials():
            history = record.history if record.history is not None else pd.DataFrame()
            ray_status = record.ray_status
            epochs = int(history["epoch"].max()) if live and "epoch" in history and len(history) else 0
            if live and ray_status == "RUNNING" and epochs >= max_epochs:  # no saved state says otherwise
                ray_status = "TERMINATED"
            row = trial_row(record.trial_id, ray_status, record.hparams, history, max_epochs, retries=record.retries,
                            path=record.path,
                            best_checkpoint=storage.uri(record.checkpoints[0][0].path, self.path)
                            if record.checkpoints else "")
            if live and record.trial_id in statuses:
                row["status"] = statuses[record.trial_id]
            elif live and row["status"] == "unfinished":
                row["status"] = "running"
            rows.append(row)
            histories[record.trial_id] = history
        return leaderboard(rows), histories

    def _json(self, name: str) -> dict[str, Any] | None:
        if not self.has(name):
            return None
        try:
            document = json.loads(storage.read_text(self.file(name)))
        except _DAMAGED as error:
            warnings.warn(f"skipping damaged {self.file(name)} ({type(error).__name__})", stacklevel=3)
            return None
        return document if isinstance(document, dict) else None
