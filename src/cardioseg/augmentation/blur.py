"""Gaussian blur with a per-sample standard deviation (in pixels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cardioseg.augmentation.base import Batch, RandomTransform, Transform


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable blur of a ``(B, 1, H, W)`` batch; ``sigma`` ``(B,)`` in pixels (0 = none)."""
    radius = int(max(1, torch.ceil(3 * sigma.max()).item()))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    s = sigma.clamp(min=1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (x.view(1, -1) / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    b = image.shape[0]
    # grouped conv: each sample its own kernel
    xb = image.transpose(0, 1)  # (1, B, H, W)
    xb = F.pad(xb, (radius, radius, radius, radius), mode="reflect")
    xb = F.conv2d(xb, k.view(b, 1, 1, -1), groups=b)
    xb = F.conv2d(xb, k.view(b, 1, -1, 1), groups=b)
    return xb.transpose(0, 1)


class Blur(Transform):
    """Blur each sample with Gaussian ``sigma`` pixels."""

    def __init__(self, sigma: torch.Tensor):
        super().__init__(sigma=sigma)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        if float(self.params["sigma"].max()) < 1e-3:
            return image, label
        return gaussian_blur(image, self.params["sigma"]), label


class RandomBlur(RandomTransform):
    """Random blur with ``sigma`` uniform in the range (pixels)."""

    def __init__(self, sigma: tuple[float, float] = (0.3, 1.2), p: float = 0.25):
        super().__init__(p)
        self.sigma = sigma

    def sample(self, batch_size: int, generator: torch.Generator) -> Blur:
        m = self._mask(batch_size, generator).float()
        return Blur(self._uniform(batch_size, *self.sigma, generator) * m)
