"""The views of an image batch a member is averaged over at test time: the image, its mirror image
(members that trained with flips saw both), and each of those moved by one pixel diagonally, both
ways (members that trained with random crops saw moved images). Plain tensor operations, so the
exported module (caviar.ensembles.export) computes exactly what `Ensemble.predict` does."""

from __future__ import annotations

import torch


def _reflect_pad_1(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H + 2, W + 2), the border mirrored (as reflect padding; any dtype)."""
    x = torch.cat([x[:, :, 1:2], x, x[:, :, -2:-1]], dim=2)
    return torch.cat([x[:, :, :, 1:2], x, x[:, :, :, -2:-1]], dim=3)


def moved(x: torch.Tensor) -> list[torch.Tensor]:
    """`x` moved one pixel down-right and one pixel up-left, borders reflected."""
    padded = _reflect_pad_1(x)
    return [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]


def views(x: torch.Tensor, flip: bool, translate: bool) -> list[tuple[torch.Tensor, float]]:
    """(view, weight) pairs whose weights sum to 1: the plain views share half the weight and the
    moved ones the other half when `translate` (a one-pixel move is a smaller change than a mirror,
    and the unmoved image is what the member is best at); all of it otherwise. (Loops, not
    comprehensions: TorchScript compiles this for the exported module.)"""
    plain = [x]
    if flip:
        plain.append(torch.flip(x, dims=[3]))
    share = 0.5 if translate else 1.0
    shown: list[tuple[torch.Tensor, float]] = []
    for view in plain:
        shown.append((view, share / len(plain)))
    if translate:
        for view in plain:
            for moved_view in moved(view):
                shown.append((moved_view, 0.5 / (2 * len(plain))))
    return shown
