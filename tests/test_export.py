"""caviar.ensembles.export: one TorchScript / ONNX file per ensemble, whose outputs are Ensemble.predict's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from caviar import cli
from caviar.ensembles.ensembler import Ensemble
from caviar.ensembles.export import export
from caviar.errors import ConfigError
from caviar.training.models import build_model

MEMBERS = [  # two families, different depths and activations, BN statistics away from their defaults
    ("convnet", {"conv_layers": 2, "conv_width": 16, "fc_layers": 1, "fc_width": 32, "dropout": 0.3}),
    ("convnet", {"conv_layers": 1, "conv_width": 8, "fc_layers": 2, "fc_width": 16, "activation": "elu"}),
    ("resnet", {"dropout": 0.2}),
]
WEIGHTS = [0.6, 0.1, 0.3]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved ensemble of three small members with random weights (so they disagree), as
    `caviar ensemble` writes it."""
    torch.manual_seed(0)
    models, descriptions = [], []
    for family, hparams in MEMBERS:
        model = build_model(family, hparams, width=0.125, num_classes=10)
        for parameter in model.parameters():
            parameter.data.normal_(0, 0.3)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        models.append(model.eval())
        descriptions.append({"family": family, "width": 0.125, "num_classes": 10, "hparams": hparams})
    folder = tmp_path_factory.mktemp("ens") / "ensemble"
    Ensemble(models, np.array(WEIGHTS), ["a", "b", "c"], descriptions).save(folder)
    return folder


@pytest.fixture(scope="module")
def saved_flip(saved, tmp_path_factory):
    """The same ensemble saved with mirror averaging on (as `caviar ensemble` does for members
    that trained with flips)."""
    ensemble = Ensemble.load(saved)
    ensemble.flip = True
    folder = tmp_path_factory.mktemp("ens-flip") / "ensemble"
    ensemble.save(folder)
    return folder


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def float32_predict(monkeypatch):
    """Ensemble.predict in float32: where the device has native bf16 it predicts in bf16 (caviar.training.train);
    the exported file computes in float32, so that is the reference to match to float rounding."""
    import caviar.training.train

    monkeypatch.setattr(caviar.training.train, "uses_bf16", lambda device, amp: False)


def _reference(folder, x) -> np.ndarray:
    return Ensemble.load(folder).predict(x)


def test_torchscript_matches_predict_for_uint8_and_float(saved, images, float32_predict, tmp_path):
    """The TorchScript module gives Ensemble.predict's probabilities for uint8 and 0..1 float input,
    with the member weights baked in (the plain mean of the members is different)."""
    path = export(saved, "torchscript", out=tmp_path / "e.pt")
    module = torch.jit.load(str(path))
    expected = _reference(saved, images)
    got_uint8 = module(images).numpy()
    got_float = module(images.float() / 255).numpy()
    np.testing.assert_allclose(got_uint8, expected, atol=1e-5)
    np.testing.assert_allclose(got_float, expected, atol=1e-5)
    np.testing.assert_allclose(got_uint8.sum(axis=1), 1.0, atol=1e-5)
    uniform = Ensemble.load(saved).member_probs(images).mean(axis=0)
    assert np.abs(uniform - expected).max() > 1e-3  # the weights matter, so the check above sees them


def test_torchscript_is_close_to_bf16_predict(saved, images, tmp_path):
    """Without patching: on a bf16 device predict differs by bf16 rounding only; the classes agree."""
    module = torch.jit.load(str(export(saved, "torchscript", out=tmp_path / "e.pt")))
    expected, got = _reference(saved, images), module(images).numpy()
    assert np.abs(got - expected).max() < 0.03
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.8


def test_mirror_averaging_is_exported(saved, saved_flip, images, float32_predict, tmp_path):
    """An ensemble evaluated over each image and its mirror image exports that way: the TorchScript
    file gives its predict (which differs from the unmirrored one). The ONNX file of mirrored views
    is checked with the moved ones below (~6 s per ONNX export)."""
    mirrored = Ensemble.load(saved_flip)
    assert mirrored.flip and not Ensemble.load(saved).flip
    expected = mirrored.predict(images)
    assert np.abs(expected - _reference(saved, images)).max() > 1e-3
    _files_predict(saved_flip, images, expected, tmp_path, onnx=False)


def _files_predict(folder, images, expected, tmp_path, onnx: bool = True) -> None:
    """The TorchScript and (with `onnx`) ONNX exports of `folder` give `expected` (the ONNX one at
    two batch sizes)."""
    module = torch.jit.load(str(export(folder, "torchscript", out=tmp_path / "e.pt")))
    np.testing.assert_allclose(module(images).numpy(), expected, atol=1e-5)
    if not onnx:
        return
    pytest.importorskip("onnxscript", reason="pip install 'caviar[export]'")
    ort = pytest.importorskip("onnxruntime", reason="pip install 'caviar[export]'")
    session = ort.InferenceSession(str(export(folder, "onnx", out=tmp_path / "e.onnx")),
                                   providers=["CPUExecutionProvider"])
    for n in (len(images), 2):
        np.testing.assert_allclose(session.run(None, {"images": images.numpy()[:n]})[0], expected[:n], atol=1e-5)


def test_translated_views_are_exported(saved, images, float32_predict, tmp_path):
    """An ensemble averaged over mirrored and moved views (--translate) saves that, loads it back,
    and its TorchScript and ONNX files give its predict, which differs from the mirror-only one."""
    ensemble = Ensemble.load(saved)
    ensemble.flip, ensemble.translate = True, True
    folder = tmp_path / "ensemble"
    ensemble.save(folder)
    loaded = Ensemble.load(folder)
    assert loaded.translate and loaded.flip
    expected = loaded.predict(images)
    loaded.translate = False
    assert np.abs(expected - loaded.predict(images)).max() > 1e-3
    _files_predict(folder, images, expected, tmp_path)


def test_views_are_the_image_moved_one_pixel_with_reflected_borders():
    """The moved views are what reflect padding by one pixel and a diagonal crop give; the weights
    sum to 1, half on the unmoved views."""
    import torch.nn.functional as F

    from caviar.ensembles.views import moved, views

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    down_right, up_left = moved(x)
    assert torch.equal(down_right, padded[:, :, 0:5, 0:5]) and torch.equal(up_left, padded[:, :, 2:7, 2:7])
    assert torch.equal(moved(x.to(torch.uint8))[0], down_right.to(torch.uint8))  # uint8 images too
    shown = views(x, flip=True, translate=True)
    assert len(shown) == 6 and sum(w for _, w in shown) == pytest.approx(1.0)
    assert sum(w for v, w in shown[:2]) == pytest.approx(0.5)
    assert [w for _, w in views(x, flip=False, translate=False)] == [1.0]


@pytest.mark.parametrize("input_type", ["uint8", "float"])
def test_onnx_matches_predict_in_onnxruntime(saved, images, float32_predict, tmp_path, input_type):
    """The ONNX file, run by onnxruntime, gives Ensemble.predict's probabilities, any batch size."""
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (pip install 'caviar[export]')")
    ort = pytest.importorskip("onnxruntime", reason="pip install 'caviar[export]'")
    path = export(saved, "onnx", out=tmp_path / "e.onnx", input_type=input_type)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    x = images.numpy() if input_type == "uint8" else (images.numpy() / 255).astype(np.float32)
    expected = _reference(saved, images)
    for n in (9, 1):
        (got,) = session.run(None, {"images": x[:n]})
        np.testing.assert_allclose(got, expected[:n], atol=1e-5)


def test_files_load_without_caviar(saved, images, tmp_path):
    """torch.jit.load and onnxruntime read the files in a Python where importing caviar fails."""
    pytest.importorskip("onnxruntime", reason="pip install 'caviar[export]'")
    pytest.importorskip("onnxscript", reason="pip install 'caviar[export]'")
    ts, ox = export(saved, "torchscript", out=tmp_path / "e.pt"), export(saved, "onnx", out=tmp_path / "e.onnx")
    np.save(tmp_path / "x.npy", images.numpy())
    script = f"""
import sys
sys.modules["caviar"] = None  # any `import caviar` now fails
import numpy as np, onnxruntime, torch
x = np.load({str(tmp_path / "x.npy")!r})
a = torch.jit.load({str(ts)!r})(torch.from_numpy(x)).numpy()
b = onnxruntime.InferenceSession({str(ox)!r}).run(None, {{"images": x}})[0]
np.save({str(tmp_path / "out.npy")!r}, np.stack([a, b]))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    a, b = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.shape == (9, 10)


def test_cli_writes_the_default_file_and_never_overwrites(saved, capsys):
    """`caviar export DIR` writes DIR/ensemble.pt; a second run, or any existing --out, is refused (exit 2)."""
    assert cli.main(["export", str(saved)]) == 0
    assert f"Exported: {saved / 'ensemble.pt'}" in capsys.readouterr().out
    before = (saved / "ensemble.pt").read_bytes()
    assert cli.main(["export", str(saved)]) == 2
    assert "already exists; caviar does not overwrite files" in capsys.readouterr().err
    assert (saved / "ensemble.pt").read_bytes() == before
    mine = saved.parent / "notes.onnx"
    mine.write_text("mine")
    assert cli.main(["export", str(saved), "--format", "onnx", "--out", str(mine)]) == 2
    assert mine.read_text() == "mine"
    (saved / "ensemble.pt").unlink()


def test_bad_arguments_are_one_message_and_exit_2(saved, tmp_path, capsys):
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "holds no ensemble.json" in capsys.readouterr().err
    assert cli.main(["export", str(saved), "--out", str(tmp_path / "no" / "such" / "e.pt")]) == 2
    assert "does not exist; create it" in capsys.readouterr().err
    assert not list(saved.glob("*.partial"))


@pytest.mark.parametrize("key, value, shown", [
    ("mean", [0.2, 0.2, 0.2], "mean"), ("image_size", 64, "image_size"),
    ("class_names", ["cat", "dog"] + [str(i) for i in range(8)], "class_names")])
def test_members_that_disagree_are_refused_by_name(key, value, shown):
    """Members trained on other statistics, image sizes or classes are not averaged: a ConfigError
    names the members on each side and what differs. Members that do not record a value (older
    checkpoints) are not compared, and members that agree build."""
    model = build_model("resnet", {"dropout": 0.2}, width=0.125, num_classes=10)
    same = {"family": "resnet", "width": 0.125, "num_classes": 10, "hparams": {"dropout": 0.2}, "mean": [0.5] * 3,
            "std": [0.25] * 3, "image_size": 32, "class_names": [str(i) for i in range(10)]}
    Ensemble([model, model], np.ones(2), ["a", "b"], [same, {"family": "resnet"}])
    other = dict(same) | {key: value}
    with pytest.raises(ConfigError, match=rf"members disagree on {shown} \(a: .*; b: .*\): members must be trained "
                                          "on the same data"):
        Ensemble([model, model], np.ones(2), ["a", "b"], [same, other])


def _png_files(images: torch.Tensor, folder) -> list:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(images.numpy()):
        files.append(folder / f"{i}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(files[-1])
    return files


def test_predict_on_files_equals_the_ensembles_predictions(saved, images, tmp_path, float32_predict):
    """`caviar predict` on PNG files of the images gives, per file, the classes Ensemble.predict ranks
    first on those images, with the same probabilities; the exported TorchScript and ONNX files
    give the same from their own metadata; a larger photo is scaled and centre-cropped to the
    members' size exactly as the decoder does."""
    from caviar.ensembles.predict import predict_files
    from caviar.training.imagefolder import decode

    files = _png_files(images, tmp_path / "photos")
    expected = Ensemble.load(saved).predict(images.numpy())
    rows = predict_files(saved, [tmp_path / "photos"], top=2)
    assert list(rows.columns) == ["file", "class_1", "prob_1", "class_2", "prob_2"]
    assert rows["file"].tolist() == [str(f) for f in sorted(files)]
    order = [int(f.stem) for f in sorted(files)]
    assert rows["class_1"].tolist() == [str(int(expected[i].argmax())) for i in order]  # no names saved: indices
    np.testing.assert_allclose(rows["prob_1"], expected[order].max(1), atol=1e-6)
    for fmt in ("torchscript", "onnx"):
        if fmt == "onnx":
            pytest.importorskip("onnxruntime", reason="pip install 'caviar[export]'")
        exported = export(saved, fmt, out=tmp_path / f"e{'.pt' if fmt == 'torchscript' else '.onnx'}")
        from_file = predict_files(exported, files, top=2)
        assert from_file["class_1"].tolist() == [str(int(expected[int(f.stem)].argmax())) for f in files], fmt
        np.testing.assert_allclose(from_file["prob_1"], expected[[int(f.stem) for f in files]].max(1), atol=1e-4)
    from PIL import Image

    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(big)
    probs = Ensemble.load(saved).predict(decode(big, 32)[None])[0]
    assert predict_files(saved, [big], top=1)["prob_1"].tolist() == pytest.approx([probs.max()], abs=1e-6)


def test_predict_cli_writes_a_csv_once_and_refuses_bad_input(saved, images, tmp_path, capsys):
    """`caviar predict ENSEMBLE IMAGES --out preds.csv` writes one row per file; an existing --out, a
    missing image, a file that is not an image or a folder without an ensemble is exit 2 with a
    message, before anything is written."""
    files = _png_files(images[:3], tmp_path / "photos")
    out = tmp_path / "preds.csv"
    assert cli.main(["predict", str(saved), *map(str, files), "--out", str(out)]) == 0
    table = __import__("pandas").read_csv(out)
    assert len(table) == 3 and {"file", "class_3", "prob_3"} <= set(table.columns)
    assert (table["prob_1"] >= table["prob_2"]).all() and (table["prob_2"] >= table["prob_3"]).all()
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("x")
    for args, message in [([str(saved), str(files[0]), "--out", str(out)], "already exists"),
                          ([str(saved), str(tmp_path / "gone.png")], "gone.png does not exist"),
                          ([str(saved), str(tmp_path / "notes.txt")], "notes.txt is not an image file"),
                          ([str(tmp_path), str(files[0])], "holds no ensemble.json"),
                          ([str(saved), str(files[0]), "--top", "0"], "--top must be at least 1")]:
        assert cli.main(["predict", *args]) == 2, args
        assert message in capsys.readouterr().err, args
