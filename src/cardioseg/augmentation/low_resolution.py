"""Simulated lower acquisition resolution: downsample, then upsample back."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class LowResolution(Transform):
    """Downsample by ``factor`` (per sample, >= 1) with area averaging, upsample bilinearly."""

    def __init__(self, factor: torch.Tensor):
        super().__init__(factor=factor)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        h, w = image.shape[-2:]
        out = image.clone()
        for i, f in enumerate(self.params["factor"].tolist()):
            if f <= 1.01:
                continue
            size = (max(4, int(h / f)), max(4, int(w / f)))
            small = F.interpolate(image[i : i + 1], size=size, mode="area")
            out[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        return out, label


class RandomLowResolution(RandomTransform):
    """Random factor uniform in ``factor``."""

    def __init__(self, factor: tuple[float, float] = (1.0, 2.0), p: float = 0.25):
        super().__init__(p)
        self.factor = factor

    def sample(self, batch_size: int, generator: torch.Generator) -> LowResolution:
        m = self._mask(batch_size, generator).float()
        f = self._uniform(batch_size, *self.factor, generator)
        return LowResolution(1 + (f - 1) * m)
