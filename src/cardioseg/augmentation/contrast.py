"""Linear contrast and brightness change."""

from __future__ import annotations

import torch

from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Contrast(Transform):
    """``x' = mean + factor * (x - mean) + shift * std`` per sample."""

    def __init__(self, factor: torch.Tensor, shift: torch.Tensor):
        super().__init__(factor=factor, shift=shift)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        std = image.std(dim=(1, 2, 3), keepdim=True)
        f = self.params["factor"].view(-1, 1, 1, 1)
        s = self.params["shift"].view(-1, 1, 1, 1)
        return mean + f * (image - mean) + s * std, label


class RandomContrast(RandomTransform):
    """Random contrast factor in ``factor`` and brightness shift in ±``shift`` (std units)."""

    def __init__(
        self, factor: tuple[float, float] = (0.7, 1.4), shift: float = 0.2, p: float = 0.5
    ):
        super().__init__(p)
        self.factor, self.shift = factor, shift

    def sample(self, batch_size: int, generator: torch.Generator) -> Contrast:
        m = self._mask(batch_size, generator).float()
        f = self._uniform(batch_size, *self.factor, generator)
        s = self._uniform(batch_size, -self.shift, self.shift, generator)
        return Contrast(1 + (f - 1) * m, s * m)
