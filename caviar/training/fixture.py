"""Write a small, learnable dataset in CIFAR-10's own python format (tests, smoke runs, benchmarks).

Each class is a fixed random low-frequency colour pattern (48x48, seeded). An image is a random
32x32 window of its class pattern (a shift of up to +-8 px), contrast- and brightness-jittered,
plus Gaussian pixel noise. Every pattern has the same mean colour and spread, so neither the
average colour nor a single pixel gives the label away; the spatial layout does, which a small
convnet learns in a couple of epochs. Measured with the defaults (2000 train, 500 val, seeds 0-2):
a 3-layer convnet reaches 66-91% validation accuracy after 2 epochs; the best single pixel
(Gaussian classifier on its 3 channels) 25-27%, the mean colour 21-29%; chance is 10%.

    python -m caviar.training.fixture OUT_DIR --train-size 2000 --test-size 500
"""

from __future__ import annotations

import argparse
import pickle
import struct
from pathlib import Path

import numpy as np

from caviar.training.data import CIFAR10_CLASSES, CIFAR10_FOLDER

_PATTERN = 48  # px; 32 + 2 * 8: every window of a +-8 px shift stays inside the pattern
_GRID = 6  # control points per side of the pattern: features about 10 px wide


class _Py2Pickler(pickle._Pickler):
    """Pickles like Python 2 + numpy 1.x wrote the published CIFAR-10 batches.

    Python 3 pickles bytes at protocol 2 through a `_codecs.encode` call, which a numpy-only
    reader rightly refuses; Python 2 wrote them as plain `str` opcodes (SHORT_BINSTRING /
    BINSTRING), which load as bytes with encoding="bytes". Arrays are written with the global
    `numpy.core.multiarray._reconstruct` as in the published files, not `numpy._core...` that
    numpy 2 would write, so these files match the real ones opcode for opcode in kind.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)

    def _save_uint8_array(self, arr: np.ndarray) -> None:
        if arr.dtype != np.uint8:
            raise TypeError(f"only uint8 arrays are written, got {arr.dtype}")
        w, save = self.write, self.save
        w(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n" + pickle.GLOBAL + b"numpy\nndarray\n")
        save((0,)), save(b"b"), w(pickle.TUPLE3 + pickle.REDUCE)  # empty array of the right type
        w(pickle.MARK), save(1), save(arr.shape)  # __setstate__: (version, shape, dtype, fortran, raw)
        w(pickle.GLOBAL + b"numpy\ndtype\n"), save(b"u1"), save(0), save(1), w(pickle.TUPLE3 + pickle.REDUCE)
        save((3, b"|", None, None, None, -1, -1, 0)), w(pickle.BUILD)  # dtype state: '|' = no byte order
        save(False), save(np.ascontiguousarray(arr).tobytes()), w(pickle.TUPLE + pickle.BUILD)

    dispatch[bytes] = _save_py2_str
    dispatch[np.ndarray] = _save_uint8_array


def _dump_py2(obj, path: Path) -> None:
    pickler = _Py2Pickler(buf := _Buffer(), protocol=2)
    pickler.fast = True  # no memo opcodes, like the published files (nothing here is shared)
    pickler.dump(obj)
    path.write_bytes(bytes(buf))


class _Buffer(bytearray):
    def write(self, data) -> None:
        self.extend(data)


def write_batch(path, images: np.ndarray, labels, batch_label: str, filenames: list[str]) -> None:
    """One batch file as the published set has it: images uint8 (N, 3072) channel-major rows."""
    if images.ndim != 2 or images.shape[1] != 3072 or not len(images) == len(labels) == len(filenames):
        raise ValueError(f"need images (N, 3072) with N labels and N file names, got {images.shape}")
    # Key order as in the published files: data, labels, batch_label, filenames.
    _dump_py2({b"data": images, b"labels": [int(v) for v in labels], b"batch_label": batch_label.encode(),
               b"filenames": [name.encode() for name in filenames]}, Path(path))


def write_meta(path, label_names: list[str], num_cases_per_batch: int) -> None:
    """batches.meta: the class names (what caviar.training.data.read_class_names reads)."""
    meta = {
        b"num_cases_per_batch": int(num_cases_per_batch),
        b"label_names": [name.encode() for name in label_names],
        b"num_vis": 3072,
    }
    _dump_py2(meta, Path(path))


def _smooth_patterns(rng: np.random.Generator, classes: int) -> np.ndarray:
    """(classes, 3, 48, 48) float patterns in about 0..1, all with the same per-channel mean/std."""
    grid = rng.uniform(0, 1, size=(classes, 3, _GRID, _GRID))
    # Bilinear upsampling as a matrix: up[i, k] is the weight of control point k at pixel i.
    up = np.stack([np.interp(np.linspace(0, _GRID - 1, _PATTERN), np.arange(_GRID), e) for e in np.eye(_GRID)], 1)
    pat = np.einsum("ik,nckl,jl->ncij", up, grid, up)
    pat -= pat.mean(axis=(2, 3), keepdims=True)
    pat /= pat.std(axis=(2, 3), keepdims=True) + 1e-8
    return 0.5 + 0.2 * pat


def _images(rng: np.random.Generator, patterns: np.ndarray, labels: np.ndarray, noise: float) -> np.ndarray:
    """uint8 (N, 3072) channel-major rows, the layout of CIFAR-10's b"data"."""
    n = len(labels)
    shift = _PATTERN - 32
    oy, ox = rng.integers(0, shift + 1, size=(2, n))
    rows = oy[:, None] + np.arange(32)  # (N, 32)
    cols = ox[:, None] + np.arange(32)
    x = patterns[labels[:, None, None, None], np.arange(3)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    contrast = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1))
    brightness = rng.uniform(-0.15, 0.15, size=(n, 1, 1, 1))
    x = (x - 0.5) * contrast + 0.5 + brightness + rng.normal(0, noise, size=x.shape)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8).reshape(n, -1)


def write_cifar_fixture(
    root, train_size: int = 2000, test_size: int = 500, seed: int = 0, noise: float = 0.25, batches: int = 1
) -> Path:
    """Write root/cifar-10-batches-py/{data_batch_1..batches, test_batch, batches.meta}; returns root.

    noise: std of the Gaussian pixel noise on the 0..1 scale (0.25 = 64 grey levels).
    Labels are balanced (size // 10 per class, the remainder to the first classes), then shuffled.
    """
    if train_size < batches or test_size < 1 or batches < 1:
        raise ValueError("need train_size >= batches >= 1 and test_size >= 1")
    root = Path(root)
    folder = root / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patterns = _smooth_patterns(rng, len(CIFAR10_CLASSES))

    def labels(n: int) -> np.ndarray:
        return rng.permutation(np.arange(n) % len(CIFAR10_CLASSES))

    def write(path: Path, title: str, y: np.ndarray, start: int, prefix: str) -> None:
        names = [f"{prefix}_{start + i:05d}.png" for i in range(len(y))]
        write_batch(path, _images(rng, patterns, y, noise), y, title, names)

    train_y = labels(train_size)
    start = 0
    for i, part in enumerate(np.array_split(train_y, batches), start=1):
        write(folder / f"data_batch_{i}", f"training batch {i} of {batches}", part, start, "fixture_train")
        start += len(part)
    write(folder / "test_batch", "testing batch 1 of 1", labels(test_size), 0, "fixture_test")
    write_meta(folder / "batches.meta", CIFAR10_CLASSES, num_cases_per_batch=-(-train_size // batches))
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m caviar.training.fixture", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to create cifar-10-batches-py/ in")
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.25, help="pixel noise std on the 0..1 scale")
    p.add_argument("--batches", type=int, default=1, help="number of data_batch_* files")
    a = p.parse_args(argv)
    root = write_cifar_fixture(a.out_dir, a.train_size, a.test_size, a.seed, a.noise, a.batches)
    print(root / CIFAR10_FOLDER)


if __name__ == "__main__":
    main()
