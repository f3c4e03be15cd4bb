"""The documentation: a short README whose figures are the results files', a config reference that
lists every key of the schema, an API page that is exactly `caviar.__all__`, and docs pages whose
generated blocks all render (docs/hooks.py); `mkdocs build --strict` itself runs in CI (.ci/run)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import yaml

import caviar
from caviar.config import shipped
from caviar.config.loading import load_config
from caviar.config.reference import keys, markdown

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(REPO / "benchmarks"))
import figures  # noqa: E402
import hooks  # noqa: E402


def test_the_readme_is_short_and_keeps_both_set_up_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "pip install -e .\ncaviar sweep smoke" in readme
    assert 'pip install -e ".[test]" && pytest' in readme
    links = re.findall(r"\]\((docs/[\w./-]+)\)", readme)
    assert links and all((REPO / link).exists() for link in links), links


def test_the_readme_table_is_the_one_the_results_give():
    """Every figure in it comes from benchmarks/results (figures.py --readme writes it)."""
    readme = (REPO / "README.md").read_text()
    assert figures.readme_table() in readme, "run: python benchmarks/figures.py --readme"
    assert figures.main(["--check"]) == 0


def _flat(value, prefix=""):
    if isinstance(value, dict) and not {"low", "high"} & set(value) and "choices" not in value:
        for key, inner in value.items():
            yield from _flat(inner, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


@pytest.mark.parametrize("name", shipped.names())
def test_the_config_reference_lists_every_key_of_the_schema(name):
    """Every key of a resolved config (each shipped experiment's, stages included) is a row of the
    reference, with its meaning."""
    listed = {k.name: k for k in keys()}
    config = load_config(name).to_dict()
    stages = config.pop("stages")
    wanted = {k for k in _flat(config) if not k.startswith("space.lr.")}  # lr per optimizer: one entry
    wanted |= {f"stages[].{k}" for stage in stages for k in stage}
    assert wanted - set(listed) == set()
    assert all(listed[k].meaning for k in wanted), [k for k in wanted if not listed[k].meaning]
    page = markdown()
    assert all(f"| `{k}` |" in page for k in wanted)


def test_the_api_page_is_exactly_the_public_api():
    page = hooks.render((DOCS / "api.md").read_text())
    documented = re.findall(r"^## `caviar\.(\w+)`", page, re.M)
    assert sorted(documented) == sorted(caviar.__all__)
    for target in re.findall(r"^::: ([\w.]+)", page, re.M):  # each reference resolves where it is defined
        module, _, name = target.rpartition(".")
        assert getattr(importlib.import_module(module), name) is getattr(caviar, name)


def test_every_docs_page_renders_and_is_in_the_nav():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", ""))["nav"]

    def pages(entries):
        for entry in entries:
            for value in entry.values():
                yield from (pages(value) if isinstance(value, list) else [value])

    listed = set(pages(nav))
    present = {p.name for p in DOCS.glob("*.md")}
    assert listed == present
    for page in present:
        text = hooks.render((DOCS / page).read_text())
        assert "<!-- generated:" not in text
        for target in re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]*)?\)", text):  # links between pages
            assert target in present, f"{page} links to {target}"


def test_the_benchmarks_page_quotes_every_current_result_and_caviar_experiments():
    """The page is written from the results files: each current one named with its machine; the
    shipped experiments' lines are the ones `caviar experiments` prints."""
    from caviar.config import catalog

    page = figures.page()
    docs = figures.load()
    for name, doc in docs.items():
        if figures.status(name)[0] != "superseded":
            assert f"`{name}`: {figures.when_and_where(doc)}" in page
    for name in shipped.names():
        assert f"- `{name}`: {catalog.reached(name) or 'not benchmarked yet'}" in page
    assert "<!-- generated: caviar-experiments -->" in (DOCS / "experiments.md").read_text()


def test_every_results_file_has_a_status():
    """Superseded and disturbed runs are marked; a mark names a file that exists."""
    names = set(figures.load())
    assert set(figures.SUPERSEDED) <= names and set(figures.DISTURBED) <= names
    table = figures.status_table()
    assert all(f"| {name} |" in table for name in names)


def test_caviar_imports_each_name_from_where_it_is_defined():
    """One import path: no module of caviar takes a name through caviar.config's re-exports (kept
    only for the pre-move module's old users, caviar/config/__init__.py); submodules are fine."""
    import ast

    submodules = {p.stem for p in (REPO / "caviar" / "config").glob("*.py")}
    through = []
    for path in (REPO / "caviar").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "caviar.config":
                through += [f"{path.relative_to(REPO)}: {a.name}" for a in node.names if a.name not in submodules]
    assert not through
