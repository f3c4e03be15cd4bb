"""caviar.training.models: every family and option builds and maps (B, 3, 32, 32) to (B, classes)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from caviar.training.models import ConvNet, ResNet9, build_model, init_weights


@pytest.mark.parametrize(
    "conv_layers,batch_norm,activation", list(itertools.product([1, 2, 3], [True, False], ["relu", "elu", "tanh"]))
)
def test_convnet_options(conv_layers, batch_norm, activation):
    """Any depth, with or without batch norm, any activation: logits of shape (B, classes)."""
    hparams = dict(conv_layers=conv_layers, conv_width=8, fc_layers=2, fc_width=16, dropout=0.5,
                   batch_norm=batch_norm, activation=activation, init="xavier")
    model = build_model("convnet", hparams, num_classes=7)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == conv_layers and all(c.out_channels == 8 for c in convs)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batch_norm
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3  # 2 hidden + classifier


def test_resnet_width_multiplier():
    """The ResNet-9's channel counts scale with `width`; the output is (B, classes)."""
    small, full = ResNet9(width=0.25), ResNet9(width=1.0)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    widths = [m.out_channels for m in full.modules() if isinstance(m, nn.Conv2d)]
    assert max(widths) == 512 and min(widths) == 64
    assert max(m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)) == 128
    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(full) > 10 * count(small)


def test_resnet_takes_the_textbook_sgd_step_without_a_loss_spike():
    """Nesterov SGD at lr 0.1 (He et al. 2016) from initialisation: the batch loss never passes
    caviar's divergence limit (train.diverge_factor 10 x ln 10). Without the ResNet-9's logit scale
    the loss reached 40-65 within 5 steps on these images and the trial was stopped as diverged."""
    import math

    from caviar.training.train import prepare_inputs

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build_model("resnet", {"dropout": 0.0}, width=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    means = torch.randint(0, 256, (10, 3, 32, 32), generator=g).float()  # a mean image per class
    losses = []
    for _ in range(10):
        y = torch.randint(0, 10, (128,), generator=g)
        x = (means[y] * 0.5 + torch.randint(0, 256, (128, 3, 32, 32), generator=g) * 0.5).to(torch.uint8)
        loss = nn.functional.cross_entropy(model(prepare_inputs(x, torch.device("cpu"), False)), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] == pytest.approx(math.log(10), abs=0.01)
    assert max(losses) < 10 * math.log(10), losses


def test_init_schemes_differ_and_zero_biases():
    """He: std sqrt(2 / fan_in); Xavier for tanh: std (5/3) sqrt(2 / (fan_in + fan_out)); biases 0."""
    torch.manual_seed(0)
    he, xavier = ConvNet(conv_width=64), ConvNet(conv_width=64)
    init_weights(he, "he")
    init_weights(xavier, "xavier", activation="tanh")
    conv_he, conv_x = ([m for m in net.modules() if isinstance(m, nn.Conv2d)][1] for net in (he, xavier))
    fan_in = 64 * 9
    assert conv_he.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    assert conv_x.weight.std().item() == pytest.approx(5 / 3 * (2 / (2 * fan_in)) ** 0.5, rel=0.1)
    for m in he.modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)


def test_unknown_names_raise():
    """A typo in family, activation or init is an error, not a silent default."""
    with pytest.raises(ValueError, match="family"):
        build_model("vgg", {})
    with pytest.raises(ValueError, match="activation"):
        build_model("convnet", {"activation": "gelu"})
    with pytest.raises(ValueError, match="init"):
        build_model("convnet", {"init": "orthogonal"})
