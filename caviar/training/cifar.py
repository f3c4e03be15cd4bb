"""CIFAR's python format (CIFAR-10's data_batch_*/test_batch/batches.meta, CIFAR-100's
train/test/meta): a restricted unpickler and the readers of batch and meta files.

Unpickling runs whatever callable a file names, so only numpy's array reconstruction is allowed:
a batch holds numpy arrays, lists of numbers and names, nothing else.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from caviar.errors import DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_COUNTS = {"fine": 100, "coarse": 20}  # classes per label set where no meta file names them

# numpy 1.x pickled arrays via numpy.core.*, numpy 2 via numpy._core.*; both names map to the
# installed numpy's functions, taken from ndarray.__reduce_ex__ so no deprecated module is
# imported. _frombuffer is how arrays are pickled at protocol 5 (Python 3.14's default).
_RECONSTRUCT = np.zeros(0, np.uint8).__reduce_ex__(2)[0]
_FROMBUFFER = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def _latin1_bytes(text, encoding, *, source):
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1"); allow exactly that.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DataError(f"refusing _codecs.encode(..., {encoding!r}) in {source}: only latin1 text->bytes is allowed")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path):
        # encoding="bytes": the published files are Python 2 pickles whose str keys become bytes.
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return functools.partial(_latin1_bytes, source=self.source)
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.source}: a CIFAR batch holds only "
                "numpy arrays; the file is corrupt or malicious"
            ) from None


# ---------------------------------------------------------------- unpickling
def unpickle(path: Path) -> dict:
    """Restricted load of one CIFAR pickle; returns a dict with str keys (b"data" -> "data")."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    except Exception as e:  # garbage can raise almost anything inside the unpickler
        raise DataError(
            f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); the file is "
            "truncated or corrupt, extract it again"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR batch")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


# ---------------------------------------------------------------- batch and meta files
def _rows(data: Any, path: Path, image_size: int) -> np.ndarray:
    """b"data" -> uint8 (N, 3 * S * S): one image per row, 1024 R then G then B values at 32 px."""
    row = 3 * image_size * image_size
    if isinstance(data, (list, tuple)) or (isinstance(data, np.ndarray) and data.dtype == object):
        # One entry per image (bytes or a flat uint8 array), as some converters write it.
        rows = [np.frombuffer(r, np.uint8) if isinstance(r, bytes) else np.asarray(r) for r in data]
        if any(r.dtype != np.uint8 or r.ndim != 1 for r in rows):
            raise DataError(f"{path}: data must be a uint8 array (or one uint8 row per image)")
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            raise DataError(f"{path}: images of mixed sizes (rows of {', '.join(map(str, lengths[:4]))} bytes); "
                            f"every row must be one 3 x {image_size} x {image_size} image ({row} bytes): resize "
                            "them to one size, or use data.format: imagefolder, which does")
        data = np.stack(rows) if rows else np.zeros((0, row), np.uint8)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data must be a uint8 array, found {kind}")
    if data.ndim == 4 and data.shape[1:] == (3, image_size, image_size):
        return data.reshape(len(data), row)
    if data.ndim != 2 or data.shape[1] != row:
        side = np.sqrt(data.shape[1] / 3) if data.ndim == 2 else 0
        hint = (f": rows of {data.shape[1]} bytes are {side:.0f} x {side:.0f} images, set data.image_size: "
                f"{side:.0f}") if side and side == int(side) else ""
        raise DataError(f"{path}: data must have shape (N, {row}), found {data.shape}{hint}")
    return data


def read_batch_file(path, *, labels_key: str = "labels", num_classes: int = 10,
                    image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch -> images uint8 (N, 3, S, S) and labels int64 (N,) in 0..num_classes-1.

    labels_key: "labels" (CIFAR-10), "fine_labels" or "coarse_labels" (CIFAR-100).
    """
    path = Path(path)
    batch = unpickle(path)
    missing = [k for k in ("data", labels_key) if k not in batch]
    if missing:
        raise DataError(f"{path} has no {' or '.join(missing)} entry; keys found: {sorted(map(str, batch))}")
    data = _rows(batch["data"], path, image_size)
    try:
        labels = np.asarray(batch[labels_key])
    except Exception as e:
        raise DataError(f"{path}: labels are not a list of integers ({e})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be a flat list of integers, found {labels.dtype} {labels.shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must be in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}: the "
                        f"data has {num_classes} classes; correct the labels, or check data.format and data.labels")
    return data.reshape(-1, 3, image_size, image_size), labels.astype(np.int64)


def _names(raw: Any, path: Path, key: str) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{path}: {key} must be a non-empty list of names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]


def read_class_names(folder) -> list[str]:
    """Class names from batches.meta (b"label_names"); the standard ten if the file is missing."""
    path = Path(folder) / "batches.meta"
    if not path.exists():
        return list(CIFAR10_CLASSES)
    return _names(unpickle(path).get("label_names"), path, "label_names")


def read_cifar100_classes(folder, labels: str = "fine") -> list[str]:
    """CIFAR-100's fine (100) or coarse (20) class names from its meta file; numbers if it is missing."""
    path = Path(folder) / "meta"
    if not path.exists():
        return [str(i) for i in range(CIFAR100_COUNTS[labels])]
    return _names(unpickle(path).get(f"{labels}_label_names"), path, f"{labels}_label_names")
