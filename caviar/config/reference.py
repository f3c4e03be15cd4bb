"""The config reference: every key of an experiment file with its type, default and meaning,
generated from the schema itself, so it cannot drift from it. Keys, types and defaults come from
the pydantic models (caviar.config.schema, caviar.config.space); what a key means comes from the
comments beside its field in their source, where every field states its unit and reason. The
docs' Config reference page is this module's output (docs/hooks.py); `python -m
caviar.config.reference` prints it."""

from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from caviar.config.schema import Config, StageConfig
from caviar.config.space import Choice, Range


@dataclass(frozen=True)
class Key:
    name: str  # dotted, as --set takes it (stages[].name for each entry of a list)
    type: str
    default: str
    meaning: str


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comments in the class source: the comment lines just above it and the comment
    at the end of its line(s), in that order."""
    source = textwrap.dedent(inspect.getsource(model))
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(token.start[0])
    found = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        inline = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        found[node.target.id] = " ".join(above + inline)
    return found


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        flat = _flatten(annotation)
        if Range in flat:  # a search-space entry (caviar.config.space.Param)
            return ("value \\| [choices] \\| {low, high, scale}" + (" \\| one per optimizer" if dict in
                    {typing.get_origin(a) for a in flat} else "") + (" \\| null" if type(None) in flat else ""))
        names = [_type(a) for a in args if a is not type(None)]
        text = " \\| ".join(dict.fromkeys(names))
        return text + (" \\| null" if type(None) in args else "")
    if origin in (list, dict):
        return f"{origin.__name__} of {', '.join(_type(a) for a in args)}" if args else origin.__name__
    if annotation is Any:
        return "any"
    if annotation in (Range, Choice):
        return "{low, high, scale}" if annotation is Range else "[choices]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _flatten(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Union:
        return [leaf for a in typing.get_args(annotation) for leaf in _flatten(a)]
    return [annotation]


def _default(value: Any) -> str:
    if isinstance(value, (Range, Choice)):
        value = value.model_dump()
    elif isinstance(value, BaseModel):
        return "(section)"
    return "required" if value is PydanticUndefined else json.dumps(value, default=str)


def _is_section(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel) and annotation not in (Range, Choice)


def keys(model: type[BaseModel] = Config, prefix: str = "") -> list[Key]:
    """Every key under `model`, depth first in the schema's order."""
    meanings = field_comments(model)
    found = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if _is_section(annotation):
            found += keys(annotation, dotted + ".")
            continue
        if typing.get_origin(annotation) is list and typing.get_args(annotation) == (StageConfig,):
            found.append(Key(dotted, "list of stages", "[]", meanings.get(name, "")))
            found += keys(StageConfig, dotted + "[].")
            continue
        default = field.default_factory() if field.default_factory is not None else field.default
        found.append(Key(dotted, _type(annotation), _default(default), meanings.get(name, "")))
    return found


def sections() -> list[tuple[str, str]]:
    """(key prefix, what the section is) of Config's sections, from their docstrings."""
    out = [("", "The experiment itself.")]
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if _is_section(annotation):
            out.append((name, inspect.cleandoc(annotation.__doc__ or "")))
        elif name == "stages":
            out.append((name, inspect.cleandoc(StageConfig.__doc__ or "")))
    return out


def markdown() -> str:
    """The Config reference page."""
    everything = keys()
    lines = ["# Config reference", "",
             "Every key of an experiment file, generated from caviar's schema (`caviar/config/schema.py`, "
             "`space.py`) when these docs are built: the type and default as the schema checks them, the meaning "
             "from the comment beside each field. Set any key in a file or with `--set key=value` (values read as "
             "YAML); `caviar config EXPERIMENT` prints the resolved config.", ""]
    for prefix, about in sections():
        mine = [k for k in everything if (k.name.split(".")[0].split("[")[0] == prefix if prefix
                                          else "." not in k.name and "[" not in k.name)]
        if not mine:
            continue
        lines += [f"## `{prefix}`" if prefix else "## Top level", ""]
        lines += [about.replace("\n", " "), ""] if about else []
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k.name}` | {k.type} | `{k.default}` | {k.meaning.replace('|', '/')} |" for k in mine]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
