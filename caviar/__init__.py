"""caviar: train many CIFAR-10 models in parallel with Ray Tune, keep the best, ensemble them.

Public API::

    import caviar
    result = caviar.sweep("experiments/smoke.yaml", overrides=["data.root=/data"])
    result.path, result.trials, result.best
"""

from __future__ import annotations

from typing import Any

from caviar import moved
from caviar.config.loading import load_config
from caviar.config.schema import Config
from caviar.errors import CaviarError, ConfigError

moved.install()  # the module paths of before the layer folders (caviar.space, ...) stay importable

__all__ = [
    "CaviarError", "Config", "ConfigError", "DataError", "Ensemble", "EnsembleResult", "SweepResult", "ensemble",
    "load_config", "sweep",
]
__version__ = "0.1.0"

# Heavy modules (torch, ray) load on first use, so `import caviar` and `caviar --help` stay fast.
# (The modules are named sweeper/ensembler so the functions sweep/ensemble never shadow them.)
_LAZY = {
    "sweep": "caviar.sweeps.sweeper", "SweepResult": "caviar.sweeps.experiment", "DataError": "caviar.training.data",
    "ensemble": "caviar.ensembles.ensembler", "Ensemble": "caviar.ensembles.ensembler", "EnsembleResult": "caviar.ensembles.ensembler",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'caviar' has no attribute {name!r}")
