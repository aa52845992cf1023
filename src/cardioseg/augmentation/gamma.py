"""Gamma (non-linear contrast) change, computed on the per-sample [0, 1] range."""

from __future__ import annotations

import torch

from cardioseg.augmentation.base import Batch, RandomTransform, Transform, _per_sample_minmax


class Gamma(Transform):
    """``x' = lo + range * ((x - lo) / range) ** exp(log_gamma)`` per sample."""

    def __init__(self, log_gamma: torch.Tensor):
        super().__init__(log_gamma=log_gamma)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        lo, rng = _per_sample_minmax(image)
        g = torch.exp(self.params["log_gamma"]).view(-1, 1, 1, 1)
        return lo + rng * ((image - lo) / rng).clamp(0, 1) ** g, label


class RandomGamma(RandomTransform):
    """Random gamma with ``log(gamma)`` uniform in ``log_gamma``.

    Example:
        >>> t = RandomGamma(p=1.0).sample(2, torch.Generator().manual_seed(0))
        >>> x, _ = t(torch.rand(2, 1, 8, 8))
    """

    def __init__(self, log_gamma: tuple[float, float] = (-0.5, 0.5), p: float = 0.5):
        super().__init__(p)
        self.log_gamma = log_gamma

    def sample(self, batch_size: int, generator: torch.Generator) -> Gamma:
        m = self._mask(batch_size, generator).float()
        return Gamma(self._uniform(batch_size, *self.log_gamma, generator) * m)
