"""caviar.training.memory: what a dataset will take in memory, estimated from its files before any
image is decoded, and a clear refusal where it cannot fit."""

from __future__ import annotations

import numpy as np
import pytest

from caviar.config.loading import load_config
from caviar.errors import DataError
from caviar.training import datacache, imagefolder, memory
from caviar.training.data import data_for, image_counts
from caviar.training.fixture import write_cifar_fixture, write_imagefolder_fixture


def _config(root, *extra):
    return load_config(None, [f"data.root={root}", "data.val_size=20", "data.download=false", *extra])


def test_the_estimate_counts_images_from_the_files(tmp_path):
    """An image folder's images are counted from its listing, CIFAR's from the files' sizes (within
    2%); the figures follow from the count and the size, per trial from its subset."""
    folder = write_imagefolder_fixture(tmp_path / "img", train_size=60, test_size=9, classes=3)
    cifar = write_cifar_fixture(tmp_path / "cifar", train_size=300, test_size=40)
    assert image_counts(_config(folder, "data.format=imagefolder")) == (60, 9)
    train, test = image_counts(_config(cifar))
    assert 300 <= train <= 306 and 40 <= test <= 41
    figures = memory.estimate(_config(folder, "data.format=imagefolder", "data.image_size=64",
                                      "data.train_subset=10"), 60, 9)
    image = 3 * 64 * 64 + 8
    assert figures["decoded"] == 60 * image and figures["loading"] == 2 * figures["decoded"]
    assert figures["per_trial"] == (10 + 20) * image and figures["test"] == 9 * image
    assert memory.estimate(_config(folder, "data.image_size=256"), 5000, 0)["whitening"] <= 256 * 2 ** 20


@pytest.mark.parametrize("text, expected", [("8G", 8 * 2 ** 30), ("500M", 500 * 2 ** 20), ("1.5g", 3 * 2 ** 29),
                                            ("1024", 1024), ("2GiB", 2 * 2 ** 30)])
def test_limits_are_read_as_people_write_them(text, expected):
    assert memory.parse_bytes(text) == expected


def test_a_folder_too_large_for_the_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    """With CAVIAR_MEMORY_LIMIT below what loading takes: a DataError naming the data, the need,
    the limit and what to do; not one image decoded. A limit that holds lets it load."""
    folder = write_imagefolder_fixture(tmp_path / "img", train_size=60, test_size=9, classes=3)
    monkeypatch.setenv(memory.ENV, "100K")
    monkeypatch.setattr(imagefolder, "decode_all", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(DataError, match=r"the data at .*img would not fit in memory: 60 training images of 128x128 px "
                                        r"need ~5.6 MB while they are loaded and split, and CAVIAR_MEMORY_LIMIT=100K "
                                        r"leaves ~100 KB. Lower data.image_size"):
        data_for(_config(folder, "data.format=imagefolder", "data.image_size=128"))
    monkeypatch.setenv(memory.ENV, "bad")
    with pytest.raises(DataError, match="CAVIAR_MEMORY_LIMIT='bad': expected bytes or a size such as 8G"):
        data_for(_config(folder, "data.format=imagefolder"))
    monkeypatch.undo()  # decoding allowed again
    monkeypatch.setenv(memory.ENV, "1G")
    assert len(data_for(_config(folder, "data.format=imagefolder")).train_y) == 40


def test_the_cached_split_is_memory_mapped(tmp_path):
    """Read back from the cache, the training images are a read-only memory map (no copy in memory
    until the split takes its parts); the split's arrays are ordinary, writable copies."""
    folder = write_imagefolder_fixture(tmp_path / "img", train_size=60, test_size=9, classes=3)
    imagefolder.load_split(folder, "train", 32)  # decoded and cached
    cached = imagefolder.load_split(folder, "train", 32, mmap=True)
    assert isinstance(cached.images, np.memmap) and not cached.images.flags.writeable
    data = data_for(_config(folder, "data.format=imagefolder"))
    assert data.train_x.flags.writeable and not isinstance(data.train_x, np.memmap)
    assert datacache.load_npy(tmp_path / "absent.npy", mmap=True) is None


def test_a_gpu_trial_refuses_a_data_copy_that_leaves_no_room_to_train():
    """A trial's data on its GPU may take at most half of what its share lets it allocate: on a
    quarter of an 80 GB GPU, 5 GB fits and 15 GB is refused naming the figures and the fixes; a
    whole GPU is not bounded by a share."""
    from caviar.training.memory import device_copy_problem

    gb = 2 ** 30
    assert device_copy_problem(5 * gb, 0.25, 80 * gb) is None
    problem = device_copy_problem(15 * gb, 0.25, 80 * gb)
    assert "15.0 GB" in problem and "0.25 of a GPU of 80.0 GB" in problem and "resources.gpus_per_trial" in problem
    assert device_copy_problem(15 * gb, 1.0, 80 * gb) is None and device_copy_problem(50 * gb, 1.0, 80 * gb)
