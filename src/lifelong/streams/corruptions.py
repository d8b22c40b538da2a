"""Deterministic image corruptions and the long test-time-adaptation (TTA) stream built from them.

The corruptions follow ImageNet-C (Hendrycks & Dietterich, ICLR 2019) and MNIST-C (Mu & Gilmer,
2019): each takes a batch of images ``(N, C, H, W)`` with values in [0, 1], a ``severity`` from 1
(mild) to 5 (strong) and a ``torch.Generator`` for its randomness, and returns a new tensor in
[0, 1] (the input is never modified). Everything is plain torch (no torchvision), so the same
generator state gives the same images on any machine.

| name | what it does | severity 1 .. 5 |
|---|---|---|
| ``gaussian_noise`` | add N(0, sigma^2) per pixel | sigma 0.08 .. 0.38 |
| ``shot_noise`` | Poisson(lam * x) / lam | lam 60 .. 3 |
| ``impulse_noise`` | salt and pepper on a fraction of pixels | 0.03 .. 0.27 |
| ``gaussian_blur`` | Gaussian kernel | sigma 0.6 .. 1.6 |
| ``defocus_blur`` | disk (box-like) kernel | radius 1 .. 3 |
| ``contrast`` | (x - mean) * c + mean | c 0.4 .. 0.1 |
| ``brightness`` | x + b | b 0.1 .. 0.5 |
| ``rotation`` | rotate by +-angle (per image, random sign and 80-100 %) | 10 .. 50 degrees |
| ``translation`` | shift by k pixels in a random direction (per image) | 1 .. 5 pixels |
| ``zoom`` | scale about the centre (per image, in or out) | factor 1.15 .. 1.6 |
| ``elastic`` | smoothed random displacement field (Simard et al. 2003) | alpha 1 .. 3 pixels |
| ``pixelate`` | average-pool to a coarser grid, then nearest upsampling | 20 .. 8 pixels |

:func:`tta_stream` cuts the MNIST test set into batches under a sequence of corruptions
repeated for several cycles (CoTTA's continual protocol, Wang et al. CVPR 2022, made longer):
a pure function of its arguments and seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def _check(x: torch.Tensor, severity: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"corruptions take image batches (N, C, H, W), got shape {tuple(x.shape)}")
    if not (isinstance(severity, int) and 1 <= severity <= 5):
        raise ConfigError(f"corruption severity must be an integer 1..5, got {severity!r}")


def _uniform(n: int, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _sign(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=g).float() * 2 - 1


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel with a 2-D ``kernel`` (odd size, zero padding: MNIST's background)."""
    k = kernel.to(x.dtype)[None, None].expand(x.shape[1], 1, *kernel.shape)
    return F.conv2d(x, k, padding=kernel.shape[-1] // 2, groups=x.shape[1])


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k1 = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = torch.outer(k1, k1)
    return (k / k.sum()).float()


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Affine warp (``theta`` (N, 2, 3) in normalised coordinates), bilinear, zero padding."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def gaussian_noise(x, severity, g):
    sigma = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)


def shot_noise(x, severity, g):
    lam = [60.0, 25.0, 12.0, 5.0, 3.0][severity - 1]
    return torch.poisson(x * lam, generator=g) / lam


def impulse_noise(x, severity, g):
    frac = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    u = torch.rand(x.shape, generator=g, dtype=x.dtype)
    salt = torch.rand(x.shape, generator=g) < 0.5
    out = x.clone()
    hit = u < frac
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


def gaussian_blur(x, severity, g):
    return _filter(x, _gaussian_kernel([0.6, 0.8, 1.0, 1.3, 1.6][severity - 1]))


def defocus_blur(x, severity, g):
    radius = [1.0, 1.5, 2.0, 2.5, 3.0][severity - 1]
    r = math.ceil(radius)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2 + 1e-6).float()
    return _filter(x, disk / disk.sum())


def contrast(x, severity, g):
    c = [0.4, 0.3, 0.2, 0.15, 0.1][severity - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def brightness(x, severity, g):
    return x + [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]


def rotation(x, severity, g):
    deg = [10, 20, 30, 40, 50][severity - 1]
    a = torch.deg2rad(_sign(len(x), g) * _uniform(len(x), g, 0.8 * deg, deg))
    c, s, z = torch.cos(a), torch.sin(a), torch.zeros(len(x))
    return _warp(x, torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1))


def translation(x, severity, g):
    k = [1, 2, 3, 4, 5][severity - 1]
    a = _uniform(len(x), g, 0, 2 * math.pi)
    dx, dy = torch.round(k * torch.cos(a)), torch.round(k * torch.sin(a))
    one, z = torch.ones(len(x)), torch.zeros(len(x))
    # a shift of k pixels is 2k / size in normalised coordinates (sign: content moves by +d)
    theta = torch.stack([torch.stack([one, z, -2 * dx / x.shape[-1]], 1),
                         torch.stack([z, one, -2 * dy / x.shape[-2]], 1)], 1)
    return _warp(x, theta)


def zoom(x, severity, g):
    f = [1.15, 1.25, 1.35, 1.45, 1.6][severity - 1]
    s = torch.where(_sign(len(x), g) > 0, torch.full((len(x),), 1 / f), torch.full((len(x),), f))
    z = torch.zeros(len(x))
    return _warp(x, torch.stack([torch.stack([s, z, z], 1), torch.stack([z, s, z], 1)], 1))


def elastic(x, severity, g):
    alpha = [1.0, 1.5, 2.0, 2.5, 3.0][severity - 1]  # displacement scale, pixels
    n, _, h, w = x.shape
    field = _filter(torch.rand((n, 2, h, w), generator=g) * 2 - 1, _gaussian_kernel(3.0))
    field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8) * alpha
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h), torch.linspace(-1 + 1 / w, 1 - 1 / w, w),
                            indexing="ij")
    grid = torch.stack([xs + 2 * field[:, 0] / w, ys + 2 * field[:, 1] / h], dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), align_corners=False)


def pixelate(x, severity, g):
    size = [20, 16, 12, 10, 8][severity - 1]
    small = F.adaptive_avg_pool2d(x, size)
    return F.interpolate(small, size=x.shape[-2:], mode="nearest")


CORRUPTIONS: dict[str, Callable] = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, gaussian_blur, defocus_blur, contrast, brightness, rotation,
    translation, zoom, elastic, pixelate)}


def corrupt(x: torch.Tensor, name: str, severity: int = 5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Corruption ``name`` at ``severity`` (1..5) of images ``x`` (N, C, H, W) in [0, 1]; the
    result is a new tensor clipped to [0, 1]. ``generator`` drives the randomness (default seed 0)."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption '{name}'; allowed: {', '.join(CORRUPTIONS)}")
    _check(x, severity)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return CORRUPTIONS[name](x.float(), severity, g).clamp_(0.0, 1.0)


@dataclass
class TTABatch:
    """One batch of the TTA stream: inputs ``x`` (already corrupted), labels ``y`` (for scoring
    only; never shown to the strategy), and where it sits: ``position`` in the whole stream,
    ``cycle`` (0-based pass through the corruptions), ``corruption`` and its ``segment`` (the
    index of the (cycle, corruption) block) and ``index`` (the images' indices in the test set)."""

    x: torch.Tensor
    y: torch.Tensor
    position: int
    cycle: int
    corruption: str
    severity: int
    segment: int
    index: torch.Tensor


class TTAStream:
    """Batches of a dataset's test images under ``corruptions`` in order, repeated ``cycles``
    times; ``per_corruption`` images (a multiple of ``batch_size`` is not needed: the last batch of
    a segment may be smaller) for each (cycle, corruption) segment.

    The images of consecutive segments are consecutive chunks of one seeded permutation of the
    test set (wrapping around), so segments differ in content unless the stream is longer than
    the test set. Batch ``position`` is corrupted with its own generator seeded from ``(seed,
    position)``: every batch is a pure function of the arguments, built when iterated.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, corruptions: list[str], cycles: int = 1,
                 per_corruption: int = 1000, batch_size: int = 64, severity: int = 5, seed: int = 0):
        bad = [c for c in corruptions if c not in CORRUPTIONS]
        if bad or not corruptions:
            raise ConfigError(f"unknown corruption '{bad[0] if bad else ''}'; allowed: {', '.join(CORRUPTIONS)}")
        for key, v, lo in (("cycles", cycles, 1), ("per_corruption", per_corruption, 1), ("batch_size", batch_size, 1)):
            if not (isinstance(v, int) and v >= lo):
                raise ConfigError(f"TTA stream '{key}' must be an integer >= {lo}, got {v!r}")
        if not (isinstance(severity, int) and 1 <= severity <= 5):
            raise ConfigError(f"TTA stream 'severity' must be an integer 1..5, got {severity!r}")
        self.x, self.y = x, y
        self.corruptions, self.cycles, self.per_corruption = list(corruptions), cycles, per_corruption
        self.batch_size, self.severity, self.seed = batch_size, severity, seed
        self.order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        self._plan = []  # (cycle, corruption, segment, start offset in the stream's image sequence, size)
        for seg in range(cycles * len(self.corruptions)):
            cyc, name = seg // len(self.corruptions), self.corruptions[seg % len(self.corruptions)]
            for s in range(0, per_corruption, batch_size):
                self._plan.append((cyc, name, seg, seg * per_corruption + s, min(batch_size, per_corruption - s)))

    def __len__(self) -> int:
        return len(self._plan)

    @property
    def n_images(self) -> int:
        return self.cycles * len(self.corruptions) * self.per_corruption

    def __getitem__(self, position: int) -> TTABatch:
        cyc, name, seg, start, size = self._plan[position]
        index = self.order[(torch.arange(start, start + size)) % len(self.order)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
        x = corrupt(self.x[index], name, self.severity, g)
        return TTABatch(x, self.y[index], position, cyc, name, self.severity, seg, index)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def tta_stream(corruptions: list[str] | None = None, cycles: int = 10, per_corruption: int = 1000,
               batch_size: int = 64, severity: int = 5, seed: int = 0, data=None) -> TTAStream:
    """The long TTA stream on the MNIST test set (real data: ``lifelong.data.mnist()``, or the
    ``DatasetSplits`` given as ``data``): ``corruptions`` (default: all of :data:`CORRUPTIONS`,
    in that order) at ``severity``, repeated ``cycles`` times."""
    if data is None:
        from ..data import mnist

        data = mnist()
    return TTAStream(data.test.to_float(), data.test.y, list(corruptions or CORRUPTIONS), cycles, per_corruption,
                     batch_size, severity, seed)
