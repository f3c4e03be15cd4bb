"""caviar.training.checks: the shipped models pass the sanity checks; a wrong backward and an off initial loss fail."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from test_sweep import SMALL_NET, small_config
from torch import nn

import caviar.training.checks as checks
from caviar import cli
from caviar.training.data import load_cifar10
from caviar.training.models import build_model


@pytest.fixture(scope="module")
def images(learnable_root):
    data = load_cifar10(learnable_root)
    return torch.from_numpy(data.train_images[:64].copy()), torch.from_numpy(data.train_labels[:64].copy())


def run(build, images, **kwargs) -> dict[str, checks.CheckResult]:
    return {r.name.split(",")[0].split(" (")[0]: r for r in checks.check_model(build, *images, threads=1, **kwargs)}


class _WrongBackward(torch.autograd.Function):
    """y = x W^T + b, whose backward forgets the transpose's scale: grad W = 2 g^T x (a planted bug)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight, 2 * grad.t() @ x, grad.sum(0)


class BrokenLinear(nn.Linear):
    def forward(self, x):
        return _WrongBackward.apply(x, self.weight, self.bias)


@pytest.mark.parametrize("family,hparams,width", [
    ("convnet", dict(SMALL_NET, dropout=0.3), 1.0),
    ("convnet", dict(SMALL_NET, batch_norm=False, activation="tanh", init="xavier", fc_layers=2), 1.0),
    ("resnet", dict(batch_norm=True, activation="relu", dropout=0.2), 0.125),
])
def test_shipped_models_pass(family, hparams, width, images):
    """Initial loss ~ln(10), loss rises with L2 and dropout, 20 images overfit, gradients agree to < 1e-2."""
    results = run(lambda: build_model(family, hparams, width=width), images, weight_decay=1e-2,
                  dropout=hparams["dropout"], grad_images=2)
    assert all(r.passed for r in results.values()), "\n".join(r.line() for r in results.values())
    assert f"{math.log(10):.3f}" in results["initial loss"].figure
    grades = [line.split()[-1] for line in results["gradient check"].detail.splitlines()]
    assert len(grades) >= 3 and set(grades) <= {"fine", "ok"}, results["gradient check"].detail  # every layer


def test_wrong_backward_fails_the_gradient_check(images):
    """A layer whose backward doubles its weight gradient: relative error ~1/2, reported as WRONG for that layer."""
    def build():
        model = build_model("convnet", SMALL_NET)
        old = model.classifier[2]
        model.classifier[2] = BrokenLinear(old.in_features, old.out_features)
        model.classifier[2].load_state_dict(old.state_dict())
        return model

    result = run(build, images, grad_images=2)["gradient check"]
    assert not result.passed
    assert "classifier.2 (BrokenLinear)" in result.figure and "WRONG" in result.detail
    assert "5.0e-01" in result.figure  # |2g - g| / |2g|


def test_initial_loss_off_fails(images):
    """A classifier initialised large (logits std ~10) starts far above ln(10): the first check fails."""
    def build():
        model = build_model("convnet", SMALL_NET)
        nn.init.normal_(model.classifier[-1].weight, std=1.0)
        return model

    result = run(build, images)["initial loss"]
    assert not result.passed and float(result.figure.split()[0]) > math.log(10) + 0.5


def test_regularisation_must_raise_the_loss(images):
    """With L2 from the space the loss rises; with none at all the check says it was skipped."""
    model = build_model("convnet", SMALL_NET)
    x, y = checks.normalized(images[0]), images[1]
    _, off = checks.check_initial_loss(model, x, y, 10, 0.1)
    assert checks.check_regularisation(model, x, y, off, 1e-2, 0.0, 0).passed
    skipped = checks.check_regularisation(model, x, y, off, 0.0, 0.0, 0)
    assert skipped.passed and "skipped" in skipped.figure


def test_centre_of_the_space():
    """The checked model is the middle of each range in its sampling scale, the first of each choice."""
    from caviar.config.space import SpaceConfig

    h = checks.centre_hparams(SpaceConfig())
    assert h["lr"] == pytest.approx(10 ** -2.5) and h["momentum"] == pytest.approx(0.99)
    assert h["conv_layers"] == 2 and h["conv_width"] == 91 and h["optimizer"] == "sgd"


@pytest.fixture
def experiment(learnable_root, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(small_config(learnable_root, tmp_path, "chk")))
    return path


def test_cli_check_passes_and_prints_each_figure(experiment, capsys):
    """`caviar check EXPERIMENT`: four PASS lines with their figures, exit 0."""
    assert cli.main(["check", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 4 and "2.30" in out and "All 4 checks passed" in out


def test_cli_check_fails_with_exit_1(experiment, capsys, monkeypatch):
    """A model whose initial loss is off makes `caviar check` print FAIL and exit 1."""
    def off(*args, **kwargs):
        model = build_model(*args, **kwargs)
        with torch.no_grad():
            model.classifier[-1].bias[0] = 8.0  # every image starts as class 0
        return model

    monkeypatch.setattr(checks, "build_model", off)
    assert cli.main(["check", str(experiment)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  initial loss" in out and "1 of 4 checks FAILED" in out
