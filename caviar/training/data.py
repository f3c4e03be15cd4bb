"""CIFAR-10 on disk -> uint8 arrays; one fixed seeded train/val split; batched augmentation.

Data is read from CIFAR-10's own python format (``cifar-10-batches-py/``), so a copy already on
disk or NFS works offline. Images stay uint8 NCHW (N, 3, 32, 32) until they reach the trial's
device: 150 MB for the whole training set instead of 600 MB as float32. Augmentation and
normalisation are batched tensor ops on that device, so no DataLoader workers or PIL are needed.
"""

from __future__ import annotations

import functools
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caviar.config import default_data_root
from caviar.errors import DataError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
# Per-channel (R, G, B) statistics of the training set on the 0..1 scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_IMAGE_BYTES = 3 * 32 * 32  # one row of b"data": 1024 R, then 1024 G, then 1024 B, each row-major


# ---------------------------------------------------------------- reading batch files
# Unpickling runs whatever callable a file names, so only numpy's array reconstruction is
# allowed. numpy 1.x pickled arrays via numpy.core.*, numpy 2 via numpy._core.*; both names map to
# the installed numpy's functions, taken from ndarray.__reduce_ex__ so no deprecated module is
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
                f"refusing to unpickle {module}.{name} from {self.source}: a CIFAR-10 batch holds only "
                "numpy arrays; the file is corrupt or malicious"
            ) from None


def _unpickle(path: Path) -> dict:
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
            f"{path} is not a readable CIFAR-10 pickle ({type(e).__name__}: {e}); the file is "
            "truncated or corrupt, extract it again"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR-10 batch")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch_file(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch -> images uint8 (N, 3, 32, 32) and labels int64 (N,)."""
    path = Path(path)
    batch = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{path} has no {' or '.join(missing)} entry; keys found: {sorted(map(str, batch))}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data must be a uint8 array, found {kind}")
    if data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
        raise DataError(f"{path}: data must have shape (N, {_IMAGE_BYTES}), found {data.shape}")
    try:
        labels = np.asarray(batch["labels"])
    except Exception as e:
        raise DataError(f"{path}: labels are not a list of integers ({e})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be a flat list of integers, found {labels.dtype} {labels.shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_class_names(folder) -> list[str]:
    """Class names from batches.meta (b"label_names"); the standard ten if the file is missing."""
    path = Path(folder) / "batches.meta"
    if not path.exists():
        return list(CIFAR10_CLASSES)
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: label_names must be a non-empty list of names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


# ---------------------------------------------------------------- the dataset
@dataclass
class Cifar10:
    train_images: np.ndarray  # uint8 (50000, 3, 32, 32) for the published set
    train_labels: np.ndarray  # int64 (50000,)
    test_images: np.ndarray  # uint8 (10000, 3, 32, 32)
    test_labels: np.ndarray  # int64 (10000,)
    classes: list[str]


@dataclass
class SplitData:
    """What every trial gets: the same train/val split; the test set is deliberately absent."""

    train_x: np.ndarray  # uint8 (N_train, 3, 32, 32)
    train_y: np.ndarray  # int64 (N_train,)
    val_x: np.ndarray  # uint8 (val_size, 3, 32, 32)
    val_y: np.ndarray  # int64 (val_size,)
    classes: list[str]


def _train_files(folder: Path) -> list[Path]:
    # Only data_batch_<n>, in numeric order (data_batch_10 after data_batch_9; skip *.bak etc.).
    found = [p for p in folder.glob("data_batch_*") if re.fullmatch(r"data_batch_\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("_", 1)[1]))


def _locate(root, download: bool) -> Path:
    """The cifar-10-batches-py folder under root (or root itself), downloading it if allowed."""
    root = Path(root).expanduser()
    if _train_files(root) or (root / "test_batch").exists():
        return root  # root is the cifar-10-batches-py folder itself
    folder = root / CIFAR10_FOLDER
    if folder.is_dir():
        return folder
    if not root.exists() and (not download or root != default_data_root()):
        # Only the default root is created for a download: a mistyped data.root must not leave a
        # new folder (and a download) behind.
        raise DataError(
            f"data.root {root} does not exist; set data.root (or CAVIAR_DATA) to the folder that "
            f"contains '{CIFAR10_FOLDER}'" + (", or create it first to download CIFAR-10 into it" if download else
                                              ", or allow data.download")
        )
    reason = "data.download is off"
    if download:
        try:
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(CIFAR10_URL, download_root=str(root), md5=CIFAR10_MD5)
        except Exception as e:  # offline, proxy, disk full, md5 mismatch: all end the same way
            reason = f"{type(e).__name__}: {e}"
        if folder.is_dir():
            return folder
    raise DataError(
        f"CIFAR-10 not found at {root}/{CIFAR10_FOLDER} and it could not be downloaded ({reason}). "
        f"Put the extracted '{CIFAR10_FOLDER}' folder there (from {CIFAR10_URL}) or point data.root / "
        "CAVIAR_DATA at the folder that contains it."
    )


def load_train_set(root, download: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All data_batch_* (concatenated) and the class names; the test set is not touched (a sweep
    never reads it, nor needs it to exist)."""
    folder = _locate(root, download)
    train_files = _train_files(folder)
    if not train_files:
        raise DataError(f"{folder} has no data_batch_* files; extract the CIFAR-10 archive there again")
    parts = [read_batch_file(p) for p in train_files]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]), read_class_names(folder)


def load_cifar10(root, download: bool = True) -> Cifar10:
    """All data_batch_* (concatenated) and test_batch from root/cifar-10-batches-py."""
    train_images, train_labels, classes = load_train_set(root, download)
    test_images, test_labels = load_test_set(root, download=False)
    return Cifar10(train_images, train_labels, test_images, test_labels, classes)


def load_test_set(root, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """test_batch only: uint8 (N, 3, 32, 32), int64 (N,). For the final evaluation, never the sweep."""
    folder = _locate(root, download)
    path = folder / "test_batch"
    if not path.exists():
        raise DataError(f"{path} is missing; extract the CIFAR-10 archive into {folder.parent} again")
    return read_batch_file(path)


# ---------------------------------------------------------------- split and subset
def split_train_val(images, labels, val_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), sorted int64: the first val_size of one seeded permutation are validation.

    Depends only on (N, val_size, seed), so every trial and process sees the same split (as long as
    numpy's PCG64 permutation stays as it has been since numpy 1.17).
    """
    n = len(labels)
    if images is not None and len(images) != n:
        raise DataError(f"{len(images)} images but {n} labels")
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or not 0 <= val_size < n:
        raise DataError(f"data.val_size must be an integer in 0..{n - 1} (there are {n} training images), got {val_size!r}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]).astype(np.int64), np.sort(perm[:val_size]).astype(np.int64)


def balanced_subset(labels, size, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced subset; size is a count (>= 1) or a fraction in (0, 1]."""
    labels = np.asarray(labels)
    n = len(labels)
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and 1 <= size <= n:
        count = int(size)
    elif isinstance(size, (float, np.floating)) and 0 < size <= 1:
        count = max(1, round(float(size) * n))
    else:
        raise DataError(
            f"data.train_subset must be a count in 1..{n} or a fraction in (0, 1] of the {n} training "
            f"images, got {size!r}"
        )
    rng = np.random.default_rng(seed)
    classes, avail = np.unique(labels, return_counts=True)
    quota = np.zeros_like(avail)
    order = rng.permutation(len(classes))  # which classes get the +1 when count % classes != 0
    # Water-filling = round-robin in bulk: share what is left equally among classes not yet
    # exhausted; a class that runs short gives its unused share to the others next round.
    while (left := count - quota.sum()) > 0:
        open_ = order[quota[order] < avail[order]]
        share = left // len(open_)
        if share == 0:
            quota[open_[:left]] += 1
            break
        quota[open_] += np.minimum(share, avail[open_] - quota[open_])
    picks = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def prepare_data(root, val_size: int, train_subset=None, split_seed: int = 0, download: bool = True) -> SplitData:
    """Load, split off validation, then subset only the training part. No test set here."""
    images, labels, classes = load_train_set(root, download=download)
    train_idx, val_idx = split_train_val(images, labels, val_size, split_seed)
    if train_subset is not None:
        train_idx = train_idx[balanced_subset(labels[train_idx], train_subset, seed=split_seed)]
    return SplitData(train_x=images[train_idx], train_y=labels[train_idx], val_x=images[val_idx],
                     val_y=labels[val_idx], classes=classes)


# ---------------------------------------------------------------- batched augmentation
def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop from a `pad`-pixel zero-padded image plus horizontal flip (p=0.5), per image.

    images: (B, C, H, W), any dtype/device; returns the same shape, dtype and device. The crops are
    one gather from a view of every window of the padded batch (no per-pixel index arithmetic:
    2.5x faster on CPU than indexing each pixel), the flips one select.
    """
    if images.ndim != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    dev = images.device
    rand_dev = generator.device if generator is not None else dev
    # Offsets in 0..2*pad (pixels into the padded image); pad=4 means shifts of -4..+4.
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=rand_dev).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=rand_dev).to(dev)
    flip = (torch.rand(b, generator=generator, device=rand_dev) < 0.5).to(dev)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images  # (B, C, H+2p, W+2p), zeros
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W): a view, no copy
    crops = windows[torch.arange(b, device=dev), :, dy, dx]  # (B, C, H, W)
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


@functools.lru_cache(maxsize=None)
def _channel_stats(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (3, 1, 1), made once per device and dtype: building them from Python
    numbers copies them host-to-device, and on CUDA each such copy waits for the GPU (normalize
    runs on every training step and evaluation batch)."""
    mean = torch.tensor(CIFAR10_MEAN, dtype=dtype, device=device).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=dtype, device=device).view(3, 1, 1)
    return mean, std


def normalize(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., 3, H, W) in 0..255 -> dtype, per-channel standardised with CIFAR-10 statistics."""
    mean, std = _channel_stats(images_uint8.device, dtype)
    return (images_uint8.to(dtype) / 255 - mean) / std
