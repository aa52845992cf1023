"""Base classes: a random transform samples parameters and delegates to a deterministic twin.

All transforms act on a batch: ``image`` is ``(B, 1, H, W)`` float, ``label`` is ``(B, H, W)``
integer or ``None``. Parameters are per sample, so what was applied is recorded in
:attr:`Transform.params` and can be replayed (and, for spatial ones, inverted).
"""

from __future__ import annotations

from typing import Any

import torch

Batch = tuple[torch.Tensor, torch.Tensor | None]


def check_batch(image: Any, label: Any = None) -> None:
    """Refuse, with a clear :class:`ValueError`, what the transforms cannot take: ``image`` must
    be a float ``torch.Tensor`` ``(B, 1, H, W)``, ``label`` ``None`` or ``(B, H, W)``.

    Example:
        >>> check_batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
        >>> check_batch(torch.zeros(8, 8, 3))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: image must be a (B, 1, H, W) batch of 2D slices, got shape (8, 8, 3); ...
    """
    hint = "for a volume (X, Y, Z): torch.from_numpy(volume).permute(2, 0, 1)[:, None]"
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor, got {type(image).__name__}; {hint}")
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(
            f"image must be a (B, 1, H, W) batch of 2D slices, got shape {tuple(image.shape)}; "
            + hint
        )
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor, got {image.dtype}")
    if label is not None:
        if not isinstance(label, torch.Tensor):
            raise ValueError(f"label must be a torch.Tensor or None, got {type(label).__name__}")
        expected = (image.shape[0], *image.shape[2:])
        if tuple(label.shape) != expected:
            raise ValueError(
                f"label must have shape (B, H, W) = {expected} for image {tuple(image.shape)}, "
                f"got {tuple(label.shape)}"
            )


class Transform:
    """Deterministic transform with explicit per-sample parameters (:attr:`params`, each a tensor
    with one value per sample), the twin that a :class:`RandomTransform` samples.

    Example:
        >>> from cardioseg.augmentation import Gamma, RandomGamma
        >>> x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> det = RandomGamma(p=1.0).sample(3, torch.Generator().manual_seed(0))
        >>> sorted(det.params), det.params["log_gamma"].shape
        (['log_gamma'], torch.Size([3]))
        >>> y, _ = det(x)
        >>> torch.equal(y, Gamma(det.params["log_gamma"])(x)[0])  # replayed
        True
    """

    spatial = False

    def __init__(self, **params: torch.Tensor):
        self.params = params

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> Batch:
        check_batch(image, label)
        return self.apply(image, label)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.params)})"


class RandomTransform:
    """Samples parameters for each sample in a batch; with probability ``1 - p`` an identity.

    Args:
        p: Probability that a sample is transformed.

    Example:
        >>> from cardioseg.augmentation import RandomGamma
        >>> x = torch.rand(3, 1, 16, 16)
        >>> a, _ = RandomGamma(p=1.0)(x, generator=torch.Generator().manual_seed(1))
        >>> b, _ = RandomGamma(p=1.0)(x, generator=torch.Generator().manual_seed(1))
        >>> torch.equal(a, b)
        True
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
        """Sample parameters with ``generator`` (seeded: reproducible) and apply them.

        To know what was applied, sample the deterministic twin first and call it:
        ``det = t.sample(len(image), generator)``, ``det.params``, ``det(image, label)``.
        """
        check_batch(image, label)
        g = generator if generator is not None else torch.default_generator
        return self.sample(image.shape[0], g)(image, label)


def _per_sample_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, *([1] * (x.ndim - 1)))
    hi = flat.max(1).values.view(-1, *([1] * (x.ndim - 1)))
    return lo, torch.clamp(hi - lo, min=1e-6)


class Compose:
    """Apply random transforms in order and keep the deterministic transforms that were applied.

    :attr:`applied` holds, after each call, the deterministic transforms of that call: their
    ``params`` say what was applied to each sample, and calling them replays it.

    Example:
        >>> from cardioseg.augmentation import RandomGamma
        >>> aug = Compose([RandomGamma(p=1.0)], seed=0)
        >>> x, y = torch.rand(2, 1, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long)
        >>> img, lab = aug(x, y)
        >>> aug.applied
        [Gamma(log_gamma)]
        >>> torch.equal(aug.applied[0](x, y)[0], img)
        True
    """

    def __init__(self, transforms: list[RandomTransform], seed: int | None = None):
        self.transforms = transforms
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self.applied: list[Transform] = []

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> Batch:
        check_batch(image, label)
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
