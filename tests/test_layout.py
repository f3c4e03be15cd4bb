"""The package's shape: layers as folders, imports point down only, no import cycle, Ray only in
caviar/search/, no module too long to read in one sitting (docs/development.md, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "caviar"

# Bottom to top: a module may import its own layer and the ones before it, never a later one.
LAYERS = [
    ("foundation", ("caviar.errors", "caviar.layout", "caviar.storage", "caviar.moved")),
    ("config", ("caviar.config",)),
    ("training", ("caviar.training",)),
    ("search", ("caviar.search",)),
    ("results", ("caviar.results",)),
    ("sweeps", ("caviar.sweeps",)),
    ("ensembles", ("caviar.ensembles",)),
    ("commands", ("caviar.cli", "caviar.__main__", "caviar")),
]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes if prefix != "caviar"):
            return index
    assert module == "caviar", f"{module} is in no layer: add its folder to LAYERS"
    return len(LAYERS) - 1


def imports_of(module: str) -> dict[str, int]:
    """caviar modules that `module` imports (at its top or inside a function) -> the line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from caviar.search import tracking` imports the module caviar.search.tracking
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name not in MODULES and "." in name:  # `import caviar.search.space as s` etc.
                name = name.rsplit(".", 1)[0]
            if name in MODULES and name.startswith("caviar") and name != module:
                found.setdefault(name, node.lineno)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_sits_in_a_layer_folder():
    """The package's top level holds only the foundation and the commands; everything else is in a folder."""
    top = sorted(m for m in MODULES if m.count(".") == 1 and not (PACKAGE / m.split(".")[1]).is_dir())
    assert top == ["caviar.__main__", "caviar.cli", "caviar.errors", "caviar.layout", "caviar.moved", "caviar.storage"]
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_only(module):
    """A module imports from its own layer or a lower one (the table in LAYERS), never a higher one."""
    upward = [f"{target} (line {line}, layer {LAYERS[layer_of(target)][0]})"
              for target, line in GRAPH[module].items() if layer_of(target) > layer_of(module)]
    assert not upward, f"{module} (layer {LAYERS[layer_of(module)][0]}) imports upward: {upward}"


def test_no_import_cycle():
    """No chain of imports leads back to where it started (lazy imports inside functions count too)."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in GRAPH[module]:
            if target == "caviar" or module == "caviar":
                continue  # the package's lazy public names are not an arrow between layers
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_ray_is_imported_only_in_the_search_layer():
    """Ray's API changes often: one folder to change when it does."""
    outside = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name == "ray" or name.startswith("ray.") for name in names) and \
                    not module.startswith("caviar.search"):
                outside.append(f"{module}:{node.lineno}")
    assert not outside, f"Ray imported outside caviar/search/: {outside}"


def test_training_and_config_never_import_ray_indirectly():
    """Training code runs without Ray (benchmarks, `caviar check`): nothing below search/ reaches it."""
    below = [m for m in MODULES if layer_of(m) < layer_of("caviar.search")]
    for module in below:
        assert not [t for t in GRAPH[module] if t.startswith("caviar.search")], module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_short_enough_to_read(module):
    """No module over ~400 lines: past that, split it along the jobs it does."""
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES})"
