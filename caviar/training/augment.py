"""Batched augmentation on the trial's device: random crops after padding (zeros or reflect), flips
and cutout, for a whole batch at once with tensor ops (no DataLoader workers, no per-image PIL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# What fills the border a random crop shifts in: zeros (black pixels, the classic CIFAR recipe) or
# the image mirrored at its edge (airbench), which adds no black frame to images whose background
# is bright.
PAD_MODES = ("zeros", "reflect")
_PAD_MODES_TORCH = {"zeros": "constant", "reflect": "reflect"}  # torch.nn.functional.pad's names


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4, flip: bool = True,
                  cutout: int = 0, mirror: torch.Tensor | None = None, pad_mode: str = "zeros") -> torch.Tensor:
    """Random crop from a `pad`-pixel padded image (pad 0: none; `pad_mode` zeros, or reflect: the
    border mirrored, PAD_MODES), horizontal flip with p=0.5 (flip False: none; `mirror`, a bool
    per image, says which instead of chance) and, with cutout N > 0, a random N x N square zeroed
    (centred anywhere in the image, clipped at its edges, as in DeVries & Taylor 2017), per image.

    images: (B, C, H, W), any dtype/device; returns the same shape, dtype and device. The crops are
    one gather from a view of every window of the padded batch (no per-pixel index arithmetic:
    2.5x faster on CPU than indexing each pixel), the flips one select, the squares one mask.
    """
    if images.ndim != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
    if pad_mode == "reflect" and pad >= min(h, w):
        raise ValueError(f"reflect padding of {pad} px needs images wider than that, got {h}x{w}")
    dev = images.device
    rand_dev = generator.device if generator is not None else dev

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, (b,), generator=generator, device=rand_dev).to(dev)

    out = images
    if pad:
        # Offsets in 0..2*pad (pixels into the padded image); pad=4 means shifts of -4..+4.
        dy, dx = draw(2 * pad + 1), draw(2 * pad + 1)
    if flip:
        drawn = torch.rand(b, generator=generator, device=rand_dev) < 0.5 if mirror is None else mirror
        mirror = drawn.to(dev)
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad), mode=_PAD_MODES_TORCH[pad_mode])  # (B, C, H+2p, W+2p)
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W): a view, no copy
        out = windows[torch.arange(b, device=dev), :, dy, dx]  # (B, C, H, W)
    if flip:
        out = torch.where(mirror[:, None, None, None], out.flip(3), out)
    if cutout:
        top, left = draw(h) - cutout // 2, draw(w) - cutout // 2  # corners of squares centred anywhere
        rows = torch.arange(h, device=dev)[None] - top[:, None]  # (B, H): row index within the square
        cols = torch.arange(w, device=dev)[None] - left[:, None]
        inside = ((rows >= 0) & (rows < cutout))[:, :, None] & ((cols >= 0) & (cols < cutout))[:, None, :]
        out = out.masked_fill(inside[:, None], 0)  # (B, 1, H, W) mask over every channel
    return out
