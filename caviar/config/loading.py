"""Reading a config: defaults < the experiment file (YAML) < ``--set key=value`` overrides.

Unknown keys and bad values raise :class:`ConfigError` with the dotted key and the fix, which the
CLI prints (exit code 2).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from caviar.config import shipped
from caviar.config.schema import Config
from caviar.config.space import describe_item
from caviar.errors import CaviarError, ConfigError
from caviar.layout import CONFIG_FILE

# ---------------------------------------------------------------- loading and overrides
_DEFAULTS: dict[str, Any] = Config().to_dict()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"search.num_samples=128"`` -> (["search", "num_samples"], 128); values parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set search.num_samples=128")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; a number was meant
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def _apply(tree: dict[str, Any], path: list[str], value: Any, defaults: dict[str, Any] | None = None) -> None:
    """Set tree[a][b]... = value. A section missing from `tree` starts as its default, so that
    ``--set space.lr.low=1e-4`` keeps the default range's `high` and `scale`."""
    node, default = tree, defaults if defaults is not None else _DEFAULTS
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):  # an entry of a list by index: --set stages.0.num_samples=8
            node, default = node[_list_index(node, path, i)], None
            continue
        default = default.get(part) if isinstance(default, dict) else None
        if part not in node:
            node[part] = copy.deepcopy(default) if isinstance(default, dict) else {}
        child = node[part]
        if not isinstance(child, (dict, list)):
            raise ConfigError(
                f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is {child!r}, not a section; "
                f"set the whole value instead (e.g. --set {'.'.join(path[: i + 1])}=...)"
            )
        node = child
    if isinstance(node, list):
        node[_list_index(node, path, len(path) - 1)] = value
    else:
        node[path[-1]] = value


def _list_index(items: list[Any], path: list[str], i: int) -> int:
    part = path[i]
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:i])} is a list of {len(items)}; "
                          f"use an index 0..{len(items) - 1} in place of {part!r}")
    return int(part)


def _describe(error: ValidationError) -> str:
    # Scalar unions report one failure per member type; one line per key is enough.
    seen: dict[str, str] = {}
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"] if str(part) not in ("bool", "int", "float", "str", "literal['auto']"))
        seen.setdefault(key, describe_item({**item, "loc": key.split(".") if key else []}))
    return "\n".join(f"  {line}" for line in seen.values())


def build_config(tree: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(f"invalid {source}:\n{_describe(error)}") from None


def derive_config(config: Config, changes: dict[str, Any], source: str) -> Config:
    """`config` with `changes` (dotted key -> value, as `--set` takes them) applied and validated
    like a file: the one way caviar makes a config from another (a stage's, a plan's, a re-run's),
    so a derived config can never hold a value a file could not. `source` names it in errors."""
    tree = config.to_dict()
    for key, value in changes.items():
        _apply(tree, key.split("."), copy.deepcopy(value))
    return build_config(tree, source)


def with_classes(config: Config, count: int, source: str) -> Config:
    """`config` with model.num_classes set from the data (`count` classes in `source`); a stated
    num_classes that disagrees is an error before any compute (a head of the wrong size trains
    without complaint, and labels past it fail inside the first trial)."""
    stated = config.model.num_classes
    check_num_classes(stated, count, source)
    return config if stated == count else derive_config(config, {"model.num_classes": count}, "config")


def check_num_classes(stated: int | None, count: int, source: str) -> None:
    """The one rule for a stated model.num_classes (None: the data's count): it must be the data's
    `count` classes (in `source`). Checked from the class list, before any image is decoded."""
    if stated is not None and stated != count:
        raise ConfigError(f"model.num_classes is {stated} but {source} has {count} classes, labels up to {count - 1}; "
                          f"set --set model.num_classes={count}, or leave it out (the data says how many)")


class _Loader(yaml.SafeLoader):
    """YAML as a person means it: `1e-3` is a number (YAML 1.1 wants `1.0e-3`, so PyYAML reads a
    string, while `--set` already read a number), and a key given twice is an error, not the last
    one silently winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{key!r} is given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """A YAML mapping of config sections from `text`; ConfigError naming `source` if it is not one."""
    try:
        loaded = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from None
    if loaded is None:
        raise ConfigError(f"{source} is empty; it should hold config sections (name:, data:, search:, ...)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{source} must be a mapping of sections (name:, data:, search:, ...)")
    return loaded


def read_yaml(path: str | Path, source: str) -> dict[str, Any]:
    """parse_yaml of a local file, with a clear error for a folder, a binary file or no file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{source} {path} is a folder; pass a YAML file such as experiments/smoke.yaml")
    if not path.is_file():
        raise ConfigError(f"{source} {path} does not exist; pass a YAML file such as experiments/smoke.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source} {path} is not a text file; pass a YAML file such as experiments/smoke.yaml") \
            from None
    except OSError as error:
        raise ConfigError(f"{source} {path} cannot be read: {error.strerror}") from None
    return parse_yaml(text, f"{source} {path}")


def read_saved_config(folder: str) -> dict[str, Any]:
    """The `caviar.yaml` a sweep wrote into its experiment folder (local path or URI), parsed; a
    missing, damaged or empty one is a ConfigError that names it."""
    from caviar import storage  # late import: pyarrow, only for experiment folders (`import caviar` stays fast)

    location = storage.join(folder, CONFIG_FILE)
    if not storage.exists(location):
        raise ConfigError(f"{folder} is not a caviar experiment folder (no {CONFIG_FILE}); pass the folder "
                          "`caviar sweep` wrote, e.g. ~/caviar_results/cifar10-asha")
    try:
        text = storage.read_text(location)
    except UnicodeDecodeError:
        raise ConfigError(f"{location} is not a text file: the experiment folder is damaged") from None
    return parse_yaml(text, location)


def _read_experiment(source: str | Path) -> dict[str, Any]:
    """An experiment file, or a shipped experiment by name (`smoke`: caviar.config.shipped)."""
    try:
        path = shipped.resolve(source)
    except CaviarError as error:
        raise ConfigError(str(error)) from None
    return read_yaml(path, "experiment file")


def load_config(
    source: "str | Path | Config | dict[str, Any] | None" = None,
    overrides: list[str] | None = None,
    **values: Any,
) -> Config:
    """Defaults < `source` (experiment file, Config or dict) < `overrides` ("a.b=v") < `values`.

    Keyword values use ``__`` for nesting (``search__num_samples=8``).
    """
    if isinstance(source, Config):
        tree, name = source.to_dict(), "config"
    elif isinstance(source, dict):
        tree, name = copy.deepcopy(source), "config"
    elif source is not None:
        tree, name = _read_experiment(source), f"experiment {source}"
    else:
        tree, name = {}, "config"
    for text in overrides or []:
        _apply(tree, *parse_override(text))
    for key, value in values.items():
        _apply(tree, key.split("__"), value)
    if overrides or values:
        name += " (with overrides)"
    return build_config(tree, name)
