"""What data an experiment folder's trials trained on, and the check that refuses other data.

A sweep writes `data.json` (layout.DATA_FILE) when it starts: the data's format and root, the
classes, the channel statistics, and digests of the content (all the training images with their
labels) and of the validation split (caviar.training.data.prepare_data). Whatever reads the data
again for that folder (a resume, each later stage, the diverse pick, the seed re-runs and
`caviar ensemble`) compares what it loaded with it, and stops before any compute where they
differ: one added image reshuffles the seeded validation split, and an ensemble would then choose
its weights on images its members trained on. The digests are of the images themselves, so data
that was moved or copied (another root, other file times) is the same data.
"""

from __future__ import annotations

import json
from typing import Any

from caviar import storage
from caviar.config.schema import Config
from caviar.errors import DataError
from caviar.layout import DATA_FILE, STAGES_FILE
from caviar.training.data import SplitData, data_for


def record(config: Config, data: SplitData) -> dict[str, Any]:
    """data.json's content for `data`, loaded as `config` says."""
    d = config.data
    return {"format": d.format, "root": str(d.root), "labels": d.labels, "image_size": d.image_size,
            "val_size": d.val_size, "split_seed": d.split_seed, "classes": list(data.classes),
            "mean": [round(float(v), 6) for v in data.mean], "std": [round(float(v), 6) for v in data.std],
            **data.identity}


def changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two records, in words; [] for the same data (wherever it lies)."""
    found = []
    if recorded.get("classes") != current.get("classes"):
        then, now = recorded.get("classes") or [], current.get("classes") or []
        found.append(f"the classes: {len(then)} then ({_few(then)}), {len(now)} now ({_few(now)})")
    if recorded.get("images") != current.get("images"):
        found.append(f"the training images: {recorded.get('images')} then, {current.get('images')} now (files added "
                     "or removed)")
    elif recorded.get("content") != current.get("content"):
        found.append("the training images or their labels (as many as before, but files were changed)")
    if not found and recorded.get("validation") != current.get("validation"):
        found.append(f"the validation split (data.val_size {recorded.get('val_size')} then, {current.get('val_size')} "
                     f"now; data.split_seed {recorded.get('split_seed')} then, {current.get('split_seed')} now)")
    if not found and recorded.get("image_size") != current.get("image_size"):
        found.append(f"data.image_size: {recorded.get('image_size')} then, {current.get('image_size')} now")
    return found


def _few(names: list[str]) -> str:
    return ", ".join(map(str, names[:4])) + (", ..." if len(names) > 4 else "")


def recorded(folder: str) -> tuple[str, dict[str, Any]] | None:
    """(where, the record) of the data `folder` trained on: its data.json, else that of the staged
    run it is a stage of; None where neither exists (folders from before data.json)."""
    for where in (folder, _parent(folder)):
        path = storage.join(where, DATA_FILE)
        if where and storage.exists(path) and (where == folder or storage.exists(storage.join(where, STAGES_FILE))):
            try:
                return path, json.loads(storage.read_text(path))
            except ValueError:
                raise DataError(f"{path} is damaged (not JSON): it records what data the experiment trained on; "
                                "restore it, or remove it to skip the check") from None
    return None


def _parent(folder: str) -> str:
    return folder.rstrip("/").rpartition("/")[0]


def write(folder: str, content: dict[str, Any]) -> None:
    """Write `content` (a `record`) in `folder` (a new sweep), and in the staged run it is a stage of
    where that has no record yet (so that every later stage is compared with the first)."""
    text = json.dumps(content, indent=2)
    storage.write_text(storage.join(folder, DATA_FILE), text)
    parent = _parent(folder)
    if parent and storage.exists(storage.join(parent, STAGES_FILE)) and not storage.exists(storage.join(parent,
                                                                                                         DATA_FILE)):
        storage.write_text(storage.join(parent, DATA_FILE), text)


def check(folder: str, config: Config, data: SplitData, doing: str) -> None:
    """A DataError, before any compute, where `data` is not the data `folder` trained on; `doing`
    says what was about to run ("resume the sweep", ...)."""
    found = recorded(folder)
    if found is None or not data.identity:
        return
    where, then = found
    differ = changes(then, record(config, data))
    if differ:
        raise DataError(
            f"cannot {doing}: the data at {config.data.root} is not what {folder} trained on ({where}): "
            f"{'; '.join(differ)}. Nothing in the folder was changed. Point data.root (--set data.root=...) at the "
            "data it trained on, or start a new experiment on the new data (--set name=<new name>)")


def experiment_data(config: Config, folder: str, doing: str, *, subset: bool = True) -> SplitData:
    """The data of `config` (caviar.training.data.data_for), checked against what `folder` trained on."""
    data = data_for(config, subset=subset)
    check(folder, config, data, doing)
    return data
