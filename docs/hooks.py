"""MkDocs hooks (mkdocs.yml `hooks:`): the pages whose content is generated when the docs are built,
so that none of it is typed by hand and none can drift from the code or the results.

A page holds a marker, `<!-- generated: NAME -->`, which is replaced by GENERATORS[NAME]():
the config reference from the schema (caviar.config.reference), the benchmark figures and the
status of every results file (benchmarks/figures.py), `caviar experiments` as it prints, and the
README's results table.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def _figures():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import figures

    return figures


def _experiments() -> str:
    from caviar.config.catalog import describe

    return f"```\n$ caviar experiments\n{describe()}\n```"


def _cli_help() -> str:
    """`caviar --help` and each command's, as argparse prints them (80 columns)."""
    import argparse
    import os

    from caviar.cli import build_parser

    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    parts = [f"```\n$ caviar --help\n{parser.format_help()}```"]
    for action in parser._actions:  # argparse keeps its subcommands here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append(f"### `caviar {name}`\n\n```\n{sub.format_help()}```")
    return "\n\n".join(parts)


def _api() -> str:
    """The public API, exactly `caviar.__all__`: one section per name, its reference from the
    docstrings where it is defined (mkdocstrings reads the `:::` lines this writes)."""
    import caviar

    parts = []
    for name in sorted(caviar.__all__, key=lambda n: (n[0].isupper(), n)):
        module = caviar._LAZY.get(name) or getattr(caviar, name).__module__
        parts.append(f"## `caviar.{name}`\n\n::: {module}.{name}\n    options:\n      show_root_heading: false\n")
    return "\n".join(parts)


def _config_reference() -> str:
    from caviar.config.reference import markdown

    return markdown()


GENERATORS: dict[str, Callable[[], str]] = {
    "config-reference": _config_reference,
    "cli-help": _cli_help,
    "api": _api,
    "caviar-experiments": _experiments,
    "benchmarks": lambda: _figures().page(),
    "results-status": lambda: _figures().status_table(),
    "multiples": lambda: _figures().multiples_table(),
    "readme-figures": lambda: _figures().markdown(_figures().readme_rows(_figures().load())),
}


def render(markdown: str) -> str:
    """`markdown` with every marker replaced by what its generator writes (an unknown marker fails
    the build rather than leave a hole)."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated block {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return render(markdown)
