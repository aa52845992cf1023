"""Anisotropic resolution: coarse sampling along one in-plane axis, then back to the grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Anisotropy(Transform):
    """Downsample along ``axis`` by ``factor`` (area average), upsample back bilinearly.

    Scanners acquire fewer phase-encoding lines than read-out samples and interpolate; the
    effective resolution then differs between the two in-plane axes (TorchIO's
    ``RandomAnisotropy`` models the same effect along the slice axis of 3D volumes).

    Args:
        factor: ``(B,)`` downsampling factors (>= 1; 1 = unchanged).
        axis: ``(B,)`` in-plane axis, 0 (rows) or 1 (columns).

    Example:
        >>> t = Anisotropy(torch.tensor([3.0]), torch.tensor([1]))
        >>> t(torch.rand(1, 1, 20, 30))[0].shape
        torch.Size([1, 1, 20, 30])
    """

    def __init__(self, factor: torch.Tensor, axis: torch.Tensor):
        super().__init__(factor=factor, axis=axis)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        h, w = image.shape[-2:]
        out = image.clone()
        for i, (f, a) in enumerate(
            zip(self.params["factor"].tolist(), self.params["axis"].tolist(), strict=True)
        ):
            if f <= 1.01:
                continue
            size = (max(2, int(round(h / f))), w) if a == 0 else (h, max(2, int(round(w / f))))
            small = F.interpolate(image[i : i + 1], size=size, mode="area")
            out[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        return out, label


class RandomAnisotropy(RandomTransform):
    """Random factor uniform in ``factor`` along a random in-plane axis.

    Example:
        >>> t = RandomAnisotropy(p=1.0).sample(2, torch.Generator().manual_seed(0))
        >>> sorted(t.params)
        ['axis', 'factor']
    """

    def __init__(self, factor: tuple[float, float] = (1.5, 3.5), p: float = 0.15):
        super().__init__(p)
        if factor[0] < 1 or factor[1] < factor[0]:
            raise ValueError(f"factor must be a range >= 1, got {factor}")
        self.factor = factor

    def sample(self, batch_size: int, generator: torch.Generator) -> Anisotropy:
        m = self._mask(batch_size, generator).float()
        f = self._uniform(batch_size, *self.factor, generator)
        axis = torch.randint(0, 2, (batch_size,), generator=generator)
        return Anisotropy(1 + (f - 1) * m, axis)
