"""Random rotation, scaling and translation applied with one resampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cardioseg.augmentation.base import Batch, RandomTransform, Transform


def _resample(image: torch.Tensor, label: torch.Tensor | None, grid: torch.Tensor) -> Batch:
    fill = image.flatten(1).min(1).values.view(-1, 1, 1, 1)
    out = (
        F.grid_sample(
            image - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        + fill
    )
    if label is not None:
        lab = (
            F.grid_sample(
                label[:, None].float(),
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )[:, 0]
            .round()
            .to(label.dtype)
        )
        label = lab
    return out, label


class Affine(Transform):
    """Rotate (radians), scale (zoom factor, >1 enlarges) and translate (fraction of size).

    Args:
        angle: ``(B,)`` radians.
        scale: ``(B, 2)`` zoom factors.
        translate: ``(B, 2)`` shifts in normalised coordinates [-1, 1].
    """

    spatial = True

    def __init__(self, angle: torch.Tensor, scale: torch.Tensor, translate: torch.Tensor):
        super().__init__(angle=angle, scale=scale, translate=translate)

    def matrix(self) -> torch.Tensor:
        a, s, t = self.params["angle"], self.params["scale"], self.params["translate"]
        cos, sin = torch.cos(a), torch.sin(a)
        m = torch.zeros(a.shape[0], 2, 3)
        m[:, 0, 0], m[:, 0, 1] = cos / s[:, 0], -sin / s[:, 0]
        m[:, 1, 0], m[:, 1, 1] = sin / s[:, 1], cos / s[:, 1]
        m[:, :, 2] = t
        return m

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        grid = F.affine_grid(self.matrix(), list(image.shape), align_corners=False)
        return _resample(image, label, grid)


class RandomAffine(RandomTransform):
    """Random rotation in ±``degrees``, isotropic zoom in ``scales`` (with a little anisotropy)."""

    def __init__(
        self,
        degrees: float = 20.0,
        scales: tuple[float, float] = (0.8, 1.25),
        anisotropy: float = 0.1,
        translate: float = 0.05,
        p: float = 1.0,
    ):
        super().__init__(p)
        if degrees < 0 or scales[0] <= 0 or scales[1] < scales[0]:
            raise ValueError("invalid affine ranges")
        self.degrees, self.scales, self.anisotropy, self.translate = (
            degrees,
            scales,
            anisotropy,
            translate,
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> Affine:
        m = self._mask(batch_size, generator).float()
        angle = self._uniform(batch_size, -self.degrees, self.degrees, generator) * math.pi / 180
        log_s = self._uniform(
            batch_size, math.log(self.scales[0]), math.log(self.scales[1]), generator
        )
        aniso = self._uniform(batch_size, -self.anisotropy, self.anisotropy, generator)
        scale = torch.stack([torch.exp(log_s + aniso / 2), torch.exp(log_s - aniso / 2)], 1)
        trans = self._uniform(2 * batch_size, -self.translate, self.translate, generator).view(
            -1, 2
        )
        return Affine(angle * m, scale ** m[:, None], trans * m[:, None])
