"""In-plane orientation: 90° turns and flips (vendors store short-axis slices differently)."""

from __future__ import annotations

import torch

from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Orientation(Transform):
    """Rotate each sample by ``k * 90°`` then flip the last axis where ``flip`` is set.

    Args:
        k: ``(B,)`` integers in 0..3.
        flip: ``(B,)`` booleans.
    """

    spatial = True

    def __init__(self, k: torch.Tensor, flip: torch.Tensor):
        super().__init__(k=k, flip=flip)

    @staticmethod
    def _one(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
        x = torch.rot90(x, k, dims=(-2, -1))
        return torch.flip(x, dims=(-1,)) if flip else x

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        if image.shape[-1] != image.shape[-2] and bool((self.params["k"] % 2 == 1).any()):
            raise ValueError("odd 90° turns in a batch need square images")
        k, f = self.params["k"].tolist(), self.params["flip"].tolist()
        image = torch.stack([self._one(im, ki, fi) for im, ki, fi in zip(image, k, f, strict=True)])
        if label is not None:
            label = torch.stack(
                [self._one(lb, ki, fi) for lb, ki, fi in zip(label, k, f, strict=True)]
            )
        return image, label

    def inverse(self) -> Orientation:
        """A transform that undoes this one (flip first, then rotate back)."""
        return _InverseOrientation(self.params["k"], self.params["flip"])


class _InverseOrientation(Orientation):
    @staticmethod
    def _one(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
        x = torch.flip(x, dims=(-1,)) if flip else x
        return torch.rot90(x, -k, dims=(-2, -1))


class RandomOrientation(RandomTransform):
    """Random 90° turns and flips.

    Example:
        >>> t = RandomOrientation().sample(4, torch.Generator().manual_seed(0))
        >>> sorted(t.params)
        ['flip', 'k']
    """

    def sample(self, batch_size: int, generator: torch.Generator) -> Orientation:
        mask = self._mask(batch_size, generator)
        k = torch.randint(0, 4, (batch_size,), generator=generator) * mask
        flip = (torch.rand(batch_size, generator=generator) < 0.5) & mask
        return Orientation(k, flip)
