"""MRI motion artefact: k-space assembled from several moved copies of the image (TorchIO)."""

from __future__ import annotations

import numpy as np
import torch

from cardioseg.augmentation._artefacts import per_sample, require_torchio
from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Motion(Transform):
    """In-plane rigid movements during the acquisition (``torchio.Motion``, Shaw et al. 2019).

    The k-space lines along the last image axis are split at ``times``; each segment comes from
    the image moved by the corresponding rotation and shift. Labels are not changed (the
    artefact corrupts the image, the anatomy stays where it is).

    Args:
        degrees: ``(B, n)`` in-plane rotations in degrees.
        shift: ``(B, n, 2)`` in-plane translations in pixels.
        times: ``(B, n)`` increasing fractions in (0, 1) at which the movements happen.

    Example:
        >>> t = Motion(torch.tensor([[5.0]]), torch.tensor([[[2.0, -1.0]]]), torch.tensor([[0.5]]))
        >>> t(torch.rand(1, 1, 24, 24))[0].shape
        torch.Size([1, 1, 24, 24])
    """

    def __init__(self, degrees: torch.Tensor, shift: torch.Tensor, times: torch.Tensor):
        super().__init__(degrees=degrees, shift=shift, times=times)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        p = self.params
        active = (p["degrees"].abs().sum(1) > 0) | (p["shift"].abs().sum((1, 2)) > 0)
        if not bool(active.any()):
            return image, label
        tio = require_torchio()

        def one(i: int, x: torch.Tensor) -> torch.Tensor:
            deg = p["degrees"][i].double().numpy()
            sh = p["shift"][i].double().numpy()
            zeros = np.zeros_like(deg)
            # the slice is laid out as (1, H, 1, W): TorchIO fills k-space along its last axis
            # (W) and the in-plane rotation is about the middle (singleton) axis
            t = tio.Motion(
                degrees=np.stack([zeros, deg, zeros], 1),
                translation=np.stack([sh[:, 0], zeros, sh[:, 1]], 1),
                times=p["times"][i].double().numpy(),
                image_interpolation="linear",
            )
            return t(x[None, :, None, :])[0, :, 0, :]

        return per_sample(image, active, one), label


class RandomMotion(RandomTransform):
    """Random movements: rotation in ±``degrees``, shift in ±``translation`` pixels.

    Args:
        degrees: Maximum absolute rotation in degrees.
        translation: Maximum absolute shift in pixels per axis.
        num_transforms: Number of movements during the acquisition.
        p: Probability per sample.

    Example:
        >>> t = RandomMotion(p=1.0).sample(3, torch.Generator().manual_seed(0))
        >>> tuple(t.params["shift"].shape)
        (3, 2, 2)
    """

    def __init__(
        self,
        degrees: float = 5.0,
        translation: float = 5.0,
        num_transforms: int = 2,
        p: float = 0.2,
    ):
        super().__init__(p)
        if degrees < 0 or translation < 0 or num_transforms < 1:
            raise ValueError("need degrees >= 0, translation >= 0 and num_transforms >= 1")
        self.degrees, self.translation, self.num_transforms = degrees, translation, num_transforms

    def sample(self, batch_size: int, generator: torch.Generator) -> Motion:
        n = self.num_transforms
        m = self._mask(batch_size, generator).float()
        deg = self._uniform(batch_size * n, -self.degrees, self.degrees, generator)
        sh = self._uniform(batch_size * n * 2, -self.translation, self.translation, generator)
        times = torch.sort(self._uniform(batch_size * n, 0.1, 0.9, generator).view(-1, n), 1)
        return Motion(
            deg.view(-1, n) * m[:, None], sh.view(-1, n, 2) * m[:, None, None], times.values
        )
