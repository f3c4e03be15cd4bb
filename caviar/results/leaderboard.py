"""What a sweep produced, as a table: one row per trial, plus counts and the best trial."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

# Written into the experiment folder when a sweep ends (caviar.sweeps.experiment).

# Trial outcomes, beyond Ray's own statuses: a trial that stopped itself on a NaN loss is
# "diverged", one that ASHA stopped before the budget is "early-stopped".
STATUSES = ("completed", "early-stopped", "diverged", "error", "unfinished", "not-started")


def trial_status(ray_status: str, diverged: bool, epochs: int, max_epochs: int) -> str:
    if ray_status == "ERROR":
        return "error"
    if diverged:
        return "diverged"
    if ray_status != "TERMINATED":
        return "unfinished"
    if epochs == 0:  # stopped before its first epoch ended: by a budget's deadline or the end of a run
        return "not-started"
    return "completed" if epochs >= max_epochs else "early-stopped"


def trial_row(
    trial_id: str,
    ray_status: str,
    hparams: dict[str, Any],
    history: pd.DataFrame | None,
    max_epochs: int,
    retries: int = 0,
    path: str = "",
    best_checkpoint: str = "",
) -> dict[str, Any]:
    """One leaderboard row from a trial's per-epoch history (Ray's metrics dataframe)."""
    history = history if history is not None else pd.DataFrame()
    epochs = int(history["epoch"].max()) if "epoch" in history and len(history) else 0
    diverged = bool(history["diverged"].fillna(False).astype(bool).any()) if "diverged" in history else False
    val = history["val_acc"] if "val_acc" in history else pd.Series(dtype=float)
    best_idx = val.idxmax() if val.notna().any() else None
    schedule = own_epochs(hparams, history, max_epochs)
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "status": trial_status(ray_status, diverged, epochs, schedule),
        "best_val_acc": float(val[best_idx]) if best_idx is not None else math.nan,
        "best_epoch": int(history.loc[best_idx, "epoch"]) if best_idx is not None else 0,
        "epochs": epochs,
        "final_val_loss": float(history["val_loss"].iloc[-1]) if "val_loss" in history and len(history) else math.nan,
        "retries": retries,
        # seconds per epoch as the trial saw them (training, evaluation, checkpoint): what the
        # budget planner sizes a later stage of the same config with
        "epoch_s": float(history["time_this_iter_s"].median()) if "time_this_iter_s" in history and len(history)
        else math.nan,
    }
    row.update({k: v for k, v in hparams.items()})
    if "max_epochs" in row:  # a config sized by its stage: show the schedule it ran to, refit included
        row["max_epochs"] = schedule
    row["path"] = path
    row["best_checkpoint"] = best_checkpoint
    return row


def own_epochs(hparams: dict[str, Any], history: pd.DataFrame, max_epochs: int) -> int:
    """The epochs that complete a trial: the count it last reported (a trial with a deadline fits
    it to its speed: caviar.training.trial.Trial.refit), else its own (caviar.training.trial.TRIAL_EPOCHS_KEY, a
    stage that sizes each config), else the sweep's."""
    if "max_epochs" in history and history["max_epochs"].notna().any():
        return int(history["max_epochs"].dropna().iloc[-1])
    return int(hparams.get("max_epochs") or max_epochs)


# Trials that sort below all others whatever their score: a diverged trial's best_val_acc is from
# before it blew up, an errored one's from before it crashed; neither is a result to build on.
SINKING = ("diverged", "error")


def leaderboard(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows sorted best first; diverged and errored trials sink below all others."""
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    sinks = table["status"].isin(SINKING) if "status" in table else False
    ranked = table.assign(_sinks=sinks).sort_values(["_sinks", "best_val_acc"], ascending=[True, False],
                                                    na_position="last", kind="stable")
    return ranked.drop(columns="_sinks").reset_index(drop=True)


def summarize(table: pd.DataFrame, num_samples: int) -> dict[str, Any]:
    """Counts per status (trials the search had not drawn yet count as not-started), best trial."""
    counts = {status: int((table["status"] == status).sum()) if len(table) else 0 for status in STATUSES}
    counts["not-started"] += max(0, num_samples - len(table))
    best = table.iloc[0].to_dict() if len(table) and pd.notna(table.iloc[0]["best_val_acc"]) else None
    return {
        "trials": max(len(table), num_samples),
        "counts": counts,
        "total_trial_epochs": int(table["epochs"].sum()) if len(table) else 0,
        "retries": int(table["retries"].sum()) if len(table) else 0,
        "best_trial": _jsonable(best) if best else None,
    }


def deadline_reached(summary: dict[str, Any]) -> bool:
    """Whether a budgeted sweep was stopped by its deadline (a plan that ran over, not a user)."""
    return bool((summary.get("budget") or {}).get("deadline_reached"))


def interrupted(summary: dict[str, Any]) -> bool:
    """Trials left unfinished or never started, and not because the budget ran out: resume it."""
    counts = summary.get("counts", {})
    return bool(counts.get("unfinished") or counts.get("not-started")) and not deadline_reached(summary)


def format_table(table: pd.DataFrame, rows: int = 10) -> str:
    """A short text leaderboard for the terminal."""
    if table.empty:
        return "(no trials)"
    columns = [c for c in ("trial_id", "status", "best_val_acc", "epochs", "lr", "batch_size", "optimizer",
                           "lr_schedule", "weight_decay", "dropout") if c in table]
    shown = table[columns].head(rows).copy()
    for column in ("lr", "weight_decay"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: f"{v:.2e}" if isinstance(v, float) else v)
    for column in ("best_val_acc", "dropout"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: f"{v:.4f}" if isinstance(v, float) else v)
    more = f"\n... {len(table) - rows} more in leaderboard.csv" if len(table) > rows else ""
    return shown.to_string(index=False) + more


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
