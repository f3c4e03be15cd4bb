"""caviar: train many CIFAR-10 models in parallel with Ray Tune, keep the best, ensemble them.

Public API::

    import caviar
    result = caviar.sweep("experiments/smoke.yaml", overrides=["data.root=/data"])
    result.path, result.trials, result.best
"""

from __future__ import annotations

from typing import Any

from caviar.config import Config, ConfigError, load_config
from caviar.data import DataError
from caviar.errors import CaviarError

# Imported eagerly on purpose: the function `sweep` must shadow the submodule of the same name.
from caviar.sweep import SweepResult, sweep

__all__ = ["CaviarError", "Config", "ConfigError", "DataError", "SweepResult", "load_config", "sweep"]
__version__ = "0.1.0"
