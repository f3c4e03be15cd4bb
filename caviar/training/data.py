"""Datasets on disk -> uint8 arrays; one fixed seeded train/val split; batched augmentation.

Three formats (data.format): CIFAR-10's python format (`cifar-10-batches-py/`), CIFAR-100's
(`cifar-100-python/`, with its 100 fine or 20 coarse labels: data.labels), both read with a
restricted unpickler, and a folder of images per class (caviar.training.imagefolder). A copy
already on disk or NFS works offline. Images stay uint8 NCHW (N, 3, S, S) until they reach the
trial's device: 150 MB for CIFAR-10's training set instead of 600 MB as float32. Augmentation and
normalisation are batched tensor ops on that device, so no DataLoader workers or PIL are needed.
Each dataset's channel statistics come from all its training images and are cached beside it
(caviar.training.datacache), so every trial, the ensemble and the export normalise alike.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caviar.config.loading import check_num_classes
from caviar.config.schema import Config, default_data_root
from caviar.errors import DataError
from caviar.training import datacache, imagefolder, memory
from caviar.training.cifar import (  # noqa: F401 (read_batch_file and the names: data's public API)
    CIFAR10_CLASSES,
    CIFAR100_COUNTS,
    read_batch_file,
    read_cifar100_classes,
    read_class_names,
)

FORMATS = ("cifar10", "cifar100", "imagefolder")
LABEL_KINDS = ("fine", "coarse")  # CIFAR-100's two label sets
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# Per-channel (R, G, B) statistics of the training set on the 0..1 scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class _Cifar:
    title: str
    folder: str
    url: str
    md5: str
    test_file: str


_CIFAR = {"cifar10": _Cifar("CIFAR-10", CIFAR10_FOLDER, CIFAR10_URL, CIFAR10_MD5, "test_batch"),
          "cifar100": _Cifar("CIFAR-100", CIFAR100_FOLDER, CIFAR100_URL, CIFAR100_MD5, "test")}


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

    train_x: np.ndarray  # uint8 (N_train, 3, S, S)
    train_y: np.ndarray  # int64 (N_train,)
    val_x: np.ndarray  # uint8 (val_size, 3, S, S)
    val_y: np.ndarray  # int64 (val_size,)
    classes: list[str] = field(default_factory=lambda: list(CIFAR10_CLASSES))
    # Per-channel (R, G, B) mean and std on the 0..1 scale of all the training images (before the
    # validation split and any subset: the same for every trial and the export); what normalize takes.
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    # What identifies the data (caviar.training.identity): digests of all the training images with
    # their labels, and of the validation split; {} for data made by hand.
    identity: dict[str, Any] = field(default_factory=dict)


def _train_files(folder: Path) -> list[Path]:
    # Only data_batch_<n>, in numeric order (data_batch_10 after data_batch_9; skip *.bak etc.).
    found = [p for p in folder.glob("data_batch_*") if re.fullmatch(r"data_batch_\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("_", 1)[1]))


def _is_cifar_folder(folder: Path, fmt: _Cifar) -> bool:
    if fmt.folder == CIFAR10_FOLDER:
        return bool(_train_files(folder)) or (folder / "test_batch").exists()
    return (folder / "train").is_file() or (folder / "test").is_file()


def _locate(root, download: bool, fmt: _Cifar = _CIFAR["cifar10"]) -> Path:
    """The cifar-10-batches-py (cifar-100-python) folder under root, or root itself, downloading it if allowed."""
    root = Path(root).expanduser()
    if _is_cifar_folder(root, fmt):
        return root  # root is the batches folder itself
    folder = root / fmt.folder
    if folder.is_dir():
        return folder
    if not root.exists() and (not download or root != default_data_root()):
        # Only the default root is created for a download: a mistyped data.root must not leave a
        # new folder (and a download) behind.
        raise DataError(
            f"data.root {root} does not exist; set data.root (or CAVIAR_DATA) to the folder that "
            f"contains '{fmt.folder}'" + (f", or create it first to download {fmt.title} into it" if download else
                                          ", or allow data.download")
        )
    reason = "data.download is off"
    if download:
        try:
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(fmt.url, download_root=str(root), md5=fmt.md5)
        except Exception as e:  # offline, proxy, disk full, md5 mismatch: all end the same way
            reason = f"{type(e).__name__}: {e}"
        if folder.is_dir():
            return folder
    raise DataError(
        f"{fmt.title} not found at {root}/{fmt.folder} and it could not be downloaded ({reason}). "
        f"Put the extracted '{fmt.folder}' folder there (from {fmt.url}) or point data.root / "
        "CAVIAR_DATA at the folder that contains it."
    )


def _check_choices(format: str, labels: str, image_size: int) -> None:
    if format not in FORMATS:
        raise DataError(f"data.format must be one of {', '.join(FORMATS)}, got {format!r}")
    if labels not in LABEL_KINDS:
        raise DataError(f"data.labels must be fine or coarse (CIFAR-100's 100 or 20 classes), got {labels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DataError(f"data.image_size must be a positive whole number of pixels, got {image_size!r}")


def _cifar_classes(folder: Path, format: str, labels: str) -> list[str]:
    if format == "cifar100":
        return read_cifar100_classes(folder, labels)
    names = read_class_names(folder)
    if len(names) != 10:
        raise DataError(f"{folder}/batches.meta names {len(names)} classes, but CIFAR-10's format holds 10 (labels "
                        "0..9): correct batches.meta, or write the data as an image folder (data.format: imagefolder)")
    return names


def _read(path: Path, format: str, labels: str, num_classes: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    # Only what differs from CIFAR-10's defaults is passed: CIFAR-10 at 32 px stays the plain
    # read_batch_file(path) call (tests watch that call to see which files are opened, and when).
    options: dict[str, Any] = {}
    if format == "cifar100":
        options |= {"labels_key": f"{labels}_labels", "num_classes": num_classes}
    if image_size != 32:
        options["image_size"] = image_size
    return read_batch_file(path, **options)


def _check_num_classes(num_classes: int | None, classes: list[str], where: Path, format: str, labels: str) -> None:
    what = f"{format}, {labels} labels" if format == "cifar100" else format
    check_num_classes(num_classes, len(classes), f"the data at {where} ({what})")


def _load_train(root, download: bool, format: str, labels: str, image_size: int,
                num_classes: int | None) -> tuple[np.ndarray, np.ndarray, list[str], Path, str]:
    """(images, labels, classes, data folder, cache key of the images); the class count is
    checked against num_classes before any image is read."""
    _check_choices(format, labels, image_size)
    if format == "imagefolder":
        classes = imagefolder.class_names(root)
        _check_num_classes(num_classes, classes, Path(root).expanduser(), format, labels)
        split = imagefolder.load_split(root, "train", image_size, mmap=True)  # only indexed: the split copies
        return split.images, split.labels, classes, Path(root).expanduser(), split.key
    fmt = _CIFAR[format]
    folder = _locate(root, download, fmt)
    classes = _cifar_classes(folder, format, labels)
    _check_num_classes(num_classes, classes, folder, format, labels)
    files = _train_files(folder) if format == "cifar10" else [p for p in [folder / "train"] if p.is_file()]
    if not files:
        expected = "data_batch_* files" if format == "cifar10" else "train file"
        raise DataError(f"{folder} has no {expected}; extract the {fmt.title} archive there again")
    parts = [_read(p, format, labels, len(classes), image_size) for p in files]
    key = f"{format}-{image_size}px-{datacache.fingerprint(files, folder, image_size)}"
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]), classes, folder, key


def load_train_set(root, download: bool = True, *, format: str = "cifar10", labels: str = "fine",
                   image_size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All training images (data_batch_* concatenated, CIFAR-100's train, an image folder's train/),
    their labels and the class names; the test set is not touched (a sweep never reads it, nor
    needs it to exist)."""
    images, y, classes, _, _ = _load_train(root, download, format, labels, image_size, None)
    return images, y, classes


def load_cifar10(root, download: bool = True) -> Cifar10:
    """All data_batch_* (concatenated) and test_batch from root/cifar-10-batches-py."""
    train_images, train_labels, classes = load_train_set(root, download)
    test_images, test_labels = load_test_set(root, download=False)
    return Cifar10(train_images, train_labels, test_images, test_labels, classes)


def load_test_set(root, download: bool = True, *, format: str = "cifar10", labels: str = "fine",
                  image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The test set only: uint8 (N, 3, S, S), int64 (N,). For the final evaluation, never the sweep."""
    _check_choices(format, labels, image_size)
    if format == "imagefolder":
        split = imagefolder.load_split(root, "test", image_size)
        return split.images, split.labels
    fmt = _CIFAR[format]
    folder = _locate(root, download, fmt)
    path = folder / fmt.test_file
    if not path.exists():
        raise DataError(f"{path} is missing; extract the {fmt.title} archive into {folder.parent} again")
    num_classes = 10 if format == "cifar10" else len(_cifar_classes(folder, format, labels))
    return _read(path, format, labels, num_classes, image_size)


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


def prepare_data(root, val_size: int, train_subset=None, split_seed: int = 0, download: bool = True, *,
                 format: str = "cifar10", labels: str = "fine", image_size: int = 32,
                 num_classes: int | None = None) -> SplitData:
    """Load, take the channel statistics of all training images, split off validation, then subset
    only the training part. No test set here. num_classes (model.num_classes): None = the data's."""
    images, y, classes, folder, key = _load_train(root, download, format, labels, image_size, num_classes)
    mean, std = datacache.cached_stats(folder, key, images)
    train_idx, val_idx = split_train_val(images, y, val_size, split_seed)
    if train_subset is not None:
        train_idx = train_idx[balanced_subset(y[train_idx], train_subset, seed=split_seed)]
    identity = {"images": int(len(y)), "content": _digest(images, y), "validation": _digest(val_idx)}
    return SplitData(train_x=images[train_idx], train_y=y[train_idx], val_x=images[val_idx], val_y=y[val_idx],
                     classes=classes, mean=mean, std=std, identity=identity)


def _digest(*arrays: np.ndarray) -> str:
    """16 hex digits of BLAKE2b over the arrays' bytes and shapes: the same data gives the same
    digest wherever its files lie and whatever their times (~0.2 s for CIFAR-10's 150 MB)."""
    digest = hashlib.blake2b(digest_size=8)
    for array in arrays:
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def image_counts(config: Config) -> tuple[int, int]:
    """(training images, test images) of `config`'s data, from the file listing or the files' sizes
    (an upper bound within 2% for CIFAR's batch files); nothing is decoded."""
    d = config.data
    root = Path(d.root).expanduser()
    if d.format == "imagefolder":
        return imagefolder.count_images(root, "train"), imagefolder.count_images(root, "test")
    fmt = _CIFAR[d.format]
    folder = root / fmt.folder if (root / fmt.folder).is_dir() else root
    files = _train_files(folder) if d.format == "cifar10" else [p for p in [folder / "train"] if p.is_file()]
    return sum(p.stat().st_size for p in files) // (3 * 32 * 32), estimated_test_images(root, d.format)


def estimated_test_images(root, format: str = "cifar10") -> int:
    """About how many images the test set holds, without reading it (so that a time estimate can
    be made before the weights are chosen): a CIFAR test file's size over 3,072 bytes an image (an
    upper bound within 2%), an image folder's files; 0 if it is not found."""
    root = Path(root).expanduser()
    if format == "imagefolder":
        from caviar.training.imagefolder import count_images

        return count_images(root, "test")
    fmt = _CIFAR[format]
    for file in (root / fmt.test_file, root / fmt.folder / fmt.test_file):
        if file.is_file():
            return file.stat().st_size // (3 * 32 * 32)  # a CIFAR row: 1024 R, 1024 G, 1024 B bytes
    return 0


def data_for(config: Config, *, subset: bool = True) -> SplitData:
    """The dataset `config.data` names, split as every trial sees it; `subset=False` leaves out
    data.train_subset. A stated model.num_classes is checked from the class list before any image is read.)"""
    d = config.data
    memory.check_fits(config, memory.estimate(config, *image_counts(config)))  # before any image is decoded
    return prepare_data(d.root, val_size=d.val_size, train_subset=d.train_subset if subset else None,
                        split_seed=d.split_seed, download=d.download, format=d.format, labels=d.labels,
                        image_size=d.image_size, num_classes=config.model.num_classes)


def held_out_test_set(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The test set of the dataset `config.data` names: for the final evaluation only."""
    d = config.data
    return load_test_set(d.root, download=d.download, format=d.format, labels=d.labels, image_size=d.image_size)


def describe_dataset(data: SplitData, test_labels: np.ndarray | None = None) -> dict[str, Any]:
    """What `caviar check` tells about a dataset: images per split, classes, balance, statistics.
    Balance is over all the training images (train + val); `empty` lists classes without any."""
    counts = np.bincount(np.concatenate([data.train_y, data.val_y]), minlength=len(data.classes))
    images = {"train": len(data.train_y), "val": len(data.val_y)}
    if test_labels is not None:
        images["test"] = len(test_labels)
    return {
        "classes": len(data.classes),
        "class_names": list(data.classes),
        "image_shape": list(data.train_x.shape[1:]),
        "images": images,
        "per_class": {"min": int(counts.min()), "max": int(counts.max()),
                      "smallest": data.classes[int(counts.argmin())], "largest": data.classes[int(counts.argmax())],
                      "empty": [name for name, n in zip(data.classes, counts) if n == 0]},
        "mean": [round(v, 4) for v in data.mean],
        "std": [round(v, 4) for v in data.std],
    }


@functools.lru_cache(maxsize=None)
def _channel_stats(device: torch.device, dtype: torch.dtype, mean: tuple[float, ...] = CIFAR10_MEAN,
                   std: tuple[float, ...] = CIFAR10_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (3, 1, 1), made once per device, dtype and statistics: building them from
    Python numbers copies them host-to-device, and on CUDA each such copy waits for the GPU
    (normalize runs on every training step and evaluation batch)."""
    mean_t = torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1)
    return mean_t, std_t


def normalize(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32, mean=None, std=None) -> torch.Tensor:
    """uint8 (..., 3, H, W) in 0..255 -> dtype, per-channel standardised: (x/255 - mean) / std.

    mean, std: 3 floats on the 0..1 scale (a dataset's, SplitData.mean/std); None = CIFAR-10's.
    """
    if mean is None and std is None:
        m, s = _channel_stats(images_uint8.device, dtype)
    else:
        m, s = _channel_stats(images_uint8.device, dtype, tuple(map(float, CIFAR10_MEAN if mean is None else mean)),
                              tuple(map(float, CIFAR10_STD if std is None else std)))
    return (images_uint8.to(dtype) / 255 - m) / s
