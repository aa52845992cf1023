"""Smooth multiplicative bias field (coil inhomogeneity), a polynomial of order 3."""

from __future__ import annotations

import torch

from cardioseg.augmentation.base import Batch, RandomTransform, Transform, _per_sample_minmax

_ORDER = 3
_TERMS = [(i, j) for i in range(_ORDER + 1) for j in range(_ORDER + 1 - i)]


class BiasField(Transform):
    """Multiply the shifted intensities by ``exp(sum c_ij x^i y^j)`` (field of mean 1).

    Args:
        coefficients: ``(B, n_terms)`` polynomial coefficients.
    """

    def __init__(self, coefficients: torch.Tensor):
        super().__init__(coefficients=coefficients)

    def field(self, h: int, w: int) -> torch.Tensor:
        y = torch.linspace(-1, 1, h).view(h, 1)
        x = torch.linspace(-1, 1, w).view(1, w)
        basis = torch.stack([(x**i) * (y**j) for i, j in _TERMS])  # (T, H, W)
        log_f = torch.einsum("bt,thw->bhw", self.params["coefficients"], basis)
        f = torch.exp(log_f)
        return (f / f.mean(dim=(1, 2), keepdim=True))[:, None]

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        lo, _ = _per_sample_minmax(image)
        return lo + (image - lo) * self.field(*image.shape[-2:]), label


class RandomBiasField(RandomTransform):
    """Random polynomial coefficients uniform in ±``magnitude``."""

    def __init__(self, magnitude: float = 0.4, p: float = 0.4):
        super().__init__(p)
        self.magnitude = magnitude

    def sample(self, batch_size: int, generator: torch.Generator) -> BiasField:
        m = self._mask(batch_size, generator).float().view(-1, 1)
        c = self._uniform(batch_size * len(_TERMS), -self.magnitude, self.magnitude, generator)
        c = c.view(batch_size, len(_TERMS))
        c[:, 0] = 0
        return BiasField(c * m)
