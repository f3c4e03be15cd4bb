"""`caviar sweep`: an experiment file (or a folder to resume) -> one sweep or its stages.

The pipeline below this reads top-down: caviar.sweeps.stages runs several experiments in one folder,
caviar.sweeps.experiment runs one (its Tuner's parts come from caviar.search.tuning, the Ray cluster from
caviar.search.connect), caviar.sweeps.console says what happened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from caviar.config.loading import load_config
from caviar.config.schema import Config
from caviar.errors import ConfigError
from caviar.search import tracking
from caviar.sweeps.experiment import SweepOutcome, SweepResult, config_for_resume, run_experiment
from caviar.sweeps.stages import run_staged

__all__ = ["SweepResult", "sweep"]


def sweep(
    config: Config | str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    address: str | None = None,
    resume: str | Path | None = None,
    stage: int | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
    **values: Any,
) -> SweepOutcome:
    """Run (or with `resume`, finish) a sweep and return its leaderboard (a SweepResult).

    An experiment with `stages` runs them all (caviar.sweeps.stages) and returns a StagedResult whose
    path, trials, summary and config are the last stage's; `stage` reruns (or resumes) from stage N.
    With `budget` in the config, the sweep is planned to fit it (caviar.sweeps.budget) and stopped at
    its deadline.

    `config` is a Config or an experiment file; `overrides` are "key=value" strings and `values`
    keyword overrides (``search__num_samples=8``), applied on top, in that order. On resume,
    only what may change (paths, resources) can be overridden. `log` gets the progress lines;
    `verbose` shows Ray Tune's own console output instead (a box per trial and more).
    """
    begin = time.time()
    if resume is not None:
        config = config_for_resume(resume, overrides, **values)
    else:
        config = load_config(config, overrides, **values).resolved()
    tracking.check(config)  # MLflow / W&B installed and reachable, before any data is read
    if config.stages:
        return run_staged(config, address=address, resume=resume is not None, start=stage, begun=begin, log=log,
                          verbose=verbose)
    if stage is not None:
        raise ConfigError("--stage needs an experiment with `stages` (see experiments/staged.yaml)")
    return run_experiment(config, resume=resume is not None, address=address, begin=begin, log=log,
                          verbose=verbose)
