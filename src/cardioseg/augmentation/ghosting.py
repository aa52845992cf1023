"""MRI ghosting: periodic copies of the image along the phase-encoding axis (TorchIO)."""

from __future__ import annotations

import torch

from cardioseg.augmentation._artefacts import per_sample, require_torchio
from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Ghosting(Transform):
    """Attenuate every ``num_ghosts``-th k-space line along ``axis`` (``torchio.Ghosting``).

    Cardiac and respiratory motion and pulsatile flow make ghosts along the phase-encoding
    direction. Labels are not changed.

    Args:
        num_ghosts: ``(B,)`` number of ghosts (0 = unchanged).
        axis: ``(B,)`` in-plane axis, 0 (rows) or 1 (columns).
        intensity: ``(B,)`` artefact strength in [0, 1] (0 = unchanged).
        restore: ``(B,)`` fraction of the k-space centre that is kept intact.

    Example:
        >>> t = Ghosting(torch.tensor([4]), torch.tensor([0]), torch.tensor([0.6]),
        ...              torch.tensor([0.02]))
        >>> t(torch.rand(1, 1, 32, 32))[0].shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(
        self,
        num_ghosts: torch.Tensor,
        axis: torch.Tensor,
        intensity: torch.Tensor,
        restore: torch.Tensor,
    ):
        super().__init__(num_ghosts=num_ghosts, axis=axis, intensity=intensity, restore=restore)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        p = self.params
        active = (p["num_ghosts"] > 0) & (p["intensity"] > 0)
        if not bool(active.any()):
            return image, label
        tio = require_torchio()

        def one(i: int, x: torch.Tensor) -> torch.Tensor:
            t = tio.Ghosting(
                num_ghosts=int(p["num_ghosts"][i]),
                axis=int(p["axis"][i]),
                intensity=float(p["intensity"][i]),
                restore=float(p["restore"][i]),
            )
            return t(x[None, :, :, None])[0, :, :, 0]

        return per_sample(image, active, one), label


class RandomGhosting(RandomTransform):
    """Random ghosting (TorchIO's artefact model with 2D-appropriate parameters).

    Args:
        num_ghosts: Inclusive integer range of the number of ghosts.
        intensity: Range of the artefact strength.
        restore: Fraction of the k-space centre kept intact.
        p: Probability per sample.

    Example:
        >>> t = RandomGhosting(p=1.0).sample(2, torch.Generator().manual_seed(0))
        >>> sorted(t.params)
        ['axis', 'intensity', 'num_ghosts', 'restore']
    """

    def __init__(
        self,
        num_ghosts: tuple[int, int] = (2, 8),
        intensity: tuple[float, float] = (0.3, 0.8),
        restore: float = 0.02,
        p: float = 0.2,
    ):
        super().__init__(p)
        if num_ghosts[0] < 1 or num_ghosts[1] < num_ghosts[0]:
            raise ValueError(f"invalid num_ghosts range {num_ghosts}")
        if not 0 <= intensity[0] <= intensity[1] <= 1:
            raise ValueError(f"intensity must be a range in [0, 1], got {intensity}")
        self.num_ghosts, self.intensity, self.restore = num_ghosts, intensity, restore

    def sample(self, batch_size: int, generator: torch.Generator) -> Ghosting:
        m = self._mask(batch_size, generator)
        n = torch.randint(
            self.num_ghosts[0], self.num_ghosts[1] + 1, (batch_size,), generator=generator
        )
        axis = torch.randint(0, 2, (batch_size,), generator=generator)
        inten = self._uniform(batch_size, *self.intensity, generator)
        return Ghosting(n * m, axis, inten * m, torch.full((batch_size,), self.restore))
