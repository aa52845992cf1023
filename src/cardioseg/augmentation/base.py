"""Base classes: a random transform samples parameters and delegates to a deterministic twin.

All transforms act on a batch: ``image`` is ``(B, 1, H, W)`` float, ``label`` is ``(B, H, W)``
integer or ``None``. Parameters are per sample, so what was applied is recorded in
:attr:`Transform.params` and can be replayed (and, for spatial ones, inverted).
"""

from __future__ import annotations

from typing import Any

import torch

Batch = tuple[torch.Tensor, torch.Tensor | None]


class Transform:
    """Deterministic transform with explicit per-sample parameters."""

    spatial = False

    def __init__(self, **params: torch.Tensor):
        self.params = params

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> Batch:
        return self.apply(image, label)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.params)})"


class RandomTransform:
    """Samples parameters for each sample in a batch; with probability ``1 - p`` an identity.

    Args:
        p: Probability that a sample is transformed.
    """

    def __init__(self, p: float = 1.0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def sample(self, batch_size: int, generator: torch.Generator) -> Transform:
        raise NotImplementedError

    def _mask(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=g) < self.p

    @staticmethod
    def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    def __call__(
        self,
        image: torch.Tensor,
        label: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        g = generator if generator is not None else torch.default_generator
        return self.sample(image.shape[0], g)(image, label)


def _per_sample_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, *([1] * (x.ndim - 1)))
    hi = flat.max(1).values.view(-1, *([1] * (x.ndim - 1)))
    return lo, torch.clamp(hi - lo, min=1e-6)


class Compose:
    """Apply random transforms in order and keep the deterministic transforms that were applied.

    Example:
        >>> aug = Compose([RandomGamma(p=1.0)], seed=0)  # doctest: +SKIP
        >>> x, y = torch.rand(2, 1, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long)
        >>> img, lab = aug(x, y)  # doctest: +SKIP
    """

    def __init__(self, transforms: list[RandomTransform], seed: int | None = None):
        self.transforms = transforms
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self.applied: list[Transform] = []

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> Batch:
        self.applied = []
        for t in self.transforms:
            det = t.sample(image.shape[0], self.generator)
            image, label = det(image, label)
            self.applied.append(det)
        return image, label

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
