"""Smooth elastic deformation from a coarse random displacement grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cardioseg.augmentation.affine import _resample
from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class ElasticDeformation(Transform):
    """Deform with a coarse displacement field ``(B, 2, g, g)`` in normalised units."""

    spatial = True

    def __init__(self, displacement: torch.Tensor):
        super().__init__(displacement=displacement)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        b, _, h, w = image.shape
        disp = F.interpolate(
            self.params["displacement"], size=(h, w), mode="bicubic", align_corners=False
        ).permute(0, 2, 3, 1)
        eye = torch.eye(2, 3).expand(b, 2, 3)
        grid = F.affine_grid(eye, [b, 1, h, w], align_corners=False) + disp
        return _resample(image, label, grid)


class RandomElasticDeformation(RandomTransform):
    """Random displacements at ``control_points``² nodes with max magnitude ``max_displacement``
    (fraction of the half-size of the image)."""

    def __init__(self, control_points: int = 5, max_displacement: float = 0.04, p: float = 0.3):
        super().__init__(p)
        if control_points < 2 or max_displacement < 0:
            raise ValueError("control_points must be >= 2 and max_displacement >= 0")
        self.control_points, self.max_displacement = control_points, max_displacement

    def sample(self, batch_size: int, generator: torch.Generator) -> ElasticDeformation:
        m = self._mask(batch_size, generator).float().view(-1, 1, 1, 1)
        g = self.control_points
        d = (torch.rand(batch_size, 2, g, g, generator=generator) * 2 - 1) * self.max_displacement
        return ElasticDeformation(d * m)
