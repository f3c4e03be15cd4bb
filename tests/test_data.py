"""Tests for caviar.training.data (reading CIFAR-10, CIFAR-100 and image folders, statistics, split,
subset, augmentation), its caches (caviar.training.datacache) and caviar.training.fixture."""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import pickletools
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from caviar.errors import CaviarError
from caviar.training import data as D, datacache, imagefolder
from caviar.training.augment import augment_batch
from caviar.training.data import (
    CIFAR10_FOLDER,
    CIFAR100_FOLDER,
    DataError,
    balanced_subset,
    describe_dataset,
    load_cifar10,
    load_test_set,
    normalize,
    prepare_data,
    read_batch_file,
    read_class_names,
    split_train_val,
)
from caviar.training.fixture import (
    _dump_py2,
    imagefolder_class_names,
    main as fixture_main,
    write_cifar100_fixture,
    write_cifar_fixture,
    write_imagefolder_fixture,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared/data/cifar10-sample"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return write_cifar_fixture(tmp_path_factory.mktemp("fx"), train_size=300, test_size=50, batches=3)


def _dump(obj, path: Path, protocol: int = 4) -> Path:
    # Python 3 + numpy 2 style (numpy._core globals, SHORT_BINBYTES keys): must be readable too.
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _batch(n=4, data=None, labels=None) -> dict:
    data = np.zeros((n, 3072), np.uint8) if data is None else data
    return {b"data": data, b"labels": list(range(n)) if labels is None else labels, b"batch_label": b"x"}


# ---------------------------------------------------------------- reading
def test_real_sample_loads():
    """The real CIFAR-10 sample (Python 2 pickles) loads as 160 + 40 uint8 NCHW images, labels 0..9."""
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} not present")
    d = load_cifar10(SAMPLE, download=False)
    assert d.train_images.shape == (160, 3, 32, 32) and d.train_images.dtype == np.uint8
    assert d.test_images.shape == (40, 3, 32, 32) and d.test_images.dtype == np.uint8
    assert d.train_labels.dtype == np.int64 and d.train_labels.shape == (160,)
    assert d.test_labels.shape == (40,)
    assert d.train_labels.min() >= 0 and d.train_labels.max() <= 9
    assert len(np.unique(d.train_labels)) == 10  # 160 real images cover every class
    assert d.classes == CLASSES
    assert d.train_images.std() > 20  # real pictures, not zeros
    # The folder itself is accepted as the root too.
    x, y = load_test_set(SAMPLE / CIFAR10_FOLDER, download=False)
    assert np.array_equal(x, d.test_images) and np.array_equal(y, d.test_labels)


def test_channel_major_layout(tmp_path):
    """A b"data" row is 1024 R, 1024 G, 1024 B values, each row-major 32x32."""
    row = np.zeros((1, 3072), np.uint8)
    row[0, 1024 + 32 * 5 + 7] = 200  # green channel, y=5, x=7
    x, _ = read_batch_file(_dump(_batch(1, data=row, labels=[3]), tmp_path / "b"))
    assert x[0, 1, 5, 7] == 200 and x.sum() == 200


class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, kind):
    """A batch whose pickle calls anything but numpy's array reconstruction is refused before running it."""
    marker = tmp_path / "pwned"
    if kind == "os.system":
        func, arg, name = os.system, f"touch {marker}", f"{os.system.__module__}.system"
    else:
        func, arg, name = builtins.eval, f"open({str(marker)!r}, 'w').close()", "builtins.eval"
    path = _dump({b"data": _Payload(func, arg), b"labels": [0]}, tmp_path / "data_batch_1")
    with pytest.raises(DataError, match=f"refusing to unpickle {name} from .*data_batch_1"):
        read_batch_file(path)
    assert not marker.exists()
    # Control: the same bytes do run the payload under plain pickle, so the marker check can fail.
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("keys", [bytes, str])
def test_python3_numpy2_pickle_is_read(tmp_path, protocol, keys):
    """Batches pickled by Python 3 + numpy 2 (numpy._core globals, _codecs at protocol 2, _frombuffer at 5) are read."""
    key = str if keys is str else str.encode
    batch = {key("data"): np.full((2, 3072), 7, np.uint8), key("labels"): [4, 9]}
    path = _dump(batch, tmp_path / "b", protocol=protocol)
    x, y = read_batch_file(path)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.uint8 and (x == 7).all() and y.tolist() == [4, 9]


def test_codecs_only_for_latin1(tmp_path):
    """_codecs.encode is allowed only as Python 3's latin1 str->bytes step, not with another codec."""

    class Enc:
        def __reduce__(self):
            import _codecs

            return _codecs.encode, ("abc", "rot13")

    path = _dump({b"data": Enc(), b"labels": []}, tmp_path / "b", protocol=2)
    with pytest.raises(DataError, match="only latin1"):
        read_batch_file(path)


@pytest.mark.parametrize(
    "batch, message",
    [
        (_batch(data=np.zeros((4, 3000), np.uint8)), r"shape \(N, 3072\), found \(4, 3000\)"),
        (_batch(data=np.zeros((4, 3072), np.float32)), "uint8 array, found float32"),
        (_batch(labels=[0, 1, 2, 10]), r"labels must be in 0\.\.9, found 0\.\.10"),
        (_batch(labels=[0, 1, -1, 2]), r"labels must be in 0\.\.9"),
        (_batch(labels=[0, 1, 2]), "3 labels for 4 images"),
        (_batch(labels=[0.5, 1, 2, 3]), "flat list of integers"),
        ({b"data": np.zeros((4, 3072), np.uint8)}, "has no labels entry"),
        ([1, 2, 3], "holds a list, not the dict"),
    ],
)
def test_bad_batch_contents(tmp_path, batch, message):
    """Wrong shape, dtype, label range, label count or structure is a DataError naming the file and the fault."""
    path = _dump(batch, tmp_path / "data_batch_1")
    with pytest.raises(DataError, match=message) as e:
        read_batch_file(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("cut", [0, 1, 100, -20])
def test_truncated_or_garbage_file(tmp_path, cut):
    """A truncated or garbage file is a DataError (not a raw pickle traceback) saying it is corrupt."""
    full = pickle.dumps(_batch(), protocol=4)
    path = tmp_path / "data_batch_1"
    path.write_bytes(full[:cut] if cut else b"\x00not a pickle at all")
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_batch_file(path)


def test_data_error_is_a_caviar_error():
    """DataError is a CaviarError, so the CLI prints it and exits 2."""
    assert issubclass(DataError, CaviarError)


def test_missing_root_without_download(tmp_path):
    """A data.root that does not exist, with download off, names the path and the data.root key."""
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match="data.root") as e:
        load_cifar10(root, download=False)
    assert str(root) in str(e.value)


def test_missing_folder_download_fails(tmp_path, monkeypatch):
    """If the folder is absent and the download fails, the error gives the reason and where to put the data."""
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path, download=True)
    msg = str(e.value)
    assert "could not be downloaded (OSError: network is unreachable)" in msg
    assert f"{tmp_path}/{CIFAR10_FOLDER}" in msg and "data.root" in msg and "CAVIAR_DATA" in msg
    with pytest.raises(DataError, match="data.download is off"):
        load_cifar10(tmp_path, download=False)


def test_default_data_root(monkeypatch, tmp_path):
    """CAVIAR_DATA overrides the default root ~/.cache/caviar/data."""
    monkeypatch.setenv("CAVIAR_DATA", str(tmp_path))
    assert D.default_data_root() == tmp_path
    monkeypatch.delenv("CAVIAR_DATA")
    assert D.default_data_root() == Path.home() / ".cache/caviar/data"


def test_class_names_fall_back(tmp_path):
    """Without batches.meta the ten standard class names are used."""
    assert read_class_names(tmp_path) == CLASSES


# ---------------------------------------------------------------- split and subset
def test_split_is_fixed_disjoint_and_complete():
    """The split depends only on (N, val_size, seed): same every call, disjoint, covering, sorted."""
    labels = np.arange(1000) % 10
    tr, va = split_train_val(None, labels, 200, seed=3)
    tr2, va2 = split_train_val(None, labels, 200, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 200 and len(tr) == 800 and tr.dtype == va.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    assert not np.array_equal(va, split_train_val(None, labels, 200, seed=4)[1])
    assert not np.array_equal(va, np.arange(200))  # shuffled, not the first 200
    assert len(split_train_val(None, labels, 0)[1]) == 0


def test_split_same_in_another_process():
    """A fresh Python process computes the identical validation indices."""
    code = (
        "import hashlib, numpy as np; from caviar.training.data import split_train_val; "
        "print(hashlib.sha256(split_train_val(None, np.zeros(5000), 500, seed=7)[1].tobytes()).hexdigest())"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    here = hashlib.sha256(split_train_val(None, np.zeros(5000), 500, seed=7)[1].tobytes()).hexdigest()
    assert out.stdout.strip() == here


@pytest.mark.parametrize("val_size", [-1, 100, 1000, 2.5, True])
def test_split_bad_val_size(val_size):
    """val_size outside 0..N-1 (or not an int) is a DataError naming data.val_size."""
    with pytest.raises(DataError, match="data.val_size"):
        split_train_val(None, np.zeros(100), val_size)


def test_balanced_subset_counts():
    """Per-class counts of a subset of a balanced source differ by at most 1; indices sorted, unique, repeatable."""
    labels = np.random.default_rng(0).permutation(np.arange(1000) % 10)
    for size in (1, 7, 95, 500, 1000):
        idx = balanced_subset(labels, size, seed=1)
        counts = np.bincount(labels[idx], minlength=10)
        assert len(idx) == size and counts.max() - counts.min() <= 1
        assert np.all(np.diff(idx) > 0)
    assert np.array_equal(balanced_subset(labels, 95, seed=1), balanced_subset(labels, 95, seed=1))
    assert not np.array_equal(balanced_subset(labels, 95, seed=1), balanced_subset(labels, 95, seed=2))


def test_balanced_subset_fraction_and_short_class():
    """A fraction gives round(f*N) items; a class that runs short gives its share to the others."""
    labels = np.arange(1000) % 10
    assert len(balanced_subset(labels, 0.25)) == 250
    assert len(balanced_subset(labels, 1.0)) == 1000
    short = np.array([0] * 2 + [1] * 50 + [2] * 50)
    counts = np.bincount(short[balanced_subset(short, 30)])
    assert counts.tolist() == [2, 14, 14]


@pytest.mark.parametrize("size", [0, -3, 1001, 0.0, 1.5, -0.5, True, "100", None])
def test_balanced_subset_bad_size(size):
    """A count outside 1..N, a fraction outside (0, 1] or a non-number is a DataError naming data.train_subset."""
    with pytest.raises(DataError, match="data.train_subset"):
        balanced_subset(np.arange(1000) % 10, size)


def test_prepare_data_subsets_only_training(fixture_root):
    """prepare_data splits first and subsets only the training part; validation is the full fixed split."""
    full = prepare_data(fixture_root, val_size=60, download=False)
    sub = prepare_data(fixture_root, val_size=60, train_subset=100, download=False)
    assert len(full.train_y) == 240 and len(full.val_y) == 60
    assert np.array_equal(sub.val_x, full.val_x) and np.array_equal(sub.val_y, full.val_y)
    assert len(sub.train_y) == 100 and np.bincount(sub.train_y, minlength=10).tolist() == [10] * 10
    # Every subset image is a training image, never a validation one.
    train_rows = {r.tobytes() for r in full.train_x}
    assert all(r.tobytes() in train_rows for r in sub.train_x)
    assert not train_rows & {r.tobytes() for r in full.val_x}
    assert sub.classes == CLASSES and not hasattr(sub, "test_x")


# ---------------------------------------------------------------- augmentation
def _reference(img: np.ndarray, dy: int, dx: int, flip: bool, pad: int) -> np.ndarray:
    """Crop at (dy, dx) of the zero-padded image, then flip, written with explicit loops."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            jj = w - 1 - j if flip else j
            y, x = dy + i - pad, dx + jj - pad  # source pixel in the unpadded image
            if 0 <= y < h and 0 <= x < w:
                out[:, i, j] = img[:, y, x]
    return out


def _find_params(img, out, pad):
    hits = [
        (dy, dx, f)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        for f in (False, True)
        if np.array_equal(_reference(img, dy, dx, f, pad), out)
    ]
    assert hits, "output is not a shifted/flipped window of the padded input"
    return hits


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_is_exact_window_of_padded_input(dtype):
    """Every output is exactly a pad-shifted (maybe flipped) window of the zero-padded input; shape/dtype kept."""
    # Non-square (12 x 10) to catch an H/W mix-up; random content makes the window unique.
    images = torch.randint(1, 256, (4, 3, 12, 10), generator=torch.Generator().manual_seed(0)).to(dtype)
    out = augment_batch(images, torch.Generator().manual_seed(1), pad=4)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    for b in range(4):
        assert len(_find_params(images[b].numpy(), out[b].numpy(), 4)) == 1


def test_augment_offsets_vary_and_are_seeded():
    """Offsets and flips differ per image, are reproducible from the generator's seed, and cover the range."""
    img = torch.randint(1, 256, (1, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    batch = img.repeat(64, 1, 1, 1)  # the same image 64 times: any difference comes from the offsets
    out = augment_batch(batch, torch.Generator().manual_seed(5), pad=2)
    assert torch.equal(out, augment_batch(batch, torch.Generator().manual_seed(5), pad=2))
    assert not torch.equal(out, augment_batch(batch, torch.Generator().manual_seed(6), pad=2))
    params = [_find_params(img[0].numpy(), out[b].numpy(), 2)[0] for b in range(64)]
    assert len(set(params)) >= 20  # 50 possible (dy, dx, flip); a shared offset would give 1
    assert {p[0] for p in params} == set(range(5)) and {p[2] for p in params} == {False, True}


def test_augment_pad_zero_only_flips():
    """With pad=0 an output is the image itself or its mirror."""
    images = torch.rand(16, 3, 6, 6)
    out = augment_batch(images, torch.Generator().manual_seed(0), pad=0)
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()


def test_normalize():
    """normalize maps uint8 to (x/255 - mean) / std per channel, in the requested dtype."""
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).repeat(2, 3, 1, 1)
    y = normalize(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    for c in range(3):
        assert torch.allclose(y[:, c, 0, 0], torch.tensor(-D.CIFAR10_MEAN[c] / D.CIFAR10_STD[c]))
        assert torch.allclose(y[:, c, 0, 1], torch.tensor((1 - D.CIFAR10_MEAN[c]) / D.CIFAR10_STD[c]))
    assert normalize(x, torch.bfloat16).dtype == torch.bfloat16


def test_normalize_builds_its_statistics_once_per_device_and_dtype(monkeypatch):
    """mean/std are made once per (device, dtype), not on every call: on CUDA each tensor built from
    Python numbers is a host-to-device copy that waits for the GPU, twice per training step."""
    D._channel_stats.cache_clear()
    made = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(k.get("dtype")) or real_tensor(*a, **k))
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    first = normalize(x)
    assert len(made) == 2  # mean and std, float32 on the CPU
    for _ in range(5):
        assert torch.equal(normalize(x), first)
    normalize(x, torch.bfloat16)
    assert made == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]


# ---------------------------------------------------------------- fixture
def test_fixture_round_trips(fixture_root):
    """The fixture loads through load_cifar10 with the requested sizes, uint8 images and balanced labels."""
    d = load_cifar10(fixture_root, download=False)
    assert d.train_images.shape == (300, 3, 32, 32) and d.test_images.shape == (50, 3, 32, 32)
    assert d.train_images.dtype == np.uint8 and d.classes == CLASSES
    assert np.bincount(d.train_labels, minlength=10).tolist() == [30] * 10
    assert np.bincount(d.test_labels, minlength=10).tolist() == [5] * 10
    assert d.train_images.std() > 30  # noisy patterns, not a constant
    # Each batch file alone is readable by the restricted reader.
    files = sorted((fixture_root / CIFAR10_FOLDER).glob("data_batch_*"))
    assert [p.name for p in files] == ["data_batch_1", "data_batch_2", "data_batch_3"]
    assert sum(len(read_batch_file(p)[1]) for p in files) == 300


def test_fixture_matches_published_format(fixture_root):
    """Fixture files are Python 2 style protocol-2 pickles: bytes keys as str opcodes, numpy.core globals only."""
    raw = (fixture_root / CIFAR10_FOLDER / "data_batch_1").read_bytes()
    ops = list(pickletools.genops(raw))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    strings = {arg for op, arg, _ in ops if op.name == "SHORT_BINSTRING"}
    assert {"data", "labels", "batch_label", "filenames"} <= strings
    assert not any(op.name in ("BINUNICODE", "SHORT_BINBYTES", "BINBYTES") for op, _, _ in ops)
    batch = pickle.loads(raw, encoding="bytes")  # how torchvision-style readers open it
    assert set(batch) == {b"data", b"labels", b"batch_label", b"filenames"}
    assert isinstance(batch[b"labels"], list) and isinstance(batch[b"labels"][0], int)
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (100, 3072)
    meta = pickle.loads((fixture_root / CIFAR10_FOLDER / "batches.meta").read_bytes(), encoding="bytes")
    assert meta[b"label_names"][0] == b"airplane" and meta[b"num_vis"] == 3072


def test_fixture_is_seeded_and_cli(tmp_path, capsys):
    """Same seed gives byte-identical files; the module CLI writes the folder and prints its path."""
    fixture_main([str(tmp_path / "a"), "--train-size", "40", "--test-size", "10"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "a" / CIFAR10_FOLDER)
    write_cifar_fixture(tmp_path / "b", train_size=40, test_size=10)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        assert (tmp_path / "a" / CIFAR10_FOLDER / name).read_bytes() == (tmp_path / "b" / CIFAR10_FOLDER / name).read_bytes()
    other = write_cifar_fixture(tmp_path / "c", train_size=40, test_size=10, seed=1)
    assert (other / CIFAR10_FOLDER / "test_batch").read_bytes() != (tmp_path / "b" / CIFAR10_FOLDER / "test_batch").read_bytes()


def test_fixture_is_learnable_but_not_by_colour():
    """Class-mean images differ far more than noise allows by chance, yet an image's mean colour barely predicts its class."""
    with tempfile.TemporaryDirectory() as tmp:
        d = load_cifar10(write_cifar_fixture(tmp, train_size=2000, test_size=10), download=False)
    x, y = d.train_images.astype(np.float32), d.train_labels
    fit, held = slice(0, 1000), slice(1000, 2000)
    means = np.stack([x[fit][y[fit] == c].mean(0) for c in range(10)])  # (10, 3, 32, 32)
    gaps = [np.abs(means[a] - means[b]).mean() for a in range(10) for b in range(a + 1, 10)]
    assert min(gaps) > 10  # grey levels; spatial structure separates every pair of classes
    nearest_mean = ((x[held][:, None] - means[None]) ** 2).sum(axis=(2, 3, 4)).argmin(1)
    assert (nearest_mean == y[held]).mean() > 0.5  # even a template matcher beats chance by far
    colours = x.mean(axis=(2, 3))  # (N, 3) mean colour per image
    centres = np.stack([colours[fit][y[fit] == c].mean(0) for c in range(10)])
    by_colour = ((colours[held][:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    assert (by_colour == y[held]).mean() < 0.35  # chance is 0.1


def test_mistyped_root_is_not_created(tmp_path, monkeypatch):
    """A data.root that does not exist is an error naming it, and no folder (or download) is left
    behind; only the default root is created for a download."""
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_and_extract_archive", lambda *a, **k: pytest.fail("no download expected"))
    typo = tmp_path / "dtaa"
    with pytest.raises(DataError, match=f"data.root {typo} does not exist.*create it first"):
        load_cifar10(typo, download=True)
    assert not typo.exists()


# ---------------------------------------------------------------- CIFAR-100, image folders, statistics (issue 27)
@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory, monkeypatch):
    # The user-level fallback cache (~/.cache/caviar/datasets) goes to a temp folder in these tests.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory) -> Path:
    return write_cifar100_fixture(tmp_path_factory.mktemp("c100"), train_size=400, test_size=200)


@pytest.fixture
def letters_root(tmp_path) -> Path:
    """26 classes A..Z, 4 train and 1 test image each (small: a folder is decoded in well under a second)."""
    return write_imagefolder_fixture(tmp_path / "letters", train_size=104, test_size=26, classes=26)


def _png(path: Path, size=(32, 32), mode="RGB", value=128) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def test_cifar100_fixture_loads_with_fine_and_coarse_labels(cifar100_root):
    """CIFAR-100's python format loads with its 100 fine or 20 coarse classes: same images, labels from
    the chosen list, class names from its meta file; the test file loads the same way."""
    fine = prepare_data(cifar100_root, val_size=100, download=False, format="cifar100", labels="fine")
    coarse = prepare_data(cifar100_root, val_size=100, download=False, format="cifar100", labels="coarse")
    assert len(fine.classes) == 100 and fine.classes[0] == "fine_000"
    assert len(coarse.classes) == 20 and coarse.classes[-1] == "coarse_19"
    assert np.array_equal(fine.train_x, coarse.train_x) and fine.train_x.shape == (300, 3, 32, 32)
    assert np.array_equal(coarse.train_y, fine.train_y // 5)  # fine c is in coarse c // 5
    assert set(np.concatenate([fine.train_y, fine.val_y])) == set(range(100))
    x, y = load_test_set(cifar100_root / CIFAR100_FOLDER, download=False, format="cifar100", labels="coarse")
    assert x.shape == (200, 3, 32, 32) and y.max() == 19 and np.bincount(y).tolist() == [10] * 20


def test_cifar100_fixture_matches_published_format(cifar100_root):
    """The CIFAR-100 fixture is Python 2 style: str opcodes for bytes keys, numpy.core globals, the published keys."""
    raw = (cifar100_root / CIFAR100_FOLDER / "train").read_bytes()
    ops = list(pickletools.genops(raw))
    assert {arg for op, arg, _ in ops if op.name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not any(op.name in ("BINUNICODE", "SHORT_BINBYTES", "BINBYTES") for op, _, _ in ops)
    batch = pickle.loads(raw, encoding="bytes")
    assert list(batch) == [b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"]
    meta = pickle.loads((cifar100_root / CIFAR100_FOLDER / "meta").read_bytes(), encoding="bytes")
    assert set(meta) == {b"fine_label_names", b"coarse_label_names"}


def test_imagefolder_fixture_of_26_classes_loads(letters_root):
    """An image folder of 26 classes loads: class names are the sorted folder names, labels their
    indices, images uint8 (N, 3, 32, 32); the test split uses the training set's class list."""
    data = prepare_data(letters_root, val_size=26, download=False, format="imagefolder")
    assert data.classes == [chr(ord("A") + i) for i in range(26)] == imagefolder_class_names(26)
    assert data.train_x.shape == (78, 3, 32, 32) and data.train_x.dtype == np.uint8
    assert np.bincount(np.concatenate([data.train_y, data.val_y]), minlength=26).tolist() == [4] * 26
    x, y = load_test_set(letters_root, format="imagefolder")
    assert x.shape == (26, 3, 32, 32) and sorted(y.tolist()) == list(range(26))
    first = sorted((letters_root / "train" / "A").iterdir())[0]
    assert np.array_equal(imagefolder.decode(first, 32), imagefolder.load_split(letters_root, "train").images[0])


def test_imagefolder_is_decoded_once_then_read_from_its_cache(letters_root, monkeypatch):
    """The second load of an unchanged folder decodes nothing (Pillow is not even opened) and gives
    the same arrays; the cache is a tagged .caviar-cache folder of .npy and .json files."""
    first = D.load_train_set(letters_root, format="imagefolder")
    from PIL import Image

    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded again"))
    again = D.load_train_set(letters_root, format="imagefolder")
    assert all(np.array_equal(a, b) for a, b in zip(first[:2], again[:2])) and again[2] == first[2]
    cache = letters_root / ".caviar-cache"
    assert (cache / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert {p.suffix for p in cache.iterdir()} <= {".npy", ".json", ".TAG"}


def test_a_changed_image_folder_is_decoded_again(letters_root):
    """A file added, replaced or removed changes the fingerprint: the split is decoded again, and the
    cache keeps only the newest entry of each kind."""
    before = imagefolder.load_split(letters_root, "train")
    _png(letters_root / "train" / "B" / "zz-new.png", value=(7, 7, 7))
    after = imagefolder.load_split(letters_root, "train")
    assert after.key != before.key and len(after.labels) == len(before.labels) + 1
    assert (after.images[after.labels == 1] == 7).all(axis=(1, 2, 3)).sum() == 1
    entries = sorted(p.name for p in (letters_root / ".caviar-cache").glob("imagefolder-train-32px-*"))
    assert len(entries) == 3 and all(after.key in name for name in entries)


def test_imagefolder_images_are_made_rgb_and_square(tmp_path):
    """Grey, palette, RGBA and 16-bit images of any size become RGB image_size squares (shorter side
    scaled, centre cropped); transparency is composited over black."""
    from PIL import Image

    root = tmp_path / "mixed"
    _png(root / "train" / "a" / "grey.png", size=(64, 48), mode="L", value=200)
    _png(root / "train" / "a" / "rgba.png", size=(20, 40), mode="RGBA", value=(10, 20, 200, 128))
    _png(root / "train" / "b" / "palette.png", size=(32, 32), mode="P", value=3)
    Image.fromarray(np.full((16, 16), 65535 // 2, np.uint16)).save(root / "train" / "b" / "deep.png")
    with pytest.warns(UserWarning, match="4 of 4 images decode to a single colour"):
        images, labels, classes = D.load_train_set(root, format="imagefolder", image_size=16)
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1] and classes == ["a", "b"]
    assert (images[0] == 200).all() and images[1][:, 0, 0].tolist() == [5, 10, 100]  # half transparent, on black
    assert (images[2] == 127).all()  # deep.png (sorted before palette.png): 16-bit, 32767 of 65535


def _decoded(path: Path, size: int = 8) -> np.ndarray:
    return imagefolder.decode(path, size).astype(int)


def test_wide_images_are_scaled_from_their_range_not_clipped(tmp_path):
    """A float image in [0, 1] does not decode black, a 12-bit one stored in 16 bits not white, a
    32-bit integer one keeps its gradient; a TIFF's declared MaxSampleValue sets the range."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 1, 8), (8, 1))  # left to right, black to white
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "float.tif")
    Image.fromarray(np.round(ramp * 4095).astype(np.uint16)).save(tmp_path / "twelve.tif")
    Image.fromarray(np.round(ramp * (2 ** 24 - 1)).astype(np.int32), "I").save(tmp_path / "wide.tif")
    Image.fromarray(np.round(ramp * 200 - 100).astype(np.float32), "F").save(tmp_path / "signed.tif")
    declared = Image.fromarray(np.round(ramp * 1000).astype(np.uint16))
    declared.save(tmp_path / "declared.tif", tiffinfo={281: 2000})  # MaxSampleValue
    for name in ("float", "twelve", "wide", "signed"):
        row = _decoded(tmp_path / f"{name}.tif")[0, 0]
        assert row[0] <= 1 and row[-1] >= 254 and (np.diff(row) > 0).all(), (name, row)
    assert _decoded(tmp_path / "declared.tif")[0, 0, -1] == 128  # 1000 of a declared 2000


def test_exif_orientation_turns_a_photo_upright(tmp_path):
    """A JPEG whose EXIF says "rotate 90 degrees clockwise" (a phone held upright) decodes upright:
    its left half (white) ends on top."""
    from PIL import Image

    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = 255  # stored 16 wide and 8 high: white left, black right
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image is to be turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    Image.fromarray(pixels).save(tmp_path / "plain.jpg", quality=95)
    upright, plain = _decoded(tmp_path / "phone.jpg"), _decoded(tmp_path / "plain.jpg")
    assert upright[:, :3].min() > 200 and upright[:, 5:].max() < 60  # white on top, black below
    assert plain[:, :, :3].min() > 200 and plain[:, :, 5:].max() < 60  # no EXIF: as stored


def test_grey_palette_and_alpha_modes_decode_to_rgb(tmp_path):
    """Grey with alpha, a palette with a transparent index and bilevel images become RGB; what is
    transparent becomes black whatever colour lies under it."""
    from PIL import Image

    Image.new("LA", (8, 8), (180, 255)).save(tmp_path / "la.png")
    Image.new("LA", (8, 8), (180, 0)).save(tmp_path / "clear.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.new("1", (8, 8), 1).save(tmp_path / "bilevel.png")
    assert (_decoded(tmp_path / "la.png") == 180).all() and (_decoded(tmp_path / "clear.png") == 0).all()
    assert _decoded(tmp_path / "palette.png")[:, 0, 0].tolist() == [250, 10, 10]
    assert (_decoded(tmp_path / "bilevel.png") == 255).all()


def test_test_images_are_counted_as_the_scan_finds_them(tmp_path):
    """The time estimate's count of test images goes into nested folders and skips hidden files and
    what is not an image, as the scan does."""
    for path in ("test/a/1.png", "test/a/deeper/2.png", "test/b/3.jpg", "test/b/.hidden/4.png", "test/a/.5.png"):
        _png(tmp_path / path)
    (tmp_path / "test" / "b" / "notes.txt").write_text("x")
    assert D.estimated_test_images(tmp_path, format="imagefolder") == 3
    assert imagefolder.count_images(tmp_path, "train") == 0


def test_statistics_come_from_all_training_images_and_are_cached(fixture_root, monkeypatch):
    """mean/std are per channel on the 0..1 scale over every training image (before the split, so
    every val_size and subset agree), and are read from the cache on the next load."""
    images, _, _ = D.load_train_set(fixture_root)
    x = images.astype(np.float64) / 255
    data = prepare_data(fixture_root, val_size=60, download=False)
    assert np.allclose(data.mean, x.mean(axis=(0, 2, 3)), atol=1e-12)
    assert np.allclose(data.std, x.std(axis=(0, 2, 3)), atol=1e-12)
    assert (fixture_root / CIFAR10_FOLDER / ".caviar-cache").is_dir()
    monkeypatch.setattr(datacache, "channel_stats", lambda images: pytest.fail("computed again"))
    other = prepare_data(fixture_root, val_size=120, train_subset=50, download=False)
    assert other.mean == data.mean and other.std == data.std


def test_real_cifar10_sample_statistics_are_near_the_published_constants():
    """channel_stats of the 160 real training images lies near CIFAR-10's published statistics."""
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} not present")
    mean, std = datacache.channel_stats(load_cifar10(SAMPLE, download=False).train_images)
    assert np.allclose(mean, D.CIFAR10_MEAN, atol=0.05) and np.allclose(std, D.CIFAR10_STD, atol=0.03)


def test_cache_never_writes_into_a_folder_caviar_did_not_make(letters_root, monkeypatch, tmp_path):
    """A .caviar-cache that is not caviar's (no CACHEDIR.TAG of ours) is left alone: the cache goes to
    the user's cache folder instead; so does it where the data folder cannot be written."""
    foreign = letters_root / ".caviar-cache"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("the user's")
    imagefolder.load_split(letters_root, "train")
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
    home = datacache.cache_folders(letters_root)[1]
    assert home.is_relative_to(datacache.user_cache_root()) and any(home.glob("imagefolder-train-*.npy"))
    # A read-only data folder (simulated: the tests may run as root, whom chmod does not stop).
    readonly = write_imagefolder_fixture(tmp_path / "ro", train_size=26, test_size=26, classes=2)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == datacache.CACHE_FOLDER:
            raise PermissionError(30, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    imagefolder.load_split(readonly, "test")
    assert not (readonly / ".caviar-cache").exists()
    assert any(datacache.cache_folders(readonly)[1].glob("imagefolder-test-*.json"))


# ---------------------------------------------------------------- bad data: one clear message each
def test_cifar100_label_out_of_range(tmp_path):
    """A CIFAR-100 label beyond its class count names the file, the range and the keys to check."""
    folder = tmp_path / CIFAR100_FOLDER
    folder.mkdir()
    _dump_py2({b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 5, 100], b"coarse_labels": [0, 1, 2]},
              folder / "train")
    with pytest.raises(DataError, match=r"train: labels must be in 0\.\.99, found 0\.\.100.*data.labels"):
        prepare_data(tmp_path, val_size=1, download=False, format="cifar100")
    with pytest.raises(DataError, match="no fine_labels entry"):
        _dump_py2({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}, folder / "train")
        prepare_data(tmp_path, val_size=1, download=False, format="cifar100")


def test_cifar_images_of_mixed_or_other_sizes(tmp_path):
    """Rows of different lengths in a batch are 'mixed sizes'; rows of another square size name the
    data.image_size that reads them, and that setting does."""
    path = _dump({b"data": [bytes(3072), bytes(3000)], b"labels": [0, 1]}, tmp_path / "data_batch_1")
    with pytest.raises(DataError, match=r"data_batch_1: images of mixed sizes \(rows of 3000, 3072 bytes\)"):
        read_batch_file(path)
    big = _dump({b"data": np.zeros((2, 3 * 64 * 64), np.uint8), b"labels": [0, 1]}, tmp_path / "big")
    with pytest.raises(DataError, match=r"found \(2, 12288\): rows of 12288 bytes are 64 x 64 images, set "
                                        "data.image_size: 64"):
        read_batch_file(big)
    assert read_batch_file(big, image_size=64)[0].shape == (2, 3, 64, 64)
    rows = _dump({b"data": [bytes(3072), bytes(3072)], b"labels": [0, 1]}, tmp_path / "rows")
    assert read_batch_file(rows)[0].shape == (2, 3, 32, 32)


def test_cifar10_meta_must_name_ten_classes(tmp_path):
    """CIFAR-10's format holds labels 0..9: a batches.meta naming another count is an error saying so."""
    root = write_cifar_fixture(tmp_path, train_size=20, test_size=10)
    _dump_py2({b"label_names": [f"c{i}".encode() for i in range(12)]}, root / CIFAR10_FOLDER / "batches.meta")
    with pytest.raises(DataError, match="batches.meta names 12 classes, but CIFAR-10's format holds 10"):
        prepare_data(root, val_size=5, download=False)


def _truncated_png(path: Path) -> None:
    _png(path)
    path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize("make, message", [
    (lambda root: (root / "train" / "C").mkdir(), r"class folder .*train/C is empty"),
    (lambda root: _truncated_png(root / "train" / "B" / "00001.png"),
     r"train/B/00001.png cannot be read as an image .*truncated"),
    (lambda root: (root / "train" / "A" / "00000.png").write_bytes(b"not an image"),
     r"train/A/00000.png cannot be read as an image \(UnidentifiedImageError"),
    (lambda root: (root / "train" / "A" / "notes.txt").write_text("x"), r"train/A/notes.txt is not an image file"),
    (lambda root: _png(root / "train" / "stray.png"), r"train/stray.png is not in a class folder"),
    (lambda root: __import__("shutil").rmtree(root / "train"), r"/train is missing: .*data.format: imagefolder"),
])
def test_bad_image_folder(tmp_path, make, message):
    """An empty class folder, a truncated, corrupt or non-image file, a stray file and a missing
    folder each get a DataError naming it (and say what to do)."""
    root = write_imagefolder_fixture(tmp_path / "bad", train_size=4, test_size=2, classes=2)
    make(root)
    with pytest.raises(DataError, match=message):
        prepare_data(root, val_size=1, download=False, format="imagefolder")


def test_bad_image_folder_test_split(tmp_path):
    """test/ must exist for the test set, hold only the training set's classes, and the root must exist."""
    root = write_imagefolder_fixture(tmp_path / "t", train_size=4, test_size=2, classes=2)
    _png(root / "test" / "Z" / "0.png")
    with pytest.raises(DataError, match=r"test/Z is a class the training set does not have .*A, B"):
        load_test_set(root, format="imagefolder")
    __import__("shutil").rmtree(root / "test")
    with pytest.raises(DataError, match=r"/test is missing"):
        load_test_set(root, format="imagefolder")
    prepare_data(root, val_size=1, format="imagefolder")  # a sweep needs no test/
    with pytest.raises(DataError, match=r"data.root .*nowhere does not exist"):
        prepare_data(tmp_path / "nowhere", val_size=1, format="imagefolder")
    (root / "train" / "B").rename(root / "B")
    with pytest.raises(DataError, match="1 class folder: a classifier needs at least 2"):
        prepare_data(root, val_size=1, format="imagefolder")


def test_num_classes_that_disagrees_is_an_error_before_any_image_is_read(letters_root, cifar100_root, monkeypatch):
    """A model.num_classes other than the data's is a DataError naming both, raised before decoding
    or reading a single image; the matching count (or None) loads."""
    monkeypatch.setattr(imagefolder, "decode_all", lambda *a: pytest.fail("decoded"))
    monkeypatch.setattr(D, "read_batch_file", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(CaviarError, match=r"model.num_classes is 10 but the data at .* \(imagefolder\) has 26 classes, "
                                          "labels up to 25; set --set model.num_classes=26"):
        prepare_data(letters_root, val_size=5, format="imagefolder", num_classes=10)
    with pytest.raises(CaviarError, match=r"model.num_classes is 100 .*\(cifar100, coarse labels\) has 20 classes"):
        prepare_data(cifar100_root, val_size=5, format="cifar100", labels="coarse", num_classes=100)
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(letters_root / "xdg"))
    assert len(prepare_data(letters_root, val_size=5, format="imagefolder", num_classes=26).classes) == 26


@pytest.mark.parametrize("kwargs, message", [
    (dict(format="mnist"), "data.format must be one of cifar10, cifar100, imagefolder"),
    (dict(labels="medium"), "data.labels must be fine or coarse"),
    (dict(image_size=0), "data.image_size must be a positive"),
])
def test_bad_data_settings(fixture_root, kwargs, message):
    """A format, label set or image size outside what exists is a DataError naming the key."""
    with pytest.raises(DataError, match=message):
        prepare_data(fixture_root, val_size=5, **kwargs)


# ---------------------------------------------------------------- normalisation and augmentation choices
def test_normalize_with_given_statistics():
    """normalize with a dataset's mean/std uses them (x/255 - mean) / std; None keeps CIFAR-10's."""
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).repeat(2, 3, 1, 1)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    y = normalize(x, mean=mean, std=std)
    assert y[0, :, 0, 0].tolist() == [-1.0, -1.0, 0.0] and y[0, :, 0, 1].tolist() == [1.0, 3.0, 1.0]
    assert torch.equal(normalize(x, mean=D.CIFAR10_MEAN, std=D.CIFAR10_STD), normalize(x))
    assert normalize(x, torch.bfloat16, mean=mean, std=std).dtype == torch.bfloat16


def test_augment_without_flip_never_mirrors():
    """flip=False: every output is an unmirrored window of the padded input (with pad 0: the image itself)."""
    images = torch.randint(1, 256, (32, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(1), pad=2, flip=False)
    for b in range(32):
        assert all(not mirrored for _, _, mirrored in _find_params(images[b].numpy(), out[b].numpy(), 2))
    assert torch.equal(augment_batch(images, torch.Generator().manual_seed(1), pad=0, flip=False), images)


def test_augment_pad_zero_keeps_images_in_place():
    """pad=0: no shift, so an output is the image or its mirror, never a moved window (and no border of zeros)."""
    images = torch.randint(1, 256, (64, 3, 6, 6), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(3), pad=0)
    assert bool(((out == images) | (out == images.flip(3))).flatten(1).all(1).all()) and bool((out > 0).all())


def test_cutout_zeroes_one_square_per_image():
    """cutout N zeroes, in every channel, one N x N square per image centred anywhere (clipped at the
    edges), and nothing else; at random places, repeatably from the generator's seed."""
    images = torch.full((200, 3, 12, 12), 255, dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(4), pad=0, flip=False, cutout=4)
    assert torch.equal(out, augment_batch(images, torch.Generator().manual_seed(4), pad=0, flip=False, cutout=4))
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    corners = set()
    for mask in zero[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert int(mask.sum()) == len(rows) * len(cols)  # one rectangle, the square's part inside the image
        assert bool(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all())
        corners.add((int(rows[0]), int(cols[0])))
    assert int(zero[:, 0].sum(dim=(1, 2)).max()) == 16 and len(corners) > 40
    assert torch.equal(augment_batch(images, torch.Generator().manual_seed(4), pad=0, flip=False), images)


def test_reflect_padding_crops_are_windows_of_the_mirrored_image_with_no_zero_border():
    """pad_mode reflect: every crop is a window of the image padded with its own mirror image
    (torch's reflect padding), so its border pixels come from the image, never zeros; the same
    draws with zero padding give black borders. An unknown mode, or a pad as wide as the image,
    is refused by name."""
    images = torch.randint(1, 256, (64, 3, 10, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(1), pad=4, flip=False, pad_mode="reflect")
    assert out.shape == images.shape and out.dtype == torch.uint8 and bool((out > 0).all())
    windows = torch.nn.functional.pad(images, (4,) * 4, mode="reflect").unfold(2, 10, 1).unfold(3, 10, 1)
    for b in range(64):  # (3, 9, 9, 10, 10): each of the 81 windows of image b, compared with its crop
        assert bool((windows[b] == out[b][:, None, None]).all(0).flatten(2).all(2).any())
    zeros = augment_batch(images, torch.Generator().manual_seed(1), pad=4, flip=False)
    assert bool((zeros == 0).any())
    with pytest.raises(ValueError, match="pad_mode must be one of zeros, reflect, got 'edge'"):
        augment_batch(images, pad=4, pad_mode="edge")
    with pytest.raises(ValueError, match="reflect padding of 10 px"):
        augment_batch(images, pad=10, pad_mode="reflect")


# ---------------------------------------------------------------- describing a dataset, fixture CLI
def test_describe_dataset(letters_root):
    """describe_dataset gives images per split, classes, balance and statistics as plain data."""
    data = prepare_data(letters_root, val_size=26, format="imagefolder")
    _, test_y = load_test_set(letters_root, format="imagefolder")
    info = describe_dataset(data, test_labels=test_y)
    assert info["classes"] == 26 and info["class_names"][:2] == ["A", "B"] and info["image_shape"] == [3, 32, 32]
    assert info["images"] == {"train": 78, "val": 26, "test": 26}
    assert info["per_class"] | {"smallest": None, "largest": None} == {
        "min": 4, "max": 4, "smallest": None, "largest": None, "empty": []}
    assert info["mean"] == [round(v, 4) for v in data.mean] and len(info["std"]) == 3
    import json

    json.dumps(info)  # plain data: a report or `caviar check --json` can write it as it is


def test_fixture_cli_formats(tmp_path, capsys):
    """The fixture CLI writes CIFAR-100 and image-folder sets with --classes and prints where; CIFAR-10 stays 10."""
    fixture_main([str(tmp_path / "c"), "--format", "cifar100", "--classes", "30", "--train-size", "60",
                  "--test-size", "30"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / CIFAR100_FOLDER)
    assert len(D.read_cifar100_classes(tmp_path / "c" / CIFAR100_FOLDER, "fine")) == 30
    assert len(D.read_cifar100_classes(tmp_path / "c" / CIFAR100_FOLDER, "coarse")) == 20
    fixture_main([str(tmp_path / "i"), "--format", "imagefolder", "--classes", "3", "--train-size", "6",
                  "--test-size", "3"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "i")
    assert sorted(p.name for p in (tmp_path / "i" / "train").iterdir()) == ["A", "B", "C"]
    with pytest.raises(SystemExit):
        fixture_main([str(tmp_path / "x"), "--classes", "5"])
