"""Write a small, learnable dataset in CIFAR-10's or CIFAR-100's own python format, or as a folder
of PNG images per class (tests, smoke runs, benchmarks).

Each class is a fixed random low-frequency colour pattern (48x48, seeded). An image is a random
32x32 window of its class pattern (a shift of up to +-8 px), contrast- and brightness-jittered,
plus Gaussian pixel noise. Every pattern has the same mean colour and spread, so neither the
average colour nor a single pixel gives the label away; the spatial layout does, which a small
convnet learns in a couple of epochs. Measured with the defaults (2000 train, 500 val, seeds 0-2):
a 3-layer convnet reaches 66-91% validation accuracy after 2 epochs; the best single pixel
(Gaussian classifier on its 3 channels) 25-27%, the mean colour 21-29%; chance is 10%.

    python -m caviar.training.fixture OUT_DIR --train-size 2000 --test-size 500
    python -m caviar.training.fixture OUT_DIR --format cifar100 --classes 100
    python -m caviar.training.fixture OUT_DIR --format imagefolder --classes 26
"""

from __future__ import annotations

import argparse
import pickle
import struct
from pathlib import Path

import numpy as np

from caviar.training.data import CIFAR10_CLASSES, CIFAR10_FOLDER, CIFAR100_FOLDER

_PATTERN = 48  # px; 32 + 2 * 8: every window of a +-8 px shift stays inside the pattern
_GRID = 6  # control points per side of the pattern: features about 10 px wide
# Shift (px, +-) of the CIFAR-100 and image folder fixtures: with 26-100 classes of a few dozen
# images each, a +-8 px shift leaves a small convnet near chance after 3 epochs (4% on 100
# classes); +-2 px gives 46% fine / 69% coarse on 100 / 20 classes from 2500 images.
_MANY_CLASSES_SHIFT = 2


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


def _smooth_patterns(rng: np.random.Generator, classes: int, groups: int = 0, share: float = 0.5) -> np.ndarray:
    """(classes, 3, 48, 48) float patterns in about 0..1, all with the same per-channel mean/std.

    groups > 0: class c belongs to group c * groups // classes, and `share` of its pattern's
    control points is its group's (CIFAR-100's coarse labels: learnable as such, not just as a
    union of unrelated fine patterns).
    """
    grid = rng.uniform(0, 1, size=(classes, 3, _GRID, _GRID))
    if groups:
        base = rng.uniform(0, 1, size=(groups, 3, _GRID, _GRID))
        grid = share * base[np.arange(classes) * groups // classes] + (1 - share) * grid
    # Bilinear upsampling as a matrix: up[i, k] is the weight of control point k at pixel i.
    up = np.stack([np.interp(np.linspace(0, _GRID - 1, _PATTERN), np.arange(_GRID), e) for e in np.eye(_GRID)], 1)
    pat = np.einsum("ik,nckl,jl->ncij", up, grid, up)
    pat -= pat.mean(axis=(2, 3), keepdims=True)
    pat /= pat.std(axis=(2, 3), keepdims=True) + 1e-8
    return 0.5 + 0.2 * pat


def _images(rng: np.random.Generator, patterns: np.ndarray, labels: np.ndarray, noise: float,
            shift: int = 8) -> np.ndarray:
    """uint8 (N, 3072) channel-major rows, the layout of CIFAR-10's b"data"; each a window of its
    class pattern shifted by up to +-shift px from the centre (at most 8)."""
    n = len(labels)
    oy, ox = rng.integers(0, 2 * shift + 1, size=(2, n)) + (_PATTERN - 32) // 2 - shift
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




def _balanced(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    """n labels, n // classes per class (the remainder to the first classes), shuffled."""
    return rng.permutation(np.arange(n) % classes)


def write_cifar100_fixture(
    root, train_size: int = 2000, test_size: int = 500, seed: int = 0, noise: float = 0.25, classes: int = 100,
    coarse_classes: int = 20,
) -> Path:
    """Write root/cifar-100-python/{train, test, meta} as the published CIFAR-100 has them; returns root.

    Fine class c belongs to coarse class c * coarse_classes // classes (c // 5 for 100 and 20), and
    half its pattern is its coarse class's, so the coarse labels are learnable as such. Images shift
    by up to +-2 px (not 8: see _MANY_CLASSES_SHIFT). Names: fine_000.., coarse_00...
    """
    if not 1 <= coarse_classes <= classes or train_size < 1 or test_size < 1:
        raise ValueError("need classes >= coarse_classes >= 1, train_size >= 1 and test_size >= 1")
    root = Path(root)
    folder = root / CIFAR100_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patterns = _smooth_patterns(rng, classes, groups=coarse_classes)
    for name, size in (("train", train_size), ("test", test_size)):
        fine = _balanced(rng, size, classes)
        # Key order as in the published files: filenames, batch_label, fine_labels, coarse_labels, data.
        _dump_py2({b"filenames": [f"fixture_{name}_{i:05d}.png".encode() for i in range(size)],
                   b"batch_label": f"{name}ing batch 1 of 1".encode(),
                   b"fine_labels": [int(v) for v in fine],
                   b"coarse_labels": [int(v) * coarse_classes // classes for v in fine],
                   b"data": _images(rng, patterns, fine, noise, _MANY_CLASSES_SHIFT)}, folder / name)
    _dump_py2({b"fine_label_names": [f"fine_{i:03d}".encode() for i in range(classes)],
               b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(coarse_classes)]}, folder / "meta")
    return root


def imagefolder_class_names(classes: int) -> list[str]:
    """A..Z for up to 26 classes (a letters set), class_000.. beyond: sorted, as the folders are read."""
    if classes <= 26:
        return [chr(ord("A") + i) for i in range(classes)]
    return [f"class_{i:03d}" for i in range(classes)]


def write_imagefolder_fixture(
    root, train_size: int = 1040, test_size: int = 260, seed: int = 0, noise: float = 0.25, classes: int = 26,
) -> Path:
    """Write root/train/<class>/*.png and root/test/<class>/*.png (32x32 RGB, Pillow); returns root.

    Sizes are balanced over the classes (the remainder to the first ones); every class gets at
    least one image per split, so no class folder is empty. Images shift by up to +-2 px.
    """
    from PIL import Image

    if classes < 2 or train_size < classes or test_size < classes:
        raise ValueError("need classes >= 2 and at least one train and one test image per class")
    root = Path(root)
    names = imagefolder_class_names(classes)
    rng = np.random.default_rng(seed)
    patterns = _smooth_patterns(rng, classes)
    for split, size in (("train", train_size), ("test", test_size)):
        labels = _balanced(rng, size, classes)
        rows = _images(rng, patterns, labels, noise, _MANY_CLASSES_SHIFT)
        pixels = rows.reshape(size, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, H, W, 3), as Pillow takes it
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (label, image) in enumerate(zip(labels, pixels)):
            Image.fromarray(image, "RGB").save(root / split / names[label] / f"{i:05d}.png")
    return root


DEFAULT_CLASSES = {"cifar10": 10, "cifar100": 100, "imagefolder": 26}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m caviar.training.fixture", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to write the dataset in (then data.root=OUT_DIR)")
    p.add_argument("--format", choices=sorted(DEFAULT_CLASSES), default="cifar10",
                   help="cifar10: cifar-10-batches-py/; cifar100: cifar-100-python/; imagefolder: train/ and test/")
    p.add_argument("--classes", type=int, default=None,
                   help="number of classes (fine ones for cifar100); default 10, 100 or 26 by format")
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.25, help="pixel noise std on the 0..1 scale")
    p.add_argument("--batches", type=int, default=1, help="number of data_batch_* files (cifar10)")
    a = p.parse_args(argv)
    classes = DEFAULT_CLASSES[a.format] if a.classes is None else a.classes
    if a.format == "cifar10" and classes != 10:
        p.error("CIFAR-10's format holds 10 classes; use --format cifar100 or imagefolder for another count")
    if a.format == "cifar100":
        root = write_cifar100_fixture(a.out_dir, a.train_size, a.test_size, a.seed, a.noise, classes=classes,
                                      coarse_classes=min(20, classes))
        print(root / CIFAR100_FOLDER)
    elif a.format == "imagefolder":
        print(write_imagefolder_fixture(a.out_dir, a.train_size, a.test_size, a.seed, a.noise, classes=classes))
    else:
        root = write_cifar_fixture(a.out_dir, a.train_size, a.test_size, a.seed, a.noise, a.batches)
        print(root / CIFAR10_FOLDER)


if __name__ == "__main__":
    main()
