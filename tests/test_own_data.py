"""caviar on data other than CIFAR-10 (docs/data.md): a CIFAR-100-format folder and an
image folder of 26 classes go through `caviar sweep smoke`, `caviar ensemble`, `caviar export
--format onnx` and `caviar report`, and learn far above chance; augmentations are choices."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from caviar import cli
from caviar.training.fixture import write_cifar100_fixture, write_imagefolder_fixture

# smoke.yaml as written, on fixtures of a few thousand images: a 500-image validation split.
SMALL = ["--set", "data.val_size=500", "--set", "data.train_subset=null", "--set", "data.download=false"]
FORMATS = {
    # name: (fixture writer and its arguments, data settings, classes)
    "cifar100": (lambda root: write_cifar100_fixture(root, train_size=3000, test_size=300),
                 ["--set", "data.format=cifar100", "--set", "data.labels=fine"], 100),
    # letters: a mirror image may be another letter, so each trial draws whether it trains with flips
    "imagefolder": (lambda root: write_imagefolder_fixture(root, train_size=2080, test_size=260, classes=26),
                    ["--set", "data.format=imagefolder", "--set", "data.image_size=32",
                     "--set", "space.flip=[true, false]"], 26),
}


@pytest.fixture(scope="module", params=sorted(FORMATS))
def swept(request, ray_session, tmp_path_factory):
    """`caviar sweep smoke` on a fixture of the format, then `caviar ensemble` of its folder."""
    write, settings, classes = FORMATS[request.param]
    root = write(tmp_path_factory.mktemp(request.param))
    storage = tmp_path_factory.mktemp("results")
    data = ["--set", f"data.root={root}", *settings, *SMALL]
    assert cli.main(["sweep", "smoke", "--storage", str(storage), "--name", request.param, *data]) == 0
    folder = storage / request.param
    assert cli.main(["ensemble", str(folder), "--top-k", "2", "--seeds", "0"]) == 0
    return request.param, folder, classes


def test_the_sweep_learns_far_above_chance_and_records_the_data(swept):
    """The best trial is at least 5 times chance; caviar.yaml holds the class count the data has,
    summary.json the dataset's own channel statistics."""
    name, folder, classes = swept
    board = pd.read_csv(folder / "leaderboard.csv")
    assert board["best_val_acc"].max() > 5 / classes, board[["trial_id", "best_val_acc"]]
    assert f"num_classes: {classes}" in (folder / "caviar.yaml").read_text()
    data = json.loads((folder / "summary.json").read_text())["data"]
    assert data["classes"] == classes and len(data["mean"]) == 3 and data["mean"] != [0.4914, 0.4822, 0.4465]


def test_the_ensemble_predicts_every_class_count(swept):
    """ensemble.json: test accuracy far above chance, members of the data's class count."""
    _, folder, classes = swept
    info = json.loads((folder / "ensemble" / "ensemble.json").read_text())
    assert info["accuracy"] > 5 / classes
    assert info["best_member"]["accuracy"] > 5 / classes


def test_the_onnx_export_runs_with_the_datasets_statistics(swept, tmp_path):
    """`caviar export --format onnx`: onnxruntime gives (N, classes) probabilities that match the
    ensemble's own predictions."""
    ort = pytest.importorskip("onnxruntime")
    from caviar.ensembles.model import Ensemble

    _, folder, classes = swept
    out = tmp_path / "model.onnx"
    assert cli.main(["export", str(folder / "ensemble"), "--format", "onnx", "--out", str(out)]) == 0
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: images})[0]
    assert probs.shape == (5, classes)
    expected = Ensemble.load(folder / "ensemble").predict(images)
    assert np.abs(probs - expected).max() < 0.02  # the device may predict in bf16 (caviar.training.train)


def test_the_report_is_written(swept):
    """`caviar report` writes report.html with its charts for any class count."""
    _, folder, _ = swept
    assert cli.main(["report", str(folder)]) == 0
    assert "<html" in (folder / "report.html").read_text().lower()
    assert any((folder / "report").glob("*.png"))


def test_flip_as_a_searched_choice(swept):
    """space.flip: [true, false] (the image-folder sweep's): each trial draws it and records it;
    the ensemble mirror-averages only when every member trained with flips (the CIFAR-100 sweep's
    trials all flip, as its data.augment says, and draw nothing)."""
    name, folder, _ = swept
    board = pd.read_csv(folder / "leaderboard.csv")
    searched = name == "imagefolder"
    assert ("flip" in board) == searched
    drawn = board["flip"] if searched else pd.Series(True, index=board.index)
    assert set(drawn) <= {True, False}
    flips = drawn.set_axis(board["trial_id"].astype(str))
    info = json.loads((folder / "ensemble" / "ensemble.json").read_text())
    members_flipped = [bool(flips[str(member["trial_id"])]) for member in info["members"]]
    assert members_flipped and info["flip"] == all(members_flipped)


def test_check_says_what_it_found_in_a_new_dataset(tmp_path):
    """`caviar check` on an image folder first tells images per split, classes, balance and statistics."""
    from caviar.training.checks import check_experiment

    root = write_imagefolder_fixture(tmp_path / "letters", train_size=780, test_size=52, classes=26)
    lines: list[str] = []
    check_experiment("smoke", [f"data.root={root}", "data.format=imagefolder", "data.val_size=104",
                               "data.train_subset=null"], images=10, log=lines.append)
    found = lines[0]
    assert "676 training and 104 validation images of 32x32 pixels, 26 classes (A, B, C" in found, found
    assert "per class: 30 (" in found and "channel mean [" in found, found
    # 780 images of 32x32: 3,080 bytes each with the label
    assert lines[1].startswith("memory: 780 training images of 32x32 px take ~2.3 MB decoded"), lines[1]
    assert "on each trial's device" in lines[1] and "limit ~" in lines[1]


def test_check_refuses_a_num_classes_the_data_disagrees_with(tmp_path):
    """`caviar check` with model.num_classes 5 on 26 class folders: the same message a sweep gives."""
    from caviar.errors import ConfigError
    from caviar.training.checks import check_experiment

    root = write_imagefolder_fixture(tmp_path / "letters", train_size=260, test_size=26, classes=26)
    with pytest.raises(ConfigError, match="model.num_classes is 5 but .* has 26 classes"):
        check_experiment("smoke", [f"data.root={root}", "data.format=imagefolder", "data.val_size=52",
                                   "data.train_subset=null", "model.num_classes=5"], log=None)


def test_predict_on_the_folders_own_files(swept, tmp_path):
    """`caviar predict` on image files (the image folder's own test files; CIFAR-100's test images
    written as PNGs) names the classes and is far above chance; the probabilities are
    Ensemble.predict's on the same decoded images; the exported ONNX file gives the same top classes
    from its own metadata."""
    from caviar.ensembles.export import export
    from caviar.ensembles.model import Ensemble
    from caviar.ensembles.predict import image_files, predict_files
    from caviar.training.imagefolder import decode_all

    name, folder, classes = swept
    data = json.loads((folder / "summary.json").read_text())["config"]["data"]
    ensemble = Ensemble.load(folder / "ensemble")
    if name == "imagefolder":
        tests = image_files([f"{data['root']}/test"])[::5]
        truth = [path.parent.name for path in tests]
    else:  # CIFAR's formats keep arrays: its test images written as PNG files, named by class
        from PIL import Image

        from caviar.training.data import load_test_set

        images, labels = load_test_set(data["root"], download=False, format=data["format"], labels=data["labels"])
        tests, truth = [], []
        for i in range(0, len(labels), 5):
            tests.append(tmp_path / f"{i}.png")
            Image.fromarray(images[i].transpose(1, 2, 0)).save(tests[-1])
            truth.append(ensemble.class_names[labels[i]])
    rows = predict_files(folder / "ensemble", tests, top=2)
    assert (rows["class_1"] == truth).mean() > 5 / classes
    expected = ensemble.predict(decode_all(tests, ensemble.image_size))
    names = np.array(ensemble.class_names)
    assert len(names) == classes and rows["class_1"].tolist() == names[expected.argmax(1)].tolist()
    np.testing.assert_allclose(rows["prob_1"], expected.max(1), atol=1e-6)
    pytest.importorskip("onnxruntime")
    exported = export(folder / "ensemble", "onnx", out=tmp_path / "model.onnx")
    from_file = predict_files(exported, tests, top=2)
    assert (from_file["class_1"] == rows["class_1"]).mean() > 0.95  # bf16 vs float32 may swap a near tie
