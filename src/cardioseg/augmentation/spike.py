"""MRI spike (herringbone) artefact: bright points in k-space become stripes (TorchIO)."""

from __future__ import annotations

import numpy as np
import torch

from cardioseg.augmentation._artefacts import per_sample, require_torchio
from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Spike(Transform):
    """Add spikes at ``positions`` of the k-space (``torchio.Spike``).

    Args:
        positions: ``(B, n, 2)`` spike positions as fractions in [0, 1) of the k-space size.
        intensity: ``(B,)`` spike amplitude relative to the k-space maximum (0 = unchanged).

    Example:
        >>> t = Spike(torch.tensor([[[0.3, 0.6]]]), torch.tensor([0.5]))
        >>> t(torch.rand(1, 1, 16, 16))[0].shape
        torch.Size([1, 1, 16, 16])
    """

    def __init__(self, positions: torch.Tensor, intensity: torch.Tensor):
        super().__init__(positions=positions, intensity=intensity)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        p = self.params
        active = p["intensity"] != 0
        if not bool(active.any()):
            return image, label
        tio = require_torchio()

        def one(i: int, x: torch.Tensor) -> torch.Tensor:
            pos = p["positions"][i].double().numpy()
            pos3 = np.concatenate([pos, np.zeros((len(pos), 1))], 1)
            t = tio.Spike(spikes_positions=pos3, intensity=float(p["intensity"][i]))
            return t(x[None, :, :, None])[0, :, :, 0]

        return per_sample(image, active, one), label


class RandomSpike(RandomTransform):
    """Random spikes: ``num_spikes`` positions, amplitude in ``intensity`` (random sign).

    Args:
        num_spikes: Inclusive integer range of the number of spikes.
        intensity: Range of the absolute amplitude relative to the k-space maximum.
        p: Probability per sample.

    Example:
        >>> t = RandomSpike(p=1.0).sample(2, torch.Generator().manual_seed(0))
        >>> sorted(t.params)
        ['intensity', 'positions']
    """

    def __init__(
        self,
        num_spikes: tuple[int, int] = (1, 1),
        intensity: tuple[float, float] = (0.1, 0.6),
        p: float = 0.1,
    ):
        super().__init__(p)
        if num_spikes[0] < 1 or num_spikes[1] < num_spikes[0]:
            raise ValueError(f"invalid num_spikes range {num_spikes}")
        if intensity[0] < 0 or intensity[1] < intensity[0]:
            raise ValueError(f"invalid intensity range {intensity}")
        self.num_spikes, self.intensity = num_spikes, intensity

    def sample(self, batch_size: int, generator: torch.Generator) -> Spike:
        m = self._mask(batch_size, generator).float()
        n = int(
            torch.randint(self.num_spikes[0], self.num_spikes[1] + 1, (1,), generator=generator)
        )
        pos = torch.rand(batch_size, n, 2, generator=generator)
        amp = self._uniform(batch_size, *self.intensity, generator)
        sign = torch.where(torch.rand(batch_size, generator=generator) < 0.5, -1.0, 1.0)
        return Spike(pos, amp * sign * m)
