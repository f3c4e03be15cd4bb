"""caviar.results.leaderboard: one row per trial, and diverged or errored trials never rank above the rest."""

from __future__ import annotations

import pandas as pd

from caviar.results.leaderboard import leaderboard, summarize, trial_row


def history(*val_acc: float, diverged_at: int | None = None) -> pd.DataFrame:
    epochs = list(range(1, len(val_acc) + 1))
    return pd.DataFrame({"epoch": epochs, "val_acc": list(val_acc), "val_loss": [1.0] * len(epochs),
                         "diverged": [e == diverged_at for e in epochs]})


def test_diverged_and_errored_trials_sink_below_all_others():
    """A trial that reached 0.9 before diverging (its best_val_acc is the max over its history) and
    one that crashed at 0.8 rank below a completed 0.5 and an early-stopped 0.3."""
    rows = [
        trial_row("diverged", "TERMINATED", {}, history(0.6, 0.9, 0.0, diverged_at=3), max_epochs=4),
        trial_row("errored", "ERROR", {}, history(0.7, 0.8), max_epochs=4),
        trial_row("completed", "TERMINATED", {}, history(0.3, 0.4, 0.45, 0.5), max_epochs=4),
        trial_row("stopped", "TERMINATED", {}, history(0.3), max_epochs=4),
        trial_row("silent", "PENDING", {}, None, max_epochs=4),
    ]
    table = leaderboard(rows)
    assert list(table["trial_id"]) == ["completed", "stopped", "silent", "diverged", "errored"]
    assert list(table["status"])[-2:] == ["diverged", "error"] and table["best_val_acc"][3] == 0.9
    assert "_sinks" not in table
    assert summarize(table, num_samples=5)["best_trial"]["trial_id"] == "completed"


def test_a_trial_is_complete_at_the_length_it_last_reported():
    """A trial that fit its length to a deadline (caviar.training.trial.Trial.refit) reports its count each
    epoch: it is complete at the last one, not at the count its config or the sweep planned."""
    shrunk = history(0.3, 0.4, 0.5).assign(max_epochs=[20, 3, 3])
    stretched = history(0.3, 0.4, 0.5).assign(max_epochs=[2, 5, 5])
    assert trial_row("shrunk", "TERMINATED", {"max_epochs": 20}, shrunk, max_epochs=4)["status"] == "completed"
    assert trial_row("stretched", "TERMINATED", {"max_epochs": 2}, stretched, max_epochs=4)["status"] == "early-stopped"
    assert trial_row("planned", "TERMINATED", {"max_epochs": 3}, history(0.3, 0.4, 0.5), max_epochs=4)["status"] \
        == "completed"
