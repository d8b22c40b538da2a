"""Tensor augmentations for contrastive replay (SCR, PCR, HPCR), done on the batch's device.

The contrastive online methods (Mai et al. 2021; Lin et al. 2023) build a second view of every
training image with torchvision's ``RandomResizedCrop(scale=(0.2, 1))``, ``RandomHorizontalFlip``,
``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`` and ``RandomGrayscale(p=0.2)``, one PIL
image at a time on the CPU. :class:`Augment` does the same kind of thing to a whole (B, C, H, W)
float batch at once, on whatever device it lives on, with every random number drawn from the
``generator`` it is given (a CPU ``torch.Generator``; the draws are moved to the batch's device),
so a run is reproducible and resumable. Every part can be switched off: for 8x8 or 28x28 grey
digits a horizontal flip changes the class's meaning and is off by default in the strategies.

Parts, applied in this order (torchvision applies the jitter's parts in random order; here the
order is fixed):

- ``crop="resized"``: a random area fraction in ``crop_scale`` and aspect ratio in (3/4, 4/3) of
  the image, resized back (bilinear); ``crop="pad"``: pad ``crop_padding`` pixels on each side
  and cut a random window of the original size (padded with the batch's minimum: zeros for
  images in [0, 1] with a black pixel, as ``RandomCrop(padding=p)``);
  ``crop="none"``.
- ``flip_p``: horizontal flip with this probability.
- ``jitter_p``: with this probability, brightness (times U(1-b, 1+b)) then contrast (around the
  image's mean, times U(1-c, 1+c)).
- ``grayscale_p``: 3-channel images only, replaced by their luminance with this probability.

The output has the input's shape, dtype and device and is clamped to the input batch's value
range ``[x.min(), x.max()]``; the input is never modified.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator)).to(device)


def resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """A random crop of each image (area fraction in ``scale``, aspect ratio in (3/4, 4/3)),
    resized to the image's size; ``flip`` (B,) bool mirrors the chosen images."""
    b, dev = len(x), x.device
    area = _uniform(b, scale[0], scale[1], generator, "cpu")
    ratio = torch.exp(_uniform(b, math.log(3 / 4), math.log(4 / 3), generator, "cpu"))
    w = torch.sqrt(area * ratio).clamp(max=1.0)    # fractions of the width / height
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # centre, normalised coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    sx = w if flip is None else torch.where(flip.cpu(), -w, w)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    grid = F.affine_grid(theta.to(dev, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def pad_crop(x: torch.Tensor, padding: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Pad ``padding`` pixels of ``fill`` on each side and cut a random window of the original size."""
    b, _, hgt, wid = x.shape
    p, dev = padding, x.device
    padded = F.pad(x, (p, p, p, p), value=fill)
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
    rows = (torch.arange(hgt, device=dev) + dy[:, None])[:, :, None]
    cols = (torch.arange(wid, device=dev) + dx[:, None])[:, None, :]
    return padded[torch.arange(b, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


@dataclass(frozen=True)
class Augment:
    """A random view of a (B, C, H, W) batch: ``Augment(...)(x, generator)``. See the module
    docstring; the defaults are the contrastive-replay papers' (CIFAR) settings."""

    crop: Literal["resized", "pad", "none"] = "resized"
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_padding: int = 4
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    grayscale_p: float = 0.2

    def __post_init__(self):
        checks = [("crop", self.crop in ("resized", "pad", "none"), "'resized', 'pad' or 'none'"),
                  ("crop_scale", len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                   "(low, high) with 0 < low <= high <= 1"),
                  ("crop_padding", isinstance(self.crop_padding, int) and self.crop_padding >= 0, "an integer >= 0"),
                  ("brightness", 0 <= self.brightness < 1, "in [0, 1)"),
                  ("contrast", 0 <= self.contrast < 1, "in [0, 1)")]
        checks += [(k, 0 <= getattr(self, k) <= 1, "in [0, 1]") for k in ("flip_p", "jitter_p", "grayscale_p")]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"Augment: {name} must be {what}, got {getattr(self, name)!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"Augment needs (B, C, H, W) images, got shape {tuple(x.shape)}")
        b, c, dev = len(x), x.shape[1], x.device
        lo, hi = x.min(), x.max()
        flip = torch.rand(b, generator=generator) < self.flip_p
        if self.crop == "resized":
            out = resized_crop(x, self.crop_scale, generator, flip)
        else:
            pad = self.crop == "pad" and self.crop_padding > 0
            out = pad_crop(x, self.crop_padding, generator, float(lo)) if pad else x
            out = torch.where(flip.to(dev)[:, None, None, None], out.flip(3), out)
        if self.jitter_p > 0:
            on = (torch.rand(b, generator=generator) < self.jitter_p).to(dev)[:, None, None, None]
            bright = _uniform(b, 1 - self.brightness, 1 + self.brightness, generator, dev)[:, None, None, None]
            contr = _uniform(b, 1 - self.contrast, 1 + self.contrast, generator, dev)[:, None, None, None]
            j = out * bright
            mean = j.mean(dim=(1, 2, 3), keepdim=True)
            j = (j - mean) * contr + mean
            out = torch.where(on, j, out)
        if self.grayscale_p > 0 and c == 3:
            on = (torch.rand(b, generator=generator) < self.grayscale_p).to(dev)[:, None, None, None]
            lum = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1).expand_as(out)
            out = torch.where(on, lum, out)
        return out.clamp(lo, hi).to(x.dtype)
