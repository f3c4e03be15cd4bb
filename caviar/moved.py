"""caviar's module paths before its layer folders (2026-12), kept importable.

Ray pickles the callbacks, scheduler and samplers of a sweep by module path into the experiment
folder's state (`caviar.callbacks.StateSeal`, `caviar.schedulers.PromotingASHA`,
`caviar.space._ByOptimizer`, `caviar.tuning.trial_dirname`), so a folder written before the move
must still resume; scripts may import `caviar.data`, and `python -m caviar.fixture` is documented.
An old path is the new module itself (same objects, so pickles and isinstance agree), found by
a finder placed after Python's own, which only ever answers for the names below.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

MOVED = {
    "babysit": "training", "border": "results", "budget": "sweeps", "callbacks": "search", "catalog": "config",
    "charts": "results", "checks": "training", "cluster": "search", "connect": "search", "console": "sweeps",
    "data": "training", "devices": "training", "ensembler": "ensembles", "experiment": "sweeps",
    "export": "ensembles", "fashion_mnist": "training", "fixture": "training", "leaderboard": "results",
    "members": "ensembles", "models": "training", "narrowing": "sweeps", "reader": "search", "report": "results",
    "reruns": "search", "schedulers": "search", "seal": "search", "selection": "ensembles", "shipped": "config",
    "space": "search", "stages": "sweeps", "sweeper": "sweeps", "tracking": "search", "train": "training",
    "trainable": "search", "trial": "training", "tuning": "search",
}


def new_name(old: str) -> str | None:
    """`caviar.space` -> `caviar.search.space`; None for a name that did not move."""
    package, _, leaf = old.partition(".")
    return f"caviar.{MOVED[leaf]}.{leaf}" if package == "caviar" and leaf in MOVED else None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import machinery set the alias's; the module keeps its own

    def get_code(self, fullname: str) -> CodeType | None:
        """What `python -m caviar.fixture` runs: the moved module's code."""
        spec = importlib.util.find_spec(self.target)
        return spec.loader.get_code(self.target) if spec and spec.loader else None


class MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:  # noqa: ANN001
        moved = new_name(fullname)
        return importlib.util.spec_from_loader(fullname, _Alias(moved)) if moved else None


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
