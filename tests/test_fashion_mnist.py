"""caviar.training.fashion_mnist: IDX files -> CIFAR-10's python format that caviar.training.data reads unchanged."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from caviar.training.data import CIFAR10_FOLDER, DataError, load_cifar10, prepare_data
from caviar.training.fashion_mnist import DEFAULT_IDX_DIR, FASHION_MNIST_CLASSES, MARKER, SOURCES, convert, main


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_set(folder: Path, train: int = 7, test: int = 3, seed: int = 0, gz: bool = True):
    """Four small IDX files (gzip'd or plain) of random images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(1, 256, size=(train, 28, 28), dtype=np.uint8),  # 1..255: padding shows as 0
        "train_labels": rng.integers(0, 10, size=train, dtype=np.uint8),
        "test_images": rng.integers(1, 256, size=(test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / (SOURCES[role] + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / SOURCES[role]).write_bytes(raw)
    return arrays


def quiet(*_):
    pass


@pytest.mark.parametrize("gz", [True, False])
def test_roundtrip_pixels_labels_padding_channels(tmp_path, gz):
    """Pixels and labels come back in order; the 2 px border is zero; R, G and B are the same plane."""
    arrays = write_idx_set(tmp_path / "idx", gz=gz)
    root = convert(tmp_path / "out", tmp_path / "idx", log=quiet)
    data = load_cifar10(root, download=False)
    assert data.classes == FASHION_MNIST_CLASSES
    for x, y, images, labels in [(data.train_images, data.train_labels, arrays["train_images"], arrays["train_labels"]),
                                 (data.test_images, data.test_labels, arrays["test_images"], arrays["test_labels"])]:
        assert x.shape == (len(images), 3, 32, 32) and x.dtype == np.uint8
        np.testing.assert_array_equal(y, labels.astype(np.int64))
        for c in range(3):
            np.testing.assert_array_equal(x[:, c, 2:30, 2:30], images)
        border = x.copy()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()
    files = sorted(p.name for p in (root / CIFAR10_FOLDER).iterdir())
    assert files == ["batches.meta", *[f"data_batch_{i}" for i in range(1, 6)], MARKER, "test_batch"]


def test_prepare_data_splits_the_converted_set(tmp_path):
    """caviar's own split works on the output: validation + training = every training image."""
    arrays = write_idx_set(tmp_path / "idx", train=12)
    root = convert(tmp_path / "out", tmp_path / "idx", log=quiet)
    split = prepare_data(root, val_size=4, download=False)
    assert len(split.val_y) == 4 and len(split.train_y) == 8
    got = np.concatenate([split.train_x, split.val_x])[:, 0, 2:30, 2:30]
    want = arrays["train_images"]
    assert sorted(map(bytes, got)) == sorted(map(bytes, want))


def test_up_to_date_conversion_is_kept_and_changed_sources_replace_it(tmp_path):
    write_idx_set(tmp_path / "idx", seed=0)
    root = convert(tmp_path / "out", tmp_path / "idx", log=quiet)
    batch = root / CIFAR10_FOLDER / "data_batch_1"
    stamp = batch.stat().st_mtime_ns
    messages = []
    convert(tmp_path / "out", tmp_path / "idx", log=messages.append)
    assert "already converted" in messages[0] and batch.stat().st_mtime_ns == stamp
    new = write_idx_set(tmp_path / "idx", seed=1)
    convert(tmp_path / "out", tmp_path / "idx", log=quiet)
    np.testing.assert_array_equal(load_cifar10(root, download=False).test_labels, new["test_labels"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == [CIFAR10_FOLDER]  # no temp folders left


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path, capsys):
    write_idx_set(tmp_path / "idx")
    foreign = tmp_path / "out" / CIFAR10_FOLDER
    foreign.mkdir(parents=True)
    (foreign / "data_batch_1").write_bytes(b"someone else's")
    with pytest.raises(DataError, match="not a previous Fashion-MNIST conversion"):
        convert(tmp_path / "out", tmp_path / "idx", log=quiet)
    assert (foreign / "data_batch_1").read_bytes() == b"someone else's"
    assert main([str(tmp_path / "out"), "--idx-dir", str(tmp_path / "idx")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def _damage(folder: Path, name: str, how: str) -> Path:
    path = folder / (name + ".gz")
    raw = gzip.decompress(path.read_bytes())
    if how == "magic":
        raw = struct.pack(">I", 2049 if "images" in name else 2051) + raw[4:]
    elif how == "truncated":
        raw = raw[:-5]
    elif how == "trailing":
        raw = raw + b"\0"
    elif how == "header":
        raw = raw[:6]
    elif how == "label":
        raw = raw[:-1] + bytes([10])
    path.write_bytes(gzip.compress(raw))
    return path


@pytest.mark.parametrize("how,name,message", [
    ("magic", SOURCES["train_images"], "magic number"),
    ("magic", SOURCES["test_labels"], "magic number"),
    ("truncated", SOURCES["train_images"], "truncated"),
    ("trailing", SOURCES["test_images"], "longer than its header says"),
    ("header", SOURCES["train_labels"], "header is truncated"),
    ("label", SOURCES["test_labels"], "labels must be in 0..9"),
])
def test_malformed_idx_names_the_file(tmp_path, how, name, message):
    write_idx_set(tmp_path / "idx")
    bad = _damage(tmp_path / "idx", name, how)
    with pytest.raises(DataError, match=message) as err:
        convert(tmp_path / "out", tmp_path / "idx", log=quiet)
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out" / CIFAR10_FOLDER).exists()


def test_truncated_gzip_and_missing_file_name_the_file(tmp_path):
    write_idx_set(tmp_path / "idx")
    path = tmp_path / "idx" / (SOURCES["train_images"] + ".gz")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="gzip stream is truncated") as err:
        convert(tmp_path / "out", tmp_path / "idx", log=quiet)
    assert str(path) in str(err.value)
    path.unlink()
    with pytest.raises(DataError, match=SOURCES["train_images"]):
        convert(tmp_path / "out", tmp_path / "idx", log=quiet)


def test_images_and_labels_must_agree(tmp_path):
    write_idx_set(tmp_path / "idx", train=7)
    labels = np.zeros(6, np.uint8)
    (tmp_path / "idx" / (SOURCES["train_labels"] + ".gz")).write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match="7 images but .* 6 labels"):
        convert(tmp_path / "out", tmp_path / "idx", log=quiet)


@pytest.mark.skipif(not (DEFAULT_IDX_DIR / (SOURCES["train_images"] + ".gz")).exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_the_real_fashion_mnist(tmp_path):
    """The published files: 60,000 + 10,000 images, 6,000 / 1,000 per class (about 3 s)."""
    root = convert(tmp_path, DEFAULT_IDX_DIR, log=quiet)
    data = load_cifar10(root, download=False)
    assert data.train_images.shape == (60000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert np.bincount(data.train_labels).tolist() == [6000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert not data.test_images[:, :, :2].any() and not data.test_images[:, :, :, 30:].any()
    marker = json.loads((root / CIFAR10_FOLDER / MARKER).read_text())
    assert marker["train_images"] == 60000 and set(marker["sources"]) == set(SOURCES)


@pytest.mark.parametrize("converter", ["caviar.fashion_mnist", "caviar.training.fashion_mnist", "__main__"])
def test_a_conversion_made_before_the_layer_folders_is_kept(tmp_path, converter):
    """A folder converted by the module at its old path (or run as `python -m`, whose marker said
    __main__) is recognised as this converter's: kept when up to date, not refused as foreign."""
    write_idx_set(tmp_path / "idx", seed=0)
    out = convert(tmp_path / "out", tmp_path / "idx", log=quiet)
    marker_file = out / CIFAR10_FOLDER / MARKER
    marker_file.write_text(json.dumps(json.loads(marker_file.read_text()) | {"converter": converter}))
    lines: list[str] = []
    assert convert(tmp_path / "out", tmp_path / "idx", log=lines.append) == out
    assert "already converted" in " ".join(lines)
