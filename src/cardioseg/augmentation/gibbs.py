"""Gibbs ringing: truncation of the high k-space frequencies (MONAI ``GibbsNoise``)."""

from __future__ import annotations

import torch

from cardioseg.augmentation._artefacts import per_sample
from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Gibbs(Transform):
    """Keep only the central part of k-space (``monai.transforms.GibbsNoise``).

    Args:
        alpha: ``(B,)`` in [0, 1]: fraction of k-space removed (0 = unchanged); ringing appears
            at sharp edges such as the blood–myocardium border.

    Example:
        >>> Gibbs(torch.tensor([0.5]))(torch.rand(1, 1, 16, 16))[0].shape
        torch.Size([1, 1, 16, 16])
    """

    def __init__(self, alpha: torch.Tensor):
        super().__init__(alpha=alpha)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        alpha = self.params["alpha"]
        active = alpha > 0
        if not bool(active.any()):
            return image, label
        from monai.transforms import GibbsNoise

        def one(i: int, x: torch.Tensor) -> torch.Tensor:
            y = GibbsNoise(alpha=float(alpha[i]))(x[None])
            return torch.as_tensor(y.as_tensor() if hasattr(y, "as_tensor") else y)[0]

        return per_sample(image, active, one), label


class RandomGibbs(RandomTransform):
    """Random ringing strength ``alpha`` uniform in the range.

    Example:
        >>> t = RandomGibbs(p=1.0).sample(4, torch.Generator().manual_seed(0))
        >>> bool((t.params["alpha"] > 0).all())
        True
    """

    def __init__(self, alpha: tuple[float, float] = (0.3, 0.7), p: float = 0.15):
        super().__init__(p)
        if not 0 <= alpha[0] <= alpha[1] <= 1:
            raise ValueError(f"alpha must be a range in [0, 1], got {alpha}")
        self.alpha = alpha

    def sample(self, batch_size: int, generator: torch.Generator) -> Gibbs:
        m = self._mask(batch_size, generator).float()
        return Gibbs(self._uniform(batch_size, *self.alpha, generator) * m)
