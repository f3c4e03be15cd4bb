"""A fingerprint of Ray Tune's state files in an experiment folder, so that `--resume` unpickles
only what caviar's own sweeps wrote.

Resuming is the one place caviar lets Ray read its state the way Ray does, by unpickling it
(`tuner.pkl`, the objects embedded in `experiment_state-*.json`, searcher and callback states): a
payload planted in one of those files would run. So each time Ray saves its state during a sweep,
caviar writes the SHA-256 of every such file to ``caviar-state.json`` beside them
(caviar.search.callbacks.StateSeal), and `--resume` refuses a folder where a state file is missing from
that list or differs from it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow.fs

from caviar import storage
from caviar.errors import ConfigError
from caviar.layout import SEAL_FILE

# What Ray Tune's restore reads: the Tuner, the experiment state, searcher and callback states.
RAY_STATE_FILE = re.compile(r".+\.pkl|(experiment_state|basic-variant-state|search_gen_state)-.+\.json")
_CHUNK = 1 << 20


def _digest(stream) -> str:
    sha = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        sha.update(chunk)
    return sha.hexdigest()


def digests(fs: pyarrow.fs.FileSystem, folder: str) -> dict[str, str]:
    """name -> SHA-256 of each Ray state file at the top of `folder`."""
    found = {}
    for info in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.File and RAY_STATE_FILE.fullmatch(info.base_name):
            with fs.open_input_stream(info.path) as stream:
                found[info.base_name] = _digest(stream)
    return found


def read_seal(location: str) -> dict[str, str] | None:
    """The fingerprints saved in the experiment folder `location`, or None if there are none."""
    path = storage.join(location, SEAL_FILE)
    if not storage.exists(path):
        return None
    try:
        seal = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError):
        return None
    files = seal.get("files") if isinstance(seal, dict) else None
    return files if isinstance(files, dict) else None


def write_seal(staging: str, carried: dict[str, str]) -> None:
    """Seal the state Ray has just written to its local staging folder `staging` (synced to the
    experiment folder with it), keeping the fingerprints `carried` of files that are only in the
    experiment folder (earlier sessions' state, tuner.pkl)."""
    files = carried | digests(pyarrow.fs.LocalFileSystem(), staging)
    text = json.dumps({"written_by": "caviar", "files": files}, indent=1, sort_keys=True)
    temporary = Path(staging, f".{SEAL_FILE}.tmp")
    temporary.write_text(text)
    temporary.replace(Path(staging, SEAL_FILE))  # never half a seal


def check_seal(location: str) -> None:
    """ConfigError unless every Ray state file in `location` is one caviar sealed, unchanged."""
    seal = read_seal(location)
    fs, root = storage.filesystem(location)
    found = digests(fs, root)
    if seal is None:
        raise ConfigError(f"--resume {location}: no {SEAL_FILE} there, so caviar cannot tell that Ray's state files "
                          f"({', '.join(sorted(found)) or 'none'}) are the ones its sweep wrote, and resuming unpickles "
                          "them; the finished trials are still readable (`caviar ensemble`, `caviar report`)")
    changed = sorted(name for name, digest in found.items() if seal.get(name) != digest)
    if changed:
        raise ConfigError(f"--resume {location}: {', '.join(changed)} {'is' if len(changed) == 1 else 'are'} not "
                          f"what caviar's sweep wrote (changed or added since; see {SEAL_FILE}); resuming would "
                          "unpickle it, so caviar refuses. The finished trials are still readable (`caviar ensemble`, "
                          "`caviar report`)")
