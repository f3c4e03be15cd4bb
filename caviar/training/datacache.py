"""What caviar derives from a dataset and keeps beside it: decoded images, channel statistics.

A cache lives in `<data folder>/.caviar-cache/`, marked as caviar's by a CACHEDIR.TAG (backup tools
skip such folders); where the data folder is read-only, or already holds a `.caviar-cache` that
caviar did not make, in `~/.cache/caviar/datasets/<folder name>-<hash of its path>/` instead.
Nothing outside these tagged folders is ever written. Every entry is named by a fingerprint of its
sources (relative paths, sizes, modification times) and settings, so a changed folder gets a new
entry, and older entries of the same kind are removed. Arrays are .npy files read with
allow_pickle=False and the rest JSON: nothing read from a cache can run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

CACHE_FOLDER = ".caviar-cache"
CACHE_VERSION = 1  # part of every fingerprint: bump when what a cache entry holds changes
_TAG = "CACHEDIR.TAG"
_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
             "# This folder is a cache made by caviar (decoded images, channel statistics).\n"
             "# Deleting it is safe: caviar rebuilds what it needs.\n")
_STATS_CHUNK = 2048  # images per np.bincount call: its int64 copy of them stays ~50 MB at 32 px


def user_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "caviar" / "datasets"


def cache_folders(data_folder: Path) -> list[Path]:
    """Where a cache for `data_folder` may be, in order of preference."""
    data_folder = Path(data_folder).expanduser().absolute()
    key = hashlib.sha256(str(data_folder.resolve()).encode()).hexdigest()[:12]
    return [data_folder / CACHE_FOLDER, user_cache_root() / f"{data_folder.name}-{key}"]


def _ours(folder: Path) -> bool:
    try:
        return (folder / _TAG).read_text() == _TAG_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def _claim(folder: Path, parents: bool) -> bool:
    """True when `folder` is a cache folder of caviar's, creating it if it does not exist."""
    if folder.exists():
        return folder.is_dir() and _ours(folder)
    try:
        folder.mkdir(parents=parents)
    except OSError:  # a read-only data folder, for one
        return False
    try:
        _atomic(folder / _TAG, lambda f: f.write(_TAG_TEXT.encode()))
        return True
    except OSError:
        with contextlib.suppress(OSError):
            folder.rmdir()  # empty, and made just now: leave nothing untagged behind
        return False


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    # Written under a temporary name, then renamed: a reader never sees half a file, and two
    # processes writing the same entry write the same bytes.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def find(data_folder: Path, name: str) -> Path | None:
    """The cached file `name` for `data_folder`, if a cache folder of caviar's has it."""
    for folder in cache_folders(data_folder):
        if (folder / name).is_file() and _ours(folder):
            return folder / name
    return None


def store(data_folder: Path, entries: dict[str, Callable[[Any], None]], stale_prefix: str | None = None) -> Path | None:
    """Write each entry (file name -> writer of a binary file object) into the first cache folder
    that can take them, the last entry last (readers look for it: it marks the set complete); then
    remove other files starting with `stale_prefix` there. The folder, or None where none could be
    written (the data still loads, only uncached)."""
    for index, folder in enumerate(cache_folders(data_folder)):
        if not _claim(folder, parents=index > 0):
            continue
        try:
            for name, write in entries.items():
                _atomic(folder / name, write)
        except OSError:
            continue
        if stale_prefix:
            for old in folder.glob(f"{stale_prefix}*"):
                if old.name not in entries:
                    old.unlink(missing_ok=True)
        return folder
    return None


def fingerprint(files: Iterable[Path], base: Path, *settings: Any) -> str:
    """16 hex digits of SHA-256 over each file's path relative to `base`, size and mtime, and `settings`."""
    digest = hashlib.sha256(repr((CACHE_VERSION, settings)).encode())
    for path in sorted(files):
        st = path.stat()
        digest.update(f"{path.relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def save_npy(array: np.ndarray) -> Callable[[Any], None]:
    return lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def save_json(obj: Any) -> Callable[[Any], None]:
    return lambda f: f.write(json.dumps(obj, indent=1).encode())


def load_npy(path: Path, mmap: bool = False) -> np.ndarray | None:
    """The array in `path` (read-only and memory-mapped with `mmap`: pages are read as they are
    used, and no second copy is made of a set that is only indexed); None where it cannot be read."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError):  # removed meanwhile, truncated, or not an .npy: decode again
        return None


def load_json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- channel statistics
Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


def channel_stats(images: np.ndarray) -> Stats:
    """Per-channel (R, G, B) mean and std on the 0..1 scale of uint8 (N, 3, H, W) images, over
    every pixel (CIFAR-10's 0.4914.../0.2470... are these), exact: one histogram per channel."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8 or not len(images):
        raise ValueError(f"need uint8 (N, 3, H, W) images with N >= 1, got {images.dtype} {images.shape}")
    hist = np.zeros((3, 256), np.int64)
    for start in range(0, len(images), _STATS_CHUNK):
        chunk = images[start:start + _STATS_CHUNK]
        for c in range(3):
            hist[c] += np.bincount(chunk[:, c].reshape(-1), minlength=256)
    values = np.arange(256) / 255.0
    count = hist.sum(1)
    mean = hist @ values / count
    var = np.maximum(hist @ values**2 / count - mean**2, 0.0)
    # A constant channel (std 0): any divisor leaves it 0 after subtracting its mean.
    std = np.where(var > 0, np.sqrt(var), 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[return-value]


def cached_stats(data_folder: Path, key: str, images: np.ndarray) -> Stats:
    """channel_stats of `images`, kept as stats-<key>.json beside the data (key: a kind and a
    fingerprint of the sources, e.g. "cifar10-3f2a..."; other entries of the kind are removed)."""
    name = f"stats-{key}.json"
    saved = load_json(find(data_folder, name))
    try:
        mean, std = tuple(float(v) for v in saved["mean"]), tuple(float(v) for v in saved["std"])
        if len(mean) == len(std) == 3 and saved["images"] == len(images):
            return mean, std  # type: ignore[return-value]
    except (TypeError, KeyError, ValueError):
        pass
    mean, std = channel_stats(images)
    record = {"mean": mean, "std": std, "images": len(images), "scale": "0..1, over every pixel"}
    store(data_folder, {name: save_json(record)}, stale_prefix=f"stats-{key.rsplit('-', 1)[0]}-")
    return mean, std
