"""Random intensity remapping curves (look-up tables): monotonic Bézier or non-monotonic spline.

Appearance randomisation in the spirit of Models Genesis' non-linear transformation and of
causality-inspired intensity remapping: the network sees tissue contrasts that no scanner
produces, so it has to rely on shape rather than on a particular intensity ordering.
"""

from __future__ import annotations

import torch

from cardioseg.augmentation.base import Batch, RandomTransform, Transform, _per_sample_minmax

#: Number of knots of the look-up tables.
N_KNOTS = 65


def apply_lut(image: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Map each sample through its LUT on the sample's own ``[min, max]`` range.

    Args:
        image: ``(B, 1, H, W)`` batch.
        lut: ``(B, K)`` output values in [0, 1] at ``K`` equally spaced input levels.

    Returns:
        The remapped batch, in the same per-sample range as the input.
    """
    lo, rng = _per_sample_minmax(image)
    k = lut.shape[1]
    u = ((image - lo) / rng).clamp(0, 1) * (k - 1)
    i0 = u.floor().clamp(max=k - 2).long()
    frac = u - i0
    table = lut.to(image.dtype).view(lut.shape[0], 1, 1, k).expand(-1, image.shape[1], 1, k)
    flat = i0.flatten(2)
    y0 = torch.gather(table.flatten(2), 2, flat).view_as(u)
    y1 = torch.gather(table.flatten(2), 2, flat + 1).view_as(u)
    return lo + rng * (y0 + frac * (y1 - y0))


def bezier_lut(p1: torch.Tensor, p2: torch.Tensor, knots: int = N_KNOTS) -> torch.Tensor:
    """Monotonic LUTs from cubic Bézier curves through (0, 0), ``p1``, ``p2``, (1, 1).

    Args:
        p1, p2: ``(B, 2)`` inner control points in the unit square.
        knots: Number of LUT entries.

    Example:
        >>> lut = bezier_lut(torch.tensor([[0.25, 0.25]]), torch.tensor([[0.75, 0.75]]), 5)
        >>> [round(v, 2) for v in lut[0].tolist()]
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    t = torch.linspace(0, 1, 513).view(1, -1)
    b1, b2, b3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
    x = b1 * p1[:, :1] + b2 * p2[:, :1] + b3
    y = b1 * p1[:, 1:] + b2 * p2[:, 1:] + b3
    x = torch.cummax(x, 1).values  # guard against round-off; x(t) is monotonic for these points
    u = torch.linspace(0, 1, knots)
    out = torch.empty(p1.shape[0], knots)
    for i in range(p1.shape[0]):
        idx = torch.searchsorted(x[i].contiguous(), u).clamp(1, x.shape[1] - 1)
        x0, x1 = x[i, idx - 1], x[i, idx]
        w = ((u - x0) / (x1 - x0).clamp(min=1e-9)).clamp(0, 1)
        out[i] = y[i, idx - 1] + w * (y[i, idx] - y[i, idx - 1])
    return out.clamp(0, 1)


def spline_lut(values: torch.Tensor, knots: int = N_KNOTS) -> torch.Tensor:
    """Smooth (Catmull–Rom) LUTs through ``values`` at equally spaced control levels.

    Args:
        values: ``(B, M)`` curve values in [0, 1] at ``M >= 2`` control levels (0 … 1).
        knots: Number of LUT entries.

    Example:
        >>> spline_lut(torch.tensor([[0.0, 1.0, 0.0]]), 5)[0].tolist()
        [0.0, 0.5625, 1.0, 0.5625, 0.0]
    """
    b, m = values.shape
    s = torch.linspace(0, m - 1, knots)
    j = s.floor().clamp(max=m - 2).long()
    t = (s - j).view(1, -1)
    pad = torch.cat([values[:, :1], values, values[:, -1:]], 1)  # clamp at the ends
    p0, p1, p2, p3 = pad[:, j], pad[:, j + 1], pad[:, j + 2], pad[:, j + 3]
    out = 0.5 * (
        2 * p1
        + (-p0 + p2) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
    )
    return out.clamp(0, 1)


class IntensityCurve(Transform):
    """Remap intensities through a per-sample look-up table (labels unchanged).

    Args:
        lut: ``(B, K)`` output levels in [0, 1] at ``K`` equally spaced input levels of the
            sample's ``[min, max]`` range; ``torch.linspace(0, 1, K)`` is the identity.

    Example:
        >>> x = torch.rand(2, 1, 8, 8)
        >>> y, _ = IntensityCurve(torch.linspace(0, 1, 9).repeat(2, 1))(x)
        >>> torch.allclose(x, y, atol=1e-6)
        True
    """

    def __init__(self, lut: torch.Tensor):
        super().__init__(lut=lut)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        return apply_lut(image, self.params["lut"]), label


class RandomIntensityCurve(RandomTransform):
    """Random remapping curves.

    Args:
        mode: ``bezier`` (monotonic cubic Bézier), ``spline`` (non-monotonic smooth curve through
            ``n_control`` random levels) or ``mixed`` (each sample picks one of the two).
        n_control: Number of random control levels of the spline curves.
        p_invert: Probability of inverting the curve (``1 - f``, reversed tissue contrast).
        p: Probability per sample.

    Example:
        >>> t = RandomIntensityCurve(p=1.0).sample(3, torch.Generator().manual_seed(0))
        >>> tuple(t.params["lut"].shape)
        (3, 65)
    """

    MODES = ("bezier", "spline", "mixed")

    def __init__(
        self, mode: str = "mixed", n_control: int = 5, p_invert: float = 0.25, p: float = 0.5
    ):
        super().__init__(p)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if n_control < 2 or not 0 <= p_invert <= 1:
            raise ValueError("need n_control >= 2 and p_invert in [0, 1]")
        self.mode, self.n_control, self.p_invert = mode, n_control, p_invert

    def sample(self, batch_size: int, generator: torch.Generator) -> IntensityCurve:
        m = self._mask(batch_size, generator)
        p1 = torch.rand(batch_size, 2, generator=generator)
        p2 = torch.rand(batch_size, 2, generator=generator)
        values = torch.rand(batch_size, self.n_control, generator=generator)
        use_spline = torch.rand(batch_size, generator=generator) < 0.5
        invert = torch.rand(batch_size, generator=generator) < self.p_invert
        if self.mode != "mixed":
            use_spline = torch.full((batch_size,), self.mode == "spline")
        lut = torch.where(use_spline[:, None], spline_lut(values), bezier_lut(p1, p2))
        lut = torch.where(invert[:, None], 1 - lut, lut)
        identity = torch.linspace(0, 1, N_KNOTS).expand(batch_size, -1)
        return IntensityCurve(torch.where(m[:, None], lut, identity))
