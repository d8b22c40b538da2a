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

``aug(x, g)`` is ``aug.apply([x], [aug.draw(x, g)])[0]``: a method that needs several views
(OnPro: four per step) can draw each view's random numbers where its algorithm draws them and
compute all views in one pass, with the same numbers bit for bit (at batch 10 the cost of an
augmentation is its dozens of small operations, not its pixels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator)).to(device)


def _crop_draws(b: int, scale: tuple[float, float], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """:func:`resized_crop`'s random numbers (CPU): area fractions, aspect ratios, two U(0, 1) for the centre."""
    area = _uniform(b, scale[0], scale[1], generator, "cpu")
    ratio = torch.exp(_uniform(b, math.log(3 / 4), math.log(4 / 3), generator, "cpu"))
    return area, ratio, torch.rand(b, generator=generator), torch.rand(b, generator=generator)


def _resized_crop(x: torch.Tensor, area, ratio, ux, uy, flip: torch.Tensor | None) -> torch.Tensor:
    w = torch.sqrt(area * ratio).clamp(max=1.0)    # fractions of the width / height
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (ux * 2 - 1) * (1 - w)  # centre, normalised coordinates
    cy = (uy * 2 - 1) * (1 - h)
    sx = w if flip is None else torch.where(flip.cpu(), -w, w)
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """A random crop of each image (area fraction in ``scale``, aspect ratio in (3/4, 4/3)),
    resized to the image's size; ``flip`` (B,) bool mirrors the chosen images."""
    return _resized_crop(x, *_crop_draws(len(x), scale, generator), flip)


def _pad_crop(x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor, fill: float) -> torch.Tensor:
    b, _, hgt, wid = x.shape
    p, dev = padding, x.device
    padded = F.pad(x, (p, p, p, p), value=fill)
    dy, dx = dy.to(dev), dx.to(dev)
    rows = (torch.arange(hgt, device=dev) + dy[:, None])[:, :, None]
    cols = (torch.arange(wid, device=dev) + dx[:, None])[:, None, :]
    return padded[torch.arange(b, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def _shift_draws(b: int, padding: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randint(0, 2 * padding + 1, (b,), generator=generator),
            torch.randint(0, 2 * padding + 1, (b,), generator=generator))


def pad_crop(x: torch.Tensor, padding: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Pad ``padding`` pixels of ``fill`` on each side and cut a random window of the original size."""
    return _pad_crop(x, padding, *_shift_draws(len(x), padding, generator), fill)


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
        return self.apply([x], [self.draw(x, generator)])[0]

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict:
        """The random numbers of one view of ``x`` (CPU tensors), drawn as ``__call__`` draws them.
        With :meth:`apply` a method can draw several views in its own order and compute them in
        one pass: ``aug.apply([x, y], [aug.draw(x, g), aug.draw(y, g)])`` equals
        ``[aug(x, g), aug(y, g)]`` bit for bit."""
        if x.ndim != 4:
            raise ValueError(f"Augment needs (B, C, H, W) images, got shape {tuple(x.shape)}")
        b, c = len(x), x.shape[1]
        d = {"flip": torch.rand(b, generator=generator) < self.flip_p}
        if self.crop == "resized":
            d["crop"] = _crop_draws(b, self.crop_scale, generator)
        elif self.crop == "pad" and self.crop_padding > 0:
            d["shift"] = _shift_draws(b, self.crop_padding, generator)
        if self.jitter_p > 0:
            d["jitter"] = (torch.rand(b, generator=generator) < self.jitter_p,
                           _uniform(b, 1 - self.brightness, 1 + self.brightness, generator, "cpu"),
                           _uniform(b, 1 - self.contrast, 1 + self.contrast, generator, "cpu"))
        if self.grayscale_p > 0 and c == 3:
            d["gray"] = torch.rand(b, generator=generator) < self.grayscale_p
        return d

    def apply(self, xs: list[torch.Tensor], draws: list[dict]) -> list[torch.Tensor]:
        """The views of the batches ``xs`` (same image shape and device) from their :meth:`draw`,
        computed together; each is clamped to its own batch's value range."""
        x = torch.cat(xs) if len(xs) > 1 else xs[0]
        dev = x.device

        def joined(key: str) -> tuple[torch.Tensor, ...]:
            parts = [d[key] for d in draws]
            if isinstance(parts[0], tuple):
                return tuple(torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts))
            return (torch.cat(parts) if len(parts) > 1 else parts[0],)

        (flip,) = joined("flip")
        if self.crop == "resized":
            out = _resized_crop(x, *joined("crop"), flip)
        else:
            if "shift" in draws[0]:
                out = [_pad_crop(v, self.crop_padding, *d["shift"], float(v.min())) for v, d in zip(xs, draws)]
                out = torch.cat(out) if len(out) > 1 else out[0]
            else:
                out = x
            out = torch.where(flip.to(dev)[:, None, None, None], out.flip(3), out)
        if self.jitter_p > 0:
            on, bright, contr = (v.to(dev)[:, None, None, None] for v in joined("jitter"))
            j = out * bright
            mean = j.mean(dim=(1, 2, 3), keepdim=True)
            j = (j - mean) * contr + mean
            out = torch.where(on, j, out)
        if "gray" in draws[0]:
            on = joined("gray")[0].to(dev)[:, None, None, None]
            lum = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1).expand_as(out)
            out = torch.where(on, lum, out)
        if len(xs) == 1:
            return [out.clamp(x.min(), x.max()).to(x.dtype)]
        sizes = torch.tensor([len(v) for v in xs], device=dev)
        lo = torch.stack([v.min() for v in xs]).repeat_interleave(sizes)[:, None, None, None]
        hi = torch.stack([v.max() for v in xs]).repeat_interleave(sizes)[:, None, None, None]
        return list(out.clamp(lo, hi).to(x.dtype).split([len(v) for v in xs]))
