"""Model families and `build_model(hparams)`; weight initialisation schemes.

- ``convnet``: the notes' configurable network: conv blocks [conv3x3 - (batch norm) - act - maxpool],
  then hidden fully connected layers with dropout, then the classifier.
- ``resnet``: a DAWNBench-style ResNet-9 (prep, three stages, two residual blocks) with a width
  multiplier: 94% on CIFAR-10 in a few minutes of GPU time at width 1.

Either may start with a whitening layer (`whiten` in a trial's hyperparameters, `Whitening`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "tanh": nn.Tanh,
}
FAMILIES = ("convnet", "resnet")
CLASSIFIER_INIT_STD = 1e-3  # weights of the last layer at initialisation (see init_weights)
# The ResNet-9's logits are scaled down, as in the DAWNBench ResNet-9 (Page, "How to train your
# ResNet", 2018). Its max-pooled features are large, so the classifier's first steps at the
# textbook SGD learning rate (0.1) blow the logits up: unscaled, the batch loss went 2.3 -> 50
# within 20 steps on Fashion-MNIST, past caviar's divergence limit (10 x ln 10), and the trial was
# stopped as diverged; scaled, it falls from the first step.
RESNET_LOGIT_SCALE = 0.125


WHITEN_CHUNK_BYTES = 256 * 2 ** 20  # what one chunk of the whitening fit may take (its images and their patches)


def whiten_chunk(image_size: int) -> int:
    """Images per chunk of Whitening.fit: each takes 3 float32 channels and 12 patch values a pixel
    (60 bytes a pixel)."""
    return max(1, WHITEN_CHUNK_BYTES // (60 * image_size * image_size))


class Whitening(nn.Module):
    """A first layer that whitens 2x2 image patches (Keller Jordan's airbench, after tysam-code's
    hlb-CIFAR10): a fixed 2x2 convolution whose filters are the principal components of the
    training images' patches, each scaled to unit variance, and their negatives (so a ReLU after
    it keeps both signs), 2 x 12 channels for RGB. The filters are computed from training images
    by `fit` before the first step (caviar.training.trial.Trial does it) and never trained; the
    bias is. The image is padded by one pixel right and below, so its size is kept."""

    KERNEL = 2
    EPS = 5e-4  # added to each component's variance: the faintest components are not blown up to noise

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.out_channels = 2 * channels * self.KERNEL ** 2
        self.conv = nn.Conv2d(channels, self.out_channels, self.KERNEL, bias=True)
        self.conv.weight.requires_grad_(False)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))  # saved: a resumed trial keeps its filters

    @torch.no_grad()
    def fit(self, images: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Set the filters from (N, C, H, W) normalised training images, or from chunks of them:
        the patches' covariance is summed chunk by chunk, so memory holds one chunk's patches
        (all at once, 5,000 images of 256 px would make 15 GB of them)."""
        k, channels = self.KERNEL, self.conv.in_channels
        covariance, count = None, 0
        for chunk in [images] if isinstance(images, torch.Tensor) else images:
            patches = chunk.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * k * k)
            part = (patches.T @ patches).double()
            covariance = part if covariance is None else covariance + part
            count += len(patches)
        if covariance is None:
            raise ValueError("whitening needs at least one training image")
        variances, components = torch.linalg.eigh((covariance / count).float())
        filters = (components.T / torch.sqrt(variances.clamp_min(0) + self.EPS)[:, None])
        filters = filters.reshape(-1, channels, k, k)
        self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight.dtype))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (0, 1, 0, 1), mode="replicate"))


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _conv_unit(c_in: int, c_out: int, batch_norm: bool, activation: str) -> list[nn.Module]:
    # With batch norm the conv bias is redundant (BN's shift replaces it).
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(_activation(activation))
    return layers


class ConvNet(nn.Module):
    def __init__(
        self,
        conv_layers: int = 2,
        conv_width: int = 64,
        fc_layers: int = 1,
        fc_width: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = True,
        activation: str = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(conv_layers):  # each block halves H and W: 32 -> 16 -> 8 -> 4
            blocks += _conv_unit(channels, conv_width, batch_norm, activation) + [nn.MaxPool2d(2)]
            channels = conv_width
        # Pool to 4x4 so the first FC layer has width*16 inputs whatever the depth (1 block
        # would otherwise leave 16x16 maps and a huge first FC layer).
        blocks.append(nn.AdaptiveAvgPool2d(4))
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        features = channels * 16
        for _ in range(fc_layers):
            head += [nn.Dropout(dropout), nn.Linear(features, fc_width), _activation(activation)]
            features = fc_width
        head += [nn.Dropout(dropout), nn.Linear(features, num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes) logits
        return self.classifier(self.features(x))


class _Residual(nn.Module):
    def __init__(self, channels: int, batch_norm: bool, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_unit(channels, channels, batch_norm, activation),
            *_conv_unit(channels, channels, batch_norm, activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    def __init__(
        self,
        width: float = 1.0,
        dropout: float = 0.0,
        batch_norm: bool = True,
        activation: str = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = (max(8, round(c * width)) for c in (64, 128, 256, 512))

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            return _conv_unit(c_in, c_out, batch_norm, activation) + [nn.MaxPool2d(2)]

        self.logit_scale = RESNET_LOGIT_SCALE  # an attribute, as TorchScript export reads no globals
        self.net = nn.Sequential(
            *_conv_unit(in_channels, c1, batch_norm, activation),  # prep: 32x32
            *stage(c1, c2), _Residual(c2, batch_norm, activation),  # 16x16
            *stage(c2, c3),  # 8x8
            *stage(c3, c4), _Residual(c4, batch_norm, activation),  # 4x4
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c4, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.logit_scale


def init_weights(model: nn.Module, scheme: str, activation: str = "relu") -> None:
    """He (fan-in, for ReLU-like units) or Xavier (for tanh) on every conv and linear weight."""
    if scheme not in ("he", "xavier"):
        raise ValueError(f"unknown init {scheme!r}; expected 'he' or 'xavier'")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == "he":
                nonlinearity = "relu" if activation in ("relu", "elu") else "tanh"
                nn.init.kaiming_normal_(module.weight, nonlinearity=nonlinearity)
            else:
                nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("tanh" if activation == "tanh" else "relu"))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    # The classifier (the last Linear) starts small, so the initial logits are ~0 and the initial
    # loss is ln(classes), 2.303 for CIFAR-10 (the first of `caviar check`'s sanity checks). With
    # He/Xavier there the logits start with a std of 1-20 and the loss at 3-30 nats: a "hockey
    # stick" first epoch spent shrinking them.
    classifier = [module for module in model.modules() if isinstance(module, nn.Linear)][-1:]
    for module in classifier:
        nn.init.normal_(module.weight, std=CLASSIFIER_INIT_STD)


def build_model(family: str, hparams: dict[str, Any], width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model of `family` for one trial's hyperparameters; with `whiten`, a
    `Whitening` layer and the activation come first (its filters are set by `Whitening.fit`)."""
    whiten = bool(hparams.get("whiten") or False)
    common = dict(
        dropout=float(hparams.get("dropout", 0.0)),
        batch_norm=bool(hparams.get("batch_norm", True)),
        activation=str(hparams.get("activation", "relu")),
        num_classes=num_classes,
        in_channels=2 * 3 * Whitening.KERNEL ** 2 if whiten else 3,
    )
    if family == "convnet":
        model: nn.Module = ConvNet(
            conv_layers=int(hparams.get("conv_layers", 2)),
            conv_width=int(hparams.get("conv_width", 64)),
            fc_layers=int(hparams.get("fc_layers", 1)),
            fc_width=int(hparams.get("fc_width", 128)),
            **common,
        )
    elif family == "resnet":
        model = ResNet9(width=width, **common)
    else:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    init_weights(model, str(hparams.get("init", "he")), common["activation"])
    if whiten:
        model = nn.Sequential(Whitening(3), _activation(common["activation"]), model)
    return model


def whitening_layers(model: nn.Module) -> list[Whitening]:
    return [module for module in model.modules() if isinstance(module, Whitening)]
