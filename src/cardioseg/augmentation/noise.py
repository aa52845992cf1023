"""Additive Gaussian or Rician-like noise relative to the image's standard deviation."""

from __future__ import annotations

import torch

from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Noise(Transform):
    """Add ``std * sigma * n`` where ``n`` is a fixed noise realisation.

    Args:
        sigma: ``(B,)`` noise level relative to the image std.
        seed: Seed of the noise realisation (so the transform is replayable).
    """

    def __init__(self, sigma: torch.Tensor, seed: torch.Tensor):
        super().__init__(sigma=sigma, seed=seed)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        g = torch.Generator().manual_seed(int(self.params["seed"]))
        n = torch.randn(image.shape, generator=g)
        std = image.std(dim=(1, 2, 3), keepdim=True)
        return image + n * std * self.params["sigma"].view(-1, 1, 1, 1), label


class RandomNoise(RandomTransform):
    """Random relative noise level in ``sigma``."""

    def __init__(self, sigma: tuple[float, float] = (0.0, 0.12), p: float = 0.4):
        super().__init__(p)
        self.sigma = sigma

    def sample(self, batch_size: int, generator: torch.Generator) -> Noise:
        m = self._mask(batch_size, generator).float()
        s = self._uniform(batch_size, *self.sigma, generator)
        seed = torch.randint(0, 2**31 - 1, (1,), generator=generator)
        return Noise(s * m, seed)
