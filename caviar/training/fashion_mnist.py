"""Fashion-MNIST's IDX files -> CIFAR-10's python format, so caviar reads it unchanged.

Each 28x28 grey image is zero-padded by 2 px to 32x32 and repeated on the three channels (a row
of b"data" is 1024 R, 1024 G, 1024 B, as in CIFAR-10). The 60,000 training images become
data_batch_1..5 (12,000 each, in the IDX order), the 10,000 test images test_batch, and
batches.meta holds Fashion-MNIST's ten class names. Normalisation still uses CIFAR-10's channel
statistics (caviar.training.data.normalize): a fixed affine map, which batch norm and the first layer absorb.

    python -m caviar.training.fashion_mnist OUT [--idx-dir /usr/share/datasets/fashion-mnist]
    caviar sweep --set data.root=OUT --set data.download=false

The IDX header is parsed strictly (magic number, element type, dimensions, exact size) and the
files are read as raw bytes; nothing is unpickled. The output is written to a temp folder and
renamed into place; an existing OUT/cifar-10-batches-py is replaced only if this module wrote it
(it carries fashion-mnist.json, which also records the sources' SHA-256, so an up-to-date
conversion is kept as it is).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

from caviar.training.data import CIFAR10_FOLDER, DataError
from caviar.training.fixture import write_batch, write_meta

DEFAULT_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
# (stem of the file, as published) -> role; each is read as <stem> or <stem>.gz
SOURCES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MARKER = "fashion-mnist.json"  # written into the output folder: "this conversion is ours"
# The converter's name in the marker: a fixed id, not the module's path (which was caviar.fashion_mnist
# before the layer folders, and is "__main__" under `python -m`, as markers written then say).
CONVERTER = "caviar.fashion_mnist"
CONVERTERS = (CONVERTER, "caviar.training.fashion_mnist", "__main__")
FORMAT_VERSION = 1
# data_batch_1..5 as in CIFAR-10 (torchvision's CIFAR10 opens exactly these names): 12,000 images
# each for Fashion-MNIST's 60,000, so none is left out.
TRAIN_BATCHES = 5
_UBYTE = 0x08  # IDX element type: unsigned byte
_SIDE = 28
_PAD = 2  # (32 - 28) / 2


# ---------------------------------------------------------------- reading IDX
def _raw(path: Path) -> bytes:
    """The file's bytes, gunzipped if it starts with gzip's magic (whatever its name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: the gzip stream is truncated or corrupt ({e}); download the file again") from None
    return raw


def read_idx(path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions -> uint8 array of that shape.

    Header: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32; the data follows, exactly prod(dims) bytes.
    """
    path = Path(path)
    raw = _raw(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header; the file is truncated")
    zero, kind, dims = struct.unpack(">HBB", raw[:4])
    magic = int.from_bytes(raw[:4], "big")
    if zero != 0 or kind != _UBYTE or dims != ndim:
        raise DataError(f"{path}: magic number {magic:#010x}, expected {(_UBYTE << 8) | ndim:#010x} (an IDX file of "
                        f"unsigned bytes with {ndim} dimension{'s' * (ndim > 1)}); wrong or corrupt file")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: the IDX header is truncated ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DataError(f"{path}: the header says {' x '.join(map(str, shape))} = {expected} bytes of data, the file "
                        f"holds {len(raw) - header}: it is {what}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(idx_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (idx_dir / name).is_file():
            return idx_dir / name
    raise DataError(f"{idx_dir / stem}(.gz) not found; point --idx-dir at the folder holding Fashion-MNIST's four "
                    "IDX files (Debian: apt install dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist)")


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels (N,) in 0..9, checked against each other."""
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
                        f"{_SIDE}x{_SIDE} (Fashion-MNIST)")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{images_path} holds no images")
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path}: labels must be in 0..9, found {int(labels.max())}")
    return images, labels


def to_cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) grey -> (N, 3072) uint8 CIFAR rows: zero-padded to 32x32, same plane in R, G, B."""
    out = np.zeros((len(images), 3, 32, 32), dtype=np.uint8)
    out[:, :, _PAD:_PAD + _SIDE, _PAD:_PAD + _SIDE] = images[:, None]
    return out.reshape(len(images), -1)


# ---------------------------------------------------------------- writing
def _sources(idx_dir: Path) -> dict[str, Path]:
    return {role: _find(idx_dir, stem) for role, stem in SOURCES.items()}


def _fingerprint(paths: dict[str, Path]) -> dict[str, dict[str, object]]:
    return {role: {"file": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for role, p in paths.items()}


def _marker(folder: Path) -> dict | None:
    """The marker of a previous conversion in `folder`, or None if it has none (not ours)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("converter") in CONVERTERS else None


def _write(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> None:
    (train_x, train_y), (test_x, test_y) = train, test
    batches = min(TRAIN_BATCHES, len(train_y))
    start = 0
    for i, idx in enumerate(np.array_split(np.arange(len(train_y)), batches), start=1):
        names = [f"fashion_mnist_train_{start + j:05d}.png" for j in range(len(idx))]
        write_batch(folder / f"data_batch_{i}", to_cifar_rows(train_x[idx]), train_y[idx],
                    f"training batch {i} of {batches}", names)
        start += len(idx)
    names = [f"fashion_mnist_test_{j:05d}.png" for j in range(len(test_y))]
    write_batch(folder / "test_batch", to_cifar_rows(test_x), test_y, "testing batch 1 of 1", names)
    write_meta(folder / "batches.meta", FASHION_MNIST_CLASSES, num_cases_per_batch=-(-len(train_y) // batches))


def convert(out, idx_dir=DEFAULT_IDX_DIR, log=print) -> Path:
    """Write out/cifar-10-batches-py from the IDX files in idx_dir; returns `out` (caviar's data.root).

    An up-to-date earlier conversion (same source checksums) is kept; an older one is replaced;
    a folder this module did not write is never touched (DataError).
    """
    out, idx_dir = Path(out).expanduser(), Path(idx_dir).expanduser()
    target = out / CIFAR10_FOLDER
    previous = _marker(target) if target.exists() else None
    if target.exists() and previous is None:
        raise DataError(f"{target} exists and is not a previous Fashion-MNIST conversion (no {MARKER} in it); "
                        "refusing to overwrite it: remove it or choose another OUT")
    paths = _sources(idx_dir)
    sources = _fingerprint(paths)
    if previous is not None and previous.get("version") == FORMAT_VERSION and previous.get("sources") == sources:
        log(f"{target}: already converted from these files, kept")
        return out
    train = read_split(paths["train_images"], paths["train_labels"])
    test = read_split(paths["test_images"], paths["test_labels"])
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CIFAR10_FOLDER}.tmp-", dir=out))  # same file system: rename is atomic
    try:
        _write(tmp, train, test)
        marker = {"converter": CONVERTER, "version": FORMAT_VERSION, "sources": sources,
                  "train_images": int(len(train[1])), "test_images": int(len(test[1])),
                  "classes": FASHION_MNIST_CLASSES, "layout": "28x28 grey zero-padded 2 px to 32x32, on R, G and B"}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if target.exists():  # a previous conversion of ours: swap, then delete the old one
            old = Path(tempfile.mkdtemp(prefix=f".{CIFAR10_FOLDER}.old-", dir=out))
            target.rename(old / CIFAR10_FOLDER)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"{target}: {len(train[1])} training images in data_batch_*, {len(test[1])} in test_batch")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m caviar.training.fashion_mnist", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder to create cifar-10-batches-py/ in (then data.root=OUT)")
    p.add_argument("--idx-dir", type=Path, default=DEFAULT_IDX_DIR,
                   help=f"folder with the four *-ubyte(.gz) files (default {DEFAULT_IDX_DIR})")
    a = p.parse_args(argv)
    try:
        convert(a.out, a.idx_dir)
    except DataError as e:
        print(f"caviar: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
