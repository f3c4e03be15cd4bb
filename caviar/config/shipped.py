"""The experiments that ship inside the package, addressable by name: `caviar sweep smoke`.

The YAML files live in `caviar/experiments/` (package data, so an installed caviar has them; the
repository's `experiments/` is a link to that folder, one copy of each file). An argument that names
an existing file is that file; otherwise a shipped name (`smoke` or `smoke.yaml`) is the shipped
file; anything else is an error that lists the names. No other caviar import: config reads files
through this module.
"""

from __future__ import annotations

from pathlib import Path

from caviar.errors import CaviarError

FOLDER = Path(__file__).resolve().parents[1] / "experiments"  # caviar/experiments/


def names() -> list[str]:
    """Shipped experiment names, sorted: default, smoke, ..."""
    return sorted(path.stem for path in FOLDER.glob("*.yaml"))


def path(name: str) -> Path:
    """The shipped file of `name`; CaviarError listing the names if there is none."""
    stem = name.removesuffix(".yaml")
    if "/" in name or stem not in names():
        raise CaviarError(f"no shipped experiment {name!r}; shipped: {', '.join(names())}")
    return FOLDER / f"{stem}.yaml"


def resolve(source: str | Path) -> Path:
    """An experiment argument -> the YAML file it means. A file that exists wins over a shipped name
    (a local `smoke.yaml` beside you is the one you mean); a folder does not count as a file."""
    given = Path(source).expanduser()
    if given.is_file():
        return given
    text = str(source)
    if "/" not in text and text.removesuffix(".yaml") in names():
        return FOLDER / f"{text.removesuffix('.yaml')}.yaml"
    if given.exists():  # a folder, say: read_yaml says what is wrong with it
        return given
    raise CaviarError(f"experiment file {text} does not exist and is not a shipped experiment (shipped: "
                      f"{', '.join(names())}; `caviar experiments` says what each costs)")
