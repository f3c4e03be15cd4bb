"""Stand-ins for benchmark runs that train, for tests of the harness around them (imported by
name in spawned child processes, so kept free of torch and pytest)."""

from __future__ import annotations

import os
from typing import Any


def textbook_seed(root: str, val_size: int, seed: int, deadline: float, threads: int, experiment: str,
                  extra: dict[str, Any]) -> dict[str, Any]:
    """What benchmarks/baselines.textbook_seed returns, without training: validation accuracy 0.80
    + 0.01 x seed, +0.02 with label smoothing (-0.02 with label smoothing at seed 2); a run with
    `whiten` fails."""
    if extra.get("whiten"):
        raise RuntimeError("this fake run fails with whiten")
    bonus = (0.02 if seed != 2 else -0.02) if extra.get("label_smoothing") else 0.0
    val = 0.80 + 0.01 * seed + bonus
    return {"seed": seed, "hparams": dict(extra), "epochs": 3, "max_epochs": 3, "passes": 0.75,
            "stopped_at_deadline": False, "diverged": False, "kept": "trained", "first_epoch_s": 0.1,
            "last_epoch_s": 0.1, "val_acc": val, "val_acc_by_epoch": [val], "test_acc": val - 0.01,
            "test_acc_views": val, "wall_s": 0.1, "threads": threads, "pid": os.getpid(), "probs": [0.0] * 10}
