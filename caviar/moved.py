"""caviar's module paths before its layer folders (2026-12), kept importable.

Ray pickles the callbacks, scheduler and samplers of a sweep by module path into the experiment
folder's state (`caviar.callbacks.StateSeal`, `caviar.schedulers.PromotingASHA`,
`caviar.space._ByOptimizer`, `caviar.tuning.trial_dirname`), so a folder written before the move
must still resume; scripts may import `caviar.data`, and `python -m caviar.fixture` is documented.
An old path is the new module itself (same objects, so pickles and isinstance agree), found by
a finder placed after Python's own, which only ever answers for the names below. Where public
names left the module in the move (MOVED_NAMES), the old path is a stand-in module that gives the
new module's objects and finds those names where they went.
"""

from __future__ import annotations

import functools
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


_CLUSTER_FILES = ("AWS_GPU_FAMILY", "COMMON_PROVIDER_KEYS", "DEVICE_CHECK", "PLACEHOLDER", "PROVIDER_KEYS",
                  "PYTORCH_INDEX", "RAY_AWS_NODE_KEYS", "STATED_DRIVER", "WORLD", "check_cluster_file",
                  "describe_cluster", "pinned_ray_version", "wheel_cuda")
# Public names that left their module when it moved, so that `from caviar.cluster import
# check_cluster_file` still works: old module -> {name: "new.module", "new.module:new_name", or
# "module:function()" for a name that no longer exists as such and is made by that function}.
MOVED_NAMES: dict[str, dict[str, str]] = {
    "budget": {"parse_duration": "caviar.config.durations"},
    "catalog": {"REACHED": "caviar.config.catalog:reached_table()"},
    "cluster": {name: "caviar.search.cluster_files" for name in _CLUSTER_FILES},
    "data": {"augment_batch": "caviar.training.augment"},
    "ensembler": {"ENSEMBLE_FILE": "caviar.layout", "MEMBERS_FILE": "caviar.layout",
                  "PLOT_FILE": "caviar.layout:ENSEMBLE_PLOT_FILE"},
    "experiment": {"check_labels": "caviar.moved:_check_labels"},
    "leaderboard": {"LEADERBOARD_FILE": "caviar.layout", "SUMMARY_FILE": "caviar.layout"},
}


def _check_labels(config, data) -> None:  # noqa: ANN001
    """caviar.experiment.check_labels before the move (a sweep now checks the class count from the
    class list, caviar.config.check_num_classes): labels the model cannot output, refused."""
    from caviar.errors import ConfigError

    largest = int(max(data.train_y.max(initial=0), data.val_y.max(initial=0)))
    if largest >= config.model.num_classes:
        raise ConfigError(f"model.num_classes is {config.model.num_classes} but {config.data.root} has labels up "
                          f"to {largest}; set --set model.num_classes={largest + 1}")


@functools.cache  # one object per name, as a module attribute is
def _resolve(where: str, name: str) -> object:
    """`where` is "module" (the same name there), "module:name", or "module:function()" (what it returns)."""
    module, _, attribute = where.partition(":")
    call = attribute.endswith("()")
    found = getattr(importlib.import_module(module), attribute.removesuffix("()") or name)
    return found() if call else found


class _OldModule(ModuleType):
    """An old path whose module lost names in the move: every name of the new module (the same
    objects) and the names that moved elsewhere (MOVED_NAMES)."""

    def __init__(self, name: str, target: ModuleType, moved: dict[str, str]):
        super().__init__(name, target.__doc__)
        self.__dict__.update(_target=target, _moved=moved)

    def __getattr__(self, name: str) -> object:
        if name in self._moved:
            return _resolve(self._moved[name], name)
        return getattr(self._target, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._target)) | set(self._moved))


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
        moved = MOVED_NAMES.get(self.target.rpartition(".")[2])
        if moved:  # a stand-in that also finds the names that left (the old path is not the module itself)
            return _OldModule(spec.name, module, moved)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        if self.spec is not None:
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
